"""The lifecycle rules: phase from what the cluster reports, the Ready/Paused conditions, the status patch."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from taskpod.api.models import (
    AgentStatus,
    Condition,
    ConditionStatus,
    Phase,
    Task,
    TaskTemplate,
    TaskTemplateSpec,
)
from taskpod.core.lifecycle import (
    FATAL_WAITING,
    AgentView,
    ClaimView,
    CloneView,
    ContainerProblem,
    NodeView,
    Observation,
    PodView,
    derive_phase,
    lifecycle_status,
    set_condition,
    status_changed,
)

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC)
LATER = dt.datetime(2025, 3, 1, 11, 0, tzinfo=dt.UTC)
LIFETIME = "taskpod.dev/lifetime"
HASH = "taskpod.dev/spec-hash"
TASK_UID = "0b6e1f2a-1111-4c3d-9e8f-123456789abc"
NO_FIT = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available."
UNSCHEDULABLE = {"status": "False", "reason": "Unschedulable", "message": NO_FIT}
EVICTED: dict[str, Any] = {"reason": "Evicted", "message": "The node was low on resource: memory."}


def raw_pod(
    phase: str = "Running",
    *,
    ready: bool = True,
    ready_reason: str | None = None,
    node: str | None = "kind-worker",
    scheduled: dict[str, Any] | None = None,
    waiting: dict[str, Any] | None = None,
    **status: Any,
) -> dict[str, Any]:
    """A workspace pod as the API server returns it."""
    state = {"waiting": waiting} if waiting else {"running": {"startedAt": "2025-03-01T09:00:05Z"}}
    conditions = [
        {"type": "Initialized", "status": "True", "lastProbeTime": None},
        {"type": "Ready", "status": str(ready), "lastProbeTime": None, "reason": ready_reason},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, **(scheduled or {})},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "fix-bug-0",
            "namespace": "dev",
            "labels": {"taskpod.dev/task": "fix-bug", LIFETIME: "2"},
            "annotations": {HASH: "h1"},
            "ownerReferences": [{"kind": "Task", "name": "fix-bug", "uid": TASK_UID, "controller": True}],
        },
        "spec": {"containers": [{"name": "agent", "image": "ghcr.io/acme/agent:1"}], "nodeName": node},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "172.18.0.2",
            "podIP": "10.244.1.7",
            "containerStatuses": [{"name": "agent", "ready": ready, "restartCount": 0, "state": state}],
            "qosClass": "Burstable",
            **status,
        },
    }


def raw_claim(**metadata: Any) -> dict[str, Any]:
    """A workspace's volume claim as the API server returns it."""
    owner = {"apiVersion": "taskpod.dev/v1alpha1", "kind": "Task", "name": "fix-bug", "uid": TASK_UID}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "workspace-fix-bug-0",
            "namespace": "dev",
            "uid": "c1",
            "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
            **metadata,
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
        "status": {"phase": "Bound"},
    }


def pod(*args: Any, deleting: bool = False, **kwargs: Any) -> PodView:
    body = raw_pod(*args, **kwargs)
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2025-03-01T09:59:00Z"
    return PodView.parse(body)


TEMPLATE = TaskTemplate.model_validate(
    {
        "metadata": {"name": "claude", "namespace": "dev"},
        "spec": {"displayName": "Claude Code", "icon": "https://x/claude.svg", "pod": {"image": "agent:1"}},
    }
)
PLAIN = TaskTemplateSpec.model_validate({"pod": {"image": "agent:2"}})
CLAIM = ClaimView.parse(raw_claim())
WORKSPACE = {"claim": "workspace-fix-bug-0", "lifetime": 2, "pod": "fix-bug-0", "podIP": "10.244.1.7"}
CLAUDE = {"name": "claude", "displayName": "Claude Code", "icon": "https://x/claude.svg"}
RESTARTING = "pod fix-bug-0 failed (Evicted); a new pod starts in 10s."


