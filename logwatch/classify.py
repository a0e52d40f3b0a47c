"""Decide which ingestion-API event one Postfix delivery status stands for.

Pure functions, no I/O. ``event_for_status`` maps ``status=`` to an event; only
``bounced`` needs judgement (hard ``bounced`` vs ``soft_bounced``), made by ``RULES``: one
ordered table, first match wins, documented row by row in docs/CLASSIFICATION.md.

A hard bounce makes SendPost suppress the address for good, so only replies that say the
recipient address or its domain does not exist are hard; everything else permanent
(full mailbox, policy, reputation, authentication, size, protocol, unknown) is soft.
The SMTP stage Postfix logs ("in reply to RCPT TO command") says what the server judged:
only an answer to RCPT TO, or Postfix's own finding, can say an address is dead. Then the
enhanced status code decides, and the reply text where the code says nothing (``5.0.0``,
``5.5.0``, no code) or where servers are known to send a misleading code. ``sent`` and
``deferred`` lines never reach the table: they are the hot path.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

__all__ = [
    "AFTER_RCPT_RULE",
    "RULES",
    "EventType",
    "Rule",
    "Stage",
    "Verdict",
    "event_for_status",
    "expired_verdict",
    "reply_stage",
]

Code = tuple[int, ...]


class EventType(StrEnum):
    """The API's ``event_type`` values."""

    DELIVERED = "delivered"
    BOUNCED = "bounced"
    SOFT_BOUNCED = "soft_bounced"
    DEFERRED = "deferred"


class Stage(StrEnum):
    """Where in the SMTP dialogue a reply came, from Postfix's ``(in reply to X command)``."""

    BEFORE_RCPT = "before RCPT TO"  # greeting, HELO/EHLO/LHLO, STARTTLS, AUTH, MAIL FROM...
    RCPT = "RCPT TO"  # the server's answer to naming this recipient
    AFTER_RCPT = "after RCPT TO"  # DATA, end of DATA: an answer about the whole message
    NONE = "no stage"  # no remote reply: Postfix's own text or a local delivery's


class Verdict(NamedTuple):
    """The event to report for one recipient, and the rule that chose it (for logs/tests)."""

    event_type: EventType
    smtp_code: int | None
    description: str
    rule: str


