"""A client for AgentAPI (github.com/coder/agentapi), the HTTP server in front of the coding agent.

The operator and the kubectl plugin reach an agent two ways: straight at `http://<podIP>:<port>` from
inside the cluster, or through the API server's pod proxy (`pods/proxy`) from anywhere kubectl works.
Both are just a base URL plus an httpx client configured with the right credentials.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

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
    def __init__(self, base_url: str, http: httpx.AsyncClient, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.timeout = timeout

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
            response = await self.http.request(method, self.base_url + path, json=body, timeout=self.timeout)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise AgentUnavailable(f"{method} {path}: {_why(exc)}") from exc
        if response.status_code in (502, 503, 504):  # the pod proxy could not reach the agent
            raise AgentUnavailable(f"{method} {path}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise AgentError(f"{method} {path}: HTTP {response.status_code}, not JSON") from exc
        if response.status_code >= 400:
            detail = data.get("detail") or data.get("title") if isinstance(data, dict) else data
            raise AgentError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        return data

    async def aclose(self) -> None:
        await self.http.aclose()

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
        request = self.http.build_request(
            "GET", self.base_url + "/events", timeout=httpx.Timeout(self.timeout, read=None)
        )
        try:
            # Headers must come within the timeout; after that, a quiet stream is just an idle agent.
            response = await asyncio.wait_for(self.http.send(request, stream=True), self.timeout)
        except (httpx.TransportError, httpx.TimeoutException, TimeoutError) as exc:
            raise AgentUnavailable(f"GET /events: {_why(exc)}") from exc
        try:
            if response.status_code != 200:
                raise AgentError(f"GET /events: HTTP {response.status_code}")
            # httpx-sse splits lines where SSE does (CR, LF, CRLF); httpx's own aiter_lines also splits at
            # NEL and U+2028, which an agent's JSON may carry raw, and cut such an event in two.
            async for sse in EventSource(response).aiter_sse():
                try:
                    data = json.loads(sse.data)
                except ValueError as exc:
                    raise AgentError(f"/events: not JSON: {sse.data[:100]}") from exc
                yield AgentEvent(sse.event, data if isinstance(data, dict) else {"value": data})
        except SSEError as exc:
            raise AgentError(f"GET /events: {exc}") from exc
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise AgentUnavailable(f"GET /events: {_why(exc)}") from exc
        finally:
            await response.aclose()
