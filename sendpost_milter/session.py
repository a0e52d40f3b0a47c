"""The milter's callbacks: collect the recipients and the header, record the row at EOM.

They are bound straight to pymilter's C module (``milter``), not through
``Milter.Base``: its dispatch runs a lambda, a context lookup, a decode of every header
value and a decorator per callback, and a callback left unset costs no Python at all
(pymilter answers CONTINUE in C). Every step we do not need is negotiated away, so per
message Postfix sends each RCPT TO (no reply), DATA (one reply), the headers (no reply)
and end-of-message (one reply).

Whatever happens, the answer is ACCEPT: the milter must never be the reason a message
is rejected, deferred or discarded. The one exception is a probe of our own `doctor`,
authenticated by the key in state-dir (see sendpost_agent.probe). An exception that
escapes a callback anyway is answered CONTINUE (see ``server``), not pymilter's default
TEMPFAIL.
"""

from __future__ import annotations

import logging
import time
from typing import Final, Protocol

import milter as libmilter

from sendpost_agent.header import HEADER_NAME, classify
from sendpost_agent.probe import PROBE_HEADER, is_probe
from sendpost_agent.queuemap import HeaderState, address_key, row
from sendpost_agent.trust import Policy
from sendpost_milter.groupwriter import GroupWriter
from sendpost_milter.metrics import MilterMetrics

log = logging.getLogger("sendpost_milter")
_HEADER_LOWER: Final = HEADER_NAME.lower()
_PROBE_LOWER: Final = PROBE_HEADER.lower()
# Most headers are told apart by their length alone, without lower() and two compares.
_LENGTHS: Final = frozenset((len(HEADER_NAME), len(PROBE_HEADER)))
CONTINUE: Final[int] = libmilter.CONTINUE
ACCEPT: Final[int] = libmilter.ACCEPT
DISCARD: Final[int] = libmilter.DISCARD
NOREPLY: Final[int] = libmilter.NOREPLY
# Steps we ask the MTA to leave out (when it can), and headers sent without a reply.
SKIPPED_STEPS: Final[int] = (
    libmilter.P_NOCONNECT
    | libmilter.P_NOHELO
    | libmilter.P_NOMAIL
    | libmilter.P_NOEOH
    | libmilter.P_NOBODY
    | libmilter.P_NOUNKNOWN
)
# What end-of-message needs: the queue ID, and who sent the message (sendpost_agent.trust).
EOM_MACROS: Final = "i {client_addr} {auth_authen}"
UNTRUSTED_LOG_EVERY: Final = 300.0  # seconds between warnings about one client address
STOP_POLL: Final = 0.01  # seconds between a stop's looks at the end-of-message callbacks
_warned: set[str] = set()  # negotiation problems are logged once, not per connection


def _warn_once(message: str, *args: object) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message, *args)


class Context(Protocol):
    """The part of pymilter's per-connection context object we use."""

    def getpriv(self) -> Session | None: ...
    def setpriv(self, session: Session) -> None: ...
    def getsymval(self, name: str) -> str | None: ...
    def setsymlist(self, stage: int, macros: str) -> None: ...


class Session:
    """One SMTP connection's state; a connection may carry several messages."""

    __slots__ = ("probe", "recipients", "values")

    def __init__(self) -> None:
        self.values: list[str] = []
        self.probe: str | None = None
        self.recipients: list[str] = []  # this message's RCPT TO, by address_key


def _session(ctx: Context) -> Session:
    """The connection's state, made here if negotiation made none (after a QUIT_NC the
    MTA starts the next session on the same connection without negotiating again)."""
    session = ctx.getpriv()
    if session is None:
        session = Session()
        ctx.setpriv(session)
    return session


