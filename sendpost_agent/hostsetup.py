"""``sendpost-agent setup`` and ``teardown``: wire the installed agent into this host.

The package (the .deb, or install.sh's virtualenv) puts code and units on disk; setup
does the rest, each step idempotent and printed on one line (``ok``, ``change``, or
``would`` in a dry run): the agent's user and directories, ``config.yaml`` (0600, the key
never printed), the group logwatch reads the mail log through, the services, Postfix's
``smtpd_milters`` and ``header_checks`` (main.cf backed up first, then ``postfix
reload``), and doctor's verdict. ``teardown`` undoes it, Postfix first so that no mail
meets a stopped milter. Exit codes: 0 done, 1 a step failed, 2 bad usage or config.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import yaml

from sendpost_agent.config import Config, ConfigError, describe, load_config
from sendpost_agent.doctor import MilterEntry, milter_target, run_doctor
from sendpost_agent.header import HEADER_NAME
from sendpost_agent.postconf import PostconfError, PostfixConfig, split_list

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
AGENT_USER = "sendpost-agent"
MILTER_UNIT, LOGWATCH_UNIT = "sendpost-agent-milter.service", "sendpost-agent-logwatch.service"
UNITS = (MILTER_UNIT, LOGWATCH_UNIT)
SOCKET_NAME = "sendpost-agent/milter.sock"  # relative to Postfix's queue_directory
# postfix-conf/main.cf.snippet's entry (a test keeps them equal): mail never waits for us.
MILTER_OPTIONS = (
    "default_action=accept, connect_timeout=2s, command_timeout=5s, content_timeout=10s"
)
# postfix-conf/header_checks.snippet: Postfix logs the header, so logwatch still gets the
# UUID of mail received while the milter restarts (an upgrade).
HEADER_TABLE_NAME = "sendpost_header_checks"
HEADER_RULE = f"/^{HEADER_NAME}:/ INFO\n"
UNDO_RECORD = "postfix-undo.json"
SYSLOG_LOGS = (Path("/var/log/mail.log"), Path("/var/log/maillog"))  # Debian's, RHEL's
SYSLOG_DAEMONS = ("rsyslogd", "syslog-ng", "syslogd")
# What the packaged units assume; where this host differs, a drop-in says so.
LOG_GROUP = "adm"  # logwatch's SupplementaryGroups
DROP_IN = "sendpost-agent-setup.conf"
# Keys only logwatch reads: changing them (a key rotation) leaves the milter running, as
# mail received while it restarts would have no map row.
LOGWATCH_ONLY_KEYS = frozenset(
    {"api-key", "endpoint", "log-path", "log-source", "postfix-config-dir"}
)
# The keys setup writes; the others in config.yaml are the operator's and stay as written.
MANAGED_KEYS = (
    "api-key",
    "mta",
    "endpoint",
    "log-path",
    "log-source",
    "state-dir",
    "milter-socket",
    "postfix-config-dir",
)
DEFAULTS = describe(Config())
PATH_KEYS = frozenset({"log-path", "state-dir", "postfix-config-dir"})
SOCKET_WAIT = 10.0


class StepFailed(Exception):
    """A change could not be made; the message names it and why."""


class UsageError(Exception):
    """Bad input from the operator: exit 2 with the message."""


@dataclass(frozen=True)
class Host:
    """Where things live on this host, and whether systemd runs it."""

    config_path: Path
    systemd_dir: Path  # units and drop-ins of the administrator (SYSTEMD_DIR)
    systemd: bool  # is systemd running (SENDPOST_SYSTEMD: auto, yes, no)
    program: str  # how to run this sendpost-agent, for the printed commands

    @classmethod
    def from_environ(cls, config_path: Path, program: str, environ: Mapping[str, str]) -> Host:
        mode = environ.get("SENDPOST_SYSTEMD", "auto")
        if mode not in ("auto", "yes", "no"):
            raise UsageError(f"SENDPOST_SYSTEMD must be auto, yes or no, not {mode!r}")
        running = Path("/run/systemd/system").is_dir() if mode == "auto" else mode == "yes"
        systemd_dir = Path(environ.get("SYSTEMD_DIR") or "/etc/systemd/system")
        return cls(config_path, systemd_dir, running, program)

    @property
    def etc_dir(self) -> Path:
        return self.config_path.parent

    def drop_in(self, unit: str) -> Path:
        return self.systemd_dir / f"{unit}.d" / DROP_IN


@dataclass
class Steps:
    """Prints one line per step and makes the change unless this is a dry run."""

    out: TextIO
    dry_run: bool
    verbose: bool
    changes: int = 0

    def ok(self, what: str) -> None:
        print(f"  ok      {what}", file=self.out)

    def note(self, what: str) -> None:
        print(f"  note    {what}", file=self.out)

    def warn(self, what: str) -> None:
        print(f"  WARNING {what}", file=self.out)

    def change(self, what: str, action: Callable[[], object]) -> None:
        self.changes += 1
        if self.dry_run:
            print(f"  would   {what}", file=self.out)
            return
        print(f"  change  {what}", file=self.out, flush=True)
        try:
            action()
        except (OSError, subprocess.SubprocessError, PostconfError) as exc:
            raise StepFailed(f"this step failed: {what}: {exc}") from None

    def run(self, *command: str) -> str:
        """A child process without the API key in its environment; its output is shown
        only with --verbose or when it fails."""
        proc = subprocess.run(
            command,
            env=_child_env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if self.verbose:
            self.out.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise subprocess.SubprocessError(
                f"{' '.join(command)} exited {proc.returncode}: {tail}"
            )
        return proc.stdout


def _child_env() -> dict[str, str]:
    """Ours without the API key; sbin on PATH (useradd, postconf); apt-get asks nothing."""
    env = {k: v for k, v in os.environ.items() if k != "SENDPOST_API_KEY"}
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
    env.setdefault("DEBIAN_FRONTEND", "noninteractive")
    return env


def _succeeds(*command: str) -> bool:
    """Does ``command`` exist and exit 0 (a question such as systemctl is-active)?"""
    try:
        result = subprocess.run(
            command, env=_child_env(), capture_output=True, stdin=subprocess.DEVNULL, check=False
        )
    except OSError:
        return False
    return result.returncode == 0


# --- config.yaml: what config.py reads, written line by line ---------------------------


def yaml_scalar(value: str) -> str:
    """A double-quoted YAML scalar (a JSON string is one); mta stays bare, as in the docs."""
    return value if value == "postfix" else json.dumps(value)


def render_config(current: str | None, want: Mapping[str, str]) -> str:
    """config.yaml with the managed keys set to ``want`` ("" = left out); every other line,
    and a managed line already holding its value, stays exactly as written."""
    lines = (current or "").splitlines(keepends=True)
    if current is None:
        lines = [
            "# sendpost-agent configuration, written by `sendpost-agent setup` (every key:\n",
            "# README.md, Configuration). Rerun setup to change the keys below; keep it 0600.\n",
        ]
    out: list[str] = []
    written: set[str] = set()
    for line in lines:
        key, sep, value = line.partition(":")
        if not sep or key not in want or line[:1].isspace():
            out.append(line if line.endswith("\n") else line + "\n")
            continue
        if key not in written and want[key]:
            try:
                same = yaml.safe_load(value) == want[key]
            except yaml.YAMLError:
                same = False
            out.append(
                line if same and line.endswith("\n") else f"{key}: {yaml_scalar(want[key])}\n"
            )
        written.add(key)
    out += [f"{k}: {yaml_scalar(v)}\n" for k, v in want.items() if v and k not in written]
    return "".join(out)


def file_keys(text: str | None) -> dict[str, str]:
    """The top-level keys of config.yaml and their values as text (our own simple forms)."""
    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def load(path: Path, flags: Mapping[str, object]) -> Config:
    """``flags`` over the file at ``path`` alone: the environment is for the services, and a
    missing file is an empty one here (setup is about to write it)."""
    return load_config(flags, path if path.exists() else Path(os.devnull), environ={})


# --- Postfix -------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Postfix:
    """One Postfix instance as setup changes it: values raw (as main.cf has them)."""

    conf: PostfixConfig
    steps: Steps
    record: Path  # how to restore main.cf (UNDO_RECORD, in the config directory)
    backed_up: Path | None = None
    main_cf: Path = field(init=False)
    start_digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.main_cf = Path(self.conf.value("config_directory")) / "main.cf"
        self.start_digest = _digest(self.main_cf)

    def raw(self, name: str) -> str:
        """The value as written in main.cf ($names not expanded)."""
        return self.conf.run("postconf", "-h", name).stdout.strip()

    def running(self) -> bool:
        return self.conf.run("postfix", "status").returncode == 0

    def backup(self) -> None:
        """main.cf beside itself, once per run, before the first change."""
        if self.backed_up is not None:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = self.main_cf.with_name(f"main.cf.sendpost-agent.{stamp}")
        n = 1
        while backup.exists():
            backup = self.main_cf.with_name(f"main.cf.sendpost-agent.{stamp}.{n}")
            n += 1
        shutil.copy2(self.main_cf, backup)
        st = self.main_cf.stat()
        os.chown(backup, st.st_uid, st.st_gid)
        self.backed_up = backup
        self.steps.note(f"backup: {backup}")

    def remember(self) -> None:
        """After setup changed main.cf: note the backup from before setup's first change
        and main.cf's digest now. While main.cf keeps that digest, nobody else changed it,
        and teardown restores the backup: byte for byte, as it was before setup."""
        if self.backed_up is None:
            return
        before = self.undo_backup(self.start_digest) or self.backed_up
        record = {"main.cf": str(self.main_cf), "backup": str(before)}
        record["sha256"] = _digest(self.main_cf)
        _write_file(self.record, json.dumps(record, indent=2) + "\n", 0o640)

    def undo_backup(self, digest: str) -> Path | None:
        """The backup of main.cf before setup, if main.cf is as setup left it (``digest``)."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        backup = Path(str(record.get("backup", "")))
        if record.get("main.cf") != str(self.main_cf) or record.get("sha256") != digest:
            return None
        return backup if backup.is_file() else None

    def forget(self) -> None:
        """main.cf changed: read its values afresh."""
        self.conf = PostfixConfig(self.conf.config_dir)

    def restore(self, backup: Path) -> None:
        self.backup()
        self.forget()
        st = self.main_cf.stat()
        _write_file(
            self.main_cf, backup.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        )

    def set(self, name: str, value: str) -> None:
        """``postconf -e`` (``-X`` for an empty value: the line goes, as before setup)."""

        def apply() -> None:
            self.backup()
            args = ("-e", f"{name} = {value}") if value else ("-X", name)
            proc = self.conf.run("postconf", *args)
            self.forget()
            if proc.returncode != 0:
                raise PostconfError(f"postconf {' '.join(args)}: {proc.stderr.strip()}")

        what = f"set {name} = {value}" if value else f"remove {name} (only ours was in it)"
        self.steps.change(f"{what} in {self.main_cf}", apply)

    def reload(self) -> None:
        if not self.steps.dry_run and not self.running():
            self.steps.note("Postfix is not running: it reads the change at its next start")
            return

        def reload() -> None:
            proc = self.conf.run("postfix", "reload")
            if proc.returncode != 0:
                raise PostconfError(f"postfix reload: {proc.stderr.strip()}")

        self.steps.change("postfix reload", reload)


