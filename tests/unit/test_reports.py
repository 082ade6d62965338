"""Reading an agent's report and the TokenReview that says which pod made it."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes.client.exceptions import ApiException

from taskpod.api.models import AgentState
from taskpod.controller.reports import POD_NAME, POD_UID, Reporter, app, parse, parse_git, reporter

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


BOUND = {POD_NAME: ["fix-0"], POD_UID: ["u1"]}


def review(
    extra: dict[str, list[str]],
    authenticated: bool = True,
    username: str = "system:serviceaccount:team:default",
) -> dict[str, Any]:
    return {"authenticated": authenticated, "user": {"username": username, "extra": extra}}


def test_a_pod_bound_token_names_its_pod() -> None:
    assert reporter(review(BOUND)) == Reporter("team", "fix-0", "u1")


@pytest.mark.parametrize(
    "status",
    [
        review(BOUND, authenticated=False),
        review({POD_NAME: ["fix-0"]}),
        review(BOUND, username="alice"),
        review({}),
    ],
    ids=["not authenticated", "no pod uid", "a person", "not bound to a pod"],
)
def test_anything_else_is_nobody(status: dict[str, Any]) -> None:
    assert reporter(status) is None


def test_a_report_is_parsed_and_its_message_made_one_short_line() -> None:
    report = parse({"state": "complete", "message": "Opened\n  PR #42", "uri": "https://x/pr/42"}, NOW)
    assert (report.state, report.message, report.uri, report.at) == (
        AgentState.COMPLETE,
        "Opened PR #42",
        "https://x/pr/42",
        NOW,
    )
    assert len(parse({"state": "failed", "message": "x" * 5000}, NOW).message) == 1024


@pytest.mark.parametrize("body", [{"state": "done"}, ["complete"], {"state": "idle", "uri": 3}])
def test_bad_reports_say_what_is_wrong(body: Any) -> None:
    with pytest.raises(ValueError):
        parse(body, NOW)


def test_a_token_that_cannot_be_checked_gets_a_retryable_answer_not_a_crash() -> None:
    """A TokenReview the API server refuses (say, RBAC without tokenreviews) is a 503, not a 500."""

    async def forbidden(token: str) -> dict[str, Any]:
        raise ApiException(status=403, reason="Forbidden")

    async def accept(who: Reporter, report: Any) -> str | None:
        raise AssertionError("an unchecked report must not be accepted")

    async def post() -> tuple[int, dict[str, Any]]:
        async with TestClient(TestServer(app(forbidden, accept))) as http:
            response = await http.post(
                "/report", json={"state": "complete"}, headers={"Authorization": "Bearer t"}
            )
            return response.status, await response.json()

    status, body = asyncio.run(post())
    assert status == 503 and "try again" in body["error"]


HEAD, BASE = "3f" * 20, "9a" * 20
GIT = {
    "branch": "taskpod/fix-login",
    "head": HEAD,
    "base": BASE,
    "ahead": 2,
    "filesChanged": 3,
    "insertions": 40,
    "deletions": 7,
    "uncommitted": 1,
}


def test_a_git_state_is_parsed_with_when_it_came() -> None:
    state = parse_git({**GIT, "url": "https://tok@evil/", "extra": "ignored"}, NOW)
    assert state.dump() == {**GIT, "reportedAt": "2026-11-28T12:00:00Z"}  # the url is the operator's to say
    detached = parse_git({"head": HEAD, "branch": None, "base": None, "ahead": None}, NOW)
    assert (detached.branch, detached.base, detached.ahead) == (None, None, None)
    long = parse_git({**GIT, "branch": "b" * 1000 + "\ud800"}, NOW)
    assert long.branch == "b" * 255


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([GIT], "expected a JSON object"),
        ({**GIT, "head": "HEAD; rm -rf /"}, "head must be a commit's hash"),
        ({**GIT, "base": "xyz"}, "base must be a commit's hash"),
        ({**GIT, "ahead": -1}, "ahead"),
        ({**GIT, "insertions": "many"}, "insertions"),
        ({**GIT, "branch": 7}, "branch"),
    ],
    ids=[
        "not an object",
        "head not a hash",
        "base not a hash",
        "negative",
        "not a number",
        "branch a number",
    ],
)
def test_a_bad_git_state_says_what_is_wrong(body: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_git(body, NOW)


def test_git_states_go_to_their_own_route_and_are_refused_without_a_taker() -> None:
    taken: list[tuple[Reporter, Any]] = []

    async def bound(token: str) -> dict[str, Any]:
        return review(BOUND)

    async def accept(who: Reporter, report: Any) -> str | None:
        raise AssertionError("a git state is not a report")

    async def accept_git(who: Reporter, state: Any) -> str | None:
        taken.append((who, state))
        return None

    async def post(application: Any, body: Any) -> int:
        async with TestClient(TestServer(application)) as http:
            response = await http.post("/report/git", json=body, headers={"Authorization": "Bearer t"})
            return response.status

    assert asyncio.run(post(app(bound, accept, accept_git), GIT)) == 200
    assert taken[0][0] == Reporter("team", "fix-0", "u1") and taken[0][1].head == HEAD
    assert asyncio.run(post(app(bound, accept, accept_git), {**GIT, "head": "x"})) == 400
    assert asyncio.run(post(app(bound, accept), GIT)) == 404


def test_a_push_is_recorded_with_when_it_came_and_a_failure_in_one_line() -> None:
    pushed = parse_git({**GIT, "pushed": {"branch": "taskpod/fix-login", "commit": HEAD}}, NOW)
    assert pushed.dump()["pushed"] == {
        "branch": "taskpod/fix-login",
        "commit": HEAD,
        "pushedAt": "2026-11-28T12:00:00Z",
    }
    failed = parse_git({**GIT, "pushError": "! [rejected]\n  main -> main (fetch first)"}, NOW)
    assert (failed.pushed, failed.push_error) == (None, "! [rejected] main -> main (fetch first)")
    for bad in ({"branch": 1, "commit": HEAD}, {"branch": "b", "commit": "nope"}, "yes"):
        with pytest.raises(ValueError, match="pushed"):
            parse_git({**GIT, "pushed": bad}, NOW)
