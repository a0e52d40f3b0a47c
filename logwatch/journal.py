"""Reading Postfix's log from the systemd journal, resuming at the journal's own cursor.

The journal is read in process through libsystemd (Debian's python3-systemd): its
inotify descriptor wakes the event loop, and entries become syslog-style lines carrying
the entry's exact time with its zone (``2026-12-07T17:59:03.209880+00:00 -
postfix/smtp[123]: ...``, logwatch/journalentries.py), which the pipeline parses like a
line of the mail log file, so both sources classify exactly alike. Entries whose
message cannot matter are read no further than their message.

The guarantees are the file's (logwatch/agent.py): a batch's ``end`` is the cursor of
its last entry, saved only after its events are in the WAL; reading starts again at the
saved cursor. The saved entry itself is looked for first and skipped; when another entry
comes first, the saved one was vacuumed (``SystemMaxUse``, ``MaxRetentionSec``,
``journalctl --vacuum-*``): reading resumes at the oldest entry the journal has, and the
gap is counted and logged (``gaps``, ``last_gap``).

The system journal is opened as journalctl opens it by default: this machine's journal
files only (not those of systemd-journal-remote or of linked containers), every boot
(a reboot after the saved cursor loses nothing).

Without a saved cursor reading starts at ``since`` (Unix time): the agent passes
``map-retention`` ago, as older lines cannot join the milter's map anyway. After the
file source (a cursor in a mail log file), it starts after the last line read from the
file, found in the journal by its text, else at its time (to the microsecond where the
file has it, as Debian 12's rsyslog writes), so that what was shipped from the file is
not shipped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import systemd.journal as sd_journal

from logwatch.cursor import JournalPosition, Position
from logwatch.follow import Follower
from logwatch.journalentries import Entries
from logwatch.lines import MAX_LINE
from logwatch.logfile import LogUnreadable, Source
from sendpost_agent.config import Config

__all__ = [
    "JournalBatch",
    "JournalReader",
    "LogSource",
    "journal_time",
    "open_source",
    "read_journal_batches",
    "source_name",
]

log = logging.getLogger(__name__)

BATCH = 4096  # entries per read: a catch-up batch (a few milliseconds of the event loop)
_READ_SIZE = 1 << 20  # bytes of the mail log file searched back for its last line
# After the file source the journal is searched for the file's last line from this long
# before its time: journald stored it before the syslog daemon stamped it.
SWITCH_BACK = 2.0
_UNREADABLE_FIX = "make the journal readable by the agent's user (group systemd-journal or adm)"


@dataclass(frozen=True, slots=True)
class JournalBatch:
    """Lines made of journal entries, and the cursor of the last entry read. ``read``:
    how many entries (those left out as unable to matter included); ``noticed``: when
    they were read (monotonic)."""

    lines: list[bytes]
    end: JournalPosition
    noticed: float
    read: int


def open_journal(matches: Sequence[str], directory: Path | None) -> Any:
    """A ``systemd.journal.Reader`` of the entries matching ``matches`` (journalctl's
    FIELD=VALUE, ``+`` between alternatives), of the journal files in ``directory`` or
    of this machine's system journal. Raises ``LogUnreadable`` with the fix."""
    where = f"journal files in {directory}" if directory else "the systemd journal"
    try:
        if directory is not None:
            journal = sd_journal.Reader(path=os.fspath(directory))
        else:
            journal = sd_journal.Reader(sd_journal.LOCAL_ONLY | sd_journal.SYSTEM_ONLY)
        # libsystemd cuts values at 64 KiB unasked: let the line's own cut (counted) decide
        journal.data_threshold = MAX_LINE + len("MESSAGE=") + 1
        for item in matches:
            if item == "+":
                journal.add_disjunction()
            else:
                journal.add_match(item)
    except FileNotFoundError as exc:
        raise LogUnreadable(
            where,
            "it does not exist: set journal-directory to a directory of journal files,"
            " or leave it unset to read the system journal",
        ) from exc
    except (OSError, ValueError) as exc:
        raise LogUnreadable(where, f"cannot open it ({exc}); {_UNREADABLE_FIX}") from exc
    if directory is None and not (journal.has_persistent_files() or journal.has_runtime_files()):
        journal.close()
        raise LogUnreadable(where, f"no journal file could be opened; {_UNREADABLE_FIX}")
    return journal


