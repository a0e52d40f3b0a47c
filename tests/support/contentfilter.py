"""A stand-in for amavis: an after-queue content filter that re-injects into Postfix.

It takes mail over SMTP on its own port (Postfix's ``content_filter`` next hop), passes
it unchanged to Postfix's re-injection listener and answers with the queue ID Postfix
gave it, exactly like amavis: ``250 2.0.0 Ok: queued as NEWID``.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.postfix import QUEUED_AS
from tests.support.sink import BoundController


class _Reinject:
    def __init__(self, port: int) -> None:
        self.port = port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        loop = asyncio.get_running_loop()
        try:
            queue_id = await loop.run_in_executor(None, self._send, envelope)
        except (OSError, smtplib.SMTPException) as exc:
            return f"451 4.3.0 re-injection failed: {exc}"
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _send(self, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        assert isinstance(content, bytes)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo("filter.localdomain")
            smtp.mail(envelope.mail_from or "")
            for rcpt in envelope.rcpt_tos:
                smtp.rcpt(rcpt)
            _, reply = smtp.data(content)
        match = QUEUED_AS.search(reply.decode())
        if match is None:
            raise smtplib.SMTPException(f"no queue ID in {reply!r}")
        return match.group(1)


NO_MILTERS = (
    "    -o smtpd_milters=\n    -o receive_override_options="
    "no_unknown_recipient_checks,no_header_body_checks,no_milters\n"
)


def master_cf(reinject_port: int, options: str = NO_MILTERS) -> str:
    """master.cf lines of an amavis-style setup: the ``smtp-amavis`` transport to the
    filter, and the re-injection listener on 127.0.0.1:``reinject_port`` with
    ``-o content_filter=`` and ``options`` (by default without milters, as shipped)."""
    return (
        "smtp-amavis unix - - n - 2 smtp\n"
        f"127.0.0.1:{reinject_port} inet n - n - - smtpd\n    -o content_filter=\n" + options
    )


class ContentFilter:
    def __init__(self, reinject_port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        self._controller = BoundController(
            _Reinject(reinject_port), sock, server_hostname="filter.localdomain"
        )

    def __enter__(self) -> ContentFilter:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
