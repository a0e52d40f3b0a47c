"""Mail log lines in, events out: decode, parse, join and track. Shared by replay and logwatch.

Pure apart from the map lookups; the caller does the reading and decides where the
events go, so both commands classify exactly alike.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Callable
from enum import Enum
from typing import Final

from logwatch.events import Event
from logwatch.mapwindow import KEEP, MapWindow
from logwatch.parse import (
    Clock,
    Delivery,
    Expired,
    Record,
    Skipped,
    may_matter,
    parse_block,
    parse_line,
)
from logwatch.relays import ContentFilters
from logwatch.tracker import Tracker
from sendpost_agent.config import Config
from sendpost_agent.queuemap import Entry, MapReader

log = logging.getLogger(__name__)


class _Row(Enum):
    """A queue ID the batch did not look up (a map row may be None: not in the map)."""

    NOT_FETCHED = 0


# One dict lookup per row the batch fetched, where `in` then `[]` took two (0.27% more
# instructions replaying 100,000 lines against a map); a one-member Enum, unlike object(),
# is a sentinel the type checker narrows away.
_NOT_FETCHED: Final = _Row.NOT_FETCHED
_INTERNAL_ERROR: Final = "internal error"  # the skip reason of a line a bug met


class Pipeline:
    def __init__(
        self,
        config: Config,
        reader: MapReader | None,
        filters: ContentFilters,
        clock: Clock,
        trusts_client: Callable[[str], bool] | None = None,
    ) -> None:
        """``trusts_client``: see ``Tracker``; the agent passes ``trust.info_line_check``."""
        self.clock = clock
        self._keep = config.join_wait + KEEP
        self.use_map(reader)
        self._batch_rows: dict[str, Entry | None] = {}
        self.tracker = Tracker(
            self._lookup,
            filters,
            wait=config.join_wait,
            report_deferred=config.report_deferred,
            forget_after=config.map_retention,
            on_error=self._internal_error,
            trusts_client=trusts_client,
        )
        self._message_ids = bool(filters.pipes)  # only a pipe filter's hop needs them
        self.lines_read = 0
        self.lines_parsed = 0
        self.skipped: Counter[str] = Counter()
        # Attributes, not module names, so that a test can make them fail (compiled, a
        # call to a module's function does not look the name up).
        self.parse_block: Callable[[list[bytes], Clock, bool], list[Record | Skipped]] = parse_block
        self.parse_line: Callable[[str, Clock], Record | Skipped | None] = parse_line

    def use_map(self, reader: MapReader | None) -> None:
        """Join against ``reader`` from now on (also when the map file was replaced)."""
        self._reader = reader
        self._window = None if reader is None else MapWindow(reader, self._keep)

    def wants(self, message: str) -> bool:
        """Whether a journal entry's message may give an event: the others need not
        become lines (``parse.may_matter``)."""
        return may_matter(message, self._message_ids)

    def process(self, lines: list[bytes], read: int | None = None) -> list[Event]:
        """One batch of complete lines -> the events they complete, in log order.
        ``read``: how many lines the source read for them, when it left out those
        ``wants`` refused (counted as read all the same)."""
        records: list[Record] = []
        skipped = self.skipped
        try:
            parsed = self.parse_block(lines, self.clock, self._message_ids)
        except Exception:
            parsed = self._parse_each(lines)
        for record in parsed:
            if isinstance(record, Skipped):
                skipped[record.reason] += 1
            else:
                records.append(record)
        self.lines_read += len(lines) if read is None else read
        self.lines_parsed += len(records)
        self._prefetch(records)
        events: list[Event] = []
        feed = self.tracker.feed
        for record in records:
            events += feed(record)  # the tracker guards each line itself (on_error)
        events += self.tracker.tick()
        self._batch_rows = {}
        return events

    # A bug must cost the line it met, not the agent: a crash would recur on the same
    # line after every restart. The line is counted and logged, ever more sparsely.

    def _parse_each(self, lines: list[bytes]) -> list[Record | Skipped]:
        """``parse_block``, one line at a time: only after it raised on one of them."""
        out: list[Record | Skipped] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            try:
                record = self.parse_line(line, self.clock)
            except Exception:
                self._internal_error("parsing", line)
                continue
            if record is not None:
                out.append(record)
        return out

    def _internal_error(self, doing: str, what: object) -> None:
        self.skipped[_INTERNAL_ERROR] += 1
        count = self.skipped[_INTERNAL_ERROR]
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th...: bounded, never silent
            log.exception(
                "internal error #%d %s %.500r; skipped and counted"
                " (skipped:internal error): please report it with this line",
                count,
                doing,
                what,
            )

    def _prefetch(self, records: list[Record]) -> None:
        """Look up the batch's queue IDs in a few queries instead of one per line."""
        if self._window is None or not records:
            return
        wanted = {r.queue_id for r in records if isinstance(r, (Delivery, Expired))}
        messages = self.tracker.messages
        if messages:
            wanted = {q for q in wanted if (m := messages.get(q)) is None or m.uuid is None}
        rows: dict[str, Entry | None] = dict.fromkeys(wanted)
        rows.update(self._window.get_many(list(wanted), records[-1].time.timestamp()))
        self._batch_rows = rows

    def _lookup(self, queue_id: str) -> Entry | None:
        entry = self._batch_rows.get(queue_id, _NOT_FETCHED)
        if entry is not _NOT_FETCHED:
            return entry
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