def observe(**overrides: Any) -> Observation:
    fields: dict[str, Any] = dict(
        generation=3, paused=False, template_name="claude", template=TEMPLATE, claim=CLAIM, lifetime=2
    )
    agent = AgentView(lifetime=1, answered=True, healthy=True, status=AgentStatus.STABLE, agent_type="claude")
    return Observation(**{**fields, "pod": pod(), "agent": agent, **overrides})


def task_with(status: dict[str, Any]) -> Task:
    meta = {"name": "fix-bug", "namespace": "dev", "generation": 3}
    spec = {"prompt": "Fix the bug", "template": "claude", "displayName": "Fix the bug"}
    return Task.model_validate({"metadata": meta, "spec": spec, "status": status})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == type_]
    return dict(found)


def merge_patch(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies the status patch."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            merged[key] = merge_patch(merged[key] if isinstance(merged.get(key), dict) else {}, value)
        else:
            merged[key] = value
    return merged


def write(stored: dict[str, Any], obs: Observation, now: dt.datetime = NOW) -> dict[str, Any]:
    """One reconcile: the status the API server holds after the lifecycle's patch."""
    return merge_patch(stored, lifecycle_status(task_with(stored), obs, now))


PHASES: dict[str, tuple[Observation, Phase, str, str]] = {
    "paused, pod gone": (
        observe(paused=True, pod=None), Phase.PAUSED, "Paused", "workspace pod is stopped; its files are kept"
    ),
    "paused beats missing template": (
        observe(paused=True, pod=None, template=None), Phase.PAUSED, "Paused", "files are kept"
    ),
    "paused beats a restart due": (
        observe(paused=True, pod=None, restarting=RESTARTING), Phase.PAUSED, "Paused", "pod is stopped"
    ),
    "paused, no claim either": (
        observe(paused=True, pod=None, claim=None, lifetime=0), Phase.PAUSED, "Paused", "paused"
    ),
    "paused, pod still ready": (observe(paused=True), Phase.PENDING, "Pausing", "fix-bug-0"),
    "paused, pod not ready": (observe(paused=True, pod=pod(ready=False)), Phase.PENDING, "Pausing", "stop"),
    "paused, pod failed": (
        observe(paused=True, pod=pod("Failed", reason="Evicted")), Phase.ERROR, "PodFailed", "Evicted"
    ),
    "paused, pod stopping": (observe(paused=True, pod=pod(deleting=True)), Phase.PENDING, "Pausing", "stop"),
    # A deleted pod's containers end and the kubelet gives it a terminal phase: a pause, not a failure.
    "paused, pod stopped with exit 0": (
        observe(paused=True, pod=pod("Succeeded", ready=False, deleting=True)),
        Phase.PENDING,
        "Pausing",
        "stop",
    ),
    "paused, pod stopped with SIGTERM's exit": (
        observe(paused=True, pod=pod("Failed", ready=False, deleting=True)),
        Phase.PENDING,
        "Pausing",
        "stop",
    ),
    "deleted by someone, stopped": (
        observe(pod=pod("Failed", ready=False, deleting=True)),
        Phase.PENDING,
        "PodStopping",
        "is stopping",
    ),
    "template missing": (
        observe(template=None, template_name="gone"), Phase.ERROR, "TemplateNotFound", 'TaskTemplate "gone"'
    ),
    # A template that is there but cannot be used (invalid, or shadowing taskpod's parts) is no missing one:
    # the reason is shown (it once said "not found", hiding it).
    "template unusable, not missing": (
        observe(template=None, workspace_error="TaskTemplate claude cannot be used: x"),
        Phase.ERROR, "InvalidWorkspace", "cannot be used: x",
    ),
    "workspace refused": (
        observe(workspace_error="spec.containers[0].image: Required value"),
        Phase.ERROR, "InvalidWorkspace", "spec.containers[0].image: Required value",
    ),
    "no claim, no pod": (observe(claim=None, pod=None), Phase.PENDING, "WorkspaceCreating", "created"),
    "a claim, no pod": (observe(pod=None), Phase.PENDING, "PodPending", "waiting for its pod"),
    "a pod, its claim not seen yet": (observe(claim=None), Phase.ACTIVE, "WorkspaceReady", "ready"),
    "no pod, restart due": (
        observe(pod=None, restarting=RESTARTING), Phase.PENDING, "PodRestarting", f"pending: {RESTARTING}"
    ),
    "restart due beats no claim": (
        observe(claim=None, pod=None, restarting=RESTARTING), Phase.PENDING, "PodRestarting", "new pod starts"
    ),
    "a restart due means nothing once its pod is there": (
        observe(restarting=RESTARTING), Phase.ACTIVE, "WorkspaceReady", "ready"
    ),
    "a deleted task's claim": (
        observe(
            claim=None,
            pod=None,
            leftover="the PersistentVolumeClaim workspace-fix-bug-0 of a deleted task of the same name",
        ),
        Phase.PENDING, "PreviousWorkspace", "the PersistentVolumeClaim workspace-fix-bug-0 of a deleted task",
    ),
    "a deleted task's leftover beats a restart due": (
        observe(pod=None, leftover="the pod fix-bug-0 of a deleted task", restarting=RESTARTING),
        Phase.PENDING, "PreviousWorkspace", "pod fix-bug-0",
    ),
    "pod being deleted": (observe(pod=pod(deleting=True)), Phase.PENDING, "PodStopping", "fix-bug-0"),
    "pod failed": (observe(pod=pod("Failed", **EVICTED)), Phase.ERROR, "PodFailed", "Evicted: The node"),
    "pod failed, no reason": (observe(pod=pod("Failed")), Phase.ERROR, "PodFailed", "no reason given"),
    "pod succeeded": (observe(pod=pod("Succeeded", ready=False)), Phase.ERROR, "PodExited", "exited"),
    "node lost": (observe(pod=pod("Unknown")), Phase.UNKNOWN, "NodeLost", "kind-worker"),
    "crash loop while running": (
        observe(pod=pod(ready=False, waiting={"reason": "CrashLoopBackOff", "message": "back-off 5m0s"})),
        Phase.ERROR, "CrashLoopBackOff", "Container agent cannot start: CrashLoopBackOff: back-off 5m0s",
    ),
    "unschedulable": (
        observe(pod=pod("Pending", ready=False, node=None, scheduled=UNSCHEDULABLE)),
        Phase.PENDING, "Unschedulable", NO_FIT,
    ),
    "not on a node yet": (
        observe(pod=pod("Pending", ready=False, node=None)), Phase.PENDING, "Scheduling", "waiting for a node"
    ),
    "containers creating": (
        observe(pod=pod("Pending", ready=False, waiting={"reason": "ContainerCreating"})),
        Phase.INITIALIZING, "ContainersStarting", "containers are being created",
    ),
    "running, not ready, agent not heard yet": (
        observe(pod=pod(ready=False), agent=None), Phase.INITIALIZING, "AgentStarting", "Agent"
    ),
    "running, not ready any more": (
        observe(pod=pod(ready=False, ready_reason="ContainersNotReady")),
        Phase.INITIALIZING, "PodNotReady", "fix-bug-0 is not Ready (ContainersNotReady)",
    ),
    "running and ready": (observe(), Phase.ACTIVE, "WorkspaceReady", "ready"),
    "node ready": (observe(node=NodeView("kind-worker", True)), Phase.ACTIVE, "WorkspaceReady", "ready"),
    "its node is not ready": (
        observe(node=NodeView("kind-worker", False, "NodeStatusUnknown: Kubelet stopped posting status")),
        Phase.UNKNOWN, "NodeNotReady", "kind-worker that runs the workspace is not Ready (NodeStatusUnknown",
    ),
    "its node lost, the pod stuck deleting": (
        observe(pod=pod(deleting=True), node=NodeView("kind-worker", False)),
        Phase.UNKNOWN, "NodeNotReady", "kind-worker",
    ),
    "pausing on a lost node": (
        observe(paused=True, node=NodeView("kind-worker", False)), Phase.UNKNOWN, "NodeNotReady", "worker"
    ),
    "another node not ready": (
        observe(node=NodeView("kind-worker-2", False)), Phase.ACTIVE, "WorkspaceReady", "ready"
    ),
}  # fmt: skip


@pytest.mark.parametrize(("obs", "phase", "reason", "in_message"), PHASES.values(), ids=PHASES.keys())
def test_derive_phase(obs: Observation, phase: Phase, reason: str, in_message: str) -> None:
    verdict = derive_phase(obs)
    assert (verdict.phase, verdict.reason) == (phase, reason)
    assert in_message in verdict.message
    assert verdict.message.startswith("Pausing") == (reason == "Pausing")


@pytest.mark.parametrize("reason", sorted(FATAL_WAITING))
def test_a_container_stuck_waiting_is_an_error_naming_the_reason(reason: str) -> None:
    waiting = {"reason": reason, "message": 'Back-off pulling image "ghcr.io/acme/agent:1"'}
    verdict = derive_phase(observe(pod=pod("Pending", ready=False, waiting=waiting)))
    assert (verdict.phase, verdict.reason) == (Phase.ERROR, reason)
    assert f"Container agent cannot start: {reason}" in verdict.message
    assert "ghcr.io/acme/agent:1" in verdict.message


RUNNING = {"node_name": "kind-worker", "pod_ip": "10.244.1.7", "lifetime": 2, "spec_hash": "h1"}
PODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "running and ready": (
        raw_pod(), {"phase": "Running", "ready": True, "waiting": (), "owner_uid": TASK_UID, **RUNNING}
    ),
    "running, not ready": (raw_pod(ready=False), {"phase": "Running", "ready": False, **RUNNING}),
    "unschedulable": (
        raw_pod("Pending", ready=False, node=None, podIP=None, scheduled=UNSCHEDULABLE),
        {"phase": "Pending", "unschedulable": NO_FIT, "node_name": None, "pod_ip": None},
    ),
    "image pull": (
        raw_pod("Pending", ready=False, waiting={"reason": "ErrImagePull", "message": "not found"}),
        {"phase": "Pending", "waiting": (ContainerProblem("agent", "ErrImagePull", "not found"),), **RUNNING},
    ),
    "evicted": (raw_pod("Failed", ready=False, **EVICTED), {"phase": "Failed", **EVICTED}),
    "bare, lifetime not a number": (
        {"metadata": {"name": "p", "labels": {LIFETIME: "two"}}, "spec": {}, "status": None},
        {"name": "p", "phase": "Pending", "lifetime": None, "ready": False, "unschedulable": None,
         "spec_hash": None, "owner_uid": None},
    ),
    "waiting without reason": (
        {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {"waiting": {}}}]}},
        {"waiting": ()},
    ),
}  # fmt: skip


