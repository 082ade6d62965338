"""The lifecycle rules: phase from what the cluster reports, the Ready/Paused conditions, the status patch."""

from __future__ import annotations

import datetime as dt
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
    ContainerProblem,
    NodeView,
    Observation,
    PodView,
    StatefulSetView,
    derive_phase,
    lifecycle_status,
    set_condition,
    status_changed,
)

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC)
LATER = dt.datetime(2025, 3, 1, 11, 0, tzinfo=dt.UTC)
LIFETIME = "taskpod.dev/lifetime"
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
        "metadata": {"name": "task-fix-bug-0", "namespace": "dev", "annotations": {LIFETIME: "2"}},
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


def raw_statefulset(**spec: Any) -> dict[str, Any]:
    claim_spec = {"storageClassName": "standard", "resources": {"requests": {"storage": "10Gi"}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "task-fix-bug", "annotations": {"taskpod.dev/spec-hash": "h1"}},
        "spec": {
            "replicas": 1,
            "template": {"metadata": {"annotations": {LIFETIME: "2"}}, "spec": {}},
            "volumeClaimTemplates": [{"metadata": {"name": "workspace"}, "spec": claim_spec}],
            **spec,
        },
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
STS = StatefulSetView.parse(raw_statefulset())
WORKSPACE = {"statefulSet": "task-fix-bug", "lifetime": 2, "pod": "task-fix-bug-0", "podIP": "10.244.1.7"}
CLAUDE = {"name": "claude", "displayName": "Claude Code", "icon": "https://x/claude.svg"}
STORAGE = {"size": "10Gi", "storageClassName": "standard"}
NO_STORAGE = {"size": None, "storageClassName": None}


def observe(**overrides: Any) -> Observation:
    fields: dict[str, Any] = dict(
        generation=3, paused=False, template_name="claude", template=TEMPLATE, statefulset=STS
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
    "paused, pod gone": (observe(paused=True, pod=None), Phase.PAUSED, "Paused", "paused"),
    "paused beats missing template": (
        observe(paused=True, pod=None, template=None), Phase.PAUSED, "Paused", "scaled to zero"
    ),
    "paused, pod still ready": (observe(paused=True), Phase.PENDING, "Pausing", "task-fix-bug-0"),
    "paused, pod not ready": (observe(paused=True, pod=pod(ready=False)), Phase.PENDING, "Pausing", "stop"),
    "paused, pod failed": (
        observe(paused=True, pod=pod("Failed", reason="Evicted")), Phase.ERROR, "PodFailed", "Evicted"
    ),
    "paused, pod stopping": (observe(paused=True, pod=pod(deleting=True)), Phase.PENDING, "Pausing", "stop"),
    "template missing": (
        observe(template=None, template_name="gone"), Phase.ERROR, "TemplateNotFound", 'TaskTemplate "gone"'
    ),
    "template missing beats workspace error": (
        observe(template=None, workspace_error="x"), Phase.ERROR, "TemplateNotFound", '"claude"'
    ),
    "workspace refused": (
        observe(workspace_error="spec.containers[0].image: Required value"),
        Phase.ERROR, "InvalidWorkspace", "spec.containers[0].image: Required value",
    ),
    "no statefulset": (observe(statefulset=None, pod=None), Phase.PENDING, "WorkspaceCreating", "created"),
    "no pod": (observe(pod=None), Phase.PENDING, "PodPending", "waiting for its pod"),
    "pod being deleted": (observe(pod=pod(deleting=True)), Phase.PENDING, "PodStopping", "task-fix-bug-0"),
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
        Phase.INITIALIZING, "PodNotReady", "task-fix-bug-0 is not Ready (ContainersNotReady)",
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


RUNNING = {"node_name": "kind-worker", "pod_ip": "10.244.1.7", "lifetime": 2}
PODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "running and ready": (raw_pod(), {"phase": "Running", "ready": True, "waiting": (), **RUNNING}),
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
        {"metadata": {"name": "p", "annotations": {LIFETIME: "two"}}, "spec": {}, "status": None},
        {"name": "p", "phase": "Pending", "lifetime": None, "ready": False, "unschedulable": None},
    ),
    "waiting without reason": (
        {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {"waiting": {}}}]}},
        {"waiting": ()},
    ),
}  # fmt: skip


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


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (raw_statefulset(), StatefulSetView("task-fix-bug", 1, 2, "h1", STORAGE)),
        (raw_statefulset(replicas=0), StatefulSetView("task-fix-bug", 0, 2, "h1", STORAGE)),
        (
            raw_statefulset(template={"metadata": {"annotations": {LIFETIME: "x"}}}, volumeClaimTemplates=[]),
            StatefulSetView("task-fix-bug", 1, 0, "h1", NO_STORAGE),
        ),
        ({"metadata": {"name": "s"}, "spec": {"template": {}}}, StatefulSetView("s", 1, 0, None, NO_STORAGE)),
    ],
    ids=["running", "scaled to zero", "lifetime not a number, no claims", "bare"],
)  # fmt: skip
def test_statefulset_view_parse(body: dict[str, Any], expected: StatefulSetView) -> None:
    assert StatefulSetView.parse(body) == expected


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
        (observe(statefulset=None, pod=None), None, CLAUDE),
        (observe(pod=None), {**WORKSPACE, "pod": None, "podIP": None}, CLAUDE),
        (observe(paused=True, pod=None), {**WORKSPACE, "pod": None, "podIP": None}, CLAUDE),
        (
            observe(template=None, template_name="gone"),
            WORKSPACE,
            {"name": "gone", "displayName": None, "icon": None},
        ),
    ],
    ids=["no statefulset", "no pod", "paused", "template missing"],
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
    stages = [
        (observe(paused=True), "False", "Pausing"),
        (observe(paused=True, pod=None), "True", "Paused"),
        (observe(pod=None), "False", "Running"),
        (observe(), "False", "Running"),
    ]
    stored: dict[str, Any] = {}
    for obs, expected, reason in stages:
        stored = write(stored, obs)
        paused = condition(stored, "Paused")
        assert (paused["status"], paused["reason"]) == (expected, reason)
    assert (stored["phase"], condition(stored, "Ready")["status"]) == ("Active", "True")


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
