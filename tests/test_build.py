"""The install compiles the log pipeline's hot modules (setup.py): catch-up speed depends on it."""

import ast
import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def compiled_sources() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED list")


def test_the_hot_modules_are_installed_compiled() -> None:
    sources = compiled_sources()
    assert "logwatch/parse.py" in sources and "logwatch/tracker.py" in sources
    for source in sources:
        module = importlib.import_module(source.removesuffix(".py").replace("/", "."))
        assert module.__file__ is not None and module.__file__.endswith(".so"), (
            f"{source} runs uncompiled: run `pip install -e .` with a C compiler"
        )
