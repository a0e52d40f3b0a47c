"""Map rows committed in groups by a thread of their own, after the message's answer.

A commit per message was the largest part of the milter's cost above the least a
pymilter milter can do (an SQLite transaction: locks on the -shm file, WAL frames
written; docs/PERFORMANCE.md). End-of-message now only queues its row, and this thread
commits whatever has queued ``GROUP_WINDOW`` after the first row of a group: at
hundreds of messages a second one commit carries many rows, and the answer never waits
for the disk or for a lock on the map.

What that costs, bounded (docs/GUARANTEES.md):

* a row is visible to logwatch about ``GROUP_WINDOW`` after the answer (plus its
  commit), well within logwatch's join-wait: a status line read before its row waits
  for it like any line whose row is not known yet;
* a crash of the milter (kill -9, out of memory) loses the rows not committed yet:
  those of the messages answered within the last ``GROUP_WINDOW`` (plus the commit in
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
    """Queue rows from any thread (``put``); one thread commits them in order."""

    def __init__(
        self, writer: MapWriter, metrics: MilterMetrics, window: float = GROUP_WINDOW
    ) -> None:
        self.path = writer.path
        self._writer = writer
        self._metrics = metrics
        self._window = window
        self._rows: list[Row] = []
        self._committing = 0  # rows taken from _rows, commit not finished
        self._lock = threading.Lock()
        self._queued = threading.Event()  # set by a group's first row
        self._closing = threading.Event()
        # Read when /metrics is scraped: nothing to count per message.
        metrics.map_rows_pending.set_function(lambda: len(self._rows) + self._committing)
        self._thread = threading.Thread(target=self._run, name="queuemap-writer")
        self._thread.start()

    def put(self, row: Row) -> None:
        """Queue a row; only the first of a group wakes the writer (one wake-up a group)."""
        with self._lock:
            self._rows.append(row)
            if len(self._rows) > 1:
                return
        self._queued.set()

    def close(self) -> None:
        """Commit every queued row and stop; call it after the last ``put``."""
        self._closing.set()
        self._queued.set()
        self._thread.join()

    def _run(self) -> None:
        closing = self._closing
        while not closing.is_set() or self._rows:
            self._queued.wait()
            closing.wait(self._window)  # gather the group; a stop commits at once
            with self._lock:
                rows, self._rows = self._rows, []
                self._committing = len(rows)
                self._queued.clear()
            if rows:
                self._commit(rows)
            self._committing = 0

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
