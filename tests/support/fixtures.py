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
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.postfix import PostfixInstance, find_binary
from tests.support.sink import Sink

REQUIRED_BINARIES = ("postfix", "postconf", "postqueue", "swaks")


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


@pytest.fixture(scope="session")
def built_deb() -> Path:
    """`make deb` of this checkout, once per test session (it takes about a minute):
    dist/sendpost-agent_VERSION_ARCH.deb, made afresh."""
    root = Path(__file__).resolve().parents[2]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    for tool in ("make", "dpkg-buildpackage"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found (.ci/run installs it)", pytrace=False)
    for old in (root / "dist").glob(f"sendpost-agent_{version}_*.deb"):
        old.unlink()
    proc = subprocess.run(
        ["make", "-C", str(root), "deb"], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"make deb failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    built = sorted((root / "dist").glob(f"sendpost-agent_{version}_*.deb"))
    assert len(built) == 1, f"make deb made {built}, want one sendpost-agent_VERSION_ARCH.deb"
    return built[0]
