"""The task's phase and conditions, derived purely from what the cluster reports.

Coder took the first status that is not "active" from build, agent and app health, in that order; we do
the same with the volume claim, the pod, its conditions and its container states.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskpod.api.models import AgentStatus, Condition, ConditionStatus, Phase, Task, TaskTemplate

LIFETIME_LABEL = "taskpod.dev/lifetime"  # on the pod: which of its task's pods it is (1, 2, ...)
LIFETIME_ANNOTATION = LIFETIME_LABEL  # where the StatefulSet of earlier releases put it
AGENT_PORT_NAME = "agentapi"  # the workspace container's port where AgentAPI listens
SPEC_HASH_ANNOTATION = "taskpod.dev/spec-hash"
CLONE_CONTAINER = "clone"  # the workspace pod's init container that clones the task's repository
CLONE_URL_ENV = "TASKPOD_REPO_URL"  # its variable naming the repository
READY = "Ready"
PAUSED = "Paused"

# Container waiting reasons a kubelet will not get past by itself: the user must act.
FATAL_WAITING = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class ContainerProblem:
    container: str
    reason: str
    message: str


@dataclass(frozen=True)
class PodView:
    """The facts about a workspace pod that decide the phase."""

    name: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    uid: str = ""
    deleting: bool = False
    node_name: str | None = None
    pod_ip: str | None = None
    ready: bool = False
    not_ready: str | None = None  # the Ready condition's reason and message while it is not True
    unschedulable: str | None = None  # the scheduler's message while PodScheduled is False
    waiting: tuple[ContainerProblem, ...] = ()
    reason: str | None = None
    message: str | None = None
    lifetime: int | None = None
    agent_port: int | None = None  # the container port named "agentapi": where its agent listens
    owner_uid: str | None = None  # its controller's (the Task's) uid
    owner_kind: str | None = None  # its controller's kind: a Task, or an earlier release's StatefulSet
    spec_hash: str | None = None  # of what it was made from (see workspace.pod)
    clone: CloneView | None = None  # its clone step, when it has a repository

    @property
    def ended_why(self) -> str:
        """Why a failed or exited pod ended, as its status says: "Evicted: The node was low on ..."."""
        return ": ".join(x for x in (self.reason, self.message) if x).rstrip(".") or "no reason given"

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> PodView:
        meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {}) or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scheduled = conditions.get("PodScheduled", {})
        waiting = tuple(
            ContainerProblem(cs.get("name", ""), w.get("reason", ""), w.get("message", ""))
            for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
            if (w := (cs.get("state") or {}).get("waiting")) and w.get("reason")
        )
        annotations = meta.get("annotations") or {}
        said = ((meta.get("labels") or {}).get(LIFETIME_LABEL), annotations.get(LIFETIME_ANNOTATION))
        lifetime = next((int(x) for x in said if isinstance(x, str) and x.isdigit()), None)
        return cls(
            name=meta.get("name", ""),
            phase=status.get("phase") or "Pending",
            uid=meta.get("uid", ""),
            deleting=bool(meta.get("deletionTimestamp")),
            node_name=spec.get("nodeName"),
            pod_ip=status.get("podIP"),
            ready=conditions.get("Ready", {}).get("status") == "True",
            not_ready=_why_not(conditions.get("Ready")),
            unschedulable=_unschedulable(scheduled),
            waiting=waiting,
            reason=status.get("reason"),
            message=status.get("message"),
            lifetime=lifetime,
            agent_port=_agent_port(spec),
            owner_uid=_controller(meta, "uid"),
            owner_kind=_controller(meta, "kind"),
            spec_hash=annotations.get(SPEC_HASH_ANNOTATION),
            clone=CloneView.parse(spec, status),
        )


@dataclass(frozen=True)
class CloneView:
    """The pod's clone step (its init container), as its status tells it."""

    url: str
    running: bool = False
    done: bool = False
    failed: str | None = None  # git's words from its last failed attempt, until one succeeds

    @classmethod
    def parse(cls, spec: Mapping[str, Any], status: Mapping[str, Any]) -> CloneView | None:
        container = next(
            (c for c in spec.get("initContainers") or [] if c.get("name") == CLONE_CONTAINER), None
        )
        if container is None:
            return None
        url = next((e.get("value") for e in container.get("env") or [] if e.get("name") == CLONE_URL_ENV), "")
        found: Mapping[str, Any] = next(
            (c for c in status.get("initContainerStatuses") or [] if c.get("name") == CLONE_CONTAINER), {}
        )
        state, last = found.get("state") or {}, (found.get("lastState") or {}).get("terminated")
        ended = state.get("terminated")
        if ended is not None and ended.get("exitCode") == 0:
            return cls(url or "", done=True)
        if ended is None and "running" not in state and last is not None and last.get("exitCode") != 0:
            ended = last  # waiting to try again
        failed = None
        if ended is not None:
            failed = (ended.get("message") or "").strip() or f"exit code {ended.get('exitCode')}"
        return cls(url or "", running="running" in state, failed=failed)


