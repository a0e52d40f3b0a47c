"""The shared queue map: reuse of queue IDs, no-header rows, pruning, two processes, crash."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from sendpost_agent.queuemap import (
    ROWS_PER_INSERT,
    WRITER_BUSY_TIMEOUT,
    Entry,
    HeaderState,
    MapError,
    MapReader,
    MapWriter,
    row,
)

DAY = 86400.0
U1 = uuid.UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
U2 = uuid.UUID("9b2d6c1e-0a57-4c3e-8f1a-6f6b0d7c2e11")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queuemap.sqlite3"


@pytest.mark.unit
def test_row_round_trips_between_writer_and_reader(path: Path) -> None:
    writer = MapWriter(path, DAY)
    reader = MapReader(path)
    assert reader.get("A438320C032") is None
    writer.put("A438320C032", U1, HeaderState.PRESENT, now=1000)
    assert reader.get("A438320C032") == Entry(str(U1), HeaderState.PRESENT, 1000)
    writer.close()
    reader.close()


@pytest.mark.unit
def test_reused_queue_id_replaces_the_old_row(path: Path) -> None:
    writer = MapWriter(path, DAY)
    reader = MapReader(path)
    writer.put("A438320C032", U1, HeaderState.PRESENT)
    writer.put("A438320C032", U2, HeaderState.PRESENT)
    assert reader.get("A438320C032").uuid == str(U2)  # type: ignore[union-attr]
    assert len(reader) == 1


@pytest.mark.unit
@pytest.mark.parametrize("state", [HeaderState.MISSING, HeaderState.INVALID, HeaderState.REPEATED])
def test_new_message_without_header_does_not_inherit_old_uuid(
    path: Path, state: HeaderState
) -> None:
    writer = MapWriter(path, DAY)
    reader = MapReader(path)
    writer.put("A438320C032", U1, HeaderState.PRESENT)
    writer.put("A438320C032", None, state)
    entry = reader.get("A438320C032")
    assert entry is not None and entry.uuid is None and entry.header is state


@pytest.mark.unit
def test_prune_keeps_rows_within_retention_and_drops_older(path: Path) -> None:
    writer = MapWriter(path, DAY)
    now = 1_800_000_000.0
    for i in range(5000):  # more than one prune chunk
        writer.put(f"OLD{i:05d}", U1, HeaderState.PRESENT, now=now - DAY - 10)
    writer.put("FRESH", U2, HeaderState.PRESENT, now=now - DAY + 10)
    assert writer.prune(now=now) == 5000
    reader = MapReader(path)
    assert len(reader) == 1
    assert reader.get("FRESH") is not None
    assert reader.get("OLD00001") is None


@pytest.mark.unit
def test_reopening_keeps_rows_and_schema(path: Path) -> None:
    writer = MapWriter(path, DAY)
    writer.put("B1", U1, HeaderState.PRESENT)
    writer.close()
    writer = MapWriter(path, DAY)
    assert MapReader(path).get("B1") is not None


@pytest.mark.unit
def test_recipients_round_trip_in_the_order_given(path: Path) -> None:
    writer = MapWriter(path, DAY)
    writer.put("R1", U1, HeaderState.PRESENT, now=1000, recipients=["b@x.example", "a@x.example"])
    assert MapReader(path).get("R1") == Entry(
        str(U1), HeaderState.PRESENT, 1000, ("b@x.example", "a@x.example")
    )


@pytest.mark.unit
@pytest.mark.parametrize("opener", [MapWriter, MapReader], ids=["milter", "logwatch"])
def test_a_map_of_the_previous_schema_is_upgraded_keeping_its_rows(
    path: Path, opener: type[MapWriter] | type[MapReader]
) -> None:
    """The map of an agent before recipients were recorded (schema 1): either process may
    start first after the upgrade; the old rows stay, with recipients unknown."""
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE queuemap (id INTEGER PRIMARY KEY, queue_id TEXT NOT NULL UNIQUE,"
        " uuid BLOB, header INTEGER NOT NULL, received_at INTEGER NOT NULL);"
        "PRAGMA user_version=1;"
    )
    old.execute("INSERT INTO queuemap VALUES (1, 'OLD1', ?, 0, 1000)", (U1.bytes,))
    old.commit()
    old.close()
    if opener is MapWriter:
        MapWriter(path, DAY).close()
    else:
        MapReader(path).close()
    writer = MapWriter(path, DAY)
    writer.put("NEW1", U2, HeaderState.PRESENT, now=2000, recipients=["a@x.example"])
    reader = MapReader(path)
    assert reader.get("OLD1") == Entry(str(U1), HeaderState.PRESENT, 1000, None)
    assert reader.get("NEW1") == Entry(str(U2), HeaderState.PRESENT, 2000, ("a@x.example",))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


@pytest.mark.unit
def test_corrupt_map_is_moved_aside_so_mail_keeps_flowing(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    writer = MapWriter(path, DAY)
    writer.put("C1", U1, HeaderState.PRESENT)
    assert MapReader(path).get("C1") is not None
    assert list(path.parent.glob("queuemap.sqlite3.corrupt-*"))


@pytest.mark.unit
def test_a_map_locked_at_start_is_kept_not_moved_aside(path: Path) -> None:
    """Only a corrupt file is set aside: a lock, a full disk or a permission problem
    would clear up, and throwing the rows away would lose every queued message's events."""
    writer = MapWriter(path, DAY)
    writer.put("K1", U1, HeaderState.PRESENT)
    writer.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(MapError, match="database is locked; fix the cause"):
        MapWriter(path, DAY)
    holder.close()
    assert not list(path.parent.glob("queuemap.sqlite3.corrupt-*"))
    assert MapReader(path).get("K1") is not None


