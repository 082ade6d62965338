"""python -m bench.writes [--n 1000] [--rounds 3]: what one Task write costs the API server.

One fresh control plane serves two copies of the Task CRD: `shipped` (crds/ as it is) and `leafy` (the
same, but the status tracked leaf by leaf in managedFields, as before the CRD marked it atomic). Each
gets N Tasks; then, round after round and one copy after the other (so that the VM's drift falls on
both alike), every Task gets a status patch as the operator writes it, then a spec patch as a user's
pause. The figure is kube-apiserver CPU per write; the objects' sizes come last."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench import procstat
from bench.rest import Rest
from bench.run import ROOT, _all, say
from localkube import binaries
from localkube.cluster import LocalCluster

NS = "writes"
Write = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # Rest.create or Rest.merge
PROMPT = "Fix the flaky login test in the auth service: the mock must wait for the session. " * 3


def task_crd(group: str, *, atomic_status: bool = True) -> dict[str, Any]:
    """This release's Task CRD (crds/) under `group`, without the short names and categories that would
    clash with the real one's. With `atomic_status` false, its status is tracked leaf by leaf in
    managedFields, as before the CRD marked it atomic."""
    crd = yaml.safe_load((ROOT / "crds" / "taskpod.dev_tasks.yaml").read_text())
    crd["metadata"]["name"] = f"tasks.{group}"
    crd["spec"]["group"] = group
    for key in ("shortNames", "categories"):
        crd["spec"]["names"].pop(key, None)
    if not atomic_status:
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"].pop(
            "x-kubernetes-map-type", None
        )
    return dict(crd)


def variants() -> dict[str, dict[str, Any]]:
    """The two CRD copies by name (shipped, leafy), each under a group of its own."""
    return {
        name: task_crd(f"{name}.bench.taskpod.dev", atomic_status=name == "shipped")
        for name in ("shipped", "leafy")
    }


def status(i: int, round_: int) -> dict[str, Any]:
    """A status as the operator writes it for a running or paused task (about 1.6 KB)."""
    now = f"2026-12-02T08:{round_ % 60:02d}:00Z"
    active = round_ % 2 == 0

    def condition(kind: str, true: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": str(true),
            "reason": reason,
            "message": message,
            "observedGeneration": 1,
            "lastTransitionTime": now,
        }

    return {
        "phase": "Active" if active else "Paused",
        "message": "The agent is up." if active else "The workspace pod is stopped.",
        "displayName": "Fix the flaky login test",
        "conditions": [
            condition("Ready", active, "AgentReady" if active else "Paused", "The agent is up."),
            condition("Paused", not active, "Running" if active else "UserPaused", ""),
            condition("PromptDelivered", True, "Delivered", "The prompt was delivered to the agent."),
        ],
        "workspace": {"claim": f"workspace-t{i}-0", "pod": f"t{i}-0" if active else None, "lifetime": round_},
        "template": {"name": "default", "displayName": "Claude Code"},
        "observedGeneration": 1,
        "state": {
            "state": "idle" if active else "working",
            "message": "The mock now waits.",
            "timestamp": now,
        },
        "agent": {"status": "stable", "type": "claude", "healthy": active},
        "prompt": {"sha256": "0" * 64, "deliveredAt": now, "lifetime": 1},
        "logSnapshot": {"configMap": f"t{i}-log", "takenAt": now, "messages": round_, "bytes": 1000 + round_},
    }


async def measure(kubeconfig: Path, n: int, rounds: int) -> dict[str, Any]:
    rest = Rest(kubeconfig)
    crds = variants()
    result: dict[str, Any] = {name: {"status_ms": [], "spec_ms": []} for name in crds}

    def base(name: str) -> str:
        return f"/apis/{crds[name]['spec']['group']}/v1alpha1/namespaces/{NS}/tasks"

    async def each(write: Write, url: str, bodies: list[dict[str, Any]]) -> float:
        """`write` to url.format(i) with bodies[i], for every Task: kube-apiserver CPU-ms a write."""
        before = procstat.cpu_by_process()
        await _all([partial(write, url.format(i), body) for i, body in enumerate(bodies)])
        return 1000 * procstat.since(before, procstat.cpu_by_process()).get("kube-apiserver", 0.0) / n

    try:
        for name, crd in crds.items():
            task = {
                "apiVersion": f"{crd['spec']['group']}/v1alpha1",
                "kind": "Task",
                "spec": {"prompt": PROMPT},
            }
            await each(rest.create, base(name), [task | {"metadata": {"name": f"t{i}"}} for i in range(n)])
        for k in range(1, rounds + 1):
            for name in crds:
                statuses = [{"status": status(i, k)} for i in range(n)]
                per_status = await each(rest.merge, base(name) + "/t{}/status", statuses)
                per_spec = await each(rest.merge, base(name) + "/t{}", [{"spec": {"paused": k % 2 == 1}}] * n)
                result[name]["status_ms"].append(round(per_status, 2))
                result[name]["spec_ms"].append(round(per_spec, 2))
                say(f"round {k} {name}: {per_status:.2f} ms a status write, {per_spec:.2f} ms a spec write")
        for name in crds:
            obj = await rest.list(f"{base(name)}?limit=1")
            item = obj["items"][0]
            result[name]["object_bytes"] = len(json.dumps(item))
            result[name]["managed_fields_bytes"] = len(json.dumps(item["metadata"]["managedFields"]))
    finally:
        await rest.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writes", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="Tasks per CRD copy (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of writes (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taskpod-writes-") as scratch:
        cluster = LocalCluster(Path(scratch))
        cluster.up(nodes=1, tie_to_parent=True)
        try:
            kubectl = [str(binaries.ensure("kubectl")), "--kubeconfig", str(cluster.kubeconfig)]
            manifests = yaml.safe_dump_all(list(variants().values()))
            quiet: dict[str, Any] = {"check": True, "stdout": subprocess.DEVNULL}  # stdout is the result's
            subprocess.run([*kubectl, "apply", "--server-side", "-f", "-"], input=manifests.encode(), **quiet)
            subprocess.run(
                [*kubectl, "wait", "--for=condition=Established", "--timeout=120s", "crd", "--all"], **quiet
            )
            subprocess.run([*kubectl, "create", "namespace", NS], **quiet)
            started = time.monotonic()
            result = asyncio.run(measure(cluster.kubeconfig, args.n, args.rounds))
            say(f"done in {time.monotonic() - started:.0f}s")
        finally:
            cluster.down(quiet=True)
    print(json.dumps({"n": args.n, "rounds": args.rounds, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
