"""Private, throwaway Postfix instances for integration tests.

Why this exists: the milter and the log watcher must be tested against the real Postfix
3.7 of Debian 12 (exact log shapes, queue-ID timing, milter macros), not against fakes.
Each ``PostfixInstance`` is a complete Postfix (own config dir, queue, data dir, maillog
and loopback SMTP port) living under a test's temporary directory, started with
``postfix -c DIR start`` as root and without syslog or systemd.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

#: Extra places to look for Postfix binaries (pytest is often run without sbin in PATH).
_EXTRA_PATH = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/bin")

QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")

#: master.cf written from scratch: Debian's master.cf.proto minus the port-25 listener
#: and the pipe(8) examples (maildrop, uucp, ...), every service with chroot = n.
#: ``{smtpd_listener}`` becomes ``127.0.0.1:PORT``.
MASTER_CF_TEMPLATE = """\
# Written by tests/support/postfix.py; the default port-25 listener is left out.
# service type  private unpriv  chroot  wakeup  maxproc command + args
{smtpd_listener} inet n - n - - smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """A Postfix command or start-up failed; the message carries the maillog tail."""


class PostfixTimeout(PostfixError, TimeoutError):
    """An awaited maillog line did not show up in time."""


def find_binary(name: str) -> str | None:
    """Locate a binary in PATH or the usual sbin directories."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=path)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a currently unused TCP port (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_traversable(path: Path) -> None:
    """Give "other" search (x) permission on ``path`` and its ancestors where missing.

    Why: Postfix daemons drop to the ``postfix`` user and then use absolute paths
    (``master`` creates ``data_directory/master.lock`` as postfix; smtpd connects to
    ``unix:`` milter sockets as postfix). pytest's ``/tmp/pytest-of-root/...`` dirs are
    0700, which makes ``postfix start`` die with ``open lock file ...: Permission
    denied``. Only the x bit is added (no listing); dirs owned by others are not touched.
    """
    for p in (path, *path.parents):
        st = p.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid != os.geteuid():
            raise PostfixError(
                f"{p} is not searchable by the postfix user and not ours to chmod; "
                "put the Postfix instance root somewhere else"
            )
        os.chmod(p, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def process_group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``, from /proc."""
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def build_message(
    sender: str,
    recipients: Sequence[str],
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: str | bytes = "",
) -> bytes:
    """Build raw CRLF message bytes; From/To/Date/Message-ID are added if missing.

    Headers are written verbatim (no folding or encoding), so tests control exactly
    what Postfix and the milter see.
    """
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    present = {name.lower() for name, _ in items}
    defaults: list[tuple[str, str]] = []
    if "from" not in present:
        defaults.append(("From", f"<{sender}>" if sender else "<>"))
    if "to" not in present:
        defaults.append(("To", ", ".join(f"<{r}>" for r in recipients)))
    if "date" not in present:
        defaults.append(("Date", email.utils.formatdate(localtime=True)))
    if "message-id" not in present:
        defaults.append(("Message-ID", email.utils.make_msgid(domain="sendpost.test")))
    head = "".join(f"{name}: {value}\r\n" for name, value in [*defaults, *items])
    body_bytes = body.encode("utf-8") if isinstance(body, str) else body
    raw = head.encode("utf-8") + b"\r\n" + body_bytes
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw


def submit(
    host: str,
    port: int,
    sender: str,
    recipients: str | Sequence[str],
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: str | bytes = "",
    *,
    timeout: float = 30.0,
) -> str:
    """Submit one message over SMTP to ``host:port``; return the queue ID it was given.

    Raises smtplib.SMTPRecipientsRefused if any recipient is refused (nothing is sent
    then) and smtplib.SMTPDataError if the message is refused (e.g. by a milter).
    """
    rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
    raw = build_message(sender, rcpts, headers, body)
    with smtplib.SMTP(host, port, local_hostname="client.localdomain", timeout=timeout) as smtp:
        smtp.ehlo()
        code, resp = smtp.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, resp, sender)
        refused: dict[str, tuple[int, bytes]] = {}
        for rcpt in rcpts:
            code, resp = smtp.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, resp)
        if refused:
            smtp.rset()
            raise smtplib.SMTPRecipientsRefused(refused)  # type: ignore[arg-type]
        _, resp = smtp.data(raw)
    match = QUEUED_AS.search(resp.decode("utf-8", "replace"))
    if not match:
        raise PostfixError(f"no queue ID in DATA reply: {resp!r}")
    return match.group(1)


