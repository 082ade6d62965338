"""What a run found, three ways: JSON with every figure, a Markdown table, a PNG of tasks by phase."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from localkube import binaries

PHASES = ("apply", "pause", "resume", "idle_pause")
# The floor's phase each of ours is measured against: an automatic pause deletes the same pods as a pause.
FLOOR_PHASE = {"idle_pause": "pause"}


def machine() -> dict[str, Any]:
    mem = next(
        (
            int(line.split()[1]) // 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        None,
    )
    return {
        "cpus": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    found = {name: version(name) for name in ("taskpod", "kopf", "kubernetes", "httpx")}
    found["kube-apiserver"] = binaries.COMPONENTS["kube-apiserver"].version
    found["kwok"] = binaries.COMPONENTS["kwok"].version
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return found


def with_ratios(run: dict[str, Any]) -> dict[str, Any]:
    """operator / floor for each phase: the headline numbers, against the pod floor (`ratio`) and the
    task floor (`task_ratio`)."""
    for floor, ratio in (("floor", "ratio"), ("task_floor", "task_ratio")):
        if run.get(floor):
            run[ratio] = {
                phase: round(run["operator"]["phases"][phase]["all_seconds"] / seconds, 2)
                for phase in PHASES
                if phase in run["operator"]["phases"] and (seconds := _floor_seconds(run, floor, phase))
            }
    return run


def _floor_seconds(run: dict[str, Any], floor: str, phase: str) -> float | str:
    """The floor's seconds for the operator's `phase`, or "" when that floor did not run."""
    seconds: float | str = (
        (run.get(floor) or {}).get(FLOOR_PHASE.get(phase, phase), {}).get("all_seconds", "")
    )
    return seconds


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| N | phase | all done (s) | pod floor (s) | ratio | task floor (s) | task ratio "
        "| per-task p50 / p95 / max (s) | operator CPU (s) | peak RSS (MiB) | API writes "
        "| reconciles run / skipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for phase in PHASES:
            op = run["operator"]["phases"].get(phase)
            if op is None:  # a run from before this phase existed
                continue
            floor, task_floor = _floor_seconds(run, "floor", phase), _floor_seconds(run, "task_floor", phase)
            lat = op["latency"]
            ratio, task_ratio = run.get("ratio", {}).get(phase, ""), run.get("task_ratio", {}).get(phase, "")
            reconciles = op.get("reconciles") or {}
            rows.append(
                f"| {run['n']} | {phase} | {op['all_seconds']} | {floor} | {ratio} "
                f"| {task_floor} | {task_ratio} "
                f"| {lat['p50']} / {lat['p95']} / {lat['max']} | {op['operator_cpu_seconds']} "
                f"| {op['operator_peak_rss_mib']} | {op['api_writes']} "
                f"| {reconciles.get('run', '?')} / {reconciles.get('skipped', '?')} |"
            )
    idle = [
        "",
        "| N | settled after (s) | idle CPU (% of a core) | API requests / min | API writes / min "
        "| RSS (MiB) | single-task pause p50 / p95 (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        i, s = run["operator"]["idle"], run["operator"]["single_pause"]
        idle.append(
            f"| {run['n']} | {i['settled_after_seconds']} | {i['cpu_percent_of_one_core']} "
            f"| {i['api_requests_per_minute']} "
            f"| {i['api_writes_per_minute']} | {i['operator_rss_mib']} | {s['p50']} / {s['p95']} |"
        )
    cpu = [
        "",
        "CPU seconds by process in each phase (the operator's run, then the floors'): where the time went.",
        "",
        "| N | phase | run | CPU seconds by process |",
        "|---|---|---|---|",
    ]
    for run in result["runs"]:
        for phase in PHASES:
            sides = [
                ("operator", run["operator"]["phases"].get(phase)),
                ("floor", (run.get("floor") or {}).get(phase)),  # none with --no-floor, nor of idle_pause
                ("task floor", (run.get("task_floor") or {}).get(phase)),
            ]
            for which, figures in sides:
                if figures:
                    used = figures["cpu_seconds_by_process"]
                    listed = ", ".join(f"{name} {seconds}" for name, seconds in used.items())
                    cpu.append(f"| {run['n']} | {phase} | {which} | {sum(used.values()):.1f}: {listed} |")
    m, v = result["machine"], result["versions"]
    head = (
        f"Machine: {m['cpus']} CPUs, {m['memory_mib']} MiB, Linux {m['kernel']}, Python {m['python']}. "
        f"taskpod {v['taskpod']} ({v.get('git', '?')}), kopf {v['kopf']}, "
        f"kube-apiserver {v['kube-apiserver']}, kwok {v['kwok']}. "
        "API requests are counted from the API server's audit log."
    )
    return "\n".join([head, "", *rows, *idle, *cpu]) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        timeline = run["operator"]["timeline"]
        times = [t for t, _ in timeline]
        for phase in ("Pending", "Initializing", "Active", "Paused", "Error", "Unknown"):
            counts = [c.get(phase, 0) for _, c in timeline]
            if any(counts):
                ax.plot(times, counts, label=phase)
        ax.set_title(f"N = {run['n']}: tasks by phase")
        ax.set_xlabel("seconds since the operator started")
        ax.set_ylabel("tasks")
        ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
