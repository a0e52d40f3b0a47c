"""Reading the mail log: whole files (``replay``) and the live log across rotations.

Lines are ``bytes`` without their ``\\n``, delivered in batches (one per block of up to
128 KiB read) and split with ``bytes.split``: nothing is decoded here, so invalid UTF-8
and NUL bytes pass through untouched. A line longer than ``MAX_LINE`` is cut to its first
``MAX_LINE`` bytes (and counted) so that memory stays bounded whatever the log holds.

``Follower`` never loses nor repeats a line as long as its caller persists ``Batch.end``
only after handling ``Batch.lines`` and restarts from the last persisted position:

* start: ``Follower(path, None)`` starts at the END of the current log as it is when the
  Follower is created (after its last complete line): a fresh install does not report
  history (if the log cannot be read then, the end is taken when it first can be).
  ``from_beginning=True`` starts at its first byte instead. A log that does not exist yet
  is read from its first byte once it appears.
* rotation while running: the old file stays open and is read to its very end (also its
  final unterminated line) before switching, and the switch happens only once the new
  file at ``log_path`` has data, i.e. once the writer has moved on (logrotate ``create``
  with a writer still on the old file until HUP, ``postfix logrotate`` that renames,
  gzips and lets the next write create the file). Rotated several times while we were
  not reading (the caller paused, or catching up): the rotated files newer than the old
  one are read between the two, as after a rotation while stopped (below). If the old
  file is no longer beside the log, files rotated after it may have been deleted too:
  a warning says so.
* truncation while running (``copytruncate``, ``: > mail.log``, a file overwritten in
  place): noticed by size or by the first bytes changing; the lines written between our
  last read and the truncation are read from the rotated copy, found beside the log by
  fingerprint (also once gzipped), then the newer rotated files (copied again while we
  were not reading); without a copy those lines are lost (warning), and reading goes on
  with the rotated files modified since we last saw the log intact.
* rotation while stopped: the position's file is looked up by fingerprint at ``log_path``
  then beside it (the log's name followed by ``.N``, ``-DATE`` or ``.DATE-TIME`` and
  maybe ``.gz``: other names and other compressions are ignored), finished from
  the offset, followed by the newer rotated files (by mtime) and the current log from
  its start. If it cannot be found (deleted, or truncated without a copy), a warning
  names it, and reading goes on with the rotated files modified after the cursor was
  saved (``Position.saved_at``), then the current log from its start: the files we never
  read, without replaying the ones we did. While the current log is missing or empty,
  the newest uncompressed rotated file is followed like the live log (the writer may
  not have reopened yet), until the new log gets data.

Wake-ups come from inotify (ctypes on libc): the log's directory for create/move/delete,
the file being read for modify, so an idle follower sleeps; a re-check every
``safety_interval`` seconds covers missed events; without inotify it polls every
``poll_interval``.

Read errors (permission denied, I/O error, not a regular file) raise ``LogUnreadable``
from ``next_batch`` without changing any state: calling ``next_batch`` again retries from
the same place, so the caller reports the error and retries when it sees fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gzip
import logging
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from logwatch.cursor import FINGERPRINT_BYTES, FileId, Position

__all__ = ["MAX_LINE", "Batch", "Follower", "LogUnreadable", "read_file_batches"]

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
_BLOCK = 1 << 17  # a batch's objects stay in the CPU cache: catch-up 1.3x faster than 1 MiB
_BLOCKS_PER_TURN = 128  # blocks read without a complete line before yielding to the loop
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
# What follows the log's name in a rotated file's name: .1 .2.gz -20261123 .20261123-201045
_ROTATED_SUFFIX = re.compile(r"[.-][0-9][0-9-]*(?:\.gz)?")

_IN_MODIFY = 0x00000002
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_DIR_EVENTS = _IN_CREATE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE


class LogUnreadable(Exception):
    """The log (or a rotated file we need) cannot be read; retrying later may work."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot read the mail log {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Batch:
    """Complete lines, and the position just after the last of them (to persist once handled)."""

    lines: list[bytes]
    end: Position


