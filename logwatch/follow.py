"""Following the live mail log across rotations and truncations, never losing a line.

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

Lines come in batches, one per block read (``logwatch/logfile.py``), split and cut to
``MAX_LINE`` by ``logwatch/lines.py``. Wake-ups come from inotify (``logwatch/inotify.py``):
the log's directory for create/move/delete, the file being read for modify, so an idle
follower sleeps; a re-check every ``safety_interval`` seconds covers missed events;
without inotify it polls every ``poll_interval``. Inotify is listened to only while
waiting: the events of the writes made meanwhile wait in the kernel (which merges them)
and wake the next wait at once.

Once a batch ends at the end of the live log, the next read waits for the next write's
event instead of finding nothing. ``gather``: once reading has caught up with the end of
the log, the next read comes at least ``gather`` seconds after it, so the lines written
meanwhile come as one batch. A busy log written a message at a time then costs one read
(and one round of the caller's work) per ``gather`` instead of one per write; a quiet
log's first line after a pause is read at once, and a backlog is read block after block
without a pause. The caller may change ``gather`` between batches, effective for the
next read (logwatch reads less often while events are few); each batch says when its
lines were noticed, which a later read does not change.

Read errors (permission denied, I/O error, not a regular file) raise ``LogUnreadable``
from ``next_batch`` without changing any state: calling ``next_batch`` again retries from
the same place, so the caller reports the error and retries when it sees fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from logwatch.cursor import FINGERPRINT_BYTES, FileId, Position
from logwatch.inotify import DIR_EVENTS, IN_MODIFY, Inotify
from logwatch.lines import MAX_LINE, LineSplitter
from logwatch.logfile import BLOCK, GZIP_ERRORS, LogUnreadable, Source

__all__ = ["Batch", "Follower"]

log = logging.getLogger(__name__)

_BLOCKS_PER_TURN = 128  # blocks read without a complete line before yielding to the loop
# What follows the log's name in a rotated file's name: .1 .2.gz -20261123 .20261123-201045
_ROTATED_SUFFIX = re.compile(r"[.-][0-9][0-9-]*(?:\.gz)?")


@dataclass(frozen=True, slots=True)
class Batch:
    """Complete lines, and the position just after the last of them (to persist once
    handled). ``noticed``: when the follower learned of them (monotonic: the wake-up
    before the read, or the read itself), about when the first was written even if the
    read came later (``gather``): the shipper's batch window counts from it."""

    lines: list[bytes]
    end: Position
    noticed: float


def _names(files: list[Source]) -> str:
    """For messages: the files we go on with."""
    return ", ".join(str(s.path) for s in files) or "no rotated file"


def _age_key(src: Source, base: str) -> tuple[int, int, str]:
    """Oldest first: by mtime; on ties ``.2`` is older than ``.1``, dates sort by name."""
    suffix = src.path.name[len(base) :].removesuffix(".gz").lstrip(".-")
    rank = -int(suffix) if suffix.isdigit() and len(suffix) < 8 else 0
    return src.st.st_mtime_ns, rank, src.path.name


