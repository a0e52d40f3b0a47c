"""Recognising the events the WAL already holds when the log is read again after a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from logwatch.classify import EventType, Verdict
from logwatch.events import Event
from logwatch.recognise import Remembered

START = datetime(2026, 11, 23, 18, 0, 0, tzinfo=UTC)


def event(recipient: str, second: int = 0) -> bytes:
    verdict = Verdict(EventType.DELIVERED, 250, "2.0.0 Ok", "test")
    when = START + timedelta(seconds=second)
    return (
        Event.of("5e000000-0000-0000-0000-000000000001", verdict, when, recipient)
        .to_json()
        .encode()
    )


@pytest.mark.unit
def test_each_remembered_event_takes_one_copy_in_any_order() -> None:
    """Two deliveries can give the same text (an alias to two mailboxes in one second):
    two remembered copies take two produced again, a third is new."""
    a, b = event("a@example.com"), event("b@example.com")
    remembered = Remembered([a, b, a], join_wait=30.0)
    assert [remembered.take(e) for e in (b, a, event("c@example.com"), a, a)] == [
        True,
        True,
        False,
        True,
        False,
    ]
    assert remembered.left == 0 and remembered.done(0.0)


@pytest.mark.unit
def test_awaited_until_join_wait_past_the_newest_remembered_line() -> None:
    remembered = Remembered([event("a@example.com", 5), event("b@example.com", 2)], 30.0)
    deadline = (START + timedelta(seconds=35)).timestamp()
    assert not remembered.done(deadline - 1)
    assert remembered.done(deadline)
    assert remembered.left == 2  # not recognised: the caller says so


@pytest.mark.unit
def test_text_that_is_no_event_is_remembered_without_a_deadline() -> None:
    remembered = Remembered([b"not json", b'{"timestamp": 5}', b"[]"], 30.0)
    assert remembered.take(b"[]") and remembered.left == 2
    assert remembered.done(float("-inf"))  # no log time to wait for
