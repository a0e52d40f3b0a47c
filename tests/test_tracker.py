"""Joining and following messages, on the real Postfix output in tests/data/postfix-samples.

The queue map here is the real SQLite map, filled the way the milter fills it.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from logwatch.parse import Clock, Delivery, parse_line
from logwatch.relays import ContentFilters
from logwatch.tracker import Tracker
from sendpost_agent.queuemap import Entry, HeaderState, MapReader, MapWriter
from sendpost_agent.trust import build_policy
from tests.support.samples import SAMPLES

pytestmark = pytest.mark.unit

FILTER = ContentFilters.from_values(["smtp-amavis:[127.0.0.1]:10024"])
NOW = datetime(2026, 11, 24, tzinfo=UTC)
U_MIXED = "11111111-1111-4111-8111-000000000001"
U_CF = "11111111-1111-4111-8111-000000000020"


def sample(name: str) -> list[str]:
    path = SAMPLES / name
    assert path.exists(), f"{path} is missing: the tests need tests/data/postfix-samples"
    return path.read_text().splitlines()


@pytest.fixture
def reader(tmp_path: Path) -> MapReader:
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    for queue_id, value in {
        "A438320C032": U_MIXED,
        "C8E5320C056": U_CF,
        "5C23B20C0D1": "11111111-1111-4111-8111-000000000003",
    }.items():
        writer.put(queue_id, uuid.UUID(value), HeaderState.PRESENT)
    writer.put("2E05020C0C1", None, HeaderState.MISSING)
    writer.close()
    return MapReader(tmp_path / "map.sqlite3")


def run(lines: list[str], tracker: Tracker, finish: bool = True) -> list[dict[str, object]]:
    clock = Clock(UTC, NOW)
    events = []
    for line in lines:
        record = parse_line(line, clock)
        if record is not None:
            events += tracker.feed(record)
            events += tracker.tick()
    if finish:
        events += tracker.finish()
    return [e.to_api() for e in events]


def brief(events: list[dict[str, object]], message_id: str) -> list[tuple[object, object]]:
    return [(e["event_type"], e["recipient"]) for e in events if e["message_id"] == message_id]


def test_mixed_outcome_message_with_deferral_then_expiry(reader: MapReader) -> None:
    events = run(sample("maillog.functional"), Tracker(reader.get, FILTER))
    assert brief(events, U_MIXED) == [
        ("bounced", "bounce1@example.com"),
        ("deferred", "defer1@example.com"),
        ("delivered", "ok1@example.com"),
        ("delivered", "ok2@example.net"),
        *[("deferred", "defer1@example.com")] * 4,
        ("soft_bounced", "defer1@example.com"),
    ]
    bounced, expired = events[0], next(e for e in events if e["event_type"] == "soft_bounced")
    assert bounced == {
        "message_id": U_MIXED,
        "event_type": "bounced",
        "timestamp": "2026-11-23T18:35:21+00:00",
        "smtp_code": 550,
        "recipient": "bounce1@example.com",
        "smtp_description": "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <bounce1@example.com>:"
        " Recipient address rejected: User unknown (in reply to RCPT TO"
        " command)",
    }
    assert expired["smtp_code"] == 450
    assert "expired" in str(expired["smtp_description"])
    assert "Mailbox temporarily unavailable" in str(expired["smtp_description"])


def test_header_checks_info_line_is_the_fallback(reader: MapReader) -> None:
    events = run(sample("maillog.functional"), Tracker(reader.get, FILTER))
    assert brief(events, "aaaaaaaa-0000-4000-8000-000000000002") == [
        ("delivered", "ok8@example.com")
    ]
    assert brief(events, "aaaaaaaa-0000-4000-8000-000000000003") == [
        ("delivered", "ok10@example.com"),
        ("delivered", "ok11@example.com"),
    ]


def test_messages_without_uuid_and_postfix_reports_give_no_event_but_are_counted(
    reader: MapReader,
) -> None:
    tracker = Tracker(reader.get, FILTER)
    events = run(sample("maillog.functional"), tracker)
    assert not [e for e in events if e["recipient"] == "sender@example.com"]  # NDRs
    assert tracker.counts["unmatched:postfix_notification"] == 8
    assert tracker.counts["unmatched:header_missing"] == 1  # 2E05020C0C1
    assert tracker.counts["unmatched:unknown_queue_id"] > 0


@pytest.mark.parametrize("filters", [FILTER, ContentFilters()], ids=["configured", "unknown"])
def test_content_filter_hop_reports_only_the_final_outcome(
    reader: MapReader, filters: ContentFilters
) -> None:
    """Recognised by configuration, or by the new queue ID showing up in the log."""
    tracker = Tracker(reader.get, filters)
    events = run(sample("maillog.functional"), tracker)
    assert brief(events, U_CF) == [
        ("bounced", "bounce20@example.com"),
        ("deferred", "defer20@example.com"),
        ("delivered", "ok20@example.com"),
        *[("deferred", "defer20@example.com")] * 4,
        ("soft_bounced", "defer20@example.com"),
    ]
    assert not [e for e in events if "10024" in str(e.get("smtp_description"))]


def test_reinjected_lines_before_the_hop_line_wait_for_it(reader: MapReader) -> None:
    """The filter's re-injected message is logged before the hop's `queued as` line."""
    lines = [
        "Nov 23 18:44:49 h postfix/qmgr[1]: CFE4C20C058: from=<s@x>, size=623, nrcpt=1 (queue active)",
        "Nov 23 18:44:49 h postfix/smtp[2]: CFE4C20C058: to=<ok20@example.com>, relay=127.0.0.1[127.0.0.1]:2526, delay=0.02, delays=0/0/0/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: sink accepted)",
        "Nov 23 18:44:50 h postfix/smtp[2]: C8E5320C056: to=<ok20@example.com>, relay=127.0.0.1[127.0.0.1]:10024, delay=0.04, delays=0.01/0.01/0/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as CFE4C20C058)",
    ]
    events = run(lines, Tracker(reader.get, FILTER), finish=False)
    assert brief(events, U_CF) == [("delivered", "ok20@example.com")]
    assert events[0]["timestamp"] == "2026-11-23T18:44:49+00:00"


def test_local_smarthost_that_answers_queued_as_is_a_delivery(reader: MapReader) -> None:
    line = (
        "Nov 23 18:35:21 h postfix/smtp[2]: A438320C032: to=<ok1@example.com>,"
        " relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: queued as 7D1A2C0031)"
    )
    later = (
        "Nov 23 18:36:00 h postfix/qmgr[1]: 9999999999: from=<a@b>, size=1, nrcpt=1 (queue active)"
    )
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    assert run([line], tracker, finish=False) == []  # maybe a hop: wait for 7D1A2C0031
    events = run([later], tracker, finish=False)  # 39 s of log time later
    assert brief(events, U_MIXED) == [("delivered", "ok1@example.com")]
    assert events[0]["timestamp"] == "2026-11-23T18:35:21+00:00"
    assert run([], tracker) == []  # reported once


def test_remote_relay_is_a_delivery_at_once(reader: MapReader) -> None:
    line = (
        "Nov 23 18:35:21 h postfix/smtp[2]: A438320C032: to=<u@gmail.com>,"
        " relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, delay=1, delays=0/0/0/1,"
        " dsn=2.0.0, status=sent (250 2.0.0 OK  1700000000 a1si123 - gsmtp)"
    )
    events = run([line], Tracker(reader.get, FILTER), finish=False)
    assert brief(events, U_MIXED) == [("delivered", "u@gmail.com")]


def test_deferred_events_can_be_suppressed_but_expiry_still_reported(reader: MapReader) -> None:
    events = run(sample("maillog.functional"), Tracker(reader.get, FILTER, report_deferred=False))
    assert not [e for e in events if e["event_type"] == "deferred"]
    assert ("soft_bounced", "defer1@example.com") in brief(events, U_MIXED)


def test_state_survives_a_restart_between_deferral_and_expiry(reader: MapReader) -> None:
    lines = sample("maillog.functional") + sample("maillog.content-filter")
    whole = run(lines, Tracker(reader.get, FILTER))
    for cut in (30, 120, 200, 300):
        first = Tracker(reader.get, FILTER)
        events = run(lines[:cut], first, finish=False)
        state = json.loads(json.dumps(first.snapshot()))
        second = Tracker(reader.get, FILTER)
        second.restore(state)
        events += run(lines[cut:], second)
        assert events == whole, f"cut at line {cut}"


def test_memory_of_queued_ids_stays_within_the_join_wait(reader: MapReader) -> None:
    """One remembered queue ID per queued message: it must not grow with the volume."""
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    lines = [
        f"Nov 23 18:{i // 60:02d}:{i % 60:02d} h postfix/qmgr[1]: {0xB0000000 + i:X}:"
        " from=<a@b>, size=1, nrcpt=1 (queue active)"
        for i in range(3000)
    ]
    run(lines, tracker, finish=False)
    assert len(tracker._recent) <= 32  # one per log second, 30 s kept


# --- a bug on one held line costs that line only -----------------------------------------

STATUS = (
    "Nov 23 18:35:21 feas postfix/smtp[5238]: {qid}: to=<{rcpt}>, relay=mx.example.com"
    "[192.0.2.1]:25, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
)


def held_lines(tracker: Tracker, lines: list[tuple[str, str]], bad: str) -> None:
    """Feed status lines whose queue IDs have no UUID yet; the one to ``bad`` carries a
    reply of the wrong type, as a parser bug could hand on: deciding it raises."""
    clock = Clock(UTC, NOW)
    for qid, rcpt in lines:
        record = parse_line(STATUS.format(qid=qid, rcpt=rcpt), clock)
        assert isinstance(record, Delivery)
        if rcpt == bad:
            record = record._replace(reply=250)
        assert tracker.feed(record) == []


def test_a_bug_settling_one_held_line_keeps_the_others_settled_with_it() -> None:
    rows: dict[str, Entry] = {}
    errors: list[tuple[str, object]] = []
    tracker = Tracker(rows.get, FILTER, on_error=lambda doing, what: errors.append((doing, what)))
    held_lines(
        tracker,
        [("AAAAA10001", "r1@x"), ("AAAAA10002", "r2@x"), ("AAAAA10003", "r3@x")],
        bad="r2@x",
    )
    for n, qid in enumerate(("AAAAA10001", "AAAAA10002", "AAAAA10003"), 1):  # rows came late
        rows[qid] = Entry(f"11111111-1111-4111-8111-00000000000{n}", HeaderState.PRESENT, 0)
    events = tracker.tick(tracker.now + 3600)
    assert [e.recipient for e in events] == ["r1@x", "r3@x"]
    assert [doing for doing, _ in errors] == ["settling"]


def test_a_bug_on_one_line_released_by_a_hop_keeps_the_others() -> None:
    """Lines of a re-injected message wait for the hop line that gives them their UUID;
    deciding one of them raises."""
    errors: list[tuple[str, object]] = []
    rows = {"BBBBB10001": Entry(U_MIXED, HeaderState.PRESENT, 0)}
    tracker = Tracker(rows.get, FILTER, on_error=lambda doing, what: errors.append((doing, what)))
    held_lines(
        tracker,
        [("AAAAA10001", "r1@x"), ("AAAAA10001", "r2@x"), ("AAAAA10001", "r3@x")],
        bad="r2@x",
    )
    hop = parse_line(
        "Nov 23 18:35:22 feas postfix/smtp[5238]: BBBBB10001: to=<r@x>, relay=127.0.0.1"
        "[127.0.0.1]:10024, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0, status=sent (250 2.0.0"
        " Ok: queued as AAAAA10001)",
        Clock(UTC, NOW),
    )
    assert [e.recipient for e in tracker.feed(hop)] == ["r1@x", "r3@x"]
    assert [doing for doing, _ in errors] == ["handling"]
    assert tracker.finish() == []  # nothing left held, nothing reported twice


def test_without_an_error_handler_a_bug_is_raised() -> None:
    rows: dict[str, Entry] = {}
    tracker = Tracker(rows.get, FILTER)
    held_lines(tracker, [("AAAAA10002", "r2@x")], bad="r2@x")
    rows["AAAAA10002"] = Entry(U_MIXED, HeaderState.PRESENT, 0)
    with pytest.raises(TypeError):
        tracker.tick(tracker.now + 3600)


REUSED = "5C23B20C0D1"  # in the map: an older message that had this queue ID


def test_postsuper_requeued_message_keeps_its_uuid_and_deferrals(reader: MapReader) -> None:
    """`postsuper -r` re-queues a message under a new queue ID through pickup, which
    turns milters off for it (pickup.c): the outcome there is still this message's."""
    relay = "relay=mx.example.net[203.0.113.5]:25, delay=5, delays=0/0/5/0"
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    events = run(
        [
            f"Nov 23 18:35:21 h postfix/smtp[2]: A438320C032: to=<slow@example.com>, {relay},"
            " dsn=4.4.1, status=deferred (connect to mx.example.net[203.0.113.5]:25: Connection"
            " timed out)",
            "Nov 23 19:00:00 h postfix/pickup[6002]: 1C2D320C040: uid=106"
            " from=<sender@example.com> orig_id=A438320C032",
            f"Nov 23 19:00:01 h postfix/smtp[2]: 1C2D320C040: to=<slow@example.com>, {relay},"
            " dsn=5.1.1, status=bounced (host mx.example.net[203.0.113.5] said: 550 5.1.1"
            " <slow@example.com>: Recipient address rejected: User unknown (in reply to RCPT TO"
            " command))",
        ],
        tracker,
        finish=False,
    )
    assert brief(events, U_MIXED) == [
        ("deferred", "slow@example.com"),
        ("bounced", "slow@example.com"),
    ]
    restarted = Tracker(reader.get, FILTER, wait=30.0)
    restarted.restore(json.loads(json.dumps(tracker.snapshot())))
    expired = run(
        [
            "Nov 28 19:00:02 h postfix/qmgr[1]: 1C2D320C040: from=<sender@example.com>,"
            " status=expired, returned to sender"
        ],
        restarted,
    )
    assert expired == []  # the bounce settled the only deferred recipient


