"""The X-Sendpost-Message-UUID header: its name and which values count (pure; both processes)."""

from __future__ import annotations

import re
import uuid
from typing import Final

from sendpost_agent.queuemap import HeaderState

HEADER_NAME = "X-Sendpost-Message-UUID"
# Longer than any tolerated form ("< " + 36 + " >" plus folding): reject before the regex.
MAX_VALUE_LENGTH = 100
_HEX = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_TEXT = re.compile(rf"\s*(?:<\s*({_HEX})\s*>|({_HEX}))\s*")


def parse_uuid(value: str) -> uuid.UUID | None:
    """RFC 4122 text form, tolerating surrounding whitespace, <angle brackets> and case."""
    if len(value) > MAX_VALUE_LENGTH:
        return None
    match = _UUID_TEXT.fullmatch(value)
    if match is None:
        return None
    parsed = uuid.UUID(match.group(1) or match.group(2))
    return None if parsed.int == 0 else parsed


# The text parse_uuid's UUID gives (str of uuid.UUID), nil excepted: taken as it is.
# Building the UUID object and its text cost more than the rest of an INFO line's handling.
_CANONICAL: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NIL: Final = "00000000-0000-0000-0000-000000000000"


def uuid_text(value: str) -> str | None:
    """``str(parse_uuid(value))``, or None where that is None; fast for canonical text."""
    if _CANONICAL.fullmatch(value) is not None and value != _NIL:
        return value
    parsed = parse_uuid(value)
    return None if parsed is None else str(parsed)


def classify(values: list[str]) -> tuple[HeaderState, uuid.UUID | None]:
    """One message's header values -> state and the UUID to record (only when PRESENT).

    A repeated header is never trusted, even with equal values: something in the path
    added or copied it, so it may not be the one SendPost set.
    """
    if not values:
        return HeaderState.MISSING, None
    if len(values) > 1:
        return HeaderState.REPEATED, None
    parsed = parse_uuid(values[0])
    if parsed is None:
        return HeaderState.INVALID, None
    return HeaderState.PRESENT, parsed
