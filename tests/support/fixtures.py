"""pytest fixtures for Postfix integration tests.

Use them from a conftest with ``pytest_plugins = ["tests.support.fixtures"]`` or by
importing ``sink`` and ``postfix_factory`` into a test module.

Missing tools FAIL the test instead of skipping it: a machine that silently skips the
Postfix tests would report green without testing the product against Postfix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.host import RootfsBuild, missing_tools, package_rootfs, remove_rootfs
from tests.support.postfix import PostfixInstance, find_binary
from tests.support.sink import Sink

REQUIRED_BINARIES = ("postfix", "postconf", "postqueue", "swaks")
ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CONTROL = ROOT / "debian" / "control"  # the package's Depends: the host's root filesystem


def require_postfix_tools() -> None:
    """pytest.fail (never skip) unless Postfix can be run here."""
    missing = [name for name in REQUIRED_BINARIES if find_binary(name) is None]
    if missing:
        pytest.fail(
            f"required binaries not found: {', '.join(missing)} "
            "(apt-get install postfix swaks; preseed postfix/main_mailer_type "
            "'No configuration')",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("Postfix integration tests must run as root (postfix start)", pytrace=False)


class PostfixFactory(Protocol):
    """Signature of the callable returned by the ``postfix_factory`` fixture."""

    def __call__(
        self,
        relay_port: int | None = None,
        *,
        smtpd_milters: str = "",
        main_cf: Mapping[str, str] | None = None,
        master_cf_extra: str = "",
        service_settings: Mapping[str, str] | None = None,
        local_submission: bool = False,
        name: str | None = None,
        start: bool = True,
        smtp_probe: bool = True,
    ) -> PostfixInstance: ...


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A running SMTP sink (see tests.support.sink) for one test."""
    with Sink() as s:
        yield s


@pytest.fixture
def postfix_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PostfixFactory]:
    """Callable creating (and by default starting) PostfixInstances under tmp_path.

    ``relay_port=None`` relays to this test's ``sink`` fixture. Every instance is
    stopped at teardown, so the next test can start its own.
    """
    require_postfix_tools()
    instances: list[PostfixInstance] = []

    def make(
        relay_port: int | None = None,
        *,
        smtpd_milters: str = "",
        main_cf: Mapping[str, str] | None = None,
        master_cf_extra: str = "",
        service_settings: Mapping[str, str] | None = None,
        local_submission: bool = False,
        name: str | None = None,
        start: bool = True,
        smtp_probe: bool = True,
    ) -> PostfixInstance:
        if relay_port is None:
            relay_port = request.getfixturevalue("sink").port
        root = tmp_path / (name or f"postfix{len(instances) + 1}")
        instance = PostfixInstance(
            root,
            relay_port,
            smtpd_milters=smtpd_milters,
            main_cf=main_cf,
            master_cf_extra=master_cf_extra,
            service_settings=service_settings,
            local_submission=local_submission,
            smtp_probe=smtp_probe,
        )
        instances.append(instance)
        if start:
            instance.start()
        return instance

    yield make

    errors: list[BaseException] = []
    for instance in reversed(instances):
        try:
            instance.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


class DebBuild:
    """`make deb` of this checkout in the background (about 40 s): it builds in a staged
    copy (Makefile), so the tests running meanwhile see no file change but dist/."""

    def __init__(self) -> None:
        self.missing = [tool for tool in ("make", "dpkg-buildpackage") if not shutil.which(tool)]
        self._proc: subprocess.Popen[bytes] | None = None
        if self.missing:
            return
        for old in (ROOT / "dist").glob(f"sendpost-agent_{VERSION}_*.deb"):
            old.unlink()
        fd, log = tempfile.mkstemp(prefix="sendpost-make-deb-", suffix=".log")
        self._log = Path(log)
        with os.fdopen(fd, "wb") as out:  # make keeps its own copy
            self._proc = subprocess.Popen(
                ["setpriv", "--pdeathsig=TERM", "make", "-C", str(ROOT), "deb"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self) -> Path:
        """dist/sendpost-agent_VERSION_ARCH.deb, or the test fails with make's output."""
        if self._proc is None:
            pytest.fail(f"{', '.join(self.missing)} not found (.ci/run installs it)", pytrace=False)
        code = self._proc.wait(900)
        output = self._log.read_text(errors="replace")
        self._log.unlink()
        assert code == 0, f"make deb failed:\n{output[-6000:]}"
        built = sorted((ROOT / "dist").glob(f"sendpost-agent_{VERSION}_*.deb"))
        assert len(built) == 1, f"make deb made {built}, want one sendpost-agent_VERSION_ARCH.deb"
        return built[0]

    def cancel(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._log.unlink(missing_ok=True)


class _Early:
    """The slow builds, started as soon as the tests are known (pytest_collection_finish)
    and taken by the fixtures of the first test that needs them."""

    deb: DebBuild | None = None
    rootfs: RootfsBuild | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """The .deb (about 40 s) and the booted host's root filesystem (a minute or two of
    downloads and dpkg) build in the background while the tests before theirs run,
    instead of adding their time to the run."""
    if session.config.option.collectonly:
        return
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "built_deb" in needed:
        _Early.deb = DebBuild()
    if "rootfs_build" in needed and not missing_tools():
        _Early.rootfs = package_rootfs(CONTROL)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A build no test took (deselected, or the run stopped early) is stopped and removed."""
    if _Early.deb is not None:
        _Early.deb.cancel()
    if _Early.rootfs is not None:
        remove_rootfs(_Early.rootfs)
    _Early.deb = _Early.rootfs = None


def take_early_rootfs() -> RootfsBuild:
    """The root filesystem build started at collection, or one started now."""
    build, _Early.rootfs = _Early.rootfs, None
    return build or package_rootfs(CONTROL)


@pytest.fixture(scope="session")
def built_deb() -> Path:
    """`make deb` of this checkout, once per test session, made afresh:
    dist/sendpost-agent_VERSION_ARCH.deb (started at collection, see above)."""
    build, _Early.deb = _Early.deb, None
    return (build or DebBuild()).wait()