@pytest.mark.parametrize(
    "origin",
    [
        "Nov 23 18:40:00 h postfix/bounce[5240]: A438320C032: sender non-delivery notification:"
        f" {REUSED}",
        f"Nov 23 18:40:00 h postfix/pickup[5241]: {REUSED}: uid=0 from=<root>",
    ],
    ids=["postfix-bounce", "local-submission"],
)
def test_a_message_the_milter_never_saw_does_not_take_a_reused_queue_ids_row(
    reader: MapReader, origin: str
) -> None:
    """Postfix's own reports and locally submitted mail never pass the milter: a row under
    their queue ID belongs to an older message that had the same ID."""
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    events = run(
        [
            origin,
            f"Nov 23 18:40:01 h postfix/local[5242]: {REUSED}: to=<root@h.example>, relay=local,"
            " delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to mailbox)",
        ],
        tracker,
    )
    assert events == []


def test_mail_the_content_filter_discarded_is_not_reported_delivered(reader: MapReader) -> None:
    """amavis answers 250 for a virus it drops (real line: wild/lines.log 960)."""
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    events = run(
        [
            "Jun  1 09:20:36 postfix postfix/smtp[3133]: C8E5320C056:"
            " to=<damjan@u10.cyberlab.fhnw.ch>, relay=127.0.0.1[127.0.0.1]:10024, delay=0.09,"
            " delays=0.01/0/0/0.07, dsn=2.7.0, status=sent (250 2.7.0 Ok, discarded,"
            " id=01626-02 - INFECTED: Win.Test.EICAR_HDB-1)",
        ],
        tracker,
    )
    assert events == []
    assert tracker.counts["content_filter_discarded"] == 1


