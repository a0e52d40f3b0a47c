from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test stale compiled modules: Python imports a module's .so before its .py,
    so an edit not yet compiled (setup.py) would silently go untested. The code of all of
    them is in one library, sendpost_logwatch__mypyc*.so; each module's .so only loads it."""
    sources = [so.with_name(so.name.split(".")[0] + ".py") for so in ROOT.glob("logwatch/*.so")]
    if not sources:
        return
    # mypyc also compiles in what it knows of the modules they import (a named tuple's
    # field positions, say): an edit there makes the library stale too.
    sources += ROOT.glob("sendpost_agent/*.py")
    library = max(
        (so.stat().st_mtime for so in ROOT.glob("sendpost_logwatch__mypyc*.so")), default=0.0
    )
    stale = [
        str(p.relative_to(ROOT)) for p in sources if not p.exists() or p.stat().st_mtime > library
    ]
    if stale:
        pytest.exit(
            f"{', '.join(stale)} changed after it was compiled: recompile with"
            " `.venv/bin/pip install -e .` (or delete the .so files to test the"
            " plain Python)",
            returncode=4,
        )


KINDS = ("unit", "integration")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an unmarked test is refused either way
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test says whether it is a unit or an integration test (pyproject.toml's
    markers), so that `pytest -m unit` runs in seconds without root or Postfix and
    does not silently drop a test nobody classified."""
    wrong = [
        item.nodeid
        for item in items
        if sum(item.get_closest_marker(kind) is not None for kind in KINDS) != 1
    ]
    if wrong:
        raise pytest.UsageError(
            "each test needs exactly one of the markers @pytest.mark.unit or"
            " @pytest.mark.integration (a module's pytestmark counts; see pyproject.toml):\n  "
            + "\n  ".join(wrong)
        )