@dataclass(frozen=True)
class Milter:
    """Our smtpd_milters entry for milter-socket, and how to recognise entries of ours."""

    socket: str  # milter-socket (Postfix notation)
    queue_directory: Path

    @property
    def address(self) -> str:
        """Inside the queue directory, relative to it: the same file for a chrooted smtpd."""
        kind, _, path = self.socket.partition(":")
        if kind == "unix" and Path(path).is_relative_to(self.queue_directory):
            return f"unix:{Path(path).relative_to(self.queue_directory)}"
        return self.socket

    @property
    def entry(self) -> str:
        return f"{{ {self.address}, {MILTER_OPTIONS} }}"

    def target(self, address: str) -> str:
        return milter_target(address, self.queue_directory, chroot=False)

    def is_current(self, item: str) -> bool:
        return self.target(MilterEntry.parse(item).address) == self.target(self.socket)

    def is_ours(self, item: str) -> bool:
        """Current, or one setup wrote for another milter-socket, or the default socket's."""
        entry = MilterEntry.parse(item)
        ours = MilterEntry.parse(self.entry).settings
        default = self.target(f"unix:{SOCKET_NAME}")
        return (
            self.is_current(item) or entry.settings == ours or self.target(entry.address) == default
        )

    def without_ours(self, value: str) -> str:
        return ", ".join(item for item in split_list(value) if not self.is_ours(item))