INFO = (
    "Nov 23 18:35:20 h postfix/cleanup[7]: D1E2F3A4B5C: info: header"
    " X-Sendpost-Message-UUID: {} from localhost[127.0.0.1]; from=<s@example.com>"
    " to=<r@example.com> proto=ESMTP helo=<h>"
)
SENT = (
    "Nov 23 18:35:21 h postfix/smtp[2]: D1E2F3A4B5C: to=<r@example.com>,"
    " relay=mx.example.net[203.0.113.5]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0,"
    " status=sent (250 2.0.0 Ok)"
)


@pytest.mark.parametrize(
    "second_info", ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
)
def test_info_lines_do_not_override_the_milters_repeated_header_verdict(
    tmp_path: Path, second_info: str
) -> None:
    """Two X-Sendpost-Message-UUID headers: the milter records no UUID on purpose, and
    the header_checks INFO lines show both values; neither may be taken. Postfix logs
    them while it receives the message, before the milter's row exists (end-of-message):
    a logwatch keeping up reads them first."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    reader = MapReader(tmp_path / "map.sqlite3")
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    events = run(
        [INFO.format("11111111-1111-4111-8111-111111111111"), INFO.format(second_info)],
        tracker,
        finish=False,
    )
    writer.put("D1E2F3A4B5C", None, HeaderState.REPEATED)
    writer.close()
    events += run([SENT], tracker)
    assert events == []
    assert tracker.counts["unmatched:header_repeated"] == 1


def test_info_lines_stand_in_for_a_row_the_milter_did_not_write(reader: MapReader) -> None:
    """The milter was down: one INFO line, no row."""
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    events = run([INFO.format("11111111-1111-4111-8111-111111111111"), SENT], tracker)
    assert brief(events, "11111111-1111-4111-8111-111111111111") == [("delivered", "r@example.com")]


@pytest.mark.parametrize("client", ["203.0.113.9", "local", "forged-in-the-value"])
def test_info_lines_of_an_untrusted_client_stand_in_for_nothing(
    reader: MapReader, client: str
) -> None:
    """The milter did not see the message (down, or a listener without it) and the INFO
    line names a client outside trusted-clients' networks (it names no SASL login), also
    when the header's value imitates a trusted origin before the one Postfix logs."""
    policy = build_policy(("127.0.0.0/8", "sasl"), None)
    tracker = Tracker(
        reader.get, FILTER, wait=30.0, trusts_client=lambda addr: policy.trusts(addr, None)
    )
    origin = "unknown[203.0.113.9]" if client != "local" else "local"
    info = INFO.format(U_FORGED).replace("localhost[127.0.0.1]", origin)
    if client == "forged-in-the-value":
        info = info.replace(U_FORGED, f"{U_FORGED} from localhost[127.0.0.1]; from=<s@x>")
    assert run([info, SENT], tracker) == []
    assert tracker.counts["header_info_untrusted_client"] == 1
    # The same line from localhost, in the networks, stands in for the row.
    trusted = Tracker(
        reader.get, FILTER, wait=30.0, trusts_client=lambda addr: policy.trusts(addr, None)
    )
    assert brief(run([INFO.format(U_FORGED), SENT], trusted), U_FORGED) == [
        ("delivered", "r@example.com")
    ]