def _controller(meta: Mapping[str, Any], field: str) -> str | None:
    """A field (uid, kind) of the object's controller: its owner with controller: true."""
    return next((o.get(field) for o in meta.get("ownerReferences") or [] if o.get("controller")), None)


def _why_not(condition: Mapping[str, Any] | None) -> str | None:
    """A condition that is not True, as a user reads it in kubectl describe: its reason and message."""
    if not condition or condition.get("status") == "True":
        return None
    return ": ".join(str(x) for x in (condition.get("reason"), condition.get("message")) if x) or None


@dataclass(frozen=True)
class NodeView:
    """A node's Ready condition, as `kubectl get nodes` shows it."""

    name: str
    ready: bool
    why_not: str | None = None  # reason and message while not Ready

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> NodeView:
        conditions = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
        ready = conditions.get("Ready")
        return cls(
            name=(body.get("metadata") or {}).get("name", ""),
            ready=ready is not None and ready.get("status") == "True",
            why_not=_why_not(ready) if ready is not None else "it has not reported its status",
        )


def _agent_port(spec: Mapping[str, Any]) -> int | None:
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == AGENT_PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


def _unschedulable(scheduled: Mapping[str, Any]) -> str | None:
    """The scheduler's own sentence when no node fits; a short note for its transient states."""
    if scheduled.get("status") != "False":
        return None
    if scheduled.get("reason") == "Unschedulable":
        return str(scheduled.get("message") or "no node fits the pod")
    return f"waiting to be scheduled ({scheduled.get('reason') or 'no reason given'})"


@dataclass(frozen=True)
class ClaimView:
    """The workspace's volume claim: whose it is. Its status (bound or not) shows in the pod's."""

    name: str
    uid: str = ""
    owner_uid: str | None = None  # its controller's (the Task's) uid; None for one left by an upgrade
    owner_kind: str | None = None
    deleting: bool = False

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> ClaimView:
        meta = body.get("metadata", {})
        return cls(
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            owner_uid=_controller(meta, "uid"),
            owner_kind=_controller(meta, "kind"),
            deleting=bool(meta.get("deletionTimestamp")),
        )


AGENT_GRACE = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class AgentView:
    """What the operator has heard from the workspace's agent (AgentAPI) in the current pod."""

    lifetime: int
    answered: bool = False  # it has answered at least once since this pod started
    healthy: bool = False  # the last contact worked
    status: AgentStatus | None = None
    agent_type: str | None = None
    reason: str | None = None  # why the last contact failed
    silent_since: dt.datetime | None = None  # first failure after the last success
    last_message: str | None = None  # the newest agent message


@dataclass(frozen=True)
class Observation:
    """Everything the phase depends on, gathered by the shell from its watches and the agent."""

    generation: int
    paused: bool
    template_name: str
    template: TaskTemplate | None
    claim: ClaimView | None
    pod: PodView | None
    lifetime: int = 0  # the current (or, with no pod, the last) pod's
    workspace_error: str | None = None  # the API server refused the workspace we built (a template problem)
    restarting: str | None = None  # why the previous pod went and when the next starts, while it waits
    agent: AgentView | None = None  # None: nothing heard from the agent of the current pod yet
    node: NodeView | None = None  # the pod's node, where the operator may watch nodes
    leftover: str | None = None  # why what is there is not this task's yet (see plan.leftover)
    now: dt.datetime | None = None
    agent_grace: dt.timedelta = AGENT_GRACE  # how long an agent may be silent before the phase is Unknown
    pause_reason: str = "Requested"  # who paused it, while paused: Requested (spec.paused), Idle, Finished
    pause_message: str | None = None  # an automatic pause's why and how to wake it


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str  # CamelCase, for the Ready condition and Events
    message: str