def with_meta(labels: dict[str, str] | None, annotations: dict[str, str] | None) -> dict[str, Any]:
    body = raw_pod()
    body["metadata"]["labels"], body["metadata"]["annotations"] = labels, annotations
    return body


# The pod's lifetime is its label; pods that the StatefulSet of earlier releases made have it as an
# annotation (its pod template's), which still counts: an upgraded task keeps counting from there.
POD_LIFETIMES: dict[str, tuple[dict[str, Any], int | None]] = {
    "label": (with_meta({LIFETIME: "4"}, {HASH: "h1"}), 4),
    "an old StatefulSet's pod: annotation": (with_meta({"taskpod.dev/task": "fix-bug"}, {LIFETIME: "3"}), 3),
    "the label wins over the annotation": (with_meta({LIFETIME: "5"}, {LIFETIME: "3"}), 5),
    "neither": (with_meta({"taskpod.dev/task": "fix-bug"}, {HASH: "h1"}), None),
    "no labels or annotations at all": (with_meta(None, None), None),
    "annotation not a number": (with_meta(None, {LIFETIME: "x"}), None),
}  # fmt: skip


@pytest.mark.parametrize(("body", "lifetime"), POD_LIFETIMES.values(), ids=POD_LIFETIMES.keys())
def test_pod_view_lifetime(body: dict[str, Any], lifetime: int | None) -> None:
    assert PodView.parse(body).lifetime == lifetime


