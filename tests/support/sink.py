"""In-process SMTP sink used as the relayhost of a test Postfix.

The recipient's local part picks the outcome, so a test chooses a delivery fate just by
choosing an address:

- ``bounce*``  -> ``550 5.1.1 <addr>: Recipient address rejected: User unknown`` at RCPT
- ``full*``    -> ``552 5.2.2 <addr>: Mailbox full`` at RCPT
- ``defer*``   -> ``450 4.2.1 <addr>: Mailbox temporarily unavailable`` at RCPT
- anything else is accepted; DATA is answered ``250 2.0.0 Ok: sink accepted``.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import socket
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ACCEPT_DATA_REPLY = "250 2.0.0 Ok: sink accepted"

#: (local-part prefix, reply template) checked in order; ``{addr}`` is the recipient.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("bounce", "550 5.1.1 <{addr}>: Recipient address rejected: User unknown"),
    ("full", "552 5.2.2 <{addr}>: Mailbox full"),
    ("defer", "450 4.2.1 <{addr}>: Mailbox temporarily unavailable"),
)


@dataclass(frozen=True)
class SinkMessage:
    """One message the sink accepted, exactly as Postfix delivered it.

    ``mail_from`` is "" for the null sender (Postfix's bounces), not aiosmtpd's "<>".
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    received_at: float = field(default_factory=time.time)

    def parsed(self) -> email.message.EmailMessage:
        """Parse the raw content, for header/body assertions."""
        msg = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


def reply_for(address: str, rules: tuple[tuple[str, str], ...] = DEFAULT_RULES) -> str | None:
    """Return the rejection reply for ``address``, or None when it is accepted."""
    local = address.rsplit("@", 1)[0].lower()
    for prefix, template in rules:
        if local.startswith(prefix):
            return template.format(addr=address)
    return None


class _Handler:
    """aiosmtpd handler: decides RCPT replies and records accepted messages."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = reply_for(address, self._sink.rules)
        self._sink._record_rcpt(address, reply or "250 2.1.5 Ok")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):  # only with decode_data=True, which we do not use
            content = content.encode("utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        self._sink._record_message(
            SinkMessage(
                mail_from="" if mail_from == "<>" else mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content,
            )
        )
        return ACCEPT_DATA_REPLY


class BoundController(Controller):
    """Controller serving on a socket we bound ourselves, so port 0 works without races."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Awaitable[Any]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class Sink:
    """Thread-backed SMTP sink on 127.0.0.1; keeps its port across stop()/start().

    Keeping the port lets a test stop the sink to simulate a dead relay (Postfix logs
    ``status=deferred ... Connection refused``) and start it again to let mail through.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        rules: tuple[tuple[str, str], ...] = DEFAULT_RULES,
    ) -> None:
        self.host = host
        self.rules = rules
        self._port: int | None = None
        self._controller: BoundController | None = None
        self._cond = threading.Condition()
        self._messages: list[SinkMessage] = []
        self._rcpt_replies: list[tuple[str, str]] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Sink:
        """Bind (port 0 first time, same port afterwards) and serve in a thread."""
        if self._controller is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port or 0))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        controller = BoundController(
            _Handler(self), sock, server_hostname="sink.localdomain", ready_timeout=10.0
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop serving; recorded messages are kept."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """TCP port the sink listens on (assigned at the first start())."""
        if self._port is None:
            raise RuntimeError("Sink has not been started")
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    # -- recorded data ---------------------------------------------------------------

    def _record_message(self, message: SinkMessage) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def _record_rcpt(self, address: str, reply: str) -> None:
        with self._cond:
            self._rcpt_replies.append((address, reply))
            self._cond.notify_all()

    @property
    def messages(self) -> list[SinkMessage]:
        """Snapshot of accepted messages, in arrival order."""
        with self._cond:
            return list(self._messages)

    @property
    def rcpt_replies(self) -> list[tuple[str, str]]:
        """Every RCPT TO seen (address, reply sent), including rejected ones."""
        with self._cond:
            return list(self._rcpt_replies)

    def messages_to(self, address: str) -> list[SinkMessage]:
        """Accepted messages that had ``address`` among their envelope recipients."""
        return [m for m in self.messages if address in m.rcpt_tos]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()
            self._rcpt_replies.clear()

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
        """Block until at least ``count`` messages arrived; return them all.

        Raises TimeoutError naming what did arrive, so a failing test says why.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [(m.mail_from, m.rcpt_tos) for m in self._messages]
                    raise TimeoutError(
                        f"sink got {len(self._messages)} of {count} messages within "
                        f"{timeout}s: {got}; RCPT replies: {self._rcpt_replies}"
                    )
                self._cond.wait(remaining)
            return list(self._messages)
