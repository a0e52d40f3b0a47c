"""The WAL on real files: seqs, reads, acks, reclaiming space, crashes and corruption."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from logwatch.wal import Wal, WalError

ROOT = Path(__file__).resolve().parents[1]


def ev(seq: int) -> bytes:
    """A ~300-byte event that says which seq it was appended as."""
    return (b'{"seq":%d,"pad":"' % seq).ljust(298, b"x") + b'"}'


def add(wal: Wal, n: int) -> int:
    first = wal.last_seq + 1
    return wal.append([ev(s) for s in range(first, first + n)])


def assert_holds_exactly_the_unacked(wal: Wal) -> None:
    got = wal.read(0, 10**9)
    assert [s for s, _ in got] == list(range(wal.acked_seq + 1, wal.last_seq + 1))
    assert all(e == ev(s) for s, e in got)
    assert wal.pending == len(got)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "pending.wal"


@pytest.mark.unit
def test_append_read_ack_round_trip(path: Path) -> None:
    wal = Wal(path)
    assert (wal.last_seq, wal.acked_seq, wal.pending, wal.size_bytes) == (0, 0, 0, 0)
    assert wal.read(0, 10) == []
    assert wal.append([b'{"a":1}', b'{"b":2}', b"{}"]) == 3
    assert wal.append([b'{"c":3}']) == 4
    assert wal.append([]) == 4
    assert wal.read(0, 10) == [(1, b'{"a":1}'), (2, b'{"b":2}'), (3, b"{}"), (4, b'{"c":3}')]
    assert wal.pending == 4
    wal.ack(2)
    assert wal.read(0, 10) == [(3, b"{}"), (4, b'{"c":3}')]
    assert wal.pending == 2
    wal.ack(1)  # old news: no-op
    assert wal.acked_seq == 2
    with pytest.raises(ValueError, match="beyond"):
        wal.ack(5)
    size = wal.size_bytes
    with pytest.raises(ValueError, match="newline"):
        wal.append([b'{"d":\n4}'])
    assert wal.size_bytes == size == path.stat().st_size
    wal.ack(4)
    assert (wal.pending, wal.size_bytes, path.stat().st_size) == (0, 0, 0)
    assert wal.read(0, 10) == []
    wal.close()
    wal.close()


@pytest.mark.unit
def test_read_starts_and_stops_in_the_middle_of_records(path: Path) -> None:
    wal = Wal(path)
    for _ in range(3):
        add(wal, 5)  # records 1-5, 6-10, 11-15
    seqs = lambda after, n: [s for s, _ in wal.read(after, n)]  # noqa: E731
    assert seqs(2, 3) == [3, 4, 5]
    assert seqs(3, 4) == [4, 5, 6, 7]
    assert seqs(7, 100) == list(range(8, 16))
    assert seqs(0, 0) == []
    assert seqs(15, 10) == seqs(99, 10) == []
    wal.ack(6)
    assert seqs(0, 2) == [7, 8]  # never below the ack, whatever after_seq says
    assert seqs(9, 1) == [10]
    assert all(e == ev(s) for s, e in wal.read(0, 100))
    wal.close()


@pytest.mark.unit
def test_acks_and_seqs_survive_a_reopen(path: Path) -> None:
    wal = Wal(path)
    add(wal, 10)
    wal.ack(4)
    wal.close()
    assert json.loads(path.with_name("pending.wal.ack").read_text())["acked_seq"] == 4
    wal = Wal(path)
    assert (wal.last_seq, wal.acked_seq, wal.torn_records) == (10, 4, 0)
    assert_holds_exactly_the_unacked(wal)
    assert add(wal, 1) == 11
    wal.close()


@pytest.mark.unit
def test_seq_keeps_counting_across_truncation_and_compaction(path: Path) -> None:
    wal = Wal(path, cap_bytes=40_000)
    add(wal, 10)
    wal.ack(10)
    assert wal.size_bytes == 0
    wal.close()
    wal = Wal(path, cap_bytes=40_000)
    assert (wal.last_seq, wal.acked_seq) == (10, 10)  # from the ack file: the WAL is empty
    assert add(wal, 5) == 15
    for _ in range(10):
        add(wal, 10)
    wal.ack(110)  # acked prefix ~30 kB, tail one record: compacted
    assert 0 < wal.size_bytes < 4000
    wal.close()
    wal = Wal(path, cap_bytes=40_000)
    assert (wal.last_seq, wal.acked_seq) == (115, 110)
    assert_holds_exactly_the_unacked(wal)
    assert add(wal, 1) == 116
    wal.close()


@pytest.mark.unit
def test_compaction_keeps_unacked_events_and_frees_space(path: Path) -> None:
    wal = Wal(path, cap_bytes=100_000)  # compacts once the acked prefix is >= 25 kB and the tail
    for _ in range(20):
        add(wal, 10)
    record = wal.size_bytes // 20
    wal.ack(50)
    assert wal.size_bytes == 20 * record  # 15 kB acked: not worth a copy yet
    wal.ack(155)  # middle of the record 151-160, which must stay
    assert wal.size_bytes == path.stat().st_size == 5 * record
    assert_holds_exactly_the_unacked(wal)
    assert sorted(p.name for p in path.parent.iterdir()) == ["pending.wal", "pending.wal.ack"]
    add(wal, 10)
    wal.close()
    wal = Wal(path, cap_bytes=100_000)
    assert (wal.acked_seq, wal.last_seq, wal.torn_records) == (155, 210, 0)
    assert_holds_exactly_the_unacked(wal)
    wal.close()


@pytest.mark.unit
def test_delivered_events_after_keep_after_stay_until_it_moves(path: Path) -> None:
    """The agent's cursor counts events up to its wal_seq: those after it stay readable
    after a crash, delivered or not, so that the re-read can recognise them."""
    wal = Wal(path, keep_after=3)
    add(wal, 5)
    add(wal, 5)
    wal.ack(10)
    assert wal.pending == 0 and wal.read(0, 100) == []
    assert wal.kept(3) == [ev(s) for s in range(4, 11)]
    wal.close()  # as a crash would leave it: the cursor still at seq 3
    wal = Wal(path, keep_after=3)
    assert (wal.last_seq, wal.acked_seq) == (10, 10)
    assert wal.kept(3) == [ev(s) for s in range(4, 11)]
    assert wal.kept(7) == [ev(s) for s in range(8, 11)]
    wal.keep_after(10)  # the next cursor counts them all: the WAL empties, as without it
    assert wal.size_bytes == path.stat().st_size == 0
    assert add(wal, 1) == 11
    wal.close()
    wal = Wal(path, keep_after=10)
    assert wal.kept(10) == [ev(11)] and wal.read(0, 100) == [(11, ev(11))]
    wal.close()


@pytest.mark.unit
def test_compaction_keeps_the_kept_events_too(path: Path) -> None:
    wal = Wal(path, cap_bytes=100_000, keep_after=0)
    for _ in range(20):
        add(wal, 10)
    record = wal.size_bytes // 20
    wal.ack(200)
    assert wal.size_bytes == 20 * record  # all acked, all kept
    wal.keep_after(155)  # middle of the record 151-160, which must stay
    assert wal.size_bytes == path.stat().st_size == 5 * record
    assert wal.kept(155) == [ev(s) for s in range(156, 201)]
    assert (wal.pending, wal.last_seq) == (0, 200)
    wal.close()


@pytest.mark.unit
def test_an_empty_wal_keeps_the_events_delivered_after_keep_after(path: Path) -> None:
    """A clean stop leaves the WAL empty and its last seq in the ack file; the events
    delivered after the cursor's seq must stay readable all the same."""
    wal = Wal(path, keep_after=0)
    add(wal, 5)
    wal.ack(5)
    wal.keep_after(5)  # the cursor saved at the stop counts every event: the WAL empties
    wal.close()
    assert path.stat().st_size == 0
    wal = Wal(path, keep_after=5)
    add(wal, 3)
    wal.ack(8)
    assert wal.kept(5) == [ev(s) for s in range(6, 9)]
    wal.close()  # as a crash before the next cursor save leaves it
    wal = Wal(path, keep_after=5)
    assert wal.kept(5) == [ev(s) for s in range(6, 9)] and wal.pending == 0
    wal.close()


