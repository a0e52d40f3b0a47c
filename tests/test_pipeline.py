"""A bug met on one log line costs that line, never the agent: it would meet the same
line again after every restart. The line is counted and logged instead."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from logwatch.agent import Agent
from logwatch.cursor import load_cursor
from logwatch.parse import Clock, Delivery, Record, Skipped, parse_line
from logwatch.pipeline import Pipeline
from logwatch.relays import ContentFilters
from sendpost_agent.config import load_config
from sendpost_agent.queuemap import Entry, HeaderState, MapError, MapReader, MapWriter
from tests.support.maillog import record_messages, write_messages
from tests.support.postfix import free_port
from tests.support.samples import SAMPLES

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, tzinfo=UTC)
UUIDS = {
    "A438320C032": "11111111-1111-4111-8111-000000000001",
    "B438320C033": "11111111-1111-4111-8111-000000000002",
}
LINES = [
    f"Nov 23 18:35:2{n} feas postfix/smtp[5238]: {queue_id}: to=<{n}@example.com>,"
    " relay=mx.example.com[192.0.2.1]:25, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0,"
    " status=sent (250 2.0.0 Ok: queued as 4F1A2B)"
    for n, queue_id in enumerate(UUIDS)
]


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    for queue_id, value in UUIDS.items():
        writer.put(queue_id, uuid.UUID(value), HeaderState.PRESENT)
    writer.close()
    (tmp_path / "config.yaml").write_text("")
    return new_pipeline(tmp_path)


def new_pipeline(tmp_path: Path) -> Pipeline:
    """Another pipeline on the map and config files the ``pipe`` fixture wrote."""
    config = load_config({}, tmp_path / "config.yaml", {})
    return Pipeline(config, MapReader(tmp_path / "map.sqlite3"), ContentFilters(), Clock(UTC, NOW))


def delivered_to(pipe: Pipeline) -> list[str]:
    events = pipe.process([line.encode() for line in LINES]) + pipe.finish()
    return [e.recipient for e in events]


def test_a_line_the_parser_fails_on_is_skipped_counted_and_logged(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    def block_fails(lines: list[bytes], clock: Clock, message_ids: bool) -> list[Record | Skipped]:
        raise RuntimeError("a parser bug")

    def first_line_fails(line: str, clock: Clock) -> Record | Skipped | None:
        if line == LINES[0]:
            raise RuntimeError("a parser bug")
        return parse_line(line, clock)

    pipe.parse_block = block_fails
    pipe.parse_line = first_line_fails
    with caplog.at_level(logging.ERROR, "logwatch.pipeline"):
        assert delivered_to(pipe) == ["1@example.com"]
    assert pipe.counts()["skipped:internal error"] == 1
    assert "internal error #1 parsing" in caplog.text and "A438320C032" in caplog.text


def test_a_record_the_tracker_fails_on_is_skipped_counted_and_logged(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    def status_missing(
        lines: list[bytes], clock: Clock, message_ids: bool
    ) -> list[Record | Skipped]:
        records = [parse_line(raw.decode(), clock) for raw in lines]
        first = records[0]
        assert isinstance(first, Delivery)
        records[0] = first._replace(time="Nov 23")  # what a parser bug could hand on
        return [r for r in records if r is not None]

    pipe.parse_block = status_missing
    with caplog.at_level(logging.ERROR, "logwatch.pipeline"):
        assert delivered_to(pipe) == ["1@example.com"]
    assert pipe.counts()["skipped:internal error"] == 1
    assert "internal error #1 handling" in caplog.text


def test_internal_errors_are_logged_ever_more_sparsely_but_all_counted(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "logwatch.pipeline"):
        for _ in range(20):
            try:
                raise RuntimeError("a bug")
            except RuntimeError:
                pipe._internal_error("parsing", "a line")
    assert pipe.counts()["skipped:internal error"] == 20
    assert [r.getMessage().split()[2] for r in caplog.records] == ["#1", "#2", "#4", "#8", "#16"]


# --- the map failing is not a line failing ----------------------------------------------


class BrokenMap(MapReader):
    """The real reader, its file gone bad after logwatch started."""

    def get(self, queue_id: str) -> Entry | None:
        raise MapError(f"{self.path}: queue map lookup failed: disk I/O error")

    def get_many(self, queue_ids: list[str]) -> dict[str, Entry]:
        raise MapError(f"{self.path}: queue map lookup failed: disk I/O error")

    def first_id(self, queue_ids: list[str], since: float) -> int | None:
        raise MapError(f"{self.path}: queue map lookup failed: disk I/O error")


def test_events_come_in_the_same_order_however_the_lines_are_batched(
    pipe: Pipeline, tmp_path: Path
) -> None:
    """However reading is timed (after a crash logwatch re-reads lines in other batches
    than before), the events come in one order, which depends on the lines only. A local
    relay's `queued as` is held (a hop or a delivery?) until 30 s of log time pass, and
    must come out at the same place every time."""
    held, other = UUIDS
    lines = [
        f"Nov 23 18:35:20 feas postfix/smtp[5238]: {held}: to=<held@example.com>,"
        " relay=127.0.0.1[127.0.0.1]:2525, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: queued as 7D1A2C0031)",
        *(
            f"Nov 23 18:35:{second} feas postfix/smtp[5238]: {other}: to=<{n}@example.com>,"
            " relay=mx.example.com[192.0.2.1]:25, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0,"
            " status=sent (250 2.0.0 Ok)"
            for n, second in enumerate((21, 51, 52))
        ),
    ]
    assert every_batching(pipe, tmp_path, lines) == {
        ("0@example.com", "held@example.com", "1@example.com", "2@example.com")
    }


def test_a_hop_is_told_from_a_delivery_the_same_however_the_lines_are_batched(
    pipe: Pipeline, tmp_path: Path
) -> None:
    """Whether a local relay's `queued as` is a hop depends on the new queue ID having
    been queued within the join wait, by log time: not on where a batch ended."""
    held, _ = UUIDS
    lines = [
        "Nov 23 18:35:00 feas postfix/qmgr[1]: 7D1A2C0031: from=<a@example.com>, size=10,"
        " nrcpt=1 (queue active)",
        "Nov 23 18:35:35 feas postfix/qmgr[1]: 8E2B3D0042: from=<a@example.com>, size=10,"
        " nrcpt=1 (queue active)",
        f"Nov 23 18:35:40 feas postfix/smtp[5238]: {held}: to=<held@example.com>,"
        " relay=127.0.0.1[127.0.0.1]:2525, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: queued as 7D1A2C0031)",
        "Nov 23 18:36:20 feas postfix/qmgr[1]: 9F3C4E0053: from=<a@example.com>, size=10,"
        " nrcpt=1 (queue active)",
    ]
    # 7D1A2C0031 was queued 40 s before: longer than the join wait, so a delivery.
    assert every_batching(pipe, tmp_path, lines) == {("held@example.com",)}


def test_pipe_filter_copies_come_out_the_same_however_the_lines_are_batched(
    tmp_path: Path,
) -> None:
    """The copies a pipe content filter re-injects are paired with its hops by
    Message-ID within the join wait: in log time, not by where a batch ended."""
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    for n, queue_id in enumerate(("BEBAA2384FC", "BF8FD2384FD", "C11212384FE"), 1):
        writer.put(queue_id, uuid.UUID(int=n), HeaderState.PRESENT)
    writer.close()
    (tmp_path / "config.yaml").write_text("join-wait: 1s\n")  # the dropped copy's wait ends
    config = load_config({}, tmp_path / "config.yaml", {})
    lines = [line.encode() for line in (SAMPLES / "maillog.pipe-filter").read_text().splitlines()]
    outcomes = set()
    for size in (1, 2, 3, 5, 8, 13, len(lines)):
        pipe = Pipeline(
            config,
            MapReader(tmp_path / "map.sqlite3"),
            ContentFilters.from_values(["spamfilter"], ["spamfilter"]),
            Clock(UTC, NOW),
        )
        batches = [lines[start : start + size] for start in range(0, len(lines), size)]
        events = [e for batch in batches for e in pipe.process(batch)]
        outcomes.add(tuple((e.message_id, e.event_type, e.recipient) for e in events))
        assert pipe.counts()["content_filter_not_reinjected"] == 1
    assert outcomes == {
        (
            (str(uuid.UUID(int=3)), "delivered", "ok3@example.com"),
            (str(uuid.UUID(int=1)), "bounced", "bounce1@example.com"),
            (str(uuid.UUID(int=1)), "delivered", "ok1@example.com"),
        )
    }


def test_a_hops_addresses_map_back_the_same_however_the_lines_are_batched(
    tmp_path: Path,
) -> None:
    """The re-injected message is delivered before the hop's lines: its deliveries wait
    for them, and each hop line may map another one back to the address SendPost gave."""
    parent, child = "C11220C0AA", "D11220C0BB"
    writer = MapWriter(tmp_path / "map.sqlite3", 86400.0)
    writer.put(
        parent,
        uuid.UUID(UUIDS["A438320C032"]),
        HeaderState.PRESENT,
        recipients=["info@shop.com", "sales@shop.com"],
    )
    writer.close()
    (tmp_path / "config.yaml").write_text("")
    sent = "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent"
    hop = f"relay=127.0.0.1[127.0.0.1]:10024, {sent} (250 2.0.0 Ok: queued as {child})"
    lines = [
        f"Nov 23 18:35:00 feas postfix/qmgr[1]: {child}: from=<a@x>, size=10, nrcpt=3"
        " (queue active)",
        *(
            f"Nov 23 18:35:01 feas postfix/smtp[2]: {child}: to=<{to}>,"
            f" relay=mx.example.com[192.0.2.1]:25, {sent} (250 2.0.0 Ok)"
            for to in ("anna@shop.com", "bob@shop.com", "bcc@archive.example")
        ),
        f"Nov 23 18:35:02 feas postfix/smtp[3]: {parent}: to=<anna@shop.com>,"
        f" orig_to=<info@shop.com>, {hop}",
        f"Nov 23 18:35:02 feas postfix/smtp[3]: {parent}: to=<bob@shop.com>,"
        f" orig_to=<sales@shop.com>, {hop}",
        f"Nov 23 18:35:02 feas postfix/smtp[3]: {parent}: to=<bcc@archive.example>, {hop}",
        "Nov 23 18:36:00 feas postfix/qmgr[1]: E11220C0CC: from=<a@x>, size=10, nrcpt=1"
        " (queue active)",
    ]
    assert every_batching(new_pipeline(tmp_path), tmp_path, lines) == {
        ("info@shop.com", "sales@shop.com")
    }


def every_batching(pipe: Pipeline, tmp_path: Path, lines: list[str]) -> set[tuple[str, ...]]:
    """The recipients' order of the events, for each way of cutting the lines into batches."""
    orders: set[tuple[str, ...]] = set()
    first = True
    for cuts in itertools.product((False, True), repeat=len(lines) - 1):
        batches, start = [], 0
        for end, cut in enumerate(cuts, 1):
            if cut:
                batches.append(lines[start:end])
                start = end
        batches.append(lines[start:])
        batched = pipe if first else new_pipeline(tmp_path)
        first = False
        events = [e for batch in batches for e in batched.process([x.encode() for x in batch])]
        orders.add(tuple(e.recipient for e in events))
    return orders


