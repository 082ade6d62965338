"""A client for AgentAPI (github.com/coder/agentapi), the HTTP server in front of the coding agent.

The operator and the kubectl plugin reach an agent two ways: straight at `http://<podIP>:<port>` from
inside the cluster, or through the API server's pod proxy (`pods/proxy`) from anywhere kubectl works.
Both are a base URL on one aiohttp session (a Transport) configured with the right credentials.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from taskpod.api.models import AgentStatus, storable
from taskpod.controller import metrics


class AgentUnavailable(Exception):
    """The agent did not answer: nothing listens, the connection broke, or it timed out."""


class AgentError(Exception):
    """The agent answered, but with an error or with something that is not AgentAPI's JSON."""


@dataclass(frozen=True)
class AgentMessage:
    id: int
    role: str  # user | agent
    content: str
    time: str

    def dump(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "content": self.content, "time": self.time}


@dataclass(frozen=True)
class AgentEvent:
    """One Server-Sent Event: message_update, status_change or agent_error, with its JSON data."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StatusReport:
    status: AgentStatus
    agent_type: str


def _why(exc: BaseException) -> str:
    """An exception's kind and text (a timeout's text is often empty)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def agent_url(server: str | None, namespace: str, pod: str, pod_ip: str, port: int) -> str:
    """Where a pod's AgentAPI answers: at its IP (`server` None: in-cluster, or a local control plane),
    or through the API server `server`'s proxy to the pod's port, which needs `pods/proxy` permission."""
    if server is None:
        return f"http://{pod_ip}:{port}"
    return f"{server.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy"


