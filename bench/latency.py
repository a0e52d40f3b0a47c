"""Live latency: a status line appended to the mail log -> its event at the ingestion server.

The real `sendpost-agent logwatch` follows a mail log that this script appends to at a
steady rate, against tests/support/ingest.py's IngestServer (a real aiohttp server in a
thread of this process). Each message is tests/support/maillog.py's five Postfix lines
with two status lines (recipients ``ok<N>@`` and ``second<N>@`` or, for a seeded
one in seven, ``bounce<N>@``), so the recipient carries the message's number N; its map
row is written beforehand, as the milter would have. The time each message was
appended (time.monotonic right after its write) is compared with the arrival time of
the request carrying each of its events (IngestRequest.time, time.monotonic in this
same process). Rates alternate (low, high, low, high ...) for ``--rounds`` rounds; p50
and p99 are per run, and the medians over rounds are compared with the targets: p99
<= 5.5 s at 10 events/s (the 5 s batch window), <= 0.5 s at 2,000 events/s.

    .venv/bin/python bench/latency.py --rates 10,2000 --seconds 60,30 --rounds 3 --seed 1

``--profile DIR`` runs logwatch under cProfile (one .prof per run; slower).

``--python A --python B`` compares two versions of logwatch in one run: each is the
interpreter of a virtualenv with the code to measure installed (``pip install -e`` of
another checkout, e.g. a ``git worktree`` of an older commit); every rate's round runs
A then B, so both see the same load. Without it, this checkout's interpreter runs.

    .venv/bin/python bench/latency.py --rates 10,2000 --seconds 60,30 --rounds 3 \
        --python /tmp/old/.venv/bin/python --python .venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procstat import cpu_seconds  # type: ignore[import-not-found]
from shipping import KEY, logwatch  # type: ignore[import-not-found]

from tests.support.ingest import IngestServer
from tests.support.maillog import message, record_messages

TARGETS = {10: 5.5, 2000: 0.5}  # events/s -> p99 target in seconds
RECIPIENT = re.compile(r"^(?:ok|second|bounce)(\d+)@example\.com$")
EVENTS_PER_MESSAGE = 2


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def append_at_rate(log: Path, messages: int, rate: float, seed: int) -> list[float]:
    """Append the messages so that events arrive at ``rate`` per second; return each
    message's append time (monotonic, right after the write that carried it)."""
    rng = random.Random(seed)
    bounces = [rng.randrange(7) == 0 for _ in range(messages)]
    interval = EVENTS_PER_MESSAGE / rate
    appended = [0.0] * messages
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        start = time.monotonic() + 0.05
        n = 0
        while n < messages:
            now = time.monotonic()
            due = min(messages, int((now - start) / interval) + 1)
            if due > n:
                when = datetime.now(UTC)
                data = "".join(
                    "\n".join(message(i, when, bounces[i])) + "\n" for i in range(n, due)
                ).encode()
                os.write(fd, data)
                written = time.monotonic()
                for i in range(n, due):
                    appended[i] = written
                n = due
            if n < messages:
                time.sleep(max(0.0, min(start + n * interval - time.monotonic(), 0.05)))
    finally:
        os.close(fd)
    return appended