def test_a_map_failure_is_raised_not_counted_as_a_bad_line(pipe: Pipeline, tmp_path: Path) -> None:
    # pipe: its fixture wrote the map and config files this pipeline uses
    config = load_config({}, tmp_path / "config.yaml", {})
    broken = Pipeline(
        config, BrokenMap(tmp_path / "map.sqlite3"), ContentFilters(), Clock(UTC, NOW)
    )
    with pytest.raises(MapError):
        broken.process([line.encode() for line in LINES])
    assert "skipped:internal error" not in broken.counts()


def test_a_map_failure_stops_logwatch_without_counting_the_lines_it_could_not_join(
    tmp_path: Path,
) -> None:
    """logwatch exits with the error (systemd restarts it); those lines are read again."""
    state, log = tmp_path / "state", tmp_path / "mail.log"
    state.mkdir()
    record_messages(state, range(3))
    write_messages(log, range(3))
    (tmp_path / "config.yaml").write_text(
        f'api-key: "sp-test-key"\nlog-path: "{log}"\nstate-dir: "{state}"\n'
        f'endpoint: "http://127.0.0.1:9/events"\nlisten: "127.0.0.1:{free_port()}"\n'
    )
    config = load_config({}, tmp_path / "config.yaml", {})
    agent = Agent(config)
    agent.pipeline = Pipeline(config, BrokenMap(config.map_path), ContentFilters(), Clock(UTC, NOW))

    async def run() -> int:
        return await asyncio.wait_for(agent.run(asyncio.Event()), timeout=30)

    with pytest.raises(MapError):  # raised, not hanging until a SIGTERM
        asyncio.run(run())
    assert agent.follower.lines_read == 3 * 5
    assert load_cursor(config.cursor_path) is None  # no line counted as handled
