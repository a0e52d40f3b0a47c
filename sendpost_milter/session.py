"""One milter session per SMTP connection: collect the header, record the row at EOM.

Every callback and reply we do not need is negotiated away (``@nocallback``,
``@noreply``): pymilter takes the GIL for each callback, so each one skipped is cost
saved per message, and each reply skipped is a round trip Postfix no longer waits for.
Negotiated, Postfix sends per message DATA (one reply), the headers (no reply) and the
end-of-message (one reply). Whatever happens, the answer is ACCEPT: the milter must never
be the reason a message is rejected, deferred or discarded. The one exception is a probe
of our own `doctor`, authenticated by the key in state-dir (see sendpost_agent.probe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import Milter
import milter as libmilter

from sendpost_agent.header import HEADER_NAME, classify
from sendpost_agent.probe import PROBE_HEADER, is_probe
from sendpost_agent.queuemap import HeaderState, MapWriter
from sendpost_milter.metrics import MilterMetrics

log = logging.getLogger("sendpost_milter")
_HEADER_LOWER = HEADER_NAME.lower()
_PROBE_LOWER = PROBE_HEADER.lower()
_warned: set[str] = set()  # negotiation problems are logged once, not per connection


def _warn_once(message: str, *args: object) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message, *args)


class Session(Milter.Base):
    """pymilter creates one per connection; a connection may carry several messages."""

    def __init__(self, writer: MapWriter, metrics: MilterMetrics,
                 probe_key: bytes | None) -> None:
        super().__init__()
        self._writer = writer
        self._metrics = metrics
        self._probe_key = probe_key
        self._values: list[str] = []
        self._probe: str | None = None

    def negotiate(self, opts: list[int]) -> int:
        """Ask for only macro ``i`` at end-of-message, then negotiate the skipped steps.

        Not pymilter's ``@symlist``: in pymilter 1.0.5 it hands bytes to a C call that
        wants str, and the TypeError makes ``Base.negotiate`` answer ALL_OPTS, which
        silently drops every ``@nocallback``/``@noreply`` below (Postfix then sends
        every step and waits for each reply: 11 round trips for a 5-header message
        instead of 2). Without the list Postfix still sends ``i`` at end-of-message (its
        default milter_end_of_data_macros), so a failure here only costs a warning.
        """
        if opts[0] & libmilter.SETSYMLIST:
            try:
                self._ctx.setsymlist(libmilter.M_EOM, "i")
            except Exception as exc:
                _warn_once("cannot ask the MTA for macro i only at end-of-message: %s", exc)
        result: int = super().negotiate(opts)
        if result != Milter.CONTINUE:
            _warn_once("milter protocol negotiation failed; the MTA sends every step")
        return result

    @Milter.nocallback
    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @Milter.nocallback
    def hello(self, hostname):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @Milter.nocallback
    def envfrom(self, f, *str):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @Milter.nocallback
    def envrcpt(self, to, *str):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def data(self) -> int:
        """Answered on purpose: the reply lets an inet socket's data out without delay.

        Postfix writes the macros of the skipped steps up to DATA without waiting, then
        cleanup writes the headers on the same TCP connection. With nothing answered,
        the milter's kernel delays its ACK and Nagle holds cleanup's write ~40 ms per
        message (measured: p50 45 ms, 83 msg/s). On a unix socket the reply costs one
        short round trip, not measurable in bench/milter_cost.py.
        """
        return Milter.CONTINUE

    @Milter.nocallback
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.nocallback
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        lower = name.lower()
        if lower == _HEADER_LOWER:
            self._values.append(value)
        elif lower == _PROBE_LOWER:
            self._probe = value
        return Milter.CONTINUE

    def eom(self) -> int:
        values, self._values = self._values, []
        probe, self._probe = self._probe, None
        queue_id = None
        try:
            queue_id = self.getsymval("i")
            self._record(queue_id, values)
        except Exception:
            self._metrics.errors.inc()
            log.exception("internal error at end-of-message; message accepted")
        if probe is not None and is_probe(self._probe_key, probe):
            # Only our own doctor's probe, proven by the key in state-dir, is discarded.
            self._metrics.probes.inc()
            log.info("queue ID %s: doctor probe recorded and discarded", queue_id or "?")
            return Milter.DISCARD
        return Milter.ACCEPT

    def abort(self) -> int:
        self._values = []
        self._probe = None
        return Milter.CONTINUE

    def _record(self, queue_id: str | None, values: list[str]) -> None:
        metrics = self._metrics
        metrics.messages.inc()
        state, message_uuid = classify(values)
        metrics.header[state].inc()
        if state is not HeaderState.PRESENT:
            level = logging.INFO if state is HeaderState.MISSING else logging.WARNING
            shown = ", ".join(repr(v[:80]) + ("..." if len(v) > 80 else "") for v in values)
            log.log(level, "queue ID %s: %s header %s %s", queue_id or "?",
                    HEADER_NAME, state.name.lower(), shown)
        if not queue_id:
            metrics.no_queue_id.inc()
            log.warning("the MTA sent no queue ID macro (i) at end-of-message; not recorded."
                        " Fix: keep 'i' in Postfix's milter_end_of_data_macros")
            return
        started = time.perf_counter()
        try:
            self._writer.put(queue_id, message_uuid, state)
        except Exception as exc:
            metrics.map_write_errors.inc()
            log.error("queue ID %s: cannot write the queue map %s: %s",
                      queue_id, self._writer.path, exc)
            return
        metrics.map_write_seconds.observe(time.perf_counter() - started)


def session_factory(writer: MapWriter, metrics: MilterMetrics,
                    probe_key: bytes | None) -> Callable[[], Session]:
    return lambda: Session(writer, metrics, probe_key)
