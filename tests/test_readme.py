"""README keeps telling the truth about the configuration and the test command."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendpost_agent.config import reference_table

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_table_is_generated_from_the_config_object() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-table")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end config-table -->")
    assert readme[start:end] == reference_table(), (
        "README's configuration table is stale: regenerate it with"
        " `python -m sendpost_agent.config`"
    )


def test_ci_runs_the_test_command_that_readme_gives() -> None:
    readme = (ROOT / "README.md").read_text()
    command = ".venv/bin/python -m pytest -q"
    assert f"`{command}`" in readme
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(command)
