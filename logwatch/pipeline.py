"""Mail log lines in, events out: decode, parse, join and track. Shared by replay and logwatch.

Pure apart from the map lookups; the caller does the reading and decides where the
events go, so both commands classify exactly alike.
"""

from __future__ import annotations

from collections import Counter

from logwatch.events import Event
from logwatch.parse import Clock, Delivery, Expired, Record, Skipped, parse_line
from logwatch.relays import ContentFilters
from logwatch.tracker import Tracker
from sendpost_agent.config import Config
from sendpost_agent.queuemap import Entry, MapReader


class Pipeline:
    def __init__(self, config: Config, reader: MapReader | None, filters: ContentFilters,
                 clock: Clock) -> None:
        self.clock = clock
        self._reader = reader
        self._batch_rows: dict[str, Entry | None] = {}
        self.tracker = Tracker(self._lookup, filters, wait=config.join_wait,
                               report_deferred=config.report_deferred,
                               forget_after=config.map_retention)
        self.lines_read = 0
        self.lines_parsed = 0
        self.skipped: Counter[str] = Counter()

    def process(self, lines: list[bytes]) -> list[Event]:
        """One batch of complete lines -> the events they complete, in log order."""
        clock, skipped = self.clock, self.skipped
        records = []
        for raw in lines:
            record = parse_line(raw.decode("utf-8", "replace"), clock)
            if record is None:
                continue
            if isinstance(record, Skipped):
                skipped[record.reason] += 1
                continue
            records.append(record)
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
        """Look up the batch's unknown queue IDs in one query instead of one per line."""
        if self._reader is None:
            return
        messages = self.tracker.messages
        wanted = []
        for r in records:
            if isinstance(r, Delivery | Expired):
                message = messages.get(r.queue_id)
                if message is None or message.uuid is None:
                    wanted.append(r.queue_id)
        wanted = list(set(wanted))
        rows: dict[str, Entry | None] = dict.fromkeys(wanted)
        rows.update(self._reader.get_many(wanted))
        self._batch_rows = rows

    def _lookup(self, queue_id: str) -> Entry | None:
        if queue_id in self._batch_rows:
            return self._batch_rows[queue_id]
        return self._reader.get(queue_id) if self._reader is not None else None

    def finish(self) -> list[Event]:
        return self.tracker.finish()

    def counts(self) -> dict[str, int]:
        """Every line that gave no event, by reason (for the summary and metrics)."""
        out = {f"skipped:{k}": v for k, v in self.skipped.items()}
        out.update(self.tracker.counts)
        return out
