"""A work queue of keys, as controller-runtime's: it knows nothing of what the keys stand for.

- A key queued twice before a worker takes it runs once; a watch event returns at once.
- One key is processed by one caller at a time (`serialised`), workers or not.
- A key can come back after a delay (`add_after`; the sooner of two wins), or be held: a write that
  waits a moment so that the next step folds into it (`hold`).
- `Backoff` counts failures in a row by time, not by how many events came meanwhile.

Keys added as `forced` run even when their processor would skip an unchanged key: a timer, a retry,
or news from outside the watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("taskpod")
K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, process: Callable[[K, bool], Awaitable[None]]) -> None:
        """`process(key, forced)` is called by the workers, one key at a time."""
        self._process = process
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()  # in the queue, not yet taken by a worker
        self._forced: set[K] = set()
        self._locks: dict[K, asyncio.Lock] = {}
        self._timers: dict[K, tuple[asyncio.TimerHandle, bool]] = {}  # and whether its run is forced
        self._holds: dict[K, asyncio.TimerHandle | None] = {}  # None: the hold is over, not yet ended
        self._workers: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[Any] | None = None
        self.processed = 0  # keys processed so far

    def wait_for(self, ready: asyncio.Future[Any]) -> None:
        """Process nothing before `ready` is done (the caches have listed): keys queued meanwhile wait."""
        self._ready = ready

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def add(self, key: K, *, forced: bool = False) -> None:
        if forced:
            self._forced.add(key)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float, *, forced: bool = True) -> None:
        """Run `key` in `delay` seconds, unless it is due sooner already. Not `forced`: a second look,
        which the processor may skip if nothing changed. Of two timers the sooner stays, forced if
        either was: each run asks again for the timers it still needs."""
        loop = asyncio.get_running_loop()
        if (pending := self._timers.get(key)) is not None:
            timer, was_forced = pending
            forced = forced or was_forced
            if timer.when() <= loop.time() + delay:
                self._timers[key] = (timer, forced)
                return
            timer.cancel()

        def due() -> None:
            _, forced = self._timers.pop(key)
            self.add(key, forced=forced)

        self._timers[key] = (loop.call_later(delay, due), forced)

    def due_in(self, key: K) -> float | None:
        """Seconds until `key` runs by its timer (`add_after`); None without one."""
        pending = self._timers.get(key)
        return None if pending is None else pending[0].when() - asyncio.get_running_loop().time()

    def hold(self, key: K, seconds: float) -> bool:
        """Whether something for `key` should still wait: True for `seconds` from the first call, then
        (the key runs again, forced, when they are over) False until `end_hold`."""
        if key not in self._holds:

            def due() -> None:
                self._holds[key] = None
                self.add(key, forced=True)

            self._holds[key] = asyncio.get_running_loop().call_later(seconds, due)
        return self._holds[key] is not None

    def holding(self, key: K) -> bool:
        """Whether a hold of `key` is running: its end runs the key, forced."""
        return self._holds.get(key) is not None

    def end_hold(self, key: K) -> None:
        if (timer := self._holds.pop(key, None)) is not None:
            timer.cancel()

    @contextlib.asynccontextmanager
    async def serialised(self, key: K) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    def forget(self, key: K) -> None:
        """Drop the timers and hold of a key that is gone (a key still queued runs once more)."""
        if (pending := self._timers.pop(key, None)) is not None:
            pending[0].cancel()
        self.end_hold(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def idle(self) -> bool:
        """Nothing queued and nothing being processed (timers may be pending)."""
        return self._queue.empty() and not any(lock.locked() for lock in self._locks.values())

    def start(self, workers: int) -> None:
        """Start the workers on the running loop: at most this many keys processed at a time."""
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(), name=f"worker {i}") for i in range(workers)]

    async def stop(self) -> None:
        for timer in [*(t for t, _ in self._timers.values()), *self._holds.values()]:
            if timer is not None:
                timer.cancel()
        self._timers.clear()
        self._holds.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._ready is not None:  # stopped before the caches listed: their wait goes too
            self._ready.cancel()
            await asyncio.gather(self._ready, return_exceptions=True)

    async def _work(self) -> None:
        if self._ready is not None:
            await asyncio.wait([self._ready])  # a cancelled worker must not cancel it for the others
        while True:
            key = await self._queue.get()
            self._queued.discard(key)  # an event from now on queues it again
            forced = key in self._forced
            self._forced.discard(key)
            try:
                await self._process(key, forced)
            except Exception:  # the processor handles its own failures; never lose a worker
                log.exception("processing %s failed unexpectedly", key)
            self.processed += 1


@dataclass(frozen=True)
class Retry:
    attempt: int  # 1 for the first failure in a row
    delay: float  # seconds until the next attempt


class Backoff(Generic[K]):
    """Failures in a row per key, and when each may be tried again."""

    def __init__(self, delays: tuple[float, ...]) -> None:
        self.delays = delays
        self._failures: dict[K, tuple[int, float]] = {}  # failures in a row, loop time of the next try

    def failed(self, key: K) -> Retry | None:
        """Count a failure and say when to try again; None if it failed again before its retry was due
        (run by some other event: an API server away fails every key at once), which does not count."""
        now = asyncio.get_running_loop().time()
        failures, due = self._failures.get(key, (0, 0.0))
        if now < due:
            return None
        delay = self.delays[min(failures, len(self.delays) - 1)]
        self._failures[key] = (failures + 1, now + delay)
        return Retry(failures + 1, delay)

    def waiting(self, key: K) -> bool:
        """Whether `key` failed and its retry is not due yet."""
        failures = self._failures.get(key)
        return failures is not None and asyncio.get_running_loop().time() < failures[1]

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)
