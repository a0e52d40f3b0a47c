"""``sendpost-agent doctor``'s live checks: does the running agent see a message now?

One probe goes through the local smtpd; our milter records it and then DISCARDS it
(``sendpost_agent.probe``): it never leaves the host. Then the map row, the mail log
and the endpoint are checked. Every step has a timeout, so doctor never hangs. The
checks of Postfix's configuration, which tell where to send the probe, are in
``sendpost_agent.doctor``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import smtplib
import socket
import stat
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from logwatch.journal import read_journal_batches
from logwatch.logfile import LogUnreadable
from sendpost_agent import __version__
from sendpost_agent.config import Config, HostPort, Secret
from sendpost_agent.doctor_check import Check
from sendpost_agent.header import HEADER_NAME
from sendpost_agent.miltersocket import connect
from sendpost_agent.postconf import PostfixConfig, Service, split_list
from sendpost_agent.probe import KEY_FILE, PROBE_HEADER, DamagedKey, load_key, make_token
from sendpost_agent.queuemap import Entry, MapError, MapReader

if TYPE_CHECKING:
    from sendpost_agent.doctor import Listener

MILTER_CONNECT_TIMEOUT = 2.0
SMTP_TIMEOUT = 10.0
MAP_WAIT = 10.0  # the row is written before Postfix answers DATA; this is slack
LOG_WAIT = 5.0
LOG_FRESH = 3600.0
HTTP_TIMEOUT = 10.0

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


def _user_cannot_connect(path: Path, user: str) -> str | None:
    """Why ``user`` (Postfix's smtpd) cannot connect to the unix socket, or None.

    A socket made with the wrong umask is the classic silent failure: Postfix logs
    "Permission denied" and mail flows on unseen (postfix-conf/README.md).
    """
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return None  # cannot tell
    if account.pw_uid == 0:
        return None
    groups = set(os.getgrouplist(user, account.pw_gid))
    needs = [*((d, 1, "search") for d in reversed(path.parents)), (path, 2, "write to")]
    for item, bit, what in needs:
        st = item.stat()
        shift = 6 if st.st_uid == account.pw_uid else 3 if st.st_gid in groups else 0
        if not st.st_mode >> shift & bit:
            return (
                f"user {user} (Postfix's smtpd) cannot {what} {item} (mode"
                f" {stat.filemode(st.st_mode)}, uid {st.st_uid}, gid {st.st_gid})"
            )
    return None


def _read_from(path: Path, offset: int) -> str:
    """What was appended to ``path`` after ``offset`` (all of it after a rotation)."""
    try:
        with path.open("rb") as log:
            if log.seek(0, os.SEEK_END) < offset:
                offset = 0
            log.seek(offset)
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


async def _post_empty_batch(url: str, key: Secret) -> tuple[int | None, str]:
    """POST ``{"events": []}``: the API checks the key first, and there is no event."""
    headers = {
        "X-SP-Event-ApiKey": key.reveal(),
        "Content-Type": "application/json",
        "User-Agent": f"sendpost-agent/{__version__} doctor",
    }
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
            session.post(url, data=b'{"events": []}') as response,
        ):
            text = await response.text(errors="replace")
            return response.status, text[:200].replace(key.reveal(), "********")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


class LiveChecks:
    """Probe, mail log and endpoint, in this order: the probe's queue ID feeds the
    mail-log check. ``listeners``: the smtpd services and how they treat our milter."""

    def __init__(
        self,
        config: Config,
        postfix: PostfixConfig,
        listeners: list[Listener],
        smtp: HostPort | None = None,
    ) -> None:
        self.config = config
        self.postfix = postfix
        self.listeners = listeners
        self.smtp = smtp
        self.probe_queue_id: str | None = None
        self.log_mark = 0
        self.probe_sent_at = 0.0  # Unix time: where the journal is searched for the probe

    def check_probe(self) -> Check:
        """Send a probe through smtpd; the milter must record its UUID and discard it."""
        name = "probe"
        state_dir = self.config.state_dir
        try:
            key = load_key(state_dir)
        except DamagedKey as exc:
            return Check(
                name,
                "fail",
                f"not sent: {exc}, so the milter could not recognise and discard the probe",
                exc.fix,
            )
        if key is None:
            key_path = state_dir / KEY_FILE
            if key_path.exists():
                return Check(
                    name,
                    "fail",
                    f"cannot read {key_path}",
                    "run doctor as root or as the agent's user",
                )
            return Check(
                name,
                "fail",
                f"{key_path} does not exist: the milter has not run with state-dir {state_dir}",
                "start the milter, or give doctor the milter's --state-dir",
            )
        if not any(listener.sees_ours for listener in self.listeners):
            return Check(
                name,
                "fail",
                "not sent: no smtpd listener passes mail to the"
                " milter, so the probe would be delivered instead of discarded",
                "fix milter-in-smtpd-milters first",
            )
        problem = self._milter_unreachable()
        if problem:
            return Check(
                name,
                "fail",
                f"not sent: {problem}",
                "start the milter"
                " (sendpost-agent milter); its socket directory must be group"
                " postfix, mode 2750 (postfix-conf/README.md)",
            )
        address = self.smtp or self._smtp_address()
        if address is None:
            return Check(
                name,
                "fail",
                "no inet smtpd listener in master.cf passes mail to the milter",
                "name the listener with --smtp HOST:PORT",
            )
        sent_uuid = str(uuid.uuid4())
        self.probe_sent_at = time.time()
        try:
            self.log_mark = self.config.log_path.stat().st_size
        except OSError:
            self.log_mark = 0
        try:
            queue_id = self._send_probe(address, sent_uuid, make_token(key))
        except (OSError, smtplib.SMTPException) as exc:
            return Check(
                name,
                "fail",
                f"cannot send the probe to {address}: {exc}",
                "is Postfix running? name its smtpd with --smtp HOST:PORT",
            )
        self.probe_queue_id = queue_id
        try:
            entry = self._wait_for_row(queue_id)
        except MapError as exc:
            return Check(name, "fail", str(exc), "see the milter's log")
        if entry is None:
            logged = [
                line
                for line in _read_from(self.config.log_path, self.log_mark).splitlines()
                if "Milter" in line
            ]
            seen = f"; Postfix logged: {logged[-1]}" if logged else ""
            return Check(
                name,
                "fail",
                f"the milter did not see the probe (queue ID"
                f" {queue_id}, no row in {self.config.map_path} after {MAP_WAIT:g}s):"
                f" is it running? is it in smtpd_milters?{seen}",
                "see milter-in-smtpd-milters and the milter's log",
            )
        if entry.uuid != sent_uuid:
            return Check(
                name,
                "fail",
                f"the header did not survive: the milter saw"
                f" {HEADER_NAME} as {entry.header.name.lower()} (queue ID {queue_id})",
                "see header-checks: something before the milter removes or changes the header",
            )
        return Check(
            name,
            "pass",
            f"sent to {address} as queue ID {queue_id}: the milter"
            f" recorded {HEADER_NAME} intact and discarded the probe",
        )

    def _milter_unreachable(self) -> str | None:
        """Why smtpd could not reach the milter now; checked so a probe is never delivered."""
        address = self.config.milter_socket
        kind, _, rest = address.partition(":")
        try:
            connect(address, MILTER_CONNECT_TIMEOUT)
        except OSError as exc:
            return (
                f"the milter does not accept connections on {address}"
                f" ({exc.strerror or exc}): is it running?"
            )
        if kind == "unix":
            return _user_cannot_connect(Path(rest), self.postfix.value("mail_owner"))
        return None

    def _smtp_address(self) -> HostPort | None:
        """An inet smtpd (or postscreen) listener passing mail to the milter; port 25 first."""
        sees = [
            listener
            for listener in self.listeners
            if listener.sees_ours and not listener.reinjection
        ]
        services = [listener.service for listener in sees if listener.service.type == "inet"]
        if any(listener.service.type == "pass" for listener in sees):
            services += [
                s for s in self.postfix.services() if s.command == "postscreen" and s.type == "inet"
            ]
        addresses = [a for s in services if (a := self._inet_address(s)) is not None]
        return min(addresses, key=lambda a: a.port != 25, default=None)

    def _inet_address(self, service: Service) -> HostPort | None:
        host, _, port = service.name.rpartition(":")
        try:
            number = int(port) if port.isdigit() else socket.getservbyname(port, "tcp")
        except OSError:
            return None
        interfaces = split_list(self.postfix.value("inet_interfaces"))
        local = {"all", "loopback-only", "localhost", "127.0.0.1"}
        default = "127.0.0.1" if not interfaces or local & set(interfaces) else interfaces[0]
        return HostPort(host.strip("[]") or default, number)

    def _send_probe(self, address: HostPort, message_uuid: str, token: str) -> str:
        """One message from the null sender to postmaster; returns its queue ID."""
        myhostname = self.postfix.value("myhostname")
        recipient = f"postmaster@{myhostname}"
        message = EmailMessage()
        message["From"] = f"sendpost-agent doctor <{recipient}>"
        message["To"] = recipient
        message["Subject"] = "sendpost-agent doctor probe"
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=myhostname)
        message[HEADER_NAME] = message_uuid
        message[PROBE_HEADER] = token
        message.set_content(
            "sendpost-agent doctor sent this to test its milter, which"
            " discards it.\nIf you read this, the milter did not see it:"
            " run sendpost-agent doctor.\n"
        )
        with smtplib.SMTP(
            address.host, address.port, local_hostname=myhostname, timeout=SMTP_TIMEOUT
        ) as smtp:
            smtp.ehlo()
            for code, reply in (smtp.mail(""), smtp.rcpt(recipient)):
                if code not in (250, 251):
                    raise smtplib.SMTPResponseException(code, reply)
            _, reply = smtp.data(message.as_bytes())
        match = _QUEUED_AS.search(reply.decode("utf-8", "replace"))
        if match is None:
            raise smtplib.SMTPException(f"no queue ID in the reply to DATA: {reply!r}")
        return match.group(1)

    def _wait_for_row(self, queue_id: str) -> Entry | None:
        path = self.config.map_path
        if not path.exists():  # never create it: the milter owns it
            return None
        reader = MapReader(path)
        try:
            deadline = time.monotonic() + MAP_WAIT
            while (entry := reader.get(queue_id)) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            return entry
        finally:
            reader.close()

    def check_mail_log(self) -> Check:
        if self.config.log_source == "journal":
            return self._check_journal()
        name = "mail-log"
        path = self.config.log_path
        maillog_file = self.postfix.value("maillog_file")
        fix = (
            f"set log-path to {maillog_file} (Postfix's maillog_file)"
            if maillog_file
            else "set log-path to the file syslog writes Postfix's mail facility to"
            " (e.g. /var/log/mail.log); if no syslog daemon writes one (only the journal"
            " has Postfix's log, as on Debian 12 without rsyslog), set log-source: journal,"
            " or install rsyslog"
            " (apt-get install rsyslog), which writes /var/log/mail.log, or have Postfix"
            " write its own log (maillog_file, postconf(5)) and set log-path to it"
        )
        try:
            with path.open("rb") as log:
                log.read(1)
                age = time.time() - os.fstat(log.fileno()).st_mtime
        except FileNotFoundError:
            return Check(name, "fail", f"log-path {path} does not exist", fix)
        except OSError as exc:
            return Check(
                name,
                "fail",
                f"cannot read log-path {path}: {exc.strerror or exc}",
                "run the agent as a user that can read it (group adm on Debian)",
            )
        queue_id = self.probe_queue_id
        if queue_id is None:
            if age > LOG_FRESH:
                return Check(
                    name,
                    "warn",
                    f"{path} was last written {age / 3600:.1f} h ago:"
                    " is it the file Postfix writes?",
                    fix,
                )
            return Check(name, "pass", f"{path} is readable and was written {age:.0f} s ago")
        deadline = time.monotonic() + LOG_WAIT
        while f" {queue_id}: " not in _read_from(path, self.log_mark):
            if time.monotonic() > deadline:
                return Check(
                    name,
                    "fail",
                    f"Postfix did not log the probe (queue ID"
                    f" {queue_id}) to {path} within {LOG_WAIT:g} s: it is not the"
                    " file Postfix writes",
                    fix,
                )
            time.sleep(0.2)
        return Check(
            name,
            "pass",
            f"{path} is readable and Postfix logged the probe (queue ID {queue_id}) there",
        )

    def _check_journal(self) -> Check:
        """log-source journal: the probe's lines (or recent mail entries) in the journal."""
        name = "mail-log"
        config = self.config
        what = (
            f"the journal files in {config.journal_directory}"
            if config.journal_directory
            else "the systemd journal"
        ) + f" ({config.journal_match})"
        fix = (
            "Postfix logs to syslog (maillog_file empty) with the mail facility; set"
            " journal-match to its entries (e.g. SYSLOG_IDENTIFIER=postfix/smtp + ...)"
        )
        queue_id = self.probe_queue_id
        since = self.probe_sent_at - 1 if queue_id else time.time() - LOG_FRESH
        deadline = time.monotonic() + LOG_WAIT
        while True:
            try:
                lines = [
                    line
                    for batch, _ in read_journal_batches(
                        config.journal_match, config.journal_directory, since
                    )
                    for line in batch
                ]
            except LogUnreadable as exc:
                return Check(
                    name,
                    "fail",
                    f"cannot read {what}: {exc.reason}",
                    "run the agent as a user that can read the journal (group adm or"
                    " systemd-journal)",
                )
            if queue_id is None:
                if not lines:
                    return Check(
                        name,
                        "warn",
                        f"{what} has no entry from the last hour: is it Postfix's?",
                        fix,
                    )
                return Check(name, "pass", f"{what} is readable and has Postfix's recent entries")
            if any(f" {queue_id}: ".encode() in line for line in lines):
                return Check(
                    name, "pass", f"Postfix logged the probe (queue ID {queue_id}) to {what}"
                )
            if time.monotonic() > deadline:
                return Check(
                    name,
                    "fail",
                    f"Postfix did not log the probe (queue ID {queue_id}) to {what} within"
                    f" {LOG_WAIT:g} s",
                    fix,
                )
            time.sleep(0.5)

    def check_endpoint(self) -> Check:
        name = "endpoint"
        url = self.config.endpoint
        key_fix = (
            "set api-key (--api-key, SENDPOST_API_KEY or 'api-key:' in the config"
            " file) to the Event Ingestion API Key of your Custom SMTP TPSP"
        )
        if self.config.api_key is None:
            return Check(name, "fail", "no api-key configured", key_fix)
        status, text = asyncio.run(_post_empty_batch(url, self.config.api_key))
        if status is None:
            return Check(
                name,
                "fail",
                f"cannot reach {url}: {text}",
                "check endpoint and the network path to it (DNS, proxy, firewall)",
            )
        if status in (401, 403):
            return Check(name, "fail", f"{url} rejected the api-key (HTTP {status})", key_fix)
        if status == 400 or 200 <= status < 300:
            return Check(
                name, "pass", f"{url} accepted the api-key (HTTP {status} to an empty batch)"
            )
        return Check(
            name,
            "fail",
            f"{url} answered HTTP {status}: {text}",
            "retry later" if status >= 500 else "check endpoint (the ingestion URL)",
        )
