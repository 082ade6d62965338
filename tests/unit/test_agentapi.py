"""The AgentAPI client's reading of answers and faults, its reading of the /events stream, and exactly-once
prompt delivery.

The agent is a local aiohttp server that answers as a test says; tests/integration/test_agentapi_contract.py
checks the same shapes against the real agentapi binary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from httpx_sse import EventSource
from hypothesis import given, settings
from hypothesis import strategies as st

from taskpod.agentapi import (
    MAX_EVENT_BYTES,
    AgentClient,
    AgentError,
    AgentUnavailable,
    Transport,
    agent_url,
    server_sent_events,
)
from taskpod.api.models import AgentStatus
from taskpod.controller.agents import deliver_prompt
from tests.support import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def served(handler: Handler) -> AsyncIterator[tuple[BaseTestServer, aiohttp.ClientSession]]:
    """A local server that answers every request with `handler`, and a session to reach it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        yield server, http


@asynccontextmanager
async def agent(handler: Handler, timeout: float = 5.0) -> AsyncIterator[AgentClient]:
    """A client of an agent that answers every request with `handler`."""
    async with served(handler) as (server, http):
        yield Transport(http, timeout=timeout).client("team", "fix-0", "127.0.0.1", int(server.port or 0))


def answer(status: int = 200, **json_or_text: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if "json" in json_or_text:
            return web.json_response(json_or_text["json"], status=status)
        return web.Response(status=status, text=json_or_text.get("text", ""))

    return handler


def test_status_and_messages_are_read() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/status":
            return web.json_response({"status": "running", "agent_type": "claude"})
        message = {"id": 0, "role": "user", "content": "Fix it ✓", "time": "2026-11-28T12:00:00Z"}
        return web.json_response({"messages": [message]})

    async def scenario() -> None:
        async with agent(handler) as client:
            assert (await client.status()).status is AgentStatus.RUNNING
            (message,) = await client.messages()
            assert (message.id, message.role, message.content) == (0, "user", "Fix it ✓")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (answer(500, json={"title": "Internal Server Error", "detail": "boom"}), AgentError),
        (answer(200, text="<html>not json"), AgentError),
        (answer(200, json={"status": "dancing"}), AgentError),
        (answer(503, text="no endpoints"), AgentUnavailable),
    ],
    ids=["500", "garbage", "unknown status", "proxy cannot reach the pod"],
)
def test_faults_become_clear_errors(handler: Handler, error: type[Exception]) -> None:
    async def scenario() -> None:
        async with agent(handler) as client:
            await client.status()

    with pytest.raises(error):
        asyncio.run(scenario())


def test_a_refused_connection_is_unavailable() -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            await Transport(http).client("team", "fix-0", "127.0.0.1", free_port()).messages()

    with pytest.raises(AgentUnavailable, match="GET /messages"):
        asyncio.run(scenario())


def test_an_agent_that_never_answers_is_unavailable_after_the_timeout() -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("the client gave up long before")

    async def scenario() -> None:
        async with agent(hang, timeout=0.3) as client:
            with pytest.raises(AgentUnavailable, match="Timeout"):
                await client.status()
            with pytest.raises(AgentUnavailable, match="Timeout"):
                await anext(client.events())  # the stream's headers come within the timeout too

    asyncio.run(scenario())