@pytest.mark.unit
def test_kept_events_cut_off_from_their_acked_seqs_are_dropped(path: Path) -> None:
    """A power loss lost appends that were acked already (the ack file is synced, the WAL
    only at cursor saves): the records left cannot be continued, as the next seq follows
    the acked one. They are dropped, kept or not (the re-read then sends them again)."""
    wal = Wal(path, keep_after=0)
    add(wal, 5)
    first_record = wal.size_bytes
    add(wal, 5)
    wal.ack(10)
    wal.close()
    with path.open("r+b") as f:
        f.truncate(first_record)
    wal = Wal(path, keep_after=0)
    assert (wal.last_seq, wal.acked_seq, wal.size_bytes, wal.kept(0)) == (10, 10, 0, [])
    assert add(wal, 1) == 11
    wal.close()
    wal = Wal(path, keep_after=0)
    assert (wal.last_seq, wal.torn_records, wal.read(0, 100)) == (11, 0, [(11, ev(11))])
    wal.close()


@pytest.mark.unit
def test_full_at_the_cap_and_appends_still_accepted(path: Path) -> None:
    wal = Wal(path, cap_bytes=10_000)
    while not wal.full():
        add(wal, 3)
    assert wal.size_bytes >= 10_000
    size = wal.size_bytes
    add(wal, 3)  # the caller decides; nothing is dropped
    assert wal.size_bytes > size and wal.full()
    assert_holds_exactly_the_unacked(wal)
    wal.ack(wal.last_seq)
    assert not wal.full()
    wal.close()


