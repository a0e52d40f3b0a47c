"""install.sh and ``sendpost-agent setup``/``teardown``, for real: into a temporary root,
against a private Postfix instance.

The paths they would use on a host (/opt/sendpost-agent, /etc/sendpost-agent,
/var/lib/sendpost-agent, /etc/systemd/system, /usr/local/bin) are pointed into tmp_path
with the environment overrides and flags they document; the Postfix changed is a private
instance (``--postfix-config-dir``). The system user ``sendpost-agent`` is real: the tests
that purge remove it again. One test builds the real virtualenv (pip install of this
checkout, ~10 s) and runs install.sh's whole life; the others stub the package with
SENDPOST_SKIP_VENV=1 and a prefix whose ``bin/sendpost-agent`` is this checkout's, or
run ``setup`` and ``teardown`` themselves. The .deb path (apt-get install of the package)
needs a host of its own: it is not run here.

CI runs without systemd: the systemd branch is driven through a fake ``systemctl`` on
PATH that records its calls (the units themselves are checked in test_systemd.py).
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from sendpost_agent.hostsetup import HEADER_RULE, MILTER_OPTIONS
from sendpost_agent.queuemap import MapReader
from tests.support.fixtures import PostfixFactory
from tests.support.postfix import PostfixInstance, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "install.sh"
AGENT_BIN = Path(sys.executable).parent / "sendpost-agent"
KEY = "spk-test-0f3c9a1be27d4c55a8e3"
OTHER_MILTER = "inet:localhost:8891"  # e.g. OpenDKIM, which must survive untouched
UUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
AGENT = "sendpost-agent"
UNITS = ("sendpost-agent-milter.service", "sendpost-agent-logwatch.service")


def shipped_entry() -> str:
    text = (ROOT / "postfix-conf" / "main.cf.snippet").read_text()
    match = re.search(r"^smtpd_milters = (.+)$", text, re.MULTILINE)
    assert match
    return match.group(1)


@dataclass
class Host:
    """The temporary root install.sh installs into, and how to run it there."""

    root: Path
    postfix: PostfixInstance
    env: dict[str, str] = field(default_factory=dict)
    script: Path = SCRIPT

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / AGENT

    @property
    def etc(self) -> Path:
        return self.root / "etc" / AGENT

    @property
    def config(self) -> Path:
        return self.etc / "config.yaml"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / AGENT

    @property
    def systemd(self) -> Path:
        return self.root / "etc" / "systemd" / "system"

    @property
    def bin_dir(self) -> Path:
        return self.root / "usr" / "local" / "bin"

    @property
    def main_cf(self) -> Path:
        return self.postfix.config_dir / "main.cf"

    @property
    def socket_dir(self) -> Path:
        return self.postfix.queue_directory / AGENT

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", str(self.script), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
        return proc

    def install(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        proc = self.run("--postfix-config-dir", str(self.postfix.config_dir), *args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == 0, proc.output  # type: ignore[attr-defined]
        return proc

    def agent(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``sendpost-agent --config CONFIG ARGS...`` of this checkout."""
        proc = subprocess.run(
            [str(AGENT_BIN), "--config", str(self.config), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
            input=stdin,
            check=False,
        )
        proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
        return proc

    def setup(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """setup for this Postfix and state-dir; it must succeed."""
        proc = self.agent(
            "setup",
            "--postfix-config-dir",
            str(self.postfix.config_dir),
            "--state-dir",
            str(self.state),
            *args,
            **kw,  # type: ignore[arg-type]
        )
        assert proc.returncode == 0, proc.output  # type: ignore[attr-defined]
        return proc

    def teardown(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.agent("teardown", *args)
        assert proc.returncode == 0, proc.output  # type: ignore[attr-defined]
        return proc

    def milters(self) -> str:
        return self.postfix.postconf_get("smtpd_milters")

    def backups(self) -> list[Path]:
        return sorted(self.postfix.config_dir.glob("main.cf.sendpost-agent.*"))


@pytest.fixture(autouse=True)
def not_on_a_host_with_a_real_install() -> None:
    """These tests create and delete the system user sendpost-agent: never next to a real
    install, whose files that user owns."""
    real = [p for p in ("/etc/sendpost-agent", "/opt/sendpost-agent") if Path(p).exists()]
    if real:
        pytest.fail(
            f"sendpost-agent is installed on this host ({', '.join(real)}); run these"
            " tests on a CI or development machine",
            pytrace=False,
        )


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDPOST_", "MAIL_CONFIG"))}
    env.update(
        SENDPOST_PREFIX=str(root / "opt" / AGENT),
        SENDPOST_ETC=str(root / "etc" / AGENT),
        SENDPOST_STATE=str(root / "var" / "lib" / AGENT),
        SENDPOST_BIN_DIR=str(root / "usr" / "local" / "bin"),
        SYSTEMD_DIR=str(root / "etc" / "systemd" / "system"),
        # Never the host's systemd, even on a developer machine that runs one.
        SENDPOST_SYSTEMD="no",
    )
    return env


def stub_prefix(prefix: Path) -> None:
    """A stand-in virtualenv: its sendpost-agent is this checkout's."""
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / AGENT).symlink_to(AGENT_BIN)


def remove_agent_user() -> None:
    subprocess.run(["userdel", AGENT], capture_output=True, check=False)
    subprocess.run(["groupdel", AGENT], capture_output=True, check=False)


def stubbed_host(tmp_path: Path, postfix: PostfixInstance) -> Host:
    """A temp root for install.sh against ``postfix``, with a stubbed virtualenv."""
    root = tmp_path / "root"
    root.mkdir()
    h = Host(root, postfix, base_env(root))
    stub_prefix(h.prefix)
    h.env["SENDPOST_SKIP_VENV"] = "1"
    return h


@pytest.fixture
def host(tmp_path: Path, postfix_factory: PostfixFactory) -> Iterator[Host]:
    """A started private Postfix with an existing milter, and a stubbed virtualenv."""
    yield stubbed_host(tmp_path, postfix_factory(smtpd_milters=OTHER_MILTER))


def snapshot(*paths: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every file and directory under paths: mode, owner, group, content hash."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for top in paths:
        for path in [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]:
            st = path.lstat()
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


# --- the script itself ---------------------------------------------------------------


def test_script_parses_and_is_shellcheck_clean() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(
            "shellcheck not found (apt-get install shellcheck; .ci/run installs it)", pytrace=False
        )
    proc = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_bare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=base_env(Path("/nonexistent-root")),
        check=False,
        timeout=30,
    )


def test_help_lists_every_flag() -> None:
    proc = run_bare("--help")
    assert proc.returncode == 0
    for flag in (
        "--api-key",
        "--mta",
        "--endpoint",
        "--log-path",
        "--uninstall",
        "--purge",
        "--dry-run",
        "--postfix-config-dir",
        "--package",
        "--verbose",
        "--help",
    ):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option: --frobnicate"),
        (["--api-key"], "--api-key needs a value"),
        (["--api-key", "--dry-run"], "--api-key needs a value"),
        (["--package"], "--package needs a value"),
        (["--dry-run=yes"], "--dry-run takes no value"),
        (["--purge"], "--purge only goes with --uninstall"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    proc = run_bare(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Usage: install.sh" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mta", "exim"], "'exim' is not supported; the only supported MTA is 'postfix'"),
        (["--mta=sendmail"], "the only supported MTA is 'postfix'"),
        (["--endpoint", "events.sendpost.io"], "is not an http(s) URL"),
        (["--log-path", "mail.log"], "--log-path 'mail.log' is not an absolute path"),
        (["--api-key", "two words"], "contains spaces or control characters"),
    ],
)
def test_bad_values_exit_2_and_change_nothing(host: Host, args: list[str], message: str) -> None:
    """install.sh hands the values to setup, which checks them with config.py before any
    change. (Not /etc/passwd: other tests on this machine may add users meanwhile.)"""
    watched = (host.root, host.postfix.config_dir)
    before = snapshot(*watched)
    proc = host.run(
        "--postfix-config-dir", str(host.postfix.config_dir), *args, env={"SENDPOST_API_KEY": KEY}
    )
    assert proc.returncode == 2, proc.output  # type: ignore[attr-defined]
    assert message in proc.stderr
    assert "two words" not in proc.output  # type: ignore[attr-defined]  # not even a bad key is echoed
    assert snapshot(*watched) == before