def test_an_agent_that_stops_halfway_through_an_answer_is_unavailable_after_the_timeout() -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"messages": [')
        await asyncio.sleep(30)
        raise AssertionError("the client gave up long before")

    async def scenario() -> None:
        async with agent(stall, timeout=0.3) as client:
            await client.messages()

    with pytest.raises(AgentUnavailable, match=r"GET /messages: .*Timeout"):
        asyncio.run(scenario())


def sse(*chunks: bytes, pause: float = 0.0) -> Handler:
    """An /events that writes these chunks (each on its own, `pause` apart) and ends."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            await asyncio.sleep(pause)
        return response

    return handler


async def events_of(handler: Handler) -> list[tuple[str, dict[str, Any]]]:
    async with agent(handler) as client:
        return [(e.kind, e.data) async for e in client.events()]


def test_events_are_read_from_the_stream_as_they_come() -> None:
    # JSON may carry NEL and U+2028 raw (Go's leaves NEL so): only CR and LF end an SSE line. The second
    # event comes in pieces: a character's bytes apart, and a CRLF cut between its CR and its LF.
    first = b'event: status_change\ndata: {"status":"stable","agent_type":"claude"}\n\n'
    second = (
        'event: message_update\r\ndata: {"id":1,"role":"agent","message":"Hi\x85there\u2028 🚀","time":"t"}'
        "\r\n\r\n"
    )
    raw = second.encode()
    cut = raw.index("🚀".encode()) + 2
    crlf = raw.index(b"\r\n") + 1
    pieces = [raw[:crlf], raw[crlf:cut], raw[cut:]]
    assert run(events_of(sse(first, *pieces, pause=0.02))) == [
        ("status_change", {"status": "stable", "agent_type": "claude"}),
        ("message_update", {"id": 1, "role": "agent", "message": "Hi\x85there\u2028 🚀", "time": "t"}),
    ]


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"event: status_change\ndata: {not json\n\n", AgentError),
        (b"event: message_update\ndata: " + b"x" * (MAX_EVENT_BYTES + 1), AgentError),
        # 17 lines of 1 MiB each, in 4-byte characters: a quarter as many characters as bytes
        (b"event: message_update\n" + ("data: " + "🚀" * 2**18 + "\n").encode() * 17, AgentError),
    ],
    ids=["not JSON", "an endless event", "an endless event of many lines of 4-byte characters"],
)
def test_a_broken_stream_is_an_error(stream: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        run(events_of(sse(stream)))


def test_a_stream_that_is_not_200_is_an_error() -> None:
    with pytest.raises(AgentError, match="HTTP 404"):
        run(events_of(answer(404, text="404 page not found")))


def test_a_stream_cut_off_midway_ends_with_the_events_it_completed() -> None:
    """The follower takes an ended stream as an agent gone, and reconnects; what came whole counts."""
    whole = b'event: status_change\ndata: {"status":"running"}\n\n'
    assert run(events_of(sse(whole, b'event: status_change\ndata: {"sta'))) == [
        ("status_change", {"status": "running"})
    ]


# The SSE reader against httpx-sse's, on any events with any text, any line ends, cut anywhere.
LINE_ENDS = st.sampled_from(["\n", "\r", "\r\n"])
TEXT = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=40)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    text = ""
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            text += ":" + draw(TEXT) + draw(LINE_ENDS)  # a comment
        text += "event:" + draw(st.sampled_from(["", " "])) + draw(TEXT) + draw(LINE_ENDS)
        for line in draw(st.lists(TEXT, min_size=1, max_size=3)):
            text += "data:" + draw(st.sampled_from(["", " "])) + line + draw(LINE_ENDS)
        text += draw(LINE_ENDS)
    raw = text.encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    return raw, cuts


@settings(max_examples=300, deadline=None)
@given(streams())
def test_the_sse_reader_agrees_with_httpx_sse_however_the_stream_is_cut(
    stream: tuple[bytes, list[int]],
) -> None:
    raw, cuts = stream
    response = httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})
    expected = [(e.event, e.data) for e in EventSource(response).iter_sse()]

    async def chunks() -> AsyncIterator[bytes]:
        for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            yield raw[start:end]

    async def read() -> list[tuple[str, str]]:
        return [event async for event in server_sent_events(chunks())]

    assert run(read()) == expected


def test_an_agent_is_reached_at_its_pod_ip_or_through_the_api_servers_proxy() -> None:
    assert agent_url(None, "team", "fix-0", "10.244.0.7", 3284) == "http://10.244.0.7:3284"
    assert agent_url("https://10.0.0.1:6443/", "team", "fix-0", "10.244.0.7", 3284) == (
        "https://10.0.0.1:6443/api/v1/namespaces/team/pods/fix-0:3284/proxy"
    )


def test_the_proxys_credentials_are_asked_for_at_each_request() -> None:
    """A follower lives as long as its pod, longer than an in-cluster token; each request carries the
    token as it is then."""
    seen: list[str] = []
    tokens = iter(["Bearer first", "Bearer rotated"])

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"status": "stable", "agent_type": "claude"})

    async def scenario() -> None:
        async with served(handler) as (server, http):
            proxy = Transport(
                http, str(server.make_url("/")), lambda: {"headers": {"Authorization": next(tokens)}}
            )
            client = proxy.client("team", "fix-0", "10.244.0.7", 3284)
            await client.status()
            await client.status()

    asyncio.run(scenario())
    assert seen == ["Bearer first", "Bearer rotated"]


class ScriptedAgent:
    """An agent whose POST /message can fail in the ways that make delivery hard."""

    def __init__(self, post: str = "ok", already: bool = False) -> None:
        self.post, self.posts = post, 0
        self.log = [{"id": 0, "role": "user", "content": "Fix it", "time": "t"}] if already else []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/messages":
            return web.json_response({"messages": self.log})
        self.posts += 1
        content = (await request.json())["content"]
        if self.post == "500-after-accepting":
            self.log.append({"id": len(self.log), "role": "user", "content": content, "time": "t"})
            return web.json_response({"detail": "oops"}, status=500)
        if self.post == "500":
            return web.json_response({"detail": "agent busy"}, status=500)
        self.log.append({"id": len(self.log), "role": "user", "content": content, "time": "t"})
        return web.json_response({"ok": True})


@pytest.mark.parametrize(
    ("scripted", "delivered", "posts", "in_log"),
    [
        (ScriptedAgent(), "sent", 1, 1),
        (ScriptedAgent(already=True), "found", 0, 1),
        (ScriptedAgent(post="500-after-accepting"), "found", 1, 1),
        (ScriptedAgent(post="500"), None, 1, 0),
    ],
    ids=["plain", "already there after a crash", "500 that actually delivered", "500 that did not"],
)
def test_prompt_is_delivered_exactly_once(
    scripted: ScriptedAgent, delivered: str | None, posts: int, in_log: int
) -> None:
    async def scenario() -> str | None:
        async with agent(scripted.handle) as client:
            return await deliver_prompt(client, "Fix it")

    assert asyncio.run(scenario()) == delivered
    assert scripted.posts == posts
    assert sum(1 for m in scripted.log if m["content"] == "Fix it") == in_log


def test_a_lone_surrogate_from_the_agent_becomes_a_replacement_character() -> None:
    """JSON can carry half an emoji ("\\ud83d"); the API server cannot store it, so it never leaves here."""
    message = '{"id": 0, "role": "agent", "content": "half \\ud83d of a rocket", "time": "t"}'
    body = '{"messages": [' + message + "]}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body.encode(), content_type="application/json")

    async def scenario() -> str:
        async with agent(handler) as client:
            (read,) = await client.messages()
            return read.content

    content = asyncio.run(scenario())
    assert content == "half \ufffd of a rocket"
    content.encode()  # valid UTF-8 now


def run(coro: Any) -> Any:
    return asyncio.run(coro)
