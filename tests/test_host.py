"""The package on a real Debian 12 host, from install.sh to `apt purge`.

A Debian 12 root filesystem (mmdebstrap: systemd, Debian's Postfix, rsyslog) boots under
systemd-nspawn with a network of its own (tests/support/host.py). In it, the .deb that
`make deb` built is installed as README says: install.sh beside it installs it with apt
and runs `sendpost-agent setup`, which wires it to an ingestion server, printing one line
per step (no apt or dpkg output) and never the key. Then real mail goes through the
container's Postfix on port 25:

- a remote recipient the relay accepts -> delivered; an alias to a local user that does
  not exist -> bounced; a remote recipient the relay answers 450 -> deferred; each event
  carries the message's X-Sendpost-Message-UUID;
- the installed units pass `systemd-analyze verify` and keep their `systemd-analyze
  security` exposure (milter 1.2, logwatch 1.3 when these tests were written);
- an upgrade to a newer build while mail flows loses and duplicates no event, and mail
  received while the milter is stopped still gets its UUID (the header_checks INFO line
  that setup adds);
- with rsyslog removed (no syslog daemon; its mail log left behind grows no more),
  `setup` run again picks the systemd journal (log-source: journal), and the sandboxed
  logwatch reads it: delivered and bounced mail is reported with its UUID, and nothing
  shipped from the file before is shipped again;
- `teardown` and `apt purge` give main.cf back byte for byte, and mail still flows.

The tests run in this order and build on each other (one host per module). The relay is
an SMTP sink (tests/support/sink.py) and the API the ingest stand-in
(tests/support/ingest.py), both listening inside the container's network namespace.
"""

from __future__ import annotations

import re
import shlex
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.fixtures import ROOT, take_early_rootfs
from tests.support.host import (
    Container,
    RootfsBuild,
    deb_field,
    missing_tools,
    rebuild_with_version,
    remove_rootfs,
)
from tests.support.ingest import Event, IngestServer
from tests.support.postfix import submit
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

KEY = "sp-host-key-5c1e"
SENDER = "sender@example.com"
HEADER = "X-Sendpost-Message-UUID"
MILTER = "sendpost-agent-milter.service"
LOGWATCH = "sendpost-agent-logwatch.service"
#: `systemd-analyze security` exposure of the units when these tests were written: the
#: sandbox may get tighter, never looser.
EXPOSURE = {MILTER: 1.2, LOGWATCH: 1.3}
#: An alias whose target is no user of the host: local(8) bounces it.
ALIAS = "ghost"
MISSING_USER = "nosuchuser"
HOSTNAME = "mailhost"  # tests/support/host.py writes it; Postfix's myhostname
PACKAGE_DIR = "/root/packages"
EVENT_TIMEOUT = 60.0
#: A line of install.sh's (and setup's) output before doctor's report: a heading or summary
#: line, or one step ("  ok      ...", "  change  ...").
STEP_LINE = re.compile(
    r"Installing sendpost-agent|Setting up sendpost-agent \(Postfix .*\)|(Done|No changes): .*"
    r"|  (ok|change|note|would|WARNING) +\S.*"
)
#: What apt-get, dpkg and systemctl print while a package is installed.
PACKAGE_NOISE = re.compile(
    r"(Reading (package lists|state information|database)|Building dependency tree"
    r"|Selecting previously unselected|Preparing to unpack|Unpacking|Setting up .* \.\.\.$"
    r"|Processing triggers|Created symlink|(Get|Hit|Ign|Err):\d|[WEN]: |debconf: |\(Reading)"
)
#: install.sh prints ~20 step lines here (package, user, directories, config, services,
#: Postfix, headings); a package manager's output would be a hundred more.
MAX_STEP_LINES = 30


@dataclass(frozen=True)
class Debs:
    built: Path  # what `make deb` made
    newer: Path  # the same package with a higher version: an upgrade