@pytest.mark.unit
@pytest.mark.parametrize("lost", [5, 300, 920])  # the last bytes of a 928-byte record
def test_a_torn_last_record_is_dropped(
    path: Path, lost: int, caplog: pytest.LogCaptureFixture
) -> None:
    wal = Wal(path)
    add(wal, 3)
    add(wal, 3)
    good = wal.size_bytes
    add(wal, 3)
    assert wal.size_bytes - good == 928  # 26-byte header, 3 x 300 + 2 newlines
    wal.close()
    with path.open("r+b") as f:
        f.truncate(good + 928 - lost)
    with caplog.at_level(logging.ERROR, logger="logwatch.wal"):
        wal = Wal(path)
    assert (wal.torn_records, wal.last_seq, wal.size_bytes) == (1, 6, good)
    assert path.stat().st_size == good
    assert str(path) in caplog.text and "truncated" in caplog.text
    assert_holds_exactly_the_unacked(wal)
    assert add(wal, 1) == 7  # 7-9 never reached the disk: their seqs are issued again
    wal.close()
    wal = Wal(path)
    assert wal.torn_records == 0
    assert_holds_exactly_the_unacked(wal)
    wal.close()


@pytest.mark.unit
def test_garbage_in_the_middle_ends_the_wal_there(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = Wal(path)
    offsets = []
    for _ in range(5):
        offsets.append(wal.size_bytes)
        add(wal, 10)
    wal.ack(5)
    wal.close()
    with path.open("r+b") as f:
        f.seek(offsets[2] + 100)
        byte = f.read(1)
        f.seek(offsets[2] + 100)
        f.write(bytes([byte[0] ^ 0x20]))
    with caplog.at_level(logging.ERROR, logger="logwatch.wal"):
        wal = Wal(path)
    assert (wal.torn_records, wal.acked_seq, wal.last_seq) == (1, 5, 20)
    assert wal.size_bytes == path.stat().st_size == offsets[2]
    assert f"{path}: the record at offset {offsets[2]} is corrupt" in caplog.text
    assert_holds_exactly_the_unacked(wal)
    wal.close()


@pytest.mark.unit
def test_acked_records_left_by_a_crash_are_skipped_and_reclaimed(path: Path) -> None:
    wal = Wal(path)
    add(wal, 10)
    wal.close()
    before = path.read_bytes()
    wal = Wal(path)
    wal.ack(10)
    wal.close()
    path.write_bytes(before)  # as if killed between persisting the ack and truncating
    path.with_name("pending.wal.tmp").write_bytes(b"half a compaction")
    path.with_name("pending.wal.ack.tmp").write_bytes(b'{"version": 1, "ack')
    wal = Wal(path)
    assert (wal.pending, wal.last_seq, wal.size_bytes, wal.read(0, 100)) == (0, 10, 0, [])
    assert sorted(p.name for p in path.parent.iterdir()) == ["pending.wal", "pending.wal.ack"]
    assert add(wal, 1) == 11
    wal.close()


@pytest.mark.unit
def test_a_failed_ack_write_changes_nothing_and_the_ack_can_be_retried(path: Path) -> None:
    """The shipper retries a failed ack: until it succeeds, the events must stay pending."""
    wal = Wal(path)
    add(wal, 10)
    wal.ack(3)
    ack_file = path.with_name("pending.wal.ack")
    ack_file.unlink()
    ack_file.mkdir()  # the new ack file, written in full, cannot be renamed onto it
    with pytest.raises(IsADirectoryError):
        wal.ack(8)
    assert wal.acked_seq == 3
    assert_holds_exactly_the_unacked(wal)
    ack_file.rmdir()
    wal.ack(8)
    assert_holds_exactly_the_unacked(wal)
    wal.close()
    wal = Wal(path)
    assert (wal.acked_seq, wal.last_seq) == (8, 10)
    wal.close()


@pytest.mark.unit
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"version": 1, "acked_seq": -3}',
        b'{"version": 7, "acked_seq": 3}',
        b"[]",
    ],
)
def test_a_corrupt_ack_file_says_which_file_and_what_to_do(path: Path, content: bytes) -> None:
    wal = Wal(path)
    add(wal, 10)
    wal.ack(3)
    wal.close()
    ack_file = path.with_name("pending.wal.ack")
    ack_file.write_bytes(content)
    with pytest.raises(WalError, match="corrupt") as err:
        Wal(path)
    assert str(ack_file) in str(err.value) and "delete it" in str(err.value)
    ack_file.unlink()  # the fix: everything still in the WAL is sent again
    wal = Wal(path)
    assert (wal.acked_seq, wal.last_seq) == (0, 10)
    assert_holds_exactly_the_unacked(wal)
    wal.close()