class Callbacks:
    """What libmilter calls; one instance serves every connection (one per process).

    Each callback catches its own errors, counts and logs them: pymilter would only
    print an escaping exception to stderr.
    """

    def __init__(
        self, writer: GroupWriter, metrics: MilterMetrics, probe_key: bytes | None, policy: Policy
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._probe_key = probe_key
        self._policy = policy
        self._untrusted_logged: dict[str, float] = {}  # client address -> last warning
        # What a stop has to wait for or report (libmilter's stop waits for neither). Sets,
        # not counters under a lock: adding and discarding is atomic (the GIL), and a lock
        # and a condition per message cost more than a stop's polling once.
        self._open: set[Session] = set()  # messages past their first RCPT TO, not ended
        self._ending: set[Session] = set()  # end-of-message callbacks putting their rows

    def wait_ended(self, timeout: float) -> int:
        """After libmilter stopped: wait (at most ``timeout`` seconds) for the
        end-of-message callbacks running, whose rows are being put; returns how many
        messages are left open, which libmilter will not read further."""
        deadline = time.monotonic() + timeout
        while self._ending and time.monotonic() < deadline:
            time.sleep(STOP_POLL)
        return len(self._open)

    def negotiate(self, ctx: Context, opts: list[int]) -> int:
        """Ask for ``EOM_MACROS`` at end-of-message and skip every step we can.

        ``opts`` is what the MTA offers: the actions we may take and the protocol steps
        it can leave out. It is answered first, so that nothing below can leave the
        offer as the answer (it includes "send no headers"). We take no action but the
        macro list, and keep only the skips we want; a skip the MTA cannot do just costs
        a C-level CONTINUE. Without the macro list Postfix still sends ``i`` at
        end-of-message (its default milter_end_of_data_macros), and {auth_authen} with
        MAIL FROM, but no {client_addr}: a warning, and only authenticated clients are
        trusted then.
        """
        actions, offered = opts[0], opts[1]
        opts[0] = actions & libmilter.SETSYMLIST
        opts[1] = offered & (SKIPPED_STEPS | libmilter.P_NR_HDR | libmilter.P_NR_RCPT)
        opts[2] = opts[3] = 0
        try:
            ctx.setpriv(Session())
        except Exception:
            self._internal_error("negotiation")
        if not actions & libmilter.SETSYMLIST:
            _warn_once("the MTA cannot take a macro list; it sends its default macros")
            return CONTINUE
        try:
            ctx.setsymlist(libmilter.M_EOM, EOM_MACROS)
        except Exception as exc:
            _warn_once("cannot ask the MTA for macros %s at end-of-message: %s", EOM_MACROS, exc)
        return CONTINUE

    def data(self, ctx: Context) -> int:
        """Answered on purpose: the reply lets an inet socket's data out without delay.

        Postfix writes the macros of the skipped steps up to DATA without waiting, then
        cleanup writes the headers on the same TCP connection. With nothing answered,
        the milter's kernel delays its ACK and Nagle holds cleanup's write ~40 ms per
        message (measured: p50 45 ms, 83 msg/s). On a unix socket the reply costs one
        short round trip, not measurable in bench/milter_cost.py.
        """
        return CONTINUE

    def envrcpt(self, ctx: Context, recipient: bytes, *esmtp_args: bytes) -> int:
        """Each RCPT TO Postfix accepted: the addresses the events will name.

        NOREPLY as for headers: Postfix offers RCPT without a reply (negotiate takes it),
        so recording a recipient costs no round trip; to an MTA that does not, libmilter
        answers CONTINUE itself (tests/test_milter_miltertest.py drives both).
        """
        try:
            # Bytes that are not UTF-8 become U+FFFD, as logwatch decodes the log line
            # naming them: the two still match, and SQLite stores the text.
            address = recipient.decode("utf-8", "replace")
            session = _session(ctx)
            if not session.recipients:
                self._open.add(session)
            session.recipients.append(address_key(address))
        except Exception:
            self._internal_error("a recipient")
        return NOREPLY

    def header(self, ctx: Context, name: str, value: bytes) -> int:
        """Called for every header: only our two are decoded and kept.

        Always NOREPLY: libmilter itself answers CONTINUE to an MTA that cannot take
        headers without a reply (it offers us that step as if every MTA could).
        """
        try:
            if len(name) not in _LENGTHS:
                return NOREPLY
            lower = name.lower()
            if lower == _HEADER_LOWER:
                _session(ctx).values.append(value.decode("utf-8", "surrogateescape"))
            elif lower == _PROBE_LOWER:
                _session(ctx).probe = value.decode("utf-8", "surrogateescape")
        except Exception:
            self._internal_error("a header")
        return NOREPLY

    def eom(self, ctx: Context) -> int:
        session = None
        try:
            session = _session(ctx)
            self._ending.add(session)  # a stop waits for this message's row to be put
            values, session.values = session.values, []
            probe, session.probe = session.probe, None
            recipients, session.recipients = session.recipients, []
            queue_id = ctx.getsymval("i")
            # Our own probe is proven by its key, whoever the client is.
            ours = probe is not None and is_probe(self._probe_key, probe)
            self._record(ctx, queue_id, values, recipients, ours)
            if ours:
                # Only our own doctor's probe, proven by the key in state-dir, is discarded.
                self._metrics.probes.inc()
                log.info("queue ID %s: doctor probe recorded and discarded", queue_id or "?")
                return DISCARD
        except Exception:
            self._internal_error("end-of-message")
        finally:
            if session is not None:
                self._open.discard(session)
                self._ending.discard(session)
        return ACCEPT

    def abort(self, ctx: Context) -> int:
        """The message ended without end-of-message: forget its headers and recipients.
        Postfix also sends it after every end-of-message, with nothing left to forget."""
        try:
            session = ctx.getpriv()
            if session is not None and (
                session.recipients or session.values or session.probe is not None
            ):
                session.values = []
                session.probe = None
                session.recipients = []
                self._open.discard(session)
        except Exception:
            self._internal_error("abort")
        return CONTINUE

    def _log_untrusted(self, queue_id: str | None, client: str | None) -> None:
        """Once per client address every UNTRUSTED_LOG_EVERY: a flood of forged headers
        cannot fill the log (the metric counts every message)."""
        now = time.monotonic()
        key = client or ""
        last = self._untrusted_logged.get(key)
        if last is not None and now - last < UNTRUSTED_LOG_EVERY:
            return
        if len(self._untrusted_logged) >= 10_000:
            self._untrusted_logged.clear()
        self._untrusted_logged[key] = now
        who = (
            f"client {client}"
            if client
            else "a client whose address the MTA did not send ({client_addr})"
        )
        log.warning(
            "queue ID %s: %s header from %s not trusted: the session is neither"
            " SMTP-authenticated nor from trusted-clients (%s), so this message gives no"
            ' events (counted in sendpost_milter_header_total{state="untrusted"}); fix: if'
            " SendPost sends from there, add its network to trusted-clients or have SendPost"
            " authenticate (SMTP AUTH). Logged once per client address every %d minutes",
            queue_id or "?",
            HEADER_NAME,
            who,
            self._policy.describe(),
            UNTRUSTED_LOG_EVERY // 60,
        )

    def _internal_error(self, where: str) -> None:
        self._metrics.errors.inc()
        log.exception("internal error at %s; the mail is not held up", where)

    def _record(
        self,
        ctx: Context,
        queue_id: str | None,
        values: list[str],
        recipients: list[str],
        probe: bool,
    ) -> None:
        metrics = self._metrics
        metrics.messages.inc()
        state, message_uuid = classify(values)
        if state is HeaderState.PRESENT and not probe:
            client = ctx.getsymval("{client_addr}")
            if not self._policy.trusts(client, ctx.getsymval("{auth_authen}")):
                state, message_uuid = HeaderState.UNTRUSTED, None
                self._log_untrusted(queue_id, client)
        metrics.header[state].inc()
        if state is not HeaderState.PRESENT and state is not HeaderState.UNTRUSTED:
            level = logging.INFO if state is HeaderState.MISSING else logging.WARNING
            shown = ", ".join(repr(v[:80]) + ("..." if len(v) > 80 else "") for v in values)
            log.log(
                level,
                "queue ID %s: %s header %s %s",
                queue_id or "?",
                HEADER_NAME,
                state.name.lower(),
                shown,
            )
        if not queue_id:
            metrics.no_queue_id.inc()
            log.warning(
                "the MTA sent no queue ID macro (i) at end-of-message; not recorded."
                " Fix: keep 'i' in Postfix's milter_end_of_data_macros"
            )
            return
        # Committed now when mail is quiet, else with others after the answer (groupwriter).
        self._writer.put(row(queue_id, message_uuid, state, recipients=dict.fromkeys(recipients)))
