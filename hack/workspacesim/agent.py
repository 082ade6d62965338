"""A scripted agent that speaks AgentAPI's HTTP protocol, for tests and the demo.

It implements GET /status, GET /messages, POST /message and GET /events (Server-Sent Events) with
AgentAPI v0.11's field names, on asyncio, so one process can host thousands of them.

Behaviour comes from a JSON script (the pod annotation `sim.taskpod.dev/agent`), all keys optional:
  startup_seconds      nothing listens for this long after the pod starts (default 0)
  work_seconds         how long the agent is `running` on each user message (default 0.5)
  reply                its answer; "{prompt}" is replaced by the user's text (default "Done: {prompt}")
  post_delay_seconds   POST /message answers this late, after accepting the message (default 0)
  fail_after_accept    POST /message accepts the message, then answers 500 anyway (default false)
  fail / hang / garbage  lists of paths that answer 500, never answer, or answer invalid JSON
Tests change a running agent with POST /_sim/config (same keys, plus `append_messages`: a list of
{role, content} added to the conversation) and read every request it got with GET /_sim/log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Script:
    startup_seconds: float = 0.0
    work_seconds: float = 0.5
    reply: str = "Done: {prompt}"
    post_delay_seconds: float = 0.0
    fail_after_accept: bool = False
    fail: list[str] = field(default_factory=list)
    hang: list[str] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | dict[str, Any] | None) -> Script:
        data = json.loads(raw) if isinstance(raw, str) else (raw or {})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def update(self, data: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in data:
                setattr(self, f.name, data[f.name])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, detail: str) -> web.Response:
    body = {"title": web.HTTPException.__name__, "status": status, "detail": detail}
    return web.json_response(body, status=status)


class ScriptedAgent:
    def __init__(
        self, host: str, port: int, script: Script, agent_type: str = "custom", state_file: Path | None = None
    ) -> None:
        self.host, self.port, self.script, self.agent_type = host, port, script, agent_type
        self.state_file = state_file
        self.messages: list[dict[str, Any]] = self._load()
        self.status = "stable"
        self.requests: list[dict[str, Any]] = []
        self._subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = set()
        self._runner: web.AppRunner | None = None
        self._work: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.script.startup_seconds:
            await asyncio.sleep(self.script.startup_seconds)
        app = web.Application(client_max_size=32 * 2**20)  # tests load megabytes of history
        app.middlewares.append(self._faults)
        app.add_routes(
            [
                web.get("/status", self._status),
                web.get("/messages", self._messages),
                web.post("/message", self._message),
                web.get("/events", self._events),
                web.get("/_sim/log", self._log),
                web.post("/_sim/config", self._config),
            ]
        )
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=0.1).start()

    async def stop(self) -> None:
        """Gone, as when its pod is deleted: streams end and nothing listens any more."""
        if self._work is not None:
            self._work.cancel()
        for queue in list(self._subscribers):
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the conversation -------------------------------------------------------------------

    def _load(self) -> list[dict[str, Any]]:
        if self.state_file is not None and self.state_file.exists():
            return list(json.loads(self.state_file.read_text())["messages"])
        return []

    def _save(self) -> None:
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps({"messages": self.messages}))

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        for queue in self._subscribers:
            queue.put_nowait((kind, data))

    def _add(self, role: str, content: str) -> None:
        message = {"id": len(self.messages), "content": content, "role": role, "time": _now()}
        self.messages.append(message)
        self._save()
        self._publish("message_update", self._update_body(message))

    @staticmethod
    def _update_body(message: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": message["id"],
            "role": message["role"],
            "message": message["content"],
            "time": message["time"],
        }

    def _set_status(self, status: str) -> None:
        self.status = status
        self._publish("status_change", {"status": status, "agent_type": self.agent_type})

    async def _work_on(self, prompt: str) -> None:
        self._set_status("running")
        await asyncio.sleep(self.script.work_seconds)
        self._add("agent", self.script.reply.replace("{prompt}", prompt))
        self._set_status("stable")

    # -- HTTP ------------------------------------------------------------------------------

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.text() if request.can_read_body else ""
        self.requests.append({"method": request.method, "path": request.path, "body": body, "time": _now()})
        if request.path.startswith("/_sim/"):
            return await handler(request)  # type: ignore[no-any-return]
        if request.path in self.script.hang:
            await asyncio.Event().wait()
        if request.path in self.script.fail:
            return _error(500, "scripted failure")
        if request.path in self.script.garbage:
            return web.Response(text="{not json", content_type="application/json")
        return await handler(request)  # type: ignore[no-any-return]

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"status": self.status, "agent_type": self.agent_type})

    async def _messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.messages})

    async def _message(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "the body is not JSON")
        content, kind = str(body.get("content", "")), body.get("type")
        if kind == "raw":
            return web.json_response({"ok": True})
        if kind != "user":
            return _error(422, f"unknown message type {kind!r}")
        if not content.strip():
            return _error(500, "message content cannot be empty")
        if self.status != "stable":
            return _error(500, "agent is not stable: wait for it to finish before sending a user message")
        self._add("user", content)
        self._work = asyncio.get_running_loop().create_task(self._work_on(content))
        if self.script.post_delay_seconds:
            await asyncio.sleep(self.script.post_delay_seconds)
        if self.script.fail_after_accept:
            return _error(500, "scripted failure after accepting the message")
        return web.json_response({"ok": True})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        for message in self.messages:  # the current state first, as AgentAPI does
            queue.put_nowait(("message_update", self._update_body(message)))
        queue.put_nowait(("status_change", {"status": self.status, "agent_type": self.agent_type}))
        self._subscribers.add(queue)
        try:
            while (item := await queue.get()) is not None:
                kind, data = item
                await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    async def _log(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests})

    async def _config(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.script.update(data)
        for message in data.get("append_messages", []):
            self._add(str(message.get("role", "agent")), str(message["content"]))
        return web.json_response({"ok": True})
