"""The /_sim/ control endpoints of a scripted agent (documented in agentsim.agent).

They live on the agent's own port so that a test holding only a pod IP can reach them, exactly where the
operator reaches the agent; they are not part of AgentAPI, so they are never faulted and never logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .behaviour import BehaviourError

if TYPE_CHECKING:
    from .agent import ScriptedAgent


def routes(agent: ScriptedAgent) -> list[web.RouteDef]:
    async def get_log(request: web.Request) -> web.Response:
        return web.json_response({"requests": list(agent.requests)})

    async def clear_log(request: web.Request) -> web.Response:
        agent.requests.clear()
        return web.json_response({"ok": True})

    async def get_config(request: web.Request) -> web.Response:
        return web.json_response(agent.behaviour.dump())

    async def post_config(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise BehaviourError("expected a JSON object")
            appended = messages_to_append(data.pop("append_messages", []))
            agent.configure(data)
        except (ValueError, BehaviourError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for role, content in appended:
            agent.say(content, role)
        return web.json_response({"ok": True, "config": agent.behaviour.dump()})

    async def post_event(request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            data = None
        if not (
            isinstance(data, dict)
            and isinstance(data.get("event"), str)
            and isinstance(data.get("data"), dict)
        ):
            return web.json_response({"error": 'expected {"event": name, "data": {...}}'}, status=400)
        agent.publish(data["event"], data["data"])
        return web.json_response({"ok": True})

    return [
        web.get("/_sim/log", get_log, allow_head=False),
        web.delete("/_sim/log", clear_log),
        web.get("/_sim/config", get_config, allow_head=False),
        web.post("/_sim/config", post_config),
        web.post("/_sim/event", post_event),
    ]


def messages_to_append(value: Any) -> list[tuple[str, str]]:
    """`append_messages` as (role, content) pairs; the role defaults to agent."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict)
        and isinstance(m.get("content"), str)
        and m.get("role", "agent") in ("agent", "user")
        for m in value
    ):
        raise BehaviourError('append_messages: expected a list of {"role": "agent"|"user", "content": "..."}')
    return [(str(m.get("role", "agent")), str(m["content"])) for m in value]