@pytest.mark.integration
def test_a_locked_map_does_not_hold_messages_up_for_seconds(path: Path) -> None:
    """A stray sqlite3 shell holding the write lock: the milter gives up rows instead of
    making each end-of-message wait behind the previous one's wait."""
    writer = MapWriter(path, DAY)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    failed = []

    def put(n: int) -> None:
        try:
            writer.put(f"L{n}", U1, HeaderState.PRESENT)
        except sqlite3.OperationalError:
            failed.append(n)

    started = time.monotonic()
    threads = [threading.Thread(target=put, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    waited = time.monotonic() - started
    holder.execute("ROLLBACK")
    holder.close()
    assert len(failed) == 12
    # One wait for the lock, not one per message (12 x 0.1 s).
    assert waited < 5 * WRITER_BUSY_TIMEOUT, f"12 messages held {waited:.2f} s in all"
    writer.put("L-after", U1, HeaderState.PRESENT)  # the lock is gone: written at once
    assert MapReader(path).get("L-after") is not None


@pytest.mark.unit
def test_rows_stamped_in_the_future_do_not_stop_pruning(path: Path) -> None:
    """The clock was a year ahead when some rows were written, then corrected."""
    writer = MapWriter(path, DAY)
    now = 1_800_000_000.0
    for i in range(2500):  # more than a prune chunk
        writer.put(f"FUT{i:05d}", U1, HeaderState.PRESENT, now=now + 365 * DAY)
    for i in range(3000):
        writer.put(f"OLD{i:05d}", U1, HeaderState.PRESENT, now=now - DAY - 10)
    writer.put("FRESH", U2, HeaderState.PRESENT, now=now)
    assert writer.prune(now=now) == 3000
    reader = MapReader(path)
    assert len(reader) == 2501
    assert reader.get("OLD00001") is None


WRITER_SCRIPT = textwrap.dedent("""
    import sys, uuid
    from pathlib import Path
    from sendpost_agent.queuemap import HeaderState, MapWriter
    writer = MapWriter(Path(sys.argv[1]), 86400.0)
    writer.start_maintenance(checkpoint_every=0.01)
    for i in range(int(sys.argv[2])):
        qid = f"Q{i:07d}"
        writer.put(qid, uuid.UUID(int=i + 1), HeaderState.PRESENT)
        print(qid, flush=True)
    writer.close()
""")


def start_writer(path: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.integration
def test_reader_in_another_process_sees_every_committed_row(path: Path) -> None:
    """Writer and reader run at once: every ID the writer reports is found, unchanged."""
    MapWriter(path, DAY).close()  # schema exists before the reader opens
    reader_script = textwrap.dedent("""
        import sys, uuid
        from pathlib import Path
        from sendpost_agent.queuemap import MapReader
        reader = MapReader(Path(sys.argv[1]))
        seen = 0
        for line in sys.stdin:
            qid = line.strip()
            entry = reader.get(qid)
            expected = str(uuid.UUID(int=int(qid[1:]) + 1))
            if entry is None or entry.uuid != expected:
                print("MISMATCH", qid, entry, flush=True)
                sys.exit(1)
            seen += 1
        print("OK", seen)
    """)
    writer = start_writer(path, 3000)
    reader = subprocess.run(
        [sys.executable, "-c", reader_script, str(path)],
        stdin=writer.stdout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert writer.wait(timeout=60) == 0
    assert reader.returncode == 0, reader.stdout + reader.stderr
    assert reader.stdout.strip() == "OK 3000"


@pytest.mark.integration
def test_kill_9_of_the_writer_leaves_a_consistent_map(path: Path) -> None:
    for _round in range(3):
        writer = start_writer(path, 1_000_000)
        assert writer.stdout is not None
        acknowledged = [writer.stdout.readline().strip() for _ in range(500)]
        time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        check = sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0]
        assert check == "ok"
        reader = MapReader(path)
        assert all(reader.get(qid) is not None for qid in acknowledged)
        reader.close()


@pytest.mark.unit
def test_a_group_of_rows_is_written_whole_and_in_order(path: Path) -> None:
    """More rows than one INSERT takes: all there, numbered in the order given (logwatch
    reads rows in that order), a reused queue ID's later row winning."""
    writer = MapWriter(path, DAY)
    ids = [f"G{i:05d}" for i in range(2 * ROWS_PER_INSERT + 7)]
    writer.put_many([row(q, U1, HeaderState.PRESENT, now=7) for q in ids])
    writer.put_many([row(ids[0], U1, HeaderState.PRESENT), row(ids[0], U2, HeaderState.PRESENT)])
    reader = MapReader(path)
    scanned = [queue_id for _, queue_id, _ in reader.scan(0, 10_000)]
    assert scanned == [*ids[1:], ids[0]]
    assert reader.get(ids[0]).uuid == str(U2)  # type: ignore[union-attr]
    reader.close()
    writer.close()


@pytest.mark.unit
def test_a_bad_row_in_a_large_group_leaves_no_transaction_open(path: Path) -> None:
    """A group of more than one INSERT is one transaction; a row Python cannot bind (an
    integer too large for SQLite) ends it, rolled back: the lock is not kept and the next
    put is committed, as another process sees."""
    writer = MapWriter(path, DAY)
    rows = [row(f"L{i:04d}", U1, HeaderState.PRESENT, now=7) for i in range(ROWS_PER_INSERT + 5)]
    rows[ROWS_PER_INSERT + 2] = ("HUGE", None, int(HeaderState.MISSING), 2**63, None)
    with pytest.raises(OverflowError):
        writer.put_many(rows)
    writer.put("AFTER", U2, HeaderState.PRESENT)
    reader = MapReader(path)
    assert reader.get("AFTER") is not None
    assert reader.get("L0000") is None  # all or none: the group's other rows are not there
    reader.close()
    writer.close()


@pytest.mark.unit
def test_a_malformed_row_raises_its_own_error(path: Path) -> None:
    """A programming error (a row of the wrong shape) is raised as itself, named in the
    log, not hidden behind an AttributeError of the busy check."""
    writer = MapWriter(path, DAY)
    with pytest.raises(sqlite3.ProgrammingError):
        writer.put_many([("M1", None, int(HeaderState.MISSING), 0)])  # type: ignore[list-item]
    writer.close()


@pytest.mark.unit
def test_get_many_answers_like_get_for_many_ids(path: Path) -> None:
    writer = MapWriter(path, DAY)
    for i in range(1200):  # more than one IN (...) chunk
        writer.put(f"M{i:05d}", uuid.UUID(int=i + 1), HeaderState.PRESENT, now=7)
    writer.put("NOHDR", None, HeaderState.MISSING, now=7)
    reader = MapReader(path)
    wanted = [f"M{i:05d}" for i in range(0, 1200, 3)] + ["NOHDR", "ABSENT"]
    rows = reader.get_many(wanted)
    assert rows == {q: reader.get(q) for q in wanted if q != "ABSENT"}
    assert rows["NOHDR"] == Entry(None, HeaderState.MISSING, 7)
