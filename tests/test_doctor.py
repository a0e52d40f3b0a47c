"""`sendpost-agent doctor` against real Postfix instances, the real milter and the ingest API.

A healthy site (one Postfix, milter, sink, API for the whole module) must pass and its
probe must never reach the sink; then one piece at a time is broken. Misconfigured
Postfix setups each get their own instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sendpost_agent.doctor import milter_target
from tests.support.contentfilter import NO_MILTERS, master_cf
from tests.support.fixtures import PostfixFactory, require_postfix_tools
from tests.support.ingest import IngestServer
from tests.support.journal import JOURNAL_LINE, needs_remote, write_lines
from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance, free_port
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

API_KEY = "doctor-test-key"
OURS = "unix:sendpost-agent/milter.sock"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def checks(self) -> dict[str, dict[str, str]]:
        return {c["name"]: c for c in json.loads(self.stdout)["checks"]}

    def status(self, name: str) -> str:
        return self.checks[name]["status"]


@dataclass
class Site:
    postfix: PostfixInstance
    milter: MilterProcess
    sink: Sink
    ingest: IngestServer

    @classmethod
    def start(
        cls, postfix: PostfixInstance, state_dir: Path, sink: Sink, ingest: IngestServer
    ) -> Site:
        """The milter on the shipped relative socket (inside queue_directory), then Postfix."""
        postfix.queue_directory.mkdir(parents=True, exist_ok=True)
        milter = MilterProcess(
            state_dir, f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock"
        ).start()
        postfix.start()
        return cls(postfix, milter, sink, ingest)

    def doctor(self, *args: str, log_path: Path | None = None, api_key: str = API_KEY) -> Run:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sendpost_agent",
                "doctor",
                "--json",
                "--postfix-config-dir",
                str(self.postfix.config_dir),
                "--state-dir",
                str(self.milter.state_dir),
                "--log-path",
                str(log_path or self.postfix.maillog),
                "--milter-socket",
                self.milter.socket,
                "--endpoint",
                self.ingest.url,
                "--api-key",
                api_key,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env={"PATH": "/usr/sbin:/usr/bin:/bin", "SENDPOST_CONFIG": "/dev/null"},
        )
        assert API_KEY not in proc.stdout + proc.stderr
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def assert_probe_never_left(self, run: Run) -> None:
        """The probe (if sent) was discarded: Postfix logged it, and the sink got nothing."""
        detail = run.checks["probe"]["detail"]
        if "queue ID" in detail:
            queue_id = detail.split("queue ID ")[1].split()[0].rstrip("):,")
            self.postfix.wait_for_log(rf"{queue_id}: milter-discard: .*DISCARD action")
            time.sleep(1)  # a delivery would have reached the sink by now
            assert not [ln for ln in self.postfix.maillog_lines() if f"{queue_id}: to=" in ln]
        assert self.sink.messages == []

    def stop(self) -> None:
        self.postfix.stop()
        if self.milter.proc is not None and self.milter.proc.poll() is None:
            self.milter.stop()


@pytest.fixture(scope="module")
def ingest() -> Iterator[IngestServer]:
    with IngestServer(API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory, ingest: IngestServer) -> Iterator[Site]:
    require_postfix_tools()
    root = tmp_path_factory.mktemp("doctor")
    with Sink() as sink:
        postfix = PostfixInstance(
            root / "pf",
            sink.port,
            smtpd_milters=f"{{ {OURS}, default_action=accept }}",
            smtp_probe=False,
        )
        site = Site.start(postfix, root / "state", sink, ingest)
        try:
            yield site
        finally:
            site.stop()


SiteFactory = Callable[..., Site]


@pytest.fixture
def site(
    tmp_path: Path, postfix_factory: PostfixFactory, sink: Sink, ingest: IngestServer
) -> Iterator[SiteFactory]:
    sites: list[Site] = []

    def make(**postfix_settings: object) -> Site:
        postfix = postfix_factory(start=False, smtp_probe=False, **postfix_settings)
        sites.append(Site.start(postfix, tmp_path / "state", sink, ingest))
        return sites[-1]

    yield make
    for s in sites:
        s.stop()


def test_healthy_site_passes_and_the_probe_never_leaves_the_host(healthy: Site) -> None:
    requests = len(healthy.ingest.requests)
    run = healthy.doctor()
    assert run.code == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["overall"] == "pass"
    assert {name: c["status"] for name, c in run.checks.items()} == {
        "milter-in-smtpd-milters": "pass",
        "milter-default-action": "pass",
        "header-checks": "pass",
        "content-filters": "pass",
        "trusted-clients": "pass",
        "probe": "pass",
        "mail-log": "pass",
        "endpoint": "pass",
    }
    assert "discarded the probe" in run.checks["probe"]["detail"]
    assert "Postfix logged the probe" in run.checks["mail-log"]["detail"]
    assert run.checks["trusted-clients"]["detail"].startswith(
        "X-Sendpost-Message-UUID counts from any SMTP-authenticated (SASL) session or clients"
        " in 127.0.0.0/8 (trusted-clients: mynetworks, sasl); any other client's is counted"
    )
    sent = healthy.ingest.requests[requests:]
    assert [(r.status, r.events) for r in sent] == [(400, 0)]  # key checked, no event sent
    healthy.assert_probe_never_left(run)


def test_human_output_offline_and_explicit_smtp_listener(healthy: Site) -> None:
    requests = len(healthy.ingest.requests)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sendpost_agent",
            "doctor",
            "--offline",
            "--postfix-config-dir",
            str(healthy.postfix.config_dir),
            "--state-dir",
            str(healthy.milter.state_dir),
            "--log-path",
            str(healthy.postfix.maillog),
            "--milter-socket",
            healthy.milter.socket,
            "--smtp",
            f"127.0.0.1:{healthy.postfix.smtp_port}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={"PATH": "/usr/sbin:/usr/bin:/bin", "SENDPOST_CONFIG": "/dev/null"},
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[0].startswith("PASS milter-in-smtpd-milters: ")
    assert "SKIP endpoint: not checked (--offline)" in lines
    assert f"sent to 127.0.0.1:{healthy.postfix.smtp_port} as queue ID" in proc.stdout
    assert lines[-1] == "verdict: PASS (7 pass, 0 warn, 0 fail, 1 skip)"
    assert len(healthy.ingest.requests) == requests


def test_wrong_api_key_or_failing_api_fails_the_endpoint_check(healthy: Site) -> None:
    run = healthy.doctor("--offline")
    assert run.status("endpoint") == "skip"
    run = healthy.doctor(api_key="not-the-key")
    assert run.code == 1
    endpoint = run.checks["endpoint"]
    assert endpoint["status"] == "fail"
    assert "rejected the api-key (HTTP 401)" in endpoint["detail"]
    assert "Event Ingestion API Key" in endpoint["fix"]
    assert "not-the-key" not in run.stdout

    healthy.ingest.fail_next(1, 503)
    run = healthy.doctor()
    assert run.code == 1
    assert "answered HTTP 503" in run.checks["endpoint"]["detail"]


def test_log_path_that_postfix_does_not_write_fails(healthy: Site, tmp_path: Path) -> None:
    other = tmp_path / "other.log"
    other.write_text("Nov 23 18:35:21 host postfix/smtpd[1]: connect from x\n")
    run = healthy.doctor("--offline", log_path=other)
    assert run.code == 1
    mail_log = run.checks["mail-log"]
    assert mail_log["status"] == "fail"
    assert "Postfix did not log the probe (queue ID" in mail_log["detail"]
    assert f"to {other} within 5 s: it is not the file Postfix writes" in mail_log["detail"]
    assert f"set log-path to {healthy.postfix.maillog}" in mail_log["fix"]  # maillog_file

    run = healthy.doctor("--offline", log_path=tmp_path / "missing.log")
    assert run.checks["mail-log"]["status"] == "fail"
    assert "does not exist" in run.checks["mail-log"]["detail"]
    healthy.assert_probe_never_left(run)


def test_a_missing_mail_log_without_maillog_file_names_rsyslog(
    healthy: Site, tmp_path: Path
) -> None:
    """Postfix logging only to syslog (maillog_file empty), and no file at log-path: the fix
    covers a host where only the journal has Postfix's log (Debian 12 without rsyslog)."""
    healthy.postfix.postconf(maillog_file="")  # not reloaded: Postfix logs on as before
    try:
        run = healthy.doctor("--offline", log_path=tmp_path / "mail.log")
    finally:
        healthy.postfix.postconf(maillog_file=str(healthy.postfix.maillog))
    mail_log = run.checks["mail-log"]
    assert (mail_log["status"], run.code) == ("fail", 1)
    assert "does not exist" in mail_log["detail"]
    assert "the file syslog writes Postfix's mail facility to" in mail_log["fix"]
    assert "install rsyslog (apt-get install rsyslog)" in mail_log["fix"]
    assert "maillog_file" in mail_log["fix"]
    healthy.assert_probe_never_left(run)