def journal_time(text: str, now: float | None = None) -> float:
    """Unix time of ``replay --since/--until``'s TIME, in the forms journalctl takes most:
    ``@UNIXTIME``, ``now``, ``today``, ``yesterday``, ``-2h`` (s, m, h, d), a date
    ``2026-11-23``, a local time ``2026-11-23 18:00[:05]``, or RFC 3339 with its zone."""
    now = time.time() if now is None else now
    text = text.strip()
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if text.startswith("@"):
        with contextlib.suppress(ValueError):
            return float(text[1:])
    elif text == "now":
        return now
    elif text in ("today", "yesterday"):
        return (midnight - timedelta(days=text == "yesterday")).timestamp()
    elif m := re.fullmatch(r"-(\d+)([smhd])", text):
        return now - int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    else:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text).timestamp()  # a naive one: local time
    raise ValueError(
        f"{text!r} is not a time: use @UNIXTIME, now, today, yesterday, -2h (s, m, h, d),"
        " 2026-11-23, '2026-11-23 18:00' (local time) or 2026-11-23T18:00:00+00:00"
    )


def switch_start(position: Position, last_line: float, oldest: float) -> float:
    """Where the journal is read from after the file source's ``position``: the time of
    the last line read from the file (``last_line``, Unix time; capped by when that
    cursor was saved, should the line's time be wrong), not before ``oldest``.

    A syslog daemon stamps a line when journald hands it over, after journald stored
    it, and in journald's order: the entries before that time are the lines the file
    had up to there, but for those journald stored in the instant between storing the
    last line and its stamp. So the line itself is looked for first (``after`` of
    ``JournalReader``); this time is where it is not found. A file stamped to the second
    only gives that second again."""
    if not last_line:  # no line was read from the file: nothing to skip
        return oldest
    if position.saved_at is not None:
        last_line = min(last_line, position.saved_at)
    return max(oldest, last_line)


def last_file_line(path: Path, position: Position) -> bytes | None:
    """The last line read from the file (the one ending at ``position``) without its
    time, when the file is still the one the cursor names and stamps in RFC 3339 (as
    journal lines are); None otherwise: then only the time tells where to start."""
    try:
        src = Source.open(path, plain=True)  # as the file source opens it (a FIFO too)
    except (OSError, LogUnreadable):
        return None
    try:
        if not position.file.matches(src.st.st_dev, src.st.st_ino, src.head):
            return None
        start = max(0, position.offset - _READ_SIZE)
        block = os.pread(src.fd, position.offset - start, start)
    except OSError:
        return None
    finally:
        src.close()
    if len(block) != position.offset - start or not block.endswith(b"\n"):
        return None
    stamp, _, rest = block[:-1].rpartition(b"\n")[2].partition(b" ")
    return rest if rest and _line_time(stamp) is not None else None


