"""The agent's side of a task's status, derived purely: state, agent health and the prompt record.

Coder's rules: working/idle come from AgentAPI's screen watcher (running/stable); complete and failed
only from the agent's own report, and an idle never overwrites them; while the workspace starts, the
state is a synthesised "working" with a message such as "Agent is starting".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

from taskpod.api.models import (
    AgentState,
    AgentStatus,
    Condition,
    ConditionStatus,
    GitState,
    Phase,
    PromptStatus,
    StateReport,
    Task,
    rfc3339,
)
from taskpod.core.lifecycle import (
    AgentView,
    Observation,
    Verdict,
    derive_phase,
    lifecycle_status,
    set_condition,
)

GIT_FIELDS = tuple(to_camel(name) for name in GitState.model_fields)  # status.repository's keys
PUSH_FIELDS = ("pushed", "pushError")

SUMMARY_CHARS = 120
PROMPT_DELIVERED = "PromptDelivered"
FINAL = frozenset({AgentState.COMPLETE, AgentState.FAILED})


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


BULLET = "●"  # how Claude Code marks what it says and does on its screen
TOOL_CALL = re.compile(r"[A-Za-z_][\w.:-]*\(.*\)")  # ● Write(hello.txt), ● Bash(npm test), ● mcp__x__y(...)


def summary(text: str | None) -> str | None:
    """One short line from an agent message: what the agent last said, trimmed.

    Claude Code's turn, as AgentAPI reads it off the terminal, is a screen of "●" bullets: its tool calls
    ("● Write(hello.txt)") and its words ("● I wrote hello.txt."), then a footer. Its last words are what
    it said; while it has only called tools, its last call says what it is doing. Any other message gives
    its first non-empty line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    said = [ln[len(BULLET) :].strip() for ln in lines if ln.startswith(BULLET)]
    words = [s for s in said if s and not TOOL_CALL.fullmatch(s)]
    line = words[-1] if words else said[-1] if said else lines[0] if lines else ""
    line = " ".join(line.split())
    if not line:
        return None  # nothing but blanks: nothing to show
    return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 1] + "…"


@dataclass(frozen=True)
class Report:
    """The agent's own account (complete or failed, with a message and a link), for one lifetime."""

    state: AgentState
    message: str
    uri: str | None
    lifetime: int
    timestamp: dt.datetime


def derive_state(
    previous: StateReport | None,
    verdict: Verdict,
    agent: AgentView | None,
    report: Report | None,
    lifetime: int,
    now: dt.datetime,
) -> dict[str, Any] | None:
    """status.state: what the agent is doing; its timestamp moves only when the state does."""
    wanted: tuple[AgentState, str | None, str | None]
    if report is not None and report.lifetime >= lifetime:
        wanted = (report.state, report.message, report.uri)
        stamp = report.timestamp
    elif previous is not None and previous.state in FINAL:
        return None  # the agent's own final word stands: the screen watcher never overwrites it
    elif verdict.reason == "Pausing":
        return None  # the agent is being stopped, not starting: its last state stands
    elif verdict.phase in (Phase.PENDING, Phase.INITIALIZING):
        wanted, stamp = (AgentState.WORKING, verdict.message, None), now
    elif verdict.phase is Phase.ACTIVE and agent is not None and agent.status is not None:
        state = AgentState.WORKING if agent.status is AgentStatus.RUNNING else AgentState.IDLE
        message = summary(agent.last_message)  # None until the agent has said something
        wanted, stamp = (state, message, None), now
    else:
        return None  # paused, error or unknown: the last known state stays as it was
    state, message, uri = wanted
    if previous is not None and previous.state == state and previous.timestamp is not None:
        stamp = previous.timestamp
    return {
        "state": state.value,
        "message": message,
        "uri": uri,
        "timestamp": rfc3339(stamp),
    }


def agent_status(agent: AgentView | None) -> dict[str, Any] | None:
    if agent is None:
        return None
    return {
        "status": agent.status.value if agent.status else None,
        "type": agent.agent_type,
        "healthy": agent.healthy,
        "reason": None if agent.healthy else agent.reason,
    }


