"""Map rows committed in groups when mail is busy, one by one when it is quiet.

A commit per message was the largest part of the milter's cost above the least a
pymilter milter can do (an SQLite transaction: locks on the -shm file, WAL frames
written; docs/PERFORMANCE.md). So there is at most one commit per ``GROUP_WINDOW``:

* a message that comes when no row is waiting and the last commit is at least
  ``GROUP_WINDOW`` old has its row committed at once, before its answer, as always;
* any other message's row is queued and committed, after its answer, with every row
  queued until then, by this module's thread ``GROUP_WINDOW`` after the last commit.
  At hundreds of messages a second one commit carries many rows.

What that costs, bounded (docs/GUARANTEES.md):

* a queued row is visible to logwatch within ``GROUP_WINDOW`` after the answer (plus
  its commit), well within logwatch's join-wait: a status line read before its row
  waits for it like any line whose row is not known yet;
* a crash of the milter (kill -9, out of memory) loses the rows not committed yet:
  those of the messages answered within the last ``GROUP_WINDOW`` (plus a commit in
  progress). The header_checks INFO rule, where setup installs it, gives logwatch their
  UUID anyway; ``sendpost_milter_map_rows_pending`` shows how many are at stake;
* a stop (SIGTERM, systemctl stop) commits every queued row before the process exits.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from sendpost_agent.queuemap import MapWriter, Row
from sendpost_milter.metrics import MilterMetrics

log = logging.getLogger("sendpost_milter")
GROUP_WINDOW: Final = 0.02  # seconds from a group's first row to its commit


class GroupWriter:
    """``put`` from any thread; rows are committed in the order they were put."""

    def __init__(
        self, writer: MapWriter, metrics: MilterMetrics, window: float = GROUP_WINDOW
    ) -> None:
        self.path = writer.path
        self._writer = writer
        self._metrics = metrics
        self._window = window
        self._lock = threading.Lock()  # guards the four below
        self._rows: list[Row] = []  # queued for the writer thread
        self._committing = 0  # rows in the commit running (one at a time)
        self._next_commit = 0.0  # monotonic time before which rows are queued
        self._queued = threading.Event()  # rows wait for the writer thread
        self._closing = threading.Event()
        # Read when /metrics is scraped: nothing to count per message.
        metrics.map_rows_pending.set_function(self._pending)
        self._thread = threading.Thread(target=self._run, name="queuemap-writer")
        self._thread.start()

    def put(self, row: Row) -> None:
        """Commit the row now if mail is quiet, else queue it for the writer thread."""
        with self._lock:
            quiet = not self._rows and not self._committing
            at_once = quiet and time.monotonic() >= self._next_commit
            if at_once:
                self._committing = 1
            else:
                self._rows.append(row)
                if len(self._rows) > 1:
                    return  # the writer thread was woken by the group's first row
        if not at_once:
            self._queued.set()
            return
        try:
            self._commit([row])
        finally:
            self._committed()

    def close(self) -> None:
        """Commit every queued row and stop; call it after the last ``put``."""
        self._closing.set()
        self._queued.set()
        self._thread.join()

    def _pending(self) -> int:
        return len(self._rows) + self._committing

    def _run(self) -> None:
        closing = self._closing
        while True:
            self._queued.wait()
            with self._lock:
                delay = self._next_commit - time.monotonic()
            if delay > 0 and not closing.is_set():
                closing.wait(delay)  # gather the group; a stop commits at once
            with self._lock:
                self._queued.clear()
                if self._committing:
                    continue  # a put commits its row; it wakes us when done
                rows, self._rows = self._rows, []
                self._committing = len(rows)
                if not rows and closing.is_set():
                    return
            if rows:
                try:
                    self._commit(rows)
                finally:
                    self._committed()

    def _committed(self) -> None:
        with self._lock:
            self._committing = 0
            self._next_commit = time.monotonic() + self._window
            if self._rows or self._closing.is_set():
                self._queued.set()

    def _commit(self, rows: list[Row]) -> None:
        """Failures cost the group's rows, counted and logged; the thread goes on."""
        metrics = self._metrics
        started = time.perf_counter()
        try:
            self._writer.put_many(rows)
        except Exception as exc:
            metrics.map_write_errors.inc(len(rows))
            log.error(
                "cannot write the queue map %s: %s; %d rows lost (queue IDs %s)",
                self.path,
                exc,
                len(rows),
                ", ".join(r[0] for r in rows[:10]) + (", ..." if len(rows) > 10 else ""),
            )
            return
        metrics.map_write_seconds.observe(time.perf_counter() - started)
