"""Idle cost: CPU of the milter and of logwatch over 60 s with no mail.

Both real processes run on one state-dir with a ``--map-rows`` queue map (the cached
map of bench/memory.py, so the milter's periodic checkpoint and prune work on a
realistic file), an empty mail log and an empty WAL, against a local ingestion server
(tests/support/ingest.py). After ``--settle`` seconds, utime + stime of each process
(all threads, /proc/PID/stat) is read at the start and end of each of ``--rounds``
windows of ``--seconds``; the figure is the share of one core, median over windows.
Also counted: context switches per second (all threads, /proc/PID/task/*/status),
i.e. how often each process wakes. Target: < 0.5% of one core for both together.

    .venv/bin/python bench/idle.py --seconds 60 --rounds 3 --map-rows 1000000 --seed 1

``--profile DIR`` runs logwatch under cProfile (written when it stops).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import map_cache  # type: ignore[import-not-found]
from procstat import context_switches, cpu_seconds  # type: ignore[import-not-found]
from shipping import KEY, logwatch  # type: ignore[import-not-found]

from tests.support.ingest import IngestServer
from tests.support.milter import MilterProcess

TARGET_PCT = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of one window")
    parser.add_argument("--rounds", type=int, default=3, help="windows, one after the other")
    parser.add_argument("--settle", type=float, default=5.0, help="wait after start")
    parser.add_argument("--map-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/tmp/sendpost-bench"),
        help="cache of the map; the run uses a temporary dir in it",
    )
    parser.add_argument("--profile", type=Path, help="write logwatch cProfile output here")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    map_file = map_cache(args.dir, args.map_rows, args.seed) if args.map_rows else None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    windows: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sendpost-idle-", dir=args.dir) as tmp,
        tempfile.TemporaryDirectory(prefix="sp-") as sock,
        IngestServer(KEY) as server,
    ):
        root = Path(tmp)
        state, log = root / "state", root / "mail.log"
        state.mkdir()
        log.touch()
        if map_file is not None:
            shutil.copyfile(map_file, state / "queuemap.sqlite3")
        # a unix socket path must stay under 108 bytes: not inside a deep --dir
        milter = MilterProcess(state, f"unix:{sock}/s/milter.sock").start(timeout=60)
        agent = logwatch(
            state, log, server.url, profile=args.profile / "idle.prof" if args.profile else None
        )
        try:
            agent.start(timeout=60)
            assert milter.proc is not None and agent.proc is not None
            pids = {"milter": milter.proc.pid, "logwatch": agent.proc.pid}
            time.sleep(args.settle)
            for w in range(args.rounds):
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                cs0 = {name: context_switches(pid) for name, pid in pids.items()}
                t0 = time.monotonic()
                time.sleep(args.seconds)
                elapsed = time.monotonic() - t0
                window = {}
                for name, pid in pids.items():
                    window[f"{name}_pct"] = 100 * (cpu_seconds(pid) - cpu0[name]) / elapsed
                    window[f"{name}_wakeups_per_s"] = (context_switches(pid) - cs0[name]) / elapsed
                window["both_pct"] = window["milter_pct"] + window["logwatch_pct"]
                windows.append(window)
                print(
                    f"  window {w + 1} ({elapsed:.0f} s): milter {window['milter_pct']:.3f}%"
                    f" ({window['milter_wakeups_per_s']:.1f} switches/s), logwatch"
                    f" {window['logwatch_pct']:.3f}% ({window['logwatch_wakeups_per_s']:.1f}"
                    f" switches/s)",
                    flush=True,
                )
            requests = len(server.requests)
        finally:
            codes = agent.stop(), milter.stop()
        if codes != (0, 0):
            raise RuntimeError(f"exit codes {codes}:\n{agent.log()}\n{milter.log()}")
    summary = {k: statistics.median(w[k] for w in windows) for k in windows[0]}
    both = summary["both_pct"]
    verdict = (
        f"target < {TARGET_PCT}% met"
        if both < TARGET_PCT
        else f"target < {TARGET_PCT}% MISSED by {both - TARGET_PCT:.3f} points"
        f" ({both / TARGET_PCT:.1f}x the target)"
    )
    print(
        f"idle cost, {args.rounds} windows of {args.seconds:g} s, {args.map_rows:,} map rows,"
        f" no mail ({requests} requests to the API), medians, % of one core:"
    )
    print(
        f"  milter {summary['milter_pct']:.3f}%, logwatch {summary['logwatch_pct']:.3f}%,"
        f" both {both:.3f}%: {verdict}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "windows": windows,
                    "target_pct": TARGET_PCT,
                    "met": both < TARGET_PCT,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