@dataclass(frozen=True)
class DeliveryFailure:
    """Why the prompt has not reached the agent yet although the agent was ready for it."""

    attempts: int  # failed attempts in a row
    reason: str
    retry_in: float  # seconds until the next attempt


def prompt_condition(
    prompt: str, delivered: PromptStatus | None, failure: DeliveryFailure | None = None
) -> tuple[ConditionStatus, str, str]:
    """PromptDelivered: True once the current spec.prompt reached the agent."""
    if delivered is not None and delivered.sha256 == prompt_sha(prompt):
        return ConditionStatus.TRUE, "Delivered", "The prompt was delivered to the agent."
    if failure is not None:
        times = "once" if failure.attempts == 1 else f"{failure.attempts} times"
        return (
            ConditionStatus.FALSE,
            "DeliveryFailed",
            f"The agent refused the prompt {times}; retrying in {failure.retry_in:.0f}s: {failure.reason}",
        )
    if delivered is not None and delivered.sha256:
        return (
            ConditionStatus.FALSE,
            "PromptChanged",
            "The edited prompt will be delivered when the agent is ready.",
        )
    return ConditionStatus.FALSE, "Waiting", "The prompt will be delivered when the agent is ready."


def prompt_record(sha: str, delivered_at: dt.datetime, lifetime: int) -> dict[str, Any]:
    return {
        "sha256": sha,
        "deliveredAt": rfc3339(delivered_at),
        "lifetime": lifetime,
    }


def was_delivered(prompt: str, delivered: Mapping[str, Any] | None) -> bool:
    return bool(delivered) and (delivered or {}).get("sha256") == prompt_sha(prompt)


def task_status(
    task: Task,
    obs: Observation,
    now: dt.datetime,
    prompt: Mapping[str, Any] | None = None,
    snapshot: Mapping[str, Any] | None = None,
    report: Report | None = None,
    delivery: DeliveryFailure | None = None,
    verdict: Verdict | None = None,
    git: GitState | None = None,
) -> dict[str, Any]:
    """The whole status patch: the lifecycle's part plus the agent's state, health and prompt record, and
    the checkout's git state when the workspace reported it. `verdict`: derive_phase(obs), when the
    caller has it already."""
    verdict = verdict or derive_phase(obs)
    status = lifecycle_status(task, obs, now, verdict)
    lifetime = obs.lifetime
    state = derive_state(task.status.state, verdict, obs.agent, report, lifetime, now)
    if state is not None:
        status["state"] = state
    shown = state or (task.status.state.model_dump(mode="json") if task.status.state else {})
    if verdict.phase is Phase.ACTIVE and shown.get("message"):
        status["message"] = shown["message"]  # Coder's MESSAGE column: the agent's words, errors first
    # None (no agent followed: no running pod) removes what an earlier pod's agent showed, which would
    # otherwise pass for the next pod's agent having answered before.
    status["agent"] = agent_status(obs.agent)
    if prompt is not None:
        status["prompt"] = dict(prompt)
    if snapshot is not None:
        status["logSnapshot"] = dict(snapshot)
    if git is not None:
        # Whole: a field the new report leaves out (say, no base any more) must not survive from the old.
        # The push's record stands until the next push says otherwise.
        shown_git = git.dump()
        status["repository"] = {k: shown_git.get(k) for k in GIT_FIELDS if k not in PUSH_FIELDS}
        if git.pushed is not None:
            status["repository"].update(pushed=shown_git["pushed"], pushError=None)
        elif git.push_error is not None:
            status["repository"]["pushError"] = git.push_error
    recorded = PromptStatus.model_validate(prompt) if prompt else task.status.prompt
    conditions = [Condition.model_validate(c) for c in status["conditions"]]
    delivered, reason, message = prompt_condition(task.spec.prompt, recorded, delivery)
    conditions = set_condition(conditions, PROMPT_DELIVERED, delivered, reason, message, obs.generation, now)
    status["conditions"] = [c.dump() for c in conditions]
    if reason == "DeliveryFailed" and verdict.phase is Phase.ACTIVE:
        status["message"] = message  # errors first: the MESSAGE column says the prompt is stuck
    return status
