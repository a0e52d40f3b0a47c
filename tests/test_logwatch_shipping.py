"""`sendpost-agent logwatch` against a real HTTP server that enforces the API contract.

The log is a real file written line by line, the map is the real SQLite map, the agent
is the real process; faults are injected in the server. Every test checks that each
expected event arrives and that nothing arrives that should not (duplicates only as
far as GUARANTEES.md allows: the batch in flight at a crash).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from logwatch.classify import EventType
from logwatch.events import Event
from logwatch.shipper import BATCH_WAIT, Shipper
from logwatch.wal import Wal
from sendpost_agent.config import Secret
from tests.support.agent import LogwatchProcess
from tests.support.ingest import IngestServer
from tests.support.maillog import record_messages, write_messages

pytestmark = pytest.mark.integration

KEY = "sp-test-key-0123456789"


def received(server: IngestServer) -> list[tuple[str, str, str]]:
    return [(e["message_id"], e["event_type"], e["recipient"]) for e in server.accepted]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def server() -> Iterator[IngestServer]:
    with IngestServer(KEY) as s:
        yield s


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    state, log = tmp_path / "state", tmp_path / "mail.log"
    state.mkdir()
    log.touch()
    return state, log


def test_events_arrive_once_in_batches_on_one_connection(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(400))
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        expected = write_messages(log, range(400))
        server.wait_for_events(len(expected), timeout=30)
        time.sleep(0.5)
        assert sorted(received(server)) == sorted(expected)  # each exactly once
        assert all(r.events <= 100 for r in server.requests)
        assert len({r.peer for r in server.requests}) == 1  # one kept-alive connection
        status, body = agent.health()
        assert status == 200 and body["status"] == "ok"
        assert body["pending_events"] == 0
        metrics = agent.metrics()
        assert metrics['sendpost_agent_events_total{type="delivered"}'] == 400 + 400 - 58
        assert metrics['sendpost_agent_batches_total{outcome="2xx"}'] == len(server.requests)
        assert metrics["sendpost_agent_log_lines_read_total"] == 400 * 5
        assert agent.stop() == 0
    assert "plain http" in agent.log()  # warned: the test endpoint is not TLS
    assert KEY not in agent.log()


def test_low_rate_events_wait_at_most_the_batch_window(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(1))
    with LogwatchProcess(state, log, server.url, KEY):
        written = time.monotonic()
        write_messages(log, range(1))
        server.wait_for_events(2, timeout=15)
        assert time.monotonic() - written < 8  # 5 s batch window + reading + sending


def test_kill_9_repeatedly_while_events_flow_loses_nothing(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    total, kills = 3000, 6
    record_messages(state, range(total))
    rng = random.Random(7)
    expected: set[tuple[str, str, str]] = set()
    agent = LogwatchProcess(state, log, server.url, KEY).start()
    written = 0
    for _ in range(kills):
        chunk = rng.randrange(200, 700)
        expected |= write_messages(log, range(written, min(total, written + chunk)))
        written = min(total, written + chunk)
        time.sleep(rng.uniform(0.05, 1.5))
        agent.kill()
        agent.start()
    expected |= write_messages(log, range(written, total))
    server.wait_for_events(len(expected), timeout=60)
    time.sleep(1.0)
    agent.stop()
    got = received(server)
    assert set(got) == expected, "events lost or invented"
    duplicates = sum(n - 1 for n in Counter(got).values())
    assert duplicates <= kills * 100, f"{duplicates} duplicates for {kills} kills"


def test_endpoint_down_for_a_while_then_everything_arrives(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(300))
    server.go_down()
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        expected = write_messages(log, range(300))
        wait_for(
            lambda: agent.metrics().get("sendpost_agent_wal_events", 0) == len(expected),
            what="events in the WAL",
        )
        assert agent.metrics()['sendpost_agent_batches_total{outcome="error"}'] >= 1
        server.come_up()
        server.wait_for_events(len(expected), timeout=40)
        time.sleep(0.5)
        assert sorted(received(server)) == sorted(expected)


def test_5xx_burst_and_429_retry_after_are_retried_and_honoured(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(50))
    server.fail_next(3, status=503)
    with LogwatchProcess(state, log, server.url, KEY):
        expected = write_messages(log, range(50))
        server.wait_for_events(len(expected), timeout=40)
        assert sorted(received(server)) == sorted(expected)
        server.clear()
        record_messages(state, range(50, 60))
        server.fail_next(1, status=429, retry_after=3)
        more = write_messages(log, range(50, 60))
        server.wait_for_events(len(more), timeout=40)
        statuses = [(r.status, r.time) for r in server.requests]
        assert statuses[0][0] == 429
        assert statuses[1][1] - statuses[0][1] >= 2.9  # Retry-After: 3


def test_one_bad_event_is_set_aside_and_the_rest_delivered(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(40))
    server.reject_events(lambda e: e.get("recipient") == "ok13@example.com")
    with LogwatchProcess(state, log, server.url, KEY):
        expected = write_messages(log, range(40))
        server.wait_for_events(len(expected) - 1, timeout=40)
        dead = state / "dead-letter.jsonl"
        wait_for(dead.exists, what="the dead-letter file")
        time.sleep(0.5)
    assert sorted(received(server)) == sorted(e for e in expected if e[2] != "ok13@example.com")
    (record,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert record["status"] == 400
    assert record["event"]["recipient"] == "ok13@example.com"
    assert "0" in record["answer"]  # the server named the index of the bad event


def test_wrong_key_keeps_events_and_health_says_so(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(20))
    with LogwatchProcess(state, log, server.url, "sp-wrong-key") as agent:
        expected = write_messages(log, range(20))
        wait_for(lambda: agent.health()[0] == 503, what="unhealthy")
        status, body = agent.health()
        assert status == 503
        assert any("api-key" in str(r) for r in body["reasons"])  # type: ignore[union-attr]
        assert body["pending_events"] == len(expected)
        assert agent.log().count("rejected the key") == 1
        assert "sp-wrong-key" not in agent.log()
    with LogwatchProcess(state, log, server.url, KEY):  # the operator fixes the key
        server.wait_for_events(len(expected), timeout=30)
        assert sorted(received(server)) == sorted(expected)


def test_an_ack_that_cannot_be_written_keeps_the_events_and_health_says_so(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(60))
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        blocker = state / "pending.wal.ack"
        blocker.mkdir()  # a directory in the ack file's place: as root, a real failed write
        expected = write_messages(log, range(60))  # over 100 events: a batch goes at once
        wait_for(lambda: agent.health()[0] == 503, what="unhealthy")
        wait_for(
            lambda: agent.metrics().get("sendpost_agent_wal_events") == len(expected),
            what="every event in the WAL",
        )
        status, body = agent.health()
        assert status == 503 and f"cannot write {blocker}" in str(body["reasons"])
        assert "Is a directory" in str(body["reasons"])
        assert body["pending_events"] == len(expected)  # sent, but not removed unacked
        assert agent.metrics()["sendpost_agent_state_write_errors_total"] >= 1
        blocker.rmdir()  # the disk has room again
        server.wait_for_events(len(expected), timeout=30)
        wait_for(lambda: agent.health()[0] == 200, what="healthy again")
        assert agent.health()[1]["pending_events"] == 0
        assert sorted(received(server)) == sorted(expected)  # only the ack was retried
        assert agent.stop() == 0
    assert f"cannot write {blocker}" in agent.log()


def test_a_dead_letter_file_that_cannot_be_written_loses_nothing(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(40))
    server.reject_events(lambda e: e.get("recipient") == "ok13@example.com")
    dead = state / "dead-letter.jsonl"
    dead.mkdir()
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        expected = write_messages(log, range(40))
        wait_for(lambda: agent.health()[0] == 503, what="unhealthy")
        status, body = agent.health()
        assert status == 503 and f"cannot write {dead}" in str(body["reasons"])
        assert body["pending_events"] == len(expected)
        dead.rmdir()
        server.wait_for_events(len(expected) - 1, timeout=30)
        wait_for(lambda: agent.health()[0] == 200, what="healthy again")
        assert agent.metrics()["sendpost_agent_events_dead_lettered_total"] == 1
    assert sorted(received(server)) == sorted(e for e in expected if e[2] != "ok13@example.com")
    (record,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert record["event"]["recipient"] == "ok13@example.com"


def test_shipping_that_fails_for_good_stops_the_agent_with_exit_1(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    """A corrupt WAL ends shipping: logwatch must not read on silently but exit for a restart."""
    state, log = paths
    record_messages(state, range(20))
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        expected = write_messages(log, range(10))
        wait_for(
            lambda: agent.metrics().get("sendpost_agent_wal_events") == len(expected),
            what="events in the WAL",
        )
        with (state / "pending.wal").open("r+b") as wal:  # within the 5 s batch window
            wal.seek(-2, os.SEEK_END)
            wal.write(b"X")
        assert agent.proc is not None
        assert agent.proc.wait(timeout=15) == 1
    assert f"{state / 'pending.wal'}: the record at offset" in agent.log()
    assert "check the disk" in agent.log()
    with LogwatchProcess(state, log, server.url, KEY) as agent:  # as systemd restarts it
        more = write_messages(log, range(10, 20))
        server.wait_for_events(len(more), timeout=30)
        assert agent.metrics()["sendpost_agent_wal_torn_records_total"] == 1
    assert more <= set(received(server)) <= expected | more


def test_a_full_disk_stops_logwatch_cleanly_and_a_restart_loses_nothing(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    """The WAL cannot grow (here: a file size limit, which fails writes with EFBIG as a
    full disk fails them with ENOSPC): exit 1 with the file and the fix, no traceback."""
    state, log = paths
    record_messages(state, range(1500))
    server.go_down()
    agent = LogwatchProcess(state, log, server.url, KEY)
    agent.args = ["prlimit", "--fsize=200000", "--", *agent.args]
    agent.start()
    expected = write_messages(log, range(1500))
    assert agent.proc is not None
    assert agent.proc.wait(timeout=30) == 1
    assert f"{state / 'pending.wal'}: cannot append events: File too large" in agent.log()
    assert "Traceback" not in agent.log()
    server.come_up()
    with LogwatchProcess(state, log, server.url, KEY):  # as systemd restarts it
        server.wait_for_events(len(expected), timeout=60)
        time.sleep(0.5)
    assert set(received(server)) == expected


def test_full_wal_pauses_reading_and_resumes_by_itself(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(1500))
    server.go_down()
    with LogwatchProcess(state, log, server.url, KEY, "--wal-max-size", "64KB") as agent:
        expected = write_messages(log, range(1500))
        wait_for(
            lambda: agent.metrics().get("sendpost_agent_log_reading_paused") == 1,
            what="reading paused",
        )
        status, body = agent.health()
        assert status == 503 and "WAL" in " ".join(body["reasons"])  # type: ignore[arg-type]
        assert agent.metrics()["sendpost_agent_cursor_lag_bytes"] > 0
        server.come_up()
        server.wait_for_events(len(expected), timeout=60)
        time.sleep(0.5)
        assert sorted(received(server)) == sorted(expected)
        assert agent.metrics()["sendpost_agent_log_reading_paused"] == 0


def test_sigterm_flushes_pending_events_and_exits_0(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(3))
    agent = LogwatchProcess(state, log, server.url, KEY).start()
    expected = write_messages(log, range(3))
    wait_for(
        lambda: agent.metrics().get("sendpost_agent_wal_events") == len(expected),
        what="events in the WAL",
    )
    started = time.monotonic()
    assert agent.stop() == 0  # before the 5 s batch window ended
    assert time.monotonic() - started < 5
    assert sorted(received(server)) == sorted(expected)


def test_slow_answers_only_slow_things_down(server: IngestServer, paths: tuple[Path, Path]) -> None:
    state, log = paths
    record_messages(state, range(250))
    server.slow(1.0)
    with LogwatchProcess(state, log, server.url, KEY):
        expected = write_messages(log, range(250))
        server.wait_for_events(len(expected), timeout=60)
        assert sorted(received(server)) == sorted(expected)


def test_sigkill_during_send_resends_at_most_the_batch_in_flight(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(150))
    server.slow(3.0)
    agent = LogwatchProcess(state, log, server.url, KEY).start()
    expected = write_messages(log, range(150))
    time.sleep(1.5)  # 150 messages = 300 events: the first batch of 100 is in flight
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    server.slow(0)
    agent.start()
    server.wait_for_events(len(expected), timeout=40)
    time.sleep(1.0)
    agent.stop()
    got = received(server)
    assert set(got) == expected
    assert len(got) - len(set(got)) <= 100


def test_replay_send_ships_exactly_what_replay_prints(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(120))
    expected = write_messages(log, range(120))
    common = [
        sys.executable,
        "-m",
        "sendpost_agent",
        "replay",
        str(log),
        "--state-dir",
        str(state),
        "--log-timezone",
        "UTC",
        "--postfix-config-dir",
        str(state / "none"),
    ]
    env = {**os.environ, "SENDPOST_CONFIG": "/dev/null"}
    printed = subprocess.run(common, capture_output=True, text=True, env=env, timeout=60)
    sent = subprocess.run(
        [*common, "--send", "--endpoint", server.url, "--api-key", KEY],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == ""
    assert server.accepted == [json.loads(line) for line in printed.stdout.splitlines()]
    assert sorted(received(server)) == sorted(expected)


def test_endpoint_down_for_over_a_minute_backoff_caps_and_nothing_is_lost(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    """Longer than the 60 s backoff cap: the agent must still come back by itself."""
    state, log = paths
    record_messages(state, range(100))
    server.go_down()
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        expected = write_messages(log, range(100))
        time.sleep(75)
        errors = agent.metrics()['sendpost_agent_batches_total{outcome="error"}']
        assert 5 <= errors <= 9  # 1, 2, 4, 8, 16, 32 s ... not hammering the endpoint
        server.come_up()
        server.wait_for_events(len(expected), timeout=80)  # next retry <= 60 s + jitter
        time.sleep(0.5)
        assert sorted(received(server)) == sorted(expected)


def run_status(port: int) -> subprocess.CompletedProcess[str]:
    """`sendpost-agent status` as an operator runs it, asking the logwatch on ``port``."""
    return subprocess.run(
        [sys.executable, "-m", "sendpost_agent", "status", "--listen", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        env={**os.environ, "SENDPOST_CONFIG": "/dev/null"},
        timeout=30,
    )


def test_status_summarises_a_running_agent_and_says_when_none_runs(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        status = run_status(agent.port)
        assert status.returncode == 0, status.stdout + status.stderr
        assert ": ok" in status.stdout and "pending events: 0" in status.stdout
    gone = run_status(agent.port)
    assert gone.returncode == 1
    assert "not answering" in gone.stdout


def test_status_of_an_unhealthy_agent_says_why_and_exits_1(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(5))
    with LogwatchProcess(state, log, server.url, "sp-wrong-key") as agent:
        expected = write_messages(log, range(5))
        wait_for(lambda: agent.health()[0] == 503, what="unhealthy")
        wait_for(lambda: agent.health()[1]["pending_events"] == len(expected), what="events read")
        status = run_status(agent.port)
    assert status.returncode == 1, status.stdout + status.stderr
    assert ": unhealthy" in status.stdout
    assert f"pending events: {len(expected)} (" in status.stdout
    assert "events sent:    0, last accepted never" in status.stdout
    assert "last error:     HTTP 401: API key rejected" in status.stdout
    assert (
        "problem:        the API rejects the api-key (401/403): set the right key" in status.stdout
    )


def test_rotations_truncations_and_cut_lines_are_counted_alike_in_metrics_health_and_status(
    server: IngestServer, paths: tuple[Path, Path]
) -> None:
    state, log = paths
    record_messages(state, range(30))
    with LogwatchProcess(state, log, server.url, KEY) as agent:
        expected = write_messages(log, range(10))
        server.wait_for_events(len(expected), timeout=30)
        log.rename(log.with_name("mail.log.1"))  # logrotate's rename and create
        expected |= write_messages(log, range(10, 20))
        server.wait_for_events(len(expected), timeout=30)
        with log.open("r+b") as f:
            f.truncate(0)
        wait_for(
            lambda: agent.metrics().get("sendpost_agent_log_truncations_total") == 1,
            what="the truncation counted",
        )
        with log.open("ab") as f:
            f.write(b"x" * (2 << 20) + b"\n")  # 2 MiB: cut to 1 MiB
        expected |= write_messages(log, range(20, 30))
        server.wait_for_events(len(expected), timeout=30)
        wait_for(
            lambda: agent.health()[1]["events_sent"] == len(expected), what="every event acked"
        )
        metrics = agent.metrics()
        _, health = agent.health()
        status = run_status(agent.port)
    assert metrics["sendpost_agent_log_rotations_total"] == health["rotations"] == 1
    assert metrics["sendpost_agent_log_truncations_total"] == health["truncations"] == 1
    assert metrics["sendpost_agent_log_lines_cut_total"] == health["lines_cut"] == 1
    lines_read = 30 * 5 + 1
    assert metrics["sendpost_agent_log_lines_read_total"] == health["lines_read"] == lines_read
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"log lines:      {lines_read} read, 1 cut to 1 MiB; 1 rotations, 1 truncations" in (
        status.stdout
    )
    assert f"events sent:    {len(expected)}, last accepted " in status.stdout


def encoded_events(numbers: range) -> list[bytes]:
    """Delivered events for UUIDs ``numbers``, as the agent appends them to the WAL."""
    when = datetime.now(UTC)
    return [
        Event(str(uuid.UUID(int=n)), EventType.DELIVERED, when, "a@b.c", 250, "ok")
        .to_json()
        .encode()
        for n in numbers
    ]


def ship_in_process(
    server: IngestServer,
    tmp_path: Path,
    feed: Callable[[Wal, Shipper], Awaitable[None]],
    events: int,
    pending: range = range(0),
) -> list[int]:
    """Run a Shipper on a WAL holding ``pending`` events while ``feed`` appends more,
    until the server took ``events``; return the accepted batches' sizes."""
    wal = Wal(tmp_path / "events.wal")
    if pending:
        wal.append(encoded_events(pending))
    shipper = Shipper(wal, server.url, Secret(KEY), tmp_path / "dead-letter.jsonl", lambda _: None)

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(shipper.run(stop))
        await asyncio.sleep(0.2)  # the sender waits for work
        await feed(wal, shipper)
        async with asyncio.timeout(4 * BATCH_WAIT):
            while len(server.accepted) < events:
                await asyncio.sleep(0.05)
        stop.set()
        await running

    asyncio.run(main())
    wal.close()
    return [
        len(json.loads(r.body)["events"]) for r in server.requests if r.status == 200 and r.body
    ]


