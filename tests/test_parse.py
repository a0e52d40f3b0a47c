"""logwatch.parse: real Postfix 3.7 lines, timestamp shapes, year inference, hostile input."""

from __future__ import annotations

import json
import pickle
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from logwatch import parse
from logwatch.parse import (
    Clock,
    Delivery,
    Expired,
    HeaderInfo,
    MessageId,
    Notification,
    QueueActive,
    Removed,
    Skipped,
    candidates,
    parse_block,
    parse_line,
)
from logwatch.relays import Endpoint, parse_relay
from tests.support.samples import SAMPLES

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
T = datetime(2026, 11, 23, 18, 35, 21, tzinfo=UTC)


def sample_lines(name: str) -> list[str]:
    """Lines of a shared sample log; a missing file fails (never skips) the test."""
    path = SAMPLES / name
    assert path.is_file(), f"sample log missing: {path}"
    return path.read_text(encoding="utf-8").splitlines()


def one(line: str, clock: Clock | None = None) -> object:
    return parse_line(line, clock or Clock(UTC, NOW))


# --- every record kind, lines verbatim from maillog.functional / maillog.content-filter ---

BOUNCED = (
    "Nov 23 18:35:21 feas postfix/smtp[5238]: A438320C032: to=<bounce1@example.com>, "
    "relay=127.0.0.1[127.0.0.1]:2526, delay=0.04, delays=0.02/0.01/0/0.01, dsn=5.1.1, "
    "status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <bounce1@example.com>: "
    "Recipient address rejected: User unknown (in reply to RCPT TO command))"
)
SENT = (
    "Nov 23 18:35:21 feas postfix/smtp[5238]: A438320C032: to=<ok1@example.com>, "
    "relay=127.0.0.1[127.0.0.1]:2526, delay=0.05, delays=0.02/0.01/0/0.02, dsn=2.0.0, "
    "status=sent (250 2.0.0 Ok: sink accepted)"
)


def test_bounced_delivery_keeps_nested_parentheses_of_the_reply() -> None:
    assert one(BOUNCED) == Delivery(
        time=T,
        program="postfix/smtp",
        queue_id="A438320C032",
        recipient="bounce1@example.com",
        orig_to=None,
        relay="127.0.0.1[127.0.0.1]:2526",
        dsn="5.1.1",
        status="bounced",
        reply="host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <bounce1@example.com>: "
        "Recipient address rejected: User unknown (in reply to RCPT TO command)",
    )


def test_sent_and_deferred_deliveries() -> None:
    sent = one(SENT)
    assert isinstance(sent, Delivery)
    assert (sent.recipient, sent.dsn, sent.status, sent.reply) == (
        "ok1@example.com",
        "2.0.0",
        "sent",
        "250 2.0.0 Ok: sink accepted",
    )
    deferred = one(
        "Nov 23 18:37:08 feas postfix/smtp[5238]: 5C23B20C0D1: to=<defer421a@example.com>, "
        "relay=127.0.0.1[127.0.0.1]:2526, delay=0.01, delays=0/0/0/0, dsn=4.3.2, "
        "status=deferred (host 127.0.0.1[127.0.0.1] said: 421 4.3.2 Service shutting down, "
        "try later (in reply to RCPT TO command))"
    )
    assert isinstance(deferred, Delivery)
    assert (deferred.queue_id, deferred.dsn, deferred.status) == (
        "5C23B20C0D1",
        "4.3.2",
        "deferred",
    )


def test_content_filter_hop_reply_names_the_new_queue_id() -> None:
    rec = one(
        "Nov 23 18:44:49 feas postfix/smtp[9242]: ABE8320C95C: to=<bounce3@example.com>, "
        "relay=127.0.0.1[127.0.0.1]:10024, delay=0.03, delays=0.01/0/0/0.02, dsn=2.0.0, "
        "status=sent (250 2.0.0 Ok: queued as B2EED20C95E)"
    )
    assert isinstance(rec, Delivery)
    assert rec.reply == "250 2.0.0 Ok: queued as B2EED20C95E"
    assert rec.relay == "127.0.0.1[127.0.0.1]:10024"


