"""Shipping throughput: events from a pre-filled WAL to a local ingestion server.

The WAL (``state-dir/pending.wal``) is filled with seeded, realistic event JSON (as
logwatch stores it), then the real `sendpost-agent logwatch` is started on an empty
mail log against tests/support/ingest.py's IngestServer (a real aiohttp server in a
thread of this process that validates every batch and answers at once). The rate is
measured on the server's clock: events after the first request / (last request's
arrival - first request's arrival); "sustained" is the slowest whole second. Also
reported: logwatch's CPU (share of one core) and this process's (the server's) CPU
over the run, which tell whether the agent or the server set the pace. Rounds are
repeated and the medians printed.

The API allows 10,000 requests/min (x 100 events = 16,667 events/s), and logwatch
paces itself to its ``max-requests-per-minute`` (default 10000). This benchmark runs it
with ``--max-requests-per-minute 1000000`` by default so that the agent itself is
measured, not the API's ceiling; ``--max-requests-per-minute 10000`` shows the shipped
pace.

    .venv/bin/python bench/shipping.py --events 200000 --rounds 3 --seed 1

``--profile DIR`` runs logwatch under cProfile (one .prof per round; slower).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procstat import cpu_seconds  # type: ignore[import-not-found]

from logwatch.wal import Wal
from tests.support.agent import LogwatchProcess
from tests.support.ingest import IngestServer

KEY = "sp-bench-key-0123456789"
TARGET = 20_000  # events/s
START = datetime(2026, 11, 23, 18, 0, 0, tzinfo=UTC)
# (event_type, smtp_code, smtp_description, weight): a realistic mix, SendPost's shapes
KINDS = [
    ("delivered", 250, "250 2.0.0 OK  1763856000 a1si1234567wra.123 - gsmtp", 78),
    (
        "deferred",
        421,
        "host gmail-smtp-in.l.google.com[142.250.102.27] said: 421-4.7.28"
        " Gmail has detected an unusual rate of mail originating from your IP address."
        " 421 4.7.28 - gsmtp (in reply to end of DATA command)",
        12,
    ),
    (
        "bounced",
        550,
        "host gmail-smtp-in.l.google.com[142.250.102.27] said: 550-5.1.1 The"
        " email account that you tried to reach does not exist. 550 5.1.1 - gsmtp (in reply"
        " to RCPT TO command)",
        7,
    ),
    (
        "soft_bounced",
        452,
        "host mx1.hotmail.com[52.101.40.2] said: 452 4.2.2 mailbox full"
        " (in reply to RCPT TO command)",
        3,
    ),
]


def make_events(count: int, seed: int) -> list[bytes]:
    """``count`` event JSON objects as logwatch stores them in the WAL, from ``seed``."""
    rng = random.Random(seed)
    weights = [k[3] for k in KINDS]
    out = []
    for i in range(count):
        kind, code, text, _ = rng.choices(KINDS, weights)[0]
        h = f"{rng.getrandbits(128):032x}"
        event = {
            "message_id": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}",
            "event_type": kind,
            "timestamp": (START + timedelta(seconds=i / 1000)).isoformat(),
            "smtp_code": code,
            "smtp_description": text,
            "recipient": f"user{i}.{rng.randrange(100)}@example.com",
        }
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


def prefill_wal(
    path: Path,
    seed: int,
    per_record: int,
    *,
    events: int | None = None,
    size_bytes: int | None = None,
) -> tuple[int, int]:
    """Append seeded events (``per_record`` per WAL record) until ``events`` of them are
    in, or the file has ``size_bytes``; returns (events, bytes)."""
    wal = Wal(path, cap_bytes=size_bytes or 100 * 1024**2)
    try:
        chunk, n, done = 10_000, 0, False
        while not done:
            batch = make_events(chunk, seed * 1_000_003 + n)
            for i in range(0, chunk, per_record):
                wal.append(batch[i : i + per_record])
                n += len(batch[i : i + per_record])
                if (events is not None and n >= events) or (
                    size_bytes is not None and wal.size_bytes >= size_bytes
                ):
                    done = True
                    break
        return wal.pending, wal.size_bytes
    finally:
        wal.close()


def logwatch(
    state: Path, log: Path, url: str, *extra: str, profile: Path | None = None
) -> LogwatchProcess:
    """A LogwatchProcess at log level info (debug logging is not what operators run),
    optionally under cProfile (written when it stops cleanly)."""
    agent = LogwatchProcess(state, log, url, KEY, "--log-level", "info", *extra)
    if profile is not None:
        agent.args[1:1] = ["-m", "cProfile", "-o", str(profile)]
    return agent


def one_round(
    root: Path, events: int, per_record: int, seed: int, rpm: int, profile: Path | None
) -> dict[str, float]:
    state, log = root / "state", root / "mail.log"
    state.mkdir(parents=True)
    log.touch()
    count, size = prefill_wal(state / "pending.wal", seed, per_record, events=events)
    gc.collect()
    gc.disable()  # the server keeps every event; gen-2 sweeps would slow it, not the agent
    try:
        with IngestServer(KEY) as server:
            agent = logwatch(
                state, log, server.url, "--max-requests-per-minute", str(rpm), profile=profile
            )
            started = time.monotonic()
            agent.start(timeout=60)
            assert agent.proc is not None
            pid = agent.proc.pid
            cpu0, self0 = cpu_seconds(pid), time.process_time()
            server.wait_for_events(count, timeout=max(120.0, count / 1000))
            cpu1, self1 = cpu_seconds(pid), time.process_time()
            requests = [r for r in server.requests if r.status == 200]
            code = agent.stop()
            if code != 0:
                raise RuntimeError(f"logwatch exited with {code}:\n{agent.log()}")
    finally:
        gc.enable()
    first, last = requests[0].time, requests[-1].time
    span = last - first
    per_second: dict[int, int] = {}
    for r in requests[1:]:
        per_second[int(r.time - first)] = per_second.get(int(r.time - first), 0) + r.events
    whole = [per_second.get(s, 0) for s in range(int(span))]  # whole seconds only
    return {
        "events": count,
        "wal_bytes": size,
        "requests": len(requests),
        "startup_s": first - started,
        "span_s": span,
        "rate": (count - requests[0].events) / span if span > 0 else float("nan"),
        "slowest_second": min(whole) if whole else float("nan"),
        "agent_cpu_pct": 100 * (cpu1 - cpu0) / span if span > 0 else float("nan"),
        "server_cpu_pct": 100 * (self1 - self0) / span if span > 0 else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--events-per-record",
        type=int,
        default=10,
        help="events per WAL record (logwatch appends one per batch of lines)",
    )
    parser.add_argument("--max-requests-per-minute", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--profile", type=Path, help="write logwatch cProfile output here")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="sendpost-shipping-", dir=args.dir) as tmp:
        for r in range(args.rounds):
            profile = args.profile / f"shipping-{r}.prof" if args.profile else None
            result = one_round(
                Path(tmp) / f"round-{r}",
                args.events,
                args.events_per_record,
                args.seed,
                args.max_requests_per_minute,
                profile,
            )
            runs.append(result)
            print(
                f"  round {r + 1}: {result['rate']:9,.0f} events/s over {result['span_s']:.2f} s"
                f" ({result['requests']} requests), slowest second"
                f" {result['slowest_second']:,.0f}, logwatch CPU {result['agent_cpu_pct']:.0f}%,"
                f" server CPU {result['server_cpu_pct']:.0f}%, first request"
                f" {result['startup_s']:.2f} s after start",
                flush=True,
            )
    summary = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    rate = summary["rate"]
    verdict = (
        f"target >= {TARGET:,} met"
        if rate >= TARGET
        else f"target >= {TARGET:,} MISSED by {TARGET - rate:,.0f} events/s"
        f" ({100 * (TARGET - rate) / TARGET:.0f}%)"
    )
    print(
        f"shipping {summary['events']:,.0f} events ({summary['wal_bytes'] / 1e6:.0f} MB WAL,"
        f" {args.events_per_record} per record), --max-requests-per-minute"
        f" {args.max_requests_per_minute}, {args.rounds} rounds (medians):"
    )
    print(
        f"  {rate:,.0f} events/s (slowest whole second {summary['slowest_second']:,.0f});"
        f" logwatch CPU {summary['agent_cpu_pct']:.0f}% of a core, server CPU"
        f" {summary['server_cpu_pct']:.0f}%: {verdict}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"summary": summary, "rounds": runs, "target": TARGET, "met": rate >= TARGET},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