@dataclass
class Host:
    """The booted host with its relay and API, and what the tests compare against."""

    container: Container
    ingest: IngestServer
    sink: Sink
    main_cf_before: bytes = b""  # main.cf before the package came

    def send(self, recipients: list[str]) -> str:
        """Send one message with a fresh UUID over SMTP to port 25; return the UUID."""
        message_uuid = str(uuid.uuid4())
        headers = {HEADER: message_uuid}
        self.container.in_netns(
            lambda: submit("127.0.0.1", 25, SENDER, recipients, headers, "hello\n")
        )
        return message_uuid

    def events_of(self, uuids: set[str]) -> list[tuple[str, str, str]]:
        """(message_id, event_type, recipient) of every accepted event for ``uuids``."""
        return [_key(e) for e in self.ingest.accepted if e["message_id"] in uuids]

    def wait_events(self, want: Counter[tuple[str, str, str]], timeout: float) -> None:
        """Until every event in ``want`` arrived (each as often as counted there)."""
        uuids = {message_id for message_id, _, _ in want}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = Counter(self.events_of(uuids))
            if not want - got:
                return
            time.sleep(0.2)
        got = Counter(self.events_of(uuids))
        pytest.fail(
            f"missing events {sorted(want - got)} after {timeout}s; got {sorted(got)}\n"
            f"{self.diagnostics()}",
            pytrace=False,
        )

    def postfix_log(self, since: str | None = None) -> str:
        """Postfix's log (the mail facility) in the journal, since ``since`` (Unix time)."""
        span = [f"--since=@{since}"] if since else ["--lines=40"]
        return self.container.run(
            "journalctl", "--no-pager", "--output=short-precise", *span, "SYSLOG_FACILITY=2"
        ).stdout

    def diagnostics(self) -> str:
        """The end of Postfix's log and of the units' journal, for failure messages."""
        return (
            f"--- Postfix's log ---\n{self.postfix_log()}\n--- journal ---\n"
            f"{self.container.journal(MILTER, LOGWATCH, lines=60)}"
        )

    def main_cf(self) -> bytes:
        return self.container.path("/etc/postfix/main.cf").read_bytes()


def _key(event: Event) -> tuple[str, str, str]:
    return (str(event["message_id"]), str(event["event_type"]), str(event.get("recipient")))


def _require_tools(*extra: str) -> None:
    missing = missing_tools() + [tool for tool in extra if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"required tools not found: {', '.join(missing)} (.ci/run installs them)",
            pytrace=False,
        )