def test_long_queue_ids() -> None:
    rec = one(
        "Nov 23 18:38:40 feas postfix/smtp[6254]: 4jYF804DsrzJ9BN: to=<bounce2@example.com>, "
        "relay=127.0.0.1[127.0.0.1]:2526, delay=0.03, delays=0.01/0.01/0/0.01, dsn=5.1.1, "
        "status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <bounce2@example.com>: "
        "Recipient address rejected: User unknown (in reply to RCPT TO command))"
    )
    assert isinstance(rec, Delivery)
    assert rec.queue_id == "4jYF804DsrzJ9BN"
    note = one(
        "Nov 23 18:38:40 feas postfix/bounce[6256]: 4jYF804DsrzJ9BN: "
        "sender non-delivery notification: 4jYF804PBhzJ9BQ"
    )
    assert isinstance(note, Notification)
    assert (note.queue_id, note.new_queue_id) == ("4jYF804DsrzJ9BN", "4jYF804PBhzJ9BQ")


def test_expired() -> None:
    assert one(
        "Nov 23 18:36:36 feas postfix/qmgr[5131]: A438320C032: from=<sender@example.com>, "
        "status=expired, returned to sender"
    ) == Expired(
        time=T.replace(minute=36, second=36),
        program="postfix/qmgr",
        queue_id="A438320C032",
        sender="sender@example.com",
        status="expired",
    )
    forced = one(
        "Apr 10 14:50:16 mail postfix/qmgr[3663]: BACE842E73: from=<>, "
        "status=force-expired, returned to sender"
    )
    assert isinstance(forced, Expired)
    assert (forced.sender, forced.status) == ("", "force-expired")


def test_queue_active_of_a_message_and_of_a_postfix_bounce() -> None:
    assert one(
        "Nov 23 18:35:21 feas postfix/qmgr[5131]: A438320C032: from=<sender@example.com>, "
        "size=527, nrcpt=4 (queue active)"
    ) == QueueActive(T, "postfix/qmgr", "A438320C032", "sender@example.com", 4)
    bounce = one(
        "Nov 23 18:35:21 feas postfix/qmgr[5131]: AF89620C093: from=<>, size=2565, nrcpt=1 "
        "(queue active)"
    )
    assert bounce == QueueActive(T, "postfix/qmgr", "AF89620C093", "", 1)


def test_notification_kinds() -> None:
    assert one(
        "Nov 23 18:35:21 feas postfix/bounce[5240]: A438320C032: "
        "sender non-delivery notification: AF89620C093"
    ) == Notification(
        T, "postfix/bounce", "A438320C032", "sender non-delivery notification", "AF89620C093"
    )
    for kind in (
        "sender delivery status notification",
        "sender delay notification",
        "postmaster non-delivery notification",
    ):
        rec = one(f"Nov 23 18:35:21 feas postfix/bounce[5240]: A438320C032: {kind}: AF89620C093")
        assert isinstance(rec, Notification)
        assert rec.kind == kind


def test_removed() -> None:
    assert one("Nov 23 18:35:21 feas postfix/qmgr[5131]: AF89620C093: removed") == Removed(
        T, "postfix/qmgr", "AF89620C093"
    )
    assert one("Jun 29 03:10:16 RHL058 postfix/qmgr[14505]: 8DDDD7C2CDD: removedo") is None


UUID_LINE = (
    "Nov 23 18:44:49 feas postfix/cleanup[9241]: 8DB5C20C94F: info: header "
    "X-Sendpost-Message-UUID: 11111111-1111-4111-8111-111111111111 from localhost[127.0.0.1]; "
    "from=<sender@example.com> to=<defer1@example.com> proto=ESMTP helo=<vm>"
)


def test_header_info_carries_the_uuid() -> None:
    assert one(UUID_LINE) == HeaderInfo(
        time=T.replace(minute=44, second=49),
        program="postfix/cleanup",
        queue_id="8DB5C20C94F",
        name="X-Sendpost-Message-UUID",
        value="11111111-1111-4111-8111-111111111111",
        client="127.0.0.1",
    )


@pytest.mark.parametrize(
    ("line", "value"),
    [
        # header names are case-insensitive; local submissions log `from local;`
        (
            "Nov 23 18:44:49 h postfix/cleanup[1]: 8DB5C20C94F: info: header "
            "x-sendpost-message-uuid: abc from local; from=<root@h> to=<a@b>",
            "abc",
        ),
        # attacker-chosen helo and sender that look like another ` from x;`
        (
            "Nov 23 18:44:49 h postfix/cleanup[1]: 8DB5C20C94F: info: header "
            "X-Sendpost-Message-UUID: abc from unknown[10.0.0.1]; "
            "from=<x from y; z@evil> to=<a@b> proto=ESMTP helo=<a from b; status=sent>",
            "abc",
        ),
        # no sender logged at all
        (
            "Nov 23 18:44:49 h postfix/cleanup[1]: 8DB5C20C94F: info: header "
            "X-Sendpost-Message-UUID: abc from localhost[127.0.0.1];",
            "abc",
        ),
        (
            "Nov 23 18:44:49 h postfix/cleanup[1]: 8DB5C20C94F: info: header "
            "X-Sendpost-Message-UUID:  from localhost[127.0.0.1]; from=<a@b>",
            "",
        ),
    ],
)
def test_header_info_value_ends_at_the_first_origin(line: str, value: str) -> None:
    rec = one(line)
    assert isinstance(rec, HeaderInfo)
    assert rec.value == value