def header_table(postfix: Postfix) -> str:
    return f"regexp:{postfix.main_cf.parent / HEADER_TABLE_NAME}"


def _write_file(path: Path, text: str | bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    """Write whole or not at all: a temporary file beside it, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def setup_milter(postfix: Postfix, milter: Milter) -> bool:
    """Our entry appended to smtpd_milters (others kept, one of ours for another socket
    replaced); True when main.cf changed."""
    raw = postfix.raw("smtpd_milters")
    if any(milter.is_current(item) for item in split_list(postfix.conf.value("smtpd_milters"))):
        postfix.steps.ok("smtpd_milters has the sendpost-agent milter")
        return False
    rest = milter.without_ours(raw) if any(map(milter.is_ours, split_list(raw))) else raw
    postfix.set("smtpd_milters", f"{rest}, {milter.entry}" if rest else milter.entry)
    return True


def setup_header_checks(postfix: Postfix) -> bool:
    """The INFO fallback: Postfix logs our header, so mail the milter missed (it was
    restarting) still gets its UUID. Appended to header_checks, never replacing it; in a
    list of tables the first that matches decides, so ours runs only if none before it
    matches the header. (mime_header_checks and nested_header_checks default to
    $header_checks: the header of an attached message is logged too. logwatch reads INFO
    lines only where the milter recorded nothing, and lines that disagree give no UUID,
    so an attachment never lends its UUID to the message.) True when main.cf changed."""
    table = header_table(postfix)
    tables = split_list(postfix.raw("header_checks"))
    if table not in tables:
        line = f"{HEADER_NAME}: 00000000-0000-0000-0000-000000000000"
        for other in split_list(postfix.conf.value("header_checks")):
            answer = postfix.conf.query(other, line)
            if answer is None:
                continue
            if answer.split()[0].upper() == "INFO":
                postfix.steps.ok(f"header_checks logs {HEADER_NAME} ({other})")
            else:
                postfix.steps.warn(
                    f"{other} answers {answer!r} to {HEADER_NAME} before any table added"
                    f" after it, so no INFO fallback is added: put {HEADER_RULE.strip()}"
                    " above that rule (see sendpost-agent doctor, header-checks)"
                )
            return False
    path = Path(table.partition(":")[2])
    if path.exists() and path.read_text() == HEADER_RULE:
        postfix.steps.ok(f"{path} ({HEADER_RULE.strip()})")
    else:
        postfix.steps.change(
            f"write {path} ({HEADER_RULE.strip()})",
            lambda: _write_file(path, HEADER_RULE, 0o644),
        )
    if table in tables:
        postfix.steps.ok(f"header_checks logs {HEADER_NAME} ({table})")
        return False
    postfix.set("header_checks", ", ".join([*tables, table]))
    return True


def teardown_postfix(postfix: Postfix, milter: Milter) -> None:
    """main.cf as before setup: the backup itself while nobody else changed main.cf since,
    else only our entries leave smtpd_milters and header_checks."""
    table = header_table(postfix)
    backup = postfix.undo_backup(postfix.start_digest)
    changed = backup is not None
    if backup is not None:
        postfix.steps.change(
            f"restore {postfix.main_cf} from {backup} (unchanged since setup)",
            partial(postfix.restore, backup),
        )
    # An entry of ours from before setup (added by hand) goes too.
    if backup is None or not postfix.steps.dry_run:
        changed |= _remove_our_entries(postfix, milter, table)
    if changed:
        postfix.reload()
    if not postfix.steps.dry_run:
        postfix.record.unlink(missing_ok=True)
    path = Path(table.partition(":")[2])
    if path.exists() and path.read_text() == HEADER_RULE:
        postfix.steps.change(f"remove {path}", path.unlink)


def _remove_our_entries(postfix: Postfix, milter: Milter, table: str) -> bool:
    """True when main.cf changed."""
    changed = False
    raw = postfix.raw("smtpd_milters")
    if any(map(milter.is_ours, split_list(raw))):
        postfix.set("smtpd_milters", milter.without_ours(raw))
        changed = True
    elif any(map(milter.is_ours, split_list(postfix.conf.value("smtpd_milters")))):
        postfix.steps.warn(
            f"smtpd_milters names our milter through another parameter ({raw}); remove it"
            " there by hand"
        )
    else:
        postfix.steps.ok("smtpd_milters does not name the sendpost-agent milter")
    tables = split_list(postfix.raw("header_checks"))
    if table in tables:
        postfix.set("header_checks", ", ".join(t for t in tables if t != table))
        changed = True
    else:
        postfix.steps.ok(f"header_checks does not name {table}")
    return changed


def check_postfix_settings(postfix: Postfix) -> None:
    action = postfix.conf.value("milter_default_action")
    if action != "accept":
        postfix.steps.note(
            f"milter_default_action = {action} is left as it is: our entry carries its own"
            " default_action=accept, so mail never waits for sendpost-agent"
        )
    macros = postfix.conf.value("milter_end_of_data_macros")
    if "i" not in split_list(macros):
        postfix.steps.warn(
            f"milter_end_of_data_macros ({macros}) lacks i: the milter cannot see queue IDs;"
            " add i to it"
        )


# --- the mail log --------------------------------------------------------------------


def syslog_daemon_running() -> bool:
    """Is a syslog daemon running (one that may not have written the mail log yet)?"""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in SYSLOG_DAEMONS:
                return True
        except OSError:
            continue
    return False


def package_installed(name: str) -> bool:
    if _succeeds("rpm", "-q", name):
        return True
    if shutil.which("dpkg-query") is None:
        return False
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
    )
    return "install ok installed" in status.stdout


@dataclass(frozen=True)
class MailLog:
    path: Path
    install_rsyslog: bool = False  # no syslog daemon writes a mail log: rsyslog will
    journal: bool = False  # read from the systemd journal instead (log-source: journal)


def choose_mail_log(
    given: Path | None,
    maillog_file: str,
    journal: bool = False,
    with_rsyslog: bool = False,
    written: Path | None = None,
) -> MailLog:
    """log-path: given (the operator's), else the syslog file an earlier setup wrote
    (``written``), else Postfix's maillog_file, else the file syslog writes. Postfix
    logging to syslog with no syslog daemon running (Debian 12 without rsyslog: only the
    journal has its log; a mail log file left by a removed rsyslog grows no more) would
    leave logwatch waiting for ever: logwatch reads the systemd journal (no second
    daemon, no second copy of each line) unless a log was given; with ``with_rsyslog``,
    or without journalctl, rsyslog is installed, or setup stops and says how to fix it.
    ``journal``: log-source journal was asked for."""
    debian, rhel = SYSLOG_LOGS
    if journal:
        return MailLog(given or written or debian, journal=True)
    path = given or written
    if path is None:
        default = rhel if rhel.exists() and not debian.exists() else debian
        path = Path(maillog_file) if maillog_file else default
    if maillog_file or path not in SYSLOG_LOGS or syslog_daemon_running():
        return MailLog(path)
    why = (
        "no mail log to follow: Postfix logs to syslog (maillog_file is empty), but no"
        f" syslog daemon runs to write {debian} or {rhel} (only the journal has Postfix's"
        " log, as on Debian 12 without rsyslog)"
    )
    if given is None and not with_rsyslog and shutil.which("journalctl"):
        return MailLog(path, journal=True)
    if not with_rsyslog and any(p.exists() for p in SYSLOG_LOGS):
        return MailLog(path)  # the operator's, or no journal: a daemon unknown here?
    if not package_installed("rsyslog"):
        if shutil.which("apt-get"):
            return MailLog(debian, install_rsyslog=True)
        if shutil.which("dnf"):
            return MailLog(rhel, install_rsyslog=True)  # Fedora's and RHEL's rsyslog
    raise StepFailed(
        f"{why}. Install and start rsyslog (apt-get install rsyslog; systemctl start"
        f" rsyslog), which writes {debian}, and run setup again; or name the file Postfix"
        " logs to with --log-path (e.g. its maillog_file, postconf(5))"
    )


def log_group(path: Path, steps: Steps) -> str | None:
    """The group logwatch reads the log through: none needed when it is world-readable,
    its group when group-readable (not root), else adm (Debian's syslog group)."""
    default = LOG_GROUP if _group_exists(LOG_GROUP) else None
    try:
        st = path.stat()
    except FileNotFoundError:
        steps.note(f"{path} does not exist yet; logwatch waits for it")
        return default
    group = grp.getgrgid(st.st_gid).gr_name
    if st.st_mode & stat.S_IROTH:
        return default
    if st.st_mode & stat.S_IRGRP and group != "root":
        return group
    steps.warn(
        f"logwatch (user {AGENT_USER}, group {default}) cannot read {path} (group {group},"
        f" mode {stat.filemode(st.st_mode)}): make the log group-readable by {default or 'a'}"
        " group (rsyslog: $FileGroup adm, $FileCreateMode 0640, as Debian does), or point"
        " --log-path at a log it can read"
    )
    return default


def _group_exists(name: str) -> bool:
    return _known(grp.getgrnam, name)


def _user_exists(name: str) -> bool:
    return _known(pwd.getpwnam, name)


def _known(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def drop_in_text(unit: str, group: str | None, writable: Sequence[Path]) -> str | None:
    """What ``unit`` needs beyond the packaged unit on this host: the group logwatch reads
    the mail log through (none where adm does not exist), and the directories it may
    write when they are not the defaults (a missing ReadWritePaths stops the unit)."""
    lines = []
    defaults = [Path(DEFAULTS["state-dir"]), Path(DEFAULTS["milter-socket"][5:]).parent]
    if unit == LOGWATCH_UNIT:
        writable = writable[:1]
        defaults = defaults[:1]
        if group != LOG_GROUP:
            lines += ["SupplementaryGroups=", *([f"SupplementaryGroups={group}"] if group else [])]
    if list(writable) != defaults:
        lines += ["ReadWritePaths=", f"ReadWritePaths={' '.join(map(str, writable))}"]
    if not lines:
        return None
    head = "# Written by sendpost-agent setup: this host's paths and mail log group."
    return "\n".join([head, "[Service]", *lines]) + "\n"


# --- user and directories ------------------------------------------------------------


def ensure_user(steps: Steps) -> None:
    if _user_exists(AGENT_USER):
        steps.ok(f"user {AGENT_USER}")
        return
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/sbin/nologin"
    group = ["--gid", AGENT_USER] if _group_exists(AGENT_USER) else ["--user-group"]
    steps.change(
        f"create system user {AGENT_USER} (no login, no home)",
        lambda: steps.run(
            "useradd",
            "--system",
            *group,
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            shell,
            "--comment",
            AGENT_USER,
            AGENT_USER,
        ),
    )


def ensure_dir(steps: Steps, path: Path, owner: str, group: str, mode: int) -> None:
    want = f"{owner}:{group}, mode {mode:o}"

    def make() -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)

    try:
        st = path.stat()
    except FileNotFoundError:
        steps.change(f"create {path} ({want})", make)
        return
    has = f"{_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)}, mode"
    has += f" {stat.S_IMODE(st.st_mode):o}"
    if has == want:
        steps.ok(f"{path} ({want})")
    else:
        steps.change(f"set {path} to {want} (was {has})", make)


def _name(lookup: Callable[[int], Sequence[object]], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def give_state_to_agent(steps: Steps, state_dir: Path) -> None:
    """Files left by a run as root (a manual start) become the agent user's."""
    if not state_dir.is_dir() or not _user_exists(AGENT_USER):
        return
    user = pwd.getpwnam(AGENT_USER)
    foreign = [
        p
        for p in state_dir.rglob("*")
        if (p.lstat().st_uid, p.lstat().st_gid) != (user.pw_uid, user.pw_gid)
    ]
    if foreign:
        steps.change(
            f"give the files in {state_dir} to {AGENT_USER}",
            lambda: _chown_all(foreign, user.pw_uid, user.pw_gid),
        )


def _chown_all(paths: list[Path], uid: int, gid: int) -> None:
    for path in paths:
        os.lchown(path, uid, gid)


def remove_our_dir(steps: Steps, path: Path, why: str) -> None:
    """rm -rf, but only a directory named for us (a guard against --state-dir /var/lib)."""
    if not path.exists():
        return
    if "sendpost" not in path.name:
        steps.warn(f"not removing {path}: its name does not say sendpost; remove it yourself")
        return
    steps.change(f"remove {path}{why}", lambda: shutil.rmtree(path))


# --- services ------------------------------------------------------------------------


def systemctl_ok(*args: str) -> bool:
    return _succeeds("systemctl", *args)


def start_services(steps: Steps, restart: dict[str, bool]) -> None:
    for unit in UNITS:
        if not systemctl_ok("is-enabled", "--quiet", unit):
            steps.change(
                f"systemctl enable --now {unit}",
                partial(steps.run, "systemctl", "enable", "--quiet", "--now", unit),
            )
        elif not systemctl_ok("is-active", "--quiet", unit):
            steps.change(f"systemctl start {unit}", partial(steps.run, "systemctl", "start", unit))
        elif restart[unit]:
            steps.change(
                f"systemctl restart {unit} (new code, config or unit)",
                partial(steps.run, "systemctl", "restart", unit),
            )
        else:
            steps.ok(f"{unit} enabled and running")


def print_manual_run(host: Host, group: str | None, out: TextIO) -> None:
    run = f"{host.program} --config {host.config_path}"
    as_agent = f"setpriv --reuid={AGENT_USER} --regid={AGENT_USER}"
    groups = f"--groups={group}" if group else "--init-groups"
    print(
        f"""
systemd is not running on this host (no /run/systemd/system), so nothing was started.
Run both processes under your supervisor (container entrypoint, supervisord, runit, s6):
as root, which these commands drop to the agent user; in the foreground; restarted when
they exit non-zero; stopped with SIGTERM. Start the milter before Postfix:

  milter:    {as_agent} --init-groups -- {run} milter
  logwatch:  {as_agent} {groups} -- {run} logwatch

Both log to stderr. Then check the whole path with: {run} doctor""",
        file=out,
    )


def wait_for_socket(address: str) -> bool:
    """The milter's unix socket, once it exists (an inet one is left to doctor)."""
    kind, _, path = address.partition(":")
    deadline = time.monotonic() + SOCKET_WAIT
    while kind == "unix" and not Path(path).is_socket():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


# --- setup ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What the operator asked for: flags of setup/teardown."""

    api_key: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)  # key -> value given
    dry_run: bool = False
    verbose: bool = False
    restart: bool = False  # new code or units: restart the services
    with_rsyslog: bool = False  # no mail log: install rsyslog rather than read the journal
    purge: bool = False  # teardown: also state, config and the user


def _header(steps: Steps, text: str) -> None:
    if steps.dry_run:
        text += " (dry run: nothing is changed; each change is shown as 'would')"
    print(text, file=steps.out)


def _summary(steps: Steps, done: str, nothing: str) -> None:
    if steps.dry_run:
        print(
            f"Dry run: {steps.changes} change(s) would be made; nothing was changed.",
            file=steps.out,
        )
    elif steps.changes == 0:
        print(f"No changes: {nothing}.", file=steps.out)
    else:
        print(f"Done: {steps.changes} change(s) made{done}.", file=steps.out)


@dataclass(frozen=True)
class Plan:
    """What setup will make true, decided (and checked) before the first change."""

    config: Config  # the flags over config.yaml as it is
    postfix: PostfixConfig
    current: str | None  # config.yaml's text, None when there is none yet
    want: dict[str, str]  # managed key -> value to write ("": left out, the default)
    socket_address: str  # milter-socket
    mail_log: MailLog

    @property
    def queue_directory(self) -> Path:
        return Path(self.postfix.value("queue_directory"))

    @property
    def socket_dir(self) -> Path:
        return self.queue_directory / SOCKET_NAME.partition("/")[0]


def plan_setup(host: Host, request: Request) -> Plan:
    """Read the flags, config.yaml and Postfix; raise UsageError or StepFailed on what
    would stop setup, so that it stops before changing anything."""
    path = host.config_path
    current = path.read_text() if path.exists() else None
    flags: dict[str, object] = dict(request.settings)
    if request.api_key is not None:
        flags["api-key"] = request.api_key
    config = load(path, flags)  # the file as it is, and the flags, are valid
    for key, value in request.settings.items():
        if key in PATH_KEYS and not Path(value).is_absolute():
            raise UsageError(f"--{key} '{value}' is not an absolute path")
    for where in (config.state_dir, host.etc_dir):
        if not where.is_absolute() or any(c.isspace() for c in str(where)):
            raise UsageError(f"'{where}' must be an absolute path without spaces (units)")
    if config.api_key is None:
        raise UsageError(
            "an API key is needed: --api-key KEY or SENDPOST_API_KEY (the Event Ingestion"
            " API key of your Custom SMTP TPSP)"
        )
    conf = PostfixConfig(config.postfix_config_dir)
    version = conf.value("mail_version")
    if int(version.split(".")[0] or 0) < 3:
        raise StepFailed(f"Postfix {version} is too old: the per-milter default_action needs 3.0")
    queue_directory = Path(conf.value("queue_directory"))
    if not queue_directory.is_dir():
        raise StepFailed(f"Postfix's queue_directory {queue_directory} does not exist")
    socket_dir = queue_directory / SOCKET_NAME.partition("/")[0]
    in_file = file_keys(current)
    # A milter-socket of config.yaml (e.g. inet:127.0.0.1:PORT) is kept; one in a
    # sendpost-agent directory (what setup writes) follows queue_directory.
    socket_address = config.milter_socket
    if "milter-socket" not in in_file or socket_address.endswith(f"/{SOCKET_NAME}"):
        socket_address = f"unix:{socket_dir / 'milter.sock'}"
    if socket_address.startswith("unix:") and socket_address != f"unix:{socket_dir}/milter.sock":
        raise StepFailed(
            f"milter-socket {socket_address} in {path}: the milter's unit may write only in"
            f" {socket_dir} (ProtectSystem=strict), and a chrooted smtpd sees only Postfix's"
            " queue directory; use inet:127.0.0.1:PORT, or remove milter-socket for the"
            " default socket"
        )
    # The operator's log-path (this command line's, or one setup would not write) is
    # followed as given; a syslog file an earlier setup wrote is only where syslog wrote,
    # and gives way to the journal once no syslog daemon runs (rsyslog removed).
    named = "log-path" in request.settings or "log-path" in in_file
    given, written = (config.log_path if named else None), None
    if given in SYSLOG_LOGS and "log-path" not in request.settings:
        given, written = None, given
    journal = config.log_source == "journal"
    if request.with_rsyslog:
        if "log-source" in request.settings and journal:
            raise UsageError(
                "--with-rsyslog (read the file rsyslog writes) and --log-source journal"
                " exclude each other: give one of them"
            )
        journal = False  # over a log-source: journal of config.yaml: asked for just now
    mail_log = choose_mail_log(
        given,
        conf.value("maillog_file"),
        journal=journal,
        with_rsyslog=request.with_rsyslog,
        written=written,
    )
    want = {
        "api-key": config.api_key.reveal(),
        "mta": config.mta,
        "endpoint": config.endpoint,
        "log-path": _unless_default("log-path", str(mail_log.path))
        if mail_log.journal
        else str(mail_log.path),
        "log-source": "journal" if mail_log.journal else "",
        "state-dir": _unless_default("state-dir", str(config.state_dir)),
        "milter-socket": socket_address
        if "milter-socket" in in_file
        else _unless_default("milter-socket", socket_address),
        "postfix-config-dir": _unless_default("postfix-config-dir", str(config.postfix_config_dir)),
    }
    return Plan(config, conf, current, want, socket_address, mail_log)


def _unless_default(key: str, value: str) -> str:
    return "" if value == DEFAULTS[key] else value


def setup(host: Host, request: Request, out: TextIO) -> int:
    """Configure this host for the installed agent; returns the exit code."""
    steps = Steps(out, request.dry_run, request.verbose)
    plan = plan_setup(host, request)
    config, conf = plan.config, plan.postfix
    postfix = Postfix(conf, steps, host.etc_dir / UNDO_RECORD)
    version = conf.value("mail_version")
    _header(steps, f"Setting up sendpost-agent (Postfix {version}, {postfix.main_cf})")
    if plan.mail_log.install_rsyslog:
        tool = "apt-get" if shutil.which("apt-get") else "dnf"
        steps.note(
            f"no syslog daemon writes a mail log: installing rsyslog, which writes"
            f" {plan.mail_log.path} (teardown leaves it)"
        )
        steps.change(f"{tool} install rsyslog", lambda: install_rsyslog(steps, tool, host))
    ensure_user(steps)
    ensure_dir(steps, config.state_dir, AGENT_USER, AGENT_USER, 0o750)
    give_state_to_agent(steps, config.state_dir)
    ensure_dir(steps, host.etc_dir, "root", AGENT_USER, 0o750)
    # Postfix (its group) connects to the socket; setgid passes the group on to it.
    postfix_group = _postfix_group(conf.value("mail_owner"))
    ensure_dir(steps, plan.socket_dir, AGENT_USER, postfix_group, 0o2750)

    if plan.mail_log.journal:
        # journald's files carry an ACL for group adm (systemd-tmpfiles), as Debian sets up.
        group = LOG_GROUP if _group_exists(LOG_GROUP) else None
        steps.ok(
            "logwatch reads Postfix's log from the systemd journal (log-source: journal),"
            " resuming at the journal's cursor; no syslog daemon needed"
            + (f"; through group {group}" if group else "")
        )
    else:
        group = log_group(plan.mail_log.path, steps)
        steps.ok(
            f"logwatch reads {plan.mail_log.path}" + (f" through group {group}" if group else "")
        )
    restart = {unit: request.restart for unit in UNITS}
    if host.systemd or host.systemd_dir.is_dir():
        for unit in UNITS:
            text = drop_in_text(unit, group, [config.state_dir, plan.socket_dir])
            restart[unit] |= set_drop_in(steps, host.drop_in(unit), text)
    reload_units = any(restart.values())
    for unit in write_config(steps, host.config_path, plan):
        restart[unit] = True
    if host.systemd:
        if reload_units:  # new units (--restart) or drop-ins
            steps.change("systemctl daemon-reload", lambda: steps.run("systemctl", "daemon-reload"))
        start_services(steps, restart)

    milter = Milter(plan.socket_address, plan.queue_directory)
    main_cf_changed = setup_milter(postfix, milter)
    main_cf_changed |= setup_header_checks(postfix)
    if main_cf_changed:
        postfix.reload()
        if not steps.dry_run:
            postfix.remember()
    check_postfix_settings(postfix)

    _summary(steps, "", "sendpost-agent is set up as requested")
    if steps.dry_run:
        return EXIT_OK
    if not host.systemd:
        print_manual_run(host, group, out)
        return EXIT_OK
    return _doctor(host.config_path, plan.socket_address, out)


def write_config(steps: Steps, path: Path, plan: Plan) -> list[str]:
    """config.yaml as planned, 0600, the agent's; returns the units to restart for it."""
    new_text = render_config(plan.current, plan.want)
    if plan.current == new_text:
        _config_perms(steps, path)
        return []
    old = file_keys(plan.current)
    changed = [k for k in MANAGED_KEYS if old.get(k, "") != plan.want[k]]
    what = "; ".join(map(partial(_describe_change, old, plan.want), changed)) or "rewritten"
    verb = f"update {path}" if plan.current is not None else f"write {path}, mode 0600"
    steps.change(f"{verb} ({what})", lambda: _write_file(path, new_text, 0o600, *_agent_ids()))
    if changed and set(changed) <= LOGWATCH_ONLY_KEYS:
        return [LOGWATCH_UNIT]
    return list(UNITS)


def _describe_change(old: Mapping[str, str], want: Mapping[str, str], key: str) -> str:
    """One key's change, for the step's line; never the API key itself."""
    if key == "api-key":
        return f"api-key {'changed' if old.get(key) else 'set'}"
    return f"{key}: {want[key]}" if want[key] else f"{key} removed (default)"


def _agent_ids() -> tuple[int, int]:
    account = pwd.getpwnam(AGENT_USER)
    return account.pw_uid, account.pw_gid


def _postfix_group(owner: str) -> str:
    try:
        return grp.getgrgid(pwd.getpwnam(owner).pw_gid).gr_name
    except KeyError:
        return "postfix"


def _config_perms(steps: Steps, path: Path) -> None:
    st = path.stat()
    user = pwd.getpwnam(AGENT_USER) if _user_exists(AGENT_USER) else None
    if user and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        user.pw_uid,
        user.pw_gid,
        0o600,
    ):
        steps.ok(f"{path} (mode 0600, {AGENT_USER}); api-key set")
        return

    def fix() -> None:
        account = pwd.getpwnam(AGENT_USER)
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, 0o600)

    steps.change(f"set {path} to {AGENT_USER}:{AGENT_USER}, mode 0600", fix)


def set_drop_in(steps: Steps, path: Path, text: str | None) -> bool:
    """A unit's drop-in as ``text`` wants it (None: none); True when it changed."""
    current = path.read_text() if path.exists() else None
    if current == text:
        return False
    if text is None:
        steps.change(f"remove {path}", lambda: _remove_drop_in(path))
    else:

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_file(path, text, 0o644)

        steps.change(f"write {path} ({text.splitlines()[-1]})", write)
    return True


def _remove_drop_in(path: Path) -> None:
    path.unlink()
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


def install_rsyslog(steps: Steps, tool: str, host: Host) -> None:
    if tool == "apt-get":
        steps.run("apt-get", "update", "-qq")
        steps.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "rsyslog")
    else:
        steps.run("dnf", "install", "-y", "-q", "rsyslog")
        if host.systemd:  # dnf starts no service it installs (apt does)
            steps.run("systemctl", "enable", "--quiet", "--now", "rsyslog")