@pytest.mark.unit
def test_a_wal_of_another_format_version_is_left_alone(path: Path) -> None:
    wal = Wal(path)
    add(wal, 2)
    wal.close()
    data = bytearray(path.read_bytes())
    data[4] = 2  # version field of the first record
    path.write_bytes(bytes(data))
    with pytest.raises(WalError, match="format version 2"):
        Wal(path)
    assert path.read_bytes() == data


CHILD = r"""
import random, sys
from pathlib import Path
from logwatch.wal import Wal

def ev(seq):
    return (b'{"seq":%d,"pad":"' % seq).ljust(298, b"x") + b'"}'

rnd = random.Random(int(sys.argv[2]))
wal = Wal(Path(sys.argv[1]), cap_bytes=256 * 1024)
print("S", wal.last_seq, wal.acked_seq, flush=True)
while True:
    first = wal.last_seq + 1
    last = wal.append([ev(s) for s in range(first, first + rnd.randint(1, 40))])
    print("A", last, flush=True)
    r = rnd.random()
    if r < 0.3:
        seq = last if r < 0.05 else rnd.randint(wal.acked_seq, last)
        wal.ack(seq)
        print("K", seq, flush=True)
    elif r < 0.4:
        wal.sync()
"""


@pytest.mark.integration
def test_kill_9_at_random_moments_loses_nothing_and_resurrects_nothing(tmp_path: Path) -> None:
    """The child appends, acks (so truncates and compacts) and prints each seq once done."""
    path = tmp_path / "pending.wal"
    rnd = random.Random(20261123)
    last = acked = 0
    for round_ in range(40):
        out_path = tmp_path / f"child{round_}.out"
        with out_path.open("wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), str(round_)], cwd=ROOT, stdout=out
            )
        try:
            deadline = time.monotonic() + 10
            while out_path.stat().st_size == 0:
                assert child.poll() is None and time.monotonic() < deadline
                time.sleep(0.002)
            time.sleep(rnd.uniform(0.005, 0.12))
        finally:
            child.kill()
            child.wait()
        lines = [line.split() for line in out_path.read_bytes().split(b"\n")[:-1]]
        assert lines[0] == [b"S", b"%d" % last, b"%d" % acked]
        appended = [int(w[1]) for w in lines if w[0] == b"A"]
        acks = [int(w[1]) for w in lines if w[0] == b"K"]
        assert appended, "the child was killed before its first append"
        assert appended == sorted(set(appended)) and appended[0] > last

        wal = Wal(path, cap_bytes=256 * 1024)
        try:
            assert wal.torn_records <= 1  # only the append in progress can be torn
            assert wal.last_seq >= appended[-1]
            assert max(acks, default=acked) <= wal.acked_seq <= wal.last_seq
            assert_holds_exactly_the_unacked(wal)  # nothing lost, nothing acked comes back
            if round_ % 3 == 2:  # the next child starts from acks made here
                wal.ack(rnd.randint(wal.acked_seq, wal.last_seq))
            last, acked = wal.last_seq, wal.acked_seq
        finally:
            wal.close()
        assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.unit
def test_a_full_wal_opens_in_little_memory_and_moves_events_fast(path: Path) -> None:
    """100 kB index for 10 MB: payloads stay on disk; > 20,000 events/s with a wide margin."""
    n = 30_000
    batch = [ev(0)] * 100
    wal = Wal(path)
    started = time.perf_counter()
    for _ in range(n // 100):
        wal.append(batch)
    wal.sync()
    append_rate = n / (time.perf_counter() - started)
    wal.close()

    tracemalloc.start()
    try:
        wal = Wal(path)
        opened_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        started = time.perf_counter()
        seq = 0
        while got := wal.read(seq, 100):
            seq = got[-1][0]
        read_rate = n / (time.perf_counter() - started)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seq == n and wal.size_bytes > 9_000_000
    assert opened_peak < 3 * 1024 * 1024 and read_peak < 1024 * 1024
    assert append_rate > 50_000 and read_rate > 50_000
    wal.close()
