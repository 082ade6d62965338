"""The benchmark itself, at N = 10, so its code cannot rot. It measures; it asserts no timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Kube

pytestmark = pytest.mark.integration


def test_a_tiny_benchmark_run_produces_every_figure(kube: Kube, tmp_path: Path) -> None:
    if not kube.local:
        pytest.skip("starts its own local control planes; pointless beside an existing cluster")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"), str(ROOT)])}
    args = ["--sizes", "10", "--idle-seconds", "5", "--single-pauses", "2", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]

    [report] = tmp_path.glob("bench-*.json")
    data = json.loads(report.read_text())
    assert data["machine"]["cpus"] and data["versions"]["kopf"]
    [run] = data["runs"]
    assert run["n"] == 10
    for phase in ("apply", "pause", "resume"):
        op = run["operator"]["phases"][phase]
        assert op["all_seconds"] > 0 and op["latency"]["p50"] is not None, phase
        assert op["api_writes"] > 0 and op["operator_peak_rss_mib"] > 0, phase
        assert op["reconciles"]["run"] >= 10, phase  # each task is reconciled at least once per phase
        assert run["floor"][phase]["all_seconds"] > 0 and phase in run["ratio"]
        # The task floor: the user's writes, the workspace's, and one status write per task and phase.
        assert run["task_floor"][phase]["all_seconds"] > 0 and phase in run["task_ratio"]
        assert run["task_floor"][phase]["api_writes"] == {"apply": 40, "pause": 30, "resume": 30}[phase]
        assert run["task_floor"][phase]["api_requests"]["patch tasks/status"] == 10, phase
        # Where the time went: the operator and the API server worked; the floor has no operator.
        used = op["cpu_seconds_by_process"]
        assert {"taskpod", "kube-apiserver"} <= set(used), used
        assert "taskpod" not in run["floor"][phase]["cpu_seconds_by_process"]
    assert run["operator"]["single_pause"]["count"] == 2
    # Every idle task paused itself once the template got an idlePause: the pods gone, snapshots kept.
    automatic = run["operator"]["phases"]["idle_pause"]
    assert automatic["all_seconds"] > 0 and automatic["latency"]["p50"] is not None
    assert automatic["api_writes"] >= 20 and "idle_pause" in run["ratio"]  # a pod delete and status, each
    idle = run["operator"]["idle"]
    assert idle["seconds"] == 5 and 0 < idle["settled_after_seconds"] < 300  # ten tasks settle at once
    assert any(counts.get("Paused") == 10 for _, counts in run["operator"]["timeline"])

    markdown = report.with_suffix(".md").read_text()
    assert (
        "| 10 | apply |" in markdown and "| 10 | resume |" in markdown and "| 10 | idle_pause |" in markdown
    )
    assert "| 10 | resume | floor |" in markdown
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_run_of_the_write_cost_benchmark_shows_the_status_as_one_field(kube: Kube) -> None:
    """python -m bench.writes at N = 20: a figure per round for both CRD copies, and the shipped copy's
    Tasks carry the smaller managedFields (the status one field, not its leaves)."""
    if not kube.local:
        pytest.skip("starts its own local control plane; pointless beside an existing cluster")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "bench.writes", "--n", "20", "--rounds", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    for copy in ("shipped", "leafy"):
        assert len(data[copy]["status_ms"]) == len(data[copy]["spec_ms"]) == 2, copy
        assert all(ms >= 0 for ms in data[copy]["status_ms"] + data[copy]["spec_ms"]), copy
    assert data["shipped"]["managed_fields_bytes"] < data["leafy"]["managed_fields_bytes"] / 2
    assert data["shipped"]["object_bytes"] < data["leafy"]["object_bytes"]
