"""API requests counted by the API server itself: its audit log, kept for the benchmark's users only.

Each request is one line once its response completes; a watch counts once, when its response starts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def _when(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def count(log: Path, user: str, start: float, end: float) -> Counter[str]:
    """Requests by `user` between the wall-clock times `start` and `end`, keyed "verb resource"."""
    counts: Counter[str] = Counter()
    if not log.exists():
        return counts
    with log.open() as lines:
        for line in lines:
            event = json.loads(line)
            if event.get("user", {}).get("username") != user:
                continue
            verb, stage = event.get("verb", ""), event.get("stage")
            if stage != ("ResponseStarted" if verb == "watch" else "ResponseComplete"):
                continue
            if not start <= _when(event["stageTimestamp"]) < end:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?"))
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            counts[f"{verb} {resource}"] += 1
    return counts


def writes(counts: Counter[str]) -> int:
    return sum(n for key, n in counts.items() if key.split()[0] in WRITES)
