"""The scripted agent (hack/agentsim) in-process on 127.0.0.1: AgentAPI's shapes, its working/stable
cycle, every scripted fault, the control endpoints and the conversation kept in a state file.

tests/integration/test_agentapi_contract.py holds the same shapes against the real agentapi binary.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsim.agent import ScriptedAgent
from agentsim.behaviour import UPSTREAM_HOSTS, Behaviour, BehaviourError
from agentsim.simulator import Placement, placement, state_file
from tests.support import free_port

pytestmark = pytest.mark.anyio
Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def running(
    state_file: Path | None = None, port: int = 0, **behaviour: Any
) -> AsyncIterator[tuple[ScriptedAgent, httpx.AsyncClient]]:
    """An agent on 127.0.0.1 (port 0: any free port, known once it listens) and a client for it."""
    agent = ScriptedAgent("127.0.0.1", port, Behaviour.parse(behaviour), state_file=state_file)
    await agent.start()
    try:
        async with httpx.AsyncClient(base_url=agent.url, timeout=5) as http:
            yield agent, http
    finally:
        await agent.stop()


async def until(check: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def follow(http: httpx.AsyncClient, events: Events) -> None:
    """Collect /events until the stream ends (or the task is cancelled)."""
    async with http.stream("GET", "/events", timeout=httpx.Timeout(5, read=None)) as response:
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))


async def refused(url: str) -> bool:
    """Nothing listens: a new connection (not one kept alive from before) is refused."""
    async with httpx.AsyncClient(timeout=5) as fresh:
        try:
            await fresh.get(url + "/status")
        except httpx.ConnectError:
            return True
    return False


async def stable(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("/status")).json()["status"] == "stable")


async def test_status_messages_and_message_answer_in_agentapi_shapes() -> None:
    async with running(agent_type="claude") as (agent, http):
        status = await http.get("/status")
        assert status.status_code == 200 and status.headers["content-type"] == "application/json"
        assert status.headers["link"] == '</schemas/StatusResponseBody.json>; rel="describedBy"'
        assert status.json() == {
            "$schema": f"http://127.0.0.1:{agent.port}/schemas/StatusResponseBody.json",
            "status": "stable",
            "agent_type": "claude",
        }
        [greeting] = (await http.get("/messages")).json()["messages"]  # AgentAPI starts with the screen
        assert greeting.keys() == {"id", "content", "role", "time"}
        assert greeting["id"] == 0 and greeting["role"] == "agent" and greeting["time"].endswith("Z")

        sent = await http.post("/message", json={"content": "  Fix the login test \n", "type": "user"})
        assert sent.json() == {"$schema": sent.json()["$schema"], "ok": True}
        assert (await http.get("/status")).json()["status"] == "running"
        user = (await http.get("/messages")).json()["messages"][-1]
        assert (user["id"], user["role"], user["content"]) == (1, "user", "Fix the login test")  # trimmed


async def test_a_user_message_runs_then_the_reply_grows_and_the_agent_is_stable() -> None:
    events: Events = []
    async with running(work_seconds=0.3, reply="Done: {prompt}", reply_steps=3) as (_, http):
        follower = asyncio.create_task(follow(http, events))
        await until(lambda: _true(len(events) == 2))  # the current state: the greeting, then the status
        await http.post("/message", json={"content": "fix it", "type": "user"})
        await until(lambda: stable(http))
        await until(lambda: _true(events[-1][0] == "status_change"))
        follower.cancel()
        messages = (await http.get("/messages")).json()["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "fix it"),
        ("agent", "Done: fix it"),
    ]
    assert [(n, d.get("status") or d["id"]) for n, d in events] == [
        ("message_update", 0),
        ("status_change", "stable"),
        ("status_change", "running"),
        ("message_update", 1),
        ("message_update", 2),
        ("message_update", 2),
        ("message_update", 2),
        ("status_change", "stable"),
    ]
    growing = [d["message"] for n, d in events if n == "message_update" and d["id"] == 2]
    assert growing[-1] == "Done: fix it" and len(set(growing)) == 3
    assert all(a in b for a, b in itertools.pairwise(growing))
    assert events[4][1].keys() == {"id", "role", "message", "time"}
    assert events[1][1] == {"status": "stable", "agent_type": "custom"}


async def _true(value: bool) -> bool:
    return value


async def test_replies_follow_the_script_turn_by_turn() -> None:
    async with running(work_seconds=0, reply=["First: {prompt}", "Turn {turn}: {prompt}"]) as (_, http):
        for text in ("a", "b", "c"):
            await until(lambda: stable(http))
            assert (await http.post("/message", json={"content": text, "type": "user"})).status_code == 200
        await until(lambda: stable(http))
        replies = [
            m["content"] for m in (await http.get("/messages")).json()["messages"] if m["role"] == "agent"
        ]
    assert replies[1:] == ["First: a", "Turn 2: b", "Turn 3: c"]


async def test_user_messages_are_refused_unless_stable_and_not_blank_raw_is_not_kept() -> None:
    async with running(work_seconds=0.5) as (agent, http):
        blank = await http.post("/message", json={"content": " \n ", "type": "user"})
        assert blank.status_code == 500 and blank.headers["content-type"] == "application/problem+json"
        assert blank.json()["errors"] == [{"message": "failed to send message: message must not be empty"}]
        await http.post("/message", json={"content": "one", "type": "user"})
        busy = (await http.post("/message", json={"content": "two", "type": "user"})).json()
        assert {k: busy[k] for k in ("title", "status", "detail")} == {
            "title": "Internal Server Error",
            "status": 500,
            "detail": "unexpected error occurred",
        }
        assert "waiting for user input" in busy["errors"][0]["message"]
        assert (await http.post("/message", json={"content": "\x03", "type": "raw"})).json()["ok"] is True
        assert [m["content"] for m in agent.messages[1:]] == ["one"]

        missing = await http.post("/message", json={"content": "x"})
        assert missing.status_code == 422 and missing.json()["errors"][0]["location"] == "body"
        assert (await http.post("/message", json={"content": "x", "type": "bogus"})).status_code == 422
        not_json = await http.post("/message", content=b"{", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["detail"] == "validation failed"
        assert (await http.post("/message")).json()["detail"] == "request body is required"
        form = await http.post("/message", data={"content": "x"})
        assert form.status_code == 415
        assert (await http.get("/nope")).text == "404 page not found\n"
        wrong = await http.post("/status")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"


async def test_startup_delay_refuses_connections_then_init_reports_running() -> None:
    events: Events = []
    async with running(port=free_port(), startup_seconds=0.3, init_seconds=0.3) as (agent, http):
        assert await refused(agent.url)
        await until(lambda: _true(agent.listening))
        assert (await http.get("/status")).json() == {
            "$schema": f"http://127.0.0.1:{agent.port}/schemas/StatusResponseBody.json",
            "status": "running",
            "agent_type": "custom",
        }
        follower = asyncio.create_task(follow(http, events))
        await until(lambda: stable(http))
        await until(lambda: _true(len(events) == 3))
        follower.cancel()
    # AgentAPI's emitter only learns the agent type with its first status change.
    assert [d for n, d in events if n == "status_change"] == [
        {"status": "running", "agent_type": ""},
        {"status": "stable", "agent_type": "custom"},
    ]


async def test_fail_answers_500_for_the_next_requests_then_heals() -> None:
    async with running(fail={"/status": 2}) as (_, http):
        first = await http.get("/status")
        assert first.status_code == 500 and first.headers["content-type"] == "application/problem+json"
        assert first.json()["detail"] == "unexpected error occurred"
        assert (await http.get("/status")).status_code == 500
        assert (await http.get("/status")).status_code == 200
        assert (await http.get("/messages")).status_code == 200
        await http.post("/_sim/config", json={"fail": ["*"]})
        assert (await http.get("/messages")).status_code == 500
        assert (await http.get("/_sim/config")).status_code == 200  # control endpoints are never faulted


async def test_hang_never_answers_and_does_not_hold_up_a_stop() -> None:
    async with running(hang=["/messages"]) as (agent, http):
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/messages", timeout=0.5)
        assert (await http.get("/status")).status_code == 200
        hanging = asyncio.create_task(http.get("/messages", timeout=30))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await agent.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(httpx.TransportError):
            await hanging  # the connection is dropped, as when a container dies


async def test_garbage_is_not_json_even_on_the_event_stream() -> None:
    async with running(garbage=["/status", "/events"]) as (_, http):
        status = await http.get("/status")
        assert status.status_code == 200 and status.headers["content-type"].startswith("application/json")
        with pytest.raises(ValueError):
            status.json()
        events = await http.get("/events")
        assert events.headers["content-type"] == "text/event-stream"
        data = next(line for line in events.text.splitlines() if line.startswith("data: "))
        with pytest.raises(ValueError):
            json.loads(data[6:])


async def test_drop_closes_the_connection_unanswered_then_heals() -> None:
    async with running(drop={"/messages": 2}) as (agent, http):
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await http.get("/messages")
        assert (await http.get("/messages")).status_code == 200
        assert [r["path"] for r in agent.requests] == ["/messages"] * 3  # a dropped request is logged
        await http.post("/_sim/config", json={"drop": ["/events"]})
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("GET", "/events"):
                pass
        assert agent.listening and (await http.get("/status")).status_code == 200  # only that connection


async def test_slow_answers_as_usual_but_late_even_the_event_stream() -> None:
    events: Events = []
    async with running(slow={"/status": 1, "/events": 1}, slow_seconds=0.4) as (_, http):
        started = time.monotonic()
        assert (await http.get("/status")).json()["status"] == "stable"
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        assert (await http.get("/status")).status_code == 200
        assert time.monotonic() - started < 0.3  # healed after one request
        started = time.monotonic()
        follower = asyncio.create_task(follow(http, events))
        await until(lambda: _true(len(events) == 2))
        assert time.monotonic() - started >= 0.4
        follower.cancel()
    assert [n for n, _ in events] == ["message_update", "status_change"]


async def test_a_request_meets_one_fault_in_order_hang_drop_fail_garbage_slow() -> None:
    kinds = ("hang", "drop", "fail", "garbage", "slow")
    faults: dict[str, Any] = {kind: {"/status": 1} for kind in kinds}
    async with running(**faults, slow_seconds=0.3) as (_, http):
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/status", timeout=0.5)
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/status")
        assert (await http.get("/status")).status_code == 500
        with pytest.raises(ValueError):
            (await http.get("/status")).json()
        started = time.monotonic()
        assert (await http.get("/status")).json()["status"] == "stable"
        assert time.monotonic() - started >= 0.3
        config = (await http.get("/_sim/config")).json()
        assert [config[kind] for kind in kinds] == [{}] * 5  # each used up by exactly one request


async def test_500_after_accepting_keeps_and_works_on_the_message() -> None:
    async with running(fail_after_accept=True, post_delay_seconds=0.2, work_seconds=0.1) as (_, http):
        started = time.monotonic()
        answer = await http.post("/message", json={"content": "do it", "type": "user"})
        assert answer.status_code == 500 and time.monotonic() - started >= 0.2
        await until(lambda: stable(http))
        roles = [(m["role"], m["content"]) for m in (await http.get("/messages")).json()["messages"]]
    assert roles[1:] == [("user", "do it"), ("agent", "Done: do it")]


async def test_down_refuses_connections_ends_streams_and_comes_back() -> None:
    events: Events = []
    async with running() as (agent, http):
        follower = asyncio.create_task(follow(http, events))
        await until(lambda: _true(len(events) == 2))
        assert (await http.post("/_sim/config", json={"down": 0.4})).json()["ok"] is True
        await asyncio.wait_for(follower, 2)  # the stream ended
        assert await refused(agent.url)
        await until(lambda: _true(agent.listening))
        assert (await http.get("/status")).status_code == 200
        await http.post("/_sim/config", json={"down": True})
        await until(lambda: _true(not agent.listening))
        assert await refused(agent.url)


async def test_stop_closes_the_socket_and_the_streams() -> None:
    events: Events = []
    async with running() as (agent, http):
        follower = asyncio.create_task(follow(http, events))
        await until(lambda: _true(len(events) == 2))
        await agent.stop()
        await asyncio.wait_for(follower, 2)
        assert await refused(agent.url)


async def test_the_log_the_config_and_injected_messages_and_events() -> None:
    events: Events = []
    async with running() as (agent, http):
        await http.get("/status?x=1")
        await http.post("/message", json={"content": "hello", "type": "raw"})
        log = (await http.get("/_sim/log")).json()["requests"]
        assert [(r["method"], r["path"], r["query"]) for r in log] == [
            ("GET", "/status", "x=1"),
            ("POST", "/message", ""),
        ]
        assert json.loads(log[1]["body"]) == {"content": "hello", "type": "raw"}
        await http.delete("/_sim/log")
        assert (await http.get("/_sim/log")).json()["requests"] == []

        bad = await http.post("/_sim/config", json={"wrok_seconds": 1})
        assert bad.status_code == 400 and "wrok_seconds" in bad.json()["error"]
        assert (await http.post("/_sim/config", json={"work_seconds": "slow"})).status_code == 400
        config = (await http.post("/_sim/config", json={"work_seconds": 2, "reply": "ok"})).json()["config"]
        assert config["work_seconds"] == 2 and config["reply"] == "ok" and config["agent_type"] == "custom"
        assert (await http.get("/_sim/config")).json() == config

        follower = asyncio.create_task(follow(http, events))
        await until(lambda: _true(len(events) == 2))
        history = [{"content": "earlier"}, {"role": "user", "content": "and then"}]
        await http.post("/_sim/config", json={"append_messages": history})
        error = {"message": "out of credits", "level": "error", "time": "2026-01-01T00:00:00Z"}
        await http.post("/_sim/event", json={"event": "agent_error", "data": error})
        await until(lambda: _true(len(events) == 5))
        follower.cancel()
        assert [(m["role"], m["content"]) for m in agent.messages[1:]] == [
            ("agent", "earlier"),
            ("user", "and then"),
        ]
    assert events[2:] == [
        ("message_update", {"id": 1, "role": "agent", "message": "earlier", "time": events[2][1]["time"]}),
        ("message_update", {"id": 2, "role": "user", "message": "and then", "time": events[3][1]["time"]}),
        ("agent_error", error),
    ]


async def test_the_conversation_survives_a_restart_through_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "team-a" / "login.json"
    async with running(state, work_seconds=0) as (_, http):
        await http.post("/message", json={"content": "first", "type": "user"})
        await until(lambda: stable(http))
    assert len(json.loads(state.read_text())["messages"]) == 3
    async with running(state, work_seconds=0, greeting="a new greeting") as (_, http):
        await http.post("/message", json={"content": "second", "type": "user"})
        await until(lambda: stable(http))
        messages = (await http.get("/messages")).json()["messages"]
    assert [m["id"] for m in messages] == [0, 1, 2, 3, 4]
    assert [m["content"] for m in messages[1:]] == ["first", "Done: first", "second", "Done: second"]
    assert "a new greeting" not in state.read_text()  # a remembered conversation is not greeted again


async def test_only_allowed_hosts_get_an_answer() -> None:
    async with running(allowed_hosts=UPSTREAM_HOSTS) as (_, http):
        assert (await http.get("/status")).status_code == 200
        refused = await http.get("/status", headers={"Host": "127.5.0.3:3284"})  # a pod IP
        assert refused.status_code == 400 and refused.text.startswith("Invalid host header")
    async with running() as (_, http):  # the default: any host, as a workspace must run agentapi
        answer = await http.get("/status", headers={"Host": "127.5.0.3:3284"})
        assert (
            answer.json()["$schema"] == "https://127.5.0.3:3284/schemas/StatusResponseBody.json"
        )  # huma's rule


async def test_one_process_plays_many_agents() -> None:
    agents = [ScriptedAgent("127.0.0.1", 0, Behaviour()) for _ in range(200)]
    await asyncio.gather(*(a.start() for a in agents))
    try:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as http:
            answers = await asyncio.gather(*(http.get(a.url + "/status") for a in agents))
        assert {a.status_code for a in answers} == {200} and len({a.port for a in agents}) == 200
    finally:
        await asyncio.gather(*(a.stop() for a in agents))


def test_behaviour_is_parsed_strictly() -> None:
    assert Behaviour.parse(None) == Behaviour() == Behaviour.parse("")
    parsed = Behaviour.parse('{"work_seconds": 2, "fail": ["/status"], "hang": {"/events": 3}, "down": 1}')
    assert parsed.work_seconds == 2.0 and parsed.fail == {"/status": None} and parsed.hang == {"/events": 3}
    assert parsed.down == 1.0 and parsed.slow_seconds == 3.0
    slow = Behaviour.parse('{"slow": ["/events"], "slow_seconds": 0.5, "drop": {"/message": 2}}')
    assert (slow.slow, slow.slow_seconds, slow.drop) == ({"/events": None}, 0.5, {"/message": 2})
    for bad in (
        '{"wrok_seconds": 1}',
        '{"work_seconds": -1}',
        '{"work_seconds": true}',
        '{"fail": "/status"}',
        '{"fail": ["status"]}',
        '{"drop": "/status"}',
        '{"slow": {"/status": 0}}',
        '{"slow_seconds": -1}',
        '{"slow_seconds": "3"}',
        '{"reply": []}',
        '{"reply_steps": 0}',
        '{"allowed_hosts": []}',
        "[1]",
        "{not json",
    ):
        with pytest.raises(BehaviourError):
            Behaviour.parse(bad)
    assert Behaviour.parse('{"reply": "x"}', Behaviour(agent_type="claude")).agent_type == "claude"


def _pod(**changes: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {
            "namespace": "team-a",
            "name": "login-0",
            "uid": "u1",
            "labels": {"taskpod.dev/task": "login"},
            "annotations": {"sim.taskpod.dev/agent": '{"work_seconds": 1}'},
        },
        "spec": {
            "containers": [
                {"name": "sidecar", "ports": [{"name": "http", "containerPort": 8080}]},
                {
                    "name": "agent",
                    "args": ["server", "--type=claude", "--", "claude"],
                    "ports": [{"name": "agentapi", "containerPort": 4000}],
                },
            ]
        },
        "status": {"phase": "Running", "podIP": "127.5.0.3"},
    }
    for path, value in changes.items():
        section, key = path.split("__")
        pod[section][key] = value
    return pod


def test_a_running_pod_is_placed_at_its_ip_and_agentapi_port() -> None:
    assert placement(_pod()) == Placement(
        namespace="team-a",
        pod="login-0",
        uid="u1",
        ip="127.5.0.3",
        port=4000,
        task="login",
        behaviour='{"work_seconds": 1}',
        agent_type="claude",
    )
    bare = _pod(metadata__labels={}, metadata__annotations=None, spec__containers=[{"name": "agent"}])
    where = placement(bare)
    assert where is not None and (where.port, where.task, where.behaviour, where.agent_type) == (
        3284,
        "login",  # the StatefulSet's name: the pod's without its ordinal
        None,
        None,
    )
    assert placement(_pod(metadata__deletionTimestamp="2026-01-01T00:00:00Z")) is None
    assert placement(_pod(status__phase="Pending")) is None
    assert placement(_pod(status__podIP=None)) is None


def test_an_agent_keeps_its_conversation_per_workspace_volume(tmp_path: Path) -> None:
    """Across pod restarts (the same StatefulSet) one file; a task made again under an old name (a new
    StatefulSet, a new volume) starts afresh, as agentapi's state file on its volume would."""
    owned = {"uid": "s1", "controller": True, "kind": "StatefulSet"}
    first = placement(_pod(metadata__ownerReferences=[owned]))
    restarted = placement(_pod(metadata__ownerReferences=[owned], metadata__uid="u2"))
    again = placement(_pod(metadata__ownerReferences=[{**owned, "uid": "s2"}]))
    assert first is not None and restarted is not None and again is not None
    assert state_file(tmp_path, first) == state_file(tmp_path, restarted) == tmp_path / "team-a/login/s1.json"
    assert state_file(tmp_path, again) != state_file(tmp_path, first)


def test_a_pod_on_a_volume_claim_names_it_for_its_conversation() -> None:
    """The workspace's conversation lives on its claim, which outlives the pods and their controller: the
    simulator keys it by the claim's uid, looked up when the agent starts."""
    on_a_claim = placement(
        _pod(spec__volumes=[{"name": "x"}, {"name": "w", "persistentVolumeClaim": {"claimName": "ws-0"}}])
    )
    assert on_a_claim is not None and on_a_claim.claim == "ws-0"
    bare = placement(_pod())
    assert bare is not None and bare.claim is None
