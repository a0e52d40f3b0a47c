"""Follows each message through the log and decides which events it produces.

The only stateful step between parsing and shipping. It joins status lines with the
queue map, carries a UUID across content-filter hops, remembers deferred recipients
so that an expiry (which names none) yields one event per recipient, and holds lines it
cannot decide yet for a bounded time (``join-wait``, measured in log time):

* a status line whose queue ID has no UUID yet: the map row, the header_checks INFO
  line or the hop that created this queue ID may still come (at a content filter the
  re-injected message's lines can precede the hop's ``queued as`` line). One whose UUID
  only a header_checks INFO line gives waits the whole time, unless it is a hop line;
* a ``status=sent ... queued as NEWID`` to a local relay that is not a configured
  content filter: a hop if NEWID shows up in this log, else a real delivery (a local
  smarthost), reported when the wait ends. Remote relays are deliveries at once;
* a hop to a pipe content filter (``relay=SERVICE``, no new queue ID): its copy, queued
  by pickup with the same Message-ID within the wait before or after it, goes on under
  its UUID (``_pipe_hop``).
* a delivery of a re-injected message (after a hop) to an address its envelope does not
  name: another line of the hop (logged later) may still map it back to one.

An event names the recipient SendPost gave Postfix (RCPT TO, which the milter records in
the map): ``orig_to`` when Postfix rewrote it (aliases, virtual, canonical), else ``to``.
A delivery to an address the envelope does not name was added by Postfix (always_bcc,
sender/recipient_bcc_maps): no event. After a hop the re-injected message is checked
against the original message's envelope, its addresses mapped back through the hop's
``to``/``orig_to`` pairs.

Nothing is reported twice and nothing is dropped silently: every line that yields no
event is counted in ``counts`` by reason.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from logwatch.classify import EventType, Verdict, event_for_status, expired_verdict
from logwatch.events import Event
from logwatch.parse import (
    Delivery,
    Expired,
    HeaderInfo,
    MessageId,
    Notification,
    Pickup,
    QueueActive,
    Record,
    Removed,
)
from logwatch.relays import ContentFilters, is_local, parse_relay, queued_as
from sendpost_agent.header import HEADER_NAME, uuid_text
from sendpost_agent.queuemap import Entry, HeaderState, MapError

Lookup = Callable[[str], Entry | None]
OnError = Callable[[str, object], None]  # (what it was doing, the record): count, log
GC_EVERY: Final = 3600.0  # log seconds between sweeps of stale state
Decidable = Delivery | Expired
_HEADER_LOWER: Final = HEADER_NAME.lower()
_NO_MESSAGE_ID: Final = ("", "<>")  # cleanup logs `message-id=<>` for mail without one
_UNKNOWN: Final[tuple[str, ...]] = ()  # an inherited envelope nobody recorded
log = logging.getLogger(__name__)


@dataclass(slots=True)
class Message:
    """What we know of one queue ID beyond the map.

    Only messages that need it have one (deferred recipients, Postfix's own, a UUID
    that is not in the map): one per message would cost time on every line and memory.
    """

    uuid: str | None = None  # from a hop or a requeue; the map's once deferred
    from_map: bool = False  # uuid can be looked up again: no need to persist it
    ndr: bool = False  # Postfix's own bounce/notification message
    # Never passed the milter (made by Postfix, or queued by pickup): a map row under its
    # queue ID is an older message's that had the same (reused) ID.
    no_milter: bool = False
    # From header_checks INFO lines ("" when they disagree or name an untrusted client):
    # taken only where the milter recorded no row or no header. Decided when a status
    # line needs it, not when the INFO line comes: the milter writes its row at
    # end-of-message, after that line.
    info_uuid: str | None = None
    # Re-injected by a content filter from a message whose client was not trusted
    # (HeaderState.UNTRUSTED): the trust of the message it came from, whatever the
    # milter recorded for the re-injection (its client, the filter, is local).
    untrusted: bool = False
    deferred: dict[str, Verdict] = field(default_factory=dict)  # to -> last deferral
    seen: float = 0.0  # log time of the last line, for garbage collection
    # The recipients SendPost gave: from_map, the map row's, kept so that retries long
    # after the row left the read-ahead window cost no lookup (not persisted: it can be
    # looked up again). Else inherited from the message this one was re-injected or
    # re-queued from (the row under this queue ID names the hop's addresses, not
    # SendPost's). _UNKNOWN: no filtering. None: not known here, the map's row applies.
    envelope: tuple[str, ...] | None = None
    # After a hop: an address this message was sent to (lower case) -> the address
    # SendPost gave (from the hop's to/orig_to). Only rewritten ones.
    aliases: dict[str, str] | None = None
    # Deferred ``to`` -> the address the events name, where they differ.
    deferred_as: dict[str, str] | None = None
    # Its ``removed`` line came while lines of it were held: forgotten once they are
    # decided (a queue ID may be reused; GC would take a week).
    removed: bool = False


# Compared by identity (each held item is one object): a dataclass's generated __eq__ and
# __lt__ are interpreted Python, which the heap called about 20 times per held line.
@dataclass(eq=False, slots=True)
class _Held:
    deadline: float
    queue_id: str
    record: Decidable
    hop_to: str | None = None  # presumed hop's NEWID
    uuid: str | None = None
    message_id: str | None = None  # a pipe filter hop's
    linked: bool = False  # a copy of its message came back


class Tracker:
    def __init__(
        self,
        lookup: Lookup,
        filters: ContentFilters,
        *,
        wait: float = 30.0,
        report_deferred: bool = True,
        forget_after: float = 7 * 86400.0,
        on_error: OnError | None = None,
        trusts_client: Callable[[str], bool] | None = None,
    ) -> None:
        """``on_error``: a bug met on one line (fed, or held and settled later) costs that
        line only; without it (tests) the bug is raised. ``trusts_client``: whether a
        header_checks INFO line's client address may set the UUID (None: any)."""
        self._lookup = lookup
        self._on_error = on_error
        self._filters = filters
        self._wait = wait
        self._report_deferred = report_deferred
        self._forget_after = forget_after
        self._trusts_client = trusts_client
        self.messages: dict[str, Message] = {}
        self._pending: dict[str, list[_Held]] = {}  # queue ID -> its undecided lines
        self._hops: dict[str, list[_Held]] = {}  # presumed hop NEWID -> held deliveries
        # All held items by (deadline, seq): tuples, which the heap compares in C.
        self._queue: list[tuple[float, int, _Held]] = []
        self._seq = 0
        self._recent: dict[str, float] = {}  # queue IDs queued recently (presumed hops)
        # Pipe content filters (``_pipe_hop``): every message's Message-ID until it leaves
        # the queue, the pipe hops by Message-ID and the copies pickup queued that no hop
        # claimed yet (their Message-ID and when), both for the join-wait.
        self._pipes = bool(filters.pipes)
        self._message_ids: dict[str, tuple[str, float]] = {}
        self._pipe_hops: dict[str, list[_Held]] = {}
        self._copies: dict[str, tuple[str, float]] = {}
        self.now = 0.0  # newest log time seen
        self._time: datetime | None = None  # the last record's time, and as epoch seconds
        self._when = 0.0
        self._last_gc = 0.0
        self._second = 0  # the whole second of log time ``_forget_old`` last ran in
        self.counts: Counter[str] = Counter()

    # --- input -----------------------------------------------------------------------

    def feed(self, record: Record) -> list[Event]:
        """Take one parsed record; return the events of held lines whose wait is over at
        its time, then those it completes (maybe none).

        Settling here, not once per batch, makes the events' order depend on the lines
        alone, never on how they were split into batches: however reading is timed (a
        re-read after a crash too), the API gets them in one order. The clock settling
        held lines while the log is quiet puts them at the same place: before the next
        line. A bug met on the record costs it only (``_failed``).
        """
        events: list[Event] = []
        try:
            # isinstance, not `type(record) is`: compiled, a compare with the named tuple's
            # C type instead of a look-up in the module's dict (2% of a replay's instructions).
            timed = isinstance(record, (Delivery, Expired, QueueActive)) or (
                isinstance(record, MessageId) and self._pipes
            )
            when = self._advance(record.time) if timed else 0.0
            if self._queue and self._queue[0][0] <= self.now:
                events = self._settle_due(self.now)
            events += self._take(record, when)
        except Exception as exc:
            self._failed(exc, "handling", record)
        return events

    def _take(self, record: Record, when: float) -> list[Event]:
        """``when``: the record's time in epoch seconds, for the kinds that move ``now``."""
        if isinstance(record, (Delivery, Expired)):
            return self._decide(record.queue_id, record, when)
        if isinstance(record, Removed):
            queue_id = record.queue_id
            message = self.messages.get(queue_id)
            if message is not None:
                if queue_id in self._pending:
                    message.removed = True
                else:
                    del self.messages[queue_id]
            if self._message_ids:
                self._message_ids.pop(queue_id, None)
            return []
        if isinstance(record, QueueActive):
            if record.sender == "":  # only Postfix's own reports need a state here
                self._message(record.queue_id, when).ndr = True
            self._recent[record.queue_id] = when
            return self._confirm_hop(record.queue_id) if self._hops else []
        if isinstance(record, MessageId):
            return self._message_id(record, when) if self._pipes else []
        if isinstance(record, Notification):
            message = self._message(record.new_queue_id, self._epoch(record.time))
            message.ndr = message.no_milter = True
            return []
        if isinstance(record, Pickup):
            return self._pickup(record)
        if isinstance(record, HeaderInfo):
            return self._header_info(record)
        return []

    def _advance(self, time: datetime) -> float:
        """``time`` in epoch seconds; moves ``now`` forward. The lines of one second share
        one datetime (the parser's cache): the conversion runs once per second of log."""
        if time is not self._time:
            self._time, self._when = time, time.timestamp()
            if self._when > self.now:
                self.now = self._when
                second = int(self._when)
                if second > self._second:
                    self._second = second
                    self._forget_old()
        return self._when

    def _epoch(self, time: datetime) -> float:
        """``time`` in epoch seconds without moving ``now`` (for the kinds that do not):
        the last timed record's when it is the same datetime, as it mostly is."""
        return self._when if time is self._time else time.timestamp()

    def _forget_old(self) -> None:
        """At each new second of log, not per batch: what is remembered (and so which
        `queued as` is a hop) depends on the lines alone, as after a crash's re-read.

        Not at every line: with sub-second stamps (RFC 3339, the journal's) that walked
        ``_recent``'s front at nearly every line, 3% of a replay's instructions. So a queue
        ID queued up to 1 s more than join-wait before a `queued as` naming it still makes
        that line a hop, as with whole-second (syslog) stamps."""
        self._forget_recent(self.now - self._wait)
        if self.now - self._last_gc > GC_EVERY:
            self._last_gc = self.now
            self._forget_stale()

    def tick(self, now: float | None = None) -> list[Event]:
        """Settle every held line whose wait is over at ``now``: the wall clock's estimate
        of the log's time while the log is quiet (``feed`` settles by the lines' time)."""
        return self._settle_due(self.now if now is None else now)

    def _settle_due(self, limit: float) -> list[Event]:
        events: list[Event] = []
        while self._queue and self._queue[0][0] <= limit:
            item = heapq.heappop(self._queue)[2]
            try:
                events += self._settle(item)
            except Exception as exc:
                self._failed(exc, "settling", item.record)
        return events

    def _forget_recent(self, horizon: float) -> None:
        """Keep ``_recent`` and ``_copies`` to the last join-wait of log time: one entry per
        message queued, so a longer memory would grow with the mail volume."""
        for queue_id in _older(self._recent.items(), horizon):
            del self._recent[queue_id]
        if self._copies:
            for queue_id in _older(((q, c[1]) for q, c in self._copies.items()), horizon):
                del self._copies[queue_id]

    @property
    def holding(self) -> bool:
        """Lines are waiting for their UUID or hop: the clock alone can settle them."""
        return bool(self._queue)

    def finish(self) -> list[Event]:
        """End of input (replay): nothing more can arrive, settle everything held."""
        return self.tick(float("inf"))

    def _forget_stale(self) -> None:
        """Drop messages not seen for ``forget_after``: their removal was never logged."""
        horizon = self.now - self._forget_after
        stale = [q for q, m in self.messages.items() if m.seen < horizon]
        for queue_id in stale:
            del self.messages[queue_id]
        if stale:
            self.counts["forgotten_stale_messages"] += len(stale)
        for queue_id in [q for q, (_, seen) in self._message_ids.items() if seen < horizon]:
            del self._message_ids[queue_id]

    # --- deciding ----------------------------------------------------------------------

    def _message(self, queue_id: str, when: float) -> Message:
        message = self.messages.get(queue_id)
        if message is None:
            message = self.messages[queue_id] = Message(seen=when)
        elif when > message.seen:
            message.seen = when
        return message

    def _uuid(self, queue_id: str, info: bool = True) -> str | None:
        """Known here (hop, requeue, or kept with deferrals), else the map's; the INFO
        lines' (``info``) only where the milter recorded no row or no header."""
        message = self.messages.get(queue_id)
        if message is not None:
            if message.uuid is not None:
                return message.uuid
            if message.untrusted:
                return None
            if message.no_milter:
                return (message.info_uuid or None) if info else None
        entry = self._lookup(queue_id)
        if entry is not None and entry.header is not HeaderState.MISSING:
            return entry.uuid  # None: the header was repeated, invalid or not trusted
        return (message.info_uuid or None) if message is not None and info else None

    def _decide(self, queue_id: str, record: Decidable, when: float) -> list[Event]:
        uuid = self._uuid(queue_id, info=False)
        if uuid is not None:
            return self._events(queue_id, uuid, record, when)
        message = self.messages.get(queue_id)
        if message is not None and message.info_uuid and self._hop_line(record):
            # An INFO line's UUID gives an event only when the line's wait is over: the
            # message may be a filter's re-injection (the INFO line names the filter's
            # local address) of an untrusted message, whose hop line, logged later, says
            # so. A hop line takes it at once: it gives no event, and its child may wait.
            uuid = self._uuid(queue_id)
            if uuid is not None:
                return self._events(queue_id, uuid, record, when)
        if message is not None and message.ndr:
            self.counts["unmatched:postfix_notification"] += 1
            return []
        if self._untrusted(queue_id):
            self._pass_on_distrust(record)
        self._hold(_Held(when + self._wait, queue_id, record))
        return []

    def _hold(self, item: _Held) -> None:
        self._seq += 1  # the order of lines held at the same deadline
        heapq.heappush(self._queue, (item.deadline, self._seq, item))
        if item.message_id is not None:
            self._pipe_hops.setdefault(item.message_id, []).append(item)
        elif item.hop_to is not None:
            self._hops.setdefault(item.hop_to, []).append(item)
        else:
            self._pending.setdefault(item.queue_id, []).append(item)

    def _settle(self, item: _Held) -> list[Event]:
        """The wait is over: decide with what is known now."""
        if item.message_id is not None:
            return self._pipe_hop_over(item, item.message_id)
        if item.hop_to is not None:
            held = self._hops.get(item.hop_to)
            if held is None or item not in held:
                return []  # confirmed as a hop meanwhile
            held.remove(item)
            if not held:
                del self._hops[item.hop_to]
            self.counts["local_relay_with_queue_id_was_delivery"] += 1
            return [self._event(item.uuid or "", item.queue_id, item.record)]
        held = self._pending.get(item.queue_id)
        if held is None or item not in held:
            return []  # decided meanwhile
        held.remove(item)
        if not held:
            del self._pending[item.queue_id]
        uuid = self._uuid(item.queue_id)
        if uuid is not None:
            when = item.deadline - self._wait
            events = self._events(item.queue_id, uuid, item.record, when, final=True)
            self._forget_removed(item.queue_id)
            return events
        entry = self._lookup(item.queue_id)
        if self._untrusted(item.queue_id):
            reason = "untrusted_client"
        elif entry is None:
            reason = "unknown_queue_id"
        else:
            reason = f"header_{entry.header.name.lower()}"
        self.counts[f"unmatched:{reason}"] += 1
        self._forget_removed(item.queue_id)
        return []

    def _untrusted(self, queue_id: str) -> bool:
        """The header came from a client not in trusted-clients, here or at the message
        it was re-injected from. Its lines are still held: a hop from a trusted message
        may yet give a re-injection its UUID."""
        message = self.messages.get(queue_id)
        if message is not None and message.untrusted:
            return True
        entry = self._lookup(queue_id)
        return entry is not None and entry.header is HeaderState.UNTRUSTED

    def _pass_on_distrust(self, record: Decidable) -> None:
        """An untrusted message handed to a content filter (or another local hop): the
        message re-injected as NEWID is untrusted too, even if the milter saw it come
        from the filter's trusted local address with the same header."""
        new_id = self._local_hop(record)
        if new_id is not None:
            self._message(new_id, self.now).untrusted = True

    def _local_hop(self, record: Decidable) -> str | None:
        """NEWID of a ``queued as NEWID`` from a content filter or another local relay."""
        if not isinstance(record, Delivery):
            return None
        new_id = queued_as(record.reply)
        endpoint = parse_relay(record.relay)
        if new_id is not None and (
            self._filters.is_hop(endpoint) or (endpoint is not None and is_local(endpoint))
        ):
            return new_id
        return None

    def _hop_line(self, record: Decidable) -> bool:
        """The line may hand the message on to this host again (a pipe filter, or
        ``_local_hop``)."""
        if isinstance(record, Delivery) and self._pipes and record.relay in self._filters.pipes:
            return True
        return self._local_hop(record) is not None

    def _release(self, queue_id: str) -> list[Event]:
        """A UUID became known for ``queue_id``: decide its held lines in log order."""
        held = self._pending.pop(queue_id, None)
        if not held:
            return []
        uuid = self._uuid(queue_id, info=False)  # INFO's: at the end of the wait (_decide)
        if uuid is None:
            self._pending[queue_id] = held
            return []
        events: list[Event] = []
        for item in held:
            try:
                events += self._events(queue_id, uuid, item.record, item.deadline - self._wait)
            except Exception as exc:
                self._failed(exc, "handling", item.record)
        self._forget_removed(queue_id)
        return events

    def _forget_removed(self, queue_id: str) -> None:
        """The last held line of a message whose removal was logged is decided."""
        message = self.messages.get(queue_id)
        if message is not None and message.removed and queue_id not in self._pending:
            del self.messages[queue_id]

    def _failed(self, exc: Exception, doing: str, record: object) -> None:
        """A line met a bug: ``on_error`` counts it and the others go on. A map failure is
        not the line's: it is raised (logwatch stops and reads it again)."""
        if self._on_error is None or isinstance(exc, MapError):
            raise exc
        self._on_error(doing, record)

    def _events(
        self, queue_id: str, uuid: str, record: Decidable, when: float, final: bool = False
    ) -> list[Event]:
        """``final``: the line's wait is over, it cannot be held again."""
        message = self.messages.get(queue_id)
        if message is not None and when > message.seen:
            message.seen = when
        if isinstance(record, Expired):
            return self._expired(message, uuid, record)
        assert isinstance(record, Delivery)
        verdict = event_for_status(record.status, record.dsn, record.reply)
        if verdict is None:
            self.counts[f"not_a_delivery:{record.status}"] += 1
            return []
        recipient = self._sent_to(queue_id, message, record, when, final)
        if recipient is None:
            return []
        event_type = verdict.event_type
        if event_type is EventType.DEFERRED:
            if message is None:  # a new state: its UUID and envelope came from the map
                envelope = self._envelope(queue_id, None)
                message = self.messages[queue_id] = Message(
                    uuid, from_map=True, seen=when, envelope=envelope or _UNKNOWN
                )
            message.deferred[record.recipient] = verdict
            if recipient != record.recipient:
                if message.deferred_as is None:
                    message.deferred_as = {}
                message.deferred_as[record.recipient] = recipient
            if not self._report_deferred:
                self.counts["deferred_not_reported"] += 1
                return []
            return [Event.of(uuid, verdict, record.time, recipient)]
        if message is not None and message.deferred:
            message.deferred.pop(record.recipient, None)
            if message.deferred_as is not None:
                message.deferred_as.pop(record.recipient, None)
        if event_type is EventType.DELIVERED:
            if self._pipes and record.relay in self._filters.pipes:
                return self._pipe_hop(queue_id, uuid, record, when)
            new_id = queued_as(record.reply)
            reply = record.reply
            if (
                new_id is None
                and reply is not None
                and "discarded" in reply
                and self._filters.is_hop(parse_relay(record.relay))
            ):
                # amavis's `250 2.7.0 Ok, discarded, id=... - INFECTED`: taken by the
                # filter and never delivered. No event type says so; a delivery would lie.
                self.counts["content_filter_discarded"] += 1
                return []
            if new_id is not None:
                endpoint = parse_relay(record.relay)
                if self._filters.is_hop(endpoint):
                    return self._link(new_id, queue_id, uuid, record)
                if endpoint is not None and is_local(endpoint):
                    if new_id in self._recent:
                        return self._link(new_id, queue_id, uuid, record)
                    self._hold(_Held(when + self._wait, queue_id, record, new_id, uuid))
                    return []
        return [Event.of(uuid, verdict, record.time, recipient)]

    def _event(self, uuid: str, queue_id: str, record: Decidable) -> Event:
        """A presumed hop's line that was a delivery after all (its recipient checked)."""
        assert isinstance(record, Delivery)
        verdict = event_for_status(record.status, record.dsn, record.reply)
        assert verdict is not None
        recipient = self._original(self.messages.get(queue_id), record)
        return Event.of(uuid, verdict, record.time, recipient)

    # --- recipients --------------------------------------------------------------------

    @staticmethod
    def _original(message: Message | None, record: Delivery) -> str:
        """The address SendPost gave for this delivery: ``orig_to`` when Postfix rewrote
        the recipient, else ``to``; after a hop, mapped back through the hop's pairs."""
        address = record.orig_to or record.recipient
        if message is not None and message.aliases:
            return message.aliases.get(address.lower(), address)
        return address

    def _envelope(self, queue_id: str, message: Message | None) -> tuple[str, ...] | None:
        """The recipients SendPost gave for ``queue_id`` (queuemap.address_key: the log's
        addresses come without brackets, so theirs is their lower case); None: unknown."""
        if message is not None:
            if message.envelope is not None:
                return message.envelope or None
            if message.no_milter:  # a row under this ID is an older message's
                return None
        entry = self._lookup(queue_id)
        return entry.recipients if entry is not None else None

    def _sent_to(
        self, queue_id: str, message: Message | None, record: Delivery, when: float, final: bool
    ) -> str | None:
        """The recipient an event names, or None: Postfix added it (counted), or it is
        held until a later hop line may map it back to the envelope."""
        address = self._original(message, record)
        envelope = self._envelope(queue_id, message)
        if envelope is None or address.lower() in envelope:
            return address
        if not final and message is not None and not message.from_map and message.envelope:
            self._hold(_Held(when + self._wait, queue_id, record))
            return None
        self.counts["unmatched:added_recipient"] += 1
        log.debug(
            "queue ID %s: no event for %s, a recipient Postfix added (not in the envelope)",
            queue_id,
            record.recipient,
        )
        return None

    def _expired(self, message: Message | None, uuid: str, record: Expired) -> list[Event]:
        if message is None or not message.deferred:
            self.counts["expired_without_known_recipients"] += 1
            return []
        named = message.deferred_as or {}
        events = [
            Event.of(uuid, expired_verdict(last), record.time, named.get(to, to))
            for to, last in message.deferred.items()
        ]
        message.deferred.clear()
        message.deferred_as = None
        return events

    # --- hops --------------------------------------------------------------------------

    def _link(self, child: str, parent: str, uuid: str, hop: Delivery) -> list[Event]:
        """``child`` is ``parent`` re-injected (``hop`` is the parent's line saying so):
        it inherits the UUID and the envelope; its held lines are decided."""
        self.counts["content_filter_hop"] += 1
        self._inherit(child, parent, uuid, hop)
        return self._release(child)

    def _inherit(self, child: str, parent: str, uuid: str, hop: Delivery) -> None:
        """What ``child`` takes from ``parent`` through one hop line: the UUID, the
        parent's envelope, and the pair "sent on as hop's ``to``, SendPost's address"."""
        message = self._message(child, self.now)
        if message.uuid is None:
            message.uuid = uuid
        origin = self.messages.get(parent)
        if message.envelope is None:
            envelope = self._envelope(parent, origin)
            message.envelope = _UNKNOWN if envelope is None else envelope
        address = self._original(origin, hop)
        key = hop.recipient.lower()
        if address.lower() != key:
            if message.aliases is None:
                message.aliases = {}
            message.aliases[key] = address

    def _pickup(self, record: Pickup) -> list[Event]:
        """A local submission, or ``postsuper -r`` re-queueing ``orig_id`` under a new ID:
        the message goes on there with its UUID and remembered deferrals."""
        message = self._message(record.queue_id, self._epoch(record.time))
        message.no_milter = True
        if record.orig_id is None:
            return []
        uuid = self._uuid(record.orig_id)
        old = self.messages.get(record.orig_id)
        envelope = self._envelope(record.orig_id, old)
        self.messages.pop(record.orig_id, None)
        if uuid is None:
            return []
        self.counts["requeued"] += 1
        message.uuid = uuid
        message.envelope = _UNKNOWN if envelope is None else envelope
        if old is not None:
            message.deferred.update(old.deferred)
            message.aliases = old.aliases
            message.deferred_as = old.deferred_as
        return self._release(record.queue_id)

    def _message_id(self, record: MessageId, when: float) -> list[Event]:
        """Remembered for a pipe filter hop; a message pickup queued (its ``uid=`` line
        comes first: pickup logs it before it passes the headers to cleanup) that has no
        UUID yet may be such a hop's copy."""
        message = self.messages.get(record.queue_id)
        if message is not None and message.no_milter and not message.ndr and message.uuid is None:
            return self._copy(record.queue_id, record.message_id, when)
        self._message_ids[record.queue_id] = (record.message_id, when)
        return []

    def _pipe_hop(self, queue_id: str, uuid: str, record: Delivery, when: float) -> list[Event]:
        """A pipe content filter took the message: not a delivery. Its copy comes back
        through pickup with the same Message-ID, once per call of the filter (per
        recipient with ``SERVICE_destination_recipient_limit = 1``), and may be logged
        before this line: copies queued within join-wait before it, or until join-wait
        after it, go on under ``uuid``. A copy already linked by an earlier hop line of
        this message takes this line's to/orig_to pair too (``_copies`` keeps it for the
        join-wait): its deliveries may name this line's recipient."""
        message_id = self._message_ids.get(queue_id, _NO_MESSAGE_ID)[0]
        if message_id in _NO_MESSAGE_ID:
            self.counts["content_filter_hop_without_message_id"] += 1
            log.warning(
                "%s (UUID %s) went to the pipe content filter %s without a Message-ID"
                " logged (cleanup's `message-id=` line): its copy cannot be followed, no"
                " event for %s",
                queue_id,
                uuid,
                record.relay,
                record.recipient,
            )
            return []
        since = when - self._wait
        copies = [q for q, (m, at) in self._copies.items() if m == message_id and at >= since]
        hops = self._pipe_hops.get(message_id, [])
        linked = bool(copies) or any(h.linked for h in hops if h.queue_id == queue_id)
        self._hold(_Held(when + self._wait, queue_id, record, None, uuid, message_id, linked))
        events: list[Event] = []
        for copy in copies:
            known = self.messages.get(copy)
            if known is None:  # removed from the queue: nothing of it is left to decide
                continue
            if known.uuid is None:
                events += self._link(copy, queue_id, uuid, record)
            elif known.uuid == uuid:  # not another message's with the same Message-ID
                self._inherit(copy, queue_id, uuid, record)
                events += self._release(copy)
        return events

    def _copy(self, queue_id: str, message_id: str, when: float) -> list[Event]:
        """A message pickup queued: the copy of a pipe filter hop waiting with the same
        Message-ID (the oldest without a copy yet, so that one copy per recipient pairs
        off with one hop line each), else kept for the join-wait for its hop."""
        hops = [h for h in self._pipe_hops.get(message_id, ()) if h.deadline >= when]
        self._copies[queue_id] = (message_id, when)  # for its message's later hop lines
        if not hops:
            return []
        hop = next((h for h in hops if not h.linked), hops[0])
        for other in hops:
            if other.queue_id == hop.queue_id:  # one message's hops share their copies
                other.linked = True
                if other is not hop:  # every pair known before the copy's lines are decided
                    assert isinstance(other.record, Delivery)
                    self._inherit(queue_id, other.queue_id, other.uuid or "", other.record)
        assert isinstance(hop.record, Delivery)
        return self._link(queue_id, hop.queue_id, hop.uuid or "", hop.record)

    def _pipe_hop_over(self, item: _Held, message_id: str) -> list[Event]:
        """The pipe hop's wait is over: counted, and logged if no copy came back."""
        hops = self._pipe_hops[message_id]
        hops.remove(item)
        if not hops:
            del self._pipe_hops[message_id]
        if item.linked:
            self.counts["content_filter_pipe_hop"] += 1
            return []
        self.counts["content_filter_not_reinjected"] += 1
        assert isinstance(item.record, Delivery)
        log.info(
            "%s (UUID %s) went to the pipe content filter %s for %s, but no copy with its"
            " Message-ID %s came back through pickup within join-wait (%g s): no event."
            " The filter dropped it, or failed after reporting success, or re-injected it"
            " later (then raise join-wait)",
            item.queue_id,
            item.uuid,
            item.record.relay,
            item.record.recipient,
            message_id,
            self._wait,
        )
        return []

    def _confirm_hop(self, queue_id: str) -> list[Event]:
        """``queue_id`` appeared: deliveries held as presumed hops to it were hops."""
        held = self._hops.pop(queue_id, None)
        if not held:
            return []
        for item in held[1:]:  # every pair known before the child's lines are decided
            assert isinstance(item.record, Delivery)
            self._inherit(queue_id, item.queue_id, item.uuid or "", item.record)
        first = held[0].record
        assert isinstance(first, Delivery)
        return self._link(queue_id, held[0].queue_id, held[0].uuid or "", first)

    def _header_info(self, record: HeaderInfo) -> list[Event]:
        """The header_checks INFO fallback (see ``Message.info_uuid``)."""
        if record.name.lower() != _HEADER_LOWER:
            return []
        value = uuid_text(record.value)
        if value is None:
            self.counts["header_info_invalid"] += 1
            return []
        message = self._message(record.queue_id, self._epoch(record.time))
        if self._trusts_client is not None and not self._trusts_client(record.client):
            # As a repeated header: this message's INFO lines give no UUID at all.
            self.counts["header_info_untrusted_client"] += 1
            message.info_uuid = ""
            return []
        if message.info_uuid is None:
            message.info_uuid = value
        elif message.info_uuid != value:  # the header repeated: which one is it?
            message.info_uuid = ""
        return []  # its held lines take it when their wait is over (_decide)

    # --- persistence -------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """What must survive a restart, as JSON-able data: what the map cannot rebuild."""
        messages = {}
        for queue_id, m in self.messages.items():
            if (
                m.deferred
                or m.ndr
                or m.no_milter
                or m.info_uuid is not None
                or m.untrusted
                or (m.uuid is not None and not m.from_map)
                or (m.envelope is not None and not m.from_map)
            ):
                saved: dict[str, object] = {
                    "uuid": None if m.from_map else m.uuid,
                    "ndr": m.ndr,
                    "no_milter": m.no_milter,
                    "info_uuid": m.info_uuid,
                    "untrusted": m.untrusted,
                    "seen": m.seen,
                    "deferred": {r: [v.smtp_code, v.description] for r, v in m.deferred.items()},
                }
                if m.envelope is not None and not m.from_map:
                    saved["envelope"] = list(m.envelope)
                if m.aliases:
                    saved["aliases"] = m.aliases
                if m.deferred_as:
                    saved["deferred_as"] = m.deferred_as
                if m.removed:
                    saved["removed"] = True
                messages[queue_id] = saved
        held = [
            [h.deadline, h.queue_id, record_to_json(h.record), h.hop_to, h.uuid]
            + ([h.message_id, h.linked] if h.message_id is not None else [])
            for _, _, h in sorted(self._queue)
            if self._live(h)
        ]
        return {
            "messages": messages,
            "held": held,
            "now": self.now,
            "message_ids": {q: list(v) for q, v in self._message_ids.items()},
            "copies": {q: list(v) for q, v in self._copies.items()},
        }

    def _live(self, item: _Held) -> bool:
        """Still undecided: a line decided early (released) stays in the queue until its
        deadline, and restored as held it would be decided a second time."""
        if item.message_id is not None:
            return item in self._pipe_hops.get(item.message_id, ())
        if item.hop_to is not None:
            return item in self._hops.get(item.hop_to, ())
        return item in self._pending.get(item.queue_id, ())

    def restore(self, state: dict[str, Any]) -> None:
        for queue_id, m in state.get("messages", {}).items():
            self.messages[queue_id] = Message(
                uuid=m["uuid"],
                ndr=m["ndr"],
                no_milter=m.get("no_milter", False),
                info_uuid=m.get("info_uuid"),
                untrusted=m.get("untrusted", False),
                seen=m["seen"],
                deferred={
                    r: Verdict(EventType.DEFERRED, code, text, "restored")
                    for r, (code, text) in m["deferred"].items()
                },
                envelope=tuple(m["envelope"]) if "envelope" in m else None,
                aliases=m.get("aliases"),
                deferred_as=m.get("deferred_as"),
                removed=m.get("removed", False),
            )
        for deadline, queue_id, record, hop_to, uuid, *pipe_hop in state.get("held", []):
            item = _Held(deadline, queue_id, record_from_json(record), hop_to, uuid)
            if pipe_hop:
                item.message_id, item.linked = pipe_hop
            self._hold(item)
        self.now = float(state.get("now", 0.0))
        for name, entries in (("message_ids", self._message_ids), ("copies", self._copies)):
            for queue_id, (message_id, when) in state.get(name, {}).items():
                entries[queue_id] = (message_id, when)


def _older(entries: Iterable[tuple[str, float]], horizon: float) -> list[str]:
    """The keys of (key, log time) pairs in log order that are older than ``horizon``."""
    stale = []
    for key, when in entries:
        if when >= horizon:
            break
        stale.append(key)
    return stale


_KINDS: Final[dict[str, type[Delivery] | type[Expired]]] = {
    "Delivery": Delivery,
    "Expired": Expired,
}


def record_to_json(record: Decidable) -> dict[str, Any]:
    out = record._asdict()
    out["time"] = record.time.isoformat()
    out["kind"] = type(record).__name__
    return out


def record_from_json(data: dict[str, Any]) -> Decidable:
    data = dict(data)
    kind = _KINDS[data.pop("kind")]
    data["time"] = datetime.fromisoformat(data["time"])
    return kind(**data)
