"""Compiles the log pipeline's hot modules with mypyc (metadata: pyproject.toml).

The same typed Python source runs either way; compiled, a catch-up replay is about a
fifth faster (docs/PERFORMANCE.md). These modules are pure: no module-level I/O and no
monkey-patching of their functions, which compiled code would not see.
"""

from mypyc.build import mypycify
from setuptools import setup

COMPILED = [
    "logwatch/parse.py",
    "logwatch/classify.py",
    "logwatch/events.py",
    "logwatch/tracker.py",
    "logwatch/relays.py",
    "logwatch/mapwindow.py",
    "logwatch/pipeline.py",
    "logwatch/journalentries.py",
]

setup(
    ext_modules=mypycify(
        ["--ignore-missing-imports", *COMPILED], opt_level="3", group_name="sendpost_logwatch"
    )
)