def derive_phase(obs: Observation) -> Verdict:
    """The task's phase, with a reason and one human sentence, errors first."""
    if obs.paused:
        if obs.pod is None:
            message = obs.pause_message or "Task is paused: its workspace pod is stopped; its files are kept."
            return Verdict(Phase.PAUSED, "Paused", message)
        # On its way down, as Coder's task was while its stop build ran: Pending, whatever step the pod
        # is at, so that each step is not a status write of its own. Its conversation is kept first; its
        # agent, being stopped, is no longer followed. A pod that has failed, or whose node is lost, says so.
        running = _workspace_verdict(obs, agent_needed=False)
        if running.phase in (Phase.ERROR, Phase.UNKNOWN):
            return running
        return Verdict(Phase.PENDING, "Pausing", f"Pausing: waiting for pod {obs.pod.name} to stop.")
    if obs.workspace_error is not None:  # a template that is there, but cannot be used: say why
        return Verdict(Phase.ERROR, "InvalidWorkspace", obs.workspace_error)
    if obs.template is None:
        return Verdict(
            Phase.ERROR,
            "TemplateNotFound",
            f'TaskTemplate "{obs.template_name}" not found in this namespace: create it, '
            "or set spec.template to an existing one.",
        )
    return _workspace_verdict(obs)


def _stopping(pod: PodView) -> Verdict:
    return Verdict(
        Phase.PENDING, "PodStopping", f"Workspace is pending: the previous pod {pod.name} is stopping."
    )


def _workspace_verdict(obs: Observation, agent_needed: bool = True) -> Verdict:
    pod = obs.pod
    if obs.leftover is not None:
        return Verdict(
            Phase.PENDING,
            "PreviousWorkspace",
            f"Workspace is pending: {obs.leftover}.",
        )
    if obs.restarting is not None and (pod is None or pod.deleting):
        return Verdict(Phase.PENDING, "PodRestarting", f"Workspace is pending: {obs.restarting}")
    if pod is None and obs.claim is None:
        return Verdict(Phase.PENDING, "WorkspaceCreating", "Workspace is being created.")
    if pod is None:
        return Verdict(
            Phase.PENDING, "PodPending", "Workspace is pending: waiting for its pod to be created."
        )
    if pod.deleting and pod.phase in ("Failed", "Succeeded"):
        # Its containers ended because it is being deleted (a pause, a replacement): the kubelet gives a
        # deleted pod a terminal phase once they stop. Not a failure (found on a real node: kwok pods
        # never end, so the pause went Active, Error, Paused).
        return _stopping(pod)
    if pod.phase == "Failed":
        return Verdict(Phase.ERROR, "PodFailed", f"Workspace pod {pod.name} failed: {pod.ended_why}.")
    if pod.phase == "Succeeded":
        return Verdict(
            Phase.ERROR, "PodExited", f"Workspace pod {pod.name} exited; the agent should keep running."
        )
    if pod.phase == "Unknown":
        return Verdict(
            Phase.UNKNOWN, "NodeLost", f"Lost contact with node {pod.node_name} that runs the workspace."
        )
    node = obs.node
    if node is not None and node.name == pod.node_name and not node.ready:
        detail = f" ({node.why_not.rstrip('.')})" if node.why_not else ""
        return Verdict(
            Phase.UNKNOWN, "NodeNotReady", f"Node {node.name} that runs the workspace is not Ready{detail}."
        )
    if pod.deleting:
        return _stopping(pod)
    clone = pod.clone
    if clone is not None and clone.failed is not None:  # the kubelet tries again, with back-off
        return Verdict(
            Phase.ERROR, "CloneFailed", f"The repository {clone.url} could not be cloned: {clone.failed}"
        )
    for problem in pod.waiting:
        if problem.reason in FATAL_WAITING:
            detail = f": {problem.message}" if problem.message else ""
            return Verdict(
                Phase.ERROR,
                problem.reason,
                f"Container {problem.container} cannot start: {problem.reason}{detail}",
            )
    if pod.unschedulable is not None:
        return Verdict(Phase.PENDING, "Unschedulable", f"Workspace is pending: {pod.unschedulable}")
    if not pod.node_name:
        return Verdict(
            Phase.PENDING, "Scheduling", "Workspace is pending: waiting for a node and its volume."
        )
    if pod.phase == "Pending" and clone is not None and clone.running:
        return Verdict(Phase.INITIALIZING, "Cloning", f"Workspace is starting: cloning {clone.url}.")
    if pod.phase == "Pending":
        return Verdict(
            Phase.INITIALIZING,
            "ContainersStarting",
            "Workspace is starting: its containers are being created.",
        )
    if not pod.ready:
        if agent_needed and obs.agent is not None and obs.agent.answered:  # it ran; its kubelet says no more
            detail = f" ({pod.not_ready.rstrip('.')})" if pod.not_ready else ""
            return Verdict(
                Phase.INITIALIZING, "PodNotReady", f"Workspace pod {pod.name} is not Ready{detail}."
            )
        return Verdict(Phase.INITIALIZING, "AgentStarting", "Agent is starting.")
    if not agent_needed:
        return Verdict(Phase.ACTIVE, "WorkspaceReady", "Workspace is ready.")
    return _agent_verdict(obs)