U_FORGED = "33333333-3333-4333-8333-333333333333"
HOP = (
    "Nov 23 18:44:50 h postfix/smtp[2]: {parent}: to=<ok20@example.com>,"
    " relay=127.0.0.1[127.0.0.1]:10024, delay=0.04, delays=0.01/0.01/0/0.02, dsn=2.0.0,"
    " status=sent (250 2.0.0 Ok: queued as {child})"
)
CHILD_SENT = (
    "Nov 23 18:44:51 h postfix/smtp[3]: {child}: to=<ok20@example.com>,"
    " relay=127.0.0.1[127.0.0.1]:2526, delay=0.02, delays=0/0/0/0.02, dsn=2.0.0,"
    " status=sent (250 2.0.0 Ok: sink accepted)"
)


def untrusted_map(tmp_path: Path, child: HeaderState | None) -> MapReader:
    """The milter found a valid header from an untrusted client on the first hop, and saw
    the re-injection from the filter's local (trusted) address with ``child``'s state
    (None: the re-injection listener has no_milters, no row)."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    writer.put("F0A6E000001", None, HeaderState.UNTRUSTED)
    if child is not None:
        present = child is HeaderState.PRESENT
        writer.put("F0A6E000002", uuid.UUID(U_FORGED) if present else None, child)
    writer.close()
    return MapReader(tmp_path / "map.sqlite3")


def test_an_untrusted_header_gives_no_event_not_even_through_an_info_line(
    tmp_path: Path,
) -> None:
    """header_checks INFO shows the forged value; the milter's untrusted verdict stands."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    writer.put("D1E2F3A4B5C", None, HeaderState.UNTRUSTED)
    writer.close()
    tracker = Tracker(MapReader(tmp_path / "map.sqlite3").get, FILTER, wait=30.0)
    assert run([INFO.format(U_FORGED), SENT], tracker) == []
    assert tracker.counts == {"unmatched:untrusted_client": 1}


@pytest.mark.parametrize(
    "child", [HeaderState.PRESENT, HeaderState.MISSING, None], ids=["present", "missing", "no-row"]
)
def test_mail_a_content_filter_reinjects_carries_the_distrust_of_its_first_hop(
    tmp_path: Path, child: HeaderState | None
) -> None:
    """The filter re-injects from a local address in mynetworks: the milter (where the
    re-injection listener has it) records the forged UUID as present. The hop decides."""
    reader = untrusted_map(tmp_path, child)
    tracker = Tracker(reader.get, FILTER, wait=30.0)
    lines = [
        HOP.format(parent="F0A6E000001", child="F0A6E000002"),
        CHILD_SENT.format(child="F0A6E000002"),
    ]
    assert run(lines, tracker) == []
    assert tracker.counts["unmatched:untrusted_client"] == 2
    # ... also after a restart between the hop and the re-injected message's delivery.
    restarted = Tracker(reader.get, FILTER, wait=30.0)
    first = Tracker(reader.get, FILTER, wait=30.0)
    run(lines[:1], first, finish=False)
    restarted.restore(json.loads(json.dumps(first.snapshot())))
    assert run(lines[1:], restarted) == []  # the hop's held line was restored with it
    assert restarted.counts["unmatched:untrusted_client"] == 2


