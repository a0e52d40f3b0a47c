"""logwatch recovering from what happens around it.

After a kill -9 it reads the log again from its cursor and recognises, by their bytes,
the events it had already written to the WAL: none may be lost or written twice, however
the lines fall into batches, however the events' order differs from before the crash and
however many crashes follow each other. When the milter
replaces the map file (it sets a corrupt one aside), logwatch joins against the new one.

The agent runs in this process so that each crash comes at a chosen point: between
two cursor saves, the WAL holding events the cursor does not count yet. A crash is the
process dying: its files closed, nothing more written.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from logwatch.agent import Agent
from logwatch.cursor import load_cursor
from sendpost_agent.config import Config, load_config
from sendpost_agent.queuemap import HeaderState, MapWriter
from tests.support.ingest import IngestServer
from tests.support.maillog import (
    BOUNCE_EVERY,
    expected_events,
    queue_id,
    record_messages,
    write_messages,
)
from tests.support.postfix import free_port

pytestmark = pytest.mark.integration

NEVER = float("inf")  # as _saved_at: the agent saves no cursor on its own
KEY = "sp-test-key"


def config(tmp_path: Path, endpoint: str = "http://127.0.0.1:9/events", more: str = "") -> Config:
    state, log = tmp_path / "state", tmp_path / "mail.log"
    state.mkdir(exist_ok=True)
    log.touch()
    (tmp_path / "config.yaml").write_text(
        f'api-key: "{KEY}"\nlog-path: "{log}"\nstate-dir: "{state}"\n'
        f'endpoint: "{endpoint}"\nlisten: "127.0.0.1:{free_port()}"\n'
        f'postfix-config-dir: "{tmp_path}"\n{more}'
    )
    return load_config({}, tmp_path / "config.yaml", {})


def read_on(agent: Agent, batches: int | None = None, save_after_first: bool = False) -> None:
    """Take up to ``batches`` batches (all there are), saving no cursor unless asked."""

    async def run() -> None:
        taken = 0
        while batches is None or taken < batches:
            try:
                batch = await asyncio.wait_for(agent.follower.next_batch(), 0.5)
            except TimeoutError:
                return
            agent._saved_at = NEVER
            agent._take(batch)
            taken += 1
            if save_after_first and taken == 1:
                agent._save_cursor()

    asyncio.run(run())


def crash(agent: Agent) -> None:
    agent.wal.close()
    agent.follower.close()
    agent._map.close()


def wal_events(cfg: Config) -> Counter[tuple[str, str]]:
    agent = Agent(cfg)
    events = [json.loads(data) for _, data in agent.wal.read(0, 10**6)]
    crash(agent)
    return Counter((e["message_id"], e["recipient"]) for e in events)


def test_two_crashes_in_a_row_write_no_event_twice(tmp_path: Path) -> None:
    """The third start crashes while it still recognises re-read events (asked to save
    a cursor meanwhile): the fourth must recognise the same ones."""
    cfg = config(tmp_path)
    total = 600
    record_messages(cfg.state_dir, range(total))
    write_messages(cfg.log_path, range(1))
    first = Agent(cfg)
    read_on(first, save_after_first=True)
    crash(first)
    write_messages(cfg.log_path, range(1, total))
    second = Agent(cfg)
    read_on(second)  # every event written, the cursor still at message 0
    crash(second)
    third = Agent(cfg)
    read_on(third, batches=1, save_after_first=True)  # more batches than one to re-read
    assert third._remembered is not None
    crash(third)
    fourth = Agent(cfg)
    read_on(fourth)
    crash(fourth)
    events = wal_events(cfg)
    assert len(events) == 2 * total, "events lost"
    assert max(events.values()) == 1, "events written twice"


Sent = tuple[str, str, str]


def run_until_sent(agent: Agent, server: IngestServer, expected: set[Sent]) -> Counter[Sent]:
    """The agent as it runs until the API has every expected event (30 s at most), then
    stopped as by SIGTERM (what is pending is sent first): every event the API got."""

    def sent() -> Counter[Sent]:
        return Counter((e["message_id"], e["event_type"], e["recipient"]) for e in server.accepted)

    async def run() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        for _ in range(600):
            if expected <= set(sent()) or running.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        assert await running == 0

    asyncio.run(run())
    return sent()


def test_a_line_read_before_its_map_row_and_a_crash_send_every_event_once(
    tmp_path: Path,
) -> None:
    """The milter may commit a message's row just after Postfix logged its delivery:
    logwatch holds such a line for join-wait and gives its events late, after those of
    later lines. Read again after a crash, the row is there: its events come first. The
    events the WAL holds are recognised by their text, not by their place."""
    with IngestServer(KEY) as server:
        cfg = config(tmp_path, server.url)
        record_messages(cfg.state_dir, range(0, 1))
        expected = write_messages(cfg.log_path, range(0, 1))
        first = Agent(cfg)
        read_on(first, save_after_first=True)  # message 0 written and counted
        expected |= write_messages(cfg.log_path, range(1, 2))
        read_on(first)  # message 1 has no row yet: its lines are held
        record_messages(cfg.state_dir, range(1, 3))  # the milter commits message 1's row
        expected |= write_messages(cfg.log_path, range(2, 3))
        read_on(first)  # message 2's events written after the cursor, message 1's held
        crash(first)
        sent = run_until_sent(Agent(cfg), server, expected)
    assert set(sent) == expected, "events lost"
    assert max(sent.values()) == 1, "events sent twice"


def take(agent: Agent, batches: int, save: bool) -> None:
    """Up to ``batches`` batches; a cursor after the last when ``save``, or (as logwatch
    does) after the first append of a new start."""

    async def run() -> None:
        first = agent._saved_at == 0.0
        for _ in range(batches):
            try:
                batch = await asyncio.wait_for(agent.follower.next_batch(), 0.5)
            except TimeoutError:
                break
            agent._saved_at = 0.0 if first else NEVER
            agent._take(batch)
            agent._saved_at, first = NEVER, False
        if save:
            agent._save_cursor()

    asyncio.run(run())


def deliver(agent: Agent, count: int, delivered: list[bytes]) -> None:
    """The API takes the first ``count`` pending events, as the shipper sends them."""
    events = agent.wal.read(agent.wal.acked_seq, count)
    if events:
        delivered.extend(data for _, data in events)
        agent.wal.ack(events[-1][0])


def test_crashes_among_late_map_rows_cursor_saves_and_deliveries_send_each_event_once(
    tmp_path: Path,
) -> None:
    """Some messages' map rows come a few seconds after their lines (held, given late;
    read again after a crash, given at once), cursors are saved and events delivered at
    random points, and logwatch is killed at random points: the API gets every event
    once."""
    rng = random.Random(5)
    cfg = config(tmp_path)
    expected: set[Sent] = set()
    delivered: list[bytes] = []
    agent = Agent(cfg)
    written = 0
    for _ in range(25):
        numbers = range(written, written + rng.randint(1, 4))
        late = [n for n in numbers if rng.random() < 0.3]
        for n in set(numbers) - set(late):
            record_messages(cfg.state_dir, range(n, n + 1))
        expected |= write_messages(cfg.log_path, numbers)
        written = numbers.stop
        take(agent, rng.randint(0, 2), rng.random() < 0.4)  # maybe before the late rows
        for n in late:
            record_messages(cfg.state_dir, range(n, n + 1))
        take(agent, rng.randint(1, 3), rng.random() < 0.4)
        deliver(agent, rng.randint(0, agent.wal.pending), delivered)
        if rng.random() < 0.3:
            crash(agent)
            agent = Agent(cfg)
    last = range(written + 100, written + 101)  # 100 s later: every held line is decided
    record_messages(cfg.state_dir, last)
    expected |= write_messages(cfg.log_path, last)
    for _ in range(20):
        take(agent, 100, False)
        if not agent.follower.lag_bytes() and not agent.pipeline.tracker.holding:
            break
    deliver(agent, agent.wal.pending, delivered)
    crash(agent)
    sent = Counter(
        (e["message_id"], e["event_type"], e["recipient"]) for e in map(json.loads, delivered)
    )
    assert set(sent) == expected, "events lost"
    assert max(sent.values()) == 1, "events sent twice"


def recognising(agent: Agent) -> int:
    """The events still awaited, as /health says it; /metrics must say the same."""
    health = agent.snapshot().to_health()["recognising_events"]
    metric = agent.metrics.registry.get_sample_value("sendpost_agent_recognising_events")
    assert metric == health, "/metrics and /health disagree"
    assert isinstance(health, int)
    return health


def test_events_the_re_read_cannot_give_again_are_awaited_only_for_join_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Message 1's map row lost its header between the crash and the restart: re-read, its
    lines give no event, so the WAL's events of it are never recognised. They are awaited
    until join-wait of log time past them, then the cursor moves on again."""
    cfg = config(tmp_path)
    record_messages(cfg.state_dir, range(0, 3))
    write_messages(cfg.log_path, range(0, 1))
    first = Agent(cfg)
    read_on(first, save_after_first=True)
    write_messages(cfg.log_path, range(1, 2))
    read_on(first)  # message 1's events written after the cursor
    crash(first)
    writer = MapWriter(cfg.map_path, 86400.0)
    writer.put(queue_id(1), None, HeaderState.MISSING)  # its row replaced
    writer.close()
    write_messages(cfg.log_path, range(2, 3))
    second = Agent(cfg)
    read_on(second)
    second._save_cursor()
    saved = load_cursor(cfg.cursor_path)
    assert saved is not None and saved[1]["wal_seq"] == 2, "a cursor saved while awaiting"
    assert recognising(second) == 2, "/health and /metrics do not say what is awaited"
    record_messages(cfg.state_dir, range(40, 41))
    write_messages(cfg.log_path, range(40, 41))  # 39 s after message 1: join-wait is over
    read_on(second)
    assert "2 events written before the unclean stop were not produced again" in caplog.text
    assert recognising(second) == 0
    second._save_cursor()
    saved = load_cursor(cfg.cursor_path)
    assert saved is not None and saved[1]["wal_seq"] == second.wal.last_seq == 8
    crash(second)
    events = wal_events(cfg)
    assert set(events) == {
        (message_id, recipient)
        for n in (0, 1, 2, 40)
        for message_id, _, recipient in expected_events(n, n % BOUNCE_EVERY == 0)
    }
    assert max(events.values()) == 1, "events written twice"