def test_other_info_headers_do_not_matter() -> None:
    line = UUID_LINE.replace("X-Sendpost-Message-UUID", "Subject")
    assert one(line) is None


def test_sender_containing_status_still_gives_queue_active() -> None:
    rec = one(
        "Nov 23 18:35:21 feas postfix/qmgr[5131]: A438320C032: from=<status=sent@evil.example>, "
        "size=527, nrcpt=1 (queue active)"
    )
    assert rec == QueueActive(T, "postfix/qmgr", "A438320C032", "status=sent@evil.example", 1)


@pytest.mark.parametrize(
    "line",
    [
        "Nov 23 18:35:21 feas postfix/smtpd[5235]: connect from localhost[127.0.0.1]",
        "Nov 23 18:35:21 feas postfix/smtpd[5235]: A438320C032: client=localhost[127.0.0.1]",
        "Jul  5 09:01:03 prd-mx1 postfix/cleanup[22010]: 3mL1Hq0Tgvz7sWh: "
        "resent-message-id=<3mL1Hq0Tgvz7sWh@mx14.example.net>",
        "Nov 23 18:37:52 feas postfix/smtpd[5877]: NOQUEUE: milter-reject: MAIL from "
        "localhost[127.0.0.1]: 451 4.7.1 Service unavailable - try again later; "
        "from=<sender@example.com> proto=ESMTP helo=<vm>",
        "Nov 23 18:37:16 feas postfix/smtpd[5387]: warning: milter inet:127.0.0.1:9900: "
        "read error in initial handshake",
        "Nov 23 18:35:16 feas postfix/master[5129]: daemon started -- version 3.7.11, "
        "configuration /tmp/feas/pf",
        "",
    ],
)
def test_lines_that_cannot_matter(line: str) -> None:
    assert one(line) is None


@pytest.mark.parametrize(
    ("line", "message_id"),
    [
        (
            "Nov 23 18:35:21 feas postfix/cleanup[5237]: A438320C032: "
            "message-id=<20261123183521.005233@vm>",
            "<20261123183521.005233@vm>",
        ),
        ("Nov 23 18:35:21 mailserver01 postfix/cleanup[19016]: 4104E3D: message-id=<>", "<>"),
        (  # the header's value as it was, not an address (wild/lines.log 51)
            "Nov 23 18:35:21 mailserver01 postfix/cleanup[19024]: ADD961003206D: message-id=="
            "?UTF-8?B?PDE5?=? =?UTF-8?B?MTIy?=",
            "=?UTF-8?B?PDE5?=? =?UTF-8?B?MTIy?=",
        ),
        (  # `status=` in it: still a Message-ID (the general parser)
            "Nov 23 18:35:21 feas postfix/cleanup[5237]: A438320C032: message-id=<status=sent@x>",
            "<status=sent@x>",
        ),
    ],
)
def test_message_id_lines(line: str, message_id: str) -> None:
    record = one(line)
    assert isinstance(record, MessageId)
    assert (record.time, record.program, record.message_id) == (T, "postfix/cleanup", message_id)


def test_status_line_of_another_program_does_not_matter() -> None:
    assert one(SENT.replace("postfix/smtp[5238]", "opendkim[5238]")) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "maillog.functional",
            {
                "None": 110,
                "MessageId": 30,
                "QueueActive": 41,
                "Delivery": 52,
                "Notification": 8,
                "Removed": 28,
                "Expired": 4,
                "HeaderInfo": 2,
            },
        ),
        (
            "maillog.content-filter",
            {
                "None": 22,
                "MessageId": 11,
                "HeaderInfo": 4,
                "QueueActive": 20,
                "Delivery": 26,
                "Notification": 5,
                "Removed": 11,
                "Expired": 3,
            },
        ),
    ],
)
def test_whole_sample_logs(name: str, expected: dict[str, int]) -> None:
    clock = Clock(UTC, NOW)
    kinds = Counter(type(parse_line(line, clock)).__name__ for line in sample_lines(name))
    assert kinds == Counter({k.replace("None", "NoneType"): v for k, v in expected.items()})