class _Lines:
    """Splits a byte stream into lines; keeps at most MAX_LINE bytes of an unfinished one."""

    __slots__ = ("_kept", "_parts", "cut", "pending")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._kept = 0
        self.pending = 0  # bytes of the unfinished line read so far, cut ones included
        self.cut = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines = data.split(b"\n")
        rest = lines.pop()
        if lines:
            if self.pending:
                self._keep(lines[0])
                lines[0] = self._take()
            if len(data) > MAX_LINE:
                for i, line in enumerate(lines):
                    if len(line) > MAX_LINE:
                        lines[i] = line[:MAX_LINE]
                        self.cut += 1
        self._keep(rest)
        return lines

    def flush(self) -> bytes | None:
        """The unfinished line as a last line (its file is complete), if there is one."""
        return self._take() if self.pending else None

    def reset(self) -> None:
        self._parts, self._kept, self.pending = [], 0, 0

    def _keep(self, chunk: bytes) -> None:
        if not chunk:
            return
        room = MAX_LINE - self._kept
        if room > 0:
            piece = chunk[:room] if len(chunk) > room else chunk
            self._parts.append(piece)
            self._kept += len(piece)
        self.pending += len(chunk)

    def _take(self) -> bytes:
        line = b"".join(self._parts)
        if self.pending > MAX_LINE:
            self.cut += 1
        self.reset()
        return line


def _is_gzip(fd: int) -> bool:
    return os.pread(fd, 2, 0) == _GZIP_MAGIC


def _gzip_stream(fd: int) -> gzip.GzipFile:
    """A decompressing reader over ``fd`` from its start; ``fd`` stays ours to close."""
    os.lseek(fd, 0, os.SEEK_SET)
    return gzip.GzipFile(fileobj=open(fd, "rb", closefd=False))


def read_file_batches(path: Path, start_offset: int = 0) -> Iterator[list[bytes]]:
    """All lines of a plain or gzip file (told apart by magic bytes) from ``start_offset``.

    ``start_offset`` counts uncompressed bytes. The file is taken as complete, so a final
    line without ``\\n`` is delivered too. Raises ``LogUnreadable`` (after delivering what
    could be read) when the file cannot be opened or its gzip data is corrupt.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LogUnreadable(path, exc.strerror or str(exc)) from exc
    try:
        plain = not _is_gzip(fd)
        stream: gzip.GzipFile | BinaryIO = (
            open(fd, "rb", closefd=False) if plain else _gzip_stream(fd)  # noqa: SIM115
        )
        with stream:
            stream.seek(start_offset)
            lines = _Lines()
            while data := stream.read(_BLOCK):
                if batch := lines.feed(data):
                    yield batch
            if (last := lines.flush()) is not None:
                yield [last]
    except _GZIP_ERRORS as exc:
        raise LogUnreadable(path, f"corrupt or truncated gzip data ({exc})") from exc
    except OSError as exc:
        raise LogUnreadable(path, exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)


class _Source:
    """One open file being read: the live log (plain, growing) or a complete rotated one."""

    __slots__ = ("_gz", "_id", "fd", "final", "gz", "head", "is_copy", "path", "pos", "st")

    def __init__(self, path: Path, fd: int, *, plain: bool) -> None:
        self.path = path
        self.fd = fd
        self.st = os.fstat(fd)
        if not stat.S_ISREG(self.st.st_mode):
            raise LogUnreadable(path, "not a regular file")
        self.gz = not plain and _is_gzip(fd)
        self.head = self._read_head()
        self.pos = 0  # uncompressed bytes read so far
        self.final = True  # complete: its unfinished last line is a line, then we move on
        self.is_copy = False
        self._gz: gzip.GzipFile | None = None
        self._id: FileId | None = None

    @classmethod
    def open(cls, path: Path, *, plain: bool = False) -> _Source:
        """``plain``: the live log, never compressed whatever its first bytes."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
        try:
            return cls(path, fd, plain=plain)
        except BaseException:
            os.close(fd)
            raise

    def _read_head(self) -> bytes:
        if not self.gz:
            return os.pread(self.fd, FINGERPRINT_BYTES, 0)
        with _gzip_stream(self.fd) as stream:
            return stream.read(FINGERPRINT_BYTES)

    def file_id(self) -> FileId:
        if self._id is None or self._id.fingerprint_len != len(self.head):
            self._id = FileId.of(self.st.st_dev, self.st.st_ino, self.head, str(self.path))
        return self._id

    def same_inode(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.st.st_dev, self.st.st_ino)

    def read(self) -> bytes:
        if not self.gz:
            data = os.pread(self.fd, _BLOCK, self.pos)
            if len(self.head) < FINGERPRINT_BYTES and self.pos + len(data) > len(self.head):
                self.head = os.pread(self.fd, FINGERPRINT_BYTES, 0)
        else:
            if self._gz is None:
                self._gz = _gzip_stream(self.fd)
                self._gz.seek(self.pos)
            try:
                data = self._gz.read(_BLOCK)
            except _GZIP_ERRORS as exc:
                log.error(
                    "%s: corrupt gzip data after byte %d (%s): the rest of this rotated "
                    "file is skipped, its lines are lost",
                    self.path,
                    self.pos,
                    exc,
                )
                data = b""
        self.pos += len(data)
        return data

    def size(self) -> int:
        """Content size: the file's, or for gzip the trailer's ISIZE (modulo 4 GiB)."""
        size = os.fstat(self.fd).st_size
        if self.gz and size >= 4:
            return int.from_bytes(os.pread(self.fd, 4, size - 4), "little")
        return size

    def restart(self) -> None:
        """Read this (truncated) file again from its start, as a new file."""
        self.pos = 0
        self.head = os.pread(self.fd, FINGERPRINT_BYTES, 0)
        self._id = None

    def close(self) -> None:
        if self._gz is not None:
            self._gz.close()
        os.close(self.fd)


