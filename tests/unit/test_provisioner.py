from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localkube.provisioner import SELECTED_NODE, pod_to_reap, volume_for_claim, volume_to_delete

ROOT = Path("/vols")


def claim(**overrides: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "metadata": {
            "name": "work-ws-0",
            "namespace": "ns",
            "uid": "u1",
            "annotations": {SELECTED_NODE: "n0"},
        },
        "spec": {
            "storageClassName": "standard",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
        },
        "status": {"phase": "Pending"},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        c[section][key] = value
    return c


def test_provisions_a_prebound_volume_for_a_claim_with_a_selected_node() -> None:
    pv = volume_for_claim(claim(), "WaitForFirstConsumer", ROOT)
    assert pv is not None
    assert pv["metadata"]["name"] == "pvc-u1"
    assert pv["spec"]["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": "work-ws-0",
        "namespace": "ns",
        "uid": "u1",
    }
    assert pv["spec"]["capacity"] == {"storage": "2Gi"}
    assert pv["spec"]["hostPath"]["path"] == "/vols/pvc-u1"


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        ({"spec__storageClassName": "other"}, "Immediate"),
        ({"spec__volumeName": "pvc-u1"}, "Immediate"),
        ({"status__phase": "Bound"}, "Immediate"),
        ({"metadata__deletionTimestamp": "2026-01-01T00:00:00Z"}, "Immediate"),
        ({"metadata__annotations": {}}, "WaitForFirstConsumer"),
    ],
    ids=["other class", "already has a volume", "bound", "being deleted", "no node chosen yet"],
)
def test_leaves_claims_that_are_not_ready_or_not_ours(overrides: dict[str, Any], mode: str) -> None:
    assert volume_for_claim(claim(**overrides), mode, ROOT) is None


def test_immediate_binding_needs_no_selected_node() -> None:
    assert volume_for_claim(claim(metadata__annotations={}), "Immediate", ROOT) is not None


@pytest.mark.parametrize(
    ("provisioner", "policy", "phase", "expected"),
    [
        ("localkube.taskpod.dev/hostpath", "Delete", "Released", True),
        ("localkube.taskpod.dev/hostpath", "Delete", "Bound", False),
        ("localkube.taskpod.dev/hostpath", "Retain", "Released", False),
        ("someone-else", "Delete", "Released", False),
    ],
)
def test_deletes_only_our_released_volumes(provisioner: str, policy: str, phase: str, expected: bool) -> None:
    pv = {
        "metadata": {"annotations": {"pv.kubernetes.io/provisioned-by": provisioner}},
        "spec": {"persistentVolumeReclaimPolicy": policy},
        "status": {"phase": phase},
    }
    assert volume_to_delete(pv) is expected


def test_only_a_kwok_pod_being_deleted_is_reaped_and_by_its_uid() -> None:
    meta = {"namespace": "ns", "name": "task-0", "uid": "p1"}
    deleting = {**meta, "deletionTimestamp": "2026-11-30T19:00:00Z"}
    on_kwok = {"nodeName": "kwok-node-0"}
    assert pod_to_reap({"metadata": meta, "spec": on_kwok}) is None
    assert pod_to_reap({"metadata": deleting, "spec": on_kwok}) == ("ns", "task-0", "p1")
    # a real node's kubelet removes its own pods once their containers have stopped: reaping them
    # first would leave the containers running
    assert pod_to_reap({"metadata": deleting, "spec": {"nodeName": "vm"}}) is None