def test_an_info_line_of_the_reinjection_does_not_undo_the_distrust_of_its_first_hop(
    tmp_path: Path,
) -> None:
    """The re-injection listener has no_milters but header_checks: its INFO line names the
    filter's local (trusted) address with the forged UUID, and the re-injected message's
    outcome may be logged before the hop line that says it came from an untrusted one."""
    reader = untrusted_map(tmp_path, None)
    policy = build_policy(("127.0.0.0/8", "sasl"), None)
    tracker = Tracker(reader.get, FILTER, wait=30.0, trusts_client=lambda a: policy.trusts(a, None))
    info = INFO.format(U_FORGED).replace("D1E2F3A4B5C", "F0A6E000002")
    lines = [
        info.replace("18:35:20", "18:44:50"),
        CHILD_SENT.format(child="F0A6E000002"),
        HOP.format(parent="F0A6E000001", child="F0A6E000002").replace(":50 h", ":52 h"),
    ]
    assert run(lines, tracker) == []
    assert tracker.counts["unmatched:untrusted_client"] == 2


def test_a_trusted_first_hop_gives_its_uuid_to_an_untrusted_reinjection(tmp_path: Path) -> None:
    """trusted-clients without the filter's address: the re-injection's own row says
    untrusted, the message it came from was trusted; its lines may come first."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    writer.put("F0A6E000001", uuid.UUID(U_FORGED), HeaderState.PRESENT)
    writer.put("F0A6E000002", None, HeaderState.UNTRUSTED)
    writer.close()
    tracker = Tracker(MapReader(tmp_path / "map.sqlite3").get, FILTER, wait=30.0)
    lines = [
        CHILD_SENT.format(child="F0A6E000002"),
        HOP.format(parent="F0A6E000001", child="F0A6E000002"),
    ]
    assert brief(run(lines, tracker), U_FORGED) == [("delivered", "ok20@example.com")]
    assert "unmatched:untrusted_client" not in tracker.counts


# --- a pipe content filter (spamc re-injecting with sendmail): followed by Message-ID ----

# maillog.pipe-filter: a real Postfix 3.7 run of tests/support/pipefilter.sh as the
# `spamfilter` pipe service (content_filter = spamfilter, one recipient per call). Copies
# come back through pickup before and after their hop line.
PIPE = ContentFilters.from_values(["spamfilter"], ["spamfilter"])
PIPE_MESSAGES = {
    "BEBAA2384FC": "22222222-2222-4222-8222-000000000001",  # ok1, bounce1: two copies
    "BF8FD2384FD": "22222222-2222-4222-8222-000000000002",  # drop2: the filter drops it
    "C11212384FE": "22222222-2222-4222-8222-000000000003",  # ok3: copy after the hop
}


@pytest.fixture
def pipe_reader(tmp_path: Path) -> MapReader:
    writer = MapWriter(tmp_path / "pipe.sqlite3", 86400.0)
    for queue_id, value in PIPE_MESSAGES.items():
        writer.put(queue_id, uuid.UUID(value), HeaderState.PRESENT)
    # A milter in non_smtpd_milters also records the copies; a row with another UUID
    # under a copy's queue ID must not override the hop.
    writer.put("DE04F238506", uuid.UUID(U_MIXED), HeaderState.PRESENT)
    writer.close()
    return MapReader(tmp_path / "pipe.sqlite3")


def test_pipe_filter_copies_report_their_outcomes_under_the_original_uuid(
    pipe_reader: MapReader, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker(pipe_reader.get, PIPE)
    with caplog.at_level(logging.INFO, "logwatch.tracker"):
        events = run(sample("maillog.pipe-filter"), tracker)
    first, dropped, third = PIPE_MESSAGES.values()
    assert brief(events, first) == [
        ("bounced", "bounce1@example.com"),
        ("delivered", "ok1@example.com"),
    ]
    assert brief(events, third) == [("delivered", "ok3@example.com")]
    assert brief(events, dropped) == []
    assert len(events) == 3  # nor the hops, nor the local mail, nor the NDR
    bounced = next(e for e in events if e["event_type"] == "bounced")
    assert bounced["smtp_code"] == 550 and bounced["timestamp"] == "2025-12-07T17:11:54+00:00"
    assert tracker.counts["content_filter_pipe_hop"] == 3
    assert tracker.counts["content_filter_not_reinjected"] == 1
    assert f"BF8FD2384FD (UUID {dropped}) went to the pipe content filter spamfilter" in caplog.text
    assert "no copy with its Message-ID" in caplog.text


def test_without_a_pipe_filter_configured_its_hop_is_a_delivery(pipe_reader: MapReader) -> None:
    events = run(sample("maillog.pipe-filter"), Tracker(pipe_reader.get, FILTER))
    assert brief(events, PIPE_MESSAGES["BF8FD2384FD"]) == [("delivered", "drop2@example.com")]


def test_pipe_filter_state_survives_a_restart_at_every_line(pipe_reader: MapReader) -> None:
    lines = sample("maillog.pipe-filter")
    whole = run(lines, Tracker(pipe_reader.get, PIPE))
    for cut in range(len(lines)):
        first = Tracker(pipe_reader.get, PIPE)
        events = run(lines[:cut], first, finish=False)
        second = Tracker(pipe_reader.get, PIPE)
        second.restore(json.loads(json.dumps(first.snapshot())))
        events += run(lines[cut:], second)
        assert events == whole, f"cut at line {cut}"


PIPE_HOP = (
    "Dec 07 17:11:{s} h postfix/pipe[1]: C11212384FE: to=<ok3@example.com>, relay=spamfilter,"
    " delay=0.07, delays=0/0.02/0/0.05, dsn=2.0.0, status=sent (delivered via spamfilter service)"
)
PIPE_COPY = [
    "Dec 07 17:11:{s} h postfix/cleanup[2]: C11212384FE: message-id=<m3@sendpost.test>",
    "Dec 07 17:11:{s} h postfix/pickup[3]: D19012384FE: uid=65534 from=<sender@example.com>",
    "Dec 07 17:11:{s} h postfix/cleanup[2]: D19012384FE: message-id=<m3@sendpost.test>",
    "Dec 07 17:11:{s} h postfix/smtp[4]: D19012384FE: to=<ok3@example.com>, relay=127.0.0.1"
    "[127.0.0.1]:2526, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
]


@pytest.mark.parametrize(
    ("hop", "copy", "followed"),
    [(40, 11, True), (11, 40, True), (42, 11, False), (11, 42, False)],
    ids=["copy-29s-before", "copy-29s-after", "copy-31s-before", "copy-31s-after"],
)
def test_a_copy_is_taken_within_join_wait_on_either_side_of_the_hop(
    pipe_reader: MapReader, hop: int, copy: int, followed: bool
) -> None:
    """sendmail hands the copy to pickup before pipe logs the hop's status: either may
    come first in the log."""
    hop_line = PIPE_HOP.format(s=hop)
    copy_lines = [line.format(s=copy) for line in PIPE_COPY[1:]]
    in_order = [*copy_lines, hop_line] if copy < hop else [hop_line, *copy_lines]
    lines = [PIPE_COPY[0].format(s="00"), *in_order]
    tracker = Tracker(pipe_reader.get, PIPE, wait=30.0)
    events = run(lines, tracker)
    expected = [("delivered", "ok3@example.com")] if followed else []
    assert brief(events, PIPE_MESSAGES["C11212384FE"]) == expected
    assert tracker.counts["content_filter_not_reinjected"] == (not followed)


def test_a_pipe_hop_without_a_message_id_is_counted_and_logged(
    pipe_reader: MapReader, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker(pipe_reader.get, PIPE, wait=30.0)
    lines = [
        "Dec 07 17:11:00 h postfix/cleanup[2]: C11212384FE: message-id=<>",
        PIPE_HOP.format(s="01"),
    ]
    with caplog.at_level(logging.WARNING, "logwatch.tracker"):
        assert run(lines, tracker) == []
    assert tracker.counts["content_filter_hop_without_message_id"] == 1
    assert "without a Message-ID logged" in caplog.text


def test_memory_for_pipe_filters_stays_within_the_queue_and_the_join_wait(
    pipe_reader: MapReader,
) -> None:
    """A Message-ID is kept while its message is queued; a copy no hop claimed (local
    mail) for the join wait."""
    tracker = Tracker(pipe_reader.get, PIPE, wait=30.0)
    lines = []
    for i in range(3000):
        stamp, local, smtpd = f"Dec 07 18:{i // 60:02d}:{i % 60:02d} h", 0xB0000000 + i, 0xC0 + i
        lines += [
            f"{stamp} postfix/pickup[1]: {local:X}: uid=0 from=<root>",
            f"{stamp} postfix/cleanup[2]: {local:X}: message-id=<{i}.local@h>",
            f"{stamp} postfix/qmgr[3]: {local:X}: from=<root>, size=1, nrcpt=1 (queue active)",
            f"{stamp} postfix/cleanup[2]: {smtpd:X}0000: message-id=<{i}@sendpost.test>",
            f"{stamp} postfix/qmgr[3]: {smtpd:X}0000: removed",
        ]
    run(lines, tracker, finish=False)
    assert len(tracker._copies) <= 32  # one per log second, 30 s kept
    assert tracker._message_ids == {}


@pytest.mark.parametrize("copy_first", [True, False], ids=["copy-first", "hops-first"])
def test_one_copy_for_all_recipients_follows_every_hop_line(
    pipe_reader: MapReader, copy_first: bool
) -> None:
    """Without a recipient limit the filter runs once for all recipients: pipe logs one
    hop line per recipient, and one copy comes back."""
    hops = [
        PIPE_HOP.format(s="01").replace("ok3@", rcpt)
        for rcpt in ("ok3@", "bounce3@")  # the same message, two recipients
    ]
    pickup, message_id, _ = (line.format(s="01") for line in PIPE_COPY[1:])
    deliveries = [
        PIPE_COPY[3].format(s="02"),
        "Dec 07 17:11:02 h postfix/smtp[4]: D19012384FE: to=<bounce3@example.com>, relay="
        "127.0.0.1[127.0.0.1]:2526, delay=0.1, delays=0/0/0/0.1, dsn=5.1.1, status=bounced"
        " (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <bounce3@example.com>: User unknown)",
    ]
    copy = [pickup, message_id]
    middle = [*copy, *hops] if copy_first else [*hops, *copy]
    lines = [PIPE_COPY[0].format(s="00"), *middle, *deliveries]
    tracker = Tracker(pipe_reader.get, PIPE, wait=30.0)
    events = run(lines, tracker)
    assert brief(events, PIPE_MESSAGES["C11212384FE"]) == [
        ("delivered", "ok3@example.com"),
        ("bounced", "bounce3@example.com"),
    ]
    assert tracker.counts["content_filter_pipe_hop"] == 2
    assert tracker.counts["content_filter_not_reinjected"] == 0


@pytest.mark.parametrize(
    "order",
    [(0, 2, 3), (2, 3, 0), (0, 2, 1, 3), (2, 0, 3, 1)],
    ids=["copy-first", "hops-first", "copy-per-recipient", "hop-per-recipient"],
)
def test_every_hop_line_maps_its_rewritten_recipient_back_in_every_copy(
    tmp_path: Path, order: tuple[int, ...]
) -> None:
    """Recipients rewritten before the filter: each hop line's to/orig_to pair reaches the
    copies, also those that came back before that hop line was logged."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    recipients = ["alias3@example.com", "other3@example.com"]
    writer.put("C11212384FE", uuid.UUID(U_CF), HeaderState.PRESENT, recipients=recipients)
    writer.close()
    hop = PIPE_HOP.format(s="01")
    first, second = ("D19012384FE", "D29012384FE")
    parts = [
        [line.format(s="01").replace("D19012384FE", first) for line in PIPE_COPY[1:3]],
        [line.format(s="01").replace("D19012384FE", second) for line in PIPE_COPY[1:3]],
        [hop.replace("<ok3@example.com>,", "<ok3@example.com>, orig_to=<alias3@example.com>,")],
        [hop.replace("<ok3@example.com>,", "<bounce3@example.com>, orig_to=<other3@example.com>,")],
    ]
    per_recipient = 1 in order  # one copy per call of the filter, else one for both
    deliveries = [
        PIPE_COPY[3].format(s="02"),
        f"Dec 07 17:11:02 h postfix/smtp[4]: {second if per_recipient else first}: to=<bounce3"
        "@example.com>, relay=127.0.0.1[127.0.0.1]:2526, delay=0.1, delays=0/0/0/0.1,"
        " dsn=5.1.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1"
        " <bounce3@example.com>: User unknown)",
    ]
    lines = [PIPE_COPY[0].format(s="00")]
    for part in order:
        lines += parts[part]
    tracker = Tracker(MapReader(tmp_path / "map.sqlite3").get, PIPE, wait=30.0)
    events = run([*lines, *deliveries], tracker)
    assert brief(events, U_CF) == [
        ("delivered", "alias3@example.com"),
        ("bounced", "other3@example.com"),
    ]
    assert tracker.counts["unmatched:added_recipient"] == 0


