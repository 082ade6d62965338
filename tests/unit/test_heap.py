"""Memory goes back to the system once after a burst, never during one, and not again at rest."""

from __future__ import annotations

import asyncio
import platform

from taskpod.controller import heap


def test_a_burst_is_trimmed_once_at_rest_and_never_during_it() -> None:
    async def scenario() -> list[tuple[int, int]]:
        work: dict[str, int] = {"done": 0, "busy": False}  # busy: 0 or 1, as the queue's work counts
        trims: list[tuple[int, int]] = []
        trimmer = asyncio.create_task(
            heap.trim_after_bursts(
                lambda: work["done"],
                lambda: not work["busy"],
                lambda: trims.append((work["done"], work["busy"])),
                every=0.02,
            )
        )
        await asyncio.sleep(0.1)  # at rest from the start: nothing to give back
        for done in range(1, 41):  # a burst: work in every interval, the queue empty now and then
            work.update(done=done, busy=done % 2 == 0)
            await asyncio.sleep(0.005)
        work.update(done=20, busy=False)  # over
        await asyncio.sleep(0.1)  # at rest: one trim, not one per look
        work.update(done=21)  # one more reconcile, then rest again
        await asyncio.sleep(0.1)
        trimmer.cancel()
        return trims

    assert asyncio.run(scenario()) == [(20, False), (21, False)]


def test_malloc_trim_is_found_and_runs_where_glibc_is() -> None:
    trim = heap.malloc_trim()
    if platform.libc_ver()[0] != "glibc":  # another C library: the operator does without
        assert trim is None
        return
    assert trim is not None
    trim()  # as declared (size_t in, int out), or ctypes would fail here
