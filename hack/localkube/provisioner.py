"""A hostPath PV provisioner for the local control plane's default StorageClass.

It does what local-path-provisioner does on real clusters, minus the node plumbing: for each pending claim
of our class (once the scheduler has picked a node, for WaitForFirstConsumer) it creates a PersistentVolume
pre-bound to the claim, backed by a folder under --root; the PV controller in kube-controller-manager
completes the binding. Released volumes with reclaim policy Delete are removed with their folder.

It also finishes the deletion of pods, as a kubelet does once their containers have stopped: a pod being
deleted is deleted at once, with its uid as a precondition. kwok's own pod-delete stage did this by name
alone, and replayed it under load after the pod was gone, so it deleted the pod's successor of the same
name: a resumed workspace (bench/README.md, 2026-11-30 evening).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from localkube.cluster import KWOK_NODE, PROVISIONER, STORAGE_CLASS

log = logging.getLogger("provisioner")
SELECTED_NODE = "volume.kubernetes.io/selected-node"


def volume_for_claim(claim: dict[str, Any], binding_mode: str, root: Path) -> dict[str, Any] | None:
    """The PV to create for `claim`, or None when it is not ours or not ready to provision (pure)."""
    meta, spec = claim["metadata"], claim["spec"]
    if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName"):
        return None
    if meta.get("deletionTimestamp") or claim.get("status", {}).get("phase") == "Bound":
        return None
    if binding_mode == "WaitForFirstConsumer" and SELECTED_NODE not in (meta.get("annotations") or {}):
        return None
    name = f"pvc-{meta['uid']}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
        },
    }


def volume_to_delete(volume: dict[str, Any]) -> bool:
    """True for a released volume that we provisioned with reclaim policy Delete (pure)."""
    annotations = volume["metadata"].get("annotations") or {}
    return (
        annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete"
        and volume.get("status", {}).get("phase") in ("Released", "Failed")
    )


def pod_to_reap(pod: dict[str, Any]) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of a kwok node's pod being deleted, which its "kubelet" now removes; else
    None (pure). A real node's kubelet removes its own pods, once their containers have stopped."""
    meta = pod["metadata"]
    if not meta.get("deletionTimestamp") or not (pod.get("spec") or {}).get("nodeName", "").startswith(
        KWOK_NODE
    ):
        return None
    return meta["namespace"], meta["name"], meta["uid"]


class Provisioner:
    def __init__(self, api: client.ApiClient, root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.api = api
        self.root = root

    def _binding_mode(self) -> str:
        sc = self.storage.read_storage_class(STORAGE_CLASS)
        return sc.volume_binding_mode or "Immediate"

    def on_claim(self, claim: dict[str, Any]) -> None:
        pv = volume_for_claim(claim, self._binding_mode(), self.root)
        if pv is None:
            return
        folder = Path(pv["spec"]["hostPath"]["path"])
        folder.mkdir(parents=True, exist_ok=True)
        # Writable by any user, as local-path-provisioner makes them: a kubelet applies no fsGroup to a
        # hostPath volume, and on a real node a workspace runs as a user of its own.
        folder.chmod(0o777)
        try:
            self.core.create_persistent_volume(pv)
            log.info(
                "provisioned %s for %s/%s",
                pv["metadata"]["name"],
                claim["metadata"]["namespace"],
                claim["metadata"]["name"],
            )
        except ApiException as exc:
            if exc.status != 409:  # 409: already provisioned on an earlier event
                raise

    def on_volume(self, volume: dict[str, Any]) -> None:
        if not volume_to_delete(volume):
            return
        name = volume["metadata"]["name"]
        try:
            self.core.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        shutil.rmtree(self.root / name, ignore_errors=True)
        log.info("deleted released volume %s", name)

    def on_pod(self, pod: dict[str, Any]) -> None:
        target = pod_to_reap(pod)
        if target is None:
            return
        namespace, name, uid = target
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or another pod of its name: not ours to delete
                raise

    def follow(self, list_fn: Any, handler: Any) -> None:
        """List-then-watch forever, calling `handler` with each object as plain data."""
        while True:
            try:
                w = watch.Watch()
                # Plain JSON, not the client's models: every pod event of a 1,000-task bench passes
                # here, and building models for them cost 25 CPU-s per 1,000 pods, on the cores the
                # measured run needs. Each watch ends after its timeout and starts again with a list.
                events = w.stream(list_fn, timeout_seconds=300, _request_timeout=330, deserialize=False)
                for event in events:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        handler(event["object"])
            except Exception:
                log.exception("watch failed; restarting in 1s")
                time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", type=Path, required=True, help="folder that holds the volumes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    p = Provisioner(api, args.root)
    threading.Thread(target=p.follow, args=(p.core.list_persistent_volume, p.on_volume), daemon=True).start()
    pods = p.core.list_pod_for_all_namespaces
    threading.Thread(target=p.follow, args=(pods, p.on_pod), daemon=True).start()
    p.follow(p.core.list_persistent_volume_claim_for_all_namespaces, p.on_claim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
