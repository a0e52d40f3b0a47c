"""The .deb and the .rpm, built with `make` as an operator or a release job would.

Each package is built once (`make deb`, `make rpm`: about a minute each; the build
requirements come from PyPI) and then read like an operator's tools would: dpkg-deb and
rpm for what it installs, lintian and rpmlint for the distributions' rules. The .deb's
agent also runs here, on Debian 12's own python3 and libraries, from the extracted
package. What only a booted host shows (maintainer scripts, services under systemd) is
not covered here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support.host import deb_field

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UNITS = ("sendpost-agent-milter.service", "sendpost-agent-logwatch.service")
DEBIAN_PYTHON = "/usr/bin/python3"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found (.ci/run installs it)", pytrace=False)
    return found


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900, **kwargs)


def make(target: str) -> None:
    proc = run([tool("make"), "-C", str(ROOT), target])
    assert proc.returncode == 0, (
        f"make {target} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def deb(built_deb: Path) -> Path:
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert built_deb.name == f"sendpost-agent_{VERSION}_{arch}.deb", built_deb
    return built_deb


@pytest.fixture(scope="module")
def rpm() -> Path:
    path = ROOT / "dist" / f"sendpost-agent-{VERSION}-1.{os.uname().machine}.rpm"
    path.unlink(missing_ok=True)
    make("rpm")
    assert path.is_file(), f"make rpm did not write {path}"
    return path


@pytest.fixture(scope="module")
def deb_root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb-root")
    proc = run(["dpkg-deb", "-x", str(deb), str(root)])
    assert proc.returncode == 0, proc.stderr
    return root


def test_deb_installs_the_agreed_layout(deb: Path, deb_root: Path) -> None:
    """The paths the units, the docs and the `setup` command rely on."""
    assert deb_field(deb, "Version") == VERSION
    agent = deb_root / "usr/bin/sendpost-agent"
    shebang = agent.read_text().splitlines()[0]
    assert shebang.removeprefix("#!").strip() == DEBIAN_PYTHON
    for unit in UNITS:
        # The tree's units, unchanged: ExecStart=/usr/bin/sendpost-agent ...
        assert (deb_root / "lib/systemd/system" / unit).read_text() == (
            ROOT / "systemd" / unit
        ).read_text()
    site = deb_root / "usr/lib/python3/dist-packages"
    for package in ("sendpost_agent", "sendpost_milter", "logwatch"):
        assert (site / package / "__init__.py").is_file()
    # The hot modules are compiled for Debian 12's python3 (3.11), at package build time.
    assert list(site.glob("sendpost_logwatch__mypyc.cpython-311-*.so"))
    assert list(site.glob("logwatch/parse.cpython-311-*.so"))
    assert (deb_root / "usr/lib/sysusers.d/sendpost-agent.conf").is_file()
    tmpfiles = (deb_root / "usr/lib/tmpfiles.d/sendpost-agent.conf").read_text()
    assert "d /var/spool/postfix/sendpost-agent 2750 sendpost-agent postfix -" in tmpfiles
    assert (deb_root / "usr/share/man/man1/sendpost-agent.1.gz").is_file()
    assert (deb_root / "etc/sendpost-agent").is_dir()


def test_deb_depends_on_debians_own_python_packages(deb: Path) -> None:
    depends = {d.strip().split(" ")[0] for d in deb_field(deb, "Depends").split(",")}
    assert {
        "python3-milter",
        "python3-aiohttp",
        "python3-yaml",
        "python3-prometheus-client",
        "python3-systemd",
        "postfix",
    } <= depends
    assert not any(d.startswith(("gcc", "python3-dev", "python3-pip")) for d in depends)


def test_deb_maintainer_scripts_never_edit_main_cf_and_purge_removes_state(
    deb: Path, tmp_path: Path
) -> None:
    proc = run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")])
    assert proc.returncode == 0, proc.stderr
    scripts = {p.name: p.read_text() for p in (tmp_path / "control").iterdir()}
    for name in ("postinst", "prerm", "postrm"):
        assert "postconf" not in scripts[name] and "main.cf -" not in scripts[name], name
        assert "api-key" not in scripts[name], name
    assert "systemd-sysusers" in scripts["postinst"]
    assert "deb-systemd-helper enable 'sendpost-agent-milter.service'" in scripts["postinst"]
    assert "_dh_action=restart" in scripts["postinst"]  # an upgrade restarts the services
    purge = scripts["postrm"].split('if [ "$1" = purge ]; then', 1)[-1]
    for path in ("/var/lib/sendpost-agent", "/etc/sendpost-agent"):
        assert path in purge
    assert "userdel sendpost-agent" in purge


def test_lintian_reports_no_error_and_no_unexplained_warning(deb: Path) -> None:
    proc = run([tool("lintian"), "--fail-on", "error", str(deb)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == [], "\n".join(tags)
    # Each override says why, in a comment on the line before it.
    overrides = (ROOT / "debian/sendpost-agent.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line and not line.startswith("#"):
            assert i > 0 and overrides[i - 1].startswith("#"), f"override without reason: {line}"


def replay(python: str, site: Path | None, tmp_path: Path) -> str:
    """`sendpost-agent replay` of a generated log and map (bench/genlog.py) with `python`:
    from the package's modules in `site`, or from this checkout (None)."""
    log, state = tmp_path / "mail.log", tmp_path / "state"
    if not log.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from genlog import generate  # type: ignore[import-not-found]

        generate(20_000, 3, log, state)
    env = {**os.environ, "SENDPOST_CONFIG": "/dev/null"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    args = ["-m", "sendpost_agent", "replay", str(log), "--state-dir", str(state)]
    args += ["--log-timezone", "UTC", "--postfix-config-dir", str(tmp_path)]
    # A package's agent runs outside the checkout, so that nothing of it is imported.
    proc = run([python, *args], env=env, cwd=ROOT if site is None else tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) > 1000
    return proc.stdout


def modules_loaded(python: str, site: Path, tmp_path: Path) -> tuple[str, str, str]:
    """Where the package's python finds the pipeline, pymilter and aiohttp; and the
    milter's metrics (prometheus-client) start."""
    probe = (
        "import logwatch.parse, sendpost_milter.metrics, milter, aiohttp;"
        "sendpost_milter.metrics.MilterMetrics();"
        "print(logwatch.parse.__file__, milter.__file__, aiohttp.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = run([python, "-c", probe], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    parse, milter, aiohttp = proc.stdout.split()
    return parse, milter, aiohttp


def test_deb_agent_runs_on_debians_python_and_libraries(deb_root: Path, tmp_path: Path) -> None:
    site = deb_root / "usr/lib/python3/dist-packages"
    replay(DEBIAN_PYTHON, site, tmp_path)
    parse, milter, aiohttp = modules_loaded(DEBIAN_PYTHON, site, tmp_path)
    assert parse.startswith(str(site)) and parse.endswith(".so")  # compiled
    assert milter.startswith("/usr/lib/python3/dist-packages/")  # python3-milter
    assert aiohttp.startswith("/usr/lib/python3/dist-packages/")  # python3-aiohttp


def test_deb_milter_serves_on_debians_pymilter_and_prometheus_client(
    deb_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged milter starts, answers Postfix's socket and /metrics, and stops cleanly
    with the libraries Debian 12 ships (prometheus-client 0.16 lacks some later APIs)."""
    from tests.support.milter import MilterProcess

    monkeypatch.setenv("PYTHONPATH", str(deb_root / "usr/lib/python3/dist-packages"))
    monkeypatch.chdir(tmp_path)  # `python -m` imports from the working directory first
    milter = MilterProcess(tmp_path / "state", f"unix:{tmp_path}/milter.sock")
    milter.args[0] = DEBIAN_PYTHON
    milter.start()
    assert "sendpost_milter_messages_total" in milter.metrics()
    # A SIGTERM in the first instants after start may end it by the signal itself
    # (-SIGTERM, seen once in several runs), which systemd counts as a clean stop too.
    assert milter.stop() in (0, -signal.SIGTERM), milter.log()
    assert "milter listening on unix:" in milter.log()


def test_deb_agent_reports_the_same_events_as_the_checkout(deb_root: Path, tmp_path: Path) -> None:
    """Debian 12's python3 is 3.11.2, whose re module differs from later 3.11 releases
    (logwatch/parse.py: atomic groups, not possessive ones)."""
    site = deb_root / "usr/lib/python3/dist-packages"
    assert replay(DEBIAN_PYTHON, site, tmp_path) == replay(sys.executable, None, tmp_path)


@pytest.fixture(scope="module")
def rpm_root(rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rpm-root")
    cpio = subprocess.run(
        f"rpm2cpio {rpm} | cpio -idm --quiet", shell=True, cwd=root, check=False, timeout=120
    )
    assert cpio.returncode == 0
    return root


def test_rpm_has_the_same_layout_and_units(rpm: Path, rpm_root: Path) -> None:
    query = run([tool("rpm"), "-qp", "--queryformat", "%{VERSION}", str(rpm)])
    assert query.stdout == VERSION
    files = run([tool("rpm"), "-qlp", str(rpm)]).stdout.split()
    assert "/usr/bin/sendpost-agent" in files
    assert "/opt/sendpost-agent/bin/sendpost-agent" in files
    assert "/usr/lib/sysusers.d/sendpost-agent.conf" in files
    assert "/usr/lib/tmpfiles.d/sendpost-agent.conf" in files
    root = rpm_root
    for unit in UNITS:
        assert (root / "usr/lib/systemd/system" / unit).read_text() == (
            ROOT / "systemd" / unit
        ).read_text()
    assert os.readlink(root / "usr/bin/sendpost-agent") == "/opt/sendpost-agent/bin/sendpost-agent"
    venv = root / "opt/sendpost-agent"
    assert (venv / "bin/sendpost-agent").read_text().startswith("#!/opt/sendpost-agent/bin/")
    assert os.readlink(venv / "bin/python3.11") == "/usr/bin/python3.11"  # AppStream's
    site = venv / "lib/python3.11/site-packages"
    assert list(site.glob("sendpost_logwatch__mypyc.cpython-311-*.so"))
    # pymilter carries libmilter (RHEL's sendmail-milter names its library differently).
    (module,) = site.glob("milter.cpython-311-*.so")
    needed = run(["readelf", "-d", str(module)]).stdout
    assert "libmilter" not in needed
    requires = run([tool("rpm"), "-qp", "--requires", str(rpm)]).stdout.split("\n")
    assert "python3.11" in requires and "postfix" in requires
    assert not any("libmilter" in r for r in requires)


def test_rpm_agent_runs_from_its_virtualenv_like_the_checkout(
    rpm_root: Path, tmp_path: Path
) -> None:
    """Here on Debian's python3.11 (RHEL 9's AppStream python3.11 is not available here)."""
    site = rpm_root / "opt/sendpost-agent/lib/python3.11/site-packages"
    python = "/usr/bin/python3.11"
    assert replay(python, site, tmp_path) == replay(sys.executable, None, tmp_path)
    for module in modules_loaded(python, site, tmp_path):
        assert module.startswith(str(site)), module  # all from the virtualenv


def test_rpmlint_reports_no_error(rpm: Path) -> None:
    proc = run([tool("rpmlint"), "--rpmlintrc", str(ROOT / "packaging/rpm/rpmlintrc"), str(rpm)])
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    match = re.search(r"(\d+) errors?, (\d+) warnings?", summary)
    assert match, proc.stdout + proc.stderr
    assert match.group(1) == "0", proc.stdout