# Module scope: one host for the module's tests, and its 300 MB are gone right after them.
@pytest.fixture(scope="module")
def debs(built_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """`make deb` of this checkout, and the same package as a newer version."""
    newer_version = f"{deb_field(built_deb, 'Version')}+1"
    work = tmp_path_factory.mktemp("debs")
    newer = rebuild_with_version(built_deb, newer_version, work / f"newer_{built_deb.name}")
    return Debs(built_deb, newer)


@pytest.fixture(scope="module")
def rootfs_build() -> Iterator[RootfsBuild]:
    """A Debian 12 root filesystem with the package's dependencies already in it, so that
    apt installs the .deb without a network (the container has none). Started when the
    tests were collected (tests/support/fixtures.py), so it built while others ran."""
    _require_tools()
    build = take_early_rootfs()
    yield build
    remove_rootfs(build)


@pytest.fixture(scope="module")
def host(rootfs_build: RootfsBuild, debs: Debs) -> Iterator[Host]:
    """The booted host, Postfix relaying to the sink, the package installed by install.sh
    (apt-get, then `sendpost-agent setup` against the ingest server)."""
    rootfs = rootfs_build.wait()
    print(f"root filesystem ready {rootfs_build.seconds:.0f}s after mmdebstrap started")
    started = time.monotonic()
    with Container(rootfs, rootfs.parent / "console.log") as container:
        print(f"booted in {time.monotonic() - started:.1f}s")
        ingest = IngestServer(KEY)
        sink = Sink()
        container.in_netns(ingest.start)
        container.in_netns(sink.start)
        try:
            yield _install(Host(container, ingest, sink), debs)
        finally:
            ingest.stop()
            sink.stop()


def _install(host: Host, debs: Debs) -> Host:
    """Install as README tells an operator on Debian: install.sh beside the .deb, run with
    the package, the key, the MTA and the endpoint; it installs the .deb with apt-get and
    hands over to `sendpost-agent setup`."""
    container = host.container
    # The mail server as its admin left it: everything not local goes to the relay, and an
    # alias points at a user who left.
    container.sh(
        f"postconf -e 'relayhost = [127.0.0.1]:{host.sink.port}'\n"
        f"echo '{ALIAS}: {MISSING_USER}' >> /etc/aliases\n"
        "newaliases\n"
        "postfix reload"
    )
    host.main_cf_before = host.main_cf()
    packages = container.path(PACKAGE_DIR)
    packages.mkdir()
    for deb in (debs.built, debs.newer):
        shutil.copy2(deb, packages / deb.name)
    shutil.copy2(ROOT / "install.sh", packages / "install.sh")
    # No network in the container: apt finds every dependency installed already.
    command = readme_install_command(debs.built.name, host.ingest.url)
    installed = container.run(
        "sh", "-c", f'cd {PACKAGE_DIR} && exec "$@"', "sh", *command, check=False, timeout=300
    )
    print(f"install.sh, as README gives it:\n{installed.stdout}")
    output = installed.stdout + installed.stderr
    assert installed.returncode == 0, f"install.sh failed:\n{output}\n{host.diagnostics()}"
    assert KEY not in output
    assert installed.stderr == ""
    steps, doctor = _steps_and_doctor(installed.stdout)
    # One line per step, and no package manager's chatter: that shows with --verbose only.
    noise = [line for line in installed.stdout.splitlines() if PACKAGE_NOISE.match(line)]
    assert noise == [], installed.stdout
    assert [line for line in steps if not STEP_LINE.match(line)] == [], installed.stdout
    assert steps[:2] == [
        "Installing sendpost-agent",
        f"  change  apt-get install sendpost-agent {deb_field(debs.built, 'Version')}",
    ], installed.stdout
    assert len(steps) <= MAX_STEP_LINES, installed.stdout
    assert doctor[-1] == "doctor: all checks passed.", installed.stdout
    # The package enabled both units and started neither without a configuration: their
    # start at install was skipped (not failed) until setup wrote config.yaml.
    for unit in (MILTER, LOGWATCH):
        assert container.run("systemctl", "is-enabled", unit, check=False).stdout == "enabled\n"
        skipped = container.run(
            "journalctl", "--no-pager", f"--unit={unit}", "--grep=unmet condition", check=False
        ).stdout
        assert "ConditionPathExists=/etc/sendpost-agent/config.yaml" in skipped, skipped
    active = _states(container, "is-active")
    assert active == ["active", "active"], f"{installed.stdout}\n{host.diagnostics()}"
    return host


def readme_install_command(deb: str, endpoint: str) -> list[str]:
    """README's install command for Debian, with this package, KEY and ``endpoint``."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"(?m)^    (\./install\.sh --package .*)$", readme)
    assert match, "README gives no `./install.sh --package ...` command"
    command = shlex.split(match.group(1))
    values = {"--package": f"./{deb}", "--api-key": KEY, "--endpoint": endpoint}
    for flag, value in values.items():
        assert flag in command, f"README's install command has no {flag}: {match.group(1)}"
        command[command.index(flag) + 1] = value
    return command


def _steps_and_doctor(output: str) -> tuple[list[str], list[str]]:
    """install.sh's output as its step lines (blank lines left out) and doctor's report,
    which setup prints last under a line of its own."""
    steps, found, doctor = output.partition("\nsendpost-agent doctor\n")
    assert found, output
    return [line for line in steps.splitlines() if line], doctor.splitlines()


def test_delivered_bounced_and_deferred_mail_is_reported_with_its_uuid(host: Host) -> None:
    delivered = host.send(["ok@example.com"])
    bounced = host.send([f"{ALIAS}@{HOSTNAME}"])
    deferred = host.send(["defer@example.com"])
    both = host.send(["ok2@example.com", "defer2@example.com"])
    want = Counter(
        [
            (delivered, "delivered", "ok@example.com"),
            # the address SendPost gave Postfix, not the alias's target that bounced
            (bounced, "bounced", f"{ALIAS}@{HOSTNAME}"),
            (deferred, "deferred", "defer@example.com"),
            (both, "delivered", "ok2@example.com"),
            (both, "deferred", "defer2@example.com"),
        ]
    )
    host.wait_events(want, EVENT_TIMEOUT)
    assert Counter(host.events_of({delivered, bounced, deferred, both})) == want
    # The relay got the delivered mail with the header untouched.
    relayed = {m.parsed()[HEADER] for m in host.sink.messages}
    assert {delivered, both} <= relayed


@pytest.mark.parametrize("unit", [MILTER, LOGWATCH])
def test_installed_units_verify_and_keep_their_sandbox(host: Host, unit: str) -> None:
    path = host.container.run("systemctl", "show", "--property=FragmentPath", "--value", unit)
    verify = host.container.run("systemd-analyze", "verify", path.stdout.strip(), check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout + verify.stderr == ""  # verify only warns about bad keys or values
    security = host.container.run("systemd-analyze", "security", "--no-pager", unit).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert match, security
    assert float(match.group(1)) <= EXPOSURE[unit], security


def test_upgrade_while_mail_flows_loses_and_duplicates_no_event(host: Host, debs: Debs) -> None:
    container = host.container
    pids_before = _main_pids(container)
    flowing: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def mail_flow() -> None:
        try:
            while not stop.is_set():
                flowing.append(host.send([f"flow{len(flowing)}@example.com"]))
                time.sleep(0.05)
        except BaseException as exc:  # reported below, with the upgrade's output
            errors.append(exc)

    sender = threading.Thread(target=mail_flow, name="mail-flow")
    sender.start()
    try:
        time.sleep(1)  # mail is flowing before the upgrade starts
        upgrade = container.run(
            "apt-get", "install", "--yes", f"{PACKAGE_DIR}/{debs.newer.name}", check=False
        )
        time.sleep(1)  # ... and after it
    finally:
        stop.set()
        sender.join(60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert not errors, f"mail stopped flowing during the upgrade: {errors[0]!r}"
    version = container.run("dpkg-query", "-W", "-f=${Version}", "sendpost-agent").stdout
    assert version == deb_field(debs.newer, "Version")
    # Both services run the new build: restarted by the upgrade, and up again.
    pids_after = _main_pids(container)
    assert all(pids_after[u] not in (0, pids_before[u]) for u in (MILTER, LOGWATCH)), (
        pids_before,
        pids_after,
    )

    want = Counter((u, "delivered", f"flow{i}@example.com") for i, u in enumerate(flowing))
    host.wait_events(want, EVENT_TIMEOUT)
    assert Counter(host.events_of(set(flowing))) == want  # each one, once
    assert len(flowing) > 10, flowing


def test_mail_received_while_the_milter_is_stopped_keeps_its_uuid(host: Host) -> None:
    """The window an upgrade opens, held open on purpose: Postfix passes the mail on
    without the milter (default_action=accept), and Postfix's own log line of the header
    (the INFO rule of setup) gives logwatch the UUID."""
    container = host.container
    container.run("systemctl", "stop", MILTER)
    try:
        unseen = host.send(["unseen@example.com"])
    finally:
        container.run("systemctl", "start", MILTER)
    want = Counter([(unseen, "delivered", "unseen@example.com")])
    host.wait_events(want, EVENT_TIMEOUT)
    assert Counter(host.events_of({unseen})) == want
    # Read after logwatch did: the line is surely written by then.
    mail_log = container.path("/var/log/mail.log").read_text(errors="replace")
    assert re.search(rf"info: header {HEADER}: {unseen}", mail_log), host.diagnostics()


def test_without_rsyslog_setup_picks_the_journal_and_mail_is_reported_once(host: Host) -> None:
    """rsyslog is removed (apt-get remove: its mail.log is left behind, and grows no
    more) and `setup` run again, config.yaml as setup wrote it with rsyslog (log-path:
    /var/log/mail.log): it picks log-source journal by itself, as on Debian 12 as
    installed, and the sandboxed logwatch (user sendpost-agent, group adm) reads the
    journal with journalctl. What logwatch shipped from the file before is not shipped
    again; the tests after this one run without rsyslog too."""
    container = host.container
    config = "/etc/sendpost-agent/config.yaml"
    assert yaml.safe_load(container.path(config).read_text())["log-path"] == "/var/log/mail.log"
    container.run("apt-get", "remove", "--yes", "rsyslog", timeout=300)
    stale = container.path("/var/log/mail.log").read_bytes()
    setup = container.run("sendpost-agent", "setup", check=False, timeout=180)
    assert setup.returncode == 0, (
        f"setup failed:\n{setup.stdout}\n{setup.stderr}\n{host.diagnostics()}"
    )
    assert "reads Postfix's log from the systemd journal" in setup.stdout, setup.stdout
    assert "PASS mail-log: Postfix logged the probe" in setup.stdout, setup.stdout
    assert "doctor: all checks passed" in setup.stdout, setup.stdout
    settings = yaml.safe_load(container.path(config).read_text())
    assert settings["log-source"] == "journal", settings
    assert "log-path" not in settings, settings
    assert _states(container, "is-active") == ["active", "active"], host.diagnostics()

    delivered = host.send(["journal-ok@example.com"])
    bounced = host.send([f"{ALIAS}@{HOSTNAME}"])
    want = Counter(
        [
            (delivered, "delivered", "journal-ok@example.com"),
            (bounced, "bounced", f"{ALIAS}@{HOSTNAME}"),
        ]
    )
    host.wait_events(want, EVENT_TIMEOUT)
    assert Counter(host.events_of({delivered, bounced})) == want
    # Nothing logwatch shipped from the file before is shipped again from the journal.
    shipped = Counter(
        _key(e) for e in host.ingest.accepted if e["event_type"] in ("delivered", "bounced")
    )
    assert [key for key, n in shipped.items() if n > 1] == []
    assert container.path("/var/log/mail.log").read_bytes() == stale  # only the journal has it
    assert "journal" in container.run("sendpost-agent", "status").stdout


def test_teardown_and_purge_restore_main_cf_and_mail_still_flows(host: Host) -> None:
    container = host.container
    teardown = container.run("sendpost-agent", "teardown", check=False, timeout=120)
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    container.run("apt-get", "purge", "--yes", "sendpost-agent", timeout=300)
    assert host.main_cf() == host.main_cf_before
    left = container.sh(
        "ls -d /etc/sendpost-agent /var/lib/sendpost-agent /var/spool/postfix/sendpost-agent"
        " 2>/dev/null || true; getent passwd sendpost-agent || true"
    )
    assert left == ""
    assert _states(container, "is-active") == ["inactive", "inactive"]

    mark = container.sh("date +%s.%N").strip()
    before = len(host.sink.messages)
    after_purge = host.send(["after-purge@example.com"])
    deadline = time.monotonic() + EVENT_TIMEOUT
    while time.monotonic() < deadline and len(host.sink.messages) == before:
        time.sleep(0.2)
    relayed = [m.parsed()[HEADER] for m in host.sink.messages[before:]]
    assert relayed == [after_purge], host.diagnostics()
    # Postfix no longer looks for the milter (it would log a warning for each message),
    # read once smtp(8) logged the delivery, after smtpd's and cleanup's lines.
    delivered = "to=<after-purge@example.com>"
    while delivered not in (logged := host.postfix_log(since=mark)):
        assert time.monotonic() < deadline, host.diagnostics()
        time.sleep(0.2)
    assert "milter" not in logged.lower()


def _states(container: Container, verb: str) -> list[str]:
    """`systemctl is-enabled` / `is-active` of both units, in order milter, logwatch."""
    return container.run("systemctl", verb, MILTER, LOGWATCH, check=False).stdout.split()


def _main_pids(container: Container) -> dict[str, int]:
    out = {}
    for unit in (MILTER, LOGWATCH):
        pid = container.run("systemctl", "show", "--property=MainPID", "--value", unit).stdout
        out[unit] = int(pid.strip() or 0)
    return out
