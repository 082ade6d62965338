"""The informers' caches: what a list and a watch leave in them, and which changes they tell, including
the watch's failures (a version too old, an expired list, an API server away) and objects that went
or came back while no watch was running. The API is a scripted fake; tests/integration/test_informers.py
holds them to a real API server."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskpod import kube
from taskpod.controller.informers import Cache, Informer, Source
from taskpod.core.lifecycle import PodView

LABEL = "taskpod.dev/task"


def scenario(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test run on a loop of its own."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def pod(
    name: str, task: str | None = None, *, uid: str | None = None, phase: str = "Pending", rv: int = 1
) -> dict[str, Any]:
    labels = {LABEL: task if task is not None else name}
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": uid or f"uid-{name}",
            "labels": labels,
            "resourceVersion": str(rv),
        },
        "status": {"phase": phase},
    }


def event(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: int) -> dict[str, Any]:
    return event("BOOKMARK", {"metadata": {"resourceVersion": str(rv)}})


def gone(rv: str = "1") -> dict[str, Any]:
    return event("ERROR", {"kind": "Status", "code": 410, "message": f"too old resource version: {rv}"})


@dataclass
class FakeApi:
    """Answers list calls from `lists` and watches from `watches` (each a list of
    events, or an exception), in order; records the versions watches started from. When the script is
    over, a watch waits for the test to cancel it."""

    lists: list[dict[str, Any] | Exception] = field(default_factory=list)  # a page or a failure per call
    watches: list[list[dict[str, Any]] | Exception] = field(default_factory=list)
    pages_asked: list[str | None] = field(default_factory=list)
    watched_from: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def list_page(
        self, kind: str, namespace: str | None, selector: str | None, limit: int, token: str | None = None
    ) -> dict[str, Any]:
        self.pages_asked.append(token)
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def watch(
        self, kind: str, namespace: str | None, selector: str | None, resource_version: str
    ) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for item in script:
            yield item


def page(items: list[dict[str, Any]], rv: int, more: str | None = None) -> dict[str, Any]:
    return {"items": items, "metadata": {"resourceVersion": str(rv), **({"continue": more} if more else {})}}


@dataclass
class Told:
    changes: list[tuple[Any, str, bool]] = field(default_factory=list)

    def __call__(self, key: Any, uid: str, gone: bool) -> None:
        self.changes.append((key, uid, gone))


def informer(api: FakeApi, told: Told, cache: Cache[PodView] | None = None) -> Informer[PodView]:
    def key(body: Mapping[str, Any]) -> tuple[str, str] | None:
        task = body["metadata"].get("labels", {}).get(LABEL)
        return ("ns", task) if task else None

    return Informer(
        api,
        Source("Pod", "ns", "selector"),
        key,
        PodView.parse,
        cache if cache is not None else Cache(),
        told,
        retry_delays=(0.01,),
    )


async def run_until_done(inf: Informer[PodView], api: FakeApi) -> None:
    job = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(api.done.wait(), 5)
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


def keys(cache: Cache[PodView]) -> dict[Any, list[str]]:
    return {k: sorted(v.name for v in cache.get(k)) for k in cache}


@scenario
async def test_a_list_in_pages_fills_the_cache_tells_each_and_the_watch_goes_on_from_its_version() -> None:
    api = FakeApi(lists=[page([pod("a")], 10, more="next"), page([pod("b")], 10)])
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    assert keys(inf.cache) == {("ns", "a"): ["a"], ("ns", "b"): ["b"]}
    assert api.pages_asked == [None, "next"]
    assert sorted(told.changes) == [(("ns", "a"), "uid-a", False), (("ns", "b"), "uid-b", False)]
    assert inf.synced.is_set()
    assert api.watched_from == ["10"]  # the list's version, not an object's


@scenario
async def test_watch_events_change_the_cache_and_only_a_changed_view_is_told() -> None:
    api = FakeApi(
        lists=[page([pod("a")], 10)],
        watches=[
            [
                event("MODIFIED", pod("a", rv=11)),  # the same view: nothing the reconcile reads changed
                event("MODIFIED", pod("a", phase="Running", rv=12)),
                event("ADDED", pod("b", rv=13)),
                event("DELETED", pod("a", phase="Running", rv=14)),
                bookmark(20),
            ],
        ],
    )
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    assert told.changes == [
        (("ns", "a"), "uid-a", False),
        (("ns", "a"), "uid-a", False),  # Running
        (("ns", "b"), "uid-b", False),
        (("ns", "a"), "uid-a", True),
    ]
    assert keys(inf.cache) == {("ns", "b"): ["b"]}
    assert api.watched_from == ["10", "20"]  # the next watch goes on from the bookmark


@pytest.mark.parametrize("expiry", ["an ERROR event", "an HTTP 410"])
@scenario
async def test_a_version_too_old_lists_again_and_what_went_meanwhile_is_told_gone(expiry: str) -> None:
    first = [pod("a"), pod("b"), pod("c")]
    # Meanwhile: b deleted, c deleted and made again (a new uid), d made; a unchanged.
    second = [pod("a"), pod("c", uid="uid-c2"), pod("d")]
    ended: list[dict[str, Any]] | Exception = (
        [gone()] if expiry == "an ERROR event" else kube.ApiException(status=410, reason="Gone")
    )
    api = FakeApi(lists=[page(first, 10), page(second, 50)], watches=[ended])
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    after_first = told.changes[3:]
    assert sorted(after_first) == [
        (("ns", "b"), "uid-b", True),
        (("ns", "c"), "uid-c", True),
        (("ns", "c"), "uid-c2", False),
        (("ns", "d"), "uid-d", False),
    ]
    assert keys(inf.cache) == {("ns", "a"): ["a"], ("ns", "c"): ["c"], ("ns", "d"): ["d"]}
    assert api.watched_from == ["10", "50"]


@scenario
async def test_an_expired_continue_token_starts_the_list_again() -> None:
    expired = kube.ApiException(status=410, reason="Gone")
    api = FakeApi(lists=[page([pod("a")], 10, more="t1"), expired, page([pod("a"), pod("b")], 12)])
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    assert api.pages_asked == [None, "t1", None]
    assert keys(inf.cache) == {("ns", "a"): ["a"], ("ns", "b"): ["b"]}
    assert api.watched_from == ["12"]


@scenario
async def test_a_watch_cut_goes_on_from_the_last_version_seen_without_a_list() -> None:
    api = FakeApi(
        lists=[page([pod("a")], 10)],
        watches=[[event("ADDED", pod("b", rv=12))], OSError("connection reset"), [bookmark(15)]],
    )
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    assert api.watched_from == ["10", "12", "12", "15"]  # the cut one, then again from where it was
    assert api.pages_asked == [None]  # one list only: a cut costs no list of every object
    assert keys(inf.cache) == {("ns", "a"): ["a"], ("ns", "b"): ["b"]}


@scenario
async def test_a_list_that_fails_is_retried_and_the_cache_keeps_what_it_had() -> None:
    away = kube.ApiException(status=503, reason="Service Unavailable")
    api = FakeApi(lists=[page([pod("a")], 10), away, page([pod("a"), pod("b")], 30)], watches=[[gone()]])
    told = Told()
    inf = informer(api, told)
    seen_at_each_list: list[dict[Any, list[str]]] = []
    original = api.list_page

    async def list_page(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen_at_each_list.append(keys(inf.cache))
        return await original(*args, **kwargs)

    api.list_page = list_page  # type: ignore[method-assign]
    await run_until_done(inf, api)
    assert seen_at_each_list[1:] == [{("ns", "a"): ["a"]}, {("ns", "a"): ["a"]}]  # kept while away
    assert keys(inf.cache) == {("ns", "a"): ["a"], ("ns", "b"): ["b"]}
    assert api.watched_from == ["10", "30"]


@scenario
async def test_a_relabelled_object_moves_and_its_old_key_is_told() -> None:
    api = FakeApi(lists=[page([pod("a")], 10)], watches=[[event("MODIFIED", pod("a", task="other", rv=11))]])
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    assert told.changes[1:] == [(("ns", "a"), "uid-a", True), (("ns", "other"), "uid-a", False)]
    assert keys(inf.cache) == {("ns", "other"): ["a"]}


@scenario
async def test_an_object_that_loses_its_key_is_forgotten() -> None:
    unlabelled = pod("a", rv=11)
    unlabelled["metadata"]["labels"] = {}
    api = FakeApi(lists=[page([pod("a")], 10)], watches=[[event("MODIFIED", unlabelled)]])
    told = Told()
    inf = informer(api, told)
    await run_until_done(inf, api)
    assert told.changes[1:] == [(("ns", "a"), "uid-a", True)]
    assert keys(inf.cache) == {}


@scenario
async def test_a_failing_callback_does_not_stop_the_cache() -> None:
    api = FakeApi(lists=[page([pod("a")], 10)], watches=[[event("ADDED", pod("b", rv=11))]])

    def broken(key: Any, uid: str, gone: bool) -> None:
        raise RuntimeError("a bug")

    inf = informer(api, Told())
    inf.changed = broken
    await run_until_done(inf, api)
    assert keys(inf.cache) == {("ns", "a"): ["a"], ("ns", "b"): ["b"]}


@scenario
async def test_informers_of_two_namespaces_share_a_cache_and_a_relist_forgets_only_its_own() -> None:
    cache: Cache[PodView] = Cache()
    other = pod("x")
    other["metadata"]["namespace"] = "ns2"
    api2 = FakeApi(lists=[page([other], 5)])
    inf2 = informer(api2, Told(), cache)
    inf2.key = lambda body: (body["metadata"]["namespace"], body["metadata"]["name"])
    await run_until_done(inf2, api2)
    api1 = FakeApi(lists=[page([pod("a")], 10), page([], 20)], watches=[[gone()]])
    await run_until_done(informer(api1, Told(), cache), api1)
    assert keys(cache) == {("ns2", "x"): ["x"]}