# --- Delivery field shapes (README "status-lines.jsonl fields") ---


@pytest.mark.parametrize(
    ("tail", "recipient", "orig_to", "relay", "dsn", "status", "reply"),
    [
        (
            "to=<bordjukov@<cutout>>, relay=marla.ludost.net[79.98.105.18]:25, delay=0.36, "
            "dsn=2.0.0, status=sent (250 OK)",
            "bordjukov@<cutout>",
            None,
            "marla.ludost.net[79.98.105.18]:25",
            "2.0.0",
            "sent",
            "250 OK",
        ),
        (
            "to=user@hostname.example.com, orig_to=root@localhost, relay=local, delay=0.07, "
            'dsn=2.0.0, status=sent (delivered to command: procmail -a "$EXTENSION")',
            "user@hostname.example.com",
            "root@localhost",
            "local",
            "2.0.0",
            "sent",
            'delivered to command: procmail -a "$EXTENSION"',
        ),
        (
            "to=<>,                                   relay=none,  delay=1,          "
            "status=bounced (mail for sample.net loops back to myself)",
            "",
            None,
            "none",
            None,
            "bounced",
            "mail for sample.net loops back to myself",
        ),
        (
            "to=<root@localhost>, orig_to=<root>, relay=mail.localhost[private/dovecot-lmtp], "
            "conn_use=2 delay=0.4, delays=0.33/0.02/0.02/0.04, dsn=4.1.1, "
            'status=SOFTBOUNCE (unknown user: "to")',
            "root@localhost",
            "root",
            "mail.localhost[private/dovecot-lmtp]",
            "4.1.1",
            "SOFTBOUNCE",
            'unknown user: "to"',
        ),
        (
            "to=<a@b.c>, relay=x[1.2.3.4]:25, delay=1, dsn=2.1.5, "
            "status=deliverable (250 2.1.5 OK z9-20020adfdf89$",
            "a@b.c",
            None,
            "x[1.2.3.4]:25",
            "2.1.5",
            "deliverable",
            "250 2.1.5 OK z9-20020adfdf89$",
        ),
        (
            "to=<a@b.c>, somehost.tld[x.x.x.x:25], delay=0.56, dsn=5.1.1, "
            "status=bounced (host said: 550 (in reply to RCPT TO command)),,,,,,,",
            "a@b.c",
            None,
            None,
            "5.1.1",
            "bounced",
            "host said: 550 (in reply to RCPT TO command)",
        ),
        (
            "to=<a@b.c>, relay=mx[1.2.3.4]:25, delay=1, delays=1/0/0/0, tls=dane/requiretls?, "
            "dsn=2.0.0, status=sent (250 ok) 215",
            "a@b.c",
            None,
            "mx[1.2.3.4]:25",
            "2.0.0",
            "sent",
            "250 ok",
        ),
    ],
)
def test_delivery_fields(
    tail: str,
    recipient: str,
    orig_to: str | None,
    relay: str | None,
    dsn: str | None,
    status: str,
    reply: str | None,
) -> None:
    rec = one("Mar  3 09:02:27 mx postfix/smtp[31022]: AA01012E: " + tail)
    assert isinstance(rec, Delivery)
    assert (rec.recipient, rec.orig_to, rec.relay, rec.dsn, rec.status, rec.reply) == (
        recipient,
        orig_to,
        relay,
        dsn,
        status,
        reply,
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "Feb 25 15:36:07 server1 postfix/smtpd[24974]: generic_checks: "
            "name=permit_mynetworks status=1",
            "no queue id",
        ),
        (
            "Mar  3 09:00:07 mx postfix/qmgr[31002]: AA01001E: status=deferred (bounce failed)",
            "no recipient",
        ),
        (
            "Sep 04 09:57:35 s postfix/smtp[658082]: C77FF1920080: tox=<U@E.COM>, relay=m, "
            "dsn=2.0.0, status=sent",
            "no recipient",
        ),
        (
            "Mar  3 09:00:07 mx postfix/smtp[1]: AA01001E: to=<a@b>, relay=none, status=",
            "no status",
        ),
        (
            "Mar  3 09:00:07 mx postfix/qmgr[1]: AA01001E: from=<a@b>, status=deferred (x)",
            "not a delivery status",
        ),
        (
            "postfix/smtp[66014]: B8A44169A1C: to=<a@b>, relay=x, status=sent (ok)",
            "unparseable prefix",
        ),
        (
            "Απρ 15 12:20:28 mx2 postfix/smtp[6833]: B8A44169A1C: to=<a@b>, status=sent",
            "unparseable prefix",
        ),
        (
            "Feb 30 12:20:28 mx2 postfix/smtp[6833]: B8A44169A1C: to=<a@b>, status=sent",
            "unparseable timestamp",
        ),
        (
            "2026-13-01T00:00:00+00:00 mx2 postfix/smtp[6833]: B8A44169A1C: to=<a@b>, status=sent",
            "unparseable timestamp",
        ),
    ],
)
def test_skipped_with_a_reason(line: str, reason: str) -> None:
    assert one(line) == Skipped(reason)