# --- the recipient SendPost gave Postfix ---------------------------------------------------

U_ALIAS = "11111111-1111-4111-8111-000000000040"
U_HOP = "11111111-1111-4111-8111-000000000041"
LOCAL = "relay=local, delay=0.01, delays=0/0/0/0.01"
SINK = "relay=127.0.0.1[127.0.0.1]:2526, delay=0.02, delays=0/0/0/0.02"
AMAVIS = "relay=127.0.0.1[127.0.0.1]:10024, delay=0.04, delays=0.01/0.01/0/0.02"


@pytest.fixture
def envelopes(tmp_path: Path) -> MapReader:
    """Rows as the milter writes them: with the RCPT TO addresses."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    writer.put(
        "AA11220C001",
        uuid.UUID(U_ALIAS),
        HeaderState.PRESENT,
        recipients=["team@example.com", "ghost@example.com", "late@example.com"],
    )
    writer.put("BB11220C002", uuid.UUID(U_HOP), HeaderState.PRESENT, recipients=["info@shop.com"])
    writer.close()
    return MapReader(tmp_path / "map.sqlite3")


def status_line(second: int, queue_id: str, to: str, rest: str, orig_to: str = "") -> str:
    orig = f" orig_to=<{orig_to}>," if orig_to else ""
    return f"Nov 23 18:50:{second:02d} h postfix/smtp[2]: {queue_id}: to=<{to}>,{orig} {rest}"


SENT_LOCAL = f"{LOCAL}, dsn=2.0.0, status=sent (delivered to mailbox)"
UNKNOWN_USER = f'{LOCAL}, dsn=5.1.1, status=bounced (unknown user: "nobody")'
SENT_SINK = f"{SINK}, dsn=2.0.0, status=sent (250 2.0.0 Ok: sink accepted)"
DEFERRED = (
    f"{SINK}, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:2526: Connection refused)"
)


def test_events_name_the_address_sendpost_gave_not_the_rewritten_one(
    envelopes: MapReader,
) -> None:
    """An alias to a missing local user bounces under the alias; one address expanded to
    several deliveries gives each outcome under it; Postfix's own bcc gives none."""
    tracker = Tracker(envelopes.get, FILTER)
    events = run(
        [
            status_line(1, "AA11220C001", "a@example.com", SENT_LOCAL, "team@example.com"),
            status_line(1, "AA11220C001", "b@example.com", UNKNOWN_USER, "Team@Example.com"),
            status_line(2, "AA11220C001", "nobody@example.com", UNKNOWN_USER, "ghost@example.com"),
            status_line(3, "AA11220C001", "archive@example.com", SENT_SINK),
        ],
        tracker,
    )
    assert brief(events, U_ALIAS) == [
        ("delivered", "team@example.com"),
        ("bounced", "Team@Example.com"),
        ("bounced", "ghost@example.com"),
    ]
    assert tracker.counts["unmatched:added_recipient"] == 1