def test_milter_down_or_unwritable_socket_fails_the_probe_without_sending(
    healthy: Site,
) -> None:
    sock = Path(healthy.milter.socket.removeprefix("unix:"))
    sock.chmod(0o600)
    try:
        run = healthy.doctor("--offline")
    finally:
        sock.chmod(0o660)
    assert run.code == 1
    assert "user postfix (Postfix's smtpd) cannot write to" in run.checks["probe"]["detail"]

    healthy.milter.stop()
    try:
        run = healthy.doctor("--offline")
    finally:
        healthy.milter.start()
    assert run.code == 1
    probe = run.checks["probe"]
    assert probe["status"] == "fail"
    assert "not sent: the milter does not accept connections on" in probe["detail"]
    assert "is it running?" in probe["detail"]
    assert run.status("milter-in-smtpd-milters") == "pass"
    healthy.assert_probe_never_left(run)


def test_damaged_probe_key_is_named_and_its_fix_works(healthy: Site) -> None:
    """Once reported as "cannot read ...: run doctor as root", which root cannot fix."""
    key_path = healthy.milter.state_dir / "probe.key"
    key_path.write_text("0123\n")  # truncated
    run = healthy.doctor("--offline")
    assert run.code == 1
    probe = run.checks["probe"]
    assert probe["status"] == "fail"
    assert probe["detail"] == (
        f"not sent: {key_path} is damaged (it must hold 64 hex"
        " digits), so the milter could not recognise and discard"
        " the probe"
    )
    assert probe["fix"] == (
        f"delete {key_path} and restart the milter, which writes a new key at start"
    )
    healthy.assert_probe_never_left(run)

    healthy.milter.stop()
    key_path.unlink()
    healthy.milter.start()
    run = healthy.doctor("--offline")
    assert run.status("probe") == "pass", run.stdout
    healthy.assert_probe_never_left(run)