def test_first_install_without_a_key_exits_2(host: Host) -> None:
    proc = host.run("--postfix-config-dir", str(host.postfix.config_dir))
    assert proc.returncode == 2
    assert "an API key is needed" in proc.stderr
    assert not host.config.exists()


def test_no_deb_and_no_checkout_says_how_to_get_the_package(tmp_path: Path) -> None:
    """The one-liner form (curl ... | bash -s --) runs install.sh outside a checkout: on an
    apt system it needs the .deb's URL."""
    if shutil.which("apt-get") is None:
        pytest.skip("needs an apt system")
    alone = tmp_path / "install.sh"
    shutil.copy(SCRIPT, alone)
    env = base_env(tmp_path)
    env.pop("SENDPOST_SKIP_VENV", None)
    proc = subprocess.run(
        ["bash", str(alone), "--api-key", KEY, "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "name it with --package FILE or URL" in proc.stderr


# --- dry run -------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(host: Host) -> None:
    watched = (
        host.root,
        host.postfix.config_dir,
        host.postfix.queue_directory,
        Path("/etc/passwd"),
        Path("/etc/group"),
    )
    before = snapshot(*watched)
    proc = host.run(
        "--postfix-config-dir",
        str(host.postfix.config_dir),
        "--dry-run",
        env={"SENDPOST_API_KEY": KEY},
    )
    assert proc.returncode == 0, proc.output  # type: ignore[attr-defined]
    assert snapshot(*watched) == before
    out = proc.output  # type: ignore[attr-defined]
    assert KEY not in out
    assert "nothing was changed" in out
    for planned in (
        f"would   create {host.state}",
        "would   write",
        "api-key set",
        f"set smtpd_milters = {OTHER_MILTER}, {shipped_entry()}",
        f"set header_checks = regexp:{host.postfix.config_dir}/sendpost_header_checks",
        "would   postfix reload",
    ):
        assert planned in out, f"{planned!r} missing from:\n{out}"
    assert " change  " not in out


# --- a real install, end to end ------------------------------------------------------


def test_real_install_second_run_key_change_and_uninstall(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    """The whole life: install (real venv), milter works, rerun, new key, uninstall."""
    postfix = postfix_factory(smtpd_milters=OTHER_MILTER)
    root = tmp_path / "root"
    root.mkdir()
    # A snapshot of the checkout: the fingerprint of its code decides whether a rerun
    # reinstalls, and this tree may be edited while the test runs.
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "tests", "*.egg-info", "__pycache__", ".*cache", "build", "dist"
        ),
    )
    host = Host(root, postfix, base_env(root), script=checkout / "install.sh")
    original_main_cf = host.main_cf.read_bytes()
    remove_agent_user()  # a first install creates it
    try:
        first = host.install(
            "--api-key", KEY, "--mta", "postfix", "--endpoint", "http://127.0.0.1:9/events"
        )
        out = first.output  # type: ignore[attr-defined]
        assert KEY not in out

        # Postfix: both milters, ours exactly as shipped; main.cf backed up first.
        assert host.milters() == f"{OTHER_MILTER}, {shipped_entry()}"
        [backup] = host.backups()
        assert backup.read_bytes() == original_main_cf
        assert "postfix reload" in out

        # The agent's user, files and modes.
        user = pwd.getpwnam(AGENT)
        assert user.pw_shell.endswith("nologin")
        assert not Path(user.pw_dir).exists()
        config = host.config.stat()
        assert stat.S_IMODE(config.st_mode) == 0o600
        assert (config.st_uid, config.st_gid) == (user.pw_uid, user.pw_gid)
        text = host.config.read_text()
        assert f'api-key: "{KEY}"' in text
        assert "mta: postfix" in text
        assert 'endpoint: "http://127.0.0.1:9/events"' in text
        assert f'log-path: "{postfix.maillog}"' in text  # Postfix's maillog_file
        assert f'postfix-config-dir: "{postfix.config_dir}"' in text
        assert f'state-dir: "{host.state}"' in text
        assert f'milter-socket: "unix:{host.socket_dir}/milter.sock"' in text
        state = host.state.stat()
        assert (stat.S_IMODE(state.st_mode), state.st_uid) == (0o750, user.pw_uid)
        sock_dir = host.socket_dir.stat()
        assert stat.S_IMODE(sock_dir.st_mode) == 0o2750
        assert (sock_dir.st_uid, sock_dir.st_gid) == (user.pw_uid, grp.getgrnam("postfix").gr_gid)

        # The real virtualenv and the command link.
        agent = host.prefix / "bin" / AGENT
        assert (host.prefix / "pyvenv.cfg").exists()
        version = subprocess.run(
            [str(host.bin_dir / AGENT), "--version"], capture_output=True, text=True, check=True
        )
        assert version.stdout.startswith("sendpost-agent ")
        # Its log pipeline is the compiled one (setup.py), and it loads.
        pipeline = subprocess.run(
            [
                str(host.prefix / "bin" / "python"),
                "-c",
                "import logwatch.pipeline as m; print(m.__file__)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
        )
        assert pipeline.stdout.strip().endswith(".so"), pipeline.stdout

        # The units point at this install and pass systemd-analyze with its binary; setup's
        # drop-in names this host's directories.
        milter_unit = (host.systemd / UNITS[0]).read_text()
        assert f"ExecStart={agent} --config {host.config} milter" in milter_unit
        drop_in = (host.systemd / f"{UNITS[0]}.d" / "sendpost-agent-setup.conf").read_text()
        assert f"ReadWritePaths=\nReadWritePaths={host.state} {host.socket_dir}\n" in drop_in
        verify = subprocess.run(
            ["systemd-analyze", "verify", *(str(host.systemd / u) for u in UNITS)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

        # No systemd here: instructions instead; they work as printed.
        assert "systemd is not running on this host" in out
        milter_cmd = re.search(r"^  milter: +(setpriv .* milter)$", out, re.MULTILINE)
        logwatch_cmd = re.search(r"^  logwatch: +(setpriv .* logwatch)$", out, re.MULTILINE)
        assert milter_cmd and logwatch_cmd, out
        assert "--groups=adm" in logwatch_cmd.group(1)
        # A key install.sh does not manage survives; use a free port for the milter's metrics.
        with host.config.open("a") as f:
            f.write(f"milter-listen: 127.0.0.1:{free_port()}\n")
        assert_milter_works_as_installed(host, milter_cmd.group(1).split())

        # Second run, same flags: nothing changes, and it says so.
        config_before = host.config.read_bytes()
        main_cf_before = host.main_cf.read_bytes()
        again = host.install(
            "--api-key", KEY, "--mta", "postfix", "--endpoint", "http://127.0.0.1:9/events"
        )
        assert "No changes: sendpost-agent is set up as requested." in again.output, again.output  # type: ignore[attr-defined]
        assert " change  " not in again.output  # type: ignore[attr-defined]
        assert host.main_cf.read_bytes() == main_cf_before
        assert host.config.read_bytes() == config_before
        assert len(host.backups()) == 1

        # A new key (from the environment this time) updates config.yaml only.
        new_key = KEY + "-rotated"
        rotated = host.install(env={"SENDPOST_API_KEY": new_key})
        assert "api-key changed" in rotated.output  # type: ignore[attr-defined]
        assert new_key not in rotated.output  # type: ignore[attr-defined]
        assert f'api-key: "{new_key}"' in host.config.read_text()
        assert "milter-listen: 127.0.0.1:" in host.config.read_text()
        assert host.main_cf.read_bytes() == main_cf_before

        # Uninstall: main.cf exactly as before, services and venv gone, state and config
        # kept.
        planned = host.run("--uninstall", "--dry-run")
        assert planned.returncode == 0, planned.output  # type: ignore[attr-defined]
        assert f"would   restore {host.main_cf} from {backup}" in planned.output  # type: ignore[attr-defined]
        assert host.main_cf.read_bytes() == main_cf_before and host.prefix.is_dir()

        gone = host.run("--uninstall")
        assert gone.returncode == 0, gone.output  # type: ignore[attr-defined]
        assert host.milters() == OTHER_MILTER
        assert host.main_cf.read_bytes() == original_main_cf
        assert len(host.backups()) == 2
        assert not host.prefix.exists()
        assert not any(host.systemd.iterdir())
        assert not (host.bin_dir / AGENT).exists()
        assert not host.socket_dir.exists()
        assert host.state.is_dir() and host.config.is_file()
        assert "--purge" in gone.output  # type: ignore[attr-defined]

        again = host.run("--uninstall")
        assert "No changes: sendpost-agent is not installed." in again.output  # type: ignore[attr-defined]
        # The agent is gone, and a purge needs it: it says what is left to remove.
        late = host.run("--uninstall", "--purge")
        assert late.returncode == 0, late.output  # type: ignore[attr-defined]
        assert f"rm -rf {host.state} {host.etc}; userdel {AGENT}" in late.output  # type: ignore[attr-defined]
        assert host.main_cf.read_bytes() == original_main_cf
    finally:
        remove_agent_user()


def assert_milter_works_as_installed(host: Host, command: list[str]) -> None:
    """Run the printed milter command; Postfix must reach it through main.cf's entry."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sock = host.socket_dir / "milter.sock"
        deadline = time.monotonic() + 15
        while not sock.is_socket():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the milter socket did not appear"
            time.sleep(0.05)
        mode = stat.S_IMODE(sock.stat().st_mode)
        assert (mode & 0o060, mode & 0o007) == (0o060, 0), oct(mode)  # group postfix only
        assert sock.stat().st_gid == grp.getgrnam("postfix").gr_gid
        queue_id = host.postfix.send(
            "s@example.com", ["ok@example.com"], {"X-Sendpost-Message-UUID": UUID}, "body\n"
        )
        reader = MapReader(host.state / "queuemap.sqlite3")
        try:
            entry = None
            deadline = time.monotonic() + 10
            while entry is None and time.monotonic() < deadline:
                entry = reader.get(queue_id)
                time.sleep(0.05)
        finally:
            reader.close()
        assert entry is not None and entry.uuid == UUID
        refused = [
            ln for ln in host.postfix.maillog_lines() if "Milter service unix:sendpost-agent" in ln
        ]
        assert not refused, refused
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        assert proc.returncode == 0, output


# --- stubbed virtualenv: the other paths ---------------------------------------------


def shim_path(tmp_path: Path, names: tuple[str, ...]) -> tuple[str, Path]:
    """A PATH whose first directory logs argv and environment of every child process."""
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "children.log"
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for name in names:
        real = shutil.which(name, path=search)
        if real is None:
            continue
        shim = shims / name
        shim.write_text(f'#!/bin/sh\n{{ echo "{name} $*"; env; }} >> {log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return f"{shims}{os.pathsep}{search}", log


def test_no_systemd_prints_instructions_and_the_key_reaches_no_child(
    host: Host, tmp_path: Path
) -> None:
    path, children = shim_path(
        tmp_path,
        (
            "postconf",
            "postfix",
            "chown",
            "chmod",
            "mv",
            "mktemp",
            "install",
            "stat",
            "getent",
            "useradd",
            "find",
            "cp",
            "ln",
            "rm",
            "id",
            "date",
            "readlink",
            "systemctl",
            "userdel",
            "groupdel",
            "dpkg-query",
            "apt-get",
        ),
    )
    remove_agent_user()  # so that setup runs useradd
    try:
        proc = host.install("--api-key", KEY, env={"PATH": path, "SENDPOST_API_KEY": KEY})
        out = proc.output  # type: ignore[attr-defined]
        assert "systemd is not running on this host" in out
        run = f"{host.prefix}/bin/{AGENT} --config {host.config}"
        as_agent = f"setpriv --reuid={AGENT} --regid={AGENT}"
        assert f"{as_agent} --init-groups -- {run} milter" in out
        assert f"{as_agent} --groups=adm -- {run} logwatch" in out
        assert "verdict:" not in out  # nothing runs yet: doctor would only fail
        assert host.milters() == f"{OTHER_MILTER}, {shipped_entry()}"
        assert KEY in host.config.read_text()

        purged = host.run("--uninstall", "--purge", env={"PATH": path})
        assert purged.returncode == 0, purged.output  # type: ignore[attr-defined]
        assert not host.state.exists() and not host.etc.exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(AGENT)
        log = children.read_text()
        for child in ("postconf -c", "postfix -c", "useradd", "userdel"):
            assert f"\n{child}" in "\n" + log, f"the shims did not see {child}"
        assert KEY not in log  # neither in any child's argv nor in its environment
    finally:
        host.run("--uninstall", "--purge")


FAKE_SYSTEMCTL = """#!/bin/bash
# A stand-in for systemctl: records calls, keeps enabled/active state in files.
state={state}
echo "$*" >> "$state/calls"
args=()
for a in "$@"; do [[ $a == --quiet || $a == -q ]] || args+=("$a"); done
set -- "${{args[@]}}"
cmd=$1; shift
now=0; [[ ${{1:-}} == --now ]] && {{ now=1; shift; }}
unit=${{1:-}}
start() {{
    touch "$state/active-$1"
    if [[ $1 == sendpost-agent-milter.service ]]; then
        rm -f {socket}
        python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' {socket}
    fi
}}
case $cmd in
daemon-reload) ;;
is-enabled) [[ -e $state/enabled-$unit ]] ;;
is-active) [[ -e $state/active-$unit ]] ;;
enable) touch "$state/enabled-$unit"; ((now)) && start "$unit" ;;
disable) rm -f "$state/enabled-$unit"; ((now)) && rm -f "$state/active-$unit" {socket} ;;
start|restart) start "$unit" ;;
stop) rm -f "$state/active-$unit" ;;
*) exit 1 ;;
esac
"""


def test_systemd_host_enables_starts_runs_doctor_and_uninstalls(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    """With systemd (faked): daemon-reload, enable --now, doctor's verdict; rerun: nothing.

    Also: a milter_default_action other than accept stays as it is, and a Postfix without
    milters gets ours alone, and loses the parameter again on uninstall.
    """
    postfix = postfix_factory(main_cf={"milter_default_action": "tempfail"})
    root = tmp_path / "root"
    root.mkdir()
    host = Host(root, postfix, base_env(root))
    stub_prefix(host.prefix)
    state = tmp_path / "systemctl"
    state.mkdir()
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "systemctl").write_text(
        FAKE_SYSTEMCTL.format(state=state, socket=host.socket_dir / "milter.sock")
    )
    (fake / "systemctl").chmod(0o755)
    host.env.update(
        SENDPOST_SKIP_VENV="1",
        SENDPOST_SYSTEMD="yes",
        PATH=f"{fake}{os.pathsep}{os.environ['PATH']}",
    )
    calls = state / "calls"
    try:
        original_main_cf = host.main_cf.read_bytes()
        first = host.install("--api-key", KEY, "--endpoint", "http://127.0.0.1:9/events")
        out = first.output  # type: ignore[attr-defined]
        made = calls.read_text().splitlines()
        assert "daemon-reload" in made
        for unit in UNITS:
            assert f"enable --quiet --now {unit}" in made
        # The milter is enabled before Postfix is pointed at it.
        assert out.index("enable --now sendpost-agent-milter") < out.index("set smtpd_milters")
        assert postfix.postconf_get("smtpd_milters") == shipped_entry()
        assert postfix.postconf_get("milter_default_action") == "tempfail"
        assert "milter_default_action = tempfail is left as it is" in out
        # doctor ran (the fake systemctl starts no milter, so the probe fails).
        assert "FAIL probe: " in out and "verdict: FAIL" in out
        assert "doctor: a check failed" in out and "setup stays in place" in out
        assert "systemd is not running" not in out

        calls.unlink()
        again = host.install()
        assert "No changes" in again.output  # type: ignore[attr-defined]
        made = calls.read_text().splitlines()
        assert not [c for c in made if not c.startswith(("is-enabled", "is-active"))], made

        # A key only logwatch reads restarts logwatch alone: messages received while the
        # milter restarted would have no map row.
        for change in (["--endpoint", "https://example.invalid/events"], ["--api-key", "k2"]):
            calls.unlink()
            host.install(*change)
            made = calls.read_text().splitlines()
            assert [c for c in made if c.startswith("restart")] == [
                "restart sendpost-agent-logwatch.service"
            ]

        calls.unlink()
        gone = host.run("--uninstall")
        assert gone.returncode == 0, gone.output  # type: ignore[attr-defined]
        made = calls.read_text().splitlines()
        for unit in UNITS:
            assert f"disable --quiet --now {unit}" in made
        assert "daemon-reload" in made
        assert postfix.postconf_get("smtpd_milters") == ""
        assert host.main_cf.read_bytes() == original_main_cf
    finally:
        host.run("--uninstall", "--purge")


def test_uninstall_removes_only_our_entry_from_a_hand_edited_list(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    ours = "{ unix:sendpost-agent/milter.sock, default_action=accept }"  # edited by hand
    milters = f"inet:localhost:8891 {ours}\n    unix:/run/other/milter.sock"
    host = stubbed_host(tmp_path, postfix_factory(smtpd_milters=milters))
    try:
        proc = host.install("--api-key", KEY)
        assert "ok      smtpd_milters has the sendpost-agent milter" in proc.output  # type: ignore[attr-defined]
        gone = host.run("--uninstall")
        assert gone.returncode == 0, gone.output  # type: ignore[attr-defined]
        assert host.milters() == "inet:localhost:8891, unix:/run/other/milter.sock"
    finally:
        host.run("--uninstall", "--purge")


def test_state_left_by_a_root_run_is_handed_to_the_agent_user(host: Host) -> None:
    host.state.mkdir(parents=True)
    legacy = host.state / "queuemap.sqlite3"
    legacy.write_bytes(b"")
    try:
        proc = host.install("--api-key", KEY)
        assert f"give the files in {host.state} to {AGENT}" in proc.output  # type: ignore[attr-defined]
        assert legacy.stat().st_uid == pwd.getpwnam(AGENT).pw_uid
    finally:
        host.run("--uninstall", "--purge")


def set_config_key(host: Host, key: str, value: str | None) -> None:
    """Edit config.yaml by hand: ``key: value`` as an operator writes it (None: remove)."""
    lines = [ln for ln in host.config.read_text().splitlines() if not ln.startswith(f"{key}:")]
    if value is not None:
        lines.append(f"{key}: {value}")
    host.config.write_text("\n".join(lines) + "\n")


def test_a_milter_socket_set_by_hand_is_kept_and_the_entry_follows_it(host: Host) -> None:
    """postfix-conf/README.md's inet socket: milter-socket and the smtpd_milters entry set
    by hand survive a rerun (upgrade, new key) untouched; the entry install.sh manages
    follows milter-socket when only that changed; uninstall removes it."""
    inet = f"inet:127.0.0.1:{free_port()}"
    inet_entry = shipped_entry().replace("unix:sendpost-agent/milter.sock", inet)
    try:
        host.install("--api-key", KEY)
        set_config_key(host, "milter-socket", inet)
        host.postfix.postconf(smtpd_milters=f"{OTHER_MILTER}, {inet_entry}")
        config_before, main_cf_before = host.config.read_bytes(), host.main_cf.read_bytes()
        again = host.install()
        assert "No changes" in again.output, again.output  # type: ignore[attr-defined]
        assert host.config.read_bytes() == config_before
        assert host.main_cf.read_bytes() == main_cf_before
        host.install(env={"SENDPOST_API_KEY": KEY + "-rotated"})
        assert f"milter-socket: {inet}\n" in host.config.read_text()
        assert host.main_cf.read_bytes() == main_cf_before

        # Back to the default socket in config.yaml alone: the entry follows, once.
        set_config_key(host, "milter-socket", None)
        moved = host.install()
        assert host.milters() == f"{OTHER_MILTER}, {shipped_entry()}", moved.output  # type: ignore[attr-defined]
        assert f'milter-socket: "unix:{host.socket_dir}/milter.sock"' in host.config.read_text()
        # ... and to the inet socket again.
        set_config_key(host, "milter-socket", inet)
        host.install()
        assert host.milters() == f"{OTHER_MILTER}, {inet_entry}"
        assert "No changes" in host.install().output  # type: ignore[attr-defined]

        gone = host.run("--uninstall")
        assert gone.returncode == 0, gone.output  # type: ignore[attr-defined]
        assert host.milters() == OTHER_MILTER
    finally:
        host.run("--uninstall", "--purge")


def syslog_writes_a_mail_log() -> str | None:
    """Why this host cannot stand for one whose Postfix logs only to the journal, if so."""
    for log in ("/var/log/mail.log", "/var/log/maillog"):
        if Path(log).exists():
            return f"{log} exists"
    for daemon in ("rsyslogd", "syslog-ng", "syslogd"):
        if (
            subprocess.run(["pgrep", "-x", daemon], capture_output=True, check=False).returncode
            == 0
        ):
            return f"{daemon} runs"
    return None


def test_a_unix_milter_socket_outside_the_queue_directory_is_refused(host: Host) -> None:
    """The milter's unit may write only in the socket directory, and a chrooted smtpd sees
    only the queue directory: such a socket would leave Postfix without the milter."""
    try:
        host.install("--api-key", KEY)
        set_config_key(host, "milter-socket", "unix:/run/elsewhere/m.sock")
        config_before = host.config.read_bytes()
        rerun = host.run()
        assert rerun.returncode == 1
        assert "milter-socket unix:/run/elsewhere/m.sock in" in rerun.stderr
        assert "use inet:127.0.0.1:PORT" in rerun.stderr
        assert host.config.read_bytes() == config_before
        gone = host.run("--uninstall")  # undoing the install must still work
        assert gone.returncode == 0, gone.output  # type: ignore[attr-defined]
    finally:
        host.run("--uninstall", "--purge")


def rsyslog_installed() -> bool:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "rsyslog"], capture_output=True, text=True, check=False
    )
    return "install ok installed" in installed.stdout


def test_without_a_mail_log_setup_reads_the_journal_or_installs_rsyslog(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    """As README's command runs on a fresh Debian 12 (no rsyslog, Postfix's log only in
    the journal): setup writes log-source: journal and installs no rsyslog. With
    --with-rsyslog it installs rsyslog, which writes /var/log/mail.log; installed but
    stopped, it says so."""
    reason = syslog_writes_a_mail_log()
    if reason:
        pytest.skip(f"needs a host where syslog writes no mail log ({reason})")
    postfix = postfix_factory(smtpd_milters=OTHER_MILTER)
    postfix.postconf(maillog_file="")
    host = stubbed_host(tmp_path, postfix)
    planned = host.run(
        "--postfix-config-dir", str(postfix.config_dir), "--dry-run", env={"SENDPOST_API_KEY": KEY}
    )
    assert planned.returncode == 0, planned.output  # type: ignore[attr-defined]
    assert "reads Postfix's log from the systemd journal" in planned.output  # type: ignore[attr-defined]
    assert "log-source: journal" in planned.output  # type: ignore[attr-defined]
    assert "rsyslog" not in planned.output.replace("no syslog daemon", "")  # type: ignore[attr-defined]

    planned = host.run(
        "--postfix-config-dir",
        str(postfix.config_dir),
        "--with-rsyslog",
        "--dry-run",
        env={"SENDPOST_API_KEY": KEY},
    )
    assert_rsyslog_planned(planned)
    # --with-rsyslog on a host set up for the journal: rsyslog, not the journal kept.
    try:
        host.install("--api-key", KEY)
        assert yaml.safe_load(host.config.read_text())["log-source"] == "journal"
        planned = host.run("--with-rsyslog", "--dry-run")
        assert_rsyslog_planned(planned)
        if planned.returncode == 0:
            assert "log-source removed (default)" in planned.output  # type: ignore[attr-defined]
        both = host.run("--with-rsyslog", "--log-source", "journal", "--dry-run")
        assert both.returncode == 2
        assert (
            "--with-rsyslog (read the file rsyslog writes) and --log-source journal" in both.stderr
        )
    finally:
        host.run("--uninstall", "--purge")


def assert_rsyslog_planned(planned: subprocess.CompletedProcess[str]) -> None:
    """setup --with-rsyslog where no syslog daemon runs: rsyslog installed, or when it is
    installed but stopped, setup says so and changes nothing."""
    if rsyslog_installed():
        assert planned.returncode == 1, planned.output  # type: ignore[attr-defined]
        assert "Install and start rsyslog" in planned.stderr
    else:
        assert planned.returncode == 0, planned.output  # type: ignore[attr-defined]
        assert "installing rsyslog, which writes /var/log/mail.log" in planned.output  # type: ignore[attr-defined]
        assert re.search(r"apt-get install .*\brsyslog\b", planned.output)  # type: ignore[attr-defined]


def test_without_a_mail_log_install_stops_and_says_how_to_fix_it(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    """Debian 12 without rsyslog: Postfix logs only to the journal (maillog_file empty, no
    /var/log/mail.log, no syslog daemon), so logwatch would wait for ever. install.sh
    --with-rsyslog changes nothing and says how to fix it; so does a rerun naming
    --log-path /var/log/mail.log. A rerun of an install made while rsyslog ran (setup
    wrote log-path: /var/log/mail.log) switches to the journal, as README says. A log
    named with --log-path is taken as it is."""
    reason = syslog_writes_a_mail_log()
    if reason:
        pytest.skip(f"needs a host where syslog writes no mail log ({reason})")
    if not rsyslog_installed():
        pytest.skip("setup would install rsyslog here (see the test above)")
    postfix = postfix_factory(smtpd_milters=OTHER_MILTER)
    postfix.postconf(maillog_file="")  # main.cf as Debian ships it
    host = stubbed_host(tmp_path, postfix)
    watched = (host.root, postfix.config_dir, Path("/etc/passwd"))
    before = snapshot(*watched)
    for dry_run in ([], ["--dry-run"]):
        refused = host.run(
            "--postfix-config-dir",
            str(postfix.config_dir),
            "--with-rsyslog",
            *dry_run,
            env={"SENDPOST_API_KEY": KEY},
        )
        assert refused.returncode == 1, refused.output  # type: ignore[attr-defined]
        assert "error: no mail log to follow: Postfix logs to syslog" in refused.stderr
        assert "Install and start rsyslog (apt-get install rsyslog;" in refused.stderr
        assert "--log-path" in refused.stderr
    assert snapshot(*watched) == before
    try:
        host.install("--api-key", KEY, "--log-path", str(postfix.maillog))
        assert f'log-path: "{postfix.maillog}"' in host.config.read_text()
        set_config_key(host, "log-path", "/var/log/mail.log")
        config_before = host.config.read_bytes()
        rerun = host.run("--log-path", "/var/log/mail.log")
        assert rerun.returncode == 1
        assert "no mail log to follow" in rerun.stderr
        assert host.config.read_bytes() == config_before
        rerun = host.run()
        assert rerun.returncode == 0, rerun.output  # type: ignore[attr-defined]
        assert "reads Postfix's log from the systemd journal" in rerun.output  # type: ignore[attr-defined]
        settings = yaml.safe_load(host.config.read_text())
        assert (settings["log-source"], "log-path" in settings) == ("journal", False)
    finally:
        host.run("--uninstall", "--purge")


# --- setup and teardown themselves ---------------------------------------------------


def test_setup_writes_what_postfix_conf_ships() -> None:
    """postfix-conf/ documents the lines for a hand-made setup: setup writes the same."""
    assert f", {MILTER_OPTIONS} }}" in shipped_entry()
    snippet = (ROOT / "postfix-conf" / "header_checks.snippet").read_text()
    assert HEADER_RULE in snippet.splitlines(keepends=True)


@pytest.fixture
def setup_host(tmp_path: Path, postfix_factory: PostfixFactory) -> Iterator[Host]:
    """A private Postfix (relaying to the sink) with the admin's own header_checks table,
    and a temp root for setup; purged again afterwards."""
    admin = tmp_path / "admin_header_checks"
    admin.write_text("/^Subject: .*viagra/ REJECT\n")
    postfix = postfix_factory(
        smtpd_milters=OTHER_MILTER, main_cf={"header_checks": f"regexp:{admin}"}
    )
    root = tmp_path / "root"
    root.mkdir()
    h = Host(root, postfix, base_env(root))
    try:
        yield h
    finally:
        h.agent("teardown", "--purge")


def test_mail_the_milter_missed_still_gets_its_event(setup_host: Host) -> None:
    """setup adds the header_checks INFO fallback after the admin's table: mail received
    while the milter is not running (a restart, an upgrade) is logged with its UUID, and
    logwatch's join reports it. teardown gives main.cf back byte for byte."""
    host = setup_host
    admin_table = host.postfix.postconf_get("header_checks")
    original_main_cf = host.main_cf.read_bytes()
    host.setup(env={"SENDPOST_API_KEY": KEY})
    ours = f"regexp:{host.postfix.config_dir}/sendpost_header_checks"
    assert host.postfix.postconf_get("header_checks") == f"{admin_table}, {ours}"

    queue_id = host.postfix.send(
        "s@example.com", ["ok@example.com"], {"X-Sendpost-Message-UUID": UUID}, "body\n"
    )
    host.postfix.wait_for_log(rf"{queue_id}: to=<ok@example.com>, .*status=sent")
    replayed = host.agent(
        "replay", str(host.postfix.maillog), "--log-timezone", "UTC", "--join-wait", "5s"
    )
    assert replayed.returncode == 0, replayed.output  # type: ignore[attr-defined]
    events = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [(e["message_id"], e["event_type"]) for e in events] == [(UUID, "delivered")]

    again = host.setup()
    assert "No changes" in again.output  # type: ignore[attr-defined]
    gone = host.teardown()
    assert "WARNING" not in gone.output  # type: ignore[attr-defined]
    assert host.main_cf.read_bytes() == original_main_cf
    assert not (host.postfix.config_dir / "sendpost_header_checks").exists()


