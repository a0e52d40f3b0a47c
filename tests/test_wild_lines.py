"""logwatch.parse against 1139 real Postfix lines from public sources (tests/data/postfix-samples/wild).

Every one of the 459 `status=` lines must give exactly the fields the README defines, or be
rejected on purpose; the rejections are counted per reason so a change in behaviour shows.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from logwatch.parse import Clock, Delivery, Expired, Skipped, parse_line
from tests.support.samples import SAMPLES

pytestmark = pytest.mark.unit

WILD = SAMPLES / "wild"
NOW = datetime(2026, 11, 24, tzinfo=UTC)

# Lines with `status=` that are not a delivery outcome of a known recipient.
EXPECTED_SKIPS = {
    "no queue id": 2,  # smtpd debug: `generic_checks: ... status=1`, `dict_proxy_open: ... status=0`
    "no recipient": 2,  # qmgr `status=deferred (bounce failed)`, the hand-made `tox=<...>` line
}


def wild_file(name: str) -> Path:
    """A missing corpus fails the test: skipping would pass without testing anything."""
    path = WILD / name
    assert path.is_file(), f"corpus missing: {path} (see tests/data/postfix-samples/wild/README.md)"
    return path


def test_every_status_line_gives_the_documented_fields() -> None:
    rows = [
        json.loads(line)
        for line in wild_file("status-lines.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == 459
    clock = Clock(UTC, NOW)
    skipped: Counter[str] = Counter()
    mismatches = []
    for row in rows:
        rec = parse_line(row["line"], clock)
        if isinstance(rec, Skipped):
            skipped[rec.reason] += 1
            assert row["recipient"] is None, f"a recipient's outcome was dropped: {row['line']}"
            continue
        assert isinstance(rec, Delivery | Expired), row["line"]
        if isinstance(rec, Delivery):
            got = (rec.queue_id, rec.recipient, rec.relay, rec.dsn, rec.status, rec.reply)
        else:
            got = (rec.queue_id, None, None, None, rec.status, None)
        want = tuple(row[k] for k in ("queue_id", "recipient", "relay", "dsn", "status", "reply"))
        if got != want:
            mismatches.append((row["line"], got, want))
        assert rec.time.tzinfo is not None
    assert mismatches == []
    assert skipped == Counter(EXPECTED_SKIPS)


def test_every_line_of_the_corpus() -> None:
    lines = [
        line
        for line in wild_file("lines.log").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert len(lines) == 1139
    clock = Clock(UTC, NOW)
    kinds: Counter[str] = Counter()
    for line in lines:
        rec = parse_line(line, clock)
        if isinstance(rec, Skipped):
            kinds[f"Skipped: {rec.reason}"] += 1
        else:
            kinds[type(rec).__name__] += 1
    assert kinds == Counter(
        {
            "NoneType": 408,
            "MessageId": 75,
            "Delivery": 442,
            "QueueActive": 77,
            "Removed": 69,
            "Notification": 43,
            "Pickup": 8,
            "Expired": 13,
            **{f"Skipped: {reason}": n for reason, n in EXPECTED_SKIPS.items()},
        }
    )
