"""The agent's side of status: state with its timestamp, health, and the prompt record."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from taskpod.api.models import (
    AgentState,
    AgentStatus,
    ConditionStatus,
    GitState,
    Phase,
    PromptStatus,
    PushRecord,
    StateReport,
    Task,
)
from taskpod.core.agentstate import (
    Report,
    derive_state,
    prompt_condition,
    prompt_sha,
    summary,
    task_status,
    was_delivered,
)
from taskpod.core.lifecycle import AgentView, ClaimView, Observation, PodView, Verdict

T0 = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)
ACTIVE = Verdict(Phase.ACTIVE, "WorkspaceReady", "Workspace is ready.")
STARTING = Verdict(Phase.INITIALIZING, "AgentStarting", "Agent is starting.")
PAUSED = Verdict(Phase.PAUSED, "Paused", "Task is paused.")


def agent(status: AgentStatus | None, message: str | None = None) -> AgentView:
    return AgentView(lifetime=1, answered=True, healthy=True, status=status, last_message=message)


def previous(state: AgentState, message: str | None = "before", at: dt.datetime = T0) -> StateReport:
    return StateReport(state=state, message=message, timestamp=at)


@pytest.mark.parametrize(
    ("prev", "verdict", "view", "expected"),
    [
        (None, STARTING, None, ("working", "Agent is starting.", T1)),
        (
            None,
            ACTIVE,
            agent(AgentStatus.RUNNING, "Running the tests\nmore"),
            ("working", "Running the tests", T1),
        ),
        (
            previous(AgentState.WORKING),
            ACTIVE,
            agent(AgentStatus.STABLE, "All green."),
            ("idle", "All green.", T1),
        ),
        (
            previous(AgentState.IDLE),
            ACTIVE,
            agent(AgentStatus.STABLE, "Still idle."),
            ("idle", "Still idle.", T0),
        ),
        (
            previous(AgentState.WORKING, "Agent is starting."),
            ACTIVE,
            agent(AgentStatus.STABLE),
            ("idle", None, T1),
        ),
        (previous(AgentState.WORKING), PAUSED, None, None),
        (previous(AgentState.IDLE), Verdict(Phase.PENDING, "Pausing", "Pausing: waiting."), None, None),
        (previous(AgentState.COMPLETE, "PR opened"), ACTIVE, agent(AgentStatus.STABLE, "bye"), None),
        (previous(AgentState.FAILED, "no access"), ACTIVE, agent(AgentStatus.RUNNING), None),
    ],
    ids=[
        "starting is synthesised working",
        "running is working, first line as message",
        "stable is idle, time moves",
        "same state keeps its time",
        "no agent message yet: no message, not the synthesised one",
        "paused keeps the last state",
        "pausing keeps the last state",
        "complete is never overwritten by idle",
        "failed is never overwritten by working",
    ],
)
def test_derive_state(
    prev: StateReport | None,
    verdict: Verdict,
    view: AgentView | None,
    expected: tuple[str, str, dt.datetime] | None,
) -> None:
    state = derive_state(prev, verdict, view, None, 1, T1)
    if expected is None:
        assert state is None
    else:
        assert (state or {})["state"] == expected[0]
        assert (state or {})["message"] == expected[1]
        assert (state or {})["timestamp"] == expected[2].isoformat().replace("+00:00", "Z")


def test_a_report_of_the_current_lifetime_wins_and_one_from_before_is_ignored() -> None:
    report = Report(
        AgentState.COMPLETE, "Opened PR #12", "https://example.com/pr/12", lifetime=2, timestamp=T0
    )
    state = derive_state(previous(AgentState.WORKING), ACTIVE, agent(AgentStatus.STABLE), report, 2, T1)
    assert state is not None and state["state"] == "complete" and state["uri"] == "https://example.com/pr/12"
    old = Report(AgentState.COMPLETE, "old", None, lifetime=1, timestamp=T0)
    state = derive_state(previous(AgentState.WORKING), ACTIVE, agent(AgentStatus.STABLE), old, 2, T1)
    assert state is not None and state["state"] == "idle"


CLAUDE_TURN = (
    "● Write(hello.txt)                                                              \n"
    "  ⎿ \xa0Wrote 1 line to hello.txt                                                  \n"
    "      1 hello from the model stand-in                                           \n"
    "                                                                                \n"
    "● I wrote hello.txt in the workspace.                                           \n"
    "                                                                                \n"
    "✻ Brewed for 0s · done 9:56 PM                                                  "
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        (" \x85\u2028\t", None),  # blanks and line breaks only: nothing to show
        ("\n\n  Done:   all   tests pass \nDetails", "Done: all tests pass"),
        ("🚀 shipped\x85then more", "🚀 shipped"),
        ("x" * 300, "x" * 119 + "…"),
        # Claude Code's turn as AgentAPI v0.11.8 parsed it off the terminal, in a real workspace
        (CLAUDE_TURN, "I wrote hello.txt in the workspace."),
        (CLAUDE_TURN.split("● I wrote")[0], "Write(hello.txt)"),  # tools only so far: what it is doing
    ],
)
def test_summary_is_one_short_line(text: str | None, expected: str | None) -> None:
    assert summary(text) == expected


def test_prompt_condition_follows_the_current_prompt() -> None:
    delivered = PromptStatus(sha256=prompt_sha("Fix it"), delivered_at=T0, lifetime=1)
    assert prompt_condition("Fix it", delivered)[0] is ConditionStatus.TRUE
    assert prompt_condition("Fix it better", delivered)[1] == "PromptChanged"
    assert prompt_condition("Fix it", None)[1] == "Waiting"
    assert was_delivered("Fix it", {"sha256": prompt_sha("Fix it")})
    assert not was_delivered("Fix it", None)


def test_task_status_adds_agent_state_prompt_and_its_condition() -> None:
    task = Task.model_validate(
        {"metadata": {"name": "t", "namespace": "n", "generation": 2}, "spec": {"prompt": "Fix it"}}
    )
    obs = Observation(
        generation=2,
        paused=False,
        template_name="default",
        template=None,
        claim=ClaimView("workspace-t-0"),
        pod=None,
        lifetime=1,
        agent=agent(AgentStatus.STABLE, "Done."),
    )
    record: dict[str, Any] = {
        "sha256": prompt_sha("Fix it"),
        "deliveredAt": "2026-11-28T12:00:00Z",
        "lifetime": 1,
    }
    status = task_status(task, obs, T1, prompt=record)
    assert status["prompt"] == record
    assert status["agent"] == {"status": "stable", "type": None, "healthy": True, "reason": None}
    delivered = [c for c in status["conditions"] if c["type"] == "PromptDelivered"]
    assert delivered and delivered[0]["status"] == "True" and delivered[0]["observedGeneration"] == 2


def test_with_no_agent_followed_the_last_pods_agent_is_removed_from_status() -> None:
    """A paused task kept `agent.healthy: true` from its last pod, and the resumed pod's agent then passed
    for one that had answered before: silent while it started, it went Unknown (seen at N = 1,000)."""
    task = Task.model_validate(
        {
            "metadata": {"name": "t", "namespace": "n", "generation": 2},
            "spec": {"prompt": "Fix it", "paused": True},
            "status": {"agent": {"status": "stable", "type": None, "healthy": True, "reason": None}},
        }
    )
    obs = Observation(
        generation=2,
        paused=True,
        template_name="default",
        template=None,
        claim=ClaimView("workspace-t-0"),
        pod=None,
        lifetime=1,
    )
    status = task_status(task, obs, T1)
    assert status["phase"] == "Paused" and status["agent"] is None  # a merge patch's None removes it
    assert status["workspace"] == {"claim": "workspace-t-0", "pod": None, "podIP": None, "lifetime": 1}


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [(2, ("complete", "Opened PR #12")), (3, ("idle", "All green."))],
    ids=["the report's pod", "a later pod"],
)
def test_task_status_weighs_a_report_against_the_observed_lifetime(
    lifetime: int, expected: tuple[str, str]
) -> None:
    """A report counts for the pod that made it and those before it: a pod made since (a resume, a
    replacement) starts afresh, and its agent's screen says what it does."""
    task = Task.model_validate(
        {
            "metadata": {"name": "t", "namespace": "n", "generation": 2},
            "spec": {"prompt": "Fix it"},
            "status": {
                "state": {"state": "working", "message": "before", "timestamp": "2026-11-28T12:00:00Z"}
            },
        }
    )
    ready = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    running = PodView.parse({"metadata": {"name": "t-0"}, "spec": {"nodeName": "n1"}, **ready})
    obs = Observation(
        generation=2,
        paused=False,
        template_name="default",
        template=None,
        claim=ClaimView("workspace-t-0"),
        pod=running,
        lifetime=lifetime,
        agent=agent(AgentStatus.STABLE, "All green."),
    )
    report = Report(AgentState.COMPLETE, "Opened PR #12", None, lifetime=2, timestamp=T0)
    status = task_status(task, obs, T1, report=report, verdict=ACTIVE)
    assert (status["state"]["state"], status["state"]["message"]) == expected
    assert status["workspace"]["lifetime"] == lifetime