def _names(files: list[_Source]) -> str:
    """For messages: the files we go on with."""
    return ", ".join(str(s.path) for s in files) or "no rotated file"


def _age_key(src: _Source, base: str) -> tuple[int, int, str]:
    """Oldest first: by mtime; on ties ``.2`` is older than ``.1``, dates sort by name."""
    suffix = src.path.name[len(base) :].removesuffix(".gz").lstrip(".-")
    rank = -int(suffix) if suffix.isdigit() and len(suffix) < 8 else 0
    return src.st.st_mtime_ns, rank, src.path.name


class _Inotify:
    """The three inotify calls we need, through libc: no third-party dependency."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        init = libc.inotify_init1
        init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes, self._rm.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def add(self, path: str, mask: int) -> int:
        wd: int = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def rm(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails harmlessly when the watch left with its deleted file

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)


class Follower:
    """Follows the live mail log from ``start`` (see the module docstring).

    ``start=None`` starts at the end of the log, or at its first byte with
    ``from_beginning=True`` (ignored when ``start`` is given). ``safety_interval``: the
    re-check without events; ``poll_interval``: the wait without inotify (or with
    ``use_inotify=False``).

    Counters (plain ints, for metrics): ``lines_read``, ``bytes_read``, ``lines_cut``,
    ``rotations`` (moves to a newer file), ``truncations`` (copytruncate, truncation,
    overwrite in place), ``wakeups`` (read attempts: an idle follower makes one per
    ``safety_interval``).
    """

    def __init__(
        self,
        log_path: Path,
        start: Position | None = None,
        *,
        from_beginning: bool = False,
        safety_interval: float = 5.0,
        poll_interval: float = 0.25,
        use_inotify: bool = True,
    ) -> None:
        self.log_path = Path(log_path)
        self.lines_read = 0
        self.bytes_read = 0
        self.lines_cut = 0
        self.rotations = 0
        self.truncations = 0
        self.wakeups = 0
        self._start = start
        self._from_beginning = from_beginning
        self._safety_interval = safety_interval
        self._poll_interval = poll_interval
        self._use_inotify = use_inotify
        self._started = False
        self._closed = False
        self._src: _Source | None = None
        self._queue: list[_Source] = []  # read after _src, in order
        self._lines = _Lines()
        self._inotify: _Inotify | None = None
        self._dir_wd: int | None = None
        self._live_wd: int | None = None
        self._file_wds: set[int] = set()
        self._warned_dir_watch = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        with contextlib.suppress(OSError, LogUnreadable):
            self._begin()  # "the end of the log" is now; on error next_batch retries and raises

    async def __aenter__(self) -> Follower:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def next_batch(self) -> Batch:
        """The next complete lines; waits (asleep) until there are some.

        Cancellation-safe: lines are only taken from the file when they are returned.
        """
        while True:
            if self._closed:
                raise RuntimeError("Follower is closed")
            self._wake.clear()  # before reading, so that an event during the read wakes us
            self.wakeups += 1
            got = self._collect()
            if isinstance(got, Batch):
                return got
            if got:  # a big stretch without a line end: let others run, then go on
                await asyncio.sleep(0)
                continue
            await self._wait()

    def lag_bytes(self) -> int:
        """Bytes in the current file and the files queued after it not consumed yet."""
        src = self._src
        if src is None:
            return 0
        try:
            lag = src.size() - (src.pos - self._lines.pending)
            lag += sum(s.size() - s.pos for s in self._queue)
        except OSError:
            return 0
        return max(lag, 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()  # a next_batch waiting in another task raises instead of sleeping on
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        for src in [self._src, *self._queue]:
            if src is not None:
                src.close()
        self._src, self._queue = None, []

    # -- reading -----------------------------------------------------------------------

    def _collect(self) -> Batch | bool:
        """A batch, or True to yield to the loop and come back, or False to wait."""
        try:
            if not self._started:
                self._begin()
            self._watch_dir()
            return self._collect_lines()
        except LogUnreadable:
            raise
        except OSError as exc:
            raise LogUnreadable(
                getattr(exc, "filename", None) or self.log_path, exc.strerror or str(exc)
            ) from exc

    def _collect_lines(self) -> Batch | bool:
        blocks = 0
        while True:
            src = self._src
            if src is None:
                if not self._open_new_log():
                    return False
                continue
            if not src.final and (tail := self._check_truncated(src)) is not None:
                return tail
            if self._src is not src:
                continue
            data = src.read()
            if data:
                self.bytes_read += len(data)
                lines = self._lines.feed(data)
                self.lines_cut = self._lines.cut
                if lines:
                    self.lines_read += len(lines)
                    return Batch(lines, Position(src.file_id(), src.pos - self._lines.pending))
                blocks += 1
                if blocks >= _BLOCKS_PER_TURN:
                    return True
                continue
            if src.final:
                last = self._lines.flush()
                self.lines_cut = self._lines.cut
                end = Position(src.file_id(), src.pos)
                self._advance()
                if last is not None:
                    self.lines_read += 1
                    return Batch([last], end)
                continue
            if not self._check_rotated(src):
                return False

    def _check_truncated(self, src: _Source) -> Batch | None:
        """Before reading on: has the live file shrunk, or been rewritten in place?"""
        head = os.pread(src.fd, FINGERPRINT_BYTES, 0)
        st = os.fstat(src.fd)
        if st.st_size >= src.pos and head.startswith(src.head):
            src.head, src.st = head, st  # st's mtime: when we last saw it intact
            return None
        old, read_to = src.file_id(), src.pos
        consumed = read_to - self._lines.pending
        # Copied more than once while we were not reading: each copy follows the first.
        copy, later = self._rotated_after(old, src.st.st_mtime_ns, live=src)
        self.truncations += 1
        src.restart()
        files = [copy, *later, src] if copy is not None else [*later, src]
        for s in files[:-1]:
            s.is_copy = True  # earlier content of the live file: leaving it is no rotation
        self._src, self._queue = files[0], files[1:] + self._queue
        if copy is not None:
            log.info(
                "%s was truncated (copytruncate): reading its last lines from %s, then %d "
                "newer rotated file(s), then the log from its start",
                self.log_path,
                copy.path,
                len(later),
            )
            copy.pos = consumed
            self._lines.reset()
            return None
        log.warning(
            "%s was truncated or overwritten and no rotated copy of it was found: lines "
            "logged after byte %d and before the truncation, if any, are lost. Going on "
            "with %s, then the log from its start",
            self.log_path,
            consumed,
            _names(later),
        )
        last = self._lines.flush()
        self.lines_cut = self._lines.cut
        if last is None:
            return None
        self.lines_read += 1
        return Batch([last], Position(old, read_to))

    def _check_rotated(self, src: _Source) -> bool:
        """At the end of the live file: has a new file with data replaced it at log_path?"""
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return False  # renamed (postfix logrotate): the next write creates the new file
        if src.same_inode(st):
            return False
        self._watch_new_log()
        try:
            new = _Source.open(self.log_path, plain=True)
        except FileNotFoundError:
            return False
        if new.st.st_size == 0 or src.same_inode(new.st):
            new.close()  # the writer is still on the old file: wait for its first write
            return False
        try:  # rotated more than once while we were not reading: the files in between
            found, later = self._rotated_after(src.file_id(), src.st.st_mtime_ns, live=new)
        except BaseException:
            new.close()
            raise
        if found is not None:
            found.close()  # we read the old file through the fd we have
            log.info(
                "%s was rotated: finishing the old file, then %d newer rotated file(s), "
                "then the new one",
                self.log_path,
                len(later),
            )
        else:
            log.warning(
                "%s was rotated and the file we were reading (inode %d, read to its end) is "
                "not beside it any more (deleted, moved elsewhere, or compressed other than "
                "with gzip): rotated files newer than it may have been deleted before we "
                "could read them, their lines lost. Going on with %s, then the new log",
                self.log_path,
                src.st.st_ino,
                _names(later),
            )
        new.final = False
        src.final = True  # read the old file to its end once more, then switch
        self._queue += [*later, new]
        return True

    def _advance(self) -> None:
        """Done with a complete file: on to the next one (or to waiting for the log)."""
        done = self._src
        assert done is not None
        done.close()
        if not done.is_copy:
            self.rotations += 1
        self._src = self._queue.pop(0) if self._queue else None
        if self._src is not None and not self._src.final:
            self._watch_live(self._src)

    def _open_new_log(self) -> bool:
        """Waiting for the log to (re)appear: open it, from its start."""
        try:
            src = _Source.open(self.log_path, plain=True)
        except FileNotFoundError:
            return False
        src.final = False
        self._src = src
        self._watch_live(src)
        return True

    # -- where to start ----------------------------------------------------------------

    def _begin(self) -> None:
        """Opens what the start position needs; on error, nothing is kept (retry later)."""
        if self._use_inotify and self._inotify is None:
            try:
                self._inotify = _Inotify()
            except (OSError, AttributeError) as exc:
                log.warning(
                    "inotify unavailable (%s): polling %s every %.2fs",
                    exc,
                    self.log_path,
                    self._poll_interval,
                )
        self._watch_dir()
        try:
            live = _Source.open(self.log_path, plain=True)
        except FileNotFoundError:
            live = None
        if live is not None:
            live.final = False
        try:
            sources = self._plan(live)
        except BaseException:
            if live is not None:
                live.close()
            raise
        self._started = True
        if sources:
            self._src, self._queue = sources[0], sources[1:]
            if not sources[-1].final:
                self._watch_live(sources[-1])

    def _plan(self, live: _Source | None) -> list[_Source]:
        start = self._start
        if start is None:
            if live is not None and not self._from_beginning:
                live.pos = self._end_of_last_line(live)
            return [live] if live is not None else []
        if live is not None and start.file.matches(live.st.st_dev, live.st.st_ino, live.head):
            live.pos = start.offset  # shorter than that? _check_truncated will tell
            return [live]
        saved_ns = None if start.saved_at is None else int(start.saved_at * 1e9)
        found, later = self._rotated_after(start.file, saved_ns, live)
        if found is not None:
            found.pos = start.offset
            log.info(
                "%s was rotated while we were stopped: finishing %s, then %d newer "
                "rotated file(s), then the current log",
                self.log_path,
                found.path,
                len(later),
            )
        else:
            log.warning(
                "cannot find %s (inode %d, offset %d) at %s nor beside it by its first bytes: "
                "it was deleted, or truncated without a copy; lines logged to it after that "
                "offset may have been lost. Going on with %s, then the current log from its "
                "start",
                start.file.name or "the cursor's file",
                start.file.inode,
                start.offset,
                self.log_path,
                _names(later),
            )
        keep = ([found] if found is not None else []) + later
        if keep and not keep[-1].gz and (live is None or live.st.st_size == 0):
            # The writer may still be on the newest rotated file (rotated, not yet told to
            # reopen): follow it like the live log until the new log gets data.
            keep[-1].final = False
            if live is not None:
                live.close()
            return keep
        return keep + ([live] if live is not None else [])

    def _end_of_last_line(self, src: _Source) -> int:
        size = src.st.st_size
        tail = os.pread(src.fd, min(size, MAX_LINE), size - min(size, MAX_LINE))
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return size - len(tail) + cut + 1
        return 0 if size <= MAX_LINE else size

    def _siblings(self, exclude: _Source | None) -> list[_Source]:
        """The rotated files beside the log (``_ROTATED_SUFFIX`` after its name), opened."""
        base = self.log_path.name
        found: list[_Source] = []
        with os.scandir(self.log_path.parent) as entries:
            names = sorted(
                e.name
                for e in entries
                if e.name.startswith(base) and _ROTATED_SUFFIX.fullmatch(e.name, len(base))
            )
        for name in names:
            path = self.log_path.parent / name
            try:
                src = _Source.open(path)
            except LogUnreadable:
                continue  # not a regular file
            except (OSError, *_GZIP_ERRORS) as exc:
                log.warning("skipping %s while looking for rotated logs: %s", path, exc)
                continue
            if exclude is not None and exclude.same_inode(src.st):
                src.close()
                continue
            found.append(src)
        return found

    def _best_match(self, file: FileId, candidates: list[_Source]) -> _Source | None:
        """The candidate holding ``file``'s content; plain before gzip, same inode first."""
        matches = [c for c in candidates if file.matches(c.st.st_dev, c.st.st_ino, c.head)]
        if not matches:
            return None
        return min(
            matches, key=lambda c: (c.gz, (c.st.st_dev, c.st.st_ino) != (file.dev, file.inode))
        )

    def _distinct(self, files: list[_Source], seen: set[bytes]) -> list[_Source]:
        """Oldest first, one per content (a file and its .gz twin), empty ones skipped."""
        out: list[_Source] = []
        for s in sorted(files, key=lambda s: s.gz):  # the plain twin wins
            if s.head and s.head not in seen:
                seen.add(s.head)
                out.append(s)
        base = self.log_path.name
        return sorted(out, key=lambda s: _age_key(s, base))

    def _rotated_after(
        self, file: FileId, since_ns: int | None, live: _Source | None
    ) -> tuple[_Source | None, list[_Source]]:
        """``file`` beside the log, and the rotated files to read after it, before ``live``.

        After it: newer by ``_age_key`` or, if ``file`` is gone (deleted, or truncated
        without a copy), modified after ``since_ns``. So the files we never read follow,
        and none we did, also not as a .gz being made of one (its mtime is new until gzip
        is done). Oldest first, one per content; the siblings not returned are closed.
        """
        siblings = self._siblings(exclude=live)
        found = self._best_match(file, siblings)
        if found is not None:
            base = self.log_path.name
            newer = [s for s in siblings if _age_key(s, base) > _age_key(found, base)]
        else:
            newer = [s for s in siblings if since_ns is not None and s.st.st_mtime_ns > since_ns]
        seen = {s.head for s in siblings if s not in newer}
        if live is not None:
            seen.add(live.head)
        later = self._distinct(newer, seen)
        for s in siblings:
            if s is not found and s not in later:
                s.close()
        return found, later

    # -- waiting -----------------------------------------------------------------------

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        polling = (
            self._inotify is None
            or self._dir_wd is None
            or (self._src is not None and self._live_wd is None)
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval if polling else self._safety_interval):
                await self._wake.wait()

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Registers the inotify fd with this loop (a new loop after asyncio.run ended)."""
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fd)
            loop.add_reader(self._inotify.fd, self._on_events)
        self._loop = loop
        self._wake = asyncio.Event()

    def _on_events(self) -> None:
        if self._inotify is not None:
            self._inotify.drain()
        self._wake.set()

    def _watch_dir(self) -> None:
        if self._inotify is None or self._dir_wd is not None:
            return
        try:
            self._dir_wd = self._inotify.add(str(self.log_path.parent), _DIR_EVENTS)
        except OSError as exc:
            if not self._warned_dir_watch:
                self._warned_dir_watch = True
                log.warning(
                    "cannot watch %s (%s): polling every %.2fs until it works",
                    self.log_path.parent,
                    exc.strerror,
                    self._poll_interval,
                )

    def _watch_live(self, src: _Source) -> None:
        """Modify events from this file only (watches of files left behind are dropped)."""
        if self._inotify is None:
            return
        wd: int | None = None
        for target in (f"/proc/self/fd/{src.fd}", str(src.path)):
            with contextlib.suppress(OSError):
                wd = self._inotify.add(target, _IN_MODIFY)
                break
        for old in self._file_wds - {wd}:
            self._inotify.rm(old)
        self._file_wds = set() if wd is None else {wd}
        self._live_wd = wd

    def _watch_new_log(self) -> None:
        """Wakes us at the first write into a new, still empty log file."""
        if self._inotify is None:
            return
        with contextlib.suppress(OSError):  # gone again, or no watch left: the re-check covers it
            self._file_wds.add(self._inotify.add(str(self.log_path), _IN_MODIFY))
