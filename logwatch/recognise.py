"""Telling the events the log gives again after an unclean stop from new ones.

After a kill -9 the log is read again from the cursor, and the WAL already holds the
events written after that cursor was saved (``Wal.kept``). Re-read, the same lines give
the same events, byte for byte (the event JSON depends on the line and its map row
only), but not always in the same order: a status line read before the milter committed
its row was held for ``join-wait`` and gave its event late; read again, it finds the row
and gives it at once. So the events are recognised by their bytes, as a multiset: each
one remembered takes one copy produced again, whatever the order.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime


class Remembered:
    """The events the WAL holds from lines after the cursor, not recognised yet."""

    def __init__(self, events: list[bytes], join_wait: float) -> None:
        self._left = Counter(events)
        self.left = len(events)
        # Each event is produced by its line, or when that line's wait is over: its
        # timestamp (the line's log time) plus join-wait at the latest. Once the log's
        # time is past the newest such deadline, what is still remembered will never
        # come again (its text changed: a map row or the config changed meanwhile).
        times = [t for t in map(_log_time, events) if t is not None]
        self.until = max(times, default=-math.inf) + join_wait

    def take(self, event: bytes) -> bool:
        """Whether ``event`` was remembered: then it counts as produced again, once."""
        count = self._left.get(event, 0)
        if not count:
            return False
        if count == 1:
            del self._left[event]
        else:
            self._left[event] = count - 1
        self.left -= 1
        return True

    def done(self, log_time: float) -> bool:
        """Everything remembered is recognised, or the log is past where it could be."""
        return not self.left or log_time >= self.until


def _log_time(event: bytes) -> float | None:
    """The event's timestamp in epoch seconds (None: not an event of this agent's)."""
    try:
        doc = json.loads(event)
        return datetime.fromisoformat(doc["timestamp"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None
