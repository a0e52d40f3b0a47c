"""Catch-up speed: `sendpost-agent replay` over a generated log, beside `grep -c status=`.

Runs them alternately (A B A B ...) because the machine is noisy, and prints the
medians. The log and the map holding every message come from bench/genlog.py (seeded).
``--journal`` also writes the same lines into a journal file (systemd-journal-remote,
as tests/support/journal.py does) and times `replay --journal` on it: the catch-up
from the systemd journal, read through libsystemd. ``--info``: a log correlated by
header_checks INFO lines instead, without a map (each status line then waits join-wait
for its UUID, as on a host whose milter did not see the mail).

    python bench/catchup.py --lines 1000000 --rounds 5 --dir /tmp/sendpost-bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from genlog import INFO_CLIENTS, generate  # type: ignore[import-not-found]


def build() -> str:
    """How this checkout's log pipeline is built (setup.py compiles it with mypyc)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import logwatch.parse

    return "mypyc-compiled" if (logwatch.parse.__file__ or "").endswith(".so") else "not compiled"


def timed(cmd: list[str], env: dict[str, str], out: int) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=out, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sendpost-bench"))
    parser.add_argument("--journal", action="store_true", help="time replay --journal too")
    parser.add_argument(
        "--info", action="store_true", help="header_checks INFO lines instead of a map"
    )
    args = parser.parse_args()
    name = "info" if args.info else "mail"
    log = args.dir / f"{name}-{args.lines}-{args.seed}.log"
    state = args.dir / f"state-{name}-{args.seed}" if args.info else args.dir / f"state-{args.seed}"
    if not log.exists():
        generate(args.lines, args.seed, log, state, info=args.info)
    state.mkdir(parents=True, exist_ok=True)  # without a map with --info
    env = {**os.environ, "SENDPOST_CONFIG": "/dev/null"}
    ours = [
        sys.executable,
        "-m",
        "sendpost_agent",
        "replay",
        str(log),
        "--state-dir",
        str(state),
        "--log-timezone",
        "UTC",
        "--postfix-config-dir",
        str(args.dir),
        *(["--trusted-clients", INFO_CLIENTS] if args.info else []),
    ]
    grep = ["grep", "-c", "status=", str(log)]
    times: dict[str, list[float]] = {"replay": [], "grep": [], "journal": []}
    journal = [*ours[:4], "--journal", "--journal-directory", str(journal_of(log)), *ours[5:]]
    for _ in range(args.rounds):
        times["replay"].append(timed(ours, env, subprocess.DEVNULL))
        if args.journal:
            times["journal"].append(timed(journal, env, subprocess.DEVNULL))
        # GNU grep stops at the first match when its output is /dev/null: use a pipe.
        times["grep"].append(timed(grep, env, subprocess.PIPE))
    replay, grep_s = statistics.median(times["replay"]), statistics.median(times["grep"])
    print(f"log: {log} ({args.lines} lines), {args.rounds} rounds, medians; pipeline {build()}:")
    print(f"  sendpost-agent replay: {replay:.2f} s = {args.lines / replay:,.0f} lines/s")
    print(f"  grep -c status=:       {grep_s:.2f} s = {args.lines / grep_s:,.0f} lines/s")
    print(f"  replay takes {replay / grep_s:.0f}x as long as grep")
    if args.journal:
        from_journal = statistics.median(times["journal"])
        print(
            f"  replay --journal (same lines): {from_journal:.2f} s ="
            f" {args.lines / from_journal:,.0f} lines/s, {from_journal / replay:.2f}x the file's"
        )


def journal_of(log: Path) -> Path:
    """A directory holding ``log``'s lines as one journal file (made once)."""
    directory = log.with_suffix(".journal.d")
    if not directory.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.support.journal import write_lines

        with log.open() as lines:
            write_lines(directory / "mail.journal", [line.rstrip("\n") for line in lines])
    return directory


if __name__ == "__main__":
    main()
