"""Mail log lines shaped exactly like Postfix 3.7's (see tests/data/postfix-samples), for tests
that need many messages without running Postfix, plus the map rows the milter would write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sendpost_agent.queuemap import HeaderState, MapWriter

RELAY = "relay=127.0.0.1[127.0.0.1]:2526, delay=0.05, delays=0.02/0.01/0/0.02"
START = datetime(2026, 11, 23, 18, 0, 0, tzinfo=UTC)


def stamp(when: datetime) -> str:
    return when.strftime("%b %e %H:%M:%S")


def queue_id(n: int) -> str:
    return f"{0xA0000000 + n:X}C"


def message_uuid(n: int) -> str:
    return str(uuid.UUID(int=(0x5E << 120) + n))


BOUNCE_EVERY = 7  # write_messages: every 7th message's second recipient bounces


def envelope(n: int, bounce: bool) -> tuple[str, str]:
    """The recipients message ``n`` was sent to (RCPT TO), as its lines name them."""
    return f"ok{n}@example.com", f"bounce{n}@example.com" if bounce else f"second{n}@example.com"


def message(n: int, when: datetime, bounce: bool = False) -> list[str]:
    """Lines of one message with two recipients: ok (sent) and a second one sent or bounced."""
    qid, ts = queue_id(n), stamp(when)
    second = (
        (
            f"to=<bounce{n}@example.com>, {RELAY}, dsn=5.1.1, status=bounced (host"
            f" 127.0.0.1[127.0.0.1] said: 550 5.1.1 <bounce{n}@example.com>: Recipient"
            " address rejected: User unknown (in reply to RCPT TO command))"
        )
        if bounce
        else (
            f"to=<second{n}@example.com>, {RELAY}, dsn=2.0.0, status=sent (250 2.0.0 Ok:"
            " sink accepted)"
        )
    )
    return [
        f"{ts} mx postfix/smtpd[5235]: {qid}: client=localhost[127.0.0.1]",
        f"{ts} mx postfix/qmgr[5131]: {qid}: from=<sender@example.com>, size=527, nrcpt=2"
        " (queue active)",
        f"{ts} mx postfix/smtp[5238]: {qid}: to=<ok{n}@example.com>, {RELAY}, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: sink accepted)",
        f"{ts} mx postfix/smtp[5238]: {qid}: {second}",
        f"{ts} mx postfix/qmgr[5131]: {qid}: removed",
    ]


def expected_events(n: int, bounce: bool = False) -> set[tuple[str, str, str]]:
    second = (
        ("bounced", f"bounce{n}@example.com") if bounce else ("delivered", f"second{n}@example.com")
    )
    return {(message_uuid(n), "delivered", f"ok{n}@example.com"), (message_uuid(n), *second)}


def record_messages(state_dir: Path, numbers: range) -> None:
    """The rows the milter writes for these messages."""
    writer = MapWriter(state_dir / "queuemap.sqlite3", 86400.0)
    for n in numbers:
        writer.put(queue_id(n), uuid.UUID(message_uuid(n)), HeaderState.PRESENT)
    writer.close()


def write_messages(
    log: Path, numbers: range, bounce_every: int = BOUNCE_EVERY
) -> set[tuple[str, str, str]]:
    """Append the messages to the log; returns the events they must produce."""
    expected: set[tuple[str, str, str]] = set()
    with log.open("a") as out:
        for n in numbers:
            bounce = n % bounce_every == 0
            out.write("\n".join(message(n, START + timedelta(seconds=n), bounce)) + "\n")
            expected |= expected_events(n, bounce)
    return expected