def test_teardown_after_the_admin_edited_main_cf_removes_only_ours(setup_host: Host) -> None:
    host = setup_host
    admin_table = host.postfix.postconf_get("header_checks")
    host.setup(env={"SENDPOST_API_KEY": KEY})
    host.postfix.postconf(myorigin="example.org")  # the admin's edit after setup
    gone = host.teardown()
    assert "restore" not in gone.output  # type: ignore[attr-defined]
    assert host.milters() == OTHER_MILTER
    assert host.postfix.postconf_get("header_checks") == admin_table
    assert host.postfix.postconf_get("myorigin") == "example.org"


@pytest.mark.parametrize(
    ("rule", "verdict"),
    [
        ("/^X-Sendpost-Message-UUID:/ INFO", "ok      header_checks logs X-Sendpost-Message-UUID"),
        ("/^X-/ WARN", "WARNING regexp:"),
    ],
)
def test_no_fallback_behind_a_table_that_decides_for_the_header(
    setup_host: Host, rule: str, verdict: str
) -> None:
    """In a list of header_checks tables the first that matches decides: an INFO appended
    after a table that already matches the header would never run."""
    host = setup_host
    table = host.postfix.postconf_get("header_checks")
    Path(table.partition(":")[2]).write_text(rule + "\n")
    done = host.setup(env={"SENDPOST_API_KEY": KEY})
    assert verdict in done.output  # type: ignore[attr-defined]
    assert host.postfix.postconf_get("header_checks") == table
    assert not (host.postfix.config_dir / "sendpost_header_checks").exists()