def _doctor(path: Path, socket_address: str, out: TextIO) -> int:
    print("\nsendpost-agent doctor", file=out)
    if not wait_for_socket(socket_address):
        print(f"  note    the milter socket {socket_address} has not appeared yet", file=out)
    out.flush()
    rc = run_doctor(load_config({}, path, environ={}), out)
    if rc == EXIT_OK:
        print("doctor: all checks passed.", file=out)
    else:
        print(
            "doctor: a check failed (see above). The setup stays in place: fix what the check"
            " names, then run 'sendpost-agent doctor' again.",
            file=out,
        )
    return EXIT_OK


# --- teardown ------------------------------------------------------------------------


def teardown(host: Host, request: Request, out: TextIO) -> int:
    """Undo setup: Postfix first (no mail meets a stopped milter), then the services."""
    steps = Steps(out, request.dry_run, request.verbose)
    path = host.config_path
    config = load(path, dict(request.settings))
    _header(steps, "Tearing down sendpost-agent")
    try:
        conf = PostfixConfig(config.postfix_config_dir)
        postfix = Postfix(conf, steps, host.etc_dir / UNDO_RECORD)
        queue_directory = Path(conf.value("queue_directory"))
    except PostconfError as exc:
        steps.note(f"Postfix not changed: {exc}")
        postfix = None
        queue_directory = Path("/var/spool/postfix")
    socket_dir = queue_directory / SOCKET_NAME.partition("/")[0]
    if postfix is not None:
        teardown_postfix(postfix, Milter(config.milter_socket, queue_directory))

    if host.systemd:
        for unit in UNITS:
            if systemctl_ok("is-enabled", "--quiet", unit):
                steps.change(
                    f"systemctl disable --now {unit}",
                    partial(steps.run, "systemctl", "disable", "--quiet", "--now", unit),
                )
            elif systemctl_ok("is-active", "--quiet", unit):
                steps.change(
                    f"systemctl stop {unit}", partial(steps.run, "systemctl", "stop", unit)
                )
            else:
                steps.ok(f"{unit} stopped and disabled")
    removed = [set_drop_in(steps, host.drop_in(unit), None) for unit in UNITS]
    if any(removed) and host.systemd:
        steps.change("systemctl daemon-reload", lambda: steps.run("systemctl", "daemon-reload"))
    remove_our_dir(steps, socket_dir, " (the milter's socket directory)")
    if request.purge:
        remove_our_dir(steps, config.state_dir, " (state-dir, --purge)")
        remove_our_dir(steps, host.etc_dir, " and its config.yaml (--purge)")
        if _user_exists(AGENT_USER):
            steps.change(
                f"remove user {AGENT_USER} (--purge)", lambda: steps.run("userdel", AGENT_USER)
            )
        if _group_exists(AGENT_USER):  # userdel removes the user's own group; a leftover
            steps.change(f"remove group {AGENT_USER} (--purge)", lambda: _groupdel(steps))
    else:
        if config.state_dir.exists():
            steps.note(f"kept state-dir {config.state_dir} (queue map, events not sent yet)")
        if path.exists():
            steps.note(f"kept {path} (API key) and the user {AGENT_USER}")
        if config.state_dir.exists() or path.exists():
            steps.note("to remove them too: teardown --purge")
    _summary(steps, "; sendpost-agent is torn down", "sendpost-agent is not set up")
    return EXIT_OK


def _groupdel(steps: Steps) -> None:
    if _group_exists(AGENT_USER):
        steps.run("groupdel", AGENT_USER)


def main(command: str, host: Host, request: Request, out: TextIO = sys.stdout) -> int:
    """Run setup or teardown; errors become one line on stderr and the exit code."""
    try:
        return (setup if command == "setup" else teardown)(host, request, out)
    except (UsageError, ConfigError) as exc:
        print(f"sendpost-agent {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StepFailed, PostconfError) as exc:
        print(f"sendpost-agent {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