# --- prefixes and timestamps ---

TAIL = "postfix/smtp[5238]: A438320C032: to=<ok1@example.com>, relay=r, dsn=2.0.0, status=sent (x)"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("Nov 23 18:35:21 feas ", T),
        ("Nov  3 18:35:21 feas ", T.replace(day=3)),
        ("Nov 3 18:35:21 feas ", T.replace(day=3)),
        ("Nov 03 18:35:21 feas ", T.replace(day=3)),
        ("Nov 23 18:35:21.392405 feas ", T.replace(microsecond=392405)),  # short-precise
        ("Nov 23 18:35:21.39 feas ", T.replace(microsecond=390000)),
        ("<22>Nov 23 18:35:21 feas ", T),
        ("Nov 23 18:35:21 ", T),  # no host
        ("Nov 23 18:35:21 postfix ", T),  # a host called postfix
        ("Nov 23 18:35:21 feas    ", T),  # re-aligned
        ("2026-11-23T18:35:21.392405+00:00 feas ", T.replace(microsecond=392405)),
        ("2026-11-23T18:35:21Z feas ", T),
        ("2026-11-23T18:35:21+0000 feas ", T),  # journalctl -o short-iso
        ("2026-11-23T20:35:21.392405+0200 feas ", T.replace(microsecond=392405)),
        (
            "2024-02-14T14:47:24.705153-08:00 INFO    ",
            datetime(2024, 2, 14, 22, 47, 24, 705153, UTC),
        ),
        ("2026-11-23T18:35:21 feas ", T),  # no offset: the clock's zone
        (" postfix-mailcow-1    | Nov 23 18:35:21 feas ", T),
    ],
)
def test_prefixes(prefix: str, expected: datetime) -> None:
    rec = one(prefix + TAIL)
    assert isinstance(rec, Delivery)
    assert rec.time == expected
    assert rec.time.tzinfo is not None
    assert (rec.program, rec.queue_id, rec.recipient) == (
        "postfix/smtp",
        "A438320C032",
        "ok1@example.com",
    )


def test_rfc5424() -> None:
    rec = one(
        "<22>1 2026-11-23T18:35:21.5Z feas postfix/smtp 5238 - - A438320C032: to=<a@b>, "
        "relay=r, dsn=2.0.0, status=sent (ok)"
    )
    assert isinstance(rec, Delivery)
    assert (rec.time, rec.program, rec.queue_id) == (
        T.replace(microsecond=500000),
        "postfix/smtp",
        "A438320C032",
    )
    sd = one(
        '<22>1 2026-11-23T18:35:21Z feas postfix/qmgr 1 - [x@1 a="b\\]c"] A438320C032: removed'
    )
    assert sd == Removed(T, "postfix/qmgr", "A438320C032")


@pytest.mark.parametrize(
    "program",
    [
        "postfix/smtp",
        "postfix-out/smtp",
        "postfix/submission/smtpd",
        "postfix-170.55.103.23/smtp",
        "postfix/amavis/smtp",
        "postfix-mx/content-filter/smtp",
        "postfix",
    ],
)
def test_program_is_the_tag_without_pid(program: str) -> None:
    rec = one(f"Nov 23 18:35:21 feas {program}[1]: A438320C032: removed")
    assert rec == Removed(T, program, "A438320C032")


def test_tag_without_colon_after_pid() -> None:
    rec = one(SENT.replace("[5238]:", "[5238]"))
    assert isinstance(rec, Delivery)
    assert rec.queue_id == "A438320C032"