class Follower:
    """Follows the live mail log from ``start`` (see the module docstring).

    ``start=None`` starts at the end of the log, or at its first byte with
    ``from_beginning=True`` (ignored when ``start`` is given). ``safety_interval``: the
    re-check without events; ``poll_interval``: the wait without inotify (or with
    ``use_inotify=False``); ``gather``: the least time between reads at the end of the
    log (see the module docstring).

    Counters (plain ints): ``lines_cut``, ``rotations`` (moves to a newer file) and
    ``truncations`` (copytruncate, truncation, overwrite in place) are in /metrics;
    ``lines_read``, ``bytes_read`` and ``wakeups`` (read attempts: an idle follower makes
    one per ``safety_interval``) let the tests see what reading cost.
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
        gather: float = 0.0,
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
        self.gather = gather
        self._noticed = 0.0  # when the lines of the batch being collected were noticed
        # The last wake-up since a batch was returned: the lines read next were written
        # before it. Kept here, as a wait may be cancelled (logwatch's idle check) and
        # the read come in the next call.
        self._woken: float | None = None
        self._read_at = 0.0  # monotonic: the last read that caught up (``gather`` counts from it)
        self._caught_up = False  # the last batch ends at the end of the live log
        self._started = False
        self._closed = False
        self._src: Source | None = None
        self._queue: list[Source] = []  # read after _src, in order
        self._lines = LineSplitter()
        self._inotify: Inotify | None = None
        self._dir_wd: int | None = None
        self._live_wd: int | None = None
        self._file_wds: set[int] = set()
        self._warned_dir_watch = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False  # the inotify fd is registered with the loop
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
            if self._caught_up:  # nothing to read before the next write: wait for it
                self._caught_up = False
                await self._wait()
                continue
            now = time.monotonic()
            if self._read_at + self.gather > now:  # gathering the lines written meanwhile
                await asyncio.sleep(self._read_at + self.gather - now)
                continue
            self._wake.clear()  # before reading, so that an event during the read wakes us
            self.wakeups += 1
            self._noticed = now if self._woken is None else self._woken
            got = self._collect()
            if got is False or self._caught_up:
                self._read_at = time.monotonic()
            if isinstance(got, Batch):
                self._woken = None
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
            self._stop_listening()
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
                    end = Position(src.file_id(), src.pos - self._lines.pending)
                    batch = Batch(lines, end, self._noticed)
                    self._caught_up = not src.final and len(data) < BLOCK and self._stays(src)
                    return batch
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
                    return Batch([last], end, self._noticed)
                continue
            if not self._check_rotated(src):
                return False

    def _stays(self, src: Source) -> bool:
        """Read to its end: is the live file still the log (no rotation to act on)?

        Then only a write can give more lines, and its event wakes the next wait (the
        events of this wake-up were drained before the read). On an error the next read
        checks again, and reports it.
        """
        try:
            return not self._check_rotated(src)
        except (OSError, LogUnreadable):
            return False

    def _check_truncated(self, src: Source) -> Batch | None:
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
        return Batch([last], Position(old, read_to), self._noticed)

    def _check_rotated(self, src: Source) -> bool:
        """At the end of the live file: has a new file with data replaced it at log_path?"""
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return False  # renamed (postfix logrotate): the next write creates the new file
        if src.same_inode(st):
            return False
        self._watch_new_log()
        try:
            new = Source.open(self.log_path, plain=True)
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
            src = Source.open(self.log_path, plain=True)
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
                self._inotify = Inotify()
            except (OSError, AttributeError) as exc:
                log.warning(
                    "inotify unavailable (%s): polling %s every %.2fs",
                    exc,
                    self.log_path,
                    self._poll_interval,
                )
        self._watch_dir()
        try:
            live = Source.open(self.log_path, plain=True)
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

    def _plan(self, live: Source | None) -> list[Source]:
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

    def _end_of_last_line(self, src: Source) -> int:
        size = src.st.st_size
        tail = os.pread(src.fd, min(size, MAX_LINE), size - min(size, MAX_LINE))
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return size - len(tail) + cut + 1
        return 0 if size <= MAX_LINE else size

    def _siblings(self, exclude: Source | None) -> list[Source]:
        """The rotated files beside the log (``_ROTATED_SUFFIX`` after its name), opened."""
        base = self.log_path.name
        found: list[Source] = []
        with os.scandir(self.log_path.parent) as entries:
            names = sorted(
                e.name
                for e in entries
                if e.name.startswith(base) and _ROTATED_SUFFIX.fullmatch(e.name, len(base))
            )
        for name in names:
            path = self.log_path.parent / name
            try:
                src = Source.open(path)
            except LogUnreadable:
                continue  # not a regular file
            except (OSError, *GZIP_ERRORS) as exc:
                log.warning("skipping %s while looking for rotated logs: %s", path, exc)
                continue
            if exclude is not None and exclude.same_inode(src.st):
                src.close()
                continue
            found.append(src)
        return found

    def _best_match(self, file: FileId, candidates: list[Source]) -> Source | None:
        """The candidate holding ``file``'s content; plain before gzip, same inode first."""
        matches = [c for c in candidates if file.matches(c.st.st_dev, c.st.st_ino, c.head)]
        if not matches:
            return None
        return min(
            matches, key=lambda c: (c.gz, (c.st.st_dev, c.st.st_ino) != (file.dev, file.inode))
        )

    def _distinct(self, files: list[Source], seen: set[bytes]) -> list[Source]:
        """Oldest first, one per content (a file and its .gz twin), empty ones skipped."""
        out: list[Source] = []
        for s in sorted(files, key=lambda s: s.gz):  # the plain twin wins
            if s.head and s.head not in seen:
                seen.add(s.head)
                out.append(s)
        base = self.log_path.name
        return sorted(out, key=lambda s: _age_key(s, base))

    def _rotated_after(
        self, file: FileId, since_ns: int | None, live: Source | None
    ) -> tuple[Source | None, list[Source]]:
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
        if self._inotify is not None and not self._listening:
            loop.add_reader(self._inotify.fd, self._on_events)
            self._listening = True
        polling = (
            self._inotify is None
            or self._dir_wd is None
            or (self._src is not None and self._live_wd is None)
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval if polling else self._safety_interval):
                await self._wake.wait()
        self._woken = time.monotonic()  # the batch read next was noticed now

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Waits on this loop from now on (a new loop after asyncio.run ended)."""
        self._stop_listening()
        self._loop = loop
        self._wake = asyncio.Event()

    def _on_events(self) -> None:
        # Woken once: the events of the writes until the next wait stay in the kernel
        # instead of waking the loop for each write while the lines are read and handled.
        self._stop_listening()
        if self._inotify is not None:
            self._inotify.drain()
        self._wake.set()

    def _stop_listening(self) -> None:
        loop, inotify = self._loop, self._inotify
        if self._listening and inotify is not None and loop is not None and not loop.is_closed():
            loop.remove_reader(inotify.fd)
        self._listening = False

    def _watch_dir(self) -> None:
        if self._inotify is None or self._dir_wd is not None:
            return
        try:
            self._dir_wd = self._inotify.add(str(self.log_path.parent), DIR_EVENTS)
        except OSError as exc:
            if not self._warned_dir_watch:
                self._warned_dir_watch = True
                log.warning(
                    "cannot watch %s (%s): polling every %.2fs until it works",
                    self.log_path.parent,
                    exc.strerror,
                    self._poll_interval,
                )

    def _watch_live(self, src: Source) -> None:
        """Modify events from this file only (watches of files left behind are dropped)."""
        if self._inotify is None:
            return
        wd: int | None = None
        for target in (f"/proc/self/fd/{src.fd}", str(src.path)):
            with contextlib.suppress(OSError):
                wd = self._inotify.add(target, IN_MODIFY)
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
            self._file_wds.add(self._inotify.add(str(self.log_path), IN_MODIFY))
