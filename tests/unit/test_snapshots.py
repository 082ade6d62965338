from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pytest

from taskpod.api.models import Task
from taskpod.core.snapshots import (
    DATA_KEY,
    KEEP_TAIL_BYTES,
    MAX_BYTES,
    MAX_MESSAGES,
    TAKEN_AT_ANNOTATION,
    across_lifetimes,
    configmap,
    in_lifetime,
    messages_of,
    shape,
    status_entry,
    status_entry_of,
    tidy,
)


def message(i: int, content: str, role: str = "agent") -> dict[str, Any]:
    return {"id": i, "role": role, "content": content, "time": "2026-11-28T12:00:00Z"}


def test_a_short_conversation_is_kept_whole() -> None:
    msgs = [message(0, "Fix the test", "user"), message(1, "Done.")]
    snap = shape(msgs)
    assert snap.messages == msgs and not snap.truncated
    assert json.loads(snap.text) == {"format": "agentapi", "data": {"messages": msgs}}


def test_fifty_messages_of_a_mebibyte_keep_the_newest_that_fit() -> None:
    msgs = [message(i, f"{i}:" + "x" * 20_000) for i in range(50)]  # ~1 MiB in all
    snap = shape(msgs)
    assert snap.truncated
    assert len(snap.messages) <= MAX_MESSAGES
    assert snap.size <= MAX_BYTES
    ids = [m["id"] for m in snap.messages]
    assert ids == list(range(50 - len(ids), 50)), "the newest messages, in order, oldest dropped first"
    assert all(m["content"] == msgs[m["id"]]["content"] for m in snap.messages), "kept messages are whole"


def test_one_huge_message_keeps_its_last_56_kib_with_a_marker() -> None:
    content = "start " + "é" * 100_000 + " the end"  # 200 KiB of two-byte characters
    snap = shape([message(0, "Summarise", "user"), message(1, content)])
    kept = snap.messages[-1]["content"]
    assert snap.truncated and snap.size <= MAX_BYTES
    assert kept.startswith("[taskpod: message truncated")
    body = kept.split("]\n", 1)[1]
    assert body.endswith(" the end") and "start" not in body
    assert KEEP_TAIL_BYTES - 2 <= len(body.encode()) <= KEEP_TAIL_BYTES
    assert set(body[:-8]) == {"é"}, "no character is cut in half"


@pytest.mark.parametrize("char", ["é", "日", "🙂"], ids=["2-byte", "3-byte", "4-byte"])
def test_unicode_survives_truncation(char: str) -> None:
    snap = shape([message(0, char * 70_000)])
    body = snap.messages[0]["content"].split("]\n", 1)[1]
    assert set(body) == {char}
    json.loads(snap.text)  # still valid JSON


def test_a_terminal_screen_is_kept_without_its_padding() -> None:
    """Claude Code's greeting as AgentAPI read it off an 80-column terminal, padded to the screen's height:
    80 KB of blanks that pushed the agent's words out of the snapshot (a real workspace, Claude Code
    2.1.332 under AgentAPI v0.11.8)."""
    pad = " " * 80
    greeting = "\n".join([" ▐▛███▛█   Claude Code v2.1.332" + " " * 49, *[pad] * 900, " " * 60 + "◐ medium"])
    reply = "● Write(hello.txt)   \n  ⎿  Wrote 1 line\n" + f"{pad}\n" * 3 + "● I wrote hello.txt.   \n" + pad
    snap = shape([message(0, greeting), message(1, "Write hello.txt", "user"), message(2, reply)])
    assert not snap.truncated and len(snap.messages) == 3
    assert snap.messages[0]["content"] == " ▐▛███▛█   Claude Code v2.1.332\n\n" + " " * 60 + "◐ medium"
    assert snap.messages[2]["content"] == "● Write(hello.txt)\n  ⎿  Wrote 1 line\n\n● I wrote hello.txt."


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        ("a  \n\n\n\nb\t\n\n", "a\n\nb"),
        ("\n\n  indented stays\n", "  indented stays"),
        ("a\u2028b\x85c\r\nd\u00a0", "a\u2028b\x85c\r\nd\u00a0"),  # not padding: kept as it was
        ("🙂 \ud83d  ", "🙂 \ud83d"),
    ],
)
def test_tidying_removes_only_padding(content: str, kept: str) -> None:
    assert tidy(content) == kept


def test_configmap_and_status_describe_the_same_snapshot() -> None:
    task = Task.model_validate(
        {"metadata": {"name": "fix", "namespace": "team", "uid": "u1"}, "spec": {"prompt": "p"}}
    )
    snap = shape([message(i, "hello") for i in range(12)])
    taken = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    cm = configmap(task, snap, taken)
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert json.loads(cm["data"][DATA_KEY])["data"]["messages"] == snap.messages
    assert status_entry(task, snap, taken) == {
        "configMap": "fix-snapshot",
        "takenAt": "2026-11-28T12:00:00Z",
        "messages": 10,
        "bytes": snap.size,
        "truncated": True,
        "sha256": hashlib.sha256(cm["data"][DATA_KEY].encode()).hexdigest(),
    }
    # Read back from the ConfigMap alone (a pause whose status write an operator crash skipped).
    assert status_entry_of(cm, "u1") == status_entry(task, snap, taken)
    assert status_entry_of(cm, "u2") is None  # a deleted task's of the same name


