"""``sendpost-agent doctor``: will the agent see every message SendPost hands to this Postfix?

Static checks ask Postfix's own tools (``postconf -c DIR``, ``postmap -q``; see
``sendpost_agent.postconf``), so they see what Postfix sees. Live checks send one probe
through the local smtpd that our milter records and then DISCARDS, then check the map
row, the mail log and the endpoint (``sendpost_agent.doctor_live``).

Every check gives one verdict: pass, warn, fail (with the fix) or skip. Exit codes
(README.md, "Command line"): 0 nothing failed, 1 a check failed, 2 doctor could not
run. Every step has a timeout, so doctor never hangs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TextIO

from logwatch.relays import ContentFilters
from sendpost_agent.config import Config, HostPort
from sendpost_agent.doctor_check import Check
from sendpost_agent.doctor_live import LiveChecks
from sendpost_agent.header import HEADER_NAME
from sendpost_agent.postconf import PostconfError, PostfixConfig, Service, split_list
from sendpost_agent.queuemap import HeaderState, MapError, MapReader
from sendpost_agent.trust import load_policy, unevaluable_warning

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
UNTRUSTED_SCAN = 10_000  # recent map rows searched for untrusted headers

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
_LOOPBACK_ALIASES = {"localhost": "127.0.0.1"}


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


class Doctor:
    """Runs the checks in order; the probe's queue ID feeds the mail-log check."""

    def __init__(self, config: Config, smtp: HostPort | None = None) -> None:
        self.config = config
        self.smtp = smtp
        self.postfix = PostfixConfig(config.postfix_config_dir)

    def run(self, offline: bool) -> list[Check]:
        """All checks; raises PostconfError when Postfix's configuration cannot be read."""
        self.postfix.get(*MAIN_SETTINGS)
        self.postfix.services()
        checks = [
            self.check_milter_listed(),
            self.check_default_action(),
            self.check_header_checks(),
            self.check_content_filters(),
            self.check_trusted_clients(),
        ]
        live = LiveChecks(self.config, self.postfix, self.listeners, self.smtp)
        checks += [live.check_probe(), live.check_mail_log()]
        if offline:
            checks.append(Check("endpoint", "skip", "not checked (--offline)"))
        else:
            checks.append(live.check_endpoint())
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
            if listener.sees_ours:
                milters = self.postfix.origin(listener.service, "smtpd_milters")
                findings.append(
                    Check(
                        name,
                        "warn",
                        f"re-injection listener {listener.service} passes re-injected mail to"
                        f" the milter ({milters}): the filter re-injects from a local address,"
                        f" usually in trusted-clients, so a forged {HEADER_NAME} from an"
                        " untrusted client counts again there, and is reported when the"
                        " re-injected message's outcome is logged before the hop to the filter",
                        f"add no_milters to receive_override_options of {listener.service}"
                        " (logwatch carries the UUID and its trust over from the first hop),"
                        " then postfix reload",
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

    def check_trusted_clients(self) -> Check:
        """The policy in force, and whether the milter has been turning SendPost away."""
        name = "trusted-clients"
        policy, problem = load_policy(self.config.trusted_clients, self.postfix)
        findings = []
        fix_policy = (
            "list the networks SendPost sends from in trusted-clients"
            " (e.g. 'trusted-clients: [mynetworks, sasl, 198.51.100.0/24]'), then restart"
            " the milter"
        )
        for warning in (problem, unevaluable_warning(policy)):
            if warning:
                findings.append(Check(name, "warn", warning, fix_policy))
        if policy.empty:
            findings.append(
                Check(
                    name,
                    "warn",
                    f"trusted-clients is empty: no {HEADER_NAME} header is trusted, so the"
                    " agent reports nothing",
                    "set trusted-clients (default: mynetworks, sasl), then restart the milter",
                )
            )
        untrusted, recent = self._untrusted_rows()
        if untrusted:
            findings.append(
                Check(
                    name,
                    "warn",
                    f"{untrusted} of the last {recent} messages the milter recorded carried a"
                    f" valid {HEADER_NAME} header from a client that is neither"
                    " SMTP-authenticated nor in trusted-clients: they give no events; the"
                    " milter's log names the client addresses ('not trusted')",
                    "if SendPost sends from there, add its network to trusted-clients or have"
                    " SendPost authenticate (SMTP AUTH), then restart the milter",
                )
            )
        rule = (
            f"{HEADER_NAME} counts from {policy.describe()} (trusted-clients:"
            f" {self.config.trusted_clients}); any other client's is counted"
            ' (sendpost_milter_header_total{state="untrusted"}) and gives no event'
        )
        if findings:
            return _combine(name, [*findings, Check(name, "warn", rule)], "")
        seen = f"; none of the last {recent} messages recorded was untrusted" if recent else ""
        return Check(name, "pass", rule + seen)

    def _untrusted_rows(self) -> tuple[int, int]:
        """(untrusted, rows) among the last UNTRUSTED_SCAN rows of the map; (0, 0) without one."""
        path = self.config.map_path
        if not path.exists():  # never create it: the milter owns it
            return 0, 0
        try:
            reader = MapReader(path)
        except MapError:
            return 0, 0  # the probe check reports an unreadable map
        try:
            rows = reader.scan(max(reader.last_id() - UNTRUSTED_SCAN + 1, 0), UNTRUSTED_SCAN)
        except MapError:
            return 0, 0
        finally:
            reader.close()
        return sum(e.header is HeaderState.UNTRUSTED for _, _, e in rows), len(rows)

    # --- live checks ----------------------------------------------------------------


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