def test_default_zone_is_local_and_zones_follow_dst() -> None:
    local = one("Nov 23 18:35:21 feas postfix/qmgr[1]: A438320C032: removed", Clock(now=NOW))
    assert isinstance(local, Removed)
    assert local.time.utcoffset() == datetime(2026, 11, 23, 18, 35, 21).astimezone().utcoffset()
    berlin = Clock(ZoneInfo("Europe/Berlin"), NOW)
    summer = parse_line("Jul  1 12:00:00 h postfix/qmgr[1]: A438320C032: removed", berlin)
    winter = parse_line("Dec  1 12:00:00 h postfix/qmgr[1]: A438320C032: removed", berlin)
    assert isinstance(summer, Removed)
    assert isinstance(winter, Removed)
    assert summer.time.utcoffset() == timedelta(hours=2)
    assert winter.time.utcoffset() == timedelta(hours=1)
    fixed = Clock(timezone(timedelta(hours=-5)), NOW).syslog_time("Nov 23 18:35:21")
    assert fixed == T + timedelta(hours=5)


def test_the_hour_repeated_when_dst_ends_is_told_apart() -> None:
    """Berlin, 25 Oct 2026: 02:00-02:59 comes twice, first at +02:00, then at +01:00."""
    berlin = Clock(ZoneInfo("Europe/Berlin"), NOW)
    stamps = [
        "Oct 25 01:59:58",
        "Oct 25 02:00:01",
        "Oct 25 02:59:59",
        "Oct 25 02:59:58",
        "Oct 25 02:00:01",
        "Oct 25 02:30:00",
        "Oct 25 03:00:00",
    ]
    times = [berlin.syslog_time(stamp) for stamp in stamps]
    utc = [t.astimezone(UTC).strftime("%H:%M:%S") for t in times if t is not None]
    assert utc == [
        "23:59:58",
        "00:00:01",
        "00:59:59",
        "00:59:58",  # a line out of order
        "01:00:01",
        "01:30:00",
        "02:00:00",
    ]


# --- year inference ---


def years(clock: Clock, *stamps: str) -> list[int]:
    out = []
    for stamp in stamps:
        when = clock.syslog_time(stamp)
        assert when is not None
        out.append(when.year)
    return out


def test_first_line_at_most_a_day_in_the_future() -> None:
    assert years(Clock(UTC, NOW), "Nov 25 11:59:59") == [2026]
    assert years(Clock(UTC, NOW), "Nov 25 12:00:01") == [2025]
    assert years(Clock(UTC, NOW), "Jan  5 00:00:00") == [2026]
    assert years(Clock(UTC, datetime(2026, 12, 31, 23, 0, tzinfo=UTC)), "Jan  1 00:10:00") == [2027]


def test_new_year() -> None:
    clock = Clock(UTC, datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC))
    assert years(
        clock, "Dec 31 23:59:59", "Jan  1 00:00:01", "Dec 31 23:59:58", "Jan  1 00:00:02"
    ) == [
        2026,
        2027,
        2026,  # a late line from the old year does not move the clock back
        2027,
    ]


def test_replay_of_last_years_file() -> None:
    clock = Clock(UTC, datetime(2027, 3, 1, tzinfo=UTC))
    stamps = (
        "Nov 23 18:35:21",
        "Dec  1 00:00:00",
        "Dec 31 23:59:59",
        "Jan  1 00:00:00",
        "Feb 28 10:00:00",
    )
    assert years(clock, *stamps) == [2026, 2026, 2026, 2027, 2027]


def test_february_29_of_the_last_leap_year() -> None:
    assert years(Clock(UTC, datetime(2026, 3, 1, tzinfo=UTC)), "Feb 29 10:00:00") == [2024]
    assert Clock(UTC, NOW).syslog_time("Feb 30 10:00:00") is None
    assert Clock(UTC, NOW).syslog_time("Foo 10 10:00:00") is None


# --- the records ---


def test_records_are_immutable_named_tuples() -> None:
    """Built by tuple.__new__ on the hot path: still the very same record as Delivery(...)."""
    rec = one(SENT)
    assert type(rec) is Delivery
    with pytest.raises(AttributeError):
        rec.status = "bounced"  # type: ignore[misc]
    assert not hasattr(rec, "__dict__")
    assert rec == Delivery(**rec._asdict())
    assert hash(rec) == hash(Delivery(*rec))
    assert pickle.loads(pickle.dumps(rec)) == rec
    assert rec._replace(status="x").status == "x"


