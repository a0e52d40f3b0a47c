"""The milter's own Python per message, without libmilter: its callbacks in a tight loop.

Each message makes the calls Postfix causes (one RCPT TO, DATA, six ordinary headers
and ours, end-of-message, abort) on sendpost_milter.session.Callbacks, with a stand-in for
pymilter's context and a real queue map; CPU time per message (the process's, the
writer thread's included) is reported with the SQLite commits and without them. A tight
loop keeps code and data in the CPU caches, so this is a lower bound:
bench/milter_cost.py measures the live cost.

    python bench/milter_callbacks.py --messages 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import milter as libmilter

from sendpost_agent.queuemap import MapReader, MapWriter
from sendpost_agent.trust import build_policy
from sendpost_milter.groupwriter import GroupWriter
from sendpost_milter.metrics import MilterMetrics
from sendpost_milter.session import Callbacks, Session

# SendPost's client, unauthenticated, from a network in trusted-clients.
CLIENT_MACROS = {"{client_addr}": "192.0.2.10"}
TRUSTED = build_policy(("192.0.2.0/24", "sasl"), None)

HEADERS = [
    (
        "Received",
        b"from client.example (localhost [127.0.0.1]) by mx.example (Postfix)"
        b" with ESMTP id 4B5E214968 for <ok@example.com>; Tue, 24 Nov 2026",
    ),
    ("From", b"<sender@example.com>"),
    ("To", b"<ok@example.com>"),
    ("Subject", b"hi"),
    ("Date", b"Tue, 24 Nov 2026 03:45:09 +0000"),
    ("Message-ID", b"<1795491909.1@example>"),
]


class FakeContext:
    """What the callbacks use of pymilter's context object."""

    def __init__(self) -> None:
        self.queue_id = ""
        self.session: Session | None = None

    def getpriv(self) -> Session | None:
        return self.session

    def setpriv(self, session: Session) -> None:
        self.session = session

    def getsymval(self, name: str) -> str | None:
        """The queue ID, and a client address in trusted-clients (the common case)."""
        return self.queue_id if name == "i" else CLIENT_MACROS.get(name)

    def setsymlist(self, stage: int, macros: str) -> None:
        pass


def per_message(callbacks: Callbacks, rows: GroupWriter, messages: int) -> float:
    """CPU microseconds per message, until every row is committed."""
    ctx = FakeContext()
    callbacks.negotiate(ctx, [0x1FF, 0x1FFFFF, 0, 0])
    values = [str(uuid.uuid4()).encode() for _ in range(messages)]
    started = time.process_time()
    for i, value in enumerate(values):
        ctx.queue_id = f"4B5E{i:08X}"
        callbacks.envrcpt(ctx, b"<rcpt@example.com>")
        callbacks.data(ctx)
        for name, header in HEADERS:
            callbacks.header(ctx, name, header)
        callbacks.header(ctx, "X-Sendpost-Message-UUID", value)
        if callbacks.eom(ctx) != libmilter.ACCEPT:
            raise RuntimeError("the milter did not accept")
        callbacks.abort(ctx)
    rows.close()
    return 1e6 * (time.process_time() - started) / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"with_commit": [], "without_commit": []}
    map_rows = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="milter-callbacks-") as tmp:
            path = Path(tmp) / "queuemap.sqlite3"
            writer = MapWriter(path, 86_400)
            try:
                for key in runs:
                    metrics = MilterMetrics()
                    rows = GroupWriter(writer, metrics)
                    if key == "without_commit":
                        rows.put = lambda row: None  # type: ignore[method-assign]
                    callbacks = Callbacks(rows, metrics, None, TRUSTED)
                    runs[key].append(per_message(callbacks, rows, args.messages))
            finally:
                writer.close()
            reader = MapReader(path)
            map_rows.append(len(reader))  # every message of the run with the commit
            reader.close()
    summary = {key: statistics.median(values) for key, values in runs.items()}
    print(
        f"milter callbacks, {args.messages:,} messages x {args.rounds} rounds (medians):"
        f" {summary['with_commit']:.1f} us/message with the SQLite commit,"
        f" {summary['without_commit']:.1f} us without"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"summary": summary, "rounds": runs, "map_rows": map_rows}, indent=1)
        )


if __name__ == "__main__":
    main()
