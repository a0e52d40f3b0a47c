"""``sendpost-agent doctor``: will the agent see every message SendPost hands to this Postfix?

Static checks ask Postfix's own tools (``postconf -c DIR``, ``postmap -q``; see
``sendpost_agent.postconf``), so they see what Postfix sees. Live checks send one probe
through the local smtpd that our milter records and then DISCARDS (``sendpost_agent.probe``):
it never leaves the host. Then the map row, the mail log and the endpoint are checked.

Every check gives one verdict: pass, warn, fail (with the fix) or skip. Exit codes
(cli.md): 0 nothing failed, 1 a check failed, 2 doctor could not run. Every step has a
timeout, so doctor never hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import smtplib
import socket
import stat
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import cached_property
from pathlib import Path
from typing import TextIO

import aiohttp

from logwatch.relays import ContentFilters
from sendpost_agent import __version__
from sendpost_agent.config import Config, HostPort, Secret
from sendpost_agent.header import HEADER_NAME
from sendpost_agent.miltersocket import connect
from sendpost_agent.postconf import PostconfError, PostfixConfig, Service, split_list
from sendpost_agent.probe import KEY_FILE, PROBE_HEADER, DamagedKey, load_key, make_token
from sendpost_agent.queuemap import Entry, MapError, MapReader

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
MILTER_CONNECT_TIMEOUT = 2.0
SMTP_TIMEOUT = 10.0
MAP_WAIT = 10.0  # the row is written before Postfix answers DATA; this is slack
LOG_WAIT = 5.0
LOG_FRESH = 3600.0
HTTP_TIMEOUT = 10.0

# Read once up front: a configuration postconf cannot read stops doctor with exit 2.
MAIN_SETTINGS = (
    "queue_directory",
    "smtpd_milters",
    "milter_default_action",
    "receive_override_options",
    "content_filter",
    "header_checks",
    "mime_header_checks",
    "nested_header_checks",
    "inet_interfaces",
    "myhostname",
    "mail_owner",
    "maillog_file",
)
HEADER_TABLES = ("header_checks", "mime_header_checks", "nested_header_checks")
# header_checks actions that leave the header and the message alone (header_checks(5)).
HARMLESS_ACTIONS = frozenset(
    {"INFO", "WARN", "DUNNO", "OK", "PREPEND", "BCC", "FILTER", "REDIRECT"}
)
DEFAULT_ACTION_EFFECTS = {
    "tempfail": "defer every message (4xx)",
    "reject": "reject every message (5xx)",
    "quarantine": "put every message on hold",
    "shutdown": "disconnect every client (421)",
}
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_LOOPBACK_ALIASES = {"localhost": "127.0.0.1"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass, warn, fail, skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper()} {self.name}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class MilterEntry:
    """One item of smtpd_milters: an address, or ``{ address, name=value, ... }``."""

    address: str
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, item: str) -> MilterEntry:
        """Inside the braces Postfix separates the parts as in the list itself: by commas
        or whitespace (``{ unix:m.sock default_action=accept }`` is valid)."""
        if not item.startswith("{"):
            return cls(item)
        address, *rest = split_list(item.removeprefix("{").removesuffix("}")) or [""]
        pairs = (part.partition("=") for part in rest)
        return cls(address, {name: value for name, _, value in pairs})


def milter_target(address: str, queue_directory: Path, chroot: bool) -> str:
    """The socket smtpd really connects to for ``address``, comparable across notations.

    smtpd runs in queue_directory (chrooted into it with chroot=y), so a relative unix
    path, and in a chroot an absolute one too, lies inside queue_directory.
    """
    kind, _, rest = address.partition(":")
    if kind in ("unix", "local"):
        path = Path(rest)
        if chroot or not path.is_absolute():
            path = queue_directory / rest.lstrip("/")
        return f"unix:{os.path.normpath(path)}"
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]").lower()
        return f"inet:{_LOOPBACK_ALIASES.get(host, host)}:{port}"
    return address


@dataclass(frozen=True)
class Listener:
    """An smtpd service of master.cf and how it treats our milter."""

    service: Service
    ours: MilterEntry | None  # our entry in the smtpd_milters it runs with
    milters_off: bool  # its receive_override_options has no_milters
    reinjection: bool  # a content filter's re-injection listener (-o content_filter=)

    @property
    def sees_ours(self) -> bool:
        return self.ours is not None and not self.milters_off


@dataclass(frozen=True)
class Rule:
    """The header table rule that decides what happens to our header."""

    location: str  # "FILE line N" or "table TYPE:NAME"
    result: str  # what postmap -q answered, e.g. "IGNORE"

    @property
    def action(self) -> str:
        return self.result.split()[0].upper()

    def __str__(self) -> str:
        verb = f"{self.action}s" if self.action.isalpha() else f"answers {self.result!r} to"
        return f"{self.location} {verb} {HEADER_NAME}"


def _worst(checks: list[Check]) -> str:
    statuses = {c.status for c in checks}
    return next((s for s in ("fail", "warn") if s in statuses), "pass")


def _combine(name: str, findings: list[Check], passed: str) -> Check:
    """One verdict from several findings: the worst status, every detail and fix."""
    if not findings:
        return Check(name, "pass", passed)
    fixes = list(dict.fromkeys(f.fix for f in findings if f.fix))
    return Check(name, _worst(findings), "; ".join(f.detail for f in findings), "; ".join(fixes))


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


class Doctor:
    """Runs the checks in order; the probe's queue ID feeds the mail-log check."""

    def __init__(self, config: Config, smtp: HostPort | None = None) -> None:
        self.config = config
        self.smtp = smtp
        self.postfix = PostfixConfig(config.postfix_config_dir)
        self.probe_queue_id: str | None = None
        self.log_mark = 0

    def run(self, offline: bool) -> list[Check]:
        """All checks; raises PostconfError when Postfix's configuration cannot be read."""
        self.postfix.get(*MAIN_SETTINGS)
        self.postfix.services()
        checks = [
            self.check_milter_listed(),
            self.check_default_action(),
            self.check_header_checks(),
            self.check_content_filters(),
            self.check_probe(),
            self.check_mail_log(),
        ]
        if offline:
            checks.append(Check("endpoint", "skip", "not checked (--offline)"))
        else:
            checks.append(self.check_endpoint())
        return checks

    # --- what the configuration says ------------------------------------------------

    @cached_property
    def queue_directory(self) -> Path:
        return Path(self.postfix.value("queue_directory"))

    @cached_property
    def listeners(self) -> list[Listener]:
        postfix = self.postfix
        ours = milter_target(self.config.milter_socket, self.queue_directory, chroot=False)
        services = postfix.services()
        filtered = bool(postfix.value("content_filter")) or any(
            s.overrides.get("content_filter") for s in services
        )
        listeners = []
        for service in services:
            if service.command != "smtpd":
                continue
            entries = map(
                MilterEntry.parse, split_list(postfix.effective(service, "smtpd_milters"))
            )
            mine = next(
                (
                    e
                    for e in entries
                    if ours == milter_target(e.address, self.queue_directory, service.chroot)
                ),
                None,
            )
            options = split_list(postfix.effective(service, "receive_override_options"))
            reinjection = filtered and service.overrides.get("content_filter") == ""
            listeners.append(Listener(service, mine, "no_milters" in options, reinjection))
        return listeners

    @cached_property
    def suggested_entry(self) -> str:
        """Our smtpd_milters entry, relative to queue_directory when inside it."""
        address = self.config.milter_socket
        kind, _, path = address.partition(":")
        if kind == "unix" and Path(path).is_relative_to(self.queue_directory):
            address = f"unix:{Path(path).relative_to(self.queue_directory)}"
        return f"{{ {address}, default_action=accept }}"

    # --- static checks --------------------------------------------------------------

    def check_milter_listed(self) -> Check:
        name = "milter-in-smtpd-milters"
        socket_name = self.config.milter_socket
        listeners = [listener for listener in self.listeners if not listener.reinjection]
        if not listeners:
            return Check(
                name,
                "fail",
                f"{self.postfix.config_dir / 'master.cf'} has no smtpd service",
                "receive mail with smtpd (master.cf smtp inet ...)",
            )
        missing = [listener for listener in listeners if not listener.sees_ours]
        names = ", ".join(str(listener.service) for listener in (missing or listeners))
        if not missing:
            return Check(name, "pass", f"{socket_name} is in smtpd_milters of {names}")
        reasons = []
        for listener in missing:
            if listener.milters_off:
                where = self.postfix.origin(listener.service, "receive_override_options")
                reasons.append(f"{listener.service}: no_milters in {where}")
            else:
                where = self.postfix.origin(listener.service, "smtpd_milters")
                reasons.append(f"{listener.service}: not in {where}")
        fixes = []
        if any(not listener.milters_off for listener in missing):
            fixes.append(
                f"add {self.suggested_entry} to smtpd_milters where named (keep the"
                " milters already there; see postfix-conf/main.cf.snippet)"
            )
        if any(listener.milters_off for listener in missing):
            fixes.append("remove no_milters from receive_override_options where named")
        fix = " and ".join(fixes) + ", then postfix reload"
        if len(missing) < len(listeners):
            return Check(
                name,
                "warn",
                f"mail received by {names} does not reach the milter ({'; '.join(reasons)})",
                fix + ", unless SendPost never hands mail to these listeners",
            )
        return Check(
            name,
            "fail",
            f"no smtpd listener passes mail to the milter at {socket_name} ({'; '.join(reasons)})",
            fix,
        )

    def check_default_action(self) -> Check:
        name = "milter-default-action"
        seen = [listener for listener in self.listeners if listener.sees_ours]
        if not seen:
            return Check(
                name, "skip", "the milter is in no smtpd_milters (see milter-in-smtpd-milters)"
            )
        findings = []
        for listener in seen:
            assert listener.ours is not None
            if "default_action" in listener.ours.settings:
                action = listener.ours.settings["default_action"]
                where = "default_action of its smtpd_milters entry in " + self.postfix.origin(
                    listener.service, "smtpd_milters"
                )
            else:
                action = self.postfix.effective(listener.service, "milter_default_action")
                where = self.postfix.origin(listener.service, "milter_default_action")
            if action.lower() != "accept":
                effect = DEFAULT_ACTION_EFFECTS.get(action.lower(), f"apply {action!r}")
                findings.append(
                    Check(
                        name,
                        "fail",
                        f"{listener.service}: default action {action} ({where}): while the agent"
                        f" is down or slow, Postfix would {effect} instead of letting mail flow",
                        f"use {self.suggested_entry} in smtpd_milters (per-milter"
                        " default_action=accept), then postfix reload",
                    )
                )
        return _combine(
            name, findings, "default action accept: mail flows while the agent is down or slow"
        )

    def check_header_checks(self) -> Check:
        """Ask postmap what each header table does to our header, as cleanup would."""
        name = "header-checks"
        header_line = f"{HEADER_NAME}: {uuid.uuid4()}"
        users: dict[str, list[tuple[str, str]]] = {}  # table list -> (parameter, origin)
        for parameter in HEADER_TABLES:
            settings: list[tuple[Service | None, str]] = [(None, self.postfix.value(parameter))]
            settings += [
                (s, s.overrides[parameter])
                for s in self.postfix.services()
                if parameter in s.overrides
            ]
            for service, value in settings:
                if value:
                    origin = self.postfix.origin(service, parameter)
                    users.setdefault(value, []).append((parameter, origin))
        findings = []
        for value, used_by in users.items():
            hides = [origin for parameter, origin in used_by if parameter == "header_checks"]
            where = ", ".join(hides or [origin for _, origin in used_by])
            try:
                rule = self._deciding_rule(value, header_line)
            except PostconfError as exc:
                findings.append(
                    Check(
                        name,
                        "fail",
                        f"cannot test {value} ({where}): {exc}",
                        f"make the table readable or fix {where}",
                    )
                )
                continue
            if rule is None or rule.action in HARMLESS_ACTIONS:
                continue
            if hides:
                findings.append(
                    Check(
                        name,
                        "fail",
                        f"{rule} ({where}): milters see headers after header_checks, so the"
                        " milter cannot record the UUID of such messages",
                        "remove the rule or change it to INFO"
                        " (postfix-conf/header_checks.snippet), then postfix reload",
                    )
                )
            else:
                findings.append(
                    Check(
                        name,
                        "warn",
                        f"{rule} ({where}): harmless today, as Postfix applies"
                        " mime_header_checks only to MIME headers and nested_header_checks only"
                        " to attached messages, not to the top-level header SendPost sets",
                        f"optional: make {rule.location} not match {HEADER_NAME}",
                    )
                )
        tables = ", ".join(users) or "none configured"
        return _combine(name, findings, f"{HEADER_NAME} passes every header table ({tables})")

    def _deciding_rule(self, tables: str, header_line: str) -> Rule | None:
        """The first table answering for the header decides, as in cleanup."""
        for table in split_list(tables):
            result = self.postfix.query(table, header_line)
            if result is not None:
                return Rule(self._rule_location(table, header_line), result)
        return None

    def _rule_location(self, table: str, key: str) -> str:
        """``FILE line N`` of the matching rule of a regexp:/pcre: file, else the table.

        postmap is asked about ever shorter prefixes of the file (binary search): the
        shortest prefix that matches ends with the rule, whatever its regex dialect.
        """
        kind, _, path = table.partition(":")
        if kind not in ("regexp", "pcre") or not path.startswith("/"):
            return f"table {table}"
        try:
            lines = Path(path).read_text(errors="replace").splitlines(keepends=True)
        except OSError:
            return f"table {table}"
        with tempfile.TemporaryDirectory(prefix="sendpost-doctor-") as tmp:
            prefix = Path(tmp) / "prefix"
            low, high = 1, len(lines)
            while low < high:
                middle = (low + high) // 2
                prefix.write_text("".join(lines[:middle]))
                if self.postfix.query(f"{kind}:{prefix}", key) is None:
                    low = middle + 1
                else:
                    high = middle
        return f"{path} line {low}"

    def check_content_filters(self) -> Check:
        name = "content-filters"
        filters = [self.postfix.value("content_filter")]
        filters += [s.overrides.get("content_filter", "") for s in self.postfix.services()]
        filters = list(dict.fromkeys(f for f in filters if f))
        if not filters:
            return Check(name, "pass", "no content_filter configured")
        reinjection = [listener for listener in self.listeners if listener.reinjection]
        findings = []
        for listener in reinjection:
            options = split_list(
                self.postfix.effective(listener.service, "receive_override_options")
            )
            where = self.postfix.origin(listener.service, "receive_override_options")
            if "no_milters" in options:
                findings.append(
                    Check(
                        name,
                        "warn",
                        f"re-injection listener {listener.service} has no_milters ({where}): the"
                        " milter does not see re-injected mail; that is fine, logwatch carries"
                        " the UUID recorded at the first hop over to the new queue ID, even if"
                        " the filter strips the header",
                    )
                )
            if "no_header_body_checks" in options:
                findings.append(
                    Check(
                        name,
                        "warn",
                        f"re-injection listener {listener.service} has no_header_body_checks"
                        f" ({where}): a header_checks INFO fallback logs the header only on the"
                        " first hop, which is all logwatch needs",
                    )
                )
        listed = ", ".join(str(listener.service) for listener in reinjection) or "none found"
        pipes = ", ".join(sorted(ContentFilters.read(self.postfix).pipes))
        followed = pipes and (
            f"; pipe filter {pipes}: logwatch follows the copy it re-injects (sendmail, pickup)"
            f" by its Message-ID within join-wait ({self.config.join_wait:g} s); a message"
            " without Message-ID, or a copy re-injected later, gives no event (counted)"
        )
        return _combine(
            name,
            findings,
            f"content filter {', '.join(filters)}; re-injection"
            f" listeners (-o content_filter=): {listed}{followed}",
        )

    # --- live checks ----------------------------------------------------------------

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
        name = "mail-log"
        path = self.config.log_path
        maillog_file = self.postfix.value("maillog_file")
        fix = (
            f"set log-path to {maillog_file} (Postfix's maillog_file)"
            if maillog_file
            else "set log-path to the file syslog writes Postfix's mail facility to"
            " (e.g. /var/log/mail.log); if no syslog daemon writes one (only the journal"
            " has Postfix's log, as on Debian 12 without rsyslog), install rsyslog"
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


def run_doctor(
    config: Config,
    out: TextIO,
    *,
    smtp: HostPort | None = None,
    offline: bool = False,
    as_json: bool = False,
) -> int:
    """Print the verdicts (human lines or JSON); return the exit code."""
    try:
        checks = Doctor(config, smtp).run(offline)
    except PostconfError as exc:
        print(
            f"sendpost-agent doctor: cannot run: {exc}; fix: postfix-config-dir"
            f" ({config.postfix_config_dir}) must be Postfix's configuration directory"
            " (main.cf, master.cf), with Postfix installed",
            file=sys.stderr,
        )
        return EXIT_CANNOT_RUN
    overall = _worst(checks)
    if as_json:
        json.dump({"checks": [asdict(c) for c in checks], "overall": overall}, out, indent=2)
        out.write("\n")
    else:
        for check in checks:
            print(check.line(), file=out)
        counts = ", ".join(
            f"{sum(c.status == s for c in checks)} {s}" for s in ("pass", "warn", "fail", "skip")
        )
        print(f"verdict: {overall.upper()} ({counts})", file=out)
    return EXIT_FAILED if overall == "fail" else EXIT_OK