def _line_time(stamp: bytes) -> float | None:
    """Unix time of a line's RFC 3339 stamp with its zone; None for any other."""
    try:
        when = datetime.fromisoformat(stamp.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _without_host_and_pid(rest: bytes) -> bytes:
    """A line after its time without its host and PID (``postfix/smtpd: disconnect ...``):
    the file's has rsyslog's host (the short name by default) and the PID, the journal's
    lines neither (``-``, see journalentries.py)."""
    tag, colon, message = rest.partition(b" ")[2].partition(b": ")
    return tag.partition(b"[")[0] + colon + message


def cursor_time(cursor: str) -> datetime | None:
    """The entry time a cursor names (its ``t=`` field, hex microseconds), for messages."""
    for part in cursor.split(";"):
        if part.startswith("t="):
            with contextlib.suppress(ValueError, OverflowError):
                return datetime.fromtimestamp(int(part[2:], 16) / 1e6, UTC)
    return None


def read_journal_batches(
    matches: Sequence[str],
    directory: Path | None,
    since: float | None = None,
    until: float | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> Iterator[tuple[list[bytes], int]]:
    """The matching entries as lines, oldest first, up to now (``replay --journal``),
    between ``since`` and ``until`` (Unix time), with how many entries each batch read:
    only those whose message passes ``wanted`` become lines.

    Raises ``LogUnreadable`` when the journal cannot be opened or read.
    """
    journal = open_journal(matches, directory)
    try:
        if since is not None:
            journal.seek_realtime(int(since * 1_000_000))
        entries = Entries(journal, wanted)
        limit = None if until is None else int(until * 1_000_000)
        while True:
            try:
                lines = entries.read(BATCH, limit)
            except OSError as exc:
                raise LogUnreadable(
                    "the systemd journal", f"reading it failed ({exc}); {_UNREADABLE_FIX}"
                ) from exc
            if not entries.count:
                return
            yield lines, entries.count
    finally:
        journal.close()


class JournalReader:
    """Follows the journal entries matching ``matches`` from ``start`` (or ``since``).

    The same interface as ``Follower`` (logwatch/follow.py) for the agent; counters:
    ``lines_read`` (entries), ``lines_cut``, ``gaps`` (cursors found vacuumed) with
    ``last_gap`` (when and what was lost). ``directory`` reads journal files there
    instead of the system journal. ``wanted``: the test an entry's message passes to
    become a line (the pipeline's ``wants``); the others count as read. ``next_batch``
    is cancellation-safe (it waits before it reads); when reading fails, it raises
    ``LogUnreadable`` and the next call opens the journal again at the last batch
    returned. ``after``: (the file source's last line without its time, that time):
    entries up to and including that line are skipped, or, not found, those before
    that time.
    """

    rotations = 0  # a journal has no rotation or truncation the reader sees
    truncations = 0

    def __init__(
        self,
        matches: Sequence[str],
        start: JournalPosition | None,
        *,
        since: float | None = None,
        directory: Path | None = None,
        after: tuple[bytes, float] | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        self.matches = list(matches)
        self._after = after
        self._held: list[bytes] = []  # entries scanned for ``after``'s line
        self.directory = directory
        self._start = start
        self._since = since
        self._wanted = wanted
        self._journal: Any = None
        self._entries: Entries | None = None
        self._caught_up = True  # the last read reached the newest entry
        self._closed = False
        self._cut = 0  # lines cut by readers closed since
        self.lines_read = 0
        self.gaps = 0
        self.last_gap: str | None = None

    @property
    def lines_cut(self) -> int:
        return self._cut + (self._entries.cut if self._entries is not None else 0)

    def describe(self) -> str:
        """What is read, for messages."""
        where = f"journal files in {self.directory}" if self.directory else "the systemd journal"
        return f"{where} ({' '.join(self.matches) or 'all entries'})"

    async def next_batch(self) -> JournalBatch:
        while True:
            if self._closed:
                raise RuntimeError("JournalReader is closed")
            entries = self._entries or self._open()
            if self._caught_up:
                await self._wait()
            try:
                lines = entries.read(BATCH)
            except OSError as exc:
                self._stop()
                raise LogUnreadable(
                    self.describe(), f"reading it failed ({exc}); {_UNREADABLE_FIX}"
                ) from exc
            count = entries.count
            self._caught_up = count < BATCH
            if not count:
                continue
            if self._after is not None:
                lines = self._skip_file_lines(lines, *self._after)
                if self._after is None:
                    entries.wanted = self._wanted
                elif not lines:
                    continue  # still looking for the file's last line: no cursor yet
            self._start = JournalPosition(entries.cursor())
            self.lines_read += count
            return JournalBatch(lines, self._start, time.monotonic(), count)

    def lag_seconds(self) -> float:
        """Age of the last entry handed out while entries wait; 0 while caught up."""
        entries = self._entries
        if self._caught_up or entries is None or not entries.usec:
            return 0.0
        return max(0.0, time.time() - entries.usec / 1e6)

    def lag_bytes(self) -> int:
        return 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop()

    # -- the journal -------------------------------------------------------------------

    def _open(self) -> Entries:
        """Open the journal at the last batch returned (or ``since``), checking that the
        saved entry is still there."""
        journal = open_journal(self.matches, self.directory)
        try:
            journal.fileno()  # the inotify watch, before the first read (sd_journal_get_fd)
            if self._start is not None:
                self._seek_cursor(journal, self._start.cursor)
            elif self._since is not None:
                journal.seek_realtime(int(self._since * 1_000_000))
        except OSError as exc:
            journal.close()
            raise LogUnreadable(self.describe(), f"cannot read it ({exc})") from exc
        self._held = []  # reading starts again before them
        self._journal, self._caught_up = journal, False
        self._entries = Entries(journal, self._wanted if self._after is None else None)
        log.debug("reading %s", self.describe())
        return self._entries

    def _seek_cursor(self, journal: Any, cursor: str) -> None:
        """Position ``journal`` after the entry of ``cursor``: the saved one, or before
        the oldest entry kept (a gap)."""
        journal.seek_cursor(cursor)
        if journal._next() and journal.test_cursor(cursor):
            return  # the saved entry, read already
        journal.seek_cursor(cursor)  # at the first entry after the lost one
        self.gaps += 1
        lost_from = cursor_time(cursor)
        self.last_gap = (
            f"the journal no longer holds the entry of the saved cursor"
            f" ({lost_from.isoformat() if lost_from else cursor}); resumed at the"
            f" oldest entry kept: entries between may be lost"
        )
        log.warning(
            "%s: %s (vacuumed by journald: SystemMaxUse, MaxRetentionSec, or"
            " journalctl --vacuum-*; or journal-match changed); gap %d",
            self.describe(),
            self.last_gap,
            self.gaps,
        )

    async def _wait(self) -> None:
        """Until the journal changed (its inotify descriptor), or its timeout where it
        cannot tell (journal files on a network file system)."""
        journal = self._journal
        fd = journal.fileno()
        woke = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, woke.set)
        timeout_ms = journal.get_timeout_ms()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woke.wait(), None if timeout_ms < 0 else timeout_ms / 1e3)
        finally:
            loop.remove_reader(fd)
        journal.process()

    def _stop(self) -> None:
        journal, entries = self._journal, self._entries
        self._journal = self._entries = None
        if entries is not None:
            self._cut += entries.cut
        if journal is not None:
            journal.close()

    def _skip_file_lines(self, lines: list[bytes], last: bytes, at: float) -> list[bytes]:
        """The entries after the LAST copy of the file source's ``last`` line among those
        up to the first at or after its time ``at`` (or, not found, from that one on).
        The same text recurs (an smtpd's identical ``disconnect from`` lines): the first
        copy would read again what the file had after it. Entries are held until that
        first entry at or after ``at`` comes: ``SWITCH_BACK`` seconds of them at most."""
        held = self._held + lines
        times = (_line_time(line.partition(b" ")[0]) or at for line in held)
        n = next((i for i, when in enumerate(times) if when >= at), None)
        if n is None:
            self._held = held
            return []
        text = _without_host_and_pid(last)
        found = [
            i
            for i, line in enumerate(held[: n + 1])
            if _without_host_and_pid(line.partition(b" ")[2]) == text
        ]
        self._after, self._held = None, []
        if found:
            return held[found[-1] + 1 :]
        log.info(
            "%s: the last line read from the file is not in the journal: reading from its"
            " time (%s)",
            self.describe(),
            datetime.fromtimestamp(at, UTC).isoformat(),
        )
        return held[n:]


LogSource = Follower | JournalReader


def open_source(
    config: Config,
    position: Position | JournalPosition | None,
    gather: float = 0.0,
    last_line: float = 0.0,
    wanted: Callable[[str], bool] | None = None,
) -> LogSource:
    """The reader ``log-source`` names, at ``position``. ``gather``: how long a busy log
    file's lines are gathered into one batch (see ``Follower``); ``wanted``: the test a
    journal entry's message passes to be read further (see ``JournalReader``). A cursor of the other
    kind: the journal is read from ``last_line`` on (the time of the last line read
    from the file), the file from its end, with a warning."""
    if config.log_source == "journal":
        since = time.time() - config.map_retention
        after = None
        if isinstance(position, Position):
            since = switch_start(position, last_line, since)
            last = last_file_line(config.log_path, position) if last_line else None
            log.warning(
                "the cursor %s is a position in %s, but log-source is journal: reading"
                " the journal after the last line read from the file (%s%s)",
                config.cursor_path,
                position.file.name or "a mail log file",
                datetime.fromtimestamp(since, UTC).isoformat(),
                "" if last is None else ", the line found in the file",
            )
            if last is not None:
                after = (last, since)
                since -= SWITCH_BACK
        start = position if isinstance(position, JournalPosition) else None
        return JournalReader(
            config.journal_match,
            start,
            since=since,
            directory=config.journal_directory,
            after=after,
            wanted=wanted,
        )
    if isinstance(position, JournalPosition):
        # From its start, the file would send again every event within map-retention.
        log.warning(
            "the cursor %s is a journal cursor, but log-source is file: reading %s from"
            " its end; lines logged between the journal's last entry read and now are"
            " not reported",
            config.cursor_path,
            config.log_path,
        )
        return Follower(config.log_path, None, gather=gather)
    # First start: read the current log from its beginning. Only messages the milter
    # recorded produce events, so this reports what arrived before logwatch started.
    start_at = position if isinstance(position, Position) else None
    return Follower(config.log_path, start_at, from_beginning=start_at is None, gather=gather)


def source_name(source: LogSource) -> str:
    """What a source reads, for messages."""
    return source.describe() if isinstance(source, JournalReader) else str(source.log_path)