@pytest.mark.parametrize(
    ("annotations", "spec_hash"),
    [({HASH: "h2", LIFETIME: "1"}, "h2"), ({LIFETIME: "1"}, None), (None, None)],
    ids=["ours", "an old StatefulSet's pod", "no annotations"],
)
def test_pod_view_spec_hash(annotations: dict[str, str] | None, spec_hash: str | None) -> None:
    assert PodView.parse(with_meta({}, annotations)).spec_hash == spec_hash


@pytest.mark.parametrize(("body", "expected"), PODS.values(), ids=PODS.keys())
def test_pod_view_parse(body: dict[str, Any], expected: dict[str, Any]) -> None:
    view = PodView.parse(body)
    assert {key: getattr(view, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("scheduled", "in_message"),
    [({"reason": "Unschedulable"}, ""), ({"reason": "SchedulingGated"}, "SchedulingGated"), ({}, "")],
    ids=["unschedulable, no message", "gated", "no reason"],
)
def test_not_scheduled_is_unschedulable_even_without_a_message(
    scheduled: dict[str, Any], in_message: str
) -> None:
    body = raw_pod("Pending", ready=False, node=None, scheduled={"status": "False", **scheduled})
    view = PodView.parse(body)
    assert view.unschedulable and in_message in view.unschedulable
    assert derive_phase(observe(pod=view)).phase is Phase.PENDING


def test_pod_view_parse_sees_deletion_and_which_container_waits() -> None:
    body = raw_pod(ready=False)
    body["metadata"]["deletionTimestamp"] = "2025-03-01T09:59:00Z"
    sidecar = {"name": "sidecar", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    body["status"]["containerStatuses"].append(sidecar)
    view = PodView.parse(body)
    assert view.deleting
    assert view.waiting == (ContainerProblem("sidecar", "CrashLoopBackOff", ""),)


STS_OWNER = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "name": "fix-bug",
    "uid": "s1",
    "controller": True,
}
CLAIMS: dict[str, tuple[dict[str, Any], ClaimView]] = {
    "ours": (raw_claim(), ClaimView("workspace-fix-bug-0", "c1", TASK_UID, "Task")),
    "being deleted": (
        raw_claim(deletionTimestamp="2025-03-01T09:59:00Z"),
        ClaimView("workspace-fix-bug-0", "c1", TASK_UID, "Task", deleting=True),
    ),
    "left by an upgrade: no owner": (raw_claim(ownerReferences=None), ClaimView("workspace-fix-bug-0", "c1")),
    "an owner that is not its controller": (
        raw_claim(ownerReferences=[{"kind": "Task", "uid": "u9"}]), ClaimView("workspace-fix-bug-0", "c1")
    ),
    "an old StatefulSet's, not orphaned yet": (
        raw_claim(ownerReferences=[STS_OWNER]), ClaimView("workspace-fix-bug-0", "c1", "s1", "StatefulSet")
    ),
    "bare": ({"metadata": {"name": "w"}}, ClaimView("w")),
}  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), CLAIMS.values(), ids=CLAIMS.keys())
def test_claim_view_parse(body: dict[str, Any], expected: ClaimView) -> None:
    assert ClaimView.parse(body) == expected