def one_run(
    root: Path, rate: float, seconds: float, seed: int, profile: Path | None, python: str
) -> dict[str, float]:
    state, log = root / "state", root / "mail.log"
    state.mkdir(parents=True)
    log.touch()
    messages = max(1, round(rate * seconds / EVENTS_PER_MESSAGE))
    record_messages(state, range(messages))  # the milter writes rows before Postfix logs
    with IngestServer(KEY) as server:
        agent = logwatch(state, log, server.url, profile=profile)
        agent.args[:1] = [python, "-P"]  # -P: its own installed code, not this checkout's
        agent.start(timeout=60)
        assert agent.proc is not None
        cpu0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
        appended = append_at_rate(log, messages, rate, seed)
        server.wait_for_events(messages * EVENTS_PER_MESSAGE, timeout=60)
        cpu1, t1 = cpu_seconds(agent.proc.pid), time.monotonic()
        requests = [r for r in server.requests if r.status == 200]
        code = agent.stop()
        if code != 0:
            raise RuntimeError(f"logwatch exited with {code}:\n{agent.log()}")
    latencies = []
    for request in requests:
        assert request.body is not None
        for event in json.loads(request.body)["events"]:
            match = RECIPIENT.match(event["recipient"])
            assert match, event
            latencies.append(request.time - appended[int(match.group(1))])
    if len(latencies) != messages * EVENTS_PER_MESSAGE:
        raise RuntimeError(f"got {len(latencies)} events for {messages} messages")
    return {
        "rate": rate,
        "events": len(latencies),
        "requests": len(requests),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
        "agent_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,2000", help="events/s, comma-separated")
    parser.add_argument("--seconds", default="60,30", help="duration of each rate's run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--profile", type=Path, help="write logwatch cProfile output here")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--python",
        action="append",
        help="interpreter whose installed logwatch is measured; repeat to compare, alternating",
    )
    args = parser.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    seconds = [float(x) for x in args.seconds.split(",")]
    pythons: list[str] = args.python or [sys.executable]
    if len(seconds) != len(rates):
        parser.error("--seconds needs one duration per rate")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, float], list[dict[str, float]]] = {
        (python, rate): [] for python in pythons for rate in rates
    }
    with tempfile.TemporaryDirectory(prefix="sendpost-latency-", dir=args.dir) as tmp:
        for r in range(args.rounds):
            for rate, duration in zip(rates, seconds, strict=True):  # A B A B ...
                for v, python in enumerate(pythons):
                    name = f"{rate:g}-{r}" + (f"-{v}" if len(pythons) > 1 else "")
                    profile = args.profile / f"latency-{name}.prof" if args.profile else None
                    result = one_run(
                        Path(tmp) / name, rate, duration, args.seed + r, profile, python
                    )
                    runs[python, rate].append(result)
                    print(
                        f"  round {r + 1}, {rate:g} events/s{_label(python, pythons)}:"
                        f" {result['events']} events in {result['requests']} requests, p50"
                        f" {result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s, max"
                        f" {result['max_s']:.3f} s, logwatch CPU {result['agent_cpu_pct']:.2f}%",
                        flush=True,
                    )
    print(f"live latency, line appended -> event received, {args.rounds} rounds (medians):")
    summary: list[dict[str, object]] = []
    for (python, rate), results in runs.items():
        row: dict[str, object] = {k: statistics.median(x[k] for x in results) for k in results[0]}
        p99 = statistics.median(x["p99_s"] for x in results)
        target = TARGETS.get(int(rate))
        if target is None:
            verdict = "no target at this rate"
        elif p99 <= target:
            verdict = f"target p99 <= {target} s met"
        else:
            verdict = (
                f"target p99 <= {target} s MISSED by {p99 - target:.3f} s"
                f" ({100 * (p99 - target) / target:.0f}%)"
            )
        row["target_p99_s"] = target if target is not None else float("nan")
        row["met"] = target is None or p99 <= target
        row["python"] = python
        summary.append(row)
        print(
            f"  {rate:7g} events/s{_label(python, pythons)}: p50 {row['p50_s']:.3f} s, p99"
            f" {p99:.3f} s, max {row['max_s']:.3f} s; logwatch CPU"
            f" {row['agent_cpu_pct']:.2f}%: {verdict}"
        )
    if len(pythons) > 1:
        first = pythons[0]
        for python in pythons[1:]:
            for rate in rates:
                ratios = [
                    b["agent_cpu_pct"] / a["agent_cpu_pct"]
                    for a, b in zip(runs[first, rate], runs[python, rate], strict=True)
                    if a["agent_cpu_pct"] > 0
                ]
                if ratios:
                    print(
                        f"  {rate:7g} events/s: logwatch CPU of {python} / {first}, per round:"
                        f" {', '.join(f'{x:.2f}' for x in ratios)}"
                        f" (median {statistics.median(ratios):.2f})"
                    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "rounds": {
                        f"{k:g}" if len(pythons) == 1 else f"{p} {k:g}": v
                        for (p, k), v in runs.items()
                    },
                },
                indent=1,
            )
        )


def _label(python: str, pythons: list[str]) -> str:
    """Which code a line is about, when several are compared."""
    return f" [{python}]" if len(pythons) > 1 else ""


if __name__ == "__main__":
    main()
