"""Giving memory back to the system after a burst of work.

CPython keeps small objects in arenas of its own, which it returns once empty; larger ones (buffers,
the tables of big dicts, long strings) come from the C library's malloc, which keeps what is freed in
its heap for the next allocation instead. After a burst, say 1,000 tasks applied, the operator held
the burst's peak for good: 173 MiB at rest at N = 1,000 where a trim brought it to 150. glibc's
`malloc_trim` hands the free pages back; where there is none (musl), nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger("taskpod")
TRIM_EVERY = 5.0  # seconds between looks


def malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0), or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


async def trim_after_bursts(
    worked: Callable[[], int],
    idle: Callable[[], bool],
    trim: Callable[[], None],
    every: float = TRIM_EVERY,
) -> None:
    """Trim once work was done since the last trim (`worked` counts it) and then none for `every`
    seconds: at rest after a burst, and never again while at rest. Never during a burst, not even in
    a lull: a trim walks the whole heap, and the pages it gives back fault in again as the burst goes
    on (at N = 1,000, trims in the apply's lulls cost the operator about a third more CPU)."""
    trimmed_at = seen = worked()
    while True:
        await asyncio.sleep(every)
        done = worked()
        if done == seen and done != trimmed_at and idle():
            trim()
            trimmed_at = done
            log.debug("gave the heap's free memory back after %d reconciles", done)
        seen = done
