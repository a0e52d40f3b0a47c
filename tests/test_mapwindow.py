"""The read-ahead window over the map: same answers as lookups, fewer of them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from logwatch import mapwindow
from logwatch.mapwindow import MapWindow
from sendpost_agent.queuemap import Entry, HeaderState, MapReader, MapWriter

pytestmark = pytest.mark.unit

T0 = 1_795_392_000  # 2026-11-23 00:00:00 UTC


class CountingReader(MapReader):
    """The real reader, counting how often each query kind runs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.looked_up: list[str] = []
        self.scans = 0
        self.rows_read = 0

    def get_many(self, queue_ids: list[str]) -> dict[str, Entry]:
        self.looked_up += queue_ids
        return super().get_many(queue_ids)

    def scan(self, start_id: int, limit: int) -> list[tuple[int, str, Entry]]:
        self.scans += 1
        rows = super().scan(start_id, limit)
        self.rows_read += len(rows)
        return rows


@pytest.fixture
def reader(tmp_path: Path) -> CountingReader:
    path = tmp_path / "queuemap.sqlite3"
    writer = MapWriter(path, 7 * 86400.0)
    for n in range(3000):  # one message a second, as the milter would have written them
        header = HeaderState.PRESENT if n % 7 else HeaderState.MISSING
        writer.put(f"Q{n:05d}", uuid.UUID(int=n + 1) if n % 7 else None, header, now=T0 + n)
    writer.close()
    return CountingReader(path)


def qid(n: int) -> str:
    return f"Q{n:05d}"


def ask(window: MapWindow, reader: MapReader, batches: Iterable[tuple[int, list[str]]]) -> None:
    """Ask as a log read in batches would (log second, its queue IDs): each answer must be
    what a lookup gives."""
    direct = MapReader(reader.path)
    for second, wanted in batches:
        assert window.get_many(wanted, T0 + second) == direct.get_many(wanted)