def test_fast_shapes_parse_like_the_general_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-line regexes are only a shortcut: without them every line gives the same."""
    lines = [
        *sample_lines("maillog.functional"),
        *sample_lines("maillog.content-filter"),
        *sample_lines("maillog.pipe-filter"),
        *(line for line in sample_lines("wild/lines.log") if line and not line.startswith("#")),
    ]
    # as logwatch makes them of journal entries: RFC 3339 time, no host, no pid
    journal = re.compile(r"\w{3} +\d+ (\d\d:\d\d:\d\d) \S+ ([^\s\[:]+)\[\d+\]: ")
    lines += [
        journal.sub(r"2026-11-23T\1.000042+00:00 - \2: ", line, count=1)
        for line in sample_lines("maillog.functional")
    ]
    fast = [parse_line(line, Clock(UTC, NOW)) for line in lines]
    shortcuts = ("_COMMON_DELIVERY", "_COMMON_ACTIVE", "_COMMON_REMOVED", "_COMMON_MESSAGE_ID")
    taken = sum(bool(getattr(parse, name).match(line)) for line in lines for name in shortcuts)
    common = sum(isinstance(rec, Delivery | QueueActive | Removed | MessageId) for rec in fast)
    assert taken > 0.85 * common  # the shortcut is really used
    never = re.compile(r"(?!)")
    for name in (*shortcuts, "_COMMON_INFO_HEAD"):
        monkeypatch.setattr(parse, name, never)
    general = [parse_line(line, Clock(UTC, NOW)) for line in lines]
    assert [(line, rec) for line, rec in zip(lines, fast, strict=True)] == list(
        zip(lines, general, strict=True)
    )


# --- hostile input ---

BIG = 5_000_000
HEAD = "Nov 23 18:35:21 feas postfix/smtp[5238]: A438320C032: "


@pytest.mark.parametrize(
    "line",
    [
        "a" * BIG,
        "status=" * (BIG // 7),
        HEAD + "to=<" + "a" * BIG + " status=sent (",
        HEAD + "to=<" + ">" * BIG + "status=sent",
        HEAD + "to=<a>, " + "relay=" * (BIG // 6) + " status=sent",
        HEAD + "to=<a>, relay=x, " + "a=b, " * (BIG // 5) + "dsn=2.0.0, status=sent (x)",
        HEAD + "to=<a>, relay=x, dsn=2.0.0, status=sent (" + "(" * BIG,
        "Nov 23 18:35:21 " + "x" * BIG + " status=",
        "Nov 23 18:35:21 feas postfix/smtp[5238]: " + "A" * BIG + " status=",
        "<22>1 2026-11-23T18:35:21Z h postfix/smtp 1 - [" + "a" * BIG + "] status=",
        "<22>1 2026-11-23T18:35:21Z h postfix/smtp 1 - [" + "\\]" * (BIG // 2) + " status=",
        HEAD + "info: header X-Sendpost-Message-UUID: " + " from x" * (BIG // 7),
        HEAD + "from=<" + ">, size=1, nrcpt=1 " * (BIG // 20) + "(queue active)",
        HEAD + "from=<" + ">" * BIG + ", status=expired",
        HEAD.replace("smtp", "bounce") + "sender " + " " * BIG + "notification: X",
        " " * BIG + "svc | status=",
        HEAD
        + "to=<\x00"
        + "\x00" * BIG
        + ">, relay=\x00, dsn=2.0.0, status=sent ("
        + "\ufffd" * BIG
        + ")",
    ],
    ids=lambda line: f"{line[:12]!r}..{line[-12:]!r}",
)
def test_huge_lines_are_handled_in_linear_time(line: str) -> None:
    started = time.perf_counter()
    parse_line(line, Clock(UTC, NOW))
    assert time.perf_counter() - started < 3.0  # about 0.4 s at worst on a slow VM


@pytest.mark.parametrize(
    "head",
    [HEAD, HEAD.replace("smtp[5238]", "smtp")],
    ids=["common shape", "general parser (no pid)"],
)
def test_numbers_too_long_for_int_make_no_record_and_no_error(head: str) -> None:
    """int() refuses more than 4,300 digits: a forged line must not raise."""
    line = head.replace("smtp", "qmgr") + "from=<a@b>, size=1, nrcpt={} (queue active)"
    assert isinstance(parse_line(line.format(2), Clock(UTC, NOW)), QueueActive)
    assert parse_line(line.format("9" * 5000), Clock(UTC, NOW)) is None


def test_a_relay_port_too_long_for_int_is_no_relay() -> None:
    assert parse_relay("mx.example.com[192.0.2.1]:" + "9" * 5000) is None
    assert parse_relay("mx.example.com[192.0.2.1]:25") == Endpoint(
        "mx.example.com", "192.0.2.1", 25
    )


def test_nul_bytes_and_replacement_characters_pass_through() -> None:
    rec = one(SENT.replace("ok1@", "o\x00k\ufffd@").replace("sink accepted", "\x00\ufffd"))
    assert isinstance(rec, Delivery)
    assert rec.recipient == "o\x00k\ufffd@example.com"
    assert rec.reply == "250 2.0.0 Ok: \x00\ufffd"


@pytest.mark.parametrize(
    "name",
    ["maillog.functional", "maillog.content-filter", "maillog.pipe-filter", "wild/lines.log"],
)
def test_parse_block_gives_what_parse_line_gives_line_by_line(name: str) -> None:
    """The block parser's prefilter may drop only lines that parse_line ignores, and
    cleanup's message-id lines unless they are asked for (a pipe filter is configured)."""
    lines = sample_lines(name)
    lines += [SENT.replace("A438320C032: ", ""), "not a log line", "", BOUNCED + " status="]
    clock = Clock(UTC, NOW)
    one_by_one = [r for line in lines if (r := parse_line(line, clock)) is not None]
    raw = [line.encode() for line in lines]
    assert parse_block(raw, Clock(UTC, NOW), message_ids=True) == one_by_one
    assert any(isinstance(r, MessageId) for r in one_by_one)
    block = parse_block(raw, Clock(UTC, NOW))
    assert block == [r for r in one_by_one if not isinstance(r, MessageId)]
    assert any(isinstance(r, Skipped) for r in block)  # the odd lines are counted, not lost
    # The usual block has neither rare marker: the other branch of the prefilter.
    common = [
        line for line in lines if " notification: " not in line and "info: header " not in line
    ]
    clock = Clock(UTC, NOW)
    expected = [r for line in common if (r := parse_line(line, clock)) is not None]
    block = parse_block([line.encode() for line in common], Clock(UTC, NOW), message_ids=True)
    assert block == expected