@pytest.mark.parametrize(
    ("previous", "status", "transition"),
    [
        (None, ConditionStatus.TRUE, NOW),
        (ConditionStatus.TRUE, ConditionStatus.TRUE, T0),
        (ConditionStatus.FALSE, ConditionStatus.TRUE, NOW),
        (ConditionStatus.UNKNOWN, ConditionStatus.FALSE, NOW),
    ],
    ids=["new", "same status keeps the time", "status flips", "unknown to false"],
)
def test_set_condition(
    previous: ConditionStatus | None, status: ConditionStatus, transition: dt.datetime
) -> None:
    old: dict[str, Any] = {"reason": "Old", "message": "old", "last_transition_time": T0}
    conditions = [other := Condition(type="PromptDelivered", status=ConditionStatus.TRUE, **old)]
    if previous is not None:
        conditions.append(Condition(type="Ready", status=previous, **old))
    result = set_condition(conditions, "Ready", status, "New", "new", 4, NOW)
    (ready,) = [c for c in result if c.type == "Ready"]
    assert (ready.status, ready.reason, ready.message, ready.observed_generation) == (status, "New", "new", 4)
    assert ready.last_transition_time == transition
    assert other in result and len(result) == 2


def test_lifecycle_status_of_an_active_task() -> None:
    status = lifecycle_status(task_with({}), observe(), NOW)
    assert (status["phase"], status["message"]) == ("Active", "Workspace is ready.")
    assert (status["observedGeneration"], status["displayName"]) == (3, "Fix the bug")
    assert (status["workspace"], status["template"]) == (WORKSPACE, CLAUDE)
    assert condition(status, "Ready") == {
        "type": "Ready",
        "status": "True",
        "reason": "WorkspaceReady",
        "message": "Workspace is ready.",
        "observedGeneration": 3,
        "lastTransitionTime": "2025-03-01T10:00:00Z",
    }
    assert condition(status, "Paused")["status"] == "False"


