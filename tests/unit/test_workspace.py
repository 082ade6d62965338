"""The workspace a Task owns, as the user sees it with kubectl: its headless Service and StatefulSet."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskpod.api.models import Task, TaskTemplate
from taskpod.core.lifecycle import StatefulSetView
from taskpod.core.workspace import (
    desired_replicas,
    merged_env,
    next_lifetime,
    selector,
    service,
    spec_hash,
    statefulset,
)

LIFETIME = "taskpod.dev/lifetime"
HASH = "taskpod.dev/spec-hash"
OWNER = {
    "apiVersion": "taskpod.dev/v1alpha1",
    "kind": "Task",
    "name": "fix-bug",
    "uid": "0b6e1f2a-1111-4c3d-9e8f-123456789abc",
    "controller": True,
    "blockOwnerDeletion": True,
}
OURS = {"app.kubernetes.io/managed-by": "taskpod", "taskpod.dev/task": "fix-bug"}
SECRET_KEY = {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2147483648}}
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False}
POD_SECURITY = {"fsGroup": 1000, "runAsUser": 1000}
TOLERATIONS = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
TEMPLATE_ENV: list[dict[str, Any]] = [
    {"name": "MODEL", "value": "opus"},
    {"name": "API_KEY", "valueFrom": SECRET_KEY},
]
POD: dict[str, Any] = {
    "image": "ghcr.io/acme/agent:1",
    "command": ["agentapi", "server"],
    "args": ["--port", "8080", "--", "claude"],
    "env": TEMPLATE_ENV,
    "resources": RESOURCES,
    "securityContext": CONTAINER_SECURITY,
    "podSecurityContext": POD_SECURITY,
    "serviceAccountName": "agent",
    "annotations": {"example.com/team": "core"},
    "labels": {
        "example.com/tier": "agents",
        "taskpod.dev/task": "hijack",
        "app.kubernetes.io/managed-by": "x",
    },
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": TOLERATIONS,
}
STORAGE = {"size": "20Gi", "storageClassName": "fast", "mountPath": "/home/agent/work"}


def make_task(paused: bool = False, env: list[dict[str, Any]] | None = None) -> Task:
    meta = {"name": "fix-bug", "namespace": "dev", "uid": OWNER["uid"]}
    spec: dict[str, Any] = {"prompt": "Fix the bug", "template": "claude", "paused": paused}
    if env is not None:
        spec["env"] = env
    return Task.model_validate({"metadata": meta, "spec": spec})


def make_template(pod: dict[str, Any] | None = None, storage: dict[str, Any] | None = None) -> TaskTemplate:
    spec = {"agent": {"port": 8080}, "pod": {**POD, **(pod or {})}, "storage": storage or STORAGE}
    return TaskTemplate.model_validate({"metadata": {"name": "claude", "namespace": "dev"}, "spec": spec})


TASK = make_task()
TEMPLATE = make_template()
MINIMAL = TaskTemplate.model_validate(
    {"metadata": {"name": "plain", "namespace": "dev"}, "spec": {"pod": {"image": "agent:2"}}}
)


def build(task: Task = TASK, template: TaskTemplate = TEMPLATE, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"replicas": desired_replicas(task), "lifetime": 3, "observed": None}
    return statefulset(task, template, **{**args, **kwargs})


def container(sts: dict[str, Any]) -> dict[str, Any]:
    (agent,) = sts["spec"]["template"]["spec"]["containers"]
    return dict(agent)


def claim(sts: dict[str, Any]) -> dict[str, Any]:
    (template,) = sts["spec"]["volumeClaimTemplates"]
    return dict(template)


def observed(size: str | None, storage_class: str | None) -> StatefulSetView:
    return StatefulSetView("fix-bug", 1, 3, "h", {"size": size, "storageClassName": storage_class})


@pytest.mark.parametrize(("paused", "replicas"), [(False, 1), (True, 0)], ids=["running", "paused"])
def test_replicas_follow_spec_paused(paused: bool, replicas: int) -> None:
    task = make_task(paused=paused)
    assert desired_replicas(task) == replicas
    assert build(task)["spec"]["replicas"] == replicas


def test_statefulset_identity_selector_and_labels() -> None:
    sts = build()
    assert (sts["apiVersion"], sts["kind"]) == ("apps/v1", "StatefulSet")
    assert (sts["metadata"]["name"], sts["metadata"]["namespace"]) == ("fix-bug", "dev")
    assert sts["spec"]["serviceName"] == service(TASK, TEMPLATE)["metadata"]["name"] == "fix-bug"
    assert sts["spec"]["selector"] == {"matchLabels": OURS} == {"matchLabels": selector("fix-bug")}
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for carrier in (sts["metadata"]["labels"], pod_labels, claim(sts)["metadata"]["labels"]):
        assert OURS.items() <= carrier.items()
    assert pod_labels["example.com/tier"] == "agents"  # template labels are carried over...
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()  # ...but ours win


def test_owned_by_the_task_except_the_claim_which_the_statefulset_owns() -> None:
    sts, svc = build(), service(TASK, TEMPLATE)
    assert sts["metadata"]["ownerReferences"] == [OWNER]
    assert svc["metadata"]["ownerReferences"] == [OWNER]
    assert "ownerReferences" not in claim(sts)["metadata"]
    policy = sts["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy == {"whenScaled": "Retain", "whenDeleted": "Delete"}


def test_the_volume_is_mounted_with_the_template_size_and_class() -> None:
    sts = build()
    volume = claim(sts)
    assert volume["metadata"]["name"] == "workspace"
    assert volume["spec"]["resources"] == {"requests": {"storage": "20Gi"}}
    assert volume["spec"]["storageClassName"] == "fast"
    assert volume["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert container(sts)["volumeMounts"] == [{"name": "workspace", "mountPath": "/home/agent/work"}]


def test_no_storage_class_means_the_cluster_default() -> None:
    sts = build(template=make_template(storage={"size": "5Gi"}))
    assert "storageClassName" not in claim(sts)["spec"]
    assert claim(sts)["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert container(sts)["volumeMounts"][0]["mountPath"] == "/workspace"


CLAIMS: dict[str, tuple[StatefulSetView, dict[str, Any], str, str | None]] = {
    "template grew, class changed": (observed("20Gi", "fast"), {"size": "50Gi", "storageClassName": "slow"},
                                     "20Gi", "fast"),
    "template gained a class": (observed("20Gi", None), STORAGE, "20Gi", None),
    "template dropped its class": (observed("10Gi", "fast"), {"size": "10Gi"}, "10Gi", "fast"),
    "observed size unknown": (observed(None, "fast"), {"size": "30Gi", "storageClassName": "fast"},
                              "30Gi", "fast"),
}  # fmt: skip


@pytest.mark.parametrize(("view", "storage", "size", "storage_class"), CLAIMS.values(), ids=CLAIMS.keys())
def test_an_existing_workspace_keeps_its_volume_claim(
    view: StatefulSetView, storage: dict[str, Any], size: str, storage_class: str | None
) -> None:
    spec = claim(build(template=make_template(storage=storage), observed=view))["spec"]
    assert spec["resources"]["requests"]["storage"] == size
    assert spec.get("storageClassName") == storage_class


def test_the_agent_port_is_named_and_probed() -> None:
    agent = container(build())
    assert agent["ports"] == [{"name": "agentapi", "containerPort": 8080, "protocol": "TCP"}]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/status", "port": "agentapi"}


def test_the_template_pod_settings_are_carried_over() -> None:
    sts = build()
    agent, pod = container(sts), sts["spec"]["template"]
    assert agent["name"] == "agent"
    assert (agent["image"], agent["command"], agent["args"]) == (POD["image"], POD["command"], POD["args"])
    assert agent["resources"] == RESOURCES
    assert agent["securityContext"] == CONTAINER_SECURITY
    assert pod["spec"]["securityContext"] == POD_SECURITY
    assert pod["spec"]["serviceAccountName"] == "agent"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert pod["spec"]["tolerations"] == TOLERATIONS
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["annotations"]["example.com/team"] == "core"
    assert pod["metadata"]["labels"] == {
        **OURS,
        "example.com/tier": "agents",
        "app.kubernetes.io/name": "taskpod-workspace",
    }


def test_a_minimal_template_leaves_optional_fields_out() -> None:
    sts = build(template=MINIMAL)
    agent, pod_spec = container(sts), sts["spec"]["template"]["spec"]
    assert agent["image"] == "agent:2"
    assert agent["ports"][0]["containerPort"] == 3284
    for key in ("command", "args", "resources", "securityContext", "imagePullPolicy"):
        assert key not in agent
    for key in ("securityContext", "serviceAccountName", "nodeSelector", "tolerations"):
        assert key not in pod_spec
    assert pod_spec["automountServiceAccountToken"] is False
    assert agent["env"] == []


@pytest.mark.parametrize("lifetime", [0, 1, 7])
def test_the_pod_template_carries_the_lifetime(lifetime: int) -> None:
    sts = build(lifetime=lifetime)
    assert sts["spec"]["template"]["metadata"]["annotations"][LIFETIME] == str(lifetime)
    assert StatefulSetView.parse(sts).lifetime == lifetime


ENVS: dict[str, tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]] = {
    "template only": (None, TEMPLATE_ENV),
    "task overrides by name": (
        [{"name": "MODEL", "value": "sonnet"}, {"name": "REPO", "value": "acme/app"}],
        [{"name": "MODEL", "value": "sonnet"}, {"name": "API_KEY", "valueFrom": SECRET_KEY},
         {"name": "REPO", "value": "acme/app"}],
    ),
    "task valueFrom replaces a template value": (
        [{"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "models", "key": "default"}}}],
        [{"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "models", "key": "default"}}},
         {"name": "API_KEY", "valueFrom": SECRET_KEY}],
    ),
}  # fmt: skip


@pytest.mark.parametrize(("task_env", "expected"), ENVS.values(), ids=ENVS.keys())
def test_merged_env(task_env: list[dict[str, Any]] | None, expected: list[dict[str, Any]]) -> None:
    task = make_task(env=task_env)
    assert merged_env(TEMPLATE, task) == expected
    assert container(build(task))["env"] == expected


LIFETIMES: dict[str, tuple[StatefulSetView | None, int, int]] = {
    "created running": (None, 1, 1),
    "created paused": (None, 0, 0),
    "resumed from zero": (StatefulSetView("fix-bug", 0, 3, "h", {}), 1, 4),
    "steady running": (StatefulSetView("fix-bug", 1, 3, "h", {}), 1, 3),
    "pausing": (StatefulSetView("fix-bug", 1, 3, "h", {}), 0, 3),
    "staying paused": (StatefulSetView("fix-bug", 0, 3, "h", {}), 0, 3),
}


@pytest.mark.parametrize(("view", "replicas", "lifetime"), LIFETIMES.values(), ids=LIFETIMES.keys())
def test_next_lifetime(view: StatefulSetView | None, replicas: int, lifetime: int) -> None:
    assert next_lifetime(view, replicas) == lifetime


def test_identical_inputs_give_identical_hashes_on_both_objects() -> None:
    first, second = build(), build()
    assert first == second and spec_hash(first) == spec_hash(second)
    assert spec_hash(service(TASK, TEMPLATE)) == spec_hash(service(TASK, TEMPLATE))
    for obj in (first, service(TASK, TEMPLATE)):
        assert obj["metadata"]["annotations"][HASH] == spec_hash(obj) != ""
    assert StatefulSetView.parse(first).spec_hash == spec_hash(first)


HASH_CHANGES: dict[str, dict[str, Any]] = {
    "image": {"template": make_template(pod={"image": "ghcr.io/acme/agent:2"})},
    "template env": {"template": make_template(pod={"env": [{"name": "MODEL", "value": "haiku"}]})},
    "task env": {"task": make_task(env=[{"name": "REPO", "value": "acme/app"}])},
    "replicas": {"replicas": 0},
    "lifetime": {"lifetime": 4},
}


@pytest.mark.parametrize("change", HASH_CHANGES.values(), ids=HASH_CHANGES.keys())
def test_a_changed_input_changes_the_hash(change: dict[str, Any]) -> None:
    assert spec_hash(build(**change)) != spec_hash(build())


def test_service_is_headless_and_selects_the_statefulset_pod() -> None:
    svc, sts = service(TASK, TEMPLATE), build()
    assert (svc["apiVersion"], svc["kind"]) == ("v1", "Service")
    assert (svc["metadata"]["name"], svc["metadata"]["namespace"]) == ("fix-bug", "dev")
    assert OURS.items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["publishNotReadyAddresses"] is True
    (port,) = svc["spec"]["ports"]
    assert (port["name"], port["port"]) == ("agentapi", 8080)
    assert service(TASK, MINIMAL)["spec"]["ports"][0]["port"] == 3284


@pytest.mark.parametrize(
    "obj",
    [build(), build(template=MINIMAL, observed=observed("20Gi", "fast")), service(TASK, TEMPLATE)],
    ids=["statefulset", "minimal, observed", "service"],
)
def test_everything_is_plain_json(obj: dict[str, Any]) -> None:
    assert json.loads(json.dumps(obj)) == obj
