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

# Phases worth an Event of their own; the steps between them are visible in status, not in the story.
STORY_PHASES = frozenset({Phase.ACTIVE, Phase.PAUSED, Phase.ERROR, Phase.UNKNOWN})


class Write(StrEnum):
    NONE = "none"  # nothing changed
    HOLD = "hold"  # a step within a phase: wait a moment, so that the next step folds into it
    NOW = "now"


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def status_write(current: Mapping[str, Any], status: Mapping[str, Any], *, news: bool, hold: bool) -> Write:
    """How to write `status` over `current`. A step within Pending or Initializing is held (when `hold`:
    holds are on), unless it carries news (a prompt delivered, a snapshot, a report, a name) or answers
    a spec change. A new phase goes at once: Pending -> Initializing -> Active is what users watch."""
    if not status_changed(current, status):
        return Write.NONE
    phase = status["phase"]
    step = phase in (Phase.PENDING, Phase.INITIALIZING) and phase == current.get("phase")
    same_spec = current.get("observedGeneration") == status.get("observedGeneration")
    return Write.HOLD if hold and step and same_spec and not news else Write.NOW


def story_event(old_phase: str | None, verdict: Verdict) -> Event | None:
    """The Event for a phase change users watch (Active, Paused, Error, Unknown); None for the rest."""
    if old_phase == verdict.phase or verdict.phase not in STORY_PHASES:
        return None
    warning = verdict.phase in (Phase.ERROR, Phase.UNKNOWN)
    return Event("Warning" if warning else "Normal", verdict.reason, verdict.message)


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
