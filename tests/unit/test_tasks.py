"""Logs by phase: what `kubectl task logs` reads, once or following, when the agent is live, pausing
or gone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from taskpod import kube
from taskpod.agentapi import AgentError, AgentMessage, AgentUnavailable, StatusReport
from taskpod.api.models import AgentStatus
from taskpod.client import tasks
from taskpod.core.snapshots import DATA_KEY
from tests.support import free_port

KEPT = [{"id": 1, "role": "user", "content": "Fix the flaky login test", "time": "2026-11-29T10:00:01Z"}]


def task_body(paused: bool) -> dict[str, Any]:
    return {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": "fix-login", "namespace": "team", "uid": "u1", "generation": 2},
        "spec": {"prompt": "Fix the flaky login test", "paused": paused},
        "status": {
            "phase": "Active",
            "workspace": {
                "statefulSet": "fix-login",
                "pod": "fix-login-0",
                "podIP": "127.1.0.5",
                "lifetime": 1,
            },
            "logSnapshot": {
                "configMap": "fix-login-snapshot",
                "takenAt": "2026-11-29T10:02:00Z",
                "messages": 1,
            },
        },
    }


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {}

    async def get_task(namespace: str, name: str) -> dict[str, Any]:
        body: dict[str, Any] = state["task"]
        return body

    async def read_configmap(namespace: str, name: str) -> dict[str, Any] | None:
        envelope = {"format": "agentapi", "data": {"messages": KEPT}}
        if name != "fix-login-snapshot":
            return None
        return {"metadata": {"ownerReferences": [{"uid": "u1"}]}, "data": {DATA_KEY: json.dumps(envelope)}}

    monkeypatch.setattr(kube, "get_task", get_task)
    monkeypatch.setattr(kube, "read_configmap", read_configmap)
    return state


def agent_at(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task's pod has its agent at this port of its IP (127.1.0.5), reached directly."""

    async def agent_port(namespace: str, pod: str, port_name: str) -> int:
        return port

    monkeypatch.setattr(kube, "agent_port", agent_port)
    monkeypatch.setenv("TASKPOD_AGENT_TRANSPORT", "direct")