def test_drop_ins_carry_this_hosts_directories_and_log_group(setup_host: Host) -> None:
    """The packaged units assume /var/lib/sendpost-agent, Debian's socket directory and
    group adm for the mail log; setup's drop-ins say what differs on this host."""
    host = setup_host
    host.systemd.mkdir(parents=True)
    log = host.root / "mail.log"
    log.write_text("")
    os.chown(log, 0, grp.getgrnam("mail").gr_gid)
    log.chmod(0o640)
    out = host.setup("--log-path", str(log), env={"SENDPOST_API_KEY": KEY}).output  # type: ignore[attr-defined]
    milter, logwatch = (host.systemd / f"{u}.d" / "sendpost-agent-setup.conf" for u in UNITS)
    assert f"ReadWritePaths=\nReadWritePaths={host.state} {host.socket_dir}\n" in milter.read_text()
    assert "SupplementaryGroups" not in milter.read_text()
    text = logwatch.read_text()
    assert f"ReadWritePaths=\nReadWritePaths={host.state}\n" in text
    assert "SupplementaryGroups=\nSupplementaryGroups=mail\n" in text
    assert f"--groups=mail -- {AGENT_BIN} --config {host.config} logwatch" in out

    os.chown(log, 0, grp.getgrnam("adm").gr_gid)  # Debian's own: the unit's group
    host.setup()
    assert "SupplementaryGroups" not in logwatch.read_text()
    host.teardown()
    assert not any(host.systemd.iterdir())


