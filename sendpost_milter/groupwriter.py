"""Map rows committed in groups when mail is busy, one by one when it is quiet.

A commit per message was the largest part of the milter's cost above the least a
pymilter milter can do (an SQLite transaction: locks on the -shm file, WAL frames
written; docs/PERFORMANCE.md). So there is at most one commit per ``GROUP_WINDOW``:

* a message that comes when no row is waiting and the last commit is at least
  ``GROUP_WINDOW`` old has its row committed at once, before its answer, as always;
* any other message's row is queued and committed, after its answer, with every row
  queued until then, by this module's thread ``GROUP_WINDOW`` after the last commit
  ended. At hundreds of messages a second one commit carries many rows.

What that costs, bounded (docs/GUARANTEES.md):

* a queued row is visible to logwatch within the commit in progress plus
  ``GROUP_WINDOW`` after the answer, plus its own commit (up to ``WRITER_PATIENCE``
  more while another writer locks the map), well within logwatch's join-wait: a status
  line read before its row waits for it like any line whose row is not known yet;
* a crash of the milter (kill -9, out of memory) loses the rows not committed yet:
  those answered since the last commit that completed. The header_checks INFO rule,
  where setup installs it, gives logwatch their UUID anyway;
  ``sendpost_milter_map_rows_pending`` shows how many are at stake;
* a stop (SIGTERM, systemctl stop) commits every queued row before the process exits;
  a row put after that is committed at once;
* memory: should the map stay locked or slow while mail comes, the rows queued take at
  most ``MAX_QUEUED_BYTES`` (and the group being committed at most as much again); past
  that the oldest are dropped, counted and logged. No message waits for the map
  instead (a put that committed itself would hold its message).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Final

from sendpost_agent.queuemap import MapWriter, Row, is_busy
from sendpost_milter.metrics import MilterMetrics

log = logging.getLogger("sendpost_milter")
GROUP_WINDOW: Final = 0.02  # seconds from one commit to the next, at the least
# Seconds the writer thread tries a locked map again (a quiet put, before its answer,
# does not: see MapWriter), and how often.
WRITER_PATIENCE: Final = 2.0
BUSY_RETRY_EVERY: Final = 0.05
# Memory the queued rows may take (estimated: ROW_BYTES plus the recipients' text), about
# 50,000 messages of one recipient, minutes of mail at hundreds a second; a drop leaves
# DROP_TO of it, so that drops and their log lines come in chunks, not one per message.
MAX_QUEUED_BYTES: Final = 16 * 1024 * 1024
# A row's memory besides its recipients' text, measured in CPython 3.11 (tuple, queue ID,
# UUID bytes, timestamp, the text's str header, the list slot: about 290 bytes, and
# more with the allocator's rounding), so that the bound holds in the process's memory.
ROW_BYTES: Final = 320
DROP_TO: Final = 0.75
# Errors caused by one row (a value SQLite refuses or cannot bind): the rest of its
# group is written without it. OperationalError and DatabaseError (a full disk, an I/O
# error, a read-only or corrupt map) are not among them: every row would fail alike.
ROW_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    UnicodeEncodeError,
    ValueError,
    TypeError,
    OverflowError,
)


class GroupWriter:
    """``put`` from any thread; rows are committed in the order they were put."""

    def __init__(
        self,
        writer: MapWriter,
        metrics: MilterMetrics,
        window: float = GROUP_WINDOW,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.path = writer.path
        self._writer = writer
        self._metrics = metrics
        self._window = window
        self._max_queued_bytes = max_queued_bytes
        self._lock = threading.Lock()  # guards the six below
        self._rows: list[Row] = []  # queued for the writer thread
        self._queued_bytes = 0  # their estimated memory
        self._committing = 0  # rows in the commits running
        self._next_commit = 0.0  # monotonic time before which rows are queued
        self._stopped = False  # the writer thread has ended: put commits its row itself
        self._queued = threading.Event()  # rows wait for the writer thread
        self._closing = threading.Event()
        # Read when /metrics is scraped: nothing to count per message.
        metrics.map_rows_pending.set_function(self._pending)
        self._thread = threading.Thread(target=self._run, name="queuemap-writer")
        self._thread.start()

    def put(self, row: Row) -> None:
        """Commit the row now if mail is quiet (or the writer thread has ended, as when
        a message ends after a stop), else queue it for the writer thread."""
        dropped: list[Row] = []
        with self._lock:
            if self._stopped:
                rows, self._rows = [*self._rows, row], []
                self._queued_bytes = 0
            elif not self._rows and not self._committing and time.monotonic() >= self._next_commit:
                rows = [row]
            else:
                self._rows.append(row)
                self._queued_bytes += ROW_BYTES + len(row[4] or "")
                if self._queued_bytes > self._max_queued_bytes:
                    dropped = self._drop_oldest()
                elif len(self._rows) > 1:
                    return  # the writer thread was woken by the group's first row
                rows = []
            self._committing += len(rows)
        if dropped:
            limit = f"{self._max_queued_bytes / 2**20:g} MiB"
            self._lost(dropped, f"locked or slow, the rows waiting reached {limit}, oldest dropped")
        if not rows:
            if not self._queued.is_set():  # set already while the writer gathers a group
                self._queued.set()
            return
        try:
            self._commit(rows, patience=0.0)
        finally:
            self._committed(len(rows))

    def _drop_oldest(self) -> list[Row]:
        """Under the lock: take the oldest queued rows out until DROP_TO of the bound is
        left (the newest row always stays: its message is still in the MTA's hands)."""
        target = self._max_queued_bytes * DROP_TO
        count, freed = 0, 0
        while self._queued_bytes - freed > target and count < len(self._rows) - 1:
            freed += ROW_BYTES + len(self._rows[count][4] or "")
            count += 1
        dropped = self._rows[:count]
        del self._rows[:count]
        self._queued_bytes -= freed
        return dropped

    def close(self) -> None:
        """Commit every queued row and stop the thread; a later ``put`` commits at once."""
        self._closing.set()
        self._queued.set()
        self._thread.join()

    def _pending(self) -> int:
        with self._lock:  # never 0 between taking a group and counting it as committing
            return len(self._rows) + self._committing

    def _run(self) -> None:
        try:
            while self._step():
                pass
        finally:
            with self._lock:
                self._stopped = True

    def _step(self) -> bool:
        """Commit one group; False once closing with nothing queued. An unexpected error
        is counted and logged, and the thread goes on: a dead thread would lose every
        later row silently."""
        closing = self._closing
        try:
            self._queued.wait()
            with self._lock:
                delay = self._next_commit - time.monotonic()
            if delay > 0 and not closing.is_set():
                closing.wait(delay)  # gather the group; a stop commits at once
            with self._lock:
                if self._committing:
                    self._queued.clear()
                    return True  # a put commits its row; it wakes us when done
                rows, self._rows = self._rows, []
                self._queued_bytes = 0
                if not rows:
                    if closing.is_set():
                        self._stopped = True  # under the lock: no put queues a row after this
                        return False
                    self._queued.clear()  # idle until a put queues the next group's first row
                    return True
                self._committing += len(rows)
            try:
                self._commit(rows, patience=WRITER_PATIENCE)
            finally:
                self._committed(len(rows))
        except Exception:
            self._metrics.errors.inc()
            log.exception("internal error in the queue map writer %s; it goes on", self.path)
        return True

    def _committed(self, count: int) -> None:
        with self._lock:
            self._committing -= count
            self._next_commit = time.monotonic() + self._window
            if (self._rows or self._closing.is_set()) and not self._queued.is_set():
                self._queued.set()

    def _commit(self, rows: list[Row], patience: float) -> None:
        """Failures cost the rows at fault, counted and logged in one line; the thread
        goes on.

        A locked map is tried again for ``patience`` seconds (the writer thread's rows
        are answered already: waiting delays no mail), once for the whole group, row by
        row retries included. A group refused for one of its rows (ROW_ERRORS) is tried
        again row by row, so that one bad row costs only itself; any other failure (a
        full disk, a read-only or corrupt map) would fail every row alike, so the group
        is lost at once rather than written and logged row by row."""
        started = time.perf_counter()
        give_up = time.monotonic() + patience
        try:
            self._put_many(rows, give_up)
        except Exception as exc:
            if len(rows) == 1 or not isinstance(exc, ROW_ERRORS):
                self._lost(rows, exc)
                return
            lost, cause = self._put_one_by_one(rows, give_up)
            if lost:
                self._lost(lost, cause or exc)
            if len(lost) == len(rows):
                return
        self._metrics.map_write_seconds.observe(time.perf_counter() - started)

    def _put_one_by_one(
        self, rows: list[Row], give_up: float
    ) -> tuple[list[Row], Exception | None]:
        """The rows not written, and the first error: after one not caused by its row,
        the rest are not tried (they would fail alike)."""
        lost: list[Row] = []
        cause: Exception | None = None
        for i, one in enumerate(rows):
            try:
                self._put_many([one], give_up)
            except Exception as exc:
                cause = cause or exc
                if not isinstance(exc, ROW_ERRORS):
                    return [*lost, *rows[i:]], cause
                lost.append(one)
        return lost, cause

    def _put_many(self, rows: list[Row], give_up: float) -> None:
        """Write the rows, trying a locked map again until ``give_up`` (monotonic)."""
        while True:
            try:
                self._writer.put_many(rows)
                return
            except Exception as exc:
                if not is_busy(exc) or time.monotonic() >= give_up:
                    raise
                time.sleep(BUSY_RETRY_EVERY)

    def _lost(self, rows: list[Row], cause: Exception | str) -> None:
        self._metrics.map_write_errors.inc(len(rows))
        log.error(
            "cannot write the queue map %s: %s; %d rows lost (queue IDs %s)",
            self.path,
            cause,
            len(rows),
            ", ".join(str(r[0]) for r in rows[:10]) + (", ..." if len(rows) > 10 else ""),
        )
