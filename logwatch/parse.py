"""Turns one Postfix mail log line into a typed record, or None when it cannot matter.

Pure and on the hot path: a few plain substring checks reject most lines before any
regex runs; only ``Clock`` holds state (the year of year-less syslog stamps).
Field definitions follow tests/data/postfix-samples/wild/README.md ("status-lines.jsonl
fields"), checked against 459 real status lines by tests/test_wild_lines.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final, NamedTuple

__all__ = [
    "Clock",
    "Delivery",
    "Expired",
    "HeaderInfo",
    "MessageId",
    "Notification",
    "Pickup",
    "QueueActive",
    "Record",
    "Removed",
    "Skipped",
    "may_matter",
    "parse_block",
    "parse_line",
]


class Delivery(NamedTuple):
    """One recipient's delivery attempt (`QID: to=<r>, ..., status=X (reply)`)."""

    time: datetime
    program: str
    queue_id: str
    recipient: str
    orig_to: str | None
    relay: str | None
    dsn: str | None
    status: str
    reply: str | None


class Expired(NamedTuple):
    """qmgr gave up on a message; the recipients are only known from earlier deferrals."""

    time: datetime
    program: str
    queue_id: str
    sender: str
    status: str


class QueueActive(NamedTuple):
    """qmgr picked a message up; sender "" marks Postfix's own bounces."""

    time: datetime
    program: str
    queue_id: str
    sender: str
    nrcpt: int


class Notification(NamedTuple):
    """bounce created a new message (NDR, delay or success DSN) about ``queue_id``."""

    time: datetime
    program: str
    queue_id: str
    kind: str
    new_queue_id: str


class Pickup(NamedTuple):
    """pickup queued a locally submitted message, or one re-queued by ``postsuper -r``
    (``orig_id``: its old queue ID); the milter sees neither (pickup turns it off for the
    second)."""

    time: datetime
    program: str
    queue_id: str
    orig_id: str | None


class Removed(NamedTuple):
    """The message left the queue: nothing more will be logged for this queue id."""

    time: datetime
    program: str
    queue_id: str


class HeaderInfo(NamedTuple):
    """A header_checks INFO line: the UUID fallback when the milter did not see the mail."""

    time: datetime
    program: str
    queue_id: str
    name: str
    value: str
    client: str = ""  # the SMTP client's address ("" for local submission)


