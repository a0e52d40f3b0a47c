"""Mail log lines in, events out: decode, parse, join and track. Shared by replay and logwatch.

Pure apart from the map lookups; the caller does the reading and decides where the
events go, so both commands classify exactly alike.
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Final

from logwatch.events import Event
from logwatch.mapwindow import KEEP, MapWindow
from logwatch.parse import Clock, Delivery, Expired, Record, Skipped, parse_block
from logwatch.relays import ContentFilters
from logwatch.tracker import Tracker
from sendpost_agent.config import Config
from sendpost_agent.queuemap import Entry, MapReader

_NOT_FETCHED: Final = object()


class Pipeline:
    def __init__(self, config: Config, reader: MapReader | None, filters: ContentFilters,
                 clock: Clock) -> None:
        self.clock = clock
        self._reader = reader
        self._window = None if reader is None else MapWindow(reader, config.join_wait + KEEP)
        self._batch_rows: dict[str, Entry | None] = {}
        self.tracker = Tracker(self._lookup, filters, wait=config.join_wait,
                               report_deferred=config.report_deferred,
                               forget_after=config.map_retention)
        self.lines_read = 0
        self.lines_parsed = 0
        self.skipped: Counter[str] = Counter()

    def process(self, lines: list[bytes]) -> list[Event]:
        """One batch of complete lines -> the events they complete, in log order."""
        records: list[Record] = []
        skipped = self.skipped
        for record in parse_block(lines, self.clock):
            if type(record) is Skipped:
                skipped[record.reason] += 1
            else:
                records.append(record)  # type: ignore[arg-type]
        self.lines_read += len(lines)
        self.lines_parsed += len(records)
        self._prefetch(records)
        events: list[Event] = []
        feed = self.tracker.feed
        for record in records:
            events += feed(record)
        events += self.tracker.tick()
        self._batch_rows = {}
        return events

    def _prefetch(self, records: list[Record]) -> None:
        """Look up the batch's queue IDs in a few queries instead of one per line."""
        if self._window is None or not records:
            return
        wanted = {r.queue_id for r in records if type(r) is Delivery or type(r) is Expired}
        messages = self.tracker.messages
        if messages:
            wanted = {q for q in wanted if (m := messages.get(q)) is None or m.uuid is None}
        rows: dict[str, Entry | None] = dict.fromkeys(wanted)
        rows.update(self._window.get_many(list(wanted), records[-1].time.timestamp()))
        self._batch_rows = rows

    def _lookup(self, queue_id: str) -> Entry | None:
        entry = self._batch_rows.get(queue_id, _NOT_FETCHED)
        if entry is not _NOT_FETCHED:
            return entry  # type: ignore[return-value]
        return self._reader.get(queue_id) if self._reader is not None else None

    def finish(self) -> list[Event]:
        return self.tracker.finish()

    def counts(self) -> dict[str, int]:
        """Every line that gave no event, by reason (for the summary and metrics)."""
        out = {f"skipped:{k}": v for k, v in self.skipped.items()}
        out.update(self.tracker.counts)
        return out


def tune_gc() -> None:
    """Run the cyclic garbage collector about 15 times less often.

    The pipeline makes no reference cycles (reference counting frees everything) but
    allocates several objects per log line; at the default threshold the collector ran
    every 700 of them and walked the tracker's state whenever it escalated: a quarter of
    replay's time. Objects from startup are frozen out of its view.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
