"""The AgentAPI client's reading of answers and faults, and exactly-once prompt delivery.

The HTTP layer is httpx's MockTransport; tests/integration/test_agentapi_contract.py checks the same
shapes against the real agentapi binary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from taskpod.agentapi import AgentClient, AgentError, AgentUnavailable, agent_url
from taskpod.api.models import AgentStatus
from taskpod.controller.agents import deliver_prompt

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> AgentClient:
    return AgentClient("http://127.9.0.1:3284", httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_status_and_messages_are_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status":
            return httpx.Response(200, json={"status": "running", "agent_type": "claude"})
        return httpx.Response(
            200,
            json={
                "messages": [{"id": 0, "role": "user", "content": "Fix it", "time": "2026-11-28T12:00:00Z"}]
            },
        )

    c = client(handler)
    assert run(c.status()).status is AgentStatus.RUNNING
    (message,) = run(c.messages())
    assert (message.id, message.role, message.content) == (0, "user", "Fix it")


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(500, json={"title": "Internal Server Error", "detail": "boom"}), AgentError),
        (httpx.Response(200, text="<html>not json"), AgentError),
        (httpx.Response(200, json={"status": "dancing"}), AgentError),
        (httpx.Response(503, text="no endpoints"), AgentUnavailable),
    ],
    ids=["500", "garbage", "unknown status", "proxy cannot reach the pod"],
)
def test_faults_become_clear_errors(response: httpx.Response, error: type[Exception]) -> None:
    with pytest.raises(error):
        run(client(lambda request: response).status())


def test_a_refused_connection_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(AgentUnavailable):
        run(client(handler).messages())


def test_events_are_parsed_from_the_sse_stream() -> None:
    # JSON may carry NEL and U+2028 raw (Go's leaves NEL so): only CR and LF end an SSE line.
    body = (
        'event: status_change\ndata: {"status":"stable","agent_type":"claude"}\n\n'
        'event: message_update\ndata: {"id":1,"role":"agent","message":"Hi\x85there\u2028","time":"t"}\n\n'
    )

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        c = client(
            lambda request: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        )
        return [(e.kind, e.data) async for e in c.events()]

    assert run(collect()) == [
        ("status_change", {"status": "stable", "agent_type": "claude"}),
        ("message_update", {"id": 1, "role": "agent", "message": "Hi\x85there\u2028", "time": "t"}),
    ]


def test_an_agent_is_reached_at_its_pod_ip_or_through_the_api_servers_proxy() -> None:
    assert agent_url(None, "team", "fix-0", "10.244.0.7", 3284) == "http://10.244.0.7:3284"
    assert agent_url("https://10.0.0.1:6443/", "team", "fix-0", "10.244.0.7", 3284) == (
        "https://10.0.0.1:6443/api/v1/namespaces/team/pods/fix-0:3284/proxy"
    )


class ScriptedAgent:
    """An agent whose POST /message can fail in the ways that make delivery hard."""

    def __init__(self, post: str = "ok", already: bool = False) -> None:
        self.post, self.posts = post, 0
        self.log = [{"id": 0, "role": "user", "content": "Fix it", "time": "t"}] if already else []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/messages":
            return httpx.Response(200, json={"messages": self.log})
        self.posts += 1
        content = json.loads(request.content)["content"]
        if self.post == "500-after-accepting":
            self.log.append({"id": len(self.log), "role": "user", "content": content, "time": "t"})
            return httpx.Response(500, json={"detail": "oops"})
        if self.post == "500":
            return httpx.Response(500, json={"detail": "agent busy"})
        self.log.append({"id": len(self.log), "role": "user", "content": content, "time": "t"})
        return httpx.Response(200, json={"ok": True})


@pytest.mark.parametrize(
    ("agent", "delivered", "posts", "in_log"),
    [
        (ScriptedAgent(), "sent", 1, 1),
        (ScriptedAgent(already=True), "found", 0, 1),
        (ScriptedAgent(post="500-after-accepting"), "found", 1, 1),
        (ScriptedAgent(post="500"), None, 1, 0),
    ],
    ids=["plain", "already there after a crash", "500 that actually delivered", "500 that did not"],
)
def test_prompt_is_delivered_exactly_once(
    agent: ScriptedAgent, delivered: str | None, posts: int, in_log: int
) -> None:
    assert run(deliver_prompt(client(agent), "Fix it")) == delivered
    assert agent.posts == posts
    assert sum(1 for m in agent.log if m["content"] == "Fix it") == in_log


def test_a_lone_surrogate_from_the_agent_becomes_a_replacement_character() -> None:
    """JSON can carry half an emoji ("\\ud83d"); the API server cannot store it, so it never leaves here."""

    def handler(request: httpx.Request) -> httpx.Response:
        message = '{"id": 0, "role": "agent", "content": "half \\ud83d of a rocket", "time": "t"}'
        body = '{"messages": [' + message + "]}"
        return httpx.Response(200, content=body.encode(), headers={"content-type": "application/json"})

    (message,) = run(client(handler).messages())
    assert message.content == "half \ufffd of a rocket"
    message.content.encode()  # valid UTF-8 now