@pytest.fixture
def agent_down(cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The task's pod is there, but its agent refuses connections: nothing listens at its port."""
    agent_at(free_port(), monkeypatch)
    return cluster


def test_a_pausing_task_whose_agent_has_stopped_shows_the_snapshot(agent_down: dict[str, Any]) -> None:
    """Until the operator answers a pause, the phase still reads Active, but the agent may be down."""
    agent_down["task"] = task_body(paused=True)
    logs = asyncio.run(tasks.logs("team", "fix-login"))
    assert logs.dump() == {"messages": KEPT, "snapshot": True, "snapshot_at": "2026-11-29T10:02:00Z"}


def test_an_active_task_whose_agent_does_not_answer_says_so(agent_down: dict[str, Any]) -> None:
    agent_down["task"] = task_body(paused=False)
    with pytest.raises(AgentUnavailable, match="GET /messages: ClientConnectorError"):
        asyncio.run(tasks.logs("team", "fix-login"))


@pytest.fixture
def pod_gone(cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The task's status still names its pod, but the pod has been deleted (the status is a moment behind)."""

    async def agent_port(namespace: str, pod: str, port_name: str) -> int:
        raise kube.ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(kube, "agent_port", agent_port)
    return cluster


def test_a_pausing_task_whose_pod_is_already_gone_shows_the_snapshot(pod_gone: dict[str, Any]) -> None:
    pod_gone["task"] = task_body(paused=True)
    logs = asyncio.run(tasks.logs("team", "fix-login"))
    assert logs.snapshot and logs.messages == KEPT


def test_an_active_task_whose_pod_is_gone_says_its_agent_is_unreachable(pod_gone: dict[str, Any]) -> None:
    pod_gone["task"] = task_body(paused=False)
    with pytest.raises(AgentUnavailable, match="pod fix-login-0 is gone"):
        asyncio.run(tasks.logs("team", "fix-login"))


def test_following_rides_out_a_status_that_lags_its_pod_and_ends_when_the_task_leaves_active(
    pod_gone: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pausing, paused = task_body(paused=True), task_body(paused=True)
    paused["status"] = {**paused["status"], "phase": "Paused", "workspace": None}
    reads = [pausing, pausing, paused]

    async def get_task(namespace: str, name: str) -> dict[str, Any]:
        return reads.pop(0)

    monkeypatch.setattr(kube, "get_task", get_task)

    async def follow() -> list[dict[str, Any]]:
        return [m async for m in tasks.follow("team", "fix-login", interval=0)]

    assert asyncio.run(follow()) == []
    assert reads == []  # it looked until the task was Paused


def test_a_snapshot_left_by_a_deleted_task_of_the_same_name_is_not_shown(cluster: dict[str, Any]) -> None:
    body = task_body(paused=True)
    body["metadata"]["uid"] = "u2"  # created again under the name: the ConfigMap is still u1's
    body["status"] = {"phase": "Pending"}
    cluster["task"] = body
    logs = asyncio.run(tasks.logs("team", "fix-login"))
    assert logs.snapshot and logs.messages == []


# -- send: only to an agent that says it is stable, and never twice ----------------------------------


class Agent:
    """An AgentAPI whose status moves as listed, one answer per call (the last repeats), and whose POST
    /message answers as `answer` says, after `takes` seconds."""

    def __init__(self, statuses: list[str], answer: Exception | None = None, takes: float = 0) -> None:
        self.statuses, self.answer, self.takes = statuses, answer, takes
        self.sent: list[str] = []

    async def status(self) -> StatusReport:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return StatusReport(AgentStatus(status), "claude")

    async def send(self, content: str, kind: str = "user") -> None:
        self.sent.append(content)
        await asyncio.sleep(self.takes)
        if self.answer is not None:
            raise self.answer


def test_input_goes_to_a_stable_agent() -> None:
    agent = Agent(["stable"])
    assert asyncio.run(tasks.deliver(agent, "thanks")) is True  # type: ignore[arg-type]
    assert agent.sent == ["thanks"]


def test_input_waits_while_the_agent_works_whatever_the_tasks_state_says() -> None:
    agent = Agent(["running"])
    assert asyncio.run(tasks.deliver(agent, "thanks")) is False  # type: ignore[arg-type]
    assert agent.sent == []


def test_a_refusal_because_the_screen_moved_is_tried_again() -> None:
    """Found on the real node: Claude Code's screen moves again just after it goes idle, and AgentAPI
    refuses input then with HTTP 500, before it writes anything."""
    agent = Agent(
        ["stable", "running"], answer=AgentError("POST /message: HTTP 500: unexpected error occurred")
    )
    assert asyncio.run(tasks.deliver(agent, "thanks")) is False  # type: ignore[arg-type]


def test_a_failure_that_may_have_reached_the_agent_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failure after AgentAPI wrote the input comes after its waits; the agent is busy with it by then.
    monkeypatch.setattr(tasks, "REFUSED_AT_ONCE", 0.05)
    slow = Agent(["stable", "running"], answer=AgentError("POST /message: HTTP 500"), takes=0.1)
    with pytest.raises(AgentError):
        asyncio.run(tasks.deliver(slow, "thanks"))  # type: ignore[arg-type]
    # A refusal from an agent still stable is not about its screen: the error, not a silent retry.
    stable = Agent(["stable"], answer=AgentError("POST /message: HTTP 500"))
    with pytest.raises(AgentError):
        asyncio.run(tasks.deliver(stable, "thanks"))  # type: ignore[arg-type]


def test_live_logs_show_claude_codes_words_without_its_screens_padding(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Code's messages come padded to the terminal (found on a real workspace: twenty blank lines
    before its words in `kubectl task logs`); live logs show them as the snapshot keeps them."""
    padded = "\n" * 20 + "● I wrote hello.txt ✓   \n\n\n\n  ⎿  done\t\n" + " " * 80 + "\n" * 20

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"messages": [AgentMessage(0, "agent", padded, "2026-11-29T10:00:01Z").dump()]}
        )

    async def scenario() -> list[dict[str, Any]]:
        app = web.Application()
        app.router.add_get("/messages", handler)
        async with TestServer(app, host="127.1.0.5") as server:
            agent_at(int(server.port or 0), monkeypatch)
            return (await tasks.logs("team", "fix-login")).messages

    cluster["task"] = task_body(paused=False)
    (message,) = asyncio.run(scenario())
    assert message["content"] == "● I wrote hello.txt ✓\n\n  ⎿  done"
