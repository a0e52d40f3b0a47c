"""The milter's map rows, committed in groups after the answer: what a reader sees, what a
stop commits and what a crash can lose (sendpost_milter.groupwriter; real SQLite files,
real threads and processes)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendpost_agent.queuemap import HeaderState, MapReader, MapWriter, row
from sendpost_milter.groupwriter import GROUP_WINDOW, ROW_BYTES, GroupWriter
from sendpost_milter.metrics import MilterMetrics

pytestmark = pytest.mark.integration  # a thread of its own and the real clock
DAY = 86400.0
HOUR = 3600.0  # a group window no test waits for: only a stop or the test commits


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queuemap.sqlite3"


def pending(metrics: MilterMetrics) -> float | None:
    return metrics.registry.get_sample_value("sendpost_milter_map_rows_pending")


def test_a_quiet_row_is_committed_at_once_and_busy_ones_until_a_stop(path: Path) -> None:
    """The first message after a quiet spell is committed before its answer; those that
    follow within the group window are queued, counted as pending, and a stop commits
    them."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=HOUR)
    reader = MapReader(path)
    rows.put(row("P0", uuid.UUID(int=1), HeaderState.PRESENT, recipients=["a@b"]))
    assert reader.get("P0") is not None and pending(metrics) == 0
    for i in (1, 2):
        rows.put(row(f"P{i}", uuid.UUID(int=i + 1), HeaderState.PRESENT, recipients=["a@b"]))
    assert len(reader) == 1  # answered, not committed yet: what a crash now would lose
    assert pending(metrics) == 2
    rows.close()
    assert [reader.get(f"P{i}").uuid for i in range(3)] == [  # type: ignore[union-attr]
        str(uuid.UUID(int=i + 1)) for i in range(3)
    ]
    assert reader.get("P0").recipients == ("a@b",)  # type: ignore[union-attr]
    assert pending(metrics) == 0
    reader.close()
    writer.close()


