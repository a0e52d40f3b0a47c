"""Reading Postfix's log from the systemd journal, resuming at the journal's own cursor.

``journalctl --output=export --follow`` runs as a child process (no Python binding: the
journal's C library is used through the tool every journald host has). Each entry
becomes one syslog-style line carrying the entry's exact time with its zone
(``2026-12-07T17:59:03.209880+00:00 mx1 postfix/smtp[123]: ...``), which the pipeline
parses like a line of the mail log file, so both sources classify exactly alike.

The guarantees are the file's (logwatch/agent.py): a batch's ``end`` is the cursor of
its last entry, saved only after its events are in the WAL; reading starts again at the
saved cursor. journalctl is started with ``--cursor`` (not ``--after-cursor``) so that
the saved entry itself comes first when the journal still holds it, and is skipped; when
another entry comes first, the saved one was vacuumed (``SystemMaxUse``,
``MaxRetentionSec``, ``journalctl --vacuum-*``): reading resumes at the oldest entry
the journal has, and the gap is counted and logged (``gaps``, ``last_gap``).

Following, journalctl gets ``--merge``: ``--follow`` alone implies ``--boot`` (this
boot only), which would skip entries of an earlier boot logged after the saved cursor
(a reboot), and, where a sandboxed unit sees another boot ID than journald stamped,
every entry: in a systemd-nspawn container, the logwatch unit's own mounts
(ProtectProc, ProtectKernelTunables, ProtectControlGroups) lose the boot ID nspawn
mounts over /proc's, and show the host's. ``--merge`` also opens other machines' journals
(systemd-journal-remote, linked container journals), so each match gets this machine's
``_MACHINE_ID``.

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
import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from logwatch.cursor import JournalPosition, Position
from logwatch.follow import Follower
from logwatch.journalexport import ExportParser
from logwatch.logfile import LogUnreadable, Source
from sendpost_agent.config import Config

__all__ = [
    "JournalBatch",
    "JournalReader",
    "LogSource",
    "journal_command",
    "open_source",
    "read_journal_batches",
    "source_name",
]

log = logging.getLogger(__name__)

# The fields a line is made of; journalctl adds __CURSOR and __REALTIME_TIMESTAMP itself.
FIELDS = ("MESSAGE", "SYSLOG_IDENTIFIER", "_PID", "_HOSTNAME")
_READ_SIZE = 1 << 20  # bytes per read from journalctl: a catch-up batch
MACHINE_ID = Path("/etc/machine-id")  # what journald stamps as _MACHINE_ID
# After the file source the journal is searched for the file's last line from this long
# before its time: journald stored it before the syslog daemon stamped it.
SWITCH_BACK = 2.0


@dataclass(frozen=True, slots=True)
class JournalBatch:
    """Lines made of journal entries, and the cursor of the last of them. ``noticed``:
    when they were read (monotonic); journalctl hands entries over as they come."""

    lines: list[bytes]
    end: JournalPosition
    noticed: float


def journal_command(
    matches: Sequence[str],
    start: JournalPosition | None,
    since: str | None,
    directory: Path | None,
    follow: bool = True,
    until: str | None = None,
    machine: str | None = None,
) -> list[str]:
    """The journalctl command line reading ``matches`` from ``start`` (or ``since``, in
    journalctl's time syntax, e.g. ``@UNIXTIME``, ``2026-11-23 18:00``, ``-1h``).
    Following, all boots are read (``--merge``), of ``machine`` only when given."""
    cmd = [
        "journalctl",
        "--output=export",
        f"--output-fields={','.join(FIELDS)}",
        "--no-pager",
        "--all",  # long and unprintable fields too: export sends them as binary
    ]
    if follow:
        cmd += ["--follow", "--no-tail", "--merge"]
        if machine is not None:
            matches = of_machine(matches, machine)
    if directory is not None:
        cmd.append(f"--directory={directory}")
    if start is not None:
        cmd.append(f"--cursor={start.cursor}")
    elif since is not None:
        cmd.append(f"--since={since}")
    if until is not None:
        cmd.append(f"--until={until}")
    return [*cmd, *matches]


def of_machine(matches: Sequence[str], machine: str) -> list[str]:
    """``matches`` narrowed to the entries of ``machine``: its ``_MACHINE_ID`` joins
    every alternative (journalctl ands different fields, ``+`` ors alternatives). An
    empty alternative (a stray ``+``) is left out: with the ID alone it would match
    every entry of this machine."""
    groups: list[list[str]] = [[]]
    for item in matches:
        if item == "+":
            groups.append([])
        else:
            groups[-1].append(item)
    out: list[str] = []
    for group in [g for g in groups if g] or [[]]:
        out += [*(["+"] if out else []), *group, f"_MACHINE_ID={machine}"]
    return out


def this_machine(path: Path = MACHINE_ID) -> str | None:
    """This host's machine ID (the one journald stamps), None when it cannot be read:
    then every journal is read, as journalctl --merge does."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else None


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


def _without_host(rest: bytes) -> bytes:
    """A line after its time without its host: rsyslog writes the short host name by
    default, journald's _HOSTNAME may be the full one (mail.example.com)."""
    return rest.partition(b" ")[2]


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe (64 KiB by default) lets journalctl write on while we parse: the two
    run side by side instead of taking turns."""
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _READ_SIZE)


def read_journal_batches(
    matches: Sequence[str],
    directory: Path | None,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[list[bytes]]:
    """The matching entries as lines, oldest first, up to now (``replay --journal``).

    Raises ``LogUnreadable`` when journalctl cannot run or fails (its message included).
    """
    cmd = journal_command(matches, None, since, directory, follow=False, until=until)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise LogUnreadable(
            "the systemd journal", f"cannot run journalctl: {exc.strerror}"
        ) from exc
    assert proc.stdout is not None and proc.stderr is not None
    _widen_pipe(proc.stdout.fileno())
    parser = ExportParser()
    try:
        while data := os.read(proc.stdout.fileno(), _READ_SIZE):
            if lines := parser.feed(data):
                yield lines
    finally:
        if proc.poll() is None:  # the caller stopped early
            proc.kill()
        error = proc.stderr.read().decode("utf-8", "replace").strip()
        code = proc.wait()
    if code != 0:
        raise LogUnreadable(
            "the systemd journal", f"journalctl {' '.join(cmd[1:])} failed (exit {code}): {error}"
        )


def cursor_time(cursor: str) -> datetime | None:
    """The entry time a cursor names (its ``t=`` field, hex microseconds), for messages."""
    for part in cursor.split(";"):
        if part.startswith("t="):
            with contextlib.suppress(ValueError, OverflowError):
                return datetime.fromtimestamp(int(part[2:], 16) / 1e6, UTC)
    return None


class JournalReader:
    """Follows the journal entries matching ``matches`` from ``start`` (or ``since``).

    The same interface as ``Follower`` (logwatch/follow.py) for the agent; counters:
    ``lines_read``, ``lines_cut``, ``gaps`` (cursors found vacuumed) with ``last_gap``
    (when and what was lost). ``directory`` reads journal files there instead of the
    system journal. ``next_batch`` is cancellation-safe; when journalctl ends, it raises
    ``LogUnreadable`` and the next call starts it again at the last batch returned.
    ``after``: (the file source's last line without its time, that time): entries up to
    and including that line are skipped, or, not found, those before that time.
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
    ) -> None:
        self.matches = list(matches)
        self._after = after
        self._held: list[bytes] = []  # entries scanned for ``after``'s line
        self.directory = directory
        self._start = start
        self._since = since
        self._resumed = start  # the cursor journalctl was started at, until it is checked
        self._parser = ExportParser()
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None
        self._waiting = False
        self._closed = False
        self.lines_read = 0
        self.gaps = 0
        self.last_gap: str | None = None

    @property
    def lines_cut(self) -> int:
        return self._parser.cut

    def describe(self) -> str:
        """What is read, for messages."""
        where = f"journal files in {self.directory}" if self.directory else "the systemd journal"
        return f"{where} ({' '.join(self.matches) or 'all entries'})"

    async def next_batch(self) -> JournalBatch:
        while True:
            if self._closed:
                raise RuntimeError("JournalReader is closed")
            proc = self._proc or await self._spawn()
            assert proc.stdout is not None
            self._waiting = True
            data = await proc.stdout.read(_READ_SIZE)  # nothing is taken if cancelled here
            self._waiting = False
            if not data:
                await self._ended(proc)
            lines = self._parser.feed(data)
            if lines and self._resumed is not None:
                lines = self._check_resume(lines)
            if lines and self._after is not None:
                lines = self._skip_file_lines(lines, *self._after)
            if lines:
                cursor = self._parser.cursor
                assert cursor is not None
                self._start = JournalPosition(cursor)
                self.lines_read += len(lines)
                return JournalBatch(lines, self._start, time.monotonic())

    def lag_seconds(self) -> float:
        """Age of the last entry handed out while entries wait; 0 while caught up."""
        if self._waiting or not self._parser.usec:
            return 0.0
        return max(0.0, time.time() - self._parser.usec / 1e6)

    def lag_bytes(self) -> int:
        return 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop()

    # -- the child ---------------------------------------------------------------------

    async def _spawn(self) -> asyncio.subprocess.Process:
        since = None if self._since is None else f"@{self._since:.6f}"
        machine = None if self.directory is not None else this_machine()
        cmd = journal_command(self.matches, self._start, since, self.directory, machine=machine)
        self._parser.reset()
        self._held = []  # journalctl starts again before them
        self._resumed = self._start
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_READ_SIZE,
            )
        except OSError as exc:
            raise LogUnreadable(
                self.describe(),
                f"cannot run journalctl: {exc.strerror}; install systemd's journalctl"
                " or set log-source: file",
            ) from exc
        transport = getattr(proc, "_transport", None)
        if isinstance(transport, asyncio.SubprocessTransport):
            stdout = transport.get_pipe_transport(1)
            if stdout is not None:
                # journalctl may have ended already (no journal): its pipe is then closed
                with contextlib.suppress(ValueError):
                    _widen_pipe(stdout.get_extra_info("pipe").fileno())
        self._proc, self._stderr = proc, []
        self._stderr_task = asyncio.create_task(self._read_stderr(proc))
        log.debug("reading %s: %s", self.describe(), " ".join(cmd))
        return proc

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            text = raw.decode("utf-8", "replace").strip()
            if text:
                log.warning("journalctl: %s", text)
                self._stderr = [*self._stderr[-4:], text]

    async def _ended(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        why = "; ".join(self._stderr) or "no message"
        self._proc = None
        raise LogUnreadable(
            self.describe(),
            f"journalctl ended (exit {code}: {why}); make the journal readable by the"
            " agent's user (group systemd-journal or adm)",
        )

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if proc is not None:
            # Closed now, in its loop: left to the garbage collector, the transport
            # would be closed after the loop and complain.
            transport = getattr(proc, "_transport", None)
            if isinstance(transport, asyncio.SubprocessTransport):
                transport.close()
        if self._stderr_task is not None:
            self._stderr_task.cancel()

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
        text = _without_host(last)
        found = [
            i
            for i, line in enumerate(held[: n + 1])
            if _without_host(line.partition(b" ")[2]) == text
        ]
        self._after, self._held = None, []
        # Handed out or not, the entries up to here are done: a restart of journalctl
        # goes on after them.
        cursor = self._parser.cursor
        assert cursor is not None
        self._start = JournalPosition(cursor)
        if found:
            return held[found[-1] + 1 :]
        log.info(
            "%s: the last line read from the file is not in the journal: reading from its"
            " time (%s)",
            self.describe(),
            datetime.fromtimestamp(at, UTC).isoformat(),
        )
        return held[n:]

    def _check_resume(self, lines: list[bytes]) -> list[bytes]:
        """The first entry after a (re)start: the saved one, or the oldest kept (a gap)."""
        resumed, self._resumed = self._resumed, None
        assert resumed is not None
        first = self._parser.first_cursor
        if first == resumed.cursor:
            return lines[1:]
        self.gaps += 1
        lost_from = cursor_time(resumed.cursor)
        self.last_gap = (
            f"the journal no longer holds the entry of the saved cursor"
            f" ({lost_from.isoformat() if lost_from else resumed.cursor}); resumed at the"
            f" oldest entry kept: entries between may be lost"
        )
        log.warning(
            "%s: %s (vacuumed by journald: SystemMaxUse, MaxRetentionSec, or"
            " journalctl --vacuum-*; or journal-match changed); gap %d",
            self.describe(),
            self.last_gap,
            self.gaps,
        )
        return lines


LogSource = Follower | JournalReader


def open_source(
    config: Config,
    position: Position | JournalPosition | None,
    gather: float = 0.0,
    last_line: float = 0.0,
) -> LogSource:
    """The reader ``log-source`` names, at ``position``. ``gather``: how long a busy log
    file's lines are gathered into one batch (see ``Follower``). A cursor of the other
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
