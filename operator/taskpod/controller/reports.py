"""The agent's own report of its state (complete, failed, working or idle, a message, a link): Coder's
report_task, which only the agent can make.

The agent POSTs `{"state", "message", "uri"}` to the operator's report endpoint with the ServiceAccount
token its pod is given for the audience "taskpod". That token is useless against the API server, and it is
bound to the pod: a TokenReview tells the operator exactly which pod is speaking, hence which task and
which lifetime. No per-task RBAC objects, no Secrets; a report from an earlier pod of the task is refused.

The workspace reports its checkout's git state the same way, to `<endpoint>/git` (images/workspace/
git-state.mjs): `{"branch", "head", "base", "ahead", "filesChanged", "insertions", "deletions",
"uncommitted"}`, with `"pushed": {"branch", "commit"}` or `"pushError"` after a push.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from taskpod.api.models import AgentState, GitState, PushRecord, storable
from taskpod.core import clock

log = logging.getLogger("taskpod.controller.reports")
AUDIENCE = "taskpod"
TOKEN_PATH = "/var/run/taskpod/token"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
MAX_MESSAGE = 1024
MAX_BRANCH = 255
COMMIT = re.compile(r"[0-9a-f]{4,64}")


@dataclass(frozen=True)
class Reporter:
    """Who is reporting, as the API server vouches for it."""

    namespace: str
    pod: str
    pod_uid: str


@dataclass(frozen=True)
class AgentReport:
    state: AgentState
    message: str
    uri: str | None
    at: dt.datetime


def reporter(review_status: Mapping[str, Any]) -> Reporter | None:
    """The pod behind a TokenReview's answer, or None unless it is an authenticated pod-bound token."""
    if not review_status.get("authenticated"):
        return None
    user = review_status.get("user") or {}
    parts = str(user.get("username", "")).split(":")
    extra = user.get("extra") or {}
    pods, uids = extra.get(POD_NAME) or [], extra.get(POD_UID) or []
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not pods or not uids:
        return None
    return Reporter(namespace=parts[2], pod=str(pods[0]), pod_uid=str(uids[0]))


def parse(body: Any, now: dt.datetime) -> AgentReport:
    """A report from the agent's JSON; ValueError says what is wrong with it."""
    if not isinstance(body, dict):
        raise ValueError('expected a JSON object {"state", "message", "uri"}')
    try:
        state = AgentState(str(body.get("state")))
    except ValueError:
        raise ValueError(f"state must be one of {', '.join(s.value for s in AgentState)}") from None
    message = storable(" ".join(str(body.get("message") or "").split())[:MAX_MESSAGE])
    uri = body.get("uri")
    if uri is not None and not isinstance(uri, str):
        raise ValueError("uri must be a string")
    return AgentReport(state, message, storable(uri) if uri else None, now)


def parse_git(body: Any, now: dt.datetime) -> GitState:
    """A checkout's state from the workspace's JSON; ValueError says what is wrong with it."""
    if not isinstance(body, dict):
        raise ValueError('expected a JSON object {"branch", "head", "base", "ahead", ...}')
    fields = ("branch", "head", "base", "ahead", "filesChanged", "insertions", "deletions", "uncommitted")
    try:
        state = GitState.model_validate({k: body[k] for k in fields if body.get(k) is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{first['loc'][0]}: {first['msg']}") from None
    for name in ("head", "base"):
        commit = getattr(state, name)
        if commit is not None and not COMMIT.fullmatch(commit):
            raise ValueError(f"{name} must be a commit's hash")
    branch = storable(state.branch[:MAX_BRANCH]) if state.branch else None
    update: dict[str, Any] = {
        "branch": branch,
        "reported_at": now,
        "url": None,
        "pushed": None,
        "push_error": None,
    }
    pushed, push_error = body.get("pushed"), body.get("pushError")
    if pushed is not None:
        if not isinstance(pushed, dict) or not isinstance(pushed.get("branch"), str):
            raise ValueError('pushed must be {"branch", "commit"}')
        if not COMMIT.fullmatch(str(pushed.get("commit"))):
            raise ValueError("pushed.commit must be a commit's hash")
        record = {
            "branch": storable(pushed["branch"][:MAX_BRANCH]),
            "commit": pushed["commit"],
            "pushed_at": now,
        }
        update["pushed"] = PushRecord(**record)
    elif push_error is not None:
        update["push_error"] = storable(" ".join(str(push_error).split())[:MAX_MESSAGE]) or "no reason given"
    return state.model_copy(update=update)


def _short(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)  # ApiException: "Forbidden" rather than the whole response
    return f"{type(exc).__name__}: {reason}" if reason else repr(exc)


Review = Callable[[str], Awaitable[Mapping[str, Any]]]
Accept = Callable[[Reporter, AgentReport], Awaitable[str | None]]  # None: accepted; else why not
AcceptGit = Callable[[Reporter, GitState], Awaitable[str | None]]


def app(review: Review, accept: Accept, accept_git: AcceptGit | None = None) -> web.Application:
    """POST /report (and /report/git): 401 without a valid pod token, 409 from a pod that is not the
    task's current one, 503 when the token cannot be checked now (the agent retries)."""

    async def report(request: web.Request) -> web.Response:
        return await _received(request, parse, accept, "state")

    async def git(request: web.Request) -> web.Response:
        if accept_git is None:
            return web.json_response({"error": "git state is not taken here"}, status=404)
        return await _received(request, parse_git, accept_git, "head")

    async def _received(
        request: web.Request,
        parser: Callable[[Any, dt.datetime], Any],
        taker: Callable[[Reporter, Any], Awaitable[str | None]],
        what: str,
    ) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.json_response({"error": "a Bearer token is required"}, status=401)
        try:
            status = await review(header[7:])
        except Exception as exc:  # e.g. no RBAC for TokenReviews, or the API server is away: retry later
            log.error("cannot verify a report's token: %s", _short(exc))
            return web.json_response({"error": "cannot verify the token now; try again"}, status=503)
        who = reporter(status)
        if who is None:
            return web.json_response({"error": "the token is not a taskpod workspace pod's"}, status=401)
        try:
            body = await request.json()
            parsed = parser(body, clock.now())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        refusal = await taker(who, parsed)
        if refusal is not None:
            return web.json_response({"error": refusal}, status=409)
        log.info("%s from %s/%s: %s", request.path, who.namespace, who.pod, getattr(parsed, what))
        return web.json_response({"ok": True})

    application = web.Application(client_max_size=64 * 1024)
    application.add_routes([web.post("/report", report), web.post("/report/git", git)])
    return application
