"""Validation of X-Sendpost-Message-UUID values (pure)."""

from __future__ import annotations

import uuid

import pytest

from sendpost_agent.header import classify, parse_uuid
from sendpost_agent.queuemap import HeaderState

pytestmark = pytest.mark.unit

CANON = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.mark.parametrize(
    "value",
    [
        CANON,
        CANON.upper(),
        f" {CANON}",  # Postfix passes the space after the colon
        f"<{CANON}>",
        f"  < {CANON.upper()} >\t",
        f"\r\n\t{CANON}",  # folded onto the next line
    ],
)
def test_tolerated_forms_become_canonical_lower_case(value: str) -> None:
    assert str(parse_uuid(value)) == CANON


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "not-a-uuid",
        CANON[:-1],
        CANON + "0",
        CANON.replace("-", ""),  # hex without dashes is not the RFC 4122 text form
        "{" + CANON + "}",
        f"{CANON} {CANON}",
        f"<{CANON}",
        "00000000-0000-0000-0000-000000000000",
        "g" * 8 + CANON[8:],
        "x" * 100_000,
        f"{CANON}\x00",
    ],
)
def test_malformed_values_are_rejected(value: str) -> None:
    assert parse_uuid(value) is None


def test_classify() -> None:
    assert classify([]) == (HeaderState.MISSING, None)
    assert classify([CANON]) == (HeaderState.PRESENT, uuid.UUID(CANON))
    assert classify(["junk"]) == (HeaderState.INVALID, None)
    assert classify([CANON, CANON]) == (HeaderState.REPEATED, None)
