"""The event's JSON is built by hand for speed: it must be exactly what json.dumps gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from logwatch.classify import EventType
from logwatch.events import Event

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("recipient", "code", "description"),
    [
        ("user@example.com", 250, "250 2.0.0 Ok"),
        ('"odd\\local"@ex.com', 550, 'said: 550 "quoted" \x01 tab\t ü \u2028'),
        ("", None, ""),  # optional fields left out
        ("a@b", None, 'x "y"'),  # each optional field on its own
        ("", 250, ""),
        ("a\u00fc@b", 0, ""),
    ],
)
def test_to_json_is_json_dumps_of_the_api_object(
    recipient: str, code: int | None, description: str
) -> None:
    for zone, kind in zip((UTC, timezone(timedelta(hours=-5))) * 2, EventType, strict=True):
        event = Event(
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            kind,
            datetime(2026, 11, 23, 18, 35, 21, 392405, tzinfo=zone),
            recipient,
            code,
            description,
        )
        text = event.to_json()
        assert text == json.dumps(event.to_api(), separators=(",", ":"), ensure_ascii=False)
        assert json.loads(text)["timestamp"].endswith(("+00:00", "-05:00"))
