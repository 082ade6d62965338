"""The scripted agent (hack/agentsim) and the real AgentAPI v0.11.8 answer the same client calls alike.

Every test of taskpod's agent integration talks to the scripted agent, so it is only worth as much as its
likeness to the real server. Here the real `agentapi` binary runs a tiny terminal program (a REPL that
echoes what it is told) and the scripted agent is configured to say the same things; one client script
runs against both and the transcripts must agree on everything a client can rely on: status codes,
content types, field names and types, status and role values, error models, SSE event names, data keys and
order. Only what a terminal makes of text may differ (the real agent pads lines to the terminal width).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsim.agent import ScriptedAgent
from agentsim.behaviour import Behaviour
from localkube import binaries
from tests.support import free_port

pytestmark = pytest.mark.integration

GREETING = "Contract REPL ready."
REPL = f"""
import time
print({GREETING!r}, flush=True)
while True:
    try:
        line = input("> ")
    except EOFError:
        break
    time.sleep(0.3)
    print("You said: " + line, flush=True)
"""
PROMPT = "hello contract"
TIMEOUT = 60.0


@pytest.fixture
def real_agent(tmp_path: Path) -> Iterator[str]:
    """The real agentapi running the REPL in its terminal, as a workspace runs it (all hosts allowed)."""
    port = free_port()
    log = tmp_path / "agentapi.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binaries.ensure("agentapi")),
                "server",
                "--type",
                "custom",
                "--port",
                str(port),
                "--allowed-hosts",
                "*",
                "--",
                sys.executable,
                "-c",
                REPL,
            ],
            stdin=subprocess.DEVNULL,  # a piped stdin would be read as the initial prompt
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the REPL goes with it
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        print(f"--- agentapi log ---\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class Transcript:
    """What a client saw: each call's answer, and the SSE events."""

    answers: dict[str, httpx.Response] = field(default_factory=dict)
    statuses: set[str] = field(default_factory=set)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def json(self, call: str) -> Any:
        return self.answers[call].json()


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        try:
            if result := await check():
                return result
        except httpx.TransportError:
            pass  # not listening yet
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _follow(http: httpx.AsyncClient, events: list[tuple[str, dict[str, Any]]]) -> None:
    async with http.stream("GET", "/events", timeout=httpx.Timeout(TIMEOUT, read=None)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))


