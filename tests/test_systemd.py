"""The systemd units: valid for systemd itself, and hardened the way an operator expects.

`systemd-analyze verify` loads a unit as systemd would (unknown keys, bad values, an
ExecStart that is not executable), without a running systemd. It needs ExecStart's binary
to exist, so it runs on copies whose ExecStart names this checkout's sendpost-agent.
What only a booted systemd shows (the sandbox applied to the running processes) is not
covered here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT_DIR = ROOT / "systemd"
MILTER = "sendpost-agent-milter.service"
LOGWATCH = "sendpost-agent-logwatch.service"
INSTALLED_AGENT = "/usr/bin/sendpost-agent"
CONFIG = "/etc/sendpost-agent/config.yaml"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze not found (apt-get install systemd; .ci/run installs it)",
            pytrace=False,
        )
    return found


def settings(unit: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given in the unit (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in (UNIT_DIR / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def one(unit: str, key: str) -> str:
    values = settings(unit)[key]
    assert len(values) == 1, f"{unit}: {key} given {len(values)} times"
    return values[0]


def copies_pointing_at_this_checkout(tmp_path: Path, text_fix: str = "") -> list[Path]:
    agent = Path(sys.executable).parent / "sendpost-agent"
    assert agent.exists(), f"{agent} missing: pip install -e . into the test venv"
    out = []
    for unit in (MILTER, LOGWATCH):
        text = (UNIT_DIR / unit).read_text().replace(INSTALLED_AGENT, str(agent))
        path = tmp_path / unit
        path.write_text(text + text_fix)
        out.append(path)
    return out


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_systemd_analyze_verify_passes_without_a_single_warning(tmp_path: Path) -> None:
    proc = verify(copies_pointing_at_this_checkout(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # verify exits 0 on unknown keys and bad values; it only warns, so no output is allowed.
    assert proc.stdout + proc.stderr == ""


def test_verify_does_catch_mistakes(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo'd key and a missing binary are reported."""
    typo = verify(copies_pointing_at_this_checkout(tmp_path, "ProtectSystm=strict\n"))
    assert "Unknown key" in typo.stderr and "ProtectSystm" in typo.stderr
    missing = tmp_path / "missing"
    missing.mkdir()
    unit = missing / MILTER
    unit.write_text((UNIT_DIR / MILTER).read_text().replace(INSTALLED_AGENT, "/nonexistent/agent"))
    proc = verify([unit])
    assert proc.returncode != 0 and "is not executable" in proc.stderr


@pytest.mark.parametrize("unit", [MILTER, LOGWATCH])
def test_runs_the_installed_agent_unprivileged_and_restarts_on_failure(unit: str) -> None:
    command = "milter" if unit == MILTER else "logwatch"
    assert one(unit, "ExecStart") == f"{INSTALLED_AGENT} --config {CONFIG} {command}"
    assert one(unit, "User") == "sendpost-agent"
    assert one(unit, "Group") == "sendpost-agent"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "KillSignal") == "SIGTERM"
    # Both stop within seconds on SIGTERM (logwatch flushes for up to 5 s).
    timeout = one(unit, "TimeoutStopSec")
    assert re.fullmatch(r"\d+s", timeout) and 5 < int(timeout[:-1]) <= 30
    assert one(unit, "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("unit", [MILTER, LOGWATCH])
def test_hardening_an_operator_expects(unit: str) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        # Safe: the agent's only ctypes use calls into libc (inotify), no callbacks.
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "UMask": "0007",
    }
    for key, value in expected.items():
        assert one(unit, key) == value, f"{unit}: {key}"
    assert settings(unit)["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert one(unit, "SystemCallErrorNumber") == "EPERM"


def test_milter_counts_as_started_once_its_socket_listens() -> None:
    """Postfix, ordered after the milter, then finds it from its first mail on: the milter
    says READY=1 (tests/test_milter_miltertest.py checks when)."""
    assert one(MILTER, "Type") == "notify"
    assert "ExecStartPost" not in settings(MILTER)


def test_only_the_state_dir_and_the_socket_dir_are_writable() -> None:
    assert one(MILTER, "ReadWritePaths") == (
        "/var/lib/sendpost-agent /var/spool/postfix/sendpost-agent"
    )
    assert one(LOGWATCH, "ReadWritePaths") == "/var/lib/sendpost-agent"


def test_ordering_with_postfix_and_log_access_through_a_group() -> None:
    # The milter is up before Postfix takes mail (Debian runs postfix@-.service).
    assert set(one(MILTER, "Before").split()) >= {"postfix.service", "postfix@-.service"}
    assert "After" not in settings(MILTER) or "postfix" not in one(MILTER, "After")
    assert set(one(LOGWATCH, "After").split()) >= {
        "postfix.service",
        "postfix@-.service",
        "network-online.target",
    }
    assert one(LOGWATCH, "Wants") == "network-online.target"
    # The mail log is read through its group (Debian: root:adm 0640), never as root.
    assert one(LOGWATCH, "SupplementaryGroups") == "adm"
    assert "SupplementaryGroups" not in settings(MILTER)


@pytest.mark.parametrize("unit", [MILTER, LOGWATCH])
def test_systemd_analyze_security_rates_the_units_ok(unit: str, tmp_path: Path) -> None:
    paths = copies_pointing_at_this_checkout(tmp_path)
    path = next(p for p in paths if p.name == unit)
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    # 0 is a fully locked-down service, 10 an unprotected one; "OK" is below 4.5.
    assert float(match.group(1)) <= 2.0, proc.stdout


@pytest.mark.parametrize("unit", [MILTER, LOGWATCH])
def test_an_installed_package_waits_for_its_configuration(unit: str) -> None:
    """The package enables both units on install; until `sendpost-agent setup` wrote the
    config (API key included) systemd skips them instead of failing and restarting."""
    assert one(unit, "ConditionPathExists") == CONFIG
    # systemd makes the state dir (agent user, 0750) if missing, and gives it back to
    # the agent user if root made it first.
    assert one(unit, "StateDirectory") == "sendpost-agent"
    assert one(unit, "StateDirectoryMode") == "0750"
