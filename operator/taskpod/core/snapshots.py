"""Conversation snapshots: what a paused task keeps of its agent's messages (pure), and their ConfigMap.

Coder kept the last 10 messages, at most 64 KiB, dropping the oldest first; a single message too big on
its own kept the last 56 KiB of its content with a marker. We store the same envelope,
`{"format": "agentapi", "data": {"messages": [...]}}`, in a ConfigMap owned by the Task.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from taskpod.api.models import Task, parse_time, rfc3339
from taskpod.core.workspace import labels, owner_reference

MAX_MESSAGES = 10
MAX_BYTES = 64 * 1024
KEEP_TAIL_BYTES = 56 * 1024
DATA_KEY = "snapshot.json"
TAKEN_AT_ANNOTATION = "taskpod.dev/taken-at"
TRUNCATED_ANNOTATION = "taskpod.dev/truncated"


def truncation_marker(original_bytes: int) -> str:
    kept = KEEP_TAIL_BYTES // 1024
    return f"[taskpod: message truncated, kept the last {kept} KiB of {original_bytes} bytes]\n"


@dataclass(frozen=True)
class Snapshot:
    messages: list[dict[str, Any]]
    truncated: bool

    @property
    def envelope(self) -> dict[str, Any]:
        return {"format": "agentapi", "data": {"messages": self.messages}}

    @cached_property
    def text(self) -> str:
        return json.dumps(self.envelope, ensure_ascii=False, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """What status keeps of a snapshot, to skip an unchanged one: a hash, not 64 KiB."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def size(self) -> int:
        return len(self.text.encode())


def _tail(content: str) -> str:
    """The last KEEP_TAIL_BYTES of `content` in UTF-8, never splitting a character."""
    raw = content.encode()
    return raw[-KEEP_TAIL_BYTES:].decode(errors="ignore")  # a cut character at the start is dropped whole


def tidy(content: str) -> str:
    """A message as a terminal screen gave it, without the screen's padding: each line without its
    trailing blanks, no run of blank lines longer than one, none at the ends. Claude Code's screens, as
    AgentAPI reads them off the terminal, pad every line to the width and the screen to its height: a
    greeting of three lines came as 80 KB, which pushed the agent's words out of the 64 KiB a snapshot
    keeps (found on a real workspace). Only the padding goes: spaces and tabs at line ends, and newlines;
    every other character, Unicode's other line and space characters included, is kept as it was."""
    kept: list[str] = []
    for line in content.split("\n"):
        line = line.rstrip(" \t")
        if line or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip("\n")


def shape(messages: list[dict[str, Any]]) -> Snapshot:
    """Keep the newest messages that fit, tidied (see `tidy`): at most MAX_MESSAGES and MAX_BYTES, oldest
    dropped first."""
    kept = [{**m, "content": tidy(str(m.get("content", "")))} for m in messages[-MAX_MESSAGES:]]
    truncated = len(messages) > len(kept)
    for message in kept:
        content = str(message.get("content", ""))
        if len(content.encode()) > KEEP_TAIL_BYTES:
            message["content"] = truncation_marker(len(content.encode())) + _tail(content)
            truncated = True
    snapshot = Snapshot(kept, truncated)
    while snapshot.size > MAX_BYTES and len(snapshot.messages) > 1:
        snapshot = Snapshot(snapshot.messages[1:], True)
    return snapshot


def in_lifetime(messages: list[dict[str, Any]], lifetime: int) -> list[dict[str, Any]]:
    """One pod lifetime's messages as they are kept and shown: each marked with its lifetime. A resumed
    agent's start screen (AgentAPI's first message, id 0, in a lifetime after the first) is left out: it is
    a greeting, or the conversation it continues replayed, shown already. What the agent says after it,
    on its own or to the user, is kept."""
    if lifetime > 1 and messages and messages[0].get("role") == "agent" and messages[0].get("id") == 0:
        messages = messages[1:]
    return [{**m, "lifetime": lifetime} for m in messages]


def across_lifetimes(
    kept: list[dict[str, Any]], live: list[dict[str, Any]], lifetime: int
) -> list[dict[str, Any]]:
    """The conversation across the task's pods: what was kept of the lifetimes before `lifetime` (a
    message kept without one predates this record: an earlier lifetime's), then `lifetime`'s own. An
    AgentAPI that keeps its conversation across restarts (--state-file) gives the earlier messages again,
    with their times: those up to the last one kept are not this lifetime's, and are not shown twice."""
    earlier = [m for m in kept if int(m.get("lifetime") or 0) < lifetime]
    times = [t for m in earlier if (t := parse_time(m.get("time"))) is not None]
    if times:
        last = max(times)
        live = [m for m in live if (t := parse_time(m.get("time"))) is None or t > last]
    return earlier + in_lifetime(live, lifetime)


def messages_of(configmap: Mapping[str, Any] | None, task_uid: str) -> list[dict[str, Any]] | None:
    """The messages a snapshot ConfigMap holds, if it is the task's (not a deleted task's of the same
    name) and holds a readable snapshot."""
    if configmap is None:
        return None
    meta = configmap.get("metadata") or {}
    text = (configmap.get("data") or {}).get(DATA_KEY)
    if not text or task_uid not in {o.get("uid") for o in meta.get("ownerReferences") or []}:
        return None
    try:
        messages = json.loads(text)["data"]["messages"]
    except (ValueError, KeyError, TypeError):
        return None
    return messages if isinstance(messages, list) else None


def configmap_name(task_name: str) -> str:
    return f"{task_name}-snapshot"


def configmap(task: Task, snapshot: Snapshot, taken_at: dt.datetime) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(task.name),
            "namespace": task.namespace,
            "labels": labels(task.name),
            "annotations": {
                TAKEN_AT_ANNOTATION: rfc3339(taken_at),
                TRUNCATED_ANNOTATION: str(snapshot.truncated).lower(),
            },
            "ownerReferences": [owner_reference(task)],
        },
        "data": {DATA_KEY: snapshot.text},
    }


def status_entry(task: Task, snapshot: Snapshot, taken_at: dt.datetime) -> dict[str, Any]:
    """status.logSnapshot for this snapshot."""
    return {
        "configMap": configmap_name(task.name),
        "takenAt": rfc3339(taken_at),
        "messages": len(snapshot.messages),
        "bytes": snapshot.size,
        "truncated": snapshot.truncated,
        "sha256": snapshot.digest,
    }


def status_entry_of(configmap: Mapping[str, Any], task_uid: str) -> dict[str, Any] | None:
    """status.logSnapshot for a snapshot ConfigMap as read back, if it is the task's (not a deleted task's
    of the same name) and holds one: for a pause whose status was never written, the operator having
    stopped in between."""
    meta = configmap.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    messages = messages_of(configmap, task_uid)
    if messages is None or TAKEN_AT_ANNOTATION not in annotations:
        return None
    text = configmap["data"][DATA_KEY]
    return {
        "configMap": meta.get("name"),
        "takenAt": annotations[TAKEN_AT_ANNOTATION],
        "messages": len(messages),
        "bytes": len(text.encode()),
        "truncated": annotations.get(TRUNCATED_ANNOTATION) == "true",
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
