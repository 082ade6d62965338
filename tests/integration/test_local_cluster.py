"""`make cluster` / `make cluster-down` as a newcomer uses them, beside the test run's own cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from localkube import binaries, podnet
from tests.support import Kube

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cluster_processes(directory: Path) -> list[int]:
    """Pids of live processes whose command line mentions the cluster directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(directory) in cmdline:
                found.append(int(proc.name))
    return found


def test_make_cluster_then_cluster_down(kube: Kube, tmp_path: Path) -> None:
    if not kube.local:
        pytest.skip("starts a second local control plane; pointless against an existing cluster")
    directory = tmp_path / "cluster"
    make = ["make", "--no-print-directory", "-C", str(ROOT), f"CLUSTER_DIR={directory}"]
    try:
        subprocess.run([*make, "cluster"], check=True, timeout=300, capture_output=True)
        nodes = subprocess.run(
            [
                str(binaries.ensure("kubectl")),
                "--kubeconfig",
                str(directory / "kubeconfig"),
                "get",
                "nodes",
                "--no-headers",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert nodes.strip(), "no nodes listed"
        assert all(line.split()[1] == "Ready" for line in nodes.strip().splitlines()), nodes

        # One log per component, and processes that outlive the make command.
        state = json.loads((directory / "state.json").read_text())
        assert set(state["processes"]) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "provisioner",
        }
        assert all(Path(p["log"]).is_file() for p in state["processes"].values())
        assert _cluster_processes(directory), "no cluster process found running"
        # It is a second cluster beside the session's: its own port, its own pod addresses.
        assert state["server"] != kube.api.configuration.host
        assert not any(
            ipaddress.ip_network(a).overlaps(b) for a in state["pod_cidrs"] for b in kube.pod_cidrs()
        )
        assert set(state["routes"]) <= _our_routes()
    finally:
        subprocess.run([*make, "cluster-down"], check=True, timeout=120, capture_output=True)
    assert _cluster_processes(directory) == []
    # Routed pod IPs: the local routes go with the cluster.
    assert not set(state["routes"]) & _our_routes()


def _our_routes() -> set[str]:
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "local", "proto", podnet.ROUTE_PROTO],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("local ")}
