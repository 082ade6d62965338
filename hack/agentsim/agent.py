"""A scripted agent that speaks AgentAPI's HTTP API (github.com/coder/agentapi v0.11.8), for tests and demos.

Why it exists: the local control plane runs no containers, so nothing would answer at a workspace pod's
IP. This plays the agent container there, scripted so that tests choose what the agent does and which
faults it shows, without a terminal, a model or an API key. It runs on asyncio (aiohttp.web): an agent is
one listening socket and a few objects, so one process plays thousands of pods.

AgentAPI endpoints, exactly as upstream (field names, status codes, error model, SSE framing: see
agentsim.wire; tests/integration/test_agentapi_contract.py holds both to the same client calls):
  GET  /status    {"$schema", "status": "stable"|"running", "agent_type"}
  GET  /messages  {"$schema", "messages": [{"id", "content", "role": "user"|"agent", "time"}]}
  POST /message   {"content", "type": "user"|"raw"} -> {"$schema", "ok": true}. `user` needs status stable
                  and content that is not blank once trimmed, else HTTP 500 problem+json; a bad body is
                  400/415/422 as huma answers it. `raw` (keystrokes) is accepted and not kept.
  POST /upload    multipart `file` (<= 10 MiB) -> {"$schema", "ok": true, "filePath"} (nothing is written)
  GET  /events    SSE: the current state first (a message_update per message, then one status_change),
                  then every change: message_update {id, role, message, time}, status_change {status,
                  agent_type}. v0.11.8 sends no other event (later versions add agent_error: use /_sim/event).
As upstream, the conversation starts with an agent message (id 0: what the terminal showed at start, here
the `greeting`), the status is `running` while the agent initialises, and a stream whose reader falls
1024 events behind is closed.

Control endpoints for tests, on the same port (not AgentAPI; never faulted, never logged):
  GET    /_sim/log     {"requests": [{"method", "path", "query", "body", "time", "forwarded_for"}, ...]}:
                       every AgentAPI request received, in order (the newest `log_limit` ones);
                       forwarded_for is the X-Forwarded-For header a proxy (e.g. the API server) added
  DELETE /_sim/log     forget them
  GET    /_sim/config  the current behaviour, as JSON
  POST   /_sim/config  merge keys below into the behaviour; also `append_messages`: [{"role", "content"}]
                       added to the conversation as if the agent (or user) had written them
  POST   /_sim/event   {"event": name, "data": {...}} sent as is to every /events stream

Behaviour (a JSON object: the pod annotation `sim.taskpod.dev/agent`, or /_sim/config; every key optional):
  agent_type          what /status and status_change report (default "custom")
  greeting            content of the first agent message; null: start with no message (default a hello)
  startup_seconds     nothing listens for this long after the agent starts: connection refused (0)
  init_seconds        then it answers but reports `running` for this long, as AgentAPI does until the
                      terminal settles; during it, /events' first status_change has agent_type "" (0)
  work_seconds        how long it is `running` on each user message before replying and going `stable` (0.5)
  reply               the answer: "{prompt}" is the user's text, "{turn}" its number; a list gives one
                      answer per turn, the last repeating (default "Done: {prompt}")
  reply_steps         the answer appears in this many growing message_update events over work_seconds,
                      as AgentAPI re-sends the last agent message while the screen changes (1)
  post_delay_seconds  POST /message answers this late, after accepting the message (0)
  fail_after_accept   POST /message accepts the message (kept, worked on), then answers 500 anyway (false)
  hang, drop, fail,   faults on AgentAPI paths ("/status", ..., or "*" for all): a list of paths (always)
  garbage, slow       or {path: count} (the next `count` requests). hang: never answers; drop: closes the
                      connection with no answer, as when the agent process dies mid-request; fail: HTTP 500
                      problem+json; garbage: HTTP 200 with a body that is not valid JSON (broken SSE data on
                      /events); slow: answered as usual, but only after slow_seconds (on /events, the stream
                      starts that late). Precedence: hang, drop, fail, garbage, slow; a request meets one
                      fault, and only that one's count is used.
  slow_seconds        how late a `slow` request is answered (3)
  down                true: stop listening (connection refused; open streams end) until the agent is
                      started again; a number: for that many seconds, then listen again (false)
  allowed_hosts       Host header names accepted, as agentapi's --allowed-hosts; others get 400 (["*"]:
                      what a workspace reached by pod IP must run with)
  log_limit           how many requests /_sim/log keeps (5000)

State: with a state file, the conversation is loaded from it at start and saved on every change (like
`agentapi --state-file`), so an agent started again for the same task remembers its conversation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from . import control, wire
from .behaviour import Behaviour

log = logging.getLogger("agentsim.agent")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Event = tuple[str, dict[str, Any]] | None  # None ends a stream
SUBSCRIBER_BUFFER = 1024  # AgentAPI closes a stream whose reader falls this far behind
MAX_UPLOAD = 10 << 20
LOG_ENTRY = web.RequestKey("log", dict[str, Any])  # the request's entry in /_sim/log


class ScriptedAgent:
    """One simulated agent container: an AgentAPI server on host:port whose conversation is scripted."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3284,
        behaviour: Behaviour | None = None,
        *,
        state_file: Path | None = None,
        name: str = "",
    ) -> None:
        self.host, self.port = host, port  # port 0: any free port, known once listening
        self.behaviour = behaviour or Behaviour()
        self.state_file = state_file
        self.name = name or f"{host}:{port}"
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.behaviour.log_limit)
        self._working = False
        self._initialising = self.behaviour.init_seconds > 0
        # What /events last announced. Like AgentAPI's emitter, the agent type is only learnt with the
        # first status change, so a stream opened while the agent initialises says agent_type "".
        self._announced = ("running", "") if self._initialising else ("stable", self.behaviour.agent_type)
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = self._stopped = False
        self._upload_dir = f"/tmp/agentapi-uploads-{int.from_bytes(os.urandom(4)) % 10**9}"
        self.messages: list[dict[str, Any]] = self._load()
        if not self.messages and self.behaviour.greeting is not None:
            self._append("agent", self.behaviour.greeting)

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def status(self) -> str:
        return "running" if self._working or self._initialising else "stable"

    async def start(self) -> None:
        """Listen now (bind errors raise), or after startup_seconds in the background, as a process starts."""
        self._started = True
        delay, down = self.behaviour.startup_seconds, self.behaviour.down
        if down is True:
            return
        delay = max(delay, 0.0 if down is False else float(down))
        if delay > 0:
            self._spawn(self._listen_after(delay))
        else:
            await self._listen()

    async def stop(self) -> None:
        """Gone, as when its pod is deleted: background work ends, streams end, nothing listens any more."""
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        await self._unlisten()

    async def go_down(self, seconds: float | None = None) -> None:
        """Stop listening (connection refused) and, with `seconds`, listen again after that long."""
        await self._unlisten()
        if seconds is not None:
            self._spawn(self._listen_after(seconds))

    async def _listen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        try:
            await self._listen()
        except OSError as exc:
            log.error("agent %s cannot listen on %s: %s", self.name, self.url, exc)

    async def _listen(self) -> None:
        if self._stopped or self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware], client_max_size=2 * MAX_UPLOAD)
        app.router.add_get("/status", self._get_status, allow_head=False)
        app.router.add_get("/messages", self._get_messages, allow_head=False)
        app.router.add_post("/message", self._post_message)
        app.router.add_post("/upload", self._post_upload)
        app.router.add_get("/events", self._get_events, allow_head=False)
        app.add_routes(control.routes(self))
        app.on_response_prepare.append(wire.drop_server_header)
        # A short shutdown: handlers still running when the agent goes (hangs) are cancelled, which
        # drops their connections, as when a container dies.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        if self._initialising:
            self._spawn(self._initialise())

    async def _unlisten(self) -> None:
        for queue in list(self._subscribers):
            queue.put_nowait(None)
        self._subscribers.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _initialise(self) -> None:
        await asyncio.sleep(self.behaviour.init_seconds)
        self._initialising = False
        self._announce()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the conversation ----------------------------------------------------------------------------

    def _load(self) -> list[dict[str, Any]]:
        if self.state_file is None or not self.state_file.exists():
            return []
        try:
            stored = json.loads(self.state_file.read_text())["messages"]
            return [
                {"id": i, "content": str(m["content"]), "role": str(m["role"]), "time": str(m["time"])}
                for i, m in enumerate(stored)
            ]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "agent %s: unreadable state file %s (%s); starting afresh", self.name, self.state_file, exc
            )
            return []

    def _save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps({"version": 1, "messages": self.messages}))  # ASCII: any text fits
        temporary.replace(self.state_file)  # atomic: a stop mid-write never leaves half a file

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every /events stream (a reader 1024 events behind is dropped, as upstream)."""
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_BUFFER:
                self._subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait((event, data))

    @staticmethod
    def _update(message: dict[str, Any]) -> dict[str, Any]:
        """A message as message_update carries it: the content is called `message` there."""
        return {
            "id": message["id"],
            "role": message["role"],
            "message": message["content"],
            "time": message["time"],
        }

    def _append(self, role: str, content: str) -> None:
        message = {"id": len(self.messages), "content": content, "role": role, "time": wire.now()}
        self.messages.append(message)
        self._save()
        self.publish("message_update", self._update(message))

    def _rewrite(self, index: int, content: str) -> None:
        message = self.messages[index]
        message.update(content=content, time=wire.now())
        self._save()
        self.publish("message_update", self._update(message))

    def _announce(self) -> None:
        """status_change, only when the status differs from the last one announced (as AgentAPI)."""
        if self._announced[0] != self.status:
            self._announced = (self.status, self.behaviour.agent_type)
            self.publish("status_change", {"status": self._announced[0], "agent_type": self._announced[1]})

    def say(self, content: str, role: str = "agent") -> None:
        """Add a message to the conversation, as if the agent (or the user at the terminal) wrote it."""
        self._append(role, content)

    async def _work(self, prompt: str, turn: int) -> None:
        behaviour = self.behaviour
        answer, steps = behaviour.reply_for(prompt, turn), behaviour.reply_steps
        index = -1
        for step in range(1, steps + 1):
            await asyncio.sleep(behaviour.work_seconds / steps)
            part = answer[: math.ceil(len(answer) * step / steps)]
            if step == 1:
                index = len(self.messages)
                self._append("agent", part)
            else:
                self._rewrite(index, part)
        self._working = False
        self._announce()

    def _accept(self, content: str) -> None:
        turn = 1 + sum(1 for m in self.messages if m["role"] == "user")
        self._working = True
        self._announce()
        self._append("user", content)
        self._spawn(self._work(content, turn))

    # -- HTTP ----------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        behaviour = self.behaviour
        if request.path.startswith("/_sim/"):  # a test must reach them whatever the agent's settings
            return await handler(request)
        multipart = request.content_type.startswith("multipart/")
        text = f"<{request.content_type}>" if multipart else (await request.read()).decode(errors="replace")
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "forwarded_for": request.headers.get("X-Forwarded-For"),
        }
        self.requests.append({**entry, "body": text, "time": wire.now()})
        request[LOG_ENTRY] = self.requests[-1]
        if not behaviour.host_allowed(request.host):
            return wire.bad_host(behaviour.allowed_hosts)
        try:
            fault = behaviour.fault_for(request.path)
            if fault == "hang":
                await asyncio.Event().wait()  # until the agent goes and its connections are cut
            if fault == "drop":
                # Closed unanswered, as a dying process's socket is; nothing can be written after it.
                request.protocol.force_close()
                return web.Response()
            if fault == "fail":
                return wire.unexpected(request, f"scripted failure of {request.method} {request.path}")
            if fault == "garbage":
                return wire.garbage(request.path)
            if fault == "slow":
                await asyncio.sleep(behaviour.slow_seconds)
            return await handler(request)
        except web.HTTPNotFound:
            return wire.not_found()
        except web.HTTPMethodNotAllowed as exc:
            return wire.method_not_allowed(set(exc.allowed_methods))

    async def _get_status(self, request: web.Request) -> web.Response:
        payload = {"status": self.status, "agent_type": self.behaviour.agent_type}
        return wire.body(request, "StatusResponseBody", payload)

    async def _get_messages(self, request: web.Request) -> web.Response:
        return wire.body(request, "MessagesResponseBody", {"messages": self.messages})

    async def _post_message(self, request: web.Request) -> web.Response:
        data, refusal = wire.read_message_body(request, await request.read())
        if refusal is not None:
            return refusal
        assert data is not None
        if data["type"] == "user":
            content = data["content"].strip()  # AgentAPI trims before checking and keeping it
            if self.status != "stable":
                return wire.unexpected(request, wire.NOT_STABLE)
            if not content:
                return wire.unexpected(request, wire.EMPTY)
            self._accept(content)
            if self.behaviour.post_delay_seconds:
                await asyncio.sleep(self.behaviour.post_delay_seconds)
            if self.behaviour.fail_after_accept:
                return wire.unexpected(request, "failed to send message: scripted failure after accepting it")
        return wire.body(request, "MessageResponseBody", {"ok": True})

    async def _post_upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            why = "cannot read multipart form: request Content-Type isn't multipart/form-data"
            return wire.problem(request, 422, "validation failed", [{"message": why, "location": "body"}])
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.name == "file":
                data = await part.read()
                if len(data) > MAX_UPLOAD:
                    return wire.problem(request, 400, "file size exceeds 10MB limit")
                filename = os.path.basename(part.filename or "file")
                request[LOG_ENTRY]["body"] = f"<file {filename}, {len(data)} bytes>"
                checksum = hashlib.sha256(data).hexdigest()[:16]
                path = f"{self._upload_dir}/{checksum}/{filename}"
                return wire.body(request, "UploadResponseBody", {"ok": True, "filePath": path})
        return wire.problem(
            request, 422, "validation failed", [{"message": "File required", "location": "file"}]
        )

    async def _get_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=wire.SSE_HEADERS)
        await response.prepare(request)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        for message in self.messages:  # the current state first, as AgentAPI does
            queue.put_nowait(("message_update", self._update(message)))
        queue.put_nowait(("status_change", {"status": self._announced[0], "agent_type": self._announced[1]}))
        self._subscribers.add(queue)
        try:
            while (item := await queue.get()) is not None:
                await response.write(wire.sse(*item))
        except ConnectionError:
            return response
        finally:
            self._subscribers.discard(queue)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    def configure(self, changes: dict[str, Any]) -> None:
        """Merge behaviour keys (as POST /_sim/config does); `down` takes effect at once."""
        self.behaviour = self.behaviour.merged(changes)
        if self.requests.maxlen != self.behaviour.log_limit:
            self.requests = collections.deque(self.requests, maxlen=self.behaviour.log_limit)
        down = self.behaviour.down
        if "down" in changes and down is not False and self._started:
            # Behind this request: the agent's own shutdown waits for the answer to be sent.
            self.behaviour = self.behaviour.merged({"down": False})
            self._spawn(self.go_down(None if down is True else float(down)))