def test_a_reported_git_state_replaces_the_shown_one_whole_and_none_leaves_it() -> None:
    shown = {"url": "https://forge/shop.git", "branch": "taskpod/t", "head": "ab" * 20, "base": "cd" * 20}
    task = Task.model_validate(
        {
            "metadata": {"name": "t", "namespace": "n", "generation": 2},
            "spec": {"prompt": "Fix it", "paused": True},
            "status": {"repository": {**shown, "ahead": 1, "filesChanged": 2}},
        }
    )
    obs = Observation(
        generation=2, paused=True, template_name="default", template=None, claim=ClaimView("c"), pod=None
    )
    assert "repository" not in task_status(task, obs, T1)  # a merge patch leaves what status shows
    detached = GitState(url=shown["url"], head="ef" * 20, ahead=None, files_changed=0, reported_at=T1)
    status = task_status(task, obs, T1, git=detached)
    assert status["repository"] == {
        "url": shown["url"],
        "branch": None,  # removed by the merge patch: not the old branch left standing
        "head": "ef" * 20,
        "base": None,
        "ahead": None,
        "filesChanged": 0,
        "insertions": None,
        "deletions": None,
        "uncommitted": None,
        "reportedAt": "2026-11-28T12:05:00Z",
    }


def test_a_push_stands_until_the_next_one_and_a_success_clears_the_last_failure() -> None:
    task = Task.model_validate(
        {"metadata": {"name": "t", "namespace": "n"}, "spec": {"prompt": "Fix it", "paused": True}}
    )
    obs = Observation(
        generation=1, paused=True, template_name="default", template=None, claim=ClaimView("c"), pod=None
    )
    plain = task_status(task, obs, T1, git=GitState(head="ab" * 20))["repository"]
    assert "pushed" not in plain and "pushError" not in plain  # a merge patch keeps what status shows
    record = PushRecord(branch="taskpod/t", commit="ab" * 20, pushed_at=T1)
    ok = task_status(task, obs, T1, git=GitState(head="ab" * 20, pushed=record))["repository"]
    assert ok["pushed"] == {"branch": "taskpod/t", "commit": "ab" * 20, "pushedAt": "2026-11-28T12:05:00Z"}
    assert ok["pushError"] is None
    failed = task_status(task, obs, T1, git=GitState(head="ab" * 20, push_error="rejected"))["repository"]
    assert failed["pushError"] == "rejected" and "pushed" not in failed