@pytest.mark.parametrize(
    ("obs", "workspace", "template"),
    [
        (observe(claim=None, pod=None, lifetime=0), None, CLAUDE),
        (observe(pod=None), {**WORKSPACE, "pod": None, "podIP": None}, CLAUDE),
        (observe(paused=True, pod=None), {**WORKSPACE, "pod": None, "podIP": None}, CLAUDE),
        (observe(claim=None), {**WORKSPACE, "claim": None}, CLAUDE),
        (
            observe(claim=None, pod=None, lifetime=3),
            {"claim": None, "pod": None, "podIP": None, "lifetime": 3},
            CLAUDE,
        ),
        (observe(lifetime=0), {**WORKSPACE, "lifetime": 0}, CLAUDE),
        (
            observe(pod=pod("Pending", ready=False, node=None, podIP=None)),
            {**WORKSPACE, "podIP": None},
            CLAUDE,
        ),
        (
            observe(template=None, template_name="gone"),
            WORKSPACE,
            {"name": "gone", "displayName": None, "icon": None},
        ),
    ],
    ids=[
        "nothing yet",
        "no pod",
        "paused",
        "a pod, its claim not seen yet",
        "only a lifetime",
        "a pod, no lifetime yet",
        "a pod with no IP yet",
        "template missing",
    ],
)
def test_lifecycle_status_workspace_and_template(
    obs: Observation, workspace: dict[str, Any] | None, template: dict[str, Any]
) -> None:
    status = lifecycle_status(task_with({}), obs, NOW)
    assert (status["workspace"], status["template"]) == (workspace, template)


def test_transition_times_move_only_on_a_status_change_and_other_conditions_stay() -> None:
    prompt = {"type": "PromptDelivered", "status": "True", "reason": "Sent", "message": "ok"}
    prompt["lastTransitionTime"] = "2025-03-01T08:00:00Z"
    stored = write({"conditions": [prompt]}, observe(pod=pod(ready=False)))
    assert condition(stored, "Ready")["status"] == "False"
    again = write(stored, observe(generation=4, pod=pod(ready=False)), LATER)
    assert condition(again, "Ready")["lastTransitionTime"] == "2025-03-01T10:00:00Z"
    assert condition(again, "Ready")["observedGeneration"] == 4
    ready = write(again, observe(), LATER)
    assert condition(ready, "Ready")["lastTransitionTime"] == "2025-03-01T11:00:00Z"
    assert condition(ready, "PromptDelivered") == prompt
    assert not status_changed(ready, lifecycle_status(task_with(ready), observe(), LATER))  # nothing to write