def test_milter_missing_from_smtpd_milters(site: SiteFactory) -> None:
    s = site(smtpd_milters="")
    run = s.doctor("--offline")
    assert run.code == 1
    listed = run.checks["milter-in-smtpd-milters"]
    assert listed["status"] == "fail"
    assert f"not in {s.postfix.config_dir}/main.cf line" in listed["detail"]
    assert "{ unix:sendpost-agent/milter.sock, default_action=accept }" in listed["fix"]
    assert run.status("milter-default-action") == "skip"
    assert "not sent" in run.checks["probe"]["detail"]
    s.assert_probe_never_left(run)


def test_default_action_tempfail_fails(site: SiteFactory) -> None:
    s = site(smtpd_milters=f"{{ {OURS}, default_action=tempfail }}")
    run = s.doctor("--offline")
    assert run.code == 1
    action = run.checks["milter-default-action"]
    assert action["status"] == "fail"
    assert "default action tempfail" in action["detail"]
    assert "would defer every message" in action["detail"]
    assert run.status("probe") == "pass"
    s.assert_probe_never_left(run)


def test_entry_whose_parts_are_separated_by_spaces_is_read_as_postfix_reads_it(
    site: SiteFactory,
) -> None:
    """Postfix splits ``{ ... }`` on commas or whitespace; doctor once split on commas only
    and called the milter missing. tempfail shows its default_action is read too."""
    s = site(smtpd_milters=f"{{ {OURS}   default_action=tempfail }}")
    run = s.doctor("--offline")
    assert run.status("milter-in-smtpd-milters") == "pass", run.stdout
    assert (
        f"{s.milter.socket} is in smtpd_milters" in run.checks["milter-in-smtpd-milters"]["detail"]
    )
    action = run.checks["milter-default-action"]
    assert action["status"] == "fail"
    assert (
        "default action tempfail (default_action of its smtpd_milters entry in" in action["detail"]
    )
    assert run.status("probe") == "pass"  # Postfix took the entry and used the milter
    s.assert_probe_never_left(run)