def test_each_row_is_read_once_however_small_the_batches(
    reader: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live log comes a line at a time: rows read past its time wait, not read again."""
    monkeypatch.setattr(mapwindow, "SCAN_ROWS", 100)
    ask(MapWindow(reader, keep=60.0), reader, ((s, [qid(s)]) for s in range(3000)))
    assert reader.rows_read == 3000 and reader.looked_up == []


def test_answers_are_those_of_lookups_and_most_come_from_reading_ahead(
    reader: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mapwindow, "SCAN_ROWS", 100)
    window = MapWindow(reader, keep=60.0)
    # A batch of log lines every 10 s of log time; lines lag their message's receipt.
    ask(
        window,
        reader,
        ((s, [*map(qid, range(max(0, s - 20), s + 1)), "NOTHERE"]) for s in range(0, 3000, 10)),
    )
    # Only the first batch and the unknown ID were looked up; the rest was read in order.
    assert len(reader.looked_up) < 320 and reader.looked_up.count("NOTHERE") == 300
    assert reader.scans >= 30
    assert len(window) <= 60 + mapwindow.AHEAD + 1  # kept: `keep` seconds of rows


def test_rows_older_than_keep_are_looked_up_again(reader: CountingReader) -> None:
    window = MapWindow(reader, keep=60.0)
    assert window.get_many([qid(100)], T0 + 100) == {qid(100): reader.get(qid(100))}
    window.get_many([qid(1000)], T0 + 1000)
    reader.looked_up.clear()
    assert window.get_many([qid(100)], T0 + 1001) == {qid(100): reader.get(qid(100))}
    assert reader.looked_up == [qid(100)]  # forgotten by the window, still found


def test_a_window_far_behind_the_log_answers_by_lookup_until_it_catches_up(
    reader: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading stops after MAX_ROWS_PER_CALL: the window's rows may then be stale (a
    reused queue ID's newer row not read yet), so the call's IDs are all looked up."""
    monkeypatch.setattr(mapwindow, "SCAN_ROWS", 100)
    monkeypatch.setattr(mapwindow, "MAX_ROWS_PER_CALL", 500)
    window = MapWindow(reader, keep=86400.0)
    wanted = [qid(0), qid(2999)]
    for calls in range(1, 7):
        reader.looked_up.clear()
        assert window.get_many(wanted, T0 + 3000) == reader.get_many(wanted)
        assert reader.scans == 5 * calls
        assert len(reader.looked_up) == 2 * 2  # by the window, and by the assertion
    reader.looked_up.clear()
    assert window.get_many(wanted, T0 + 3000) == reader.get_many(wanted)
    assert len(reader.looked_up) == 2  # caught up: only the assertion's own lookups


def test_a_retry_of_an_old_message_does_not_place_the_window_days_back(
    reader: CountingReader,
) -> None:
    window = MapWindow(reader, keep=60.0)
    window.get_many([qid(10), qid(2990)], T0 + 2995)
    assert reader.scans == 1  # from row 2990 on, not from row 10
    assert len(window) == 10


def test_a_reused_queue_id_gets_its_newer_row(tmp_path: Path) -> None:
    path = tmp_path / "queuemap.sqlite3"
    writer = MapWriter(path, 7 * 86400.0)
    for n in range(100):
        writer.put(qid(n), uuid.UUID(int=n + 1), HeaderState.PRESENT, now=T0 + n)
    window = MapWindow(MapReader(path), keep=60.0)
    assert window.get_many([qid(90)], T0 + 95)[qid(90)].uuid == str(uuid.UUID(int=91))
    writer.put(qid(90), uuid.UUID(int=999), HeaderState.PRESENT, now=T0 + 100)  # reused
    for n in range(101, 120):
        writer.put(qid(n), uuid.UUID(int=n + 1), HeaderState.PRESENT, now=T0 + n)
    writer.close()
    assert window.get_many([qid(90)], T0 + 101)[qid(90)].uuid == str(uuid.UUID(int=999))


def test_a_row_replaced_while_read_ahead_answers_for_the_lines_logged_before_the_newer(
    tmp_path: Path,
) -> None:
    """The one deliberate difference from a lookup (module docstring): each line gets
    the message that had its queue ID when it was logged."""
    path = tmp_path / "queuemap.sqlite3"
    writer = MapWriter(path, 7 * 86400.0)
    for n in range(100):
        writer.put(qid(n), uuid.UUID(int=n + 1), HeaderState.PRESENT, now=T0 + n)
    window = MapWindow(MapReader(path), keep=60.0)
    window.get_many([qid(50)], T0 + 50)  # reads ahead: row 70 waits for its time
    writer.put(qid(70), uuid.UUID(int=999), HeaderState.PRESENT, now=T0 + 200)  # reused
    writer.close()
    assert window.get_many([qid(70)], T0 + 80)[qid(70)].uuid == str(uuid.UUID(int=71))
    assert window.get_many([qid(70)], T0 + 200)[qid(70)].uuid == str(uuid.UUID(int=999))


def test_a_call_limit_below_one_read_still_reads_ahead(
    reader: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mapwindow, "MAX_ROWS_PER_CALL", 500)  # below SCAN_ROWS (1000)
    window = MapWindow(reader, keep=60.0)
    ask(window, reader, ((s, [qid(s)]) for s in range(0, 100, 10)))
    assert len(window) > 0 and reader.looked_up == []


def test_an_emptied_map_restarting_its_numbering_places_the_window_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queuemap.sqlite3"
    writer = MapWriter(path, 7 * 86400.0)
    for n in range(50):
        writer.put(qid(n), uuid.UUID(int=n + 1), HeaderState.PRESENT, now=T0 + n)
    reader = CountingReader(path)
    window = MapWindow(reader, keep=60.0)
    window.get_many([qid(40)], T0 + 45)
    assert writer.prune(now=T0 + 10 * 86400.0) == 50  # no mail for the whole retention
    for n in range(5):
        writer.put(f"NEW{n}", uuid.UUID(int=500 + n), HeaderState.PRESENT, now=T0 + 100 + n)
    writer.close()
    assert window.get_many(["NEW0"], T0 + 101)["NEW0"].uuid == str(uuid.UUID(int=500))
    window.get_many(["NEW1"], T0 + 102)
    reader.looked_up.clear()
    assert window.get_many(["NEW3"], T0 + 103)["NEW3"].uuid == str(uuid.UUID(int=503))
    assert reader.looked_up == []  # read ahead again, from the new numbering


def test_the_window_never_holds_more_than_its_cap(
    reader: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of mail (here: a long keep) keeps only the newest MAX_KEPT rows."""
    monkeypatch.setattr(mapwindow, "SCAN_ROWS", 100)
    monkeypatch.setattr(mapwindow, "MAX_KEPT", 250)
    window = MapWindow(reader, keep=86400.0)
    for second in range(0, 3000, 100):
        wanted = [qid(second), qid(max(0, second - 400))]
        assert window.get_many(wanted, T0 + second) == reader.get_many(wanted)
        assert len(window) <= 250
