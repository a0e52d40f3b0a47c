"""Smoke run of bench/peers.py: a tiny log through ours and each peer; no timing asserted.

Needs the Debian packages prometheus-postfix-exporter, mtail and pflogsumm (.ci/run
installs them); a missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_every_tool_reaches_the_totals_counted_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # peers imports genlog
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH / "peers.py")
    assert spec is not None and spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_peers", peers)  # dataclasses look it up
    spec.loader.exec_module(peers)

    tools = peers.main(
        ["--lines", "2000", "--rounds", "1", "--dir", str(tmp_path), "--timeout", "60"]
    )

    totals = peers.count(tmp_path / "mail-2000-1.log")
    assert totals.lines == 2000
    assert totals.by_status("sent") and totals.by_status("deferred")
    assert totals.by_status("bounced") and totals.by_status("expired")
    assert [t.name for t in tools] == [
        "sendpost-agent replay",
        "prometheus-postfix-exporter",
        "mtail (postfix.mtail)",
        "pflogsumm",
    ]
    for tool in tools:
        assert len(tool.runs) == 1
        assert tool.runs[0].counters == tool.want, tool.name
        assert all(v > 0 for v in tool.want.values()), tool.name
    out = capsys.readouterr().out
    assert all(t.name in out for t in tools)