def stand_in_deb(tmp_path: Path, deb: Path) -> Path:
    """An empty package named sendpost-agent, version 9.9.9-1, written to ``deb``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs an apt system")
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: sendpost-agent\nVersion: 9.9.9-1\nArchitecture: all\n"
        "Maintainer: test <t@example.com>\nDescription: stand-in\n"
    )
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", str(package), str(deb)], capture_output=True, check=True)
    return deb


def test_on_apt_systems_the_deb_is_installed_then_setup_runs(tmp_path: Path) -> None:
    """The .deb in dist/ (make deb) or named with --package is what an apt system gets; in
    a dry run install.sh says so and would hand over to setup. (Installing a real package
    needs a host of its own.)"""
    checkout = tmp_path / "checkout"
    deb = stand_in_deb(tmp_path, checkout / "dist" / "sendpost-agent_9.9.9-1_all.deb")
    shutil.copy(SCRIPT, checkout / "install.sh")
    env = base_env(tmp_path)
    for args in ([], ["--package", str(deb)]):
        proc = subprocess.run(
            ["bash", str(checkout / "install.sh"), "--api-key", KEY, "--dry-run", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "would   apt-get install sendpost-agent 9.9.9-1" in proc.stdout
        assert "would   run sendpost-agent setup" in proc.stdout
        assert KEY not in proc.stdout + proc.stderr


def test_the_one_liner_installs_the_package_it_names_and_nothing_else(tmp_path: Path) -> None:
    """`curl -sSL URL | sudo bash -s -- ...`: install.sh read from a pipe has no checkout
    beside it, whatever the working directory holds (here another project's setup.py and
    a .deb of ours): it installs the .deb named with --package, and without one says so."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "dist").mkdir(parents=True)
    (elsewhere / "setup.py").write_text("raise SystemExit('another project')\n")
    stand_in_deb(tmp_path, elsewhere / "dist" / "sendpost-agent_9.9.9-1_all.deb")
    named = stand_in_deb(tmp_path / "named", tmp_path / "sendpost-agent_9.9.9-1_all.deb")

    def one_liner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-s", "--", "--api-key", KEY, "--mta", "postfix", "--dry-run", *args],
            input=SCRIPT.read_text(),
            cwd=elsewhere,
            capture_output=True,
            text=True,
            env=base_env(tmp_path),
            check=False,
            timeout=60,
        )

    unnamed = one_liner()
    assert unnamed.returncode == 2, unnamed.stdout + unnamed.stderr
    assert "name it with --package FILE or URL" in unnamed.stderr
    assert "unbound variable" not in unnamed.stderr
    given = one_liner("--package", str(named))
    assert given.returncode == 0, given.stdout + given.stderr
    assert "would   apt-get install sendpost-agent 9.9.9-1" in given.stdout
    assert "would   run sendpost-agent setup" in given.stdout
    assert given.stderr == ""