class MessageId(NamedTuple):
    """cleanup read a message's Message-ID header (as logged: ``<...>``, or ``<>`` without
    one): the only thing Postfix logs alike for a message and the copy a pipe content
    filter re-injects through ``sendmail``."""

    time: datetime
    program: str
    queue_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A candidate line deliberately not used; the caller counts these by ``reason``.

    Reasons: "unparseable prefix", "unparseable timestamp", "no queue id" (e.g. smtpd
    debug `status=0`), "no recipient", "no status", "not a delivery status".
    """

    reason: str


Record = Delivery | Expired | QueueActive | Notification | Pickup | Removed | HeaderInfo | MessageId
# Records are named tuples: immutable, and built without a Python-level __init__ by
# tuple.__new__ on the hot path (a frozen dataclass's __init__ doubled the cost per line).
_new: Final = tuple.__new__


# Shared instances: a skipped line costs no allocation.
_BAD_TIME: Final = Skipped("unparseable timestamp")
_BAD_PREFIX: Final = Skipped("unparseable prefix")
_NO_QUEUE_ID: Final = Skipped("no queue id")
_NO_RECIPIENT: Final = Skipped("no recipient")
_NO_STATUS: Final = Skipped("no status")
_NOT_DELIVERY: Final = Skipped("not a delivery status")

_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_ONE_DAY: Final = timedelta(days=1)
_FOLD_JUMP: Final = timedelta(minutes=5)  # lines from several processes come out of order
_CACHE_MAX: Final = 4096  # distinct seconds kept; one per log second, so ~1 hour of a busy log


class Clock:
    """Gives year-less syslog stamps a year and a zone; the only state of the parser.

    The first stamp gets the year that puts it at most a day after ``now``; after that
    a month jump backwards by more than half a year is New Year (year + 1), and a jump
    forwards by as much is a late line from the year before (not remembered).
    ``tz=None`` means the system's local zone, applied per instant (DST-correct).
    """

    __slots__ = ("_cache", "_fold", "_last", "_minutes", "_month", "_now", "_tz", "_year")

    def __init__(self, tz: tzinfo | None = None, now: datetime | None = None) -> None:
        self._tz = tz
        self._now = now if now is not None else datetime.now(UTC)
        self._year: int | None = None
        self._month = 0
        self._last: datetime | None = None  # newest wall time in the repeated hour
        self._fold = False  # in the hour repeated when DST ends, second time round
        self._cache: dict[str, datetime] = {}
        # Whether each wall minute is in a repeated hour: asking the zone cost about as
        # much as the rest of a second's lines. Zones change offset on whole minutes (all
        # of them since 1972, and a syslog stamp's year is this year or next to it).
        self._minutes: dict[tuple[int, int, int, int, int], bool] = {}

    def syslog_time(self, stamp: str) -> datetime | None:
        """``Nov 23 18:35:21`` (also ``Nov  3``, ``Mar 7``, ``May 01``) -> aware datetime."""
        cached = self._cache.get(stamp)
        if cached is not None:
            return cached
        try:
            mon, day_s, hms = stamp.split()
            month = _MONTHS[mon]
            day = int(day_s)
            hour, minute, second = (int(x) for x in hms.split(":"))
        except (ValueError, KeyError):
            return None
        if self._year is None:
            year = self._first_year(month, day, hour, minute, second)
            if year is None:
                return None
            remember = True
        elif month + 6 < self._month:  # Dec -> Jan: New Year
            year, remember = self._year + 1, True
        elif month > self._month + 6:  # a late Dec line after New Year
            year, remember = self._year - 1, False
        else:
            year, remember = self._year, True
        try:
            wall = datetime(year, month, day, hour, minute, second)
        except ValueError:
            return None
        if remember:
            if year != self._year:
                self._cache.clear()
            self._year, self._month = year, month
        minute_of = (year, month, day, hour, minute)
        ambiguous = self._minutes.get(minute_of)
        if ambiguous is None:
            ambiguous = self._ambiguous(wall)
            if len(self._minutes) >= _CACHE_MAX:
                self._minutes.clear()
            self._minutes[minute_of] = ambiguous
        if ambiguous:  # the hour repeated when DST ends: never cached
            return self.localize(self._second_time_round(wall))
        self._fold = False
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        aware = self.localize(wall)
        self._cache[stamp] = aware
        return aware

    def _second_time_round(self, wall: datetime) -> datetime:
        """An hour of stamps repeats when DST ends: the log going back by more than a few
        minutes within it is its second time round (``fold=1``), an hour later."""
        last = self._last
        if last is None or wall > last:
            self._last = wall
        elif last - wall > _FOLD_JUMP:
            self._fold = True
        return wall.replace(fold=1) if self._fold else wall

    def _ambiguous(self, wall: datetime) -> bool:
        first, second = wall.replace(fold=0), wall.replace(fold=1)
        if self._tz is None:
            return first.astimezone().utcoffset() != second.astimezone().utcoffset()
        return (
            first.replace(tzinfo=self._tz).utcoffset()
            != second.replace(tzinfo=self._tz).utcoffset()
        )

    def localize(self, wall: datetime) -> datetime:
        """Attach the configured zone to a naive wall-clock time."""
        if self._tz is None:
            return wall.astimezone()
        return wall.replace(tzinfo=self._tz)

    def _first_year(self, month: int, day: int, hour: int, minute: int, second: int) -> int | None:
        now = self._now.astimezone(self._tz) if self._tz is not None else self._now.astimezone()
        limit = now.replace(tzinfo=None) + _ONE_DAY
        # Feb 29 walks back to a leap year; nine steps cover any gap between two of them.
        for year in range(limit.year, limit.year - 9, -1):
            try:
                wall = datetime(year, month, day, hour, minute, second)
            except ValueError:
                continue
            if wall <= limit:
                return year
        return None


# Possessive quantifiers (`*+`, `++`) wherever nothing has to be given back: a
# pathological line then fails in one pass instead of backtracking over megabytes.

# `[<PRI>]` then a BSD stamp (journalctl short-precise adds a fraction) or an ISO 8601
# one (rsyslog RFC 3339, journalctl short-iso[-precise]); then the host, which some
# setups leave out, and the syslog tag with its pid and (almost always) a colon.
_HEAD: Final = re.compile(
    r"(?:<\d{1,3}>)?"
    r"(?:(?P<bsd>[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))?"
    r"|(?P<iso>\d{4}-\d\d-\d\dT[\d:.]++(?:Z|[+-]\d\d:?\d\d)?))"
    r" ++(?:\S++ ++)??(?P<prog>[^\s\[:]++)(?:\[\d++\]:?|:) +"
)
# A repeated group is atomic, (?>(?:...)*), never possessive, (?:...)*+: the same match,
# but Python 3.11.2 (Debian 12's python3) misses matches of the possessive form when the
# group holds a quantifier or a lookahead (tests/test_packages.py runs Debian's python3).
# RFC 5424: <PRI>1 STAMP HOST APP PROCID MSGID SD MSG (the tag is APP, not APP[PID]).
# bsd and frac never participate: same group names as _HEAD.
_HEAD_5424: Final = re.compile(
    r"(?:(?P<bsd>(?!))(?P<frac>))?<\d{1,3}>1 (?P<iso>\S++) \S++ (?P<prog>\S++) \S++ \S++ "
    r"(?:-|(?>(?:\[(?>(?:[^\]\\]++|\\.)*)\])+)) ?\ufeff?"
)
# `docker compose logs`: `service-1    | ` before the syslog line.
_COMPOSE: Final = re.compile(r" *+[\w.-]++ ++\| ")
# Short ids are upper-case hex, long ones (enable_long_queue_ids) base-52 without vowels.
_QUEUE_ID = r"[0-9A-F]{5,}+|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}+"
_QID: Final = re.compile(rf"({_QUEUE_ID}): +")
# The first `>` followed by a separator ends the address (`to=<a@<cutout>>,`).
_ADDRESS = r"<([^>]*+(?>(?:>(?![,\s]|$)[^>]*+)*))>|([^,]*+)"
_TO: Final = re.compile(rf"to=(?:{_ADDRESS})")
_ORIG_TO: Final = re.compile(rf",? *+orig_to=(?:{_ADDRESS})")
# Postfix puts a space before every key; a literal prefix also makes the search fast.
_STATUS: Final = re.compile(r" status=([^\s,(]*+) *+")
_RELAY: Final = re.compile(r" relay=([^,]*+)")
_DSN: Final = re.compile(r" dsn=([^,]*+)")
_EXPIRED: Final = re.compile(
    r"from=<([^>]*+(?>(?:>(?!, status=)[^>]*+)*))>, status=((?:force-)?expired)\b"
)
# nrcpt at most 9 digits: int() refuses over 4,300 (a forged line is then no record).
_ACTIVE_TAIL = r"from=<(.*)>, size=[0-9]++, nrcpt=([0-9]{1,9}+) \(queue active\)"
_ACTIVE: Final = re.compile(_ACTIVE_TAIL)
# pickup.c: `uid=N from=<sender>`, plus ` orig_id=OLDID` for mail `postsuper -r` re-queued.
_PICKUP: Final = re.compile(r"uid=[0-9]++ from=<.*>(?: orig_id=([0-9A-Za-z]++))?\Z")
_NOTIFICATION: Final = re.compile(r"((?:sender|postmaster) [a-z -]*notification): (\S++)$")
# cleanup_act_log(): `info: header <header, cut at 200> from <origin>; from=<s> to=<r> ...`;
# the first ` from <origin>;` ends the value (sender and helo that follow are untrusted);
# the origin is `name[address]` for an SMTP client, `local` for pickup.
_HEADER_INFO: Final = re.compile(
    r"info: header ([^:\s]++): *((?>(?:[^ ]++| (?!from [^\s;]*+;(?: |$)))*))"
    r" from [^\s;\[]*+(?:\[([^\s;\]]*+)\])?;"
)
# Another origin after the first: the header's value imitated one (` from h[127.0.0.1];`)
# before Postfix's own, so which client sent it is unknown (a sender holding one is too).
_ORIGIN: Final = re.compile(r" from [^\s;]*+;(?: |$)")
_UUID_HEADER: Final = "x-sendpost-message-uuid"

# Whole-line shapes of nearly all lines (single spaces, `STAMP host postfix…[pid]: QID: `,
# the pid left out in the lines logwatch makes of journal entries,
# Postfix >= 2.3 keys): one regex call instead of several. Whatever they match,
# _general() parses to the same record (tests/test_parse.py checks this on every
# sample line). [0-9], not \d: the Unicode digit test is a call per character.
_COMMON_HEAD = (
    r"(?s)(?:([A-Z][a-z]{2} [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9])"
    r"|([0-9]{4}-[0-9][0-9]-[0-9][0-9]T[0-9:.]++(?:Z|[+-][0-9][0-9]:?[0-9][0-9])?))"
    rf" \S++ (postfix[^\s\[:]*+)(?:\[[0-9]++\]: |: )({_QUEUE_ID}): "
)
_COMMON_DELIVERY = re.compile(
    _COMMON_HEAD + r"to=<([^>]*+)>, (?:orig_to=<([^>]*+)>, )?relay=([^,]*+), "
    r"(?:[a-z_]++=[^,]*+, ){0,8}?dsn=([^,]*+), status=([^\s,(]++) *+"
)
_COMMON_ACTIVE = re.compile(_COMMON_HEAD + _ACTIVE_TAIL)
_COMMON_REMOVED = re.compile(_COMMON_HEAD + r"removed\Z")
_MESSAGE_ID: Final = "message-id="
_MESSAGE_ID_MARKER: Final = ": " + _MESSAGE_ID
_COMMON_MESSAGE_ID = re.compile(_COMMON_HEAD + _MESSAGE_ID + r"(.*+)")
_INFO_HEADER: Final = "info: header "
_COMMON_INFO_HEAD = re.compile(_COMMON_HEAD + r"(?=info: header )")

(
    _STATUS_LINE,
    _ACTIVE_LINE,
    _REMOVED_LINE,
    _NOTIFICATION_LINE,
    _HEADER_LINE,
    _PICKUP_LINE,
    _MESSAGE_ID_LINE,
) = range(7)


# What a line parse_line takes holds (and the only lines it takes): ``status=`` or a rare
# marker anywhere, or one of the fixed line ends; cleanup's message-id lines only when
# they are asked for.
_LINE_ENDS: Final = ("(queue active)", ": removed")
_NOTIFICATION_MARKER: Final = " notification: "
_PICKUP_MARKER: Final = ": uid="
_RARE_MARKERS: Final = (_NOTIFICATION_MARKER, _INFO_HEADER, _PICKUP_MARKER)
_RARE_BYTES: Final = tuple(marker.encode() for marker in _RARE_MARKERS)


def parse_block(
    lines: list[bytes], clock: Clock, message_ids: bool = False
) -> list[Record | Skipped]:
    """``parse_line`` over every line (undecoded, without its newline), in order, without
    the None results: only over the ``candidates``. cleanup's ``message-id=`` lines (one
    per message) only with ``message_ids``: only a pipe content filter's hop needs them.
    """
    return [
        record
        for line in candidates(lines, message_ids)
        if (record := parse_line(line, clock)) is not None
    ]


def candidates(lines: list[bytes], message_ids: bool = False) -> list[str]:
    """The lines that may give parse_line a result, decoded, in log order.

    Most lines cannot matter. They are decoded and rejected by substring tests inside one
    comprehension, so they cost no call; the rare markers are tested per line only when
    the whole block holds one of them. Searching the whole block in C for every marker
    instead (and cutting out only the lines found) ran fewer instructions but took 13%
    more CPU time (docs/PERFORMANCE.md).
    """
    block = b"\n".join(lines)
    rare = any(marker in block for marker in _RARE_BYTES)
    return [
        line
        for raw in lines
        if _may_matter(line := raw.decode("utf-8", "replace"), rare, message_ids)
    ]


def may_matter(message: str, message_ids: bool = False) -> bool:
    """Whether a line holding ``message`` (a line, or the message part of a journal
    entry) may give parse_line a result: the test ``candidates`` makes, for a source
    that can skip the rest of a line it fails (the journal's other fields)."""
    return _may_matter(message, True, message_ids)


def _may_matter(line: str, rare: bool, message_ids: bool) -> bool:
    """``rare``: whether the rare markers are looked for (not when the block has none)."""
    return (
        "status=" in line
        or line.endswith(_LINE_ENDS)
        # each written out: compiled, any() over the markers was a generator per line
        or (
            rare
            and (_NOTIFICATION_MARKER in line or _INFO_HEADER in line or _PICKUP_MARKER in line)
        )
        or (message_ids and _MESSAGE_ID_MARKER in line)
    )


def parse_line(line: str, clock: Clock) -> Record | Skipped | None:
    """One decoded log line (no newline) -> record, Skipped(reason), or None if irrelevant.

    Each kind's common shape is matched by its own whole-line regex and unpacked in its
    own branch, written out: one shared path (kind and regex chosen first, then one match,
    time and build by kind) ran 0.9% more instructions on a catch-up (cachegrind of
    replay, 100,000 lines), unpacking with ``*rest`` 3% more."""
    # The fixed line ends first: a sender address may contain `status=`.
    if line.endswith("(queue active)"):
        m = _COMMON_ACTIVE.match(line)
        if m is None:
            return _general(line, _ACTIVE_LINE, clock)
        stamp, iso, program, queue_id, sender, nrcpt = m.groups()
        time = _common_time(stamp, iso, clock)
        if time is None:
            return _BAD_TIME
        return _new(QueueActive, (time, program, queue_id, sender, int(nrcpt)))
    if line.endswith(": removed"):
        m = _COMMON_REMOVED.match(line)
        if m is None:
            return _general(line, _REMOVED_LINE, clock)
        stamp, iso, program, queue_id = m.groups()
        time = _common_time(stamp, iso, clock)
        if time is None:
            return _BAD_TIME
        return _new(Removed, (time, program, queue_id))
    if "status=" in line:
        m = _COMMON_DELIVERY.match(line)
        if m is None:
            return _general(line, _STATUS_LINE, clock)
        stamp, iso, program, queue_id, rcpt, orig_to, relay, dsn, status = m.groups()
        time = _common_time(stamp, iso, clock)
        if time is None:
            return _BAD_TIME
        reply = _reply(line, m.end())
        return _new(Delivery, (time, program, queue_id, rcpt, orig_to, relay, dsn, status, reply))
    if _NOTIFICATION_MARKER in line:
        return _general(line, _NOTIFICATION_LINE, clock)
    if _INFO_HEADER in line:
        m = _COMMON_INFO_HEAD.match(line)
        if m is None:
            return _general(line, _HEADER_LINE, clock)
        stamp, iso, program, queue_id = m.groups()
        time = _common_time(stamp, iso, clock)
        if time is None:
            return _BAD_TIME
        return _header_info(line, m.end(), time, program, queue_id)
    if _PICKUP_MARKER in line:
        return _general(line, _PICKUP_LINE, clock)
    if _MESSAGE_ID_MARKER in line:
        m = _COMMON_MESSAGE_ID.match(line)
        if m is None:
            return _general(line, _MESSAGE_ID_LINE, clock)
        stamp, iso, program, queue_id, message_id = m.groups()
        time = _common_time(stamp, iso, clock)
        if time is None:
            return _BAD_TIME
        return _new(MessageId, (time, program, queue_id, message_id))
    return None


def _general(line: str, kind: int, clock: Clock) -> Record | Skipped | None:
    """Every shape we accept, for a line the prefilter put in ``kind``."""
    head = _HEAD.match(line)
    if head is None:
        if line.startswith("<"):
            head = _HEAD_5424.match(line)
        else:
            compose = _COMPOSE.match(line)
            head = _HEAD.match(line, compose.end()) if compose is not None else None
        if head is None:
            return _BAD_PREFIX
    program = head["prog"]
    if not program.startswith("postfix"):
        return None
    stamp = head["bsd"]
    if stamp is None:
        time = _iso_time(head["iso"], clock)
    else:
        time = clock.syslog_time(stamp)
        frac = head["frac"]
        if time is not None and frac is not None:
            time = time.replace(microsecond=int(frac[:6].ljust(6, "0")))
    if time is None:
        return _BAD_TIME
    qid = _QID.match(line, head.end())
    if qid is None:
        return _NO_QUEUE_ID if kind == _STATUS_LINE else None
    queue_id = qid[1]
    pos = qid.end()
    if kind == _STATUS_LINE and line.startswith(_INFO_HEADER, pos):
        kind = _HEADER_LINE  # `status=` in the sender or helo logged after the header
    elif kind == _STATUS_LINE and line.startswith(_MESSAGE_ID, pos):
        kind = _MESSAGE_ID_LINE  # `status=` in the Message-ID

    if kind == _STATUS_LINE:
        return _status(line, pos, time, program, queue_id)
    if kind == _ACTIVE_LINE:
        m = _ACTIVE.match(line, pos)
        return _new(QueueActive, (time, program, queue_id, m[1], int(m[2]))) if m else None
    if kind == _REMOVED_LINE:
        return _new(Removed, (time, program, queue_id)) if len(line) - pos == 7 else None
    if kind == _NOTIFICATION_LINE:
        m = _NOTIFICATION.match(line, pos)
        return Notification(time, program, queue_id, m[1], m[2]) if m else None
    if kind == _PICKUP_LINE:
        m = _PICKUP.match(line, pos)
        return Pickup(time, program, queue_id, m[1]) if m else None
    if kind == _MESSAGE_ID_LINE:
        if not line.startswith(_MESSAGE_ID, pos):
            return None
        return MessageId(time, program, queue_id, line[pos + len(_MESSAGE_ID) :])
    return _header_info(line, pos, time, program, queue_id)


def _header_info(
    line: str, pos: int, time: datetime, program: str, queue_id: str
) -> HeaderInfo | None:
    """The part after `QID: ` of a header_checks INFO line; only our header's."""
    m = _HEADER_INFO.match(line, pos)
    if m is None or m[1].lower() != _UUID_HEADER:
        return None
    client = "" if _ORIGIN.search(line, m.end()) else (m[3] or "")
    return _new(HeaderInfo, (time, program, queue_id, m[1], m[2], client))


def _common_time(stamp: str | None, iso: str | None, clock: Clock) -> datetime | None:
    """The time of a line a whole-line regex matched: its syslog stamp, else its ISO one."""
    if stamp is not None:
        return clock.syslog_time(stamp)
    assert iso is not None  # the regex matched one of the two
    return _iso_time(iso, clock)


def _iso_time(stamp: str, clock: Clock) -> datetime | None:
    """RFC 3339 / journalctl short-iso stamps carry their offset; a bare one gets the clock's."""
    try:
        time = datetime.fromisoformat(stamp)
        if time.tzinfo is None:
            time = clock.localize(time)
    except (ValueError, OverflowError):
        return None
    # Year 1 or 9999 with an offset is out of range for timestamp(): not a crash later.
    return time if 1 < time.year < 9999 else None


def _reply(line: str, pos: int) -> str | None:
    """The reply in parentheses that open at ``pos``: up to the line's last ``)`` (replies
    hold parentheses too), else to its end; None without one. Cut out here, not by the
    regex: its group for it took as long as the rest of the status after `dsn=`."""
    if not line.startswith("(", pos):
        return None
    close = line.rfind(")", pos + 1)
    return line[pos + 1 : close] if close >= 0 else line[pos + 1 :]


def _status(
    line: str, pos: int, time: datetime, program: str, queue_id: str
) -> Delivery | Expired | Skipped:
    """The part after `QID: ` of a line containing `status=`."""
    to = _TO.match(line, pos)
    if to is not None:
        recipient = to[1] if to[1] is not None else to[2]
        pos = to.end()
        orig_to = None
        orig = _ORIG_TO.match(line, pos)
        if orig is not None:
            orig_to = orig[1] if orig[1] is not None else orig[2]
            pos = orig.end()
        st = _STATUS.search(line, pos)
        if st is None or not st[1]:
            return _NO_STATUS
        keys_end = st.start()
        relay = _RELAY.search(line, pos, keys_end)
        dsn = _DSN.search(line, pos, keys_end)
        reply = _reply(line, st.end())
        return Delivery(
            time,
            program,
            queue_id,
            recipient,
            orig_to,
            relay[1] if relay else None,
            dsn[1] if dsn else None,
            st[1],
            reply,
        )
    if line.startswith("from=<", pos):
        exp = _EXPIRED.match(line, pos)
        if exp is None:
            return _NOT_DELIVERY
        return Expired(time, program, queue_id, exp[1], exp[2])
    return _NO_RECIPIENT
