"""The workspace a Task owns, as plain data: a PersistentVolumeClaim and one Pod (pure).

The operator creates both, owned by the Task, so that garbage collection removes them with it. A pause
deletes the pod and keeps the claim, and with it the files; a resume creates a new pod on the same claim.
Their names are those the StatefulSet of earlier releases gave them (pod "<task>-0", claim
"workspace-<task>-0"): one name per task means never two pods, and an upgraded task keeps its volume
where it is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from taskpod.api.models import API_VERSION, EnvVar, Task, TaskTemplate
from taskpod.core.lifecycle import AGENT_PORT_NAME, LIFETIME_LABEL, SPEC_HASH_ANNOTATION, PodView

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
    pod: str
    claim: str


def names(task_name: str) -> WorkspaceNames:
    return WorkspaceNames(f"{task_name}-0", f"{VOLUME}-{task_name}-0")


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


def next_lifetime(recorded: int, pod: PodView | None) -> int:
    """Lifetimes count pods: 1 for the first, one more for each pod after it (a resume, a replacement).
    `recorded`: the lifetime status last showed; a pod made just before a crash may be newer."""
    current = max(recorded, (pod.lifetime or 0) if pod is not None else 0)
    return current + 1


def merged_env(template: TaskTemplate, task: Task) -> list[dict[str, Any]]:
    """The template's variables, then the task's; a name set on the task wins."""
    merged: dict[str, EnvVar] = {}
    for var in [*(template.spec.pod.env or []), *(task.spec.env or [])]:
        merged[var.name] = var
    return [v.dump() for v in merged.values()]


def _spec_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def spec_hash(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION])


def claim(task: Task, template: TaskTemplate) -> dict[str, Any]:
    """The workspace's volume claim. Made once: a claim's spec is immutable, so a template's later
    storage change applies to new tasks only."""
    storage = template.spec.storage
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(storage.size)}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": names(task.name).claim,
            "namespace": task.namespace,
            "labels": labels(task.name),
            "ownerReferences": [owner_reference(task)],
        },
        "spec": spec,
    }


def pod(task: Task, template: TaskTemplate, lifetime: int, report_url: str | None = None) -> dict[str, Any]:
    """The pod that runs the agent on the workspace's claim. It carries a hash of what it was made from
    (all but its `lifetime`), so that a changed template or task is seen cheaply: a pod's spec is
    immutable, so such a change means a new pod."""
    n = names(task.name)
    pod_template = template.spec.pod
    storage = template.spec.storage
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pod_template.image,
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
        "imagePullPolicy": pod_template.image_pull_policy,
        "command": pod_template.command,
        "args": pod_template.args,
        "resources": pod_template.resources.dump() if pod_template.resources else None,
        "securityContext": pod_template.security_context,
    }
    container.update({k: v for k, v in optional.items() if v})

    volumes: list[dict[str, Any]] = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": n.claim}}]
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
        "volumes": volumes,
        "automountServiceAccountToken": False,  # the agent needs no Kubernetes API access
        "enableServiceLinks": False,
    }
    pod_optional = {
        "securityContext": pod_template.pod_security_context,
        "serviceAccountName": pod_template.service_account_name,
        "nodeSelector": pod_template.node_selector,
        "tolerations": pod_template.tolerations,
    }
    pod_spec.update({k: v for k, v in pod_optional.items() if v})
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": n.pod,
            "namespace": task.namespace,
            "labels": {**(pod_template.labels or {}), **labels(task.name)},
            "annotations": dict(pod_template.annotations or {}),
            "ownerReferences": [owner_reference(task)],
        },
        "spec": pod_spec,
    }
    body["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = _spec_hash(body)
    body["metadata"]["labels"][LIFETIME_LABEL] = str(lifetime)  # in the write that creates it
    return body
