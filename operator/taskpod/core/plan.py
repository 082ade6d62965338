"""The reconcile's decisions, made purely and tested by tables: what to do with the workspace's pod
(create, stop, replace), what to do with the status it composed (write it, hold it, or leave it) and
which Event tells the story, and which workspace is a deleted task's leftover."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskpod.api.models import Phase, Task
from taskpod.core.lifecycle import ClaimView, PodView, Verdict, status_changed

# Phases a task settles in, and what users wait for or must act on: reaching one is written at once.
SETTLED_PHASES = frozenset({Phase.PAUSED, Phase.ERROR, Phase.UNKNOWN})
# Phases whose Event tells the story; Active is told only when it comes back (see story_event).
TROUBLE_PHASES = frozenset({Phase.ERROR, Phase.UNKNOWN})


class Write(StrEnum):
    NONE = "none"  # nothing changed
    HOLD = "hold"  # wait a moment, so that the steps that follow fold into one write
    NOW = "now"


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def status_write(current: Mapping[str, Any], status: Mapping[str, Any], *, hold: bool) -> Write:
    """How to write `status` over `current`. The task's first status goes at once: it says the operator
    has the task. So does reaching Paused, Error or Unknown. Every other change is held a moment (when
    `hold`: holds are on) and written when the hold ends, with whatever followed it folded in:
    - Pending and Initializing while the pod starts;
    - Active with the agent's first answer, the prompt's delivery and the agent taking it up;
    - the turns of the agent's work and its reports while Active;
    - a pause's Pending while its pod stops, which a quick stop turns into Paused alone."""
    if not status_changed(current, status):
        return Write.NONE
    if not hold or not current.get("phase") or status["phase"] in SETTLED_PHASES:
        return Write.NOW
    return Write.HOLD


def story_event(old_phase: str | None, verdict: Verdict, *, automatic: bool = False) -> Event | None:
    """The Event of a phase change that is news beyond status: Paused, Error or Unknown reached, and
    Active again after Error or Unknown. The way up (Pending, Initializing, Active) is told by the
    workspace's and the prompt's own Events, and status shows it. `automatic`: the pause is lifecycle
    automation's, whose AutoPaused Event told it already, with why."""
    if old_phase == verdict.phase or (automatic and verdict.phase is Phase.PAUSED):
        return None
    if verdict.phase in SETTLED_PHASES or (verdict.phase is Phase.ACTIVE and old_phase in TROUBLE_PHASES):
        warning = verdict.phase in TROUBLE_PHASES
        return Event("Warning" if warning else "Normal", verdict.reason, verdict.message)
    return None


def leftover(task: Task, claim: ClaimView | None, pod: PodView | None) -> str | None:
    """Why the claim or pod of this task's name is not this task's (yet), or None. A deleted task of
    the same name may have left it, for garbage collection to remove: using it would make it this
    task's, files and conversation included. An earlier release's StatefulSet may still own it, for a
    moment after the upgrade retired it. One with no owner at all was left by that upgrade: this task's
    to adopt."""
    for kind, found in (("PersistentVolumeClaim", claim), ("pod", pod)):
        if found is None or found.owner_uid is None or found.owner_uid == task.metadata.uid:
            continue
        if found.owner_kind == "StatefulSet":
            return f"the {kind} {found.name} is being handed over by the StatefulSet of an earlier release"
        return f"the {kind} {found.name} of a deleted task of the same name is being removed"
    return None


class PodAction(StrEnum):
    NONE = "none"  # as it should be, or on its way there
    CREATE = "create"
    STOP = "stop"  # paused: delete the pod, keep the claim
    REPLACE = "replace"  # made from an older template or task spec: a pod's spec is immutable
    RECREATE = "recreate"  # failed or exited (evicted, its node shut down): a new one, with back-off


def pod_action(paused: bool, pod: PodView | None, wanted_hash: str | None) -> PodAction:
    """What the workspace's pod needs. `wanted_hash`: the spec hash of the pod the task and template
    make now; None when there is no such pod to make (no template, or one the API server refuses), in
    which case what runs is left alone: it is never worse than nothing."""
    if pod is not None and pod.deleting:
        return PodAction.NONE  # its successor, if any, comes once it is gone
    if paused:
        return PodAction.STOP if pod is not None else PodAction.NONE
    if wanted_hash is None:
        return PodAction.NONE
    if pod is None:
        return PodAction.CREATE
    if pod.phase in ("Failed", "Succeeded"):
        return PodAction.RECREATE
    if pod.spec_hash != wanted_hash:
        return PodAction.REPLACE
    return PodAction.NONE
