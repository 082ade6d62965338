"""The workspace a Task owns, as plain data: a PersistentVolumeClaim and one Pod (pure).

The operator creates both, owned by the Task, so that garbage collection removes them with it. A pause
deletes the pod and keeps the claim, and with it the files; a resume creates a new pod on the same claim.
Their names are those the StatefulSet of earlier releases gave them (pod "<task>-0", claim
"workspace-<task>-0"): one name per task means never two pods, and an upgraded task keeps its volume
where it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskpod.api.models import API_VERSION, ConditionStatus, EnvVar, Repository, Task, TaskTemplate
from taskpod.core.lifecycle import (
    AGENT_PORT_NAME,
    CLONE_CONTAINER,
    CLONE_URL_ENV,
    LIFETIME_LABEL,
    READY,
    SPEC_HASH_ANNOTATION,
    PodView,
    set_condition,
)

MANAGED_BY = "app.kubernetes.io/managed-by"
TASK_LABEL = "taskpod.dev/task"
FIELD_MANAGER = "taskpod"
VOLUME = "workspace"
CONTAINER = "agent"
PORT_NAME = AGENT_PORT_NAME
REPORT_AUDIENCE = "taskpod"
REPORT_VOLUME = "taskpod-report"
REPORT_DIR = "/var/run/taskpod"
GIT_CREDENTIALS_VOLUME = "taskpod-git-credentials"
GIT_CREDENTIALS_DIR = "/var/run/taskpod/git"
CREDENTIALS_MOUNT = {"name": GIT_CREDENTIALS_VOLUME, "mountPath": GIT_CREDENTIALS_DIR, "readOnly": True}
# git's credential helper and ssh command, reading the mounted Secret when git asks (and nothing if it has
# no such key): https takes `password` or `token` (and `username`), ssh `ssh-privatekey` and `known_hosts`.
# ssh refuses a key others may read, as a Secret's files are, so it gets a private copy for the call.
GIT_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; c=$TASKPOD_GIT_CREDENTIALS; '
    'echo "username=$(cat "$c/username" 2>/dev/null || echo x-access-token)"; '
    'echo "password=$(cat "$c/password" 2>/dev/null || cat "$c/token" 2>/dev/null)"; }; f'
)
GIT_SSH_COMMAND = (
    "taskpod_ssh() { c=$TASKPOD_GIT_CREDENTIALS; "
    "set -- -o BatchMode=yes -o ConnectTimeout=30 -o StrictHostKeyChecking=yes "
    '-o "UserKnownHostsFile=$c/known_hosts" "$@"; '
    'if [ ! -f "$c/ssh-privatekey" ]; then ssh "$@"; return; fi; '
    'k=$(mktemp) && cat "$c/ssh-privatekey" > "$k" && ssh -o IdentitiesOnly=yes -i "$k" "$@"; '
    's=$?; rm -f "$k"; return $s; }; taskpod_ssh'
)
CHECKOUT_ENV = "TASKPOD_CHECKOUT"  # where the agent container finds the checkout (its working directory)
# The workspace image's reporter (images/workspace/git-state.mjs); an image without one just stops.
GIT_STATE_ON_STOP = "command -v taskpod-git-state >/dev/null 2>&1 || exit 0; exec taskpod-git-state once"
DEFAULT_DEPTH = 1
BRANCH_PREFIX = "taskpod/"
CLONE_SCRIPT = (Path(__file__).parent / "clone.sh").read_text()


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


@dataclass(frozen=True)
class Checkout:
    """The repository a workspace starts from, with every default filled in."""

    url: str
    branch: str
    path: str  # relative to the volume's mount path
    depth: int  # 0: the whole history
    ref: str | None = None  # None: the remote's default branch
    secret: str | None = None
    push: bool = False  # the agent container may push, and does on a complete report


def checkout(task: Task, template: TaskTemplate) -> Checkout | None:
    """The template's repository with the task's fields over it, or None when neither has one.
    Raises ValueError when no url is left to clone (say, a task that sets only a branch)."""
    base, own = template.spec.repository, task.spec.repository
    if base is None and own is None:
        return None
    merged = Repository(
        **{
            **(base.model_dump(exclude_none=True) if base else {}),
            **(own.model_dump(exclude_none=True) if own else {}),
        }
    )
    if merged.url is None:
        where = "the task's" if base is None else f"the task's and template {template.metadata.name}'s"
        raise ValueError(f"The repository has no url: {where} repository sets none.")
    return Checkout(
        url=merged.url,
        branch=merged.branch or f"{BRANCH_PREFIX}{task.name}",
        path=merged.path or checkout_name(merged.url),
        depth=DEFAULT_DEPTH if merged.depth is None else merged.depth,
        ref=merged.ref,
        secret=merged.secret_ref.name if merged.secret_ref else None,
        push=bool(merged.push),
    )


def checkout_name(url: str) -> str:
    """The directory `git clone` would make for `url`: its last segment without ".git", in the
    characters a checkout path may hold ("repo" if nothing is left)."""
    last = re.split(r"[/:]", url.rstrip("/"))[-1].removesuffix(".git")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", last).lstrip(".-")
    return name or "repo"


def credentials_env(directory: str) -> list[dict[str, Any]]:
    """What makes git use the Secret mounted at `directory`: the helper replaces any other (the image's)."""
    return [
        {"name": "TASKPOD_GIT_CREDENTIALS", "value": directory},
        {"name": "GIT_CONFIG_COUNT", "value": "2"},
        {"name": "GIT_CONFIG_KEY_0", "value": "credential.helper"},
        {"name": "GIT_CONFIG_VALUE_0", "value": ""},
        {"name": "GIT_CONFIG_KEY_1", "value": "credential.helper"},
        {"name": "GIT_CONFIG_VALUE_1", "value": GIT_CREDENTIAL_HELPER},
        {"name": "GIT_SSH_COMMAND", "value": GIT_SSH_COMMAND},
    ]


OWN_VOLUMES = (VOLUME, REPORT_VOLUME, GIT_CREDENTIALS_VOLUME)
OWN_CONTAINERS = (CONTAINER, CLONE_CONTAINER)


def conflict(template: TaskTemplate) -> str | None:
    """What in the template's pod would shadow taskpod's own parts, naming the field; None if nothing.
    The CRD refuses the same at apply time; this catches a template stored before those rules."""
    pod = template.spec.pod
    for volume in pod.volumes or []:
        if volume.get("name") in OWN_VOLUMES:
            return f"spec.pod.volumes: the volume name {volume.get('name')} is taskpod's own"
    for field, containers in (("initContainers", pod.init_containers), ("sidecars", pod.sidecars)):
        for container in containers or []:
            if container.get("name") in OWN_CONTAINERS:
                return f"spec.pod.{field}: the container name {container.get('name')} is taskpod's own"
    theirs = {v.get("name") for v in pod.volumes or []}
    for mount in pod.volume_mounts or []:
        if mount.get("name") not in theirs:
            return f"spec.pod.volumeMounts: {mount.get('name')} is not one of spec.pod.volumes"
        if mount.get("mountPath") == template.spec.storage.mount_path:
            return f"spec.pod.volumeMounts: {mount.get('mountPath')} is where the workspace volume is"
    return None


def template_status(template: TaskTemplate, now: dt.datetime) -> dict[str, Any] | None:
    """The template's status with its Ready condition as `conflict` finds it, or None when the status it
    has says the same already (nothing to write)."""
    found = conflict(template)
    ready = ConditionStatus.FALSE if found else ConditionStatus.TRUE
    reason, message = (
        ("Conflict", f"Tasks cannot use it: {found}.") if found else ("Accepted", "Tasks can use it.")
    )
    current = template.status.conditions or []
    was = next((c for c in current if c.type == READY), None)
    generation = template.metadata.generation
    if was is not None and (was.status, was.reason, was.message, was.observed_generation) == (
        ready,
        reason,
        message,
        generation,
    ):
        return None
    conditions = set_condition(current, READY, ready, reason, message, generation, now)
    return {"conditions": [c.dump() for c in conditions]}


def refusal(task: Task, template: TaskTemplate) -> str | None:
    """Why no workspace can be made for this task from this template, or None."""
    if (found := conflict(template)) is not None:
        return f"TaskTemplate {template.metadata.name} cannot be used: {found}."
    try:
        checkout(task, template)
    except ValueError as exc:
        return str(exc)
    return None


def _clone_container(
    agent: dict[str, Any], env_vars: list[dict[str, Any]], repo: Checkout, mount_path: str
) -> dict[str, Any]:
    """The init container that clones the repository into the volume before the agent starts, once: it
    finds the checkout there on every later start and leaves it be (the agent's work is in it). It has
    the template's and task's variables too (a proxy, GIT_* settings), but not the report token."""
    env = [
        *env_vars,
        {"name": CLONE_URL_ENV, "value": repo.url},
        {"name": "TASKPOD_REPO_BRANCH", "value": repo.branch},
        {"name": "TASKPOD_REPO_DIR", "value": f"{mount_path.rstrip('/')}/{repo.path}"},
        {"name": "TASKPOD_REPO_DEPTH", "value": str(repo.depth)},
    ]
    if repo.ref:
        env.append({"name": "TASKPOD_REPO_REF", "value": repo.ref})
    mounts: list[dict[str, Any]] = [{"name": VOLUME, "mountPath": mount_path}]
    if repo.secret:
        env += [{"name": "TASKPOD_GIT_SECRET", "value": repo.secret}, *credentials_env(GIT_CREDENTIALS_DIR)]
        mounts.append(dict(CREDENTIALS_MOUNT))
    container = {
        "name": CLONE_CONTAINER,
        "image": agent["image"],
        "command": ["sh", "-c", CLONE_SCRIPT],
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # As the agent runs (the same user, so the checkout is its own) and within the same resources.
    container.update({k: agent[k] for k in ("imagePullPolicy", "resources", "securityContext") if k in agent})
    return container


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
        "envFrom": pod_template.env_from,
    }
    container.update({k: v for k, v in optional.items() if v})

    volumes: list[dict[str, Any]] = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": n.claim}}]
    volumes += pod_template.volumes or []
    container["volumeMounts"] += pod_template.volume_mounts or []
    if report_url:
        # The agent reports complete/failed with a token bound to this pod, for the operator only.
        token = {"audience": REPORT_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
        volumes.append({"name": REPORT_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}})
        container["volumeMounts"].append({"name": REPORT_VOLUME, "mountPath": REPORT_DIR, "readOnly": True})
        container["env"] += [
            {"name": "TASKPOD_REPORT_URL", "value": report_url},
            {"name": "TASKPOD_REPORT_TOKEN_FILE", "value": f"{REPORT_DIR}/token"},
        ]
    repo = checkout(task, template)
    if repo is not None:
        container["workingDir"] = f"{storage.mount_path.rstrip('/')}/{repo.path}"
        container["env"].append({"name": CHECKOUT_ENV, "value": container["workingDir"]})
        if report_url:
            # The checkout's last git state before the pod stops (a pause), for status to keep showing.
            container["lifecycle"] = {"preStop": {"exec": {"command": ["sh", "-c", GIT_STATE_ON_STOP]}}}
        if repo.push:
            container["env"].append({"name": "TASKPOD_PUSH", "value": "true"})
        if repo.secret:
            # The clone's, and the agent's too if it is to push; 0444: they run as the agent's user, which may
            # not be in root's group. Optional, so that a missing Secret is the clone's Error, in the
            # task's status, rather than a pod stuck creating that the operator cannot explain.
            secret = {"secretName": repo.secret, "defaultMode": 0o444, "optional": True}
            volumes.append({"name": GIT_CREDENTIALS_VOLUME, "secret": secret})
            if repo.push:
                container["env"] += credentials_env(GIT_CREDENTIALS_DIR)
                container["volumeMounts"].append(dict(CREDENTIALS_MOUNT))
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
        "imagePullSecrets": pod_template.image_pull_secrets,
        "runtimeClassName": pod_template.runtime_class_name,
        "affinity": pod_template.affinity,
        "priorityClassName": pod_template.priority_class_name,
        "hostAliases": pod_template.host_aliases,
        "dnsConfig": pod_template.dns_config,
        "topologySpreadConstraints": pod_template.topology_spread_constraints,
    }
    pod_spec.update({k: v for k, v in pod_optional.items() if v})
    # In order: the template's sidecars (a proxy the clone may need, say), the clone, then the template's
    # init containers (which find the checkout).
    init = [{**sidecar, "restartPolicy": "Always"} for sidecar in pod_template.sidecars or []]
    if repo is not None:
        init.append(_clone_container(container, merged_env(template, task), repo, storage.mount_path))
    init += pod_template.init_containers or []
    if init:
        pod_spec["initContainers"] = init
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