_ANY_STAGE: Final = frozenset(Stage)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the bounce table.

    Matches when the reply came at one of ``stages``, the bounce's enhanced code starts
    with one of ``codes`` (component-wise, so ``5.1.1`` does not match ``5.1.10``; empty =
    any code) and ``text``, if set, is found in the reply. Stage and codes are compared
    before any regex runs.
    """

    name: str
    event_type: EventType
    codes: tuple[Code, ...]
    text: re.Pattern[str] | None
    why: str
    stages: frozenset[Stage]

    def matches(self, code: Code, stage: Stage, reply: str) -> bool:
        """True when this row decides a bounce with enhanced ``code`` and ``reply``."""
        if stage not in self.stages:
            return False
        if self.codes and not any(code[: len(c)] == c for c in self.codes):
            return False
        return self.text is None or self.text.search(reply) is not None


def _rule(
    name: str,
    event_type: EventType,
    codes: str,
    text: str | None,
    why: str,
    stages: frozenset[Stage] = _ANY_STAGE,
) -> Rule:
    """Build a row from readable strings: space-separated code prefixes, a regex source."""
    parsed = tuple(tuple(int(part) for part in c.split(".")) for c in codes.split())
    pattern = re.compile(text, re.IGNORECASE) if text else None
    return Rule(name, event_type, parsed, pattern, why, stages)


_HARD: Final = EventType.BOUNCED
_SOFT: Final = EventType.SOFT_BOUNCED

# Codes that carry no detail: the remote gave none (Postfix then logs x.0.0), or the
# catch-all 5.5.0 that Outlook/Hotmail use for "mailbox unavailable". The text decides.
_GENERIC = "5.0.0 5.5.0"

# Words about a user are only a verdict on the address when a server said them in answer
# to the recipient (RCPT TO, or after it: the stage rule below then makes them soft).
# Without a stage they are a local program's or another MTA's prose: see
# recipient-wording-without-stage.
_SPOKEN: Final = frozenset({Stage.RCPT, Stage.AFTER_RCPT})

# Wording that states the recipient mailbox does not exist (Postfix, Exim, qmail/chkuser,
# Gmail, iCloud, Yahoo "dd", Mail.ru, Yandex, Proofpoint, MessageLabs, Sendmail, ...).
_NO_SUCH_RECIPIENT = (
    r"\b(?:(?:user|recipient|alias|mailbox|addressee)(?: <?[\w.+-]+@[\w.-]+>?)? unknown\b"
    r"|unknown (?:or illegal )?(?:user|recipient|alias|mailbox)\b"
    r"|no such (?:user|recipient|mailbox|account|address)\b"
    r"|(?:user|recipient|mailbox|account|address)\b[^.;]{0,60}?"
    r"\b(?:does not|doesn'?t|did not) exist"
    r"|(?:user|recipient|mailbox|account|address) (?:does )?not exists?\b"
    r"|(?:user|recipient|mailbox|account|address) not found\b"
    r"|(?:user|recipient|mailbox|account|address) (?:could not|couldn'?t|cannot|can'?t) be found"
    r"|invalid (?:user|recipient|mailbox)\b"
    r"|not a valid (?:user|recipient|mailbox)\b"
    r"|not (?:a |one of )?our (?:user|customer)s?\b"
    r"|no mailbox here by that name"
    r"|doesn'?t have an? \S+ account\b)"
)
# Outlook/Hotmail, GMX/web.de and Exim answers to a recipient that does not exist.
_MAILBOX_UNAVAILABLE = (
    r"\b(?:mailbox unavailable|unrouteable address|recipient cannot be verified)\b"
)

# Wording that states the recipient's domain or host does not exist or takes no mail
# (Postfix, Sendmail "Host unknown", qmail, OpenSMTPD, null MX, relayed provider prose).
# A DNS answer that may change ("Host not found, try again") is not one.
_NO_SUCH_DOMAIN = (
    r"\b(?:(?:host|domain)(?: name)?(?: [\w.-]+)? (?:unknown|(?:does not|doesn'?t) exist)\b"
    r"|(?:host|domain)(?: name)?(?: [\w.-]+)? not found\b(?!,? try again)"
    r"|(?:unknown|illegal|non-?existent|no such) (?:host|domain)\b"
    r"|no (?:MX|mail exchanger)(?: records?)? (?:found )?for\b"
    r"|couldn'?t find (?:a mail exchanger|any host)"
    r"|record indicated no SMTP service"
    r"|(?:domain|host)(?: [\w.-]+)? (?:does not|doesn'?t) accept (?:any )?mail\b(?! from)"
    r"|domain is not reachable)"
)
# The mailbox exists but is full, or the message is too big for it.
_MAILBOX_FULL = (
    r"\b(?:over ?quota|quota exceeded|mailbox (?:is )?full|insufficient (?:system )?storage"
    r"|(?:message|mail) (?:size|too (?:big|large)))"
)
# We are sending too much or too fast: a limit on us, not a verdict on the address.
_OVER_SENDING = r"\b(?:too many\b|rate limit|sending limit|sent too (?:many|much))"

RULES: tuple[Rule, ...] = (
    # 1. Rejections that are not about this recipient at all, whatever the code says.
    _rule(
        "rejected-before-rcpt",
        _SOFT,
        "",
        None,
        "refused at greeting, HELO or MAIL FROM, before any recipient was named: "
        "a verdict on our IP or sender, not on the address",
        frozenset({Stage.BEFORE_RCPT}),
    ),
    _rule(
        "sender-or-client-rejected",
        _SOFT,
        "",
        r"\b(?:sender|client host|helo command)(?: address| domain| verify)?"
        r"(?: [<\[]?[\w.@+:-]+[>\]]?)?"
        r" (?:rejected|denied|refused|failed|unknown|invalid|not (?:allowed|authorized|found)"
        r"|(?:does not|doesn'?t) exist)|\breverse (?:DNS|lookup|hostname)|\bPTR\b|\brDNS\b",
        "the server blames our sender address, client host, its reverse DNS (PTR) or HELO "
        "(Postfix delays these to RCPT), so even a 'User unknown' or 'host not found' here "
        "is about us",
    ),
    _rule(
        "sender-address-code",
        _SOFT,
        "5.1.7 5.1.8",
        None,
        "RFC 3463 bad sender mailbox/system address: our side, not the recipient",
    ),
    # 2. Texts that override the code: the code is known to lie for these.
    _rule(
        "domain-not-found",
        _HARD,
        "5.0 5.1.0 5.4 5.5.0",
        _NO_SUCH_DOMAIN,
        "the recipient's domain or host does not exist or takes no mail: Postfix's own "
        "'Host or domain name not found' (logged as 5.4.4 'unable to route', which alone "
        "reads as soft), Sendmail 'Host unknown', 'Invalid domain', 'No MX found for "
        "domain', a null MX, 'domain is not reachable'. Not with a 5.7.x policy code",
    ),
    _rule(
        "full-or-rate-limited-despite-5.1",
        _SOFT,
        "5.1",
        f"{_MAILBOX_FULL}|{_OVER_SENDING}",
        "a 5.1.x code on a reply that says the mailbox is over quota or that we send "
        "too much/too fast: the address exists, the words win over a careless code",
    ),
    _rule(
        "no-such-recipient-despite-code",
        _HARD,
        "5.1.0 5.2 5.3 5.7.1",
        _NO_SUCH_RECIPIENT,
        "the words say the user does not exist under an unspecific address (5.1.0), "
        "mailbox (5.2.x: Sendmail-style '5.2.1 ... User Unknown'), system (5.3.x) or "
        "generic policy code (5.7.1: Postfix access(5) REJECT, Yandex 'No such user!')",
        _SPOKEN,
    ),
    _rule(
        "eop-dbeb-access-denied",
        _HARD,
        "5.4.1",
        r"Recipient address rejected: Access denied",
        "Exchange Online Directory Based Edge Blocking: the recipient is not in the "
        "tenant's directory (sent as 5.4.1, which RFC 3463 calls 'no answer from host')",
        _SPOKEN,
    ),
    _rule(
        "address-rejected-5.1.0",
        _HARD,
        "5.1.0",
        r"\baddress rejected\b",
        "5.1.0 'other address status' does not say which address: hard only when the "
        "words say the (recipient) address is rejected ('#5.1.0 Address rejected') or "
        "unknown (row above); Postfix itself sends 5.1.0 for a rejected sender",
    ),
    # 3. The enhanced status code.
    _rule(
        "bad-recipient-address",
        _HARD,
        "5.1.1 5.1.3",
        None,
        "RFC 3463 bad destination mailbox address (5.1.1) or its syntax (5.1.3)",
    ),
    _rule(
        "bad-recipient-domain",
        _HARD,
        "5.1.2 5.1.10",
        None,
        "RFC 3463 bad destination system (5.1.2), RFC 7505 null MX (5.1.10): the "
        "domain accepts no mail",
    ),
    _rule(
        "mailbox-moved",
        _HARD,
        "5.1.6",
        None,
        "RFC 3463 destination mailbox has moved, no forwarding address: this address is dead",
    ),
    _rule(
        "address-status-other",
        _SOFT,
        "5.1",
        None,
        "other 5.1.x (5.1.0 without words naming the recipient, ambiguous 5.1.4, relayed "
        "to non-compliant mailer 5.1.9, ...) do not say the mailbox is missing",
    ),
    _rule(
        "mailbox-status",
        _SOFT,
        "5.2",
        None,
        "mailbox exists but is full (5.2.2), disabled (5.2.1), or the message is too big "
        "for it (5.2.3): may recover",
    ),
    _rule(
        "mail-system-status",
        _SOFT,
        "5.3",
        None,
        "receiving system full, not accepting, message too big (5.3.4) or broken "
        "(local command died 5.3.0): not about the address",
    ),
    _rule(
        "network-routing-status",
        _SOFT,
        "5.4",
        None,
        "routing trouble: mail loop (5.4.6), unable to route (5.4.4), relay denied "
        "(5.4.1): usually configuration, may be fixed",
    ),
    _rule(
        "content-status",
        _SOFT,
        "5.6",
        None,
        "the message content or encoding was refused, not the recipient",
    ),
    _rule(
        "security-policy-status",
        _SOFT,
        "5.7",
        None,
        "policy, spam, reputation/block lists, DMARC/DKIM/SPF (5.7.26, 5.7.27, 5.7.23), "
        "relay access denied, TLS/auth required: fix the sending side and the address works",
    ),
    # 4. No useful code (5.0.0, 5.5.0, none): the text decides. Soft rows first, so a reply
    #    that mentions both spam and an unknown user stays soft.
    _rule(
        "mailbox-full-text",
        _SOFT,
        _GENERIC,
        _MAILBOX_FULL,
        "full mailbox or oversized message without a code saying so",
    ),
    _rule(
        "policy-block-text",
        _SOFT,
        _GENERIC,
        r"spam|\b(?:DT:SPM|black ?list|block ?list|blocked\b|reputation|polic(?:y|ies)\b"
        r"|prohibit|denied\b|relay(?:ing)? (?:access )?(?:denied|not (?:allowed|permitted)))"
        rf"|{_OVER_SENDING}",
        "spam, reputation, block list, policy, relay refusal or a sending limit without "
        "a code saying so",
    ),
    _rule(
        "postfix-recipient-table",
        _HARD,
        _GENERIC,
        r"\bUser unknown in (?:local recipient|virtual alias|virtual mailbox|relay recipient)"
        r' table\b|^unknown user: "',
        "Postfix's own verdict on the address, logged without a remote reply (and without "
        "a dsn= by old Postfix): no such entry in its recipient tables, local(8) "
        "'unknown user'",
        frozenset({Stage.NONE}),
    ),
    _rule(
        "no-such-recipient-text",
        _HARD,
        _GENERIC,
        _NO_SUCH_RECIPIENT,
        "a server answered the recipient with words that say the mailbox does not exist "
        "('No such user', '550 User unknown', Mail.ru 'invalid mailbox', Yahoo 'dd ... "
        "doesn't have a ... account')",
        _SPOKEN,
    ),
    _rule(
        "mailbox-unavailable-text",
        _HARD,
        _GENERIC,
        _MAILBOX_UNAVAILABLE,
        "Hotmail/Outlook (5.5.0), GMX/web.de '550 Requested action not taken: mailbox "
        "unavailable' and Exim 'Unrouteable address' answer a non-existent recipient",
        _SPOKEN,
    ),
    _rule(
        "recipient-wording-without-stage",
        _SOFT,
        _GENERIC,
        f"{_NO_SUCH_RECIPIENT}|{_MAILBOX_UNAVAILABLE}",
        "'user unknown' prose with no SMTP stage and no code: another MTA's or a local "
        "program's report, which cannot be told from a filter's refusal (Sisimai: "
        "'filtered'); a delivery agent that knows the user is missing says 5.1.1",
        frozenset({Stage.NONE}),
    ),
    _rule(
        "protocol-status",
        _SOFT,
        "5.5",
        None,
        "SMTP protocol errors (syntax, too many recipients 5.5.3): a client/server "
        "mismatch, not the address",
    ),
    _rule(
        "default-permanent-failure",
        _SOFT,
        "",
        None,
        "DEFAULT for a permanent failure no row explains: soft, since a wrong hard bounce "
        "suppresses a good address forever while a wrong soft bounce only retries",
    ),
)

# The stage rule, applied to the table's answer: a server that accepted the recipient at
# RCPT TO and refuses after DATA answers for the whole message (Postfix logs that one
# reply for every recipient of the transaction), having seen the sender and the content.
AFTER_RCPT_RULE: Final = _rule(
    "recipient-verdict-after-data",
    _SOFT,
    "",
    None,
    "a hard verdict given after RCPT TO (DATA, end of DATA): the reply is about the whole "
    "message and its sender, so it cannot prove this address dead; mobile carriers' "
    "sender filters answer 'Unknown user' there for addresses that exist",
)

# Statuses reported without looking at the table: (event, rule name).
_new: Final = tuple.__new__  # Verdict(...) without its Python-level __new__: one per status line
_PLAIN_STATUSES: Final[dict[str, tuple[EventType, str]]] = {
    "sent": (EventType.DELIVERED, "status-sent"),
    "deferred": (EventType.DEFERRED, "status-deferred"),
    "SOFTBOUNCE": (EventType.DEFERRED, "status-softbounce"),
}
_EXPIRED_RULE: Final = "queue-expired"

# Basic reply code, separator ('-' = multi-line), optional enhanced code (RFC 3463).
_LEAD: Final = re.compile(r"([2-5]\d\d)(?:([ -])(?:([245]\.\d{1,3}\.\d{1,3})\b)?|$)")
# Continuation prefixes that Postfix kept when it joined a multi-line reply into one line.
_CONTINUATION: Final = re.compile(r"\s([2-5]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})(?=\s))?\s*")
# qmail-style enhanced code in the text: "(#5.1.1)", "550 #5.1.0 Address rejected."
_HASH_CODE: Final = re.compile(r"#(5\.\d{1,3}\.\d{1,3})\b")
_DSN: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CLASS_REPLY_CODE: Final = {2: 250, 4: 450, 5: 550}
_STAGE_MARK: Final = "(in reply to "
# What Postfix's SMTP/LMTP client sends before any recipient (smtp_proto.c).
_BEFORE_RCPT_COMMANDS: Final = frozenset(
    {"HELO", "EHLO", "LHLO", "STARTTLS", "AUTH", "XCLIENT", "XFORWARD", "MAIL FROM"}
)
_NO_DETAIL: Final[Code] = (5, 0, 0)


def event_for_status(status: str, dsn: str | None, reply: str | None) -> Verdict | None:
    """The event for one ``status=`` line, or None when it is no delivery outcome.

    ``expired``/``force-expired`` also give None: they name no recipient, the caller
    pairs them with remembered deferrals via ``expired_verdict``. Address-verification
    probes (``deliverable``, ``undeliverable``...) are not deliveries.
    """
    if status == "sent":  # its reply names the next queue ID: never twice the same text
        return _status_verdict(status, dsn, reply)
    return _cached_status_verdict(status, dsn, reply)


def _status_verdict(status: str, dsn: str | None, reply: str | None) -> Verdict | None:
    if status == "bounced":
        return _classify_bounce(dsn, reply or "")
    plain = _PLAIN_STATUSES.get(status)
    if plain is None:
        return None
    reply = reply or ""
    if reply[3:4] == " " and reply[:3].isascii() and reply[:3].isdigit() and "said: " not in reply:
        # The common single-line answer "250 2.0.0 Ok ...": nothing to find or fold.
        return _new(Verdict, (plain[0], int(reply[:3]), reply.strip(), plain[1]))
    smtp_code, _, description = _parse_reply(reply)
    return _new(Verdict, (plain[0], _smtp_code(smtp_code, dsn), description, plain[1]))


# Rejection and deferral texts come back again and again; walking RULES is the slow part.
_cached_status_verdict: Final = functools.lru_cache(maxsize=4096)(_status_verdict)


def expired_verdict(last_deferral: Verdict | None) -> Verdict:
    """soft_bounced for a recipient whose message expired in the queue.

    Postfix gave up after retrying a temporary failure: the address may well be fine,
    so never a hard bounce. Carries the last deferral's reason and code when known.
    """
    if last_deferral is None:
        return Verdict(
            _SOFT, None, "message expired in the queue (no deferral reason seen)", _EXPIRED_RULE
        )
    description = f"message expired in the queue; last deferral: {last_deferral.description}"
    return Verdict(_SOFT, last_deferral.smtp_code, description, _EXPIRED_RULE)


def _classify_bounce(dsn: str | None, reply: str) -> Verdict:
    """Walk ``RULES`` for a ``status=bounced`` line (the last row always matches), then
    the stage rule: no hard verdict from a reply given after RCPT TO."""
    smtp_code, reply_enhanced, description = _parse_reply(reply)
    code = _bounce_code(reply_enhanced, description, dsn)
    stage = reply_stage(description)
    rule = next(r for r in RULES if r.matches(code, stage, description))
    if rule.event_type is _HARD and stage is Stage.AFTER_RCPT:
        rule = AFTER_RCPT_RULE
    return Verdict(rule.event_type, _smtp_code(smtp_code, dsn), description, rule.name)


def reply_stage(reply: str) -> Stage:
    """The SMTP stage of a Postfix reply text, from the ``(in reply to X command)`` that
    Postfix appends, or ``refused to talk to me`` (the greeting); NONE without either."""
    if reply.endswith(" command)"):
        at = reply.rfind(_STAGE_MARK)
        if at >= 0:
            command = reply[at + len(_STAGE_MARK) : -len(" command)")]
            if command == "RCPT TO":
                return Stage.RCPT
            if command in _BEFORE_RCPT_COMMANDS:
                return Stage.BEFORE_RCPT
            return Stage.AFTER_RCPT  # DATA, end of DATA: nothing else comes after RCPT TO
    if "refused to talk to me" in reply:
        return Stage.BEFORE_RCPT
    return Stage.NONE


def _parse_reply(reply: str) -> tuple[int | None, Code | None, str]:
    """Basic code, enhanced code and description of a Postfix reply text.

    The code is read where the remote answer starts (after ``said: `` or ``refused to
    talk to me: ``, else at the start: ``250 2.0.0 Ok: queued as X``). The description is
    the whole text, with the continuation prefixes of a multi-line reply folded away:
    ``550-5.7.1 a 550-5.7.1 b 550 5.7.1 c`` becomes ``550 5.7.1 a b c``.
    """
    reply = reply.strip()
    start = _server_answer_start(reply)
    lead = _LEAD.match(reply, start)
    if lead is None:
        return None, None, reply
    basic, separator, enhanced = lead.groups()
    code = tuple(int(part) for part in enhanced.split(".")) if enhanced else None
    if code is not None and code[0] != int(basic[0]):
        code = None  # RFC 3463: the classes must agree; Postfix falls back too
    if separator == "-":
        reply = _fold(reply, start, lead.end(), basic, enhanced)
    return int(basic), code, reply


def _server_answer_start(reply: str) -> int:
    """Where the remote server's own answer starts (0: the whole text is the answer)."""
    for marker in ("said: ", "refused to talk to me: "):
        at = reply.find(marker)
        if at == 0 or (at > 0 and not (reply[at - 1].isalnum() or reply[at - 1] == "_")):
            return at + len(marker)  # at a word boundary
    return 0