def _agent_verdict(obs: Observation) -> Verdict:
    """The pod is Ready; Active also needs AgentAPI answering (Coder's app health)."""
    agent = obs.agent
    if agent is None or not agent.answered:
        reason = f" ({agent.reason})" if agent is not None and agent.reason else ""
        return Verdict(Phase.INITIALIZING, "AgentStarting", f"Agent is starting{reason}.")
    if not agent.healthy and agent.silent_since is not None and obs.now is not None:
        silent = obs.now - agent.silent_since
        if silent >= obs.agent_grace:
            return Verdict(
                Phase.UNKNOWN,
                "AgentUnreachable",
                f"The agent has not answered for {int(silent.total_seconds())}s: {agent.reason}.",
            )
    return Verdict(Phase.ACTIVE, "WorkspaceReady", "Workspace is ready.")


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[Condition]:
    """Replace one condition; its lastTransitionTime moves only when its status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != status
    condition = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=now if changed or previous is None else previous.last_transition_time,
    )
    if previous is None:
        return [*conditions, condition]
    return [condition if c.type == type_ else c for c in conditions]  # in place: no reordering churn


def lifecycle_status(
    task: Task, obs: Observation, now: dt.datetime, verdict: Verdict | None = None
) -> dict[str, Any]:
    """The parts of status that the lifecycle owns, as a merge patch (other writers own the rest).
    `verdict`: derive_phase(obs), when the caller has it already."""
    verdict = verdict or derive_phase(obs)
    conditions = list(task.status.conditions or [])
    active = verdict.phase is Phase.ACTIVE
    conditions = set_condition(
        conditions,
        READY,
        ConditionStatus.TRUE if active else ConditionStatus.FALSE,
        verdict.reason,
        verdict.message,
        obs.generation,
        now,
    )
    if obs.paused and obs.pod is None:
        paused = (ConditionStatus.TRUE, obs.pause_reason, "The workspace pod is stopped.")
    elif obs.paused:
        paused = (
            ConditionStatus.FALSE,
            "Pausing",
            f"Waiting for pod {obs.pod.name} to stop." if obs.pod else "",
        )
    else:
        paused = (ConditionStatus.FALSE, "Running", "The task is not paused.")
    conditions = set_condition(conditions, PAUSED, *paused, obs.generation, now)

    workspace: dict[str, Any] = {}
    if obs.claim is not None or obs.pod is not None or obs.lifetime:
        workspace = {
            "claim": obs.claim.name if obs.claim else None,
            "pod": obs.pod.name if obs.pod else None,
            "podIP": obs.pod.pod_ip if obs.pod else None,
            "lifetime": obs.lifetime,
        }
    spec = obs.template.spec if obs.template is not None else None
    # Explicit None removes what a previous template showed: a merge patch keeps keys it is not told to drop.
    template = {
        "name": obs.template_name,
        "displayName": spec.display_name if spec else None,
        "icon": spec.icon if spec else None,
    }
    return {
        "phase": verdict.phase.value,
        "message": verdict.message,
        "displayName": task.spec.display_name or task.status.display_name,
        "conditions": [c.dump() for c in conditions],
        "workspace": workspace or None,
        "template": template,
        "observedGeneration": obs.generation,
    }


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True when a merge patch of `desired` onto `current` would change anything."""
    for key, value in desired.items():
        if isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            if status_changed(current[key], value):
                return True
        elif value is None:
            if current.get(key) is not None:
                return True
        elif current.get(key) != value:
            return True
    return False
