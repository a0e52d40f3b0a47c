"""Reading the mail log: whole files, and the live log across rotations and restarts.

Every test does real file operations in tmp_path and checks the exact sequence of lines
delivered: nothing lost, nothing repeated. "While stopped" means: the Position of the last
batch goes through save_cursor/load_cursor into a new Follower, as the agent does.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from logwatch.cursor import Position, load_cursor, save_cursor
from logwatch.follow import Batch, Follower
from logwatch.lines import MAX_LINE
from logwatch.logfile import LogUnreadable, read_file_batches


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


class Writer:
    """Appends numbered, timestamped lines (distinct first bytes per file, like syslog)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0

    def write(self, count: int, path: Path | None = None) -> list[bytes]:
        lines = []
        for _ in range(count):
            self.n += 1
            lines.append(
                b"2026-11-23T18:35:21.%06d+00:00 host postfix/smtp[%d]: line %d"
                % (self.n, 1000 + self.n, self.n)
            )
        with open(path or self.path, "ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        return lines


async def take(follower: Follower, count: int, timeout: float = 5.0) -> tuple[list[bytes], Batch]:
    """At least ``count`` lines (then exactly ``count``: the caller asserts the sequence)."""
    lines: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(lines) < count:
            batch = await follower.next_batch()
            lines += batch.lines
    return lines, batch


async def quiet(follower: Follower, seconds: float = 0.3) -> None:
    """Nothing more arrives (no repeated line)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            batch = await follower.next_batch()
            pytest.fail(f"unexpected lines {batch.lines[:3]}")


def stop(follower: Follower, end: Position, cursor: Path) -> None:
    """Stops the follower after persisting ``end``, as the agent does."""
    save_cursor(cursor, end, {})
    follower.close()


def resume(log: Path, cursor: Path) -> Follower:
    """A new follower from the cursor file, as the agent does when it starts."""
    loaded = load_cursor(cursor)
    assert loaded is not None
    return Follower(log, loaded[0])


def gzip_file(path: Path) -> Path:
    """What gzip(1) does: path.gz with the same mtime, then the original removed."""
    gz = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    st = path.stat()
    os.utime(gz, ns=(st.st_atime_ns, st.st_mtime_ns))
    path.unlink()
    return gz


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def set_age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    (tmp_path / "log").mkdir()
    return tmp_path / "log" / "mail.log"


@pytest.fixture
def cursor(tmp_path: Path) -> Path:
    return tmp_path / "state" / "cursor"


# -- read_file_batches -------------------------------------------------------------------


@pytest.mark.unit
def test_read_file_batches_from_an_offset_with_an_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_bytes(b"one\ntwo\nthree\nfour")
    assert [line for b in read_file_batches(path) for line in b] == [
        b"one",
        b"two",
        b"three",
        b"four",
    ]
    assert [line for b in read_file_batches(path, 8) for line in b] == [b"three", b"four"]


@pytest.mark.unit
def test_read_file_batches_tells_gzip_by_magic_not_name_and_reads_in_blocks(tmp_path: Path) -> None:
    lines = [
        b"2026-11-23T18:35:21 host postfix/smtp[1]: line %d \xff\x00" % i for i in range(100_000)
    ]
    path = tmp_path / "mail.log.1"  # no .gz suffix
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    batches = list(read_file_batches(path))
    assert [line for b in batches for line in b] == lines
    assert len(batches) <= len(lines) // 1000  # thousands of lines per batch, not a few
    offset = sum(len(line) + 1 for line in lines[:10])
    assert next(read_file_batches(path, offset))[0] == lines[10]


@pytest.mark.unit
def test_read_file_batches_cuts_long_lines(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_bytes(b"a\n" + b"x" * (3 * MAX_LINE) + b"\nb\n" + b"y" * (MAX_LINE + 1))
    got = [line for b in read_file_batches(path) for line in b]
    assert got == [b"a", b"x" * MAX_LINE, b"b", b"y" * MAX_LINE]


@pytest.mark.unit
def test_read_file_batches_reports_corrupt_gzip_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "mail.log.1.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"line\n" * 100_000)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LogUnreadable, match=r"mail\.log\.1\.gz: corrupt or truncated gzip"):
        list(read_file_batches(path))
    with pytest.raises(LogUnreadable, match="No such file"):
        list(read_file_batches(tmp_path / "nope"))


# -- following: start, lines ------------------------------------------------------------


@pytest.mark.integration
def test_a_fresh_start_skips_history_but_not_the_line_being_written(log: Path) -> None:
    w = Writer(log)
    w.write(3)
    with open(log, "ab") as f:
        f.write(b"half a ")

    async def main() -> None:
        async with Follower(log) as f:
            await quiet(f, 0.1)
            with open(log, "ab") as fh:
                fh.write(b"line\n")
            new = w.write(2)
            assert (await take(f, 3))[0] == [b"half a line", *new]
            await quiet(f)

    run(main())


@pytest.mark.integration
def test_from_beginning_reads_the_whole_current_log(log: Path) -> None:
    w = Writer(log)
    old = w.write(3)

    async def main() -> None:
        async with Follower(log, from_beginning=True) as f:
            assert (await take(f, 3))[0] == old
            await quiet(f)

    run(main())


@pytest.mark.integration
def test_partial_lines_wait_for_their_end_and_bytes_pass_through(log: Path) -> None:
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            with open(log, "ab", buffering=0) as fh:
                fh.write(b"first \xff\xfe inval")
                await quiet(f, 0.2)
                fh.write(b"id utf-8 \x00 nul\nsecond")
                lines, batch = await take(f, 1)
                assert lines == [b"first \xff\xfe invalid utf-8 \x00 nul"]
                assert batch.end.offset == len(lines[0]) + 1
                await quiet(f, 0.2)
                fh.write(b"\n\n")
                assert (await take(f, 2))[0] == [b"second", b""]
            assert f.lines_read == 3 and f.bytes_read == log.stat().st_size
            assert f.lag_bytes() == 0

    run(main())


@pytest.mark.integration
def test_a_5mb_line_is_cut_to_1mib_and_reading_goes_on(log: Path) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            before = w.write(1)
            with open(log, "ab") as fh:
                fh.write(b"L" * (5 << 20) + b"\n")
            after = w.write(2)
            lines, batch = await take(f, 4)
            assert lines == [*before, b"L" * MAX_LINE, *after]
            assert f.lines_cut == 1
            assert batch.end.offset == log.stat().st_size

    run(main())


@pytest.mark.integration
def test_a_log_that_does_not_exist_yet_is_read_from_its_start(log: Path) -> None:
    w = Writer(log)

    async def main() -> None:
        async with Follower(log) as f:
            await quiet(f, 0.2)
            first = w.write(3)
            assert (await take(f, 3))[0] == first
            await quiet(f)

    run(main())


@pytest.mark.integration
def test_an_unreadable_log_raises_and_a_later_call_retries(log: Path) -> None:
    log.mkdir()  # unreadable as a log whatever our uid (tests may run as root)
    w = Writer(log)

    async def main() -> None:
        async with Follower(log, from_beginning=True) as f:
            with pytest.raises(LogUnreadable, match="not a regular file"):
                await f.next_batch()
            log.rmdir()
            lines = w.write(2)
            assert (await take(f, 2))[0] == lines

    run(main())


@pytest.mark.integration
def test_latency_is_short_and_an_idle_follower_sleeps(log: Path) -> None:
    w = Writer(log)
    w.write(1)

    async def main() -> None:
        async with Follower(log, safety_interval=5.0) as f:
            await quiet(f, 0.1)
            for _ in range(3):
                t0 = time.monotonic()
                line = w.write(1)
                assert (await take(f, 1))[0] == line
                assert time.monotonic() - t0 < 2.0  # typically a millisecond
            await quiet(f, 0.1)  # absorbs the event of the last write, read before it came
            wakeups = f.wakeups
            await quiet(f, 2.0)
            assert f.wakeups - wakeups <= 1  # the one call that went to sleep, no polling

    run(main())


@pytest.mark.integration
def test_without_inotify_it_polls(log: Path) -> None:
    w = Writer(log)
    w.write(1)

    async def main() -> None:
        async with Follower(log, use_inotify=False, poll_interval=0.05) as f:
            await quiet(f, 0.1)
            lines = w.write(2)
            assert (await take(f, 2))[0] == lines
            wakeups = f.wakeups
            await quiet(f, 0.5)
            assert 5 <= f.wakeups - wakeups <= 15

    run(main())


# -- rotation and truncation while running ------------------------------------------------


@pytest.mark.integration
def test_rename_and_create_while_running(log: Path) -> None:
    """logrotate ``create``: the writer stays on the old file until HUP."""
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(3)
            assert (await take(f, 3))[0] == a
            log.rename(log.with_name("mail.log.1"))
            log.write_bytes(b"")  # logrotate creates the new, empty file
            b = w.write(2, log.with_name("mail.log.1"))  # before HUP, to the old file
            assert (await take(f, 2))[0] == b
            with open(log.with_name("mail.log.1"), "ab") as fh:
                fh.write(b"unterminated last line")  # the old file ends mid-line
            c = w.write(4)  # after HUP
            lines, batch = await take(f, 5)
            assert lines == [b"unterminated last line", *c]
            assert batch.end.offset == log.stat().st_size
            assert batch.end.file.inode == log.stat().st_ino
            await quiet(f)
            assert f.rotations == 1 and f.truncations == 0

    run(main())


@pytest.mark.integration
def test_copytruncate_while_running_reads_the_lines_before_truncation_from_the_copy(
    log: Path,
) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(3)
            assert (await take(f, 3))[0] == a
            b = w.write(2)  # not read yet: the follower does not run until the next await
            shutil.copyfile(log, log.with_name("mail.log.1"))
            os.truncate(log, 0)
            c = w.write(3)
            assert (await take(f, 5))[0] == b + c
            await quiet(f)
            assert f.truncations == 1 and f.rotations == 0

    run(main())


@pytest.mark.integration
def test_plain_truncation_while_running_starts_again_at_zero(log: Path) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(5)
            assert (await take(f, 5))[0] == a
            os.truncate(log, 0)
            await quiet(f, 0.2)
            b = w.write(20)  # grows past the old offset before we look
            assert (await take(f, 20))[0] == b
            await quiet(f)
            assert f.truncations == 1

    run(main())


@pytest.mark.integration
def test_a_file_overwritten_in_place_with_more_data_is_a_new_file(log: Path) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(2)
            assert (await take(f, 2))[0] == a
            inode = log.stat().st_ino
            log.write_bytes(b"")  # O_TRUNC: same inode, and immediately more data than before
            b = w.write(10)
            assert log.stat().st_ino == inode
            assert (await take(f, 10))[0] == b
            await quiet(f)
            assert f.truncations == 1

    run(main())


@pytest.mark.integration
def test_postfix_logrotate_while_running(log: Path) -> None:
    """Rename to .YYYYMMDD-HHMMSS, gzip it; the new log appears at the next write."""
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(3)
            assert (await take(f, 3))[0] == a
            with open(log, "ab") as writer:  # the writer's open file
                rotated = log.with_name("mail.log.20261123-201045")
                log.rename(rotated)
                writer.write(b"tail written after the rename\n")
            gzip_file(rotated)  # our open fd still reads the unlinked file
            assert (await take(f, 1))[0] == [b"tail written after the rename"]
            await quiet(f, 0.1)
            c = w.write(3)  # the next write creates mail.log
            lines, batch = await take(f, 3)
            assert lines == c
            assert batch.end.file.inode == log.stat().st_ino
            await quiet(f)
            assert f.rotations == 1

    run(main())


# -- rotation and truncation while stopped ------------------------------------------------


def rename_create(log: Path) -> None:
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"")


def copytruncate(log: Path) -> None:
    shutil.copyfile(log, log.with_name("mail.log.1"))
    os.truncate(log, 0)


def copytruncate_compressed(log: Path) -> None:
    copytruncate(log)
    gzip_file(log.with_name("mail.log.1"))


def postfix_logrotate(log: Path) -> None:
    gzip_file(log.rename(log.with_name("mail.log.20261123-201045")))


@pytest.mark.integration
@pytest.mark.parametrize(
    "rotate", [rename_create, copytruncate, copytruncate_compressed, postfix_logrotate]
)
def test_rotation_while_stopped(
    log: Path, cursor: Path, rotate: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        f = Follower(log)
        a = w.write(3)
        lines, batch = await take(f, 3)
        assert lines == a
        stop(f, batch.end, cursor)
        b = w.write(2)  # logged while we were stopped, before the rotation
        rotate(log)
        c = w.write(3)
        async with resume(log, cursor) as f:
            assert (await take(f, 5))[0] == b + c
            await quiet(f)

    with caplog.at_level(logging.INFO, "logwatch.follow"):
        run(main())
    assert "rotated while we were stopped: finishing" in caplog.text


@pytest.mark.integration
@pytest.mark.parametrize("how", ["truncate", "overwrite in place"])
def test_truncation_while_stopped_reads_the_log_from_its_start(
    log: Path, cursor: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        f = Follower(log)
        a = w.write(3)
        lines, batch = await take(f, 3)
        assert lines == a
        stop(f, batch.end, cursor)
        inode = log.stat().st_ino
        if how == "truncate":
            os.truncate(log, 0)
            b = w.write(1)  # shorter than before
        else:
            log.write_bytes(b"")
            b = w.write(10)  # longer than before, same inode
        assert log.stat().st_ino == inode
        async with resume(log, cursor) as f:
            assert (await take(f, len(b)))[0] == b
            await quiet(f)

    with caplog.at_level(logging.WARNING, "logwatch.follow"):
        run(main())
    assert f"cannot find {log}" in caplog.text and "may have been lost" in caplog.text


@pytest.mark.integration
@pytest.mark.parametrize("create", [True, False])
def test_a_writer_still_on_the_rotated_file_after_a_restart_is_followed(
    log: Path, cursor: Path, create: bool
) -> None:
    """Rotated while stopped, but the writer has not reopened (no HUP yet)."""
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        f = Follower(log)
        w.write(2)
        _, batch = await take(f, 2)
        stop(f, batch.end, cursor)
        rotated = log.rename(log.with_name("mail.log.1"))
        if create:
            log.write_bytes(b"")
        b = w.write(2, rotated)
        async with resume(log, cursor) as f:
            assert (await take(f, 2))[0] == b
            c = w.write(2, rotated)  # still the old file
            assert (await take(f, 2))[0] == c
            await quiet(f, 0.1)
            d = w.write(2)  # reopened
            assert (await take(f, 2))[0] == d
            await quiet(f)
            assert f.rotations == 1

    run(main())


@pytest.mark.integration
def test_restart_without_rotation_resumes_exactly(log: Path, cursor: Path) -> None:
    w = Writer(log)
    w.write(5)

    async def main() -> None:
        f = Follower(log, from_beginning=True)
        _, batch = await take(f, 5)
        with open(log, "ab") as fh:
            fh.write(b"partial")  # not consumed: the position stays before it
        await quiet(f, 0.1)
        stop(f, batch.end, cursor)
        with open(log, "ab") as fh:
            fh.write(b" line\n")
        b = w.write(2)
        async with resume(log, cursor) as f:
            assert (await take(f, 3))[0] == [b"partial line", *b]
            await quiet(f)

    run(main())


@pytest.mark.integration
def test_several_rotations_while_stopped(log: Path, cursor: Path) -> None:
    """Stopped inside what is now mail.log.3.gz; .2.gz, .1 and the live log follow."""
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        f = Follower(log)
        a = w.write(3)
        lines, batch = await take(f, 3)
        assert lines == a
        stop(f, batch.end, cursor)
        expected = w.write(2)
        for age in (30, 20, 10):  # logrotate with rotate 3, compress, delaycompress
            if (older := log.with_name("mail.log.2.gz")).exists():
                older.rename(log.with_name("mail.log.3.gz"))
            if (older := log.with_name("mail.log.1")).exists():
                gzip_file(older).rename(log.with_name("mail.log.2.gz"))
            set_age(log, age)
            log.rename(log.with_name("mail.log.1"))
            log.write_bytes(b"")
            expected += w.write(2)
        log.with_name("mail.log.unrelated").write_bytes(b"not ours\n")
        log.with_name("mail.log.4.xz").write_bytes(b"\xfd7zXZ\x00 not readable\n")
        fds = open_fds()
        async with resume(log, cursor) as f:
            assert (await take(f, len(expected)))[0] == expected
            await quiet(f)
            assert f.rotations == 3
        assert open_fds() == fds  # every rotated file closed, and the inotify fd

    run(main())


@pytest.mark.integration
def test_a_lost_file_is_reported_and_the_unread_rotated_files_follow(
    log: Path, cursor: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = Writer(log)
    w.write(1, log.with_name("mail.log.3"))
    set_age(log.with_name("mail.log.3"), 3600)  # read long ago: not again
    log.write_bytes(b"")

    async def main() -> None:
        f = Follower(log)
        a = w.write(3)
        lines, batch = await take(f, 3)
        assert lines == a
        stop(f, batch.end, cursor)
        time.sleep(0.02)  # the rotated files below are written after the cursor was saved
        log.rename(log.with_name("mail.log.2"))
        log.with_name("mail.log.2").unlink()  # deleted: lines after our offset are lost
        b = w.write(2, log.with_name("mail.log.1"))
        c = w.write(2)
        async with resume(log, cursor) as f:
            assert (await take(f, 4))[0] == b + c
            await quiet(f)

    with caplog.at_level(logging.WARNING, "logwatch.follow"):
        run(main())
    assert f"cannot find {log} (inode" in caplog.text
    assert f"Going on with {log.with_name('mail.log.1')}, then the current log" in caplog.text


@pytest.mark.integration
def test_a_restart_while_the_log_is_rotated_away_waits_for_the_new_one(
    log: Path, cursor: Path
) -> None:
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        f = Follower(log)
        w.write(1)
        _, batch = await take(f, 1)
        stop(f, batch.end, cursor)
        b = w.write(2)
        postfix_logrotate(log)  # no mail.log until the next write
        async with resume(log, cursor) as f:
            assert (await take(f, 2))[0] == b
            await quiet(f, 0.2)
            c = w.write(2)
            assert (await take(f, 2))[0] == c
            await quiet(f)

    run(main())


# -- several rotations while reading is paused ---------------------------------------------


def rotate_again(log: Path, rotate: Callable[[Path], None], keep: int) -> None:
    """logrotate with ``rotate keep``: .1 -> .2 ... (the oldest goes, also .gz), then ``rotate``."""
    for n in range(keep, 0, -1):
        for older in log.parent.glob(f"mail.log.{n}*"):
            if n == keep:
                older.unlink()
            else:
                older.rename(log.with_name(older.name.replace(f".{n}", f".{n + 1}", 1)))
    rotate(log)


@pytest.mark.integration
@pytest.mark.parametrize("rotate", [rename_create, copytruncate, copytruncate_compressed])
def test_several_rotations_while_reading_is_paused(
    log: Path, rotate: Callable[[Path], None]
) -> None:
    """Reading pauses (the WAL is full during an API outage) while the log is rotated 3 times."""
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(3)
            assert (await take(f, 3))[0] == a
            expected = w.write(2)  # not read before the rotations
            for _ in range(3):
                rotate_again(log, rotate, keep=4)
                expected += w.write(2)
            assert (await take(f, len(expected)))[0] == expected
            await quiet(f)

    run(main())


@pytest.mark.integration
@pytest.mark.parametrize("rotate", [rename_create, copytruncate])
def test_a_rotated_file_deleted_before_it_was_read_is_reported_and_the_newer_ones_follow(
    log: Path, rotate: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    """``rotate 1``: three rotations while reading is paused keep only the last rotated file."""
    w = Writer(log)
    log.write_bytes(b"")

    async def main() -> None:
        async with Follower(log) as f:
            a = w.write(3)
            assert (await take(f, 3))[0] == a
            b = w.write(2)
            written = []
            for _ in range(3):
                time.sleep(0.02)  # distinct mtimes: what comes later is newer
                rotate_again(log, rotate, keep=1)
                written.append(w.write(2))
            # The old file stays open with create, so b is read; with copytruncate it is
            # lost with the first copy. The second file is lost either way.
            expected = (b if rotate is rename_create else []) + written[1] + written[2]
            assert (await take(f, len(expected)))[0] == expected
            await quiet(f)

    with caplog.at_level(logging.WARNING, "logwatch.follow"):
        run(main())
    assert "lost" in caplog.text
    assert f"Going on with {log.with_name('mail.log.1')}, then the" in caplog.text


@pytest.mark.integration
def test_lag_counts_what_is_not_consumed_yet(log: Path) -> None:
    w = Writer(log)
    w.write(10)

    async def main() -> None:
        async with Follower(log, from_beginning=True) as f:
            assert f.lag_bytes() == log.stat().st_size
            _, batch = await take(f, 10)
            assert f.lag_bytes() == 0
            w.write(5)
            assert f.lag_bytes() == log.stat().st_size - batch.end.offset > 0

    run(main())


@pytest.mark.integration
def test_several_event_loops_can_drive_one_follower(log: Path) -> None:
    w = Writer(log)
    log.write_bytes(b"")
    f = Follower(log)

    async def step(count: int) -> list[bytes]:
        return (await take(f, count))[0]

    def once(make: Callable[[], Awaitable[list[bytes]]]) -> list[bytes]:
        async def main() -> list[bytes]:
            return await make()

        return asyncio.run(main())

    a = w.write(2)
    assert once(lambda: step(2)) == a
    b = w.write(2)
    assert once(lambda: step(2)) == b
    f.close()


@pytest.mark.integration
def test_a_gathered_batch_says_when_its_lines_were_noticed_not_when_they_were_read(
    log: Path,
) -> None:
    """Gathering reads a quiet log's lines up to ``gather`` after a write woke the
    follower; the batch carries the wake-up, which the shipper's window counts from."""
    w = Writer(log)
    w.write(1)

    async def main() -> None:
        async with Follower(log, from_beginning=True, gather=4.0) as f:
            await take(f, 1)  # caught up: the next read comes 4 s after this one
            written = time.monotonic()
            lines = w.write(1)
            got, batch = await take(f, 1, timeout=10.0)
            read = time.monotonic()
            assert got == lines
            # noticed at the write's wake-up, not at the read most of the gather later
            assert written <= batch.noticed < read - 2.0, (written, batch.noticed, read)

    run(main())


@pytest.mark.integration
def test_a_shorter_gather_applies_to_the_read_already_waiting(log: Path) -> None:
    """logwatch shortens the gather when a burst starts: the next read must not wait
    out the long gather that was set before it."""
    w = Writer(log)
    w.write(1)

    async def main() -> None:
        async with Follower(log, from_beginning=True, gather=60.0) as f:
            await take(f, 1)  # caught up: with gather 60 the next read would be a minute away
            f.gather = 0.1
            lines = w.write(1)
            assert (await take(f, 1, timeout=10.0))[0] == lines

    run(main())