def every_real_line() -> list[str]:
    """Every log line of the samples: the three maillogs, the wild lines and the 459 wild
    status lines."""
    lines = [
        line
        for name in ("maillog.functional", "maillog.content-filter", "maillog.pipe-filter")
        for line in sample_lines(name)
    ]
    lines += [line for line in sample_lines("wild/lines.log") if not line.startswith("#")]
    lines += [json.loads(row)["line"] for row in sample_lines("wild/status-lines.jsonl")]
    return lines


def parser_takes(lines: list[str], message_ids: bool) -> list[str]:
    """The lines parse_line gives anything for (message-id lines only if asked)."""
    out = []
    for line in lines:
        record = parse_line(line, Clock(UTC, NOW))
        if record is not None and (message_ids or not isinstance(record, MessageId)):
            out.append(line)
    return out


@pytest.mark.parametrize("block_size", [1, 2, 7, 64, 100_000])
@pytest.mark.parametrize("message_ids", [False, True])
def test_the_block_prefilter_hands_on_every_line_the_parser_takes(
    block_size: int, message_ids: bool
) -> None:
    """Lines are picked out of the whole block by searching it for markers: none that
    parse_line takes (a record or a counted skip) may be left out, whichever block it
    falls in (first, last, alone), and each comes decoded as it would be alone, in order."""
    marker_twice = SENT.replace("ok1@", "status=ok1@")
    lines = [line.encode() for line in every_real_line()]
    lines += [
        marker_twice.encode(),
        SENT.encode().replace(b"ok1@", b"ok\xff\xe2\x821@"),  # invalid UTF-8, cut sequence
        b"\xf0\x9f noise",
        b"",
        HEAD.replace("smtp", "qmgr").encode() + b"removed",  # `: removed` at the very end
    ]
    taken = parser_takes([raw.decode("utf-8", "replace") for raw in lines], message_ids)
    assert len(taken) > 1000 and marker_twice in taken
    handed_on: list[str] = []
    for start in range(0, len(lines), block_size):
        handed_on += candidates(lines[start : start + block_size], message_ids)
    assert parser_takes(handed_on, message_ids) == taken
    assert len(handed_on) < 0.8 * len(lines)  # most lines are never cut out of the block


def test_parse_block_decodes_invalid_utf8_like_the_follower_promises() -> None:
    raw = SENT.encode().replace(b"ok1@", b"ok\xff\xfe1@")
    (record,) = parse_block([b"noise \xff", raw], Clock(UTC, NOW))
    assert isinstance(record, Delivery) and record.recipient == "ok\ufffd\ufffd1@example.com"


def test_iso_stamp_out_of_range_in_the_local_zone_is_skipped_not_a_crash() -> None:
    line = (
        "0001-01-01T00:00:00 mx postfix/smtp[1]: ABCDE12345: to=<a@b>, relay=x,"
        " delay=1, dsn=2.0.0, status=sent (250 ok)"
    )
    assert parse_line(line, Clock(None, NOW)) == Skipped("unparseable timestamp")
