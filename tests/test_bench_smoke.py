"""Tiny runs of bench/latency.py, shipping.py, memory.py, idle.py, milter_cost.py and
milter_callbacks.py, to keep them working.

Each runs as its documented command with small inputs and must exit 0 and report its
figures. No figure is compared with a target here: timing belongs to the benchmarks
(docs/PERFORMANCE.md), not to the test suite.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, tmp_path: Path, *args: str, timeout: float = 120) -> dict:
    out = tmp_path / f"{script}.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


def finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_latency_bench_reports_p50_and_p99_per_rate(tmp_path: Path) -> None:
    report = run_bench(
        "latency",
        tmp_path,
        "--rates",
        "20,400",
        "--seconds",
        "1,1",
        "--rounds",
        "1",
        "--dir",
        str(tmp_path),
    )
    rows = report["summary"]
    assert [row["rate"] for row in rows] == [20, 400]
    for row in rows:
        assert row["events"] == row["rate"]  # 1 s of each rate, every event timed
        assert finite(row["p50_s"], row["p99_s"]) and 0 < row["p50_s"] <= row["p99_s"]


def test_shipping_bench_reports_events_per_second(tmp_path: Path) -> None:
    report = run_bench(
        "shipping", tmp_path, "--events", "3000", "--rounds", "1", "--dir", str(tmp_path)
    )
    summary = report["summary"]
    assert summary["events"] == 3000 and summary["requests"] == 30
    assert finite(summary["rate"]) and summary["rate"] > 0


def test_memory_bench_reports_rss_of_both_processes(tmp_path: Path) -> None:
    report = run_bench(
        "memory",
        tmp_path,
        "--map-rows",
        "2000",
        "--wal-mb",
        "0.5",
        "--messages",
        "20",
        "--rounds",
        "1",
        "--settle",
        "0.5",
        "--dir",
        str(tmp_path),
    )
    assert report["map_rows"] == 2000
    summary = report["summary"]
    assert summary["wal_events"] > 1000
    for name in ("milter", "logwatch"):
        loaded, peak = summary[f"{name}_loaded_mib"], summary[f"{name}_peak_mib"]
        assert finite(loaded, peak) and 0 < loaded <= peak


def test_idle_bench_reports_cpu_of_both_processes(tmp_path: Path) -> None:
    report = run_bench(
        "idle",
        tmp_path,
        "--seconds",
        "1",
        "--rounds",
        "1",
        "--settle",
        "0.5",
        "--map-rows",
        "1000",
        "--dir",
        str(tmp_path),
    )
    summary = report["summary"]
    for key in ("milter_pct", "logwatch_pct", "both_pct", "milter_wakeups_per_s"):
        assert finite(summary[key]) and summary[key] >= 0


def test_milter_cost_bench_runs_every_milter_through_postfix(tmp_path: Path) -> None:
    """Ours (unix and inet) and the three reference milters, each through a real Postfix;
    a round in which Postfix could not use the milter would fail the run."""
    report = run_bench(
        "milter_cost", tmp_path, "--messages", "40", "--rounds", "1", "--reference", timeout=300
    )
    summary = report["summary"]
    assert set(summary) == {"none", "unix", "inet", "ref-pymilter", "ref-libmilter", "ref-single"}
    for row in summary.values():
        assert finite(row["rate"], row["p50_ms"], row["ratio"]) and row["rate"] > 0
    for ours in ("unix", "inet"):  # the target's figure: ours / the minimal pymilter milter
        assert finite(summary[ours]["ratio_to_ref-pymilter"])
    assert summary["unix"]["map_write_mean_ms"] > 0  # our milter wrote the map


def test_milter_callbacks_bench_reports_python_per_message(tmp_path: Path) -> None:
    report = run_bench("milter_callbacks", tmp_path, "--messages", "200", "--rounds", "1")
    summary = report["summary"]
    assert finite(summary["with_commit"], summary["without_commit"])
    assert report["map_rows"] == [200]  # the callbacks recorded every message
