"""Reading an agent's report and the TokenReview that says which pod made it."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes.client.exceptions import ApiException

from taskpod.api.models import AgentState
from taskpod.controller.reports import POD_NAME, POD_UID, Reporter, app, parse, reporter

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