def test_rows_without_recipients_report_every_delivery(reader: MapReader) -> None:
    """A row of an older agent has no recipients: nothing is filtered."""
    tracker = Tracker(reader.get, FILTER)
    events = run([status_line(1, "A438320C032", "archive@example.com", SENT_SINK)], tracker)
    assert brief(events, U_MIXED) == [("delivered", "archive@example.com")]


def test_expiry_of_a_rewritten_recipient_names_the_original_after_a_restart(
    envelopes: MapReader,
) -> None:
    tracker = Tracker(envelopes.get, FILTER)
    events = run(
        [
            status_line(1, "AA11220C001", "x@remote.example", DEFERRED, "late@example.com"),
            status_line(1, "AA11220C001", "y@remote.example", DEFERRED, "late@example.com"),
        ],
        tracker,
        finish=False,
    )
    restarted = Tracker(envelopes.get, FILTER)
    restarted.restore(json.loads(json.dumps(tracker.snapshot())))
    events += run(
        [
            "Nov 28 18:50:00 h postfix/qmgr[1]: AA11220C001: from=<s@x>, status=expired, returned"
            " to sender"
        ],
        restarted,
    )
    assert brief(events, U_ALIAS) == [
        ("deferred", "late@example.com"),
        ("deferred", "late@example.com"),
        ("soft_bounced", "late@example.com"),
        ("soft_bounced", "late@example.com"),
    ]