def test_header_rules_that_hide_the_header_are_reported_with_file_and_line(
    site: SiteFactory, tmp_path: Path
) -> None:
    ignore = tmp_path / "header_checks"
    ignore.write_text(
        "# local rules\n/^Subject: buy now/ REJECT\n"
        "/^X-Sendpost-Message-UUID:/ IGNORE\n/^X-Mailer:/ IGNORE\n"
    )
    replace = tmp_path / "filter_header_checks"
    replace.write_text("/^X-Sendpost-/ REPLACE X-Removed: yes\n")
    s = site(
        smtpd_milters=f"{{ {OURS}, default_action=accept }}",
        main_cf={"header_checks": f"regexp:{ignore}"},
        master_cf_extra=f"rewrite-cleanup unix n - n - 0 cleanup\n"
        f"    -o header_checks=regexp:{replace}\n",
    )
    run = s.doctor("--offline")
    assert run.code == 1
    checks = run.checks["header-checks"]
    assert checks["status"] == "fail"
    assert f"{ignore} line 3 IGNOREs X-Sendpost-Message-UUID" in checks["detail"]
    assert f"{replace} line 1 REPLACEs X-Sendpost-Message-UUID" in checks["detail"]
    assert "service rewrite-cleanup/unix (-o header_checks)" in checks["detail"]
    assert "milters see headers after header_checks" in checks["detail"]
    assert "change it to INFO" in checks["fix"]
    probe = run.checks["probe"]
    assert probe["status"] == "fail"
    assert (
        "the header did not survive: the milter saw X-Sendpost-Message-UUID as missing"
        in probe["detail"]
    )
    s.assert_probe_never_left(run)


def filter_site(site: SiteFactory, reinjection_options: str) -> tuple[Site, int]:
    """A content filter, and its re-injection listener 127.0.0.1:PORT (returned) with
    ``-o content_filter=`` and ``reinjection_options``."""
    reinject = free_port()
    s = site(
        smtpd_milters=f"{{ {OURS}, default_action=accept }}",
        main_cf={"content_filter": f"smtp-amavis:[127.0.0.1]:{free_port()}"},
        master_cf_extra=master_cf(reinject, reinjection_options),
    )
    return s, reinject


def test_content_filter_reinjection_without_milters_is_a_warning(site: SiteFactory) -> None:
    s, reinject = filter_site(site, NO_MILTERS)
    run = s.doctor("--offline")
    assert run.code == 0, run.stdout
    assert json.loads(run.stdout)["overall"] == "warn"
    filters = run.checks["content-filters"]
    assert filters["status"] == "warn"
    assert f"re-injection listener 127.0.0.1:{reinject}/inet has no_milters" in filters["detail"]
    assert "logwatch carries the UUID recorded at the first hop" in filters["detail"]
    assert "no_header_body_checks" in filters["detail"]
    assert run.status("milter-in-smtpd-milters") == "pass"  # re-injection is exempt
    assert run.status("probe") == "pass"
    s.assert_probe_never_left(run)


def test_content_filter_reinjection_through_the_milter_is_a_warning(site: SiteFactory) -> None:
    """The filter re-injects from 127.0.0.1, trusted: the re-injected copy of an untrusted
    message would count as trusted if its outcome is logged before the hop."""
    s, reinject = filter_site(site, "")
    run = s.doctor("--offline")
    filters = run.checks["content-filters"]
    assert filters["status"] == "warn", filters
    detail = filters["detail"]
    assert f"re-injection listener 127.0.0.1:{reinject}/inet passes re-injected mail to" in detail
    assert "a forged X-Sendpost-Message-UUID from an untrusted client counts again" in detail
    assert (
        f"add no_milters to receive_override_options of 127.0.0.1:{reinject}/inet"
        in (filters["fix"])
    )


def test_trusted_clients_names_what_it_cannot_evaluate_and_untrusted_senders(
    tmp_path: Path, postfix_factory: PostfixFactory, sink: Sink, ingest: IngestServer
) -> None:
    """SendPost sending from a client the milter does not trust must not go silent."""
    networks = tmp_path / "mynetworks"
    networks.write_text("127.0.0.0/8\n")
    postfix = postfix_factory(
        start=False,
        smtp_probe=False,
        smtpd_milters=f"{{ {OURS}, default_action=accept }}",
        main_cf={"mynetworks": f"192.0.2.0/24 {networks}"},
    )
    postfix.queue_directory.mkdir(parents=True, exist_ok=True)
    milter = MilterProcess(
        tmp_path / "state",
        f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock",
        "--trusted-clients",
        "sasl:sendpost",
    ).start()
    s = Site(postfix, milter, sink, ingest)
    try:
        postfix.start()
        queue_id = postfix.send(
            "s@example.com", "r@example.com", {"X-Sendpost-Message-UUID": str(uuid.uuid4())}
        )
        postfix.wait_for_log(rf"{queue_id}: to=<r@example.com>, .*status=sent")
        run = s.doctor("--offline", "--trusted-clients", "mynetworks, sasl:sendpost")
    finally:
        s.stop()
    check = run.checks["trusted-clients"]
    assert check["status"] == "warn", check
    assert f"mynetworks entries {networks} cannot be evaluated by the agent" in check["detail"]
    assert "1 of the last 1 messages the milter recorded carried a valid" in check["detail"]
    assert "counts from SASL logins sendpost or clients in 192.0.2.0/24" in check["detail"]
    assert "list the networks SendPost sends from in trusted-clients" in check["fix"]
    assert "add its network to trusted-clients or have SendPost authenticate" in check["fix"]
    assert run.status("probe") == "pass"  # the probe is trusted by its key