def test_a_failed_group_is_counted_and_logged_and_later_rows_are_written(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stray sqlite3 shell holds the map's write lock: the rows answered meanwhile are
    counted as map write errors and logged by queue ID; the writer goes on after it."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=0.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    rows.put(row("LOCKED1", None, HeaderState.MISSING))
    rows.put(row("LOCKED2", None, HeaderState.MISSING))
    errors = "sendpost_milter_map_write_errors_total"
    deadline = time.monotonic() + 10
    while metrics.registry.get_sample_value(errors) != 2:
        assert time.monotonic() < deadline, "the locked rows were neither written nor counted"
        time.sleep(0.01)
    holder.execute("ROLLBACK")
    holder.close()
    rows.put(row("AFTER", None, HeaderState.MISSING))
    rows.close()
    reader = MapReader(path)
    assert reader.get("AFTER") is not None
    assert reader.get("LOCKED1") is None and reader.get("LOCKED2") is None
    assert "cannot write the queue map" in caplog.text and "LOCKED1" in caplog.text
    reader.close()
    writer.close()


def test_a_bad_row_costs_only_itself_not_its_group(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row SQLite refuses (here text it cannot encode) in a group: the group is tried
    row by row, the other rows are written and only the bad one is counted and logged."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=HOUR)
    rows.put(row("FIRST", None, HeaderState.MISSING))  # committed at once: the rest queue
    rows.put(row("GOOD1", None, HeaderState.MISSING))
    rows.put(("BAD", None, int(HeaderState.MISSING), 0, "\udcff@x"))
    rows.put(row("GOOD2", None, HeaderState.MISSING))
    rows.close()
    reader = MapReader(path)
    assert [q for q in ("FIRST", "GOOD1", "BAD", "GOOD2") if reader.get(q)] == [
        "FIRST",
        "GOOD1",
        "GOOD2",
    ]
    assert metrics.registry.get_sample_value("sendpost_milter_map_write_errors_total") == 1
    assert "1 rows lost (queue IDs BAD)" in caplog.text
    reader.close()
    writer.close()


def test_the_bad_rows_of_a_group_are_logged_in_one_line(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Several rows SQLite refuses in one group: the rest are written, and the lost ones
    are counted and named in one line, not one line each."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=HOUR)
    rows.put(row("FIRST", None, HeaderState.MISSING))  # committed at once: the rest queue
    for queue_id in ("BAD1", "GOOD", "BAD2"):
        recipients = "a@x" if queue_id == "GOOD" else "\udcff@x"
        rows.put((queue_id, None, int(HeaderState.MISSING), 0, recipients))
    rows.close()
    reader = MapReader(path)
    assert [q for q in ("FIRST", "BAD1", "GOOD", "BAD2") if reader.get(q)] == ["FIRST", "GOOD"]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "2 rows lost (queue IDs BAD1, BAD2)" in lines[0], lines
    assert metrics.registry.get_sample_value("sendpost_milter_map_write_errors_total") == 2
    reader.close()
    writer.close()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file cannot be written, even by root (immutable), as on a read-only mount."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o444)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o644)


def test_a_map_that_cannot_be_written_costs_one_line_per_group_not_per_row(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only map (so a full disk, an I/O error, a corrupt map: no fault of a row)
    fails every row alike: the group is counted and logged once, as one line naming its
    queue IDs, not tried and logged again row by row."""
    MapWriter(path, DAY).close()
    with read_only(path):
        writer = MapWriter(path, DAY)
        metrics = MilterMetrics()
        rows = GroupWriter(writer, metrics, window=HOUR)
        rows.put(row("R0", None, HeaderState.MISSING))  # committed at once: the rest queue
        for i in range(1, 6):
            rows.put(row(f"R{i}", None, HeaderState.MISSING))
        rows.close()
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2, lines
    assert "readonly" in lines[1] and "5 rows lost (queue IDs R1, R2, R3, R4, R5)" in lines[1]
    assert metrics.registry.get_sample_value("sendpost_milter_map_write_errors_total") == 6


def test_a_row_put_after_a_stop_is_committed(path: Path) -> None:
    """A message that ends after the stop (libmilter does not wait for open connections)
    still has its row written, not left in a queue no thread reads."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=HOUR)
    rows.put(row("BEFORE", None, HeaderState.MISSING))
    rows.close()
    rows.put(row("LATE", None, HeaderState.MISSING))
    reader = MapReader(path)
    assert reader.get("LATE") is not None
    assert pending(metrics) == 0
    reader.close()
    writer.close()


def test_the_writer_thread_waits_out_a_short_lock(path: Path) -> None:
    """Rows already answered wait for a map locked for a moment (a backup, a sqlite3
    shell) instead of being dropped: no message waits for that."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=HOUR)
    rows.put(row("BEFORE", None, HeaderState.MISSING))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    rows.put(row("WAITED", None, HeaderState.MISSING))  # queued: the group window is open
    release = threading.Timer(0.3, holder.execute, ("ROLLBACK",))
    release.start()
    rows.close()  # commits the queued row now, while the lock is held
    release.join()
    holder.close()
    reader = MapReader(path)
    assert reader.get("WAITED") is not None
    assert metrics.registry.get_sample_value("sendpost_milter_map_write_errors_total") == 0
    reader.close()
    writer.close()


def test_rows_waiting_for_a_slow_map_are_bounded_the_oldest_dropped_counted_and_logged(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The map cannot keep up (here its writer thread never gets to commit): the rows
    waiting in memory stay within the bound, without any put waiting for the map; past
    it the oldest are dropped, counted as map write errors and logged in chunks, and the
    newest are committed at the stop."""
    writer = MapWriter(path, DAY)
    metrics = MilterMetrics()
    rows = GroupWriter(writer, metrics, window=HOUR, max_queued_bytes=100 * ROW_BYTES)
    rows.put(row("FIRST", None, HeaderState.MISSING))  # committed at once: the rest queue
    answered = [f"Q{i:04d}" for i in range(1000)]
    for queue_id in answered:
        rows.put(row(queue_id, None, HeaderState.MISSING))
        assert (pending(metrics) or 0) <= 100
    rows.close()
    reader = MapReader(path)
    kept = [q for q in answered if reader.get(q) is not None]
    reader.close()
    writer.close()
    assert 75 <= len(kept) <= 100 and kept == answered[-len(kept) :]  # the newest
    lost = len(answered) - len(kept)
    assert metrics.registry.get_sample_value("sendpost_milter_map_write_errors_total") == lost
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert 0 < len(lines) <= lost // 20, lines  # a line per chunk, not per row
    assert "oldest dropped" in lines[0] and "rows lost (queue IDs Q0000, Q0001" in lines[0]


def test_the_rows_waiting_take_no_more_memory_than_the_bound(path: Path) -> None:
    """The bound is memory the milter process really holds (traced by Python's
    allocator), for rows as the milter makes them: a UUID and one recipient each."""
    writer = MapWriter(path, DAY)
    bound = 1024 * 1024
    rows = GroupWriter(writer, MilterMetrics(), window=HOUR, max_queued_bytes=bound)
    rows.put(row("FIRST", None, HeaderState.MISSING))  # committed at once: the rest queue
    tracemalloc.start()
    try:
        before, held = tracemalloc.get_traced_memory()[0], 0
        for i in range(4 * bound // ROW_BYTES):  # enough to fill the bound four times
            recipient = f"recipient{i:07d}@example.com"
            rows.put(
                row(f"4dQ{i:09d}zK", uuid.uuid4(), HeaderState.PRESENT, recipients=[recipient])
            )
            held = max(held, tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    rows.close()
    writer.close()
    assert held <= bound, f"{held} bytes held for a bound of {bound}"


# The milter's writer in a process of its own: ``before`` rows committed (a group closed),
# then ``after`` rows answered with the group window given; "pending N" once all are put.
CRASH_SCRIPT = textwrap.dedent("""
    import sys, time, uuid
    from pathlib import Path
    from sendpost_agent.queuemap import HeaderState, MapWriter, row
    from sendpost_milter.groupwriter import GROUP_WINDOW, GroupWriter
    from sendpost_milter.metrics import MilterMetrics
    writer = MapWriter(Path(sys.argv[1]), 86400.0)
    window, before, after = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for n, count in enumerate((before, after)):
        metrics = MilterMetrics()
        rows = GroupWriter(writer, metrics, window)
        for i in range(count):
            queue_id = f"Q{n}{i:06d}"
            rows.put(row(queue_id, uuid.UUID(int=i + 1), HeaderState.PRESENT))
            print(queue_id, flush=True)
        if n == 0:
            rows.close()
    pending = metrics.registry.get_sample_value("sendpost_milter_map_rows_pending")
    print("pending", int(pending), flush=True)
    time.sleep(3600)
""")


def crash(path: Path, window: float, before: int, after: int) -> tuple[list[str], int]:
    """Rows answered (in order) and the pending gauge just before the kill -9."""
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), str(window), str(before), str(after)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    answered: list[str] = []
    while not (line := child.stdout.readline().strip()).startswith("pending "):
        assert line, "the writer process ended early"
        answered.append(line)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return answered, int(line.split()[1])


def test_a_crash_loses_only_the_rows_not_committed_yet(path: Path) -> None:
    """kill -9 of the milter: the map is consistent, every row committed before is there,
    and what is missing is what ``sendpost_milter_map_rows_pending`` counted."""
    answered, at_stake = crash(path, HOUR, 30, 20)
    assert len(answered) == 50 and at_stake == 19  # the first of the 20 went at once
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reader = MapReader(path)
    assert [q for q in answered if reader.get(q) is not None] == answered[:31]
    reader.close()


def test_a_crash_under_steady_traffic_loses_only_the_newest_rows(path: Path) -> None:
    """The shipped group window, rows put as fast as they come: whatever a crash loses
    comes after everything kept (never a hole), and no more than was pending."""
    answered, at_stake = crash(path, GROUP_WINDOW, 0, 5000)
    reader = MapReader(path)
    kept = [q for q in answered if reader.get(q) is not None]
    reader.close()
    assert kept == answered[: len(kept)]
    assert len(answered) - len(kept) <= at_stake