HOP_LINES = [
    # the re-injected message is delivered before the filter's hop lines are logged
    status_line(1, "CC11220C003", "anna@shop.com", SENT_SINK),
    status_line(1, "CC11220C003", "bob@shop.com", SENT_SINK),
    status_line(1, "CC11220C003", "bcc@archive.example", SENT_SINK),
    status_line(
        2,
        "BB11220C002",
        "anna@shop.com",
        f"{AMAVIS}, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as CC11220C003)",
        "info@shop.com",
    ),
    status_line(
        2,
        "BB11220C002",
        "bob@shop.com",
        f"{AMAVIS}, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as CC11220C003)",
        "info@shop.com",
    ),
    status_line(
        2,
        "BB11220C002",
        "bcc@archive.example",
        f"{AMAVIS}, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as CC11220C003)",
    ),
]


def test_after_a_content_filter_the_original_address_and_envelope_still_apply(
    envelopes: MapReader,
) -> None:
    """The re-injected message has no orig_to (the rewriting was before the filter): the
    hop lines map its addresses back, also for the line decided before the second hop
    line came; the bcc Postfix added gives no event on either side."""
    tracker = Tracker(envelopes.get, FILTER)
    events = run(HOP_LINES, tracker)
    assert brief(events, U_HOP) == [
        ("delivered", "info@shop.com"),
        ("delivered", "info@shop.com"),
    ]
    assert tracker.counts["unmatched:added_recipient"] == 2  # the hop line and the delivery
    for cut in range(1, len(HOP_LINES)):
        first = Tracker(envelopes.get, FILTER)
        again = run(HOP_LINES[:cut], first, finish=False)
        second = Tracker(envelopes.get, FILTER)
        second.restore(json.loads(json.dumps(first.snapshot())))
        again += run(HOP_LINES[cut:], second)
        assert brief(again, U_HOP) == brief(events, U_HOP), f"cut at line {cut}"


def test_a_message_removed_while_its_lines_wait_for_their_uuid_is_forgotten_after_them(
    reader: MapReader,
) -> None:
    """The milter was down: the INFO line's UUID is taken at the end of the wait, after
    Postfix logged the removal. Nothing of the message stays (a reused queue ID would
    find it), also across a restart in between."""
    removed = "Nov 23 18:35:22 h postfix/qmgr[3]: D1E2F3A4B5C: removed"
    lines = [INFO.format(U_FORGED), SENT, removed]
    for cut in range(len(lines) + 1):
        first = Tracker(reader.get, FILTER, wait=30.0)
        events = run(lines[:cut], first, finish=False)
        second = Tracker(reader.get, FILTER, wait=30.0)
        second.restore(json.loads(json.dumps(first.snapshot())))
        events += run(lines[cut:], second)
        assert brief(events, U_FORGED) == [("delivered", "r@example.com")], f"cut at {cut}"
        assert second.messages == {}, f"cut at {cut}"


def test_a_removed_reinjection_of_an_untrusted_message_is_counted_as_untrusted(
    tmp_path: Path,
) -> None:
    """Postfix logs the removal before the held lines' wait ends: the count still says
    why they gave no event, and then nothing of them is kept."""
    tracker = Tracker(untrusted_map(tmp_path, None).get, FILTER, wait=30.0)
    lines = [
        HOP.format(parent="F0A6E000001", child="F0A6E000002"),
        CHILD_SENT.format(child="F0A6E000002"),
        "Nov 23 18:44:51 h postfix/qmgr[1]: F0A6E000002: removed",
        "Nov 23 18:44:51 h postfix/qmgr[1]: F0A6E000001: removed",
    ]
    assert run(lines, tracker) == []
    assert tracker.counts == {"unmatched:untrusted_client": 2}
    assert tracker.messages == {}


@pytest.mark.parametrize(
    ("value", "reported"),
    [
        ("aaaaaaaa-0000-4000-8000-00000000000a", "aaaaaaaa-0000-4000-8000-00000000000a"),
        ("<AAAAAAAA-0000-4000-8000-00000000000A>", "aaaaaaaa-0000-4000-8000-00000000000a"),
        ("00000000-0000-0000-0000-000000000000", None),  # the nil UUID is no message's
    ],
)
def test_an_info_lines_uuid_is_reported_in_its_canonical_form(
    value: str, reported: str | None
) -> None:
    """A canonical value is taken as it is (no UUID object built); any other form gives
    the same text through parse_uuid, and the nil UUID none at all."""
    lines = [
        "Nov 23 18:40:00 feas postfix/cleanup[1]: 9F0A120C0F1: info: header"
        f" X-Sendpost-Message-UUID: {value} from localhost[127.0.0.1];"
        " from=<s@example.com> to=<r@example.com> proto=ESMTP helo=<vm>",
        "Nov 23 18:40:01 feas postfix/smtp[2]: 9F0A120C0F1: to=<r@example.com>,"
        " relay=mx.example.com[192.0.2.1]:25, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0,"
        " status=sent (250 ok)",
    ]
    tracker = Tracker(lambda _: None, FILTER)
    events = run(lines, tracker)
    assert [e["message_id"] for e in events] == ([reported] if reported else [])
    assert tracker.counts["header_info_invalid"] == (0 if reported else 1)
