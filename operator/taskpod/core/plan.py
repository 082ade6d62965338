"""The reconcile's decisions, made purely and tested by tables: what to do with the status it composed
(write it, hold it, or leave it) and which Event tells the story; which workspace is a deleted task's
leftover; which pod its StatefulSet controller will never replace. More join them with the workspace as
a Pod."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskpod.api.models import Phase, Task
from taskpod.core.lifecycle import FATAL_WAITING, PodView, StatefulSetView, Verdict, status_changed

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


def leftover(task: Task, sts: StatefulSetView | None, pod: PodView | None) -> str | None:
    """What a deleted task of the same name left, that garbage collection has not removed yet: applying
    over it would make it this task's, files and conversation included."""
    if sts is not None and sts.owner_uid is not None and sts.owner_uid != task.metadata.uid:
        return f"StatefulSet {sts.name}"
    if pod is not None and pod.owner_uid is not None and (sts is None or pod.owner_uid != sts.uid):
        return f"pod {pod.name}"
    return None


def stuck_at_an_older_revision(sts: StatefulSetView, pod: PodView) -> bool:
    """A pod of an older revision that cannot start (a bad image, a crash loop): with OrderedReady, its
    StatefulSet controller waits for it to be ready before replacing it, which it never will be."""
    older = sts.update_revision is not None and pod.revision not in (None, sts.update_revision)
    failing = pod.phase == "Failed" or any(p.reason in FATAL_WAITING for p in pod.waiting)
    return older and failing and not pod.ready and not pod.deleting