TAKEN = {"annotations": {TAKEN_AT_ANNOTATION: "2026-11-28T12:00:00Z"}, "ownerReferences": [{"uid": "u1"}]}


@pytest.mark.parametrize(
    "broken",
    [
        {"metadata": {"annotations": {TAKEN_AT_ANNOTATION: "2026-11-28T12:00:00Z"}}, "data": {}},
        {
            "metadata": {"annotations": {TAKEN_AT_ANNOTATION: "2026-11-28T12:00:00Z"}},
            "data": {DATA_KEY: "[1"},
        },
        {"metadata": {"name": "x"}, "data": {DATA_KEY: '{"data": {"messages": []}}'}},
    ],
    ids=["no data", "not json", "no taken-at"],
)
def test_a_configmap_without_a_snapshot_gives_no_status(broken: dict[str, Any]) -> None:
    assert status_entry_of(broken, "u1") is None


def said(role: str, content: str, id_: int = 0, minute: int = 0) -> dict[str, Any]:
    return {"id": id_, "role": role, "content": content, "time": f"2026-12-01T12:{minute:02d}:00.5Z"}


def test_a_conversation_across_lifetimes_keeps_the_earlier_ones_and_shows_nothing_twice() -> None:
    first = [said("agent", "Hello, what shall I do?"), said("user", "Fix it", 1), said("agent", "Fixed.", 2)]
    kept = in_lifetime(first, 1)
    assert [m["lifetime"] for m in kept] == [1, 1, 1]  # the first lifetime's greeting is its own
    # The resumed agent's start screen (a greeting, or the continued conversation replayed) is left out.
    second = [
        said("agent", "● Fix it\n● Fixed.", minute=10),
        said("user", "And the tests?", 1, minute=11),
        said("agent", "Done.", 2, minute=12),
    ]
    both = across_lifetimes(kept, second, 2)
    shown = [(m["lifetime"], m["content"]) for m in both]
    assert shown == [
        (1, "Hello, what shall I do?"),
        (1, "Fix it"),
        (1, "Fixed."),
        (2, "And the tests?"),
        (2, "Done."),
    ]
    # Taken again in lifetime 2 (idle, then the pause): its own messages replace what was kept of it.
    assert across_lifetimes(both, second, 2) == both
    # An AgentAPI that kept its conversation (--state-file) gives the first lifetime's messages again, with
    # their own times: shown once, as the first lifetime's.
    restored = [*first, said("user", "And the tests?", 3, minute=11), said("agent", "Done.", 4, minute=12)]
    assert [(m["lifetime"], m["content"]) for m in across_lifetimes(kept, restored, 2)] == shown
    # What a resumed agent says on its own, after its start screen, is its lifetime's (found by the fault
    # matrix: a rule that dropped every agent message before the first user one lost it).
    own = said("agent", "Round 1, on my own", 4, minute=13)
    assert across_lifetimes(kept, [own], 2)[-1] == {**own, "lifetime": 2}
    assert across_lifetimes(kept, [second[0], own], 2)[-1] == {**own, "lifetime": 2}
    assert len(across_lifetimes(kept, [second[0], own], 2)) == len(kept) + 1
    # A snapshot from before lifetimes were recorded counts as earlier; nothing said yet: nothing new.
    old = said("user", "old")
    assert across_lifetimes([old], [said("agent", "Hi", minute=5)], 3) == [old]
    assert shape(both).messages == both


def test_the_messages_of_a_snapshot_configmap_are_the_tasks_own_only() -> None:
    task = Task.model_validate(
        {"metadata": {"name": "x", "namespace": "n", "uid": "u1"}, "spec": {"prompt": "p"}}
    )
    cm = configmap(task, shape([said("user", "hi")]), dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    assert messages_of(cm, "u1") == [said("user", "hi")]
    assert messages_of(cm, "u2") is None  # a deleted task's of the same name
    assert messages_of(None, "u1") is None
    assert messages_of({**cm, "data": {"snapshot.json": "not json"}}, "u1") is None


def test_messages_with_times_in_any_form_are_ordered_not_refused() -> None:
    """An agent's times may come without a zone (UTC, as the API server reads one) or with an offset;
    comparing them as Python has them (naive against aware) raised, and `kubectl task logs` failed."""
    kept = in_lifetime([{**said("user", "Fix it"), "time": "2026-12-01T12:00:00"}], 1)
    live = [
        {**said("user", "Fix it"), "time": "2026-12-01T13:00:00+01:00"},  # the same moment: shown once
        said("agent", "Fixed.", 1, minute=5),
        {**said("agent", "Then this."), "time": "yesterday-ish"},  # no time at all: kept
    ]
    assert [(m["lifetime"], m["content"]) for m in across_lifetimes(kept, live, 2)] == [
        (1, "Fix it"),
        (2, "Fixed."),
        (2, "Then this."),
    ]