def test_paused_condition_follows_pause_and_resume() -> None:
    stopped = {"claim": "workspace-fix-bug-0", "lifetime": 2}
    stages = [
        (observe(paused=True), "False", "Pausing", "Waiting for pod fix-bug-0 to stop.", WORKSPACE),
        (observe(paused=True, pod=None), "True", "Requested", "The workspace pod is stopped.", stopped),
        (observe(pod=None), "False", "Running", "The task is not paused.", stopped),
        (observe(lifetime=3), "False", "Running", "The task is not paused.", {**WORKSPACE, "lifetime": 3}),
    ]
    stored: dict[str, Any] = {}
    for obs, expected, reason, message, workspace in stages:
        stored = write(stored, obs)
        paused = condition(stored, "Paused")
        assert (paused["status"], paused["reason"], paused["message"]) == (expected, reason, message)
        assert stored["workspace"] == workspace  # the stopped pod's name and IP are removed, not left stale
    assert (stored["phase"], condition(stored, "Ready")["status"]) == ("Active", "True")


def test_a_workspace_gone_altogether_leaves_no_stale_names() -> None:
    stored = write({}, observe())
    assert stored["workspace"] == WORKSPACE
    assert "workspace" not in write(stored, observe(claim=None, pod=None, lifetime=0))
    without_claim = {k: v for k, v in WORKSPACE.items() if k != "claim"}
    assert write(stored, observe(claim=None))["workspace"] == without_claim


@pytest.mark.parametrize(
    "obs",
    [observe(template=None), observe(template=TEMPLATE.model_copy(update={"spec": PLAIN}))],
    ids=["template deleted", "template lost its display name and icon"],
)  # fmt: skip
def test_template_info_does_not_go_stale(obs: Observation) -> None:
    assert write(write({}, observe()), obs)["template"] == {"name": "claude"}


CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "same scalar": ({"phase": "Active"}, {"phase": "Active"}, False),
    "scalar differs": ({"phase": "Active"}, {"phase": "Pending"}, True),
    "new key": ({}, {"phase": "Active"}, True),
    "empty patch": ({}, {}, False),
    "other keys kept": ({"phase": "Active", "agent": {"x": 1}}, {"phase": "Active"}, False),
    "nested subset": ({"workspace": {"pod": "p", "podIP": "1.2.3.4"}}, {"workspace": {"pod": "p"}}, False),
    "nested differs": ({"workspace": {"pod": "p"}}, {"workspace": {"pod": "q"}}, True),
    "nested None removes": ({"workspace": {"pod": "p", "podIP": "1"}}, {"workspace": {"podIP": None}}, True),
    "nested None, absent": ({"workspace": {"pod": "p"}}, {"workspace": {"podIP": None}}, False),
    "None removes a section": ({"workspace": {"pod": "p"}}, {"workspace": None}, True),
    "None for an absent section": ({}, {"workspace": None}, False),
    "new section": ({}, {"workspace": {"pod": "p"}}, True),
    "section replaces a scalar": ({"workspace": "x"}, {"workspace": {"pod": "p"}}, True),
    "same list": ({"conditions": [{"type": "Ready"}]}, {"conditions": [{"type": "Ready"}]}, False),
    "list differs": ({"conditions": [{"type": "Ready"}]}, {"conditions": [{"type": "Paused"}]}, True),
}  # fmt: skip


@pytest.mark.parametrize(("current", "desired", "changed"), CHANGES.values(), ids=CHANGES.keys())
def test_status_changed(current: dict[str, Any], desired: dict[str, Any], changed: bool) -> None:
    assert status_changed(current, desired) is changed
    assert (merge_patch(current, desired) != current) is changed


# -- the clone step --------------------------------------------------------------------------------

REPO = "https://git.example.com/acme/shop.git"
DENIED = "git fetch failed: fatal: Authentication failed for 'https://git.example.com/acme/shop.git/'"
FAILED_CLONE = {"exitCode": 1, "reason": "Error", "message": DENIED + "\n"}


