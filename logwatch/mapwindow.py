"""Map rows read ahead in insertion order: the cheap way to join a log read in bulk.

The milter writes a message's row when Postfix receives it, and nearly all of its
status lines follow within seconds. So rows are read in insertion order up to a little
past the log's time, which costs about a third of looking each queue ID up (bench/map.py
figures in docs/PERFORMANCE.md), and kept for ``keep`` seconds of log time.

Answers are those of a lookup: a reused queue ID's newer row (INSERT OR REPLACE gives it
a higher number) is read before the window answers for lines logged up to ``now``,
because every row received by ``now + AHEAD`` has been read; whenever reading stops
short of that, this call's queue IDs are all looked up instead. Queue IDs not in the
window are looked up one by one as before.

One deliberate difference: a row read ahead (received after the log's time) that is
replaced meanwhile by a reused queue ID's newer row, or pruned, is still taken when the
log reaches its time. Lines logged before the newer message was received are answered
with the older row, the message they belong to (a lookup would give the newer one);
the newer row is taken once the log reaches its receipt, as before.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from sendpost_agent.queuemap import Entry, MapReader

KEEP: Final = 60.0  # seconds of log time a row is kept beyond join-wait
AHEAD: Final = 5.0  # seconds past the log's time: the milter's clock and syslog's may differ
SCAN_ROWS = 1000  # rows per read
MAX_ROWS_PER_CALL = 50_000  # a window far behind the log catches up over several calls
# About 9 MiB with 1-3 recipients a row: at higher rates the oldest rows are looked up again.
MAX_KEPT = 20_000


class MapWindow:
    def __init__(self, reader: MapReader, keep: float) -> None:
        self._reader = reader
        self._keep = keep
        self._rows: dict[str, Entry] = {}
        self._order: deque[tuple[int, str]] = deque()  # (received_at, queue ID), oldest first
        self._next_id: int | None = None  # first row not read yet; None: not placed yet
        self._ahead: deque[tuple[int, str, Entry]] = deque()  # read, received after the log

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, queue_ids: list[str], now: float) -> dict[str, Entry]:
        """Rows of ``queue_ids`` (missing ones left out) for lines logged up to ``now``."""
        if self._next_id is None and queue_ids:
            # Rows older than the window would be forgotten at once: a retry of a message
            # received days ago must not place the window days back.
            self._next_id = self._reader.first_id(queue_ids, since=now - self._keep)
        self._forget(now - self._keep)
        if not self._read_ahead(now + AHEAD):
            return self._reader.get_many(queue_ids)
        rows = self._rows
        found: dict[str, Entry] = {}
        missing = []
        for queue_id in queue_ids:
            entry = rows.get(queue_id)
            if entry is None:
                missing.append(queue_id)
            else:
                found[queue_id] = entry
        if missing:
            found.update(self._reader.get_many(missing))
        return found

    def _read_ahead(self, until: float) -> bool:
        """Take rows in insertion order up to the first one received after ``until``;
        False when it stopped short (the window's answers may be stale then).

        Rows read past ``until`` wait in ``_ahead`` for a later call: a live log comes in
        small batches, and reading them again each time cost more than the lookups saved.
        """
        if self._next_id is None:
            return False
        rows, order, ahead = self._rows, self._order, self._ahead
        for _ in range(max(1, -(-MAX_ROWS_PER_CALL // SCAN_ROWS))):
            caught_up = False
            if not ahead:
                batch = self._reader.scan(self._next_id, SCAN_ROWS)
                if not batch:
                    if self._reader.last_id() < self._next_id - 1:
                        self._next_id = None  # the table was emptied: numbering restarted
                        return False
                    return True
                self._next_id = batch[-1][0] + 1
                ahead.extend(batch)
                caught_up = len(batch) < SCAN_ROWS
            while ahead:
                _, queue_id, entry = ahead[0]
                if entry.received_at > until:
                    return True
                ahead.popleft()
                rows[queue_id] = entry
                order.append((entry.received_at, queue_id))
                if len(order) > MAX_KEPT:
                    self._drop_oldest()
            if caught_up:
                return True
        return False

    def _forget(self, horizon: float) -> None:
        order = self._order
        while order and order[0][0] < horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        received_at, queue_id = self._order.popleft()
        entry = self._rows.get(queue_id)
        if entry is not None and entry.received_at == received_at:  # not a newer row's
            del self._rows[queue_id]