class AgentClient:
    """One agent's AgentAPI, at `base_url`, on a session that many agents share (its Transport's)."""

    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        timeout: float = 5.0,
        reach: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.timeout = timeout
        self.reach = reach  # what each request carries (see Transport), asked for per request

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return await self._json_once(method, path, body)
        except AgentUnavailable:
            metrics.AGENTAPI_ERRORS.labels(call=f"{method} {path}", kind="unavailable").inc()
            raise
        except AgentError:
            metrics.AGENTAPI_ERRORS.labels(call=f"{method} {path}", kind="error").inc()
            raise

    async def _json_once(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        try:
            async with self.http.request(
                method,
                self.base_url + path,
                json=body,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                **self.reach(),
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(f"{method} {path}: {_why(exc)}") from exc
        if status in (502, 503, 504):  # the pod proxy could not reach the agent
            raise AgentUnavailable(f"{method} {path}: HTTP {status}")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise AgentError(f"{method} {path}: HTTP {status}, not JSON") from exc
        if status >= 400:
            detail = data.get("detail") or data.get("title") if isinstance(data, dict) else data
            raise AgentError(f"{method} {path}: HTTP {status}: {detail}")
        return data

    async def status(self) -> StatusReport:
        data = await self._json("GET", "/status")
        try:
            return StatusReport(AgentStatus(data["status"]), str(data.get("agent_type", "")))
        except (KeyError, ValueError, TypeError) as exc:
            raise AgentError(f"GET /status: unexpected answer {str(data)[:200]}") from exc

    async def messages(self) -> list[AgentMessage]:
        data = await self._json("GET", "/messages")
        try:
            return [
                AgentMessage(int(m["id"]), str(m["role"]), storable(str(m["content"])), str(m["time"]))
                for m in data["messages"]
            ]
        except (KeyError, ValueError, TypeError) as exc:
            raise AgentError(f"GET /messages: unexpected answer {str(data)[:200]}") from exc

    async def send(self, content: str, kind: str = "user") -> None:
        """POST a message; `user` needs the agent stable, `raw` writes keystrokes."""
        data = await self._json("POST", "/message", {"content": content, "type": kind})
        if not (isinstance(data, dict) and data.get("ok")):
            raise AgentError(f"POST /message: not accepted: {str(data)[:200]}")

    async def events(self) -> AsyncGenerator[AgentEvent, None]:
        """Follow /events: the current state first, then every change, until the stream ends."""
        try:
            async for event in self._events():
                yield event
        except AgentUnavailable:
            metrics.AGENTAPI_ERRORS.labels(call="GET /events", kind="unavailable").inc()
            raise
        except AgentError:
            metrics.AGENTAPI_ERRORS.labels(call="GET /events", kind="error").inc()
            raise

    async def _events(self) -> AsyncGenerator[AgentEvent, None]:
        # Connecting and the headers must come within the timeout; after that, a quiet stream is just
        # an idle agent, so aiohttp's own timeouts are all off.
        try:
            async with asyncio.timeout(self.timeout):
                url = self.base_url + "/events"
                response = await self.http.get(url, timeout=aiohttp.ClientTimeout(), **self.reach())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(f"GET /events: {_why(exc)}") from exc
        try:
            if response.status != 200:
                raise AgentError(f"GET /events: HTTP {response.status}")
            async for kind, text in server_sent_events(response.content.iter_any()):
                try:
                    data = json.loads(text)
                except ValueError as exc:
                    raise AgentError(f"/events: not JSON: {text[:100]}") from exc
                yield AgentEvent(kind, data if isinstance(data, dict) else {"value": data})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(f"GET /events: {_why(exc)}") from exc
        finally:
            response.close()  # mid-stream: the connection goes with it, never back to the pool


# An event larger than this is an agent gone wrong, not a conversation: the stream is dropped.
MAX_EVENT_BYTES = 16 * 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")


async def server_sent_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[tuple[str, str], None]:
    """A text/event-stream's events as (event type, data), by the WHATWG's rules for reading one.

    aiohttp reads no SSE itself, and the readers built on it bring a reconnect loop of their own, where
    the follower has one already. tests/unit/test_agentapi.py holds this one to httpx-sse's.
    """
    kind, size = "", 0
    data: list[str] = []
    async for line in _sse_lines(chunks):
        if not line:  # a blank line dispatches the event, if it has data
            if data:
                yield kind or "message", "\n".join(data)
            kind, data, size = "", [], 0
            continue
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"event":
            kind = value.decode("utf-8", "replace")
        elif field == b"data":  # id, retry and comments (":") are of no use here
            size += len(value)
            if size > MAX_EVENT_BYTES:
                raise AgentError(f"GET /events: an event over {MAX_EVENT_BYTES} bytes")
            data.append(value.decode("utf-8", "replace"))


async def _sse_lines(chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    """Lines end at CRLF, CR or LF and nowhere else: an agent's JSON may carry NEL or U+2028 raw, where a
    general line reader would cut the event in two. CR and LF are single bytes in UTF-8, never inside a
    character, so lines are split as bytes, and a character cut between chunks is whole again."""
    line: list[bytes] = []  # the line so far, across chunks
    size = 0
    cr = False  # the last chunk ended at a CR, which may be the first half of a CRLF
    async for chunk in chunks:
        if cr:
            chunk, cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, cr = chunk[:-1], True
        *ended, rest = _LINE_END.split(chunk)
        for piece in ended:
            line.append(piece)
            yield b"".join(line)
            line, size = [], 0
        line.append(rest)
        size += len(rest)
        if size > MAX_EVENT_BYTES:
            raise AgentError(f"GET /events: a line over {MAX_EVENT_BYTES} bytes")
    if cr:  # the stream ended at a CR: that ended the line
        yield b"".join(line)


class Transport:
    """How agents are reached: one aiohttp session for all of them, straight to their pod IPs
    (`server` None), or through the pod proxy of the API server `server`. `reach` gives the keyword
    arguments each request carries there (the credentials, the kubeconfig's proxy and tls-server-name),
    asked for per request. A client per agent costs nothing; whoever made the Transport closes it."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        server: str | None = None,
        reach: Callable[[], Mapping[str, Any]] = dict,
        timeout: float = 5.0,
    ) -> None:
        self.http, self.server, self.reach, self.timeout = http, server, reach, timeout

    def client(self, namespace: str, pod: str, pod_ip: str, port: int) -> AgentClient:
        url = agent_url(self.server, namespace, pod, pod_ip, port)
        return AgentClient(url, self.http, self.timeout, self.reach)

    async def aclose(self) -> None:
        await self.http.close()