def test_the_batch_window_counts_from_when_the_lines_were_noticed(
    server: IngestServer, tmp_path: Path
) -> None:
    """A reader that gathers lines for a while hands them over later than it noticed
    them: the shipper's 5 s window starts when they were noticed. 150 events noticed a
    window ago leave at once, the 50 after the first full batch too, so an event
    appended half a window later is not sent with them."""

    async def feed(wal: Wal, shipper: Shipper) -> None:
        wal.append(encoded_events(range(150)))
        shipper.appended(time.monotonic() - BATCH_WAIT)  # noticed a whole window before
        await asyncio.sleep(BATCH_WAIT / 2)
        wal.append(encoded_events(range(150, 151)))
        shipper.appended(time.monotonic())

    sizes = ship_in_process(server, tmp_path, feed, 151)
    assert sizes == [100, 50, 1], sizes
    late = str(uuid.UUID(int=150))
    assert server.accepted[-1]["message_id"] == late, "a window counted anew kept early events"


def test_events_pending_at_a_start_leave_within_one_window(
    server: IngestServer, tmp_path: Path
) -> None:
    """Events left in the WAL by the last run have no noticed time: their window starts
    when the sender first sees them, and ends (it is not counted anew at each look)."""

    async def feed(wal: Wal, shipper: Shipper) -> None:
        return None  # nothing new: only what the last run left

    ship_in_process(server, tmp_path, feed, 1, pending=range(7, 8))
    assert [e["message_id"] for e in server.accepted] == [str(uuid.UUID(int=7))]


def test_events_after_a_full_batch_keep_their_own_window_not_an_older_one(
    server: IngestServer, tmp_path: Path
) -> None:
    """100 events noticed a window ago leave at once; 50 noticed just now, left over
    after them, wait their own window (more may join them), not the older one."""

    async def feed(wal: Wal, shipper: Shipper) -> None:
        wal.append(encoded_events(range(100)))
        shipper.appended(time.monotonic() - BATCH_WAIT)
        wal.append(encoded_events(range(100, 150)))
        shipper.appended(time.monotonic())
        await asyncio.sleep(BATCH_WAIT / 2)
        wal.append(encoded_events(range(150, 151)))
        shipper.appended(time.monotonic())

    sizes = ship_in_process(server, tmp_path, feed, 151)
    assert sizes == [100, 51], sizes
