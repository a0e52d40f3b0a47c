"""Memory: RSS of the milter and of logwatch with 1,000,000 map rows and a 100 MB WAL.

Both real processes share one state-dir holding a queue map of ``--map-rows`` rows
(seeded queue IDs and UUIDs, written with MapWriter.put as the milter does) and a
``pending.wal`` of ``--wal-mb`` MiB of seeded event JSON (``--events-per-record`` events
per WAL record; 1, the default, gives the largest in-memory index). Both are built once
and cached in ``--dir``, then copied for each round. Phases of a round:

1. the ingestion server (tests/support/ingest.py) is down: the WAL is full, as after an
   API outage; the milter and logwatch start and settle: "loaded";
2. ``--messages`` messages go through the milter (Debian's ``miltertest``, a real
   libmilter client) into the map, their Postfix lines are appended to the mail log,
   then the server comes up and logwatch ships the whole WAL and the new events:
   "after traffic".

VmRSS is sampled every 0.1 s from /proc/PID/status; the peak is the kernel's VmHWM.
The target is a peak <= 80 MB (MiB, as the agent's own sizes: 100MB = 100 MiB) each.

    .venv/bin/python bench/memory.py --map-rows 1000000 --wal-mb 100 --messages 2000 \
        --rounds 3 --seed 1

``--profile DIR`` runs logwatch under cProfile (one .prof per round).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shipping import KEY, logwatch, prefill_wal  # type: ignore[import-not-found]

from sendpost_agent.queuemap import HeaderState, MapReader, MapWriter
from tests.support.ingest import IngestServer
from tests.support.maillog import BOUNCE_EVERY, envelope, message_uuid, queue_id, write_messages
from tests.support.milter import MilterProcess
from tests.test_milter_miltertest import lua_message, run_miltertest

TARGET_MIB = 80.0
MAP_FILES = ("", "-wal", "-shm")
CACHE_MAX_AGE = 86400.0  # rows older than map-retention (6 d) would be pruned at start


def build_map(path: Path, rows: int, seed: int) -> None:
    """``rows`` rows written through MapWriter.put (one commit each, as the milter does)."""
    rng = random.Random(seed)
    writer = MapWriter(path, 6 * 86400.0)
    writer.start_maintenance()
    try:
        for _ in range(rows):
            writer.put(
                f"{rng.getrandbits(44):011X}",
                uuid.UUID(int=rng.getrandbits(128)),
                HeaderState.PRESENT,
            )
    finally:
        writer.close()


def cached(cache: Path, build: object) -> Path:
    """``cache``, built by ``build(path)`` unless a fresh copy exists."""
    if not cache.exists() or time.time() - cache.stat().st_mtime > CACHE_MAX_AGE:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".building")
        for suffix in MAP_FILES:
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        started = time.monotonic()
        build(tmp)  # type: ignore[operator]
        for suffix in MAP_FILES[1:]:  # a closed map has everything in the main file
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        tmp.rename(cache)
        print(f"  built {cache} in {time.monotonic() - started:.0f} s", flush=True)
    return cache


def map_cache(directory: Path, rows: int, seed: int) -> Path:
    return cached(directory / f"map-{rows}-{seed}.sqlite3", lambda p: build_map(p, rows, seed))


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


class Sampler(threading.Thread):
    """Highest VmRSS seen of each process, sampled every ``every`` seconds."""

    def __init__(self, pids: dict[str, int], every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.peak = dict.fromkeys(pids, 0.0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, KeyError):  # it may just have exited
                    self.peak[name] = max(self.peak[name], proc_status(pid)["VmRSS"])


def one_round(
    root: Path, map_file: Path, wal_file: Path, messages: int, settle: float, profile: Path | None
) -> dict[str, float]:
    state, log = root / "state", root / "mail.log"
    state.mkdir(parents=True)
    log.touch()
    shutil.copyfile(map_file, state / "queuemap.sqlite3")
    shutil.copyfile(wal_file, state / "pending.wal")
    out: dict[str, float] = {}
    # a unix socket path must stay under 108 bytes: not inside a deep --dir
    with IngestServer(KEY) as server, tempfile.TemporaryDirectory(prefix="sp-") as sock:
        server.go_down()  # an API outage filled the WAL
        milter = MilterProcess(state, f"unix:{sock}/s/milter.sock").start(timeout=60)
        agent = logwatch(state, log, server.url, profile=profile)
        try:
            started = time.monotonic()
            agent.start(timeout=120)
            out["logwatch_start_s"] = time.monotonic() - started
            assert milter.proc is not None and agent.proc is not None
            pids = {"milter": milter.proc.pid, "logwatch": agent.proc.pid}
            sampler = Sampler(pids)
            sampler.start()
            time.sleep(settle)
            status = agent.health()[1]
            wal_events = int(status["pending_events"])  # type: ignore[call-overload]
            out["wal_events"] = wal_events
            for name, pid in pids.items():
                out[f"{name}_loaded_mib"] = proc_status(pid)["VmRSS"]
            # traffic: the milter records the messages, Postfix logs them, the API returns
            run_miltertest(
                milter,
                root,
                *[
                    lua_message(
                        queue_id(n),
                        [("X-Sendpost-Message-UUID", message_uuid(n))],
                        recipients=tuple(
                            f'"<{rcpt}>"' for rcpt in envelope(n, n % BOUNCE_EVERY == 0)
                        ),
                    )
                    for n in range(messages)
                ],
            )
            expected = write_messages(log, range(messages))
            server.come_up()
            server.wait_for_events(
                wal_events + len(expected), timeout=max(120.0, wal_events / 2000)
            )
            time.sleep(1.0)
            sampler.done.set()
            sampler.join()
            for name, pid in pids.items():
                now = proc_status(pid)
                out[f"{name}_after_mib"] = now["VmRSS"]
                out[f"{name}_peak_mib"] = max(now["VmHWM"], sampler.peak[name])
        finally:
            codes = agent.stop(), milter.stop()
        if codes != (0, 0):
            raise RuntimeError(f"exit codes {codes}:\n{agent.log()}\n{milter.log()}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map-rows", type=int, default=1_000_000)
    parser.add_argument("--wal-mb", type=float, default=100.0, help="MiB of pending.wal")
    parser.add_argument("--events-per-record", type=int, default=1)
    parser.add_argument("--messages", type=int, default=2000, help="traffic through both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before 'loaded'")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/tmp/sendpost-bench"),
        help="cache of the map and WAL; rounds run in a temporary dir in it",
    )
    parser.add_argument("--profile", type=Path, help="write logwatch cProfile output here")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    map_file = map_cache(args.dir, args.map_rows, args.seed)
    wal_bytes = int(args.wal_mb * 1024**2)
    wal_file = cached(
        args.dir / f"wal-{wal_bytes}-{args.events_per_record}-{args.seed}.wal",
        lambda p: prefill_wal(p, args.seed, args.events_per_record, size_bytes=wal_bytes),
    )
    reader = MapReader(map_file)
    rows = len(reader)
    reader.close()
    runs = []
    with tempfile.TemporaryDirectory(prefix="sendpost-memory-", dir=args.dir) as tmp:
        for r in range(args.rounds):
            profile = args.profile / f"memory-{r}.prof" if args.profile else None
            result = one_round(
                Path(tmp) / f"round-{r}", map_file, wal_file, args.messages, args.settle, profile
            )
            runs.append(result)
            print(
                f"  round {r + 1}: "
                + ", ".join(
                    f"{name} loaded {result[f'{name}_loaded_mib']:.1f}"
                    f" / after {result[f'{name}_after_mib']:.1f}"
                    f" / peak {result[f'{name}_peak_mib']:.1f} MiB"
                    for name in ("milter", "logwatch")
                )
                + f"; logwatch started in {result['logwatch_start_s']:.1f} s",
                flush=True,
            )
    summary = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    print(
        f"memory with {rows:,} map rows and a {wal_file.stat().st_size / 1024**2:.0f} MiB WAL"
        f" ({summary['wal_events']:,.0f} events, {args.events_per_record} per record),"
        f" {args.messages} messages of traffic, {args.rounds} rounds (medians, MiB):"
    )
    met = True
    for name in ("milter", "logwatch"):
        peak = summary[f"{name}_peak_mib"]
        ok = peak <= TARGET_MIB
        met = met and ok
        verdict = (
            f"target <= {TARGET_MIB:.0f} MiB met"
            if ok
            else f"target <= {TARGET_MIB:.0f} MiB MISSED by {peak - TARGET_MIB:.1f} MiB"
            f" ({100 * (peak - TARGET_MIB) / TARGET_MIB:.0f}%)"
        )
        print(
            f"  {name:8}: loaded {summary[f'{name}_loaded_mib']:.1f}, after traffic"
            f" {summary[f'{name}_after_mib']:.1f}, peak {peak:.1f}: {verdict}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "rounds": runs,
                    "map_rows": rows,
                    "target_mib": TARGET_MIB,
                    "met": met,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
