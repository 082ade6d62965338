"""Lifecycle automation's decisions, made purely and tested with an injected clock: when an idle or
finished task pauses on its own, when it wakes, and when a finished task is deleted.

**GitOps-safe state.** The operator never writes a Task's spec: an automatic pause lives in status
(`status.autoPause`), beside the user's `spec.paused`, and the task is paused while either says so. So
`kubectl apply` of the same manifest changes nothing, and Argo CD or Flux see no drift to undo. It ends
(the task wakes) when:
- the `taskpod.dev/wake` annotation holds another value than it did when the task paused: `kubectl task
  send` and `resume` set it to the time, and a manifest may carry it (change its value to wake);
- the user pauses (`spec.paused: true`): their pause takes over, and their resume ends both.

**The idle clock** is `status.idleSince`: set when an Active task's agent is first seen waiting for input
(idle, or done), cleared when it works or the task leaves Active. Time paused, in Error or Unknown does not
count, and an operator restart reads it back rather than starting it again; nor does a restart fire early,
as nothing counts from the operator's own start."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskpod.api.models import (
    DURATION_PATTERN,
    AgentState,
    AgentStatus,
    AutoPause,
    Phase,
    TaskSpec,
    TaskStatus,
    TaskTemplateSpec,
    rfc3339,
)
from taskpod.core.plan import Event

WAKE_ANNOTATION = "taskpod.dev/wake"
WAKE_KEPT = 128  # characters of the wake annotation's value kept as they are (see wake_token)
FINAL = frozenset({AgentState.COMPLETE, AgentState.FAILED})
_PARTS = re.compile(r"([0-9]+)([hms])")
_UNIT = {"h": 3600, "m": 60, "s": 1}


class PauseReason(StrEnum):
    """The Paused condition's reason while the task is paused: who paused it, and why."""

    REQUESTED = "Requested"  # spec.paused: a user, or their tools
    IDLE = "Idle"  # its agent waited for input for the template's idlePause
    FINISHED = "Finished"  # its agent reported complete or failed, and pauseOnFinish is on


def duration(text: str | None) -> dt.timedelta | None:
    """`30m` as a timedelta; None for none given, or for 0 (off)."""
    if not text or not re.fullmatch(DURATION_PATTERN, text):
        return None
    seconds = sum(int(n) * _UNIT[unit] for n, unit in _PARTS.findall(text))
    return dt.timedelta(seconds=seconds) if seconds else None


def spoken(delta: dt.timedelta) -> str:
    """A duration as it was most likely written: 30m, 1h30m, 45s."""
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n)
    return text or "0s"


@dataclass(frozen=True)
class Policy:
    idle_pause: dt.timedelta | None = None
    pause_on_finish: bool = False
    delete_after_finish: dt.timedelta | None = None

    @property
    def any(self) -> bool:
        return bool(self.idle_pause or self.pause_on_finish or self.delete_after_finish)


def policy(task: TaskSpec, template: TaskTemplateSpec | None) -> Policy:
    """The template's defaults, each overridden by the task's own setting when it has one."""

    def chosen(name: str) -> Any:
        mine = getattr(task, name)
        return mine if mine is not None else getattr(template, name, None) if template else None

    return Policy(
        idle_pause=duration(chosen("idle_pause")),
        pause_on_finish=bool(chosen("pause_on_finish")),
        delete_after_finish=duration(chosen("delete_after_finish")),
    )


@dataclass(frozen=True)
class Seen:
    """What the decisions read: the task's status as last written, and the agent as followed now."""

    spec_paused: bool
    wake: str  # the wake annotation's value now ("" without one)
    auto_pause: AutoPause | None
    idle_since: dt.datetime | None
    phase: Phase | None
    active_since: dt.datetime | None  # when it last became Active: the Ready condition's transition
    state: AgentState | None
    state_at: dt.datetime | None  # when the agent's state last changed (for a final one: when it finished)
    agent: AgentStatus | None  # None: not heard yet (a new pod, or an operator just started)


@dataclass(frozen=True)
class Decision:
    paused_by: PauseReason | None  # an automatic pause in effect, or None
    auto_pause: dict[str, Any] | None  # status.autoPause to write (None: as it is)
    delete: bool = False
    event: Event | None = None
    look_again: float | None = None  # seconds until a decision may change with nothing else changing


def wake_token(value: str) -> str:
    """What status.autoPause.wake keeps of the annotation's value: itself, or for a long one (an
    annotation may be 256 KiB) its hash, so that status stays small and a new value still differs."""
    if len(value) <= WAKE_KEPT:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def in_effect(auto: AutoPause | None, spec_paused: bool, wake: str) -> bool:
    """Whether an automatic pause holds the task paused: not woken, nor taken over by the user's."""
    if auto is None or auto.woken_at is not None or spec_paused:
        return False
    return (auto.wake or "") == wake_token(wake)


def paused_by(spec_paused: bool, auto: AutoPause | None, wake: str) -> PauseReason | None:
    """Who holds the task paused, if anyone (the user's pause first)."""
    if spec_paused:
        return PauseReason.REQUESTED
    if in_effect(auto, spec_paused, wake) and auto is not None:
        return PauseReason(auto.reason)
    return None


