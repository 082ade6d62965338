"""The work queue that runs reconciles: what a controller's queue promises, tested without Tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskpod.controller.workqueue import Backoff, Retry, WorkQueue


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())  # type: ignore[arg-type]


async def settle(queue: WorkQueue[Any]) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if queue.idle():
            return
    raise AssertionError("the queue never settled")


def test_a_key_queued_many_times_before_a_worker_takes_it_runs_once() -> None:
    seen: list[tuple[str, bool]] = []

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(lambda key, forced: _record(seen, key, forced))
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        queue.add("a", forced=True)  # forced, though queued already: its one run is forced
        queue.start(2)
        await settle(queue)
        queue.add("a")
        await settle(queue)
        await queue.stop()

    run(scenario)
    assert sorted(seen[:2]) == [("a", True), ("b", False)] and seen[2:] == [("a", False)]


async def _record(seen: list[tuple[str, bool]], key: str, forced: bool) -> None:
    seen.append((key, forced))


def test_one_key_is_processed_by_one_caller_at_a_time_and_others_in_parallel() -> None:
    running = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0, "all": 0}

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(_record_nothing)

        async def work(key: str) -> None:
            async with queue.serialised(key):
                running[key] += 1
                most[key] = max(most[key], running[key])
                most["all"] = max(most["all"], sum(running.values()))
                await asyncio.sleep(0.01)
                running[key] -= 1

        await asyncio.gather(*(work(key) for key in ["a", "a", "a", "b"]))

    run(scenario)
    assert most == {"a": 1, "b": 1, "all": 2}


async def _record_nothing(key: str, forced: bool) -> None:
    return None


def test_add_after_keeps_the_sooner_of_two_timers_and_runs_forced() -> None:
    seen: list[tuple[str, bool]] = []

    async def scenario() -> float:
        queue: WorkQueue[str] = WorkQueue(lambda key, forced: _record(seen, key, forced))
        queue.start(1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.05)  # sooner: replaces the first
        queue.add_after("a", 1.0)  # later: the sooner stays
        due = queue.due_in("a")
        assert due is not None and 0 < due <= 0.05 and queue.due_in("b") is None
        while not seen:
            await asyncio.sleep(0.01)
        took = loop.time() - began
        await asyncio.sleep(0.1)
        await queue.stop()
        return took

    took = run(scenario)
    assert seen == [("a", True)] and took < 0.9


@pytest.mark.parametrize(
    ("timers", "forced"),
    [
        ([(0.05, False)], False),  # a second look: skipped by the processor if nothing changed
        ([(0.05, False), (1.0, True)], True),  # a later forced one folds into the sooner look
        ([(1.0, True), (0.05, False)], True),  # a sooner look replaces a forced one, and is forced
        ([(1.0, False), (0.05, False)], False),
        ([(0.05, True), (1.0, False)], True),
    ],
)
def test_a_timer_is_a_second_look_unless_either_of_two_was_forced(
    timers: list[tuple[float, bool]], forced: bool
) -> None:
    seen: list[tuple[str, bool]] = []

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(lambda key, forced: _record(seen, key, forced))
        queue.start(1)
        for delay, force in timers:
            queue.add_after("a", delay, forced=force)
        while not seen:
            await asyncio.sleep(0.01)
        await queue.stop()

    run(scenario)
    assert seen == [("a", forced)]


def test_a_hold_lasts_its_time_then_runs_the_key_once_and_ends_when_told() -> None:
    seen: list[tuple[str, bool]] = []

    async def scenario() -> list[bool]:
        queue: WorkQueue[str] = WorkQueue(lambda key, forced: _record(seen, key, forced))
        queue.start(1)
        answers = [queue.holding("a"), queue.hold("a", 0.05), queue.hold("a", 0.05), queue.holding("a")]
        await asyncio.sleep(0.15)
        answers += [queue.holding("a"), queue.hold("a", 0.05)]  # over: the write goes now
        queue.end_hold("a")
        answers.append(queue.hold("a", 10))  # a new hold
        queue.forget("a")  # the key is gone: its hold with it, and no run comes of it
        answers.append(queue.holding("a"))
        await asyncio.sleep(0.05)
        await queue.stop()
        return answers

    assert run(scenario) == [False, True, True, True, False, False, True, False]
    assert seen == [("a", True)]


def test_a_worker_survives_a_processor_that_raises() -> None:
    seen: list[str] = []

    async def process(key: str, forced: bool) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("boom")

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(process)
        queue.start(1)
        queue.add("bad")
        queue.add("good")
        await settle(queue)
        await queue.stop()

    run(scenario)
    assert seen == ["bad", "good"]


def test_backoff_grows_with_time_not_with_the_failures_that_come_meanwhile() -> None:
    async def scenario() -> list[Retry | None]:
        backoff: Backoff[str] = Backoff((0.05, 0.1, 1.0))
        outcomes = [backoff.failed("a"), backoff.failed("a"), backoff.failed("a")]  # within the first delay
        waiting = backoff.waiting("a")
        await asyncio.sleep(0.07)
        outcomes.append(backoff.failed("a"))
        await asyncio.sleep(0.12)
        outcomes.append(backoff.failed("a"))
        await asyncio.sleep(1.05)
        outcomes.append(backoff.failed("a"))  # the last delay repeats
        backoff.succeeded("a")
        outcomes.append(backoff.failed("a"))  # a new streak
        assert waiting and backoff.waiting("a") and not backoff.waiting("b")
        return outcomes

    assert run(scenario) == [
        Retry(1, 0.05),
        None,
        None,
        Retry(2, 0.1),
        Retry(3, 1.0),
        Retry(4, 1.0),
        Retry(1, 0.05),
    ]


def test_nothing_runs_before_the_caches_have_listed_then_everything_queued_meanwhile_does() -> None:
    async def scenario() -> tuple[list[str], list[str], int]:
        seen: list[str] = []
        queue: WorkQueue[str] = WorkQueue(lambda key, forced: _record_key(seen, key))
        listed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.wait_for(listed)
        queue.start(4)
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.05)
        before = list(seen)
        listed.set_result(None)
        await settle(queue)
        await queue.stop()  # cancelling the workers leaves the future alone (another queue may wait)
        return before, sorted(seen), queue.processed

    before, after, processed = run(scenario)
    assert before == []
    assert after == ["a", "b"] and processed == 2


async def _record_key(seen: list[str], key: str) -> None:
    seen.append(key)