def test_a_wal_full_of_delivered_events_kept_for_recognising_does_not_stop_reading(
    tmp_path: Path,
) -> None:
    """After a crash the WAL is full: the API takes its events, but they are kept (the
    re-read is to recognise them). Reading must resume: they are let go (the re-read then
    sends them again, as GUARANTEES.md says)."""
    with IngestServer(KEY) as server:
        cfg = config(tmp_path, server.url, "wal-max-size: 64KB\n")
        record_messages(cfg.state_dir, range(0, 203))
        expected = write_messages(cfg.log_path, range(0, 1))
        first = Agent(cfg)
        read_on(first, save_after_first=True)
        expected |= write_messages(cfg.log_path, range(1, 201))
        read_on(first)  # 400 events after the cursor: more than 64 kB
        assert first.wal.full()
        crash(first)
        expected |= write_messages(cfg.log_path, range(201, 203))  # read after the restart
        sent = run_until_sent(Agent(cfg), server, expected)
    assert set(sent) == expected, "reading did not resume"
    again = {event for event, times in sent.items() if times > 1}
    assert again <= set().union(*(expected_events(n, n % BOUNCE_EVERY == 0) for n in range(1, 201)))


def test_a_crash_after_a_held_line_was_settled_loses_nothing(tmp_path: Path) -> None:
    """A local relay's `queued as` is held for 30 s of log time (a hop or a delivery?);
    re-read in other batches after a crash, it must settle at the same place."""
    cfg = config(tmp_path)
    record_messages(cfg.state_dir, range(4))

    def line(second: int, n: int, local: bool = False) -> str:
        relay = (
            "relay=127.0.0.1[127.0.0.1]:2525" if local else "relay=mx.example.net[203.0.113.5]:25"
        )
        reply = "250 2.0.0 Ok: queued as 7D1A2C0031" if local else "250 2.0.0 Ok"
        return (
            f"Nov 23 18:00:{second:02d} mx postfix/smtp[5238]: {queue_id(n)}:"
            f" to=<r{n}@example.com>, {relay}, delay=0.05, delays=0.02/0.01/0/0.02,"
            f" dsn=2.0.0, status=sent ({reply})\n"
        )

    def append(*lines: str) -> None:
        with cfg.log_path.open("a") as out:
            out.writelines(lines)

    append(line(0, 0, local=True), line(1, 1))
    first = Agent(cfg)
    read_on(first, save_after_first=True)  # r1 written, r0 held: in the cursor
    append(line(31, 2))  # 31 s later: r0's wait is over
    read_on(first)
    crash(first)  # r2 and r0 in the WAL, not in the cursor
    append(line(32, 3))
    second = Agent(cfg)
    read_on(second)  # r2 and r3 in one batch this time
    crash(second)
    events = wal_events(cfg)
    assert sorted(recipient for _, recipient in events) == [
        "r0@example.com",
        "r1@example.com",
        "r2@example.com",
        "r3@example.com",
    ]
    assert max(events.values()) == 1, "events written twice"


def test_a_replaced_map_file_is_joined_against_once_it_appears(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    record_messages(cfg.state_dir, range(2))
    write_messages(cfg.log_path, range(2))
    agent = Agent(cfg)
    read_on(agent)
    for suffix in ("", "-wal", "-shm"):  # as the milter sets a corrupt map aside
        old = Path(f"{cfg.map_path}{suffix}")
        if old.exists():
            old.rename(f"{cfg.map_path}.corrupt-1{suffix}")
    record_messages(cfg.state_dir, range(2, 4))  # the milter's new, empty map
    write_messages(cfg.log_path, range(2, 4))
    agent._map_checked = 0.0  # the check's interval (5 s) is over
    read_on(agent)
    crash(agent)
    events = wal_events(cfg)
    assert len(events) == 2 * 4, "the messages after the replacement were not joined"