def pause_message(reason: PauseReason, policy: Policy) -> str:
    """What the Paused phase says of an automatic pause: why, and how to wake it."""
    if reason is PauseReason.FINISHED:
        why = "Paused when its agent finished (pauseOnFinish)"
    elif policy.idle_pause:
        why = f"Paused after {spoken(policy.idle_pause)} idle (idlePause)"
    else:
        why = "Paused when its agent was idle (idlePause)"
    return (
        f"{why}: its workspace pod is stopped; its files are kept. `kubectl task send` or `resume` wakes it."
    )


def idle_since(
    before: dt.datetime | None, phase: Phase, agent: AgentStatus | None, now: dt.datetime
) -> dt.datetime | None:
    """status.idleSince for a task now in `phase`, its agent as followed now; `before`: as status has it."""
    if phase is not Phase.ACTIVE:
        return None
    if agent is AgentStatus.RUNNING:
        return None
    if agent is AgentStatus.STABLE:
        return before or now
    return before  # not heard yet (a restart): the clock stands, neither reset nor started


def _finished_at(seen: Seen) -> dt.datetime | None:
    return seen.state_at if seen.state in FINAL else None


def decide(policy: Policy, seen: Seen, now: dt.datetime) -> Decision:
    """The automatic pause in effect (or starting now), a wake, and whether to delete the task."""
    auto, later = seen.auto_pause, list[float]()
    woken = auto is not None and auto.woken_at is None and not in_effect(auto, seen.spec_paused, seen.wake)
    if woken and auto is not None:
        by = "the user's pause took over" if seen.spec_paused else f"the {WAKE_ANNOTATION} annotation changed"
        record = {**auto.dump(), "wokenAt": rfc3339(now)}
        event = None if seen.spec_paused else Event("Normal", "Woken", f"Waking the task: {by}.")
        decision = Decision(None, record, event=event)
    elif in_effect(auto, seen.spec_paused, seen.wake) and auto is not None:
        decision = Decision(PauseReason(auto.reason), None)
    elif seen.spec_paused or seen.phase is not Phase.ACTIVE or seen.agent is not AgentStatus.STABLE:
        # Only an agent heard waiting now is paused: not one that works, nor one not heard since a restart.
        decision = Decision(None, None)
    elif (why := _due(policy, seen, now, later)) is not None:
        reason, message = why
        wake = wake_token(seen.wake)
        record = {"reason": reason.value, "pausedAt": rfc3339(now), "wake": wake, "wokenAt": None}
        decision = Decision(reason, record, event=Event("Normal", "AutoPaused", message))
    else:
        decision = Decision(None, None)
    finished = _finished_at(seen)
    if policy.delete_after_finish and finished is not None and seen.agent is not AgentStatus.RUNNING:
        left = (finished + policy.delete_after_finish - now).total_seconds()
        if left <= 0:
            message = (
                f"Deleting the task, its workspace and its volume: it finished "
                f"({seen.state.value if seen.state else 'done'}) {spoken(policy.delete_after_finish)} ago "
                "(deleteAfterFinish)."
            )
            return Decision(
                decision.paused_by, decision.auto_pause, True, Event("Normal", "Deleting", message), None
            )
        later.append(left)
    look_again = min(later) if later else None
    return Decision(decision.paused_by, decision.auto_pause, False, decision.event, look_again)


def _due(policy: Policy, seen: Seen, now: dt.datetime, later: list[float]) -> tuple[PauseReason, str] | None:
    """An Active task not paused by anyone: the automatic pause due now, if any (and when to look again
    for the next one, into `later`)."""
    finished = _finished_at(seen)
    if (
        policy.pause_on_finish
        and finished is not None
        # Finished in this stretch of Active: a task resumed after its finish (to look at it, or to give
        # it more to do) is not paused again for the same finish.
        and (seen.active_since is None or finished >= seen.active_since)
    ):
        assert seen.state is not None
        return PauseReason.FINISHED, f"Paused: the agent reported {seen.state.value} (pauseOnFinish)."
    if policy.idle_pause:
        # Not idle yet by status: its clock starts now, with this reconcile's status write (idle_since).
        left = ((seen.idle_since or now) + policy.idle_pause - now).total_seconds()
        if left <= 0:
            return PauseReason.IDLE, f"Paused after {spoken(policy.idle_pause)} idle (idlePause)."
        later.append(left)
    return None


def seen_from(status: Mapping[str, Any], spec_paused: bool, wake: str, agent: AgentStatus | None) -> Seen:
    """The decisions' inputs from a task's status as stored (the API server's JSON)."""
    parsed = TaskStatus.model_validate(status)
    ready = next((c for c in parsed.conditions or [] if c.type == "Ready"), None)
    active_since = ready.last_transition_time if ready is not None and ready.status == "True" else None
    state = parsed.state
    return Seen(
        spec_paused=spec_paused,
        wake=wake,
        auto_pause=parsed.auto_pause,
        idle_since=parsed.idle_since,
        phase=parsed.phase,
        active_since=active_since,
        state=state.state if state else None,
        state_at=state.timestamp if state else None,
        agent=agent,
    )