def _fold(reply: str, start: int, body_start: int, basic: str, enhanced: str | None) -> str:
    """Join a multi-line reply: drop the repeated ``NNN-x.y.z`` after the first line."""

    def drop(m: re.Match[str]) -> str:
        same = m.group(1) == basic and m.group(2) == enhanced
        return " " if same else m.group(0)

    first = f"{basic} {enhanced} " if enhanced else f"{basic} "
    body = _CONTINUATION.sub(drop, reply[body_start:]).lstrip()
    return (reply[:start] + first + body).rstrip()


def _bounce_code(reply_enhanced: Code | None, text: str, dsn: str | None) -> Code:
    """The enhanced code a bounce is judged by: the reply's, a qmail ``#5.x.x``, dsn."""
    if reply_enhanced is not None:
        return reply_enhanced
    hashed = _HASH_CODE.search(text)
    if hashed:
        return tuple(int(part) for part in hashed.group(1).split("."))
    if dsn and _DSN.fullmatch(dsn):
        return tuple(int(part) for part in dsn.split("."))
    return _NO_DETAIL


def _smtp_code(reply_code: int | None, dsn: str | None) -> int | None:
    """The reply's code, else the conventional code of the DSN class (4.x.x -> 450)."""
    if reply_code is not None:
        return reply_code
    if dsn and _DSN.fullmatch(dsn):
        return _CLASS_REPLY_CODE[int(dsn[0])]
    return None