class PostfixInstance:
    """A private Postfix under ``root``, relaying everything to ``[127.0.0.1]:relay_port``.

    Layout: ``root/etc`` (main.cf, master.cf), ``root/queue``, ``root/data``,
    ``root/maillog``. Only a ``127.0.0.1:<free port> inet ... smtpd`` listener exists
    (``smtp_port``); there is no port-25 listener. Must run as root.

    Nothing in /etc/postfix is touched: as real uid 0, ``postfix -c DIR``,
    ``postconf -c DIR``, ``postqueue -c DIR`` and ``sendmail -C DIR`` accept any config
    dir. ``alternate_config_directories`` in the default main.cf is only needed for
    non-root users of the set-gid ``postqueue``/``postdrop`` (as ``nobody``,
    ``postqueue -c DIR -p`` dies with ``open file /etc/postfix/main.cf``; that file does
    not even exist on this box).

    Several instances can run at the same time (the self-test runs two and starts a
    third after stopping one): each has its own ``data_directory/master.lock``,
    ``queue_directory/pid/master.pid``, sockets and port; ``master`` is a process-group
    leader, so stop() can find and reap exactly its processes.

    ``start()`` adds o+x to ``root`` and its ancestors (see ``ensure_traversable``).
    Unless ``smtp_probe=False``, start() proves the listener works with one
    EHLO/QUIT session, which leaves ``connect from``/``disconnect from`` lines in the
    maillog (and a connection in any milter) before start() returns. Settings changed
    with postconf()/postconf_set() survive a stop()/start() of the same object.

    ``service_settings`` are master.cf ``-o`` overrides, ``{"pickup/unix/content_filter":
    ""}`` (``postconf -P``). ``local_submission=True`` lets the unprivileged processes
    Postfix starts (a pipe content filter's ``sendmail``) submit mail to this instance:
    set-gid postdrop takes a config dir other than /etc/postfix from a non-root user only
    when /etc/postfix/main.cf lists it in ``alternate_config_directories``, so master
    runs in a private mount namespace (``unshare``) where a copy of /etc/postfix that
    lists it is mounted over /etc/postfix. The host's /etc/postfix is not touched.
    """

    def __init__(
        self,
        root: Path,
        relay_port: int,
        smtpd_milters: str = "",
        main_cf: Mapping[str, str] | None = None,
        master_cf_extra: str = "",
        *,
        service_settings: Mapping[str, str] | None = None,
        local_submission: bool = False,
        smtp_probe: bool = True,
        start_timeout: float = 20.0,
    ) -> None:
        self.root = Path(root).absolute()
        self.relay_port = relay_port
        self.smtpd_milters = smtpd_milters
        self.main_cf = dict(main_cf or {})
        self.master_cf_extra = master_cf_extra
        self.service_settings = dict(service_settings or {})
        self.local_submission = local_submission
        self.smtp_probe = smtp_probe
        self.start_timeout = start_timeout
        self.config_dir = self.root / "etc"
        self.queue_directory = self.root / "queue"
        self.data_directory = self.root / "data"
        self.maillog = self.root / "maillog"
        self.smtp_port = free_port()
        self._master_pid: int | None = None
        self._tables: list[tuple[Path, str]] = []  # lookup_table()'s, compiled by start()

    # -- configuration ---------------------------------------------------------------

    def base_settings(self) -> dict[str, str]:
        """main.cf as written by start(), before ``main_cf`` overrides."""
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.data_directory),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "postfix-test.localdomain",
            "mydomain": "localdomain",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtputf8_enable": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            # No local delivery happens (mydestination is empty); avoid /etc/aliases.
            "alias_maps": "",
            "alias_database": "",
            "smtpd_milters": self.smtpd_milters,
            "milter_default_action": "accept",
            # Short timings so deferral and expiry are testable in seconds.
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "maximal_queue_lifetime": "20s",
            "bounce_queue_lifetime": "20s",
        }

    def _write_config(self) -> None:
        settings = {**self.base_settings(), **self.main_cf}
        main_cf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.config_dir / "main.cf").write_text(
            "# Written by tests/support/postfix.py\n" + main_cf
        )
        self._cool_main_cf()
        master_cf = MASTER_CF_TEMPLATE.format(smtpd_listener=f"127.0.0.1:{self.smtp_port}")
        extra = textwrap.dedent(self.master_cf_extra).strip("\n")
        if extra:
            master_cf += extra + "\n"
        (self.config_dir / "master.cf").write_text(master_cf)
        # Also covers services added through master_cf_extra.
        self._run(["postconf", "-c", str(self.config_dir), "-F", "*/*/chroot = n"])
        if self.service_settings:
            overrides = [f"{key}={value}" for key, value in self.service_settings.items()]
            self._run(["postconf", "-c", str(self.config_dir), "-P", *overrides])
        self._compile_tables()

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ensure_traversable(self.root)
        self.config_dir.mkdir(mode=0o755, exist_ok=True)
        # `postfix` chdirs into queue_directory before anything else, so it must exist;
        # `postfix start` (post-install create-missing) then creates the subdirectories.
        self.queue_directory.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.queue_directory, 0, 0)
        os.chmod(self.queue_directory, 0o755)
        # master creates master.lock here with the postfix uid: must be owned by postfix.
        owner = pwd.getpwnam(self.main_cf.get("mail_owner", "postfix"))
        self.data_directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_directory, owner.pw_uid, owner.pw_gid)
        os.chmod(self.data_directory, 0o700)

    def _cool_main_cf(self) -> None:
        """Backdate main.cf's mtime by 10 s.

        Why: Postfix's dict_load_file() treats a main.cf modified within the last ~2 s
        as "hot" and re-reads it every 300 ms until it is not, so every Postfix program
        (postfix start, each new daemon) stalls up to 2 s after each edit.
        """
        stamp = time.time() - 10
        os.utime(self.config_dir / "main.cf", (stamp, stamp))

    def postconf_set(self, settings: Mapping[str, object]) -> None:
        """Edit main.cf with ``postconf -e``; call reload() to make a running Postfix see it."""
        if not settings:
            return
        if not (self.config_dir / "main.cf").exists():  # not started yet: start() writes it
            self.main_cf.update({k: str(v) for k, v in settings.items()})
            return
        args = [f"{k}={v}" for k, v in settings.items()]
        self._run(["postconf", "-c", str(self.config_dir), "-e", *args])
        self._cool_main_cf()
        self.main_cf.update({k: str(v) for k, v in settings.items()})  # kept on restart

    def postconf(self, **settings: object) -> None:
        """Keyword form of postconf_set(); call reload() afterwards if running."""
        self.postconf_set(settings)

    def lookup_table(self, name: str, entries: Mapping[str, str], *, aliases: bool = False) -> str:
        """Write ``etc/NAME`` (compiled now, or by start()); returns ``hash:PATH``.

        ``aliases=True``: an aliases(5) file (``name: target, ...``, compiled with
        postalias) for ``alias_maps``; else a postmap(1) table (``key value``) such as
        ``virtual_alias_maps``. Rewrites that tests can check against Postfix's
        ``to=<final>, orig_to=<original>`` log lines.
        """
        self.config_dir.mkdir(parents=True, exist_ok=True)
        path = self.config_dir / name
        separator = ": " if aliases else " "
        path.write_text("".join(f"{key}{separator}{value}\n" for key, value in entries.items()))
        self._tables.append((path, "postalias" if aliases else "postmap"))
        if (self.config_dir / "main.cf").exists():  # else start() compiles it (needs main.cf)
            self._compile_tables()
        return f"hash:{path}"

    def _compile_tables(self) -> None:
        for path, command in self._tables:
            self._run([command, "-c", str(self.config_dir), f"hash:{path}"])

    def local_delivery(self, domain: str, aliases: Mapping[str, str]) -> None:
        """Deliver ``domain`` with local(8) through ``aliases``: mailboxes go to
        ``root/mail`` (not the host's spool), a name that is no local user bounces
        (``unknown user``)."""
        spool = self.root / "mail"
        spool.mkdir(parents=True, exist_ok=True)
        os.chmod(spool, 0o1777)  # local(8) creates each mailbox as its user
        table = self.lookup_table("aliases", aliases, aliases=True)
        self.postconf_set(
            {
                "mydestination": domain,
                "alias_maps": table,
                "alias_database": table,
                "mail_spool_directory": str(spool),
            }
        )

    def postconf_get(self, name: str) -> str:
        """Current main.cf value of ``name`` (default value if not set)."""
        return self._run(["postconf", "-c", str(self.config_dir), "-h", name]).stdout.strip()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> PostfixInstance:
        """Write the config, start Postfix and wait until its smtpd answers.

        Fails within ``start_timeout`` seconds with a PostfixError carrying the maillog
        tail (Postfix reports start-up errors only there, not on stderr).
        """
        if self.running:
            return self
        self._prepare_dirs()
        pid_file = self.queue_directory / "pid" / "master.pid"
        for attempt in range(3):
            self._write_config()
            # A stale pid file must never make us signal an unrelated process later.
            pid_file.unlink(missing_ok=True)
            mark = self._log_size()
            proc = self._run(self._start_command(), check=False)
            self._master_pid = self._read_master_pid()
            if proc.returncode == 0:
                _RUNNING.add(self)
                try:
                    self._wait_ready(mark, time.monotonic() + self.start_timeout)
                except BaseException:
                    self.stop()
                    raise
                return self
            new_log = self._log_since(mark)
            self._kill_leftovers()
            if "Address already in use" in new_log and attempt < 2:
                self.smtp_port = free_port()  # lost a port race; pick another
                continue
            raise PostfixError(
                f"`postfix -c {self.config_dir} start` failed (rc={proc.returncode})\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}\n"
                f"maillog since start:\n{new_log.rstrip() or '(empty)'}"
            )
        raise AssertionError("unreachable")

    def _start_command(self) -> list[str]:
        start = ["postfix", "-c", str(self.config_dir), "start"]
        if not self.local_submission:
            return start
        default_dir = self.root / "etc-default"  # mounted over /etc/postfix for master
        if not default_dir.exists():
            shutil.copytree("/etc/postfix", default_dir, symlinks=True)
            with (default_dir / "main.cf").open("a") as main_cf:
                main_cf.write(f"alternate_config_directories = {self.config_dir}\n")
        postfix = find_binary("postfix") or "postfix"
        mount = 'mount --bind "$0" /etc/postfix && exec "$@"'
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
        return [*unshare, str(default_dir), postfix, *start[1:]]

    def _wait_ready(self, mark: int, deadline: float) -> None:
        while True:
            if not self.running:
                raise PostfixError(f"Postfix master died during start-up\n{self._tail()}")
            fatal = _first_fatal(self._log_since(mark))
            if fatal:
                raise PostfixError(f"Postfix logged a fatal error: {fatal}\n{self._tail()}")
            if self.smtp_probe:
                if self._probe(deadline):
                    ready = r"smtpd\[\d+\]: disconnect from "
                    break
            elif _is_listening(self.smtp_port):
                ready = r"master\[\d+\]: daemon started"
                break
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"Postfix smtpd on 127.0.0.1:{self.smtp_port} did not come up within "
                    f"{self.start_timeout}s\n{self._tail()}"
                )
            time.sleep(0.1)
        # The line also proves that logging via postlogd works.
        self._wait_log_since(mark, ready, max(deadline - time.monotonic(), 1.0))
        # e.g. qmgr dies on a bad main.cf value while master and smtpd look fine.
        fatal = _first_fatal(self._log_since(mark))
        if fatal:
            raise PostfixError(f"Postfix logged a fatal error: {fatal}\n{self._tail()}")

    def _probe(self, deadline: float) -> bool:
        timeout = max(min(5.0, deadline - time.monotonic()), 0.5)
        try:
            with smtplib.SMTP(
                "127.0.0.1", self.smtp_port, local_hostname="probe.localdomain", timeout=timeout
            ) as smtp:
                code, _ = smtp.ehlo()
                return code == 250
        except OSError:
            return False

    def stop(self) -> None:
        """Stop this instance and make sure none of its processes is left; idempotent.

        Uses ``postfix -c DIR abort``: in postfix-script it sends master exactly the
        SIGTERM that ``stop`` sends (master then SIGTERMs its process group), but
        ``stop`` re-checks right away and then sleeps a whole second; we poll /proc
        instead, then SIGKILL stragglers of master's process group by PID.
        """
        _RUNNING.discard(self)
        pgid = self._master_pid
        if pgid is not None and process_group_members(pgid):
            self._run(["postfix", "-c", str(self.config_dir), "abort"], check=False)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        pgid, self._master_pid = self._master_pid, None
        if pgid is None:
            return
        # master is a process-group leader (setsid) and SIGTERMs its group on exit.
        if _wait_until(lambda: not process_group_members(pgid), 10.0):
            return
        for pid in process_group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not _wait_until(lambda: not process_group_members(pgid), 5.0):
            raise PostfixError(
                f"processes of Postfix group {pgid} survived SIGKILL: {process_group_members(pgid)}"
            )

    def reload(self, timeout: float = 10.0) -> None:
        """``postfix reload`` and wait for master's ``reload`` log line.

        Postfix applies it asynchronously: smtpd processes busy with a client finish
        that session with the old settings.
        """
        mark = self._log_size()
        self._run(["postfix", "-c", str(self.config_dir), "reload"])
        self._wait_log_since(mark, r"master\[\d+\]: reload -- version", timeout)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

    @property
    def running(self) -> bool:
        """True while the master process of this instance is alive."""
        pid = self._master_pid
        return pid is not None and pid in process_group_members(pid)

    def pids(self) -> list[int]:
        """Live processes of this instance (master's process group)."""
        pid = self._master_pid
        return process_group_members(pid) if pid else []

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_directory / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- mail ------------------------------------------------------------------------

    def send(
        self,
        sender: str,
        recipients: str | Sequence[str],
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: str | bytes = "",
        *,
        timeout: float = 30.0,
    ) -> str:
        """Submit one message over SMTP to this instance; return its queue ID (see submit)."""
        return submit(
            "127.0.0.1", self.smtp_port, sender, recipients, headers, body, timeout=timeout
        )

    def swaks(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``swaks --server 127.0.0.1:PORT ARGS...``; return the queue ID it got."""
        cmd = [find_binary("swaks") or "swaks", "--server", f"127.0.0.1:{self.smtp_port}"]
        proc = subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        match = QUEUED_AS.search(proc.stdout)
        if proc.returncode != 0 or not match:
            raise PostfixError(
                f"swaks failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return match.group(1)

    def logrotate(self) -> None:
        """``postfix logrotate``: rename the maillog with a date suffix and gzip it."""
        self._run(["postfix", "-c", str(self.config_dir), "logrotate"])

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now instead of after the backoff."""
        self._run(["postqueue", "-c", str(self.config_dir), "-f"])

    def mailq(self) -> str:
        """``postqueue -p`` output (the queue listing)."""
        return self._run(["postqueue", "-c", str(self.config_dir), "-p"]).stdout

    # -- maillog ---------------------------------------------------------------------

    def maillog_lines(self) -> list[str]:
        """All lines of this instance's maillog (empty before the first write)."""
        try:
            return self.maillog.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_for_log(
        self,
        regex: str | re.Pattern[str],
        timeout: float = 30.0,
        count: int = 1,
        since: int = 0,
    ) -> list[str]:
        """Poll the maillog until ``count`` lines match ``regex`` (re.search).

        Only lines with index >= ``since`` count (use ``len(pf.maillog_lines())`` as a
        mark). Returns all matching lines; raises PostfixTimeout with the log tail.
        """
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            matches = [ln for ln in self.maillog_lines()[since:] if pattern.search(ln)]
            if len(matches) >= count:
                return matches
            if time.monotonic() > deadline:
                raise PostfixTimeout(
                    f"{len(matches)} of {count} maillog lines matching {pattern.pattern!r} "
                    f"after {timeout}s\n{self._tail()}"
                )
            time.sleep(0.1)

    def maillog_tail(self, lines: int = 40) -> str:
        return "\n".join(self.maillog_lines()[-lines:])

    def _tail(self) -> str:
        return f"--- tail of {self.maillog} ---\n{self.maillog_tail() or '(empty)'}"

    def _log_size(self) -> int:
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, mark: int) -> str:
        try:
            with self.maillog.open("rb") as fh:
                if fh.seek(0, os.SEEK_END) >= mark:
                    fh.seek(mark)
                else:  # rotated or truncated
                    fh.seek(0)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _wait_log_since(self, mark: int, regex: str, timeout: float) -> str:
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            for line in self._log_since(mark).splitlines():
                if pattern.search(line):
                    return line
            if time.monotonic() > deadline:
                raise PostfixTimeout(
                    f"no maillog line matching {regex!r} within {timeout:.1f}s\n{self._tail()}"
                )
            time.sleep(0.05)

    # -- helpers ---------------------------------------------------------------------

    def _run(
        self, args: list[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        binary = find_binary(args[0])
        if binary is None:
            raise PostfixError(f"{args[0]} not found (is Postfix installed?)")
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *_EXTRA_PATH])
        env.pop("MAIL_CONFIG", None)
        proc = subprocess.run(
            [binary, *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(args)} failed (rc={proc.returncode})\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}\n{self._tail()}"
            )
        return proc

    def __repr__(self) -> str:
        return f"PostfixInstance(root={self.root}, smtp_port={self.smtp_port})"


def _first_fatal(log: str) -> str | None:
    for line in log.splitlines():
        if re.search(r"\b(fatal|panic):", line):
            return line
    return None


def _is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP socket is in LISTEN on host:port (checked without connecting)."""
    want = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in lines)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


#: Instances started and not yet stopped; stopped at interpreter exit as a safety net.
_RUNNING: set[PostfixInstance] = set()


@atexit.register
def _stop_all() -> None:
    for instance in list(_RUNNING):
        with contextlib.suppress(Exception):
            instance.stop()
