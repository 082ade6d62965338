"""AgentAPI v0.11.8's wire format, as its HTTP stack (huma v2 on chi) writes it.

A client that works against the scripted agent must work against the real one, so the scripted agent
copies what a client can see, not only the documented fields: the `$schema` link huma adds to every JSON
object it returns (and its `Link` header), RFC 9457 problem+json errors with huma's titles and detail
texts, chi's plain-text 404 and empty 405, the request-body validation (400 / 415 / 422) and the SSE
framing and headers. tests/integration/test_agentapi_contract.py checks these against the real binary.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Accel-Buffering": "no",
    "X-Proxy-Buffering": "no",
    "Connection": "keep-alive",
}
TITLES = {
    400: "Bad Request",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
}
MESSAGE_TYPES = ("user", "raw")
# Messages AgentAPI's conversation returns for a user message it cannot take (lib/screentracker).
NOT_STABLE = "failed to send message: message can only be sent when the agent is waiting for user input"
EMPTY = "failed to send message: message must not be empty"


def now() -> str:
    """A timestamp as Go marshals a UTC time.Time (RFC 3339, fractional seconds, `Z`)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(data: Any) -> str:
    """Compact JSON without ASCII escaping, like Go's encoding/json. Text holding a lone surrogate (which
    a test may script, and Go would never send) goes out escaped, as an adversarial agent's JSON may."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":"))
    return text


def _schema(request: web.Request, name: str) -> str:
    # huma's rule, TLS or not: http only for a Host starting with localhost or 127.0.0.1.
    scheme = "http" if request.host.startswith(("localhost", "127.0.0.1")) else "https"
    return f"{scheme}://{request.host}/schemas/{name}.json"


def body(
    request: web.Request,
    name: str,
    payload: dict[str, Any],
    status: int = 200,
    kind: str = "application/json",
) -> web.Response:
    """A JSON answer with huma's `$schema` field (first) and `Link` header, as every AgentAPI answer has."""
    return web.Response(
        status=status,
        body=dumps({"$schema": _schema(request, name), **payload}).encode(),
        headers={"Content-Type": kind, "Link": f'</schemas/{name}.json>; rel="describedBy"'},
    )


def problem(
    request: web.Request, status: int, detail: str, errors: list[dict[str, Any]] | None = None
) -> web.Response:
    """huma's ErrorModel: {$schema, title, status, detail, errors?} as application/problem+json."""
    payload: dict[str, Any] = {"title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        payload["errors"] = errors
    return body(request, "ErrorModel", payload, status, "application/problem+json")


def unexpected(request: web.Request, message: str) -> web.Response:
    """What huma makes of a Go error returned by a handler: 500, a fixed detail, the error as `errors`."""
    return problem(request, 500, "unexpected error occurred", [{"message": message}])


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Go's net/http sends no Server header; aiohttp does."""
    response.headers.popall("Server", None)


def not_found() -> web.Response:
    return web.Response(
        status=404, text="404 page not found\n", headers={"X-Content-Type-Options": "nosniff"}
    )


def method_not_allowed(allowed: set[str]) -> web.Response:
    return web.Response(status=405, headers={"Allow": ", ".join(sorted(allowed - {"HEAD"}))})


def bad_host(allowed: list[str]) -> web.Response:
    return web.Response(
        status=400,
        text="Invalid host header. Allowed hosts: " + ", ".join(allowed) + "\n",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def garbage(path: str) -> web.Response:
    """A 200 whose body is not what it claims to be: truncated JSON, or an SSE event with broken data."""
    if path == "/events":
        return web.Response(body=b'event: message_update\ndata: {"id":0,"role":\n\n', headers=SSE_HEADERS)
    return web.Response(body=b'{"status":"stab', headers={"Content-Type": "application/json"})


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event as huma's sse package writes it: named event, one JSON data line."""
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


def read_message_body(request: web.Request, raw: bytes) -> tuple[dict[str, Any] | None, web.Response | None]:
    """POST /message's body, or huma's answer to a body it refuses (in huma's order of checks)."""
    if not raw:
        return None, problem(request, 400, "request body is required")
    kind = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
    text = raw.decode(errors="replace")
    if kind and kind != "application/json" and not kind.endswith("+json"):
        where = {"message": f"unknown content type: {kind}", "location": "body", "value": text}
        return None, problem(request, 415, "validation failed", [where])
    try:
        data = json.loads(raw)
    except ValueError as exc:
        where = {"message": str(exc), "location": "body", "value": text}
        return None, problem(request, 400, "validation failed", [where])
    errors = message_body_errors(data)
    if errors:
        return None, problem(request, 422, "validation failed", errors)
    return data, None


def message_body_errors(data: Any) -> list[dict[str, Any]]:
    """The JSON-schema errors huma reports for a MessageRequestBody; empty when the body is valid."""
    if not isinstance(data, dict):
        return [{"message": "expected object", "location": "body", "value": data}]
    errors: list[dict[str, Any]] = [
        {"message": f"expected required property {key} to be present", "location": "body", "value": data}
        for key in ("content", "type")
        if key not in data
    ]
    for key in data:
        if key not in ("$schema", "content", "type"):
            errors.append({"message": "unexpected property", "location": f"body.{key}", "value": data})
    for key in ("content", "type"):
        if key in data and not isinstance(data[key], str):
            errors.append({"message": "expected string", "location": f"body.{key}", "value": data[key]})
    if isinstance(data.get("type"), str) and data["type"] not in MESSAGE_TYPES:
        errors.append({"location": "body.type", "value": data["type"]})  # huma gives no message here
    return errors