def cloning_pod(clone_status: dict[str, Any] | None, phase: str = "Pending", **kwargs: Any) -> PodView:
    """A pod with the clone step, whose init container status is `clone_status` (state and lastState)."""
    body = raw_pod(phase, ready=False, waiting={"reason": "PodInitializing"}, **kwargs)
    env = [{"name": "MODEL", "value": "opus"}, {"name": "TASKPOD_REPO_URL", "value": REPO}]
    body["spec"]["initContainers"] = [{"name": "clone", "image": "ghcr.io/acme/agent:1", "env": env}]
    if clone_status is not None:
        body["status"]["initContainerStatuses"] = [{"name": "clone", "restartCount": 2, **clone_status}]
    return PodView.parse(body)


CLONES: dict[str, tuple[dict[str, Any] | None, CloneView]] = {
    "not started": (None, CloneView(REPO)),
    "running": ({"state": {"running": {"startedAt": "2025-03-01T09:00:05Z"}}}, CloneView(REPO, running=True)),
    "done": ({"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}, CloneView(REPO, done=True)),
    "failed": ({"state": {"terminated": FAILED_CLONE}}, CloneView(REPO, failed=DENIED)),
    "waiting to try again": (
        {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": FAILED_CLONE}},
        CloneView(REPO, failed=DENIED),
    ),
    "trying again": (
        {"state": {"running": {}}, "lastState": {"terminated": FAILED_CLONE}},
        CloneView(REPO, running=True),
    ),
    "failed with nothing said": (
        {"state": {"terminated": {"exitCode": 128, "reason": "Error"}}},
        CloneView(REPO, failed="exit code 128"),
    ),
}


@pytest.mark.parametrize(("clone_status", "expected"), CLONES.values(), ids=CLONES.keys())
def test_clone_view_parse(clone_status: dict[str, Any] | None, expected: CloneView) -> None:
    assert cloning_pod(clone_status).clone == expected


CLONE_PHASES: dict[str, tuple[PodView, Phase, str, str]] = {
    "cloning": (
        cloning_pod({"state": {"running": {}}}),
        Phase.INITIALIZING, "Cloning", f"Workspace is starting: cloning {REPO}.",
    ),
    "failed: git's own words": (
        cloning_pod({"state": {"terminated": FAILED_CLONE}}),
        Phase.ERROR, "CloneFailed", f"The repository {REPO} could not be cloned: {DENIED}",
    ),
    "failed, and the kubelet backs off": (
        cloning_pod(
            {"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
             "lastState": {"terminated": FAILED_CLONE}}
        ),
        Phase.ERROR, "CloneFailed", DENIED,
    ),
    "trying again after a failure": (
        cloning_pod({"state": {"running": {}}, "lastState": {"terminated": FAILED_CLONE}}),
        Phase.INITIALIZING, "Cloning", "cloning",
    ),
    "cloned, the agent starting": (
        cloning_pod({"state": {"terminated": {"exitCode": 0}}}),
        Phase.INITIALIZING, "ContainersStarting", "containers are being created",
    ),
    "cloned, the agent answering": (
        cloning_pod({"state": {"terminated": {"exitCode": 0}}}, "Running"),
        Phase.INITIALIZING, "AgentStarting", "Agent is starting",
    ),
    "a pause while the clone fails is no error": (
        replace(cloning_pod({"state": {"terminated": FAILED_CLONE}}), deleting=True),
        Phase.PENDING, "PodStopping", "is stopping",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("view", "phase", "reason", "message"), CLONE_PHASES.values(), ids=CLONE_PHASES.keys()
)
def test_the_clone_step_in_the_phase(view: PodView, phase: Phase, reason: str, message: str) -> None:
    verdict = derive_phase(observe(pod=view, agent=None))
    assert (verdict.phase, verdict.reason) == (phase, reason)
    assert message in verdict.message


def test_an_image_the_clone_step_cannot_pull_is_an_error_naming_it() -> None:
    view = cloning_pod({"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}})
    verdict = derive_phase(observe(pod=view))
    assert (verdict.phase, verdict.reason) == (Phase.ERROR, "ErrImagePull")
    assert "Container clone cannot start" in verdict.message