def test_the_package_replaces_an_install_from_a_checkout(tmp_path: Path) -> None:
    """An agent installed into the virtualenv before (as install.sh did before the .deb):
    its units in /etc/systemd/system would shadow the package's and keep running the old
    code, so install.sh removes them, the link and the virtualenv once the .deb is in."""
    checkout = tmp_path / "checkout"
    stand_in_deb(tmp_path, checkout / "dist" / "sendpost-agent_9.9.9-1_all.deb")
    shutil.copy(SCRIPT, checkout / "install.sh")
    host = Host(tmp_path / "root", None, base_env(tmp_path / "root"))  # type: ignore[arg-type]
    (host.prefix / "bin").mkdir(parents=True)
    (host.prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    host.systemd.mkdir(parents=True)
    for unit in UNITS:
        (host.systemd / unit).write_text(f"[Service]\nExecStart={host.prefix}/bin/{AGENT} x\n")
    host.bin_dir.mkdir(parents=True)
    (host.bin_dir / AGENT).symlink_to(host.prefix / "bin" / AGENT)
    proc = subprocess.run(
        ["bash", str(checkout / "install.sh"), "--api-key", KEY, "--dry-run"],
        capture_output=True,
        text=True,
        env=host.env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for planned in (
        "would   apt-get install sendpost-agent 9.9.9-1",
        *(f"would   remove {host.systemd / unit}" for unit in UNITS),
        f"would   remove {host.bin_dir / AGENT}",
        f"would   remove the virtualenv {host.prefix}",
        "would   run sendpost-agent setup",
    ):
        assert planned in proc.stdout, f"{planned!r} missing from:\n{proc.stdout}"
