"""The workspace a Task owns, as plain data: a headless Service and a one-pod StatefulSet (pure).

The StatefulSet's volumeClaimTemplate keeps the files across pauses. Its PVC retention policy
(whenScaled: Retain, whenDeleted: Delete) makes the StatefulSet the PVC's owner; we never give the PVC
a second controller owner, which would silently switch that policy off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from taskpod.api.models import API_VERSION, EnvVar, Task, TaskTemplate
from taskpod.core.lifecycle import AGENT_PORT_NAME, LIFETIME_ANNOTATION, SPEC_HASH_ANNOTATION, StatefulSetView

MANAGED_BY = "app.kubernetes.io/managed-by"
TASK_LABEL = "taskpod.dev/task"
FIELD_MANAGER = "taskpod"
VOLUME = "workspace"
CONTAINER = "agent"
PORT_NAME = AGENT_PORT_NAME
REPORT_AUDIENCE = "taskpod"
REPORT_VOLUME = "taskpod-report"
REPORT_DIR = "/var/run/taskpod"


@dataclass(frozen=True)
class WorkspaceNames:
    statefulset: str
    service: str
    pod: str
    claim: str


def names(task_name: str) -> WorkspaceNames:
    return WorkspaceNames(task_name, task_name, f"{task_name}-0", f"{VOLUME}-{task_name}-0")


def selector(task_name: str) -> dict[str, str]:
    return {MANAGED_BY: "taskpod", TASK_LABEL: task_name}


def labels(task_name: str) -> dict[str, str]:
    return {**selector(task_name), "app.kubernetes.io/name": "taskpod-workspace"}


def owner_reference(task: Task) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Task",
        "name": task.name,
        "uid": task.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_replicas(task: Task) -> int:
    return 0 if task.spec.paused else 1


def next_lifetime(observed: StatefulSetView | None, replicas: int) -> int:
    """Lifetimes count starts: 1 at creation, one more each time a scaled-down workspace scales up."""
    if observed is None:
        return 1 if replicas else 0
    if observed.replicas == 0 and replicas > 0:
        return observed.lifetime + 1
    return observed.lifetime


def merged_env(template: TaskTemplate, task: Task) -> list[dict[str, Any]]:
    """The template's variables, then the task's; a name set on the task wins."""
    merged: dict[str, EnvVar] = {}
    for var in [*(template.spec.pod.env or []), *(task.spec.env or [])]:
        merged[var.name] = var
    return [v.dump() for v in merged.values()]


def _spec_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Record a hash of what we asked for, so a watch event tells us cheaply whether it still holds."""
    obj["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = _spec_hash(obj)
    return obj


def spec_hash(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION])


def service(task: Task, template: TaskTemplate) -> dict[str, Any]:
    """A headless Service: the StatefulSet's network identity for the agent port."""
    n = names(task.name)
    return _stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": n.service,
                "namespace": task.namespace,
                "labels": labels(task.name),
                "ownerReferences": [owner_reference(task)],
            },
            "spec": {
                "clusterIP": "None",
                "selector": selector(task.name),
                "publishNotReadyAddresses": True,
                "ports": [{"name": PORT_NAME, "port": template.spec.agent.port, "targetPort": PORT_NAME}],
            },
        }
    )


def statefulset(
    task: Task,
    template: TaskTemplate,
    replicas: int,
    lifetime: int,
    observed: StatefulSetView | None,
    report_url: str | None = None,
) -> dict[str, Any]:
    """The one-pod StatefulSet that runs the agent, scaled to `replicas`, stamped with its `lifetime`."""
    n = names(task.name)
    pod = template.spec.pod
    storage = template.spec.storage
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(storage.size)}},
    }
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    if observed is not None:
        # volumeClaimTemplates are immutable: an existing workspace keeps the volume it was made with.
        claim_spec["resources"]["requests"]["storage"] = observed.storage.get("size") or str(storage.size)
        if observed.storage.get("storageClassName"):
            claim_spec["storageClassName"] = observed.storage["storageClassName"]
        else:
            claim_spec.pop("storageClassName", None)

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pod.image,
        "ports": [{"name": PORT_NAME, "containerPort": template.spec.agent.port, "protocol": "TCP"}],
        "env": merged_env(template, task),
        "volumeMounts": [{"name": VOLUME, "mountPath": storage.mount_path}],
        "readinessProbe": {
            "httpGet": {"path": "/status", "port": PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
    }
    optional = {
        "imagePullPolicy": pod.image_pull_policy,
        "command": pod.command,
        "args": pod.args,
        "resources": pod.resources.dump() if pod.resources else None,
        "securityContext": pod.security_context,
    }
    container.update({k: v for k, v in optional.items() if v})

    volumes: list[dict[str, Any]] = []
    if report_url:
        # The agent reports complete/failed with a token bound to this pod, for the operator only.
        token = {"audience": REPORT_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
        volumes.append({"name": REPORT_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}})
        container["volumeMounts"].append({"name": REPORT_VOLUME, "mountPath": REPORT_DIR, "readOnly": True})
        container["env"] += [
            {"name": "TASKPOD_REPORT_URL", "value": report_url},
            {"name": "TASKPOD_REPORT_TOKEN_FILE", "value": f"{REPORT_DIR}/token"},
        ]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "automountServiceAccountToken": False,  # the agent needs no Kubernetes API access
        "enableServiceLinks": False,
    }
    pod_optional = {
        "securityContext": pod.pod_security_context,
        "serviceAccountName": pod.service_account_name,
        "nodeSelector": pod.node_selector,
        "tolerations": pod.tolerations,
    }
    pod_spec.update({k: v for k, v in pod_optional.items() if v})
    if volumes:
        pod_spec["volumes"] = volumes

    return _stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": n.statefulset,
                "namespace": task.namespace,
                "labels": labels(task.name),
                "ownerReferences": [owner_reference(task)],
            },
            "spec": {
                "replicas": replicas,
                "serviceName": n.service,
                "selector": {"matchLabels": selector(task.name)},
                "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Delete"},
                "template": {
                    "metadata": {
                        "labels": {**(pod.labels or {}), **labels(task.name)},
                        "annotations": {**(pod.annotations or {}), LIFETIME_ANNOTATION: str(lifetime)},
                    },
                    "spec": pod_spec,
                },
                "volumeClaimTemplates": [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": VOLUME, "labels": labels(task.name)},
                        "spec": claim_spec,
                    }
                ],
            },
        }
    )


def first_pod(statefulset: dict[str, Any]) -> dict[str, Any]:
    """The pod its StatefulSet controller would create first, as near as admission sees it: to ask the
    API server (by a dry run) why it refuses the pod, which it tells only the controller."""
    meta, spec = statefulset["metadata"], statefulset["spec"]
    template = spec["template"]
    claims = [
        {
            "name": c["metadata"]["name"],
            "persistentVolumeClaim": {"claimName": f"{c['metadata']['name']}-{meta['name']}-0"},
        }
        for c in spec.get("volumeClaimTemplates") or []
    ]
    pod_spec = {**template["spec"], "hostname": f"{meta['name']}-0", "subdomain": spec.get("serviceName")}
    pod_spec["volumes"] = [*claims, *(pod_spec.get("volumes") or [])]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **template.get("metadata", {}),
            "name": f"{meta['name']}-0",
            "namespace": meta["namespace"],
        },
        "spec": pod_spec,
    }