def test_a_pipe_content_filter_is_reported_as_followed(site: SiteFactory) -> None:
    s = site(
        smtpd_milters=f"{{ {OURS}, default_action=accept }}",
        main_cf={"content_filter": "spamfilter:dummy"},
        master_cf_extra="spamfilter unix - n n - - pipe\n  flags=Rq user=nobody argv=/bin/true\n",
    )
    run = s.doctor("--offline")
    assert run.code == 0, run.stdout
    filters = run.checks["content-filters"]
    assert filters["status"] == "pass"
    assert (
        "pipe filter spamfilter: logwatch follows the copy it re-injects (sendmail, pickup)"
        " by its Message-ID within join-wait (30 s)" in filters["detail"]
    )
    s.assert_probe_never_left(run)


def test_a_directory_that_is_not_a_postfix_config_cannot_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sendpost_agent",
            "doctor",
            "--postfix-config-dir",
            str(tmp_path),
            "--offline",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SENDPOST_CONFIG": "/dev/null"},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"open {tmp_path}/main.cf: No such file or directory" in proc.stderr
    assert f"postfix-config-dir ({tmp_path}) must be Postfix's configuration" in proc.stderr


def test_bad_smtp_address_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sendpost_agent", "doctor", "--smtp", "25"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SENDPOST_CONFIG": "/dev/null"},
    )
    assert proc.returncode == 2
    assert "argument --smtp: '25' is not HOST:PORT" in proc.stderr


@pytest.mark.parametrize(
    ("address", "chroot", "target"),
    [
        (
            "unix:sendpost-agent/milter.sock",
            False,
            "unix:/var/spool/postfix/sendpost-agent/milter.sock",
        ),
        (
            "unix:sendpost-agent/milter.sock",
            True,
            "unix:/var/spool/postfix/sendpost-agent/milter.sock",
        ),
        ("unix:/run/m.sock", False, "unix:/run/m.sock"),
        ("unix:/run/m.sock", True, "unix:/var/spool/postfix/run/m.sock"),  # inside the chroot
        ("inet:localhost:9900", False, "inet:127.0.0.1:9900"),
        ("inet:[::1]:9900", True, "inet:::1:9900"),
    ],
)
def test_milter_addresses_resolve_as_smtpd_sees_them(
    address: str, chroot: bool, target: str
) -> None:
    assert milter_target(address, Path("/var/spool/postfix"), chroot) == target


class JournalCopy:
    """Copies what Postfix logs into a real journal file as it comes (journald's part on
    a host whose Postfix logs only to the journal)."""

    def __init__(self, maillog: Path, journal: Path) -> None:
        self.maillog, self.journal = maillog, journal
        self.offset = maillog.stat().st_size
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JournalCopy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        seq = 0
        while not self.done.wait(0.2):
            with self.maillog.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
            cut = data.rfind(b"\n") + 1
            self.offset += cut
            lines = [ln for ln in data[:cut].decode().splitlines() if JOURNAL_LINE.fullmatch(ln)]
            if lines:
                write_lines(self.journal, lines, first_seq=seq)
                seq += len(lines)


@needs_remote
def test_doctor_finds_the_probe_in_the_journal(healthy: Site, tmp_path: Path) -> None:
    """log-source journal: the mail-log check looks for the probe's lines in the journal."""
    directory = tmp_path / "journal"
    write_lines(directory / "old.journal", ["Nov 23 18:00:00 mx sshd[1]: hello"], facility=4)
    with JournalCopy(healthy.postfix.maillog, directory / "mail.journal"):
        run = healthy.doctor(
            "--offline", "--log-source", "journal", "--journal-directory", str(directory)
        )
    mail_log = run.checks["mail-log"]
    assert mail_log["status"] == "pass", run.stdout + run.stderr
    assert "Postfix logged the probe (queue ID" in mail_log["detail"]
    assert f"the journal files in {directory}" in mail_log["detail"]

    # Postfix's lines not in the journal (another facility or no journald): it fails.
    run = healthy.doctor(
        "--offline", "--log-source", "journal", "--journal-directory", str(directory)
    )
    mail_log = run.checks["mail-log"]
    assert mail_log["status"] == "fail"
    assert "Postfix did not log the probe (queue ID" in mail_log["detail"]
    assert "journal-match" in mail_log["fix"]
    healthy.assert_probe_never_left(run)