async def exercise(url: str) -> Transcript:
    """The client script: the calls taskpod makes, plus the faults a client must recognise."""
    seen = Transcript()
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:

        async def status() -> str:
            answer = await http.get("/status")
            seen.answers.setdefault("first status", answer)
            value = str(answer.json()["status"])
            seen.statuses.add(value)
            return value

        async def stable() -> bool:
            return await status() == "stable"

        async def stable_announced() -> bool:
            return bool(seen.events) and seen.events[-1][1].get("status") == "stable"

        await _until(status, "the agent to answer")
        follower = asyncio.create_task(_follow(http, seen.events))  # while it initialises, as taskpod does
        await _until(stable, "the agent to be stable")
        seen.answers["status"] = await http.get("/status")
        seen.answers["messages before"] = await http.get("/messages")
        seen.answers["post user"] = await http.post("/message", json={"content": PROMPT, "type": "user"})
        seen.answers["post while running"] = await http.post(
            "/message", json={"content": "more", "type": "user"}
        )
        seen.answers["status while running"] = await http.get("/status")

        async def answered() -> bool:
            messages = (await http.get("/messages")).json()["messages"]
            return await status() == "stable" and len(messages) == 3 and PROMPT in messages[-1]["content"]

        await _until(answered, "the agent's answer")
        seen.answers["messages after"] = await http.get("/messages")
        await _until(stable_announced, "the last status_change")
        follower.cancel()
        probes: dict[str, dict[str, Any]] = {
            "no type": {"json": {"content": "x"}},
            "unknown type": {"json": {"content": "x", "type": "bogus"}},
            "extra field": {"json": {"content": "x", "type": "raw", "extra": 1}},
            "not an object": {"json": [1]},
            "not json": {"content": b"not json", "headers": {"Content-Type": "application/json"}},
            "form": {
                "content": b"content=x",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            "no body": {},
            "blank user": {"json": {"content": "  ", "type": "user"}},
            "raw": {"json": {"content": "", "type": "raw"}},
        }
        for name, kwargs in probes.items():
            seen.answers[name] = await http.post("/message", **kwargs)
        seen.answers["upload"] = await http.post("/upload", files={"file": ("notes.txt", b"hello")})
        seen.answers["upload no file"] = await http.post("/upload", files={"other": ("x", b"x")})
        seen.answers["unknown path"] = await http.get("/nope")
        seen.answers["wrong method"] = await http.post("/status")
        seen.answers["any host"] = await http.get("/status", headers={"Host": "agent.example:3284"})
    return seen


def shape(value: Any) -> Any:
    """A JSON value with its leaves replaced by their types: what two agents must agree on."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes = [shape(v) for v in value]
        return [s for i, s in enumerate(shapes) if s not in shapes[:i]]
    return type(value).__name__


def milestones(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """The SSE events as a client follows them: repeated updates of one message count once."""
    out: list[tuple[Any, ...]] = []
    seen_messages: set[Any] = set()
    for name, data in events:
        key: tuple[Any, ...]
        if name == "message_update":
            if (data["id"], data["role"]) in seen_messages:
                continue
            seen_messages.add((data["id"], data["role"]))
            key = (name, data["id"], data["role"])
        else:
            key = (name, data.get("status"), data.get("agent_type"))
        if not out or out[-1] != key:
            out.append(key)
    return out


def test_the_scripted_agent_answers_like_agentapi(real_agent: str) -> None:
    behaviour = Behaviour(greeting=GREETING, reply="You said: {prompt}", init_seconds=2.5, work_seconds=1.0)

    async def both() -> tuple[Transcript, Transcript]:
        scripted = ScriptedAgent("127.0.0.1", 0, behaviour)
        await scripted.start()
        try:
            return await asyncio.gather(exercise(real_agent), exercise(scripted.url))
        finally:
            await scripted.stop()

    real, sim = asyncio.run(both())
    real_port, sim_port = (f":{httpx.URL(str(t.answers['status'].url)).port}/" for t in (real, sim))

    # Every answer: the same status code, content type, Link header and JSON shape.
    assert real.answers.keys() == sim.answers.keys()
    for call, answer in real.answers.items():
        other = sim.answers[call]
        assert (call, other.status_code) == (call, answer.status_code)
        assert (call, other.headers.get("content-type")) == (call, answer.headers.get("content-type"))
        assert (call, other.headers.get("link")) == (call, answer.headers.get("link"))
        assert (call, other.headers.get("allow")) == (call, answer.headers.get("allow"))
        if "json" in answer.headers.get("content-type", ""):
            assert (call, shape(other.json())) == (call, shape(answer.json()))
            # huma's `$schema` link: the same but for the port each agent listens on
            mine, theirs = other.json()["$schema"], answer.json()["$schema"]
            assert (call, mine.replace(sim_port, "PORT")) == (call, theirs.replace(real_port, "PORT"))
        else:
            assert (call, other.text) == (call, answer.text)

    # The values a client branches on.
    for t in (real, sim):
        assert t.statuses == {"running", "stable"}  # initialising and working are both `running`
        assert t.json("status")["status"] == "stable" and t.json("status")["agent_type"] == "custom"
        assert t.json("post user") == {"$schema": t.json("post user")["$schema"], "ok": True}
        assert t.json("status while running")["status"] == "running"
        assert t.json("raw")["ok"] is True
        assert t.answers["upload"].json()["filePath"].endswith("/notes.txt")
    for call in real.answers:
        if real.answers[call].headers.get("content-type") == "application/problem+json":
            mine, theirs = sim.json(call), real.json(call)
            assert {k: mine[k] for k in ("title", "status", "detail")} == {
                k: theirs[k] for k in ("title", "status", "detail")
            }, call
            locations = [(e.get("location"), e.get("value")) for e in theirs.get("errors", [])]
            assert [(e.get("location"), e.get("value")) for e in mine.get("errors", [])] == locations, call
            if theirs["status"] != 400:  # a JSON parser's own words differ between Go and Python
                assert [e.get("message") for e in mine.get("errors", [])] == [
                    e.get("message") for e in theirs.get("errors", [])
                ], call

    # The same conversation: ids in order, roles, and (apart from terminal padding) the same text.
    for call in ("messages before", "messages after"):
        mine, theirs = sim.json(call)["messages"], real.json(call)["messages"]
        assert [(m["id"], m["role"], m["content"].rstrip()) for m in mine] == [
            (m["id"], m["role"], m["content"].rstrip()) for m in theirs
        ], call
        for m in mine + theirs:
            assert dt.datetime.fromisoformat(m["time"]).tzinfo is not None
    assert [m["role"] for m in real.json("messages after")["messages"]] == ["agent", "user", "agent"]

    # The same events, in the same order, with the same data keys. How the start-up shows depends on when
    # the stream opened relative to the terminal settling, and under load the real server may report the
    # first `stable` on its stream only after the client (which polled /status) has already sent the
    # prompt; so both must show message 0 before the prompt, and then exactly the same steps.
    for transcript in (real, sim):
        steps = milestones(transcript.events)
        prompt_at = steps.index(("message_update", 1, "user"))
        assert ("message_update", 0, "agent") in steps[:prompt_at]
    for transcript in (real, sim):
        steps = milestones(transcript.events)
        after = steps[steps.index(("message_update", 1, "user")) :]
        assert [step for step in after if step[0] == "message_update"] == [
            ("message_update", 1, "user"),
            ("message_update", 2, "agent"),
        ]
        assert after[-1] == ("status_change", "stable", "custom")  # it ends waiting for input again
        assert {step[1] for step in steps if step[0] == "status_change"} <= {"running", "stable"}
    keys = {name: set(data) for name, data in real.events}
    assert keys == {name: set(data) for name, data in sim.events}
    assert keys == {
        "message_update": {"id", "role", "message", "time"},
        "status_change": {"status", "agent_type"},
    }
