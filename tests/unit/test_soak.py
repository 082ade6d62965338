"""The soak's pure parts: its schedule, a function of the seed, and its invariant checks, given what a run
did and what the cluster and the agents showed at its end."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bench.soak import NAMESPACES, TEMPLATES
from bench.soak.checks import Conversation as Talk
from bench.soak.checks import (
    History,
    Observed,
    check_lingering,
    check_operator,
    check_orphans,
    check_phases,
    check_prompts,
    check_snapshots,
)
from bench.soak.run import Incarnation, Workload
from bench.soak.schedule import Kind, Op, schedule, text

NS = "soak-a"
T0 = 1_800_000_000.0  # epoch seconds: the task's creation


def stamp(seconds: float) -> str:
    """An API timestamp `seconds` after T0."""
    import datetime as dt

    return dt.datetime.fromtimestamp(T0 + seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def task(
    name: str = "s00",
    *,
    phase: str = "Active",
    paused: bool = False,
    prompt: str = "[prompt 1] fix it 🚀",
    uid: str = "u1",
    generation: int = 1,
    observed: int = 1,
    lifetime: int = 1,
    message: str = "",
    template: str = "quick",
    snapshot: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": observed,
        "workspace": {"lifetime": lifetime},
    }
    if message:
        status["message"] = message
    if snapshot:
        status["logSnapshot"] = {"configMap": snapshot, "takenAt": stamp(5)}
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "generation": generation,
            "creationTimestamp": stamp(0)[:19] + "Z",
        },
        "spec": {"prompt": prompt, "paused": paused, "template": template},
        "status": status,
    }


def child(
    kind: str,
    name: str,
    owner: str,
    *,
    task: str = "s00",
    uid: str = "c1",
    created: float = 1,
    controller: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": NS,
        "uid": uid,
        "labels": {"taskpod.dev/task": task},
        "ownerReferences": [{"uid": owner, "controller": controller}] if owner else [],
        "creationTimestamp": stamp(created)[:19] + "Z",
    }
    return {"kind": kind, "metadata": meta, **extra}


def claim(*, owner: str = "u1", deleting: bool = False) -> dict[str, Any]:
    obj = child("PersistentVolumeClaim", "workspace-s00-0", owner, uid="pvc1", status={"phase": "Bound"})
    if deleting:
        obj["metadata"]["deletionTimestamp"] = stamp(30)
    return obj


def pod(
    *,
    ready: bool = True,
    phase: str = "Running",
    lifetime: int = 1,
    owner: str = "u1",
    mounts: str = "workspace-s00-0",
    deleting: bool = False,
) -> dict[str, Any]:
    obj = child(
        "Pod",
        "s00-0",
        owner,
        uid="p1",
        spec={"volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": mounts}}]},
        status={"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]},
    )
    obj["metadata"]["labels"]["taskpod.dev/lifetime"] = str(lifetime)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = stamp(30)
    return obj


def messages(*said: tuple[str, str, float]) -> list[dict[str, Any]]:
    """Messages (role, content, seconds after T0)."""
    return [{"id": i, "role": r, "content": c, "time": stamp(t)} for i, (r, c, t) in enumerate(said)]


def snapshot_map(name: str, said: list[dict[str, Any]], owner: str = "u1") -> dict[str, Any]:
    envelope = {"format": "agentapi", "data": {"messages": said}}
    return child("ConfigMap", name, owner, uid="cm1", data={"snapshot.json": json.dumps(envelope)})


def skipped(seconds: float, uid: str = "u1", message: str = "agent unreachable") -> dict[str, Any]:
    return {
        "reason": "SnapshotSkipped",
        "message": message,
        "involvedObject": {"uid": uid},
        "eventTime": stamp(seconds),
    }


# -- the schedule --------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    first = schedule(7, 600, 12, kills=3)
    assert first == schedule(7, 600, 12, kills=3)
    assert first != schedule(8, 600, 12, kills=3)


def test_a_schedule_creates_every_task_first_then_mixes_every_kind_in_time_order() -> None:
    ops = schedule(3, 1800, 36, kills=5)
    assert [op.kind for op in ops[:36]] == [Kind.CREATE] * 36
    assert all(op.at <= 20 for op in ops[:36])
    assert [op.at for op in ops] == sorted(op.at for op in ops)
    assert all(0 <= op.at < 1800 for op in ops)
    assert {op.kind for op in ops} == set(Kind)
    assert sum(op.kind is Kind.KILL for op in ops) == 5
    assert 1200 < len(ops) < 2400  # about one a second
    faults = {op.params["fault"] for op in ops if op.kind is Kind.FAULT}
    assert faults == {"fail", "hang", "garbage", "down"}
    changes = {op.params["change"] for op in ops if op.kind is Kind.TEMPLATE}
    assert changes == {"env", "image", "sim", "break", "heal"}


def test_a_broken_template_is_healed_later_unless_the_run_ends_first() -> None:
    ops = schedule(11, 1800, 12)
    breaks = [op for op in ops if op.kind is Kind.TEMPLATE and op.params["change"] == "break"]
    heals = [op for op in ops if op.kind is Kind.TEMPLATE and op.params["change"] == "heal"]
    assert breaks and len(heals) <= len(breaks)
    for heal in heals:
        where = (heal.params["namespace"], heal.params["template"])
        earlier = [b for b in breaks if (b.params["namespace"], b.params["template"]) == where]
        assert any(20 <= heal.at - b.at <= 90.01 for b in earlier)
    assert all(op.params["namespace"] < len(NAMESPACES) for op in breaks)
    assert all(op.params["template"] < len(TEMPLATES) for op in breaks)


def test_texts_are_distinct_non_blank_unicode_with_4_byte_characters() -> None:
    ops = schedule(5, 1800, 36)
    texts = [
        str(op.params.get("prompt") or op.params["text"])
        for op in ops
        if op.kind in (Kind.CREATE, Kind.EDIT, Kind.SEND)
    ]
    assert len(texts) == len(set(texts))
    assert all(t == t.strip() and len(t) <= 65536 for t in texts)
    assert any(any(len(c.encode()) == 4 for c in t) for t in texts)
    assert text(random.Random(1), "x") == text(random.Random(1), "x")


def test_an_operation_picks_among_the_tasks_that_fit_by_its_fraction() -> None:
    work = Workload(4)
    assert work.free_slot(Op(0, Kind.CREATE, 0.99)) == 3
    for slot in (0, 2, 3):
        work.slots[slot] = Incarnation(slot, NS, f"s{slot:02d}", f"u{slot}", "quick", slot == 2, ["p"])
    assert work.free_slot(Op(0, Kind.CREATE, 0.5)) == 1
    assert work.pick(Op(0, Kind.PAUSE, 0.0), paused=False).name == "s00"  # type: ignore[union-attr]
    assert work.pick(Op(0, Kind.PAUSE, 0.99), paused=False).name == "s03"  # type: ignore[union-attr]
    assert work.pick(Op(0, Kind.EDIT, 0.7), paused=True).name == "s02"  # type: ignore[union-attr]
    assert work.pick(Op(0, Kind.DELETE, 0.5)).name == "s02"  # type: ignore[union-attr]
    assert Workload(2).pick(Op(0, Kind.SEND, 0.5)) is None


def test_a_new_task_in_a_slot_takes_its_last_name_again_or_a_new_one() -> None:
    work = Workload(3)
    assert work.name(1, same_name=True) == ("soak-b", "s01")  # the first name of a slot
    assert work.name(1, same_name=True) == ("soak-b", "s01")
    assert work.name(1, same_name=False) == ("soak-b", "s01-r1")
    assert work.name(1, same_name=True) == ("soak-b", "s01-r1")
    assert work.name(2, same_name=False) == ("soak-a", "s02")


# -- 1. phases ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "broken", "problem"),
    [
        (Observed(tasks=[task()], claims=[claim()], pods=[pod()]), set(), None),
        (Observed(tasks=[task()], claims=[claim()]), set(), "Active, but it has no pod"),
        (Observed(tasks=[task()], claims=[claim()], pods=[pod(ready=False)]), set(), "not Ready"),
        (Observed(tasks=[task()], claims=[claim()], pods=[pod(phase="Pending")]), set(), "Pending"),
        (Observed(tasks=[task()], claims=[claim()], pods=[pod(deleting=True)]), set(), "being deleted"),
        (Observed(tasks=[task()], claims=[claim()], pods=[pod(lifetime=2)]), set(), "lifetime 2"),
        (
            Observed(tasks=[task(lifetime=3)], claims=[claim()], pods=[pod(lifetime=3)]),
            set(),
            None,
        ),
        (Observed(tasks=[task()], pods=[pod()]), set(), "its pod runs with no volume claim"),
        (
            Observed(tasks=[task()], claims=[claim(deleting=True)], pods=[pod()]),
            set(),
            "its pod runs with volume claim Bound, being deleted",
        ),
        (
            Observed(tasks=[task()], claims=[claim()], pods=[pod(mounts="workspace-s01-0")]),
            set(),
            "does not mount workspace-s00-0 (volume claims: workspace-s01-0)",
        ),
        (Observed(tasks=[task(phase="Paused", paused=True)], claims=[claim()]), set(), None),
        # created paused: no pod yet, so no files to keep
        (Observed(tasks=[task(phase="Paused", paused=True, lifetime=0)]), set(), None),
        (
            Observed(tasks=[task(phase="Paused", paused=True)], claims=[claim()], pods=[pod()]),
            set(),
            "its pod is still there (Running, Ready)",
        ),
        (
            Observed(tasks=[task(phase="Paused", paused=True)], claims=[claim()], pods=[pod(deleting=True)]),
            set(),
            "its pod is still there (Running, Ready, being deleted)",
        ),
        (
            Observed(tasks=[task(phase="Paused", paused=True)]),
            set(),
            "Paused after lifetime 1, but it has no volume claim",
        ),
        (
            Observed(tasks=[task(phase="Paused", paused=True)], claims=[claim(deleting=True)]),
            set(),
            "its volume claim is being deleted",
        ),
        (Observed(tasks=[task(phase="Pending", paused=True)]), set(), "spec.paused, but phase Pending"),
        (Observed(tasks=[task(phase="Paused")]), set(), "phase Paused after the settle"),
        (Observed(tasks=[task(phase="Initializing")]), set(), "phase Initializing after the settle"),
        (Observed(tasks=[task(phase="Unknown")]), set(), "phase Unknown after the settle"),
        (
            Observed(tasks=[task(phase="Error", message="ImagePullBackOff")]),
            {(NS, "quick")},
            None,
        ),
        (Observed(tasks=[task(phase="Error")]), {(NS, "quick")}, "Error, with no message"),
        (
            Observed(tasks=[task(phase="Error", message="x")]),
            {(NS, "slow")},
            "though its template is not broken",
        ),
        (
            Observed(tasks=[task(generation=3, observed=2)], claims=[claim()], pods=[pod()]),
            set(),
            "status.observedGeneration 2, generation 3",
        ),
    ],
)
def test_phases(observed: Observed, broken: set[tuple[str, str]], problem: str | None) -> None:
    found = check_phases(observed, History(broken=broken))
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0].seen, found
        assert found[0].task == f"{NS}/s00"


@pytest.mark.parametrize(
    ("before", "now", "broken", "touched", "flagged"),
    [
        # Error at both looks, its template healed before the first: a pod of the bad template never replaced
        (
            [task(phase="Error", message="ImagePullBackOff")],
            [task(phase="Error", message="x")],
            set(),
            set(),
            True,
        ),
        # the template is still broken: Error is the right answer
        ([task(phase="Error")], [task(phase="Error")], {(NS, "quick")}, set(), False),
        # something touched it meanwhile (a pause, a fault, its template, an operator kill)
        ([task(phase="Error")], [task(phase="Error")], set(), {f"{NS}/s00"}, False),
        # settled at the second look
        ([task(phase="Initializing")], [task(phase="Active")], set(), set(), False),
        # unsettled only at the second look
        ([task(phase="Active")], [task(phase="Unknown")], set(), set(), False),
        # a new task of the same name is another task
        ([task(phase="Pending", uid="u0")], [task(phase="Pending", uid="u1")], set(), set(), False),
        # stuck pausing, stuck starting, stuck unknown
        ([task(phase="Pending", paused=True)], [task(phase="Pending", paused=True)], set(), set(), True),
        ([task(phase="Initializing")], [task(phase="Initializing")], set(), set(), True),
        ([task(phase="Unknown")], [task(phase="Unknown")], set(), set(), True),
        ([task(phase="Paused", paused=True)], [task(phase="Paused", paused=True)], set(), set(), False),
    ],
)
def test_lingering(
    before: list[dict[str, Any]],
    now: list[dict[str, Any]],
    broken: set[tuple[str, str]],
    touched: set[str],
    flagged: bool,
) -> None:
    found = check_lingering(before, now, broken, touched)
    assert [v.task for v in found] == ([f"{NS}/s00"] if flagged else [])
    if flagged:
        assert found[0].seen.startswith("during the run: ")


# -- 2. prompts ---------------------------------------------------------------------------------


def test_a_prompt_twice_in_a_conversation_is_a_violation_wherever_the_conversation_is() -> None:
    prompt = "[prompt 1] fix it 🚀"
    twice = messages(("agent", "hi", 1), ("user", prompt, 2), ("agent", "ok", 3), ("user", f" {prompt}\n", 9))
    for source in ("agent", "state file", "state file of a deleted task"):
        found = check_prompts(
            Observed(conversations={f"{NS}/s00": Talk(source, twice)}), History(prompts={prompt})
        )
        assert len(found) == 1
        assert "prompt" in found[0].seen and "2 times" in found[0].seen and source in found[0].seen


def test_distinct_user_messages_and_a_delivered_prompt_are_fine() -> None:
    prompt = "[prompt 1] fix it 🚀"
    said = messages(("user", prompt, 2), ("user", "[send 2] and this", 5), ("agent", prompt, 6))
    observed = Observed(tasks=[task(prompt=prompt)], conversations={f"{NS}/s00": Talk("agent", said)})
    assert check_prompts(observed, History(prompts={prompt})) == []


def test_an_active_task_whose_prompt_never_reached_its_agent_is_a_violation() -> None:
    said = messages(("agent", "hi", 1), ("user", "[prompt 1] the old prompt", 2))
    observed = Observed(
        tasks=[task(prompt="[prompt 3] the edited prompt")], conversations={f"{NS}/s00": Talk("agent", said)}
    )
    found = check_prompts(observed, History())
    assert len(found) == 1 and "is not among its agent's 2 messages" in found[0].seen
    paused = Observed(
        tasks=[task(phase="Paused", paused=True, prompt="[prompt 3] the edited prompt")],
        conversations={f"{NS}/s00": Talk("state file", said)},
    )
    assert check_prompts(paused, History()) == []  # delivered after the resume


# -- 3. snapshots -------------------------------------------------------------------------------

PROMPT = "[prompt 1] fix it 🚀"
SAID = messages(("agent", "hi", 1), ("user", PROMPT, 2), ("agent", "done", 4))


def paused_task(**kw: Any) -> dict[str, Any]:
    return task(phase="Paused", paused=True, **kw)


@pytest.mark.parametrize(
    ("observed", "pauses", "problem"),
    [
        # paused after delivery, the snapshot holds the prompt
        (
            Observed(
                tasks=[paused_task(snapshot="s00-snapshot")], configmaps=[snapshot_map("s00-snapshot", SAID)]
            ),
            [10.0],
            None,
        ),
        # no snapshot, but an Event says why
        (Observed(tasks=[paused_task()], events=[skipped(11)]), [10.0], None),
        # no snapshot and no reason
        (Observed(tasks=[paused_task()]), [10.0], "status.logSnapshot is empty"),
        # a snapshot named but gone
        (Observed(tasks=[paused_task(snapshot="s00-snapshot")]), [10.0], "which does not exist"),
        # an Event with no reason is no reason
        (Observed(tasks=[paused_task()], events=[skipped(11, message=" ")]), [10.0], "no SnapshotSkipped"),
        # another task's Event is no reason
        (Observed(tasks=[paused_task()], events=[skipped(11, uid="u2")]), [10.0], "no SnapshotSkipped"),
        # paused before the prompt went: nothing to keep
        (Observed(tasks=[paused_task()]), [1.5], None),
        # the snapshot is older than the last message before the pause, no Event after the pause
        (
            Observed(
                tasks=[paused_task(snapshot="s00-snapshot")],
                configmaps=[snapshot_map("s00-snapshot", SAID[:1])],
                events=[skipped(3)],
            ),
            [10.0],
            "lacks the last user message sent before",
        ),
        # ... with an Event after the pause
        (
            Observed(
                tasks=[paused_task(snapshot="s00-snapshot")],
                configmaps=[snapshot_map("s00-snapshot", SAID[:1])],
                events=[skipped(12)],
            ),
            [10.0],
            None,
        ),
        # running again: an old snapshot is the task's, but it is not judged as the current pause's
        (
            Observed(
                tasks=[task(snapshot="s00-snapshot")], configmaps=[snapshot_map("s00-snapshot", SAID[:1])]
            ),
            [10.0],
            None,
        ),
    ],
)
def test_snapshots(observed: Observed, pauses: list[float], problem: str | None) -> None:
    observed.conversations = {f"{NS}/s00": Talk("state file", SAID)}
    found = check_snapshots(observed, History(pauses={"u1": [T0 + p for p in pauses]}))
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0].seen, found


def test_the_last_user_message_before_the_pause_is_the_one_the_snapshot_must_hold() -> None:
    said = [*SAID, *messages(("user", "[send 2] more", 20), ("agent", "ok", 21))]
    for m, i in zip(said, range(len(said)), strict=True):
        m["id"] = i
    kept_old = snapshot_map("s00-snapshot", SAID)
    observed = Observed(
        tasks=[paused_task(snapshot="s00-snapshot")],
        configmaps=[kept_old],
        conversations={f"{NS}/s00": Talk("state file", said)},
    )
    found = check_snapshots(observed, History(pauses={"u1": [T0 + 30]}))
    assert len(found) == 1 and "[send 2] more" in found[0].seen
    assert check_snapshots(observed, History(pauses={"u1": [T0 + 15]})) == []  # paused before the send


# -- 4. orphans ---------------------------------------------------------------------------------


def workspace(owner: str = "u1", created: float = 1, controller: bool = True) -> list[dict[str, Any]]:
    return [
        child("ConfigMap", "s00-snapshot", owner, uid="cm1", created=created, controller=controller),
        child("Pod", "s00-0", owner, uid="p1", created=created, controller=controller),
        child(
            "PersistentVolumeClaim",
            "workspace-s00-0",
            owner,
            uid="pvc1",
            created=created,
            controller=controller,
        ),
    ]


def split(objects: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> Observed:
    by = {k: [o for o in objects if o["kind"] == k] for k in {o["kind"] for o in objects}}
    return Observed(
        tasks=tasks,
        configmaps=by.get("ConfigMap", []),
        pods=by.get("Pod", []),
        claims=by.get("PersistentVolumeClaim", []),
    )


KINDS = ["ConfigMap s00-snapshot", "PersistentVolumeClaim workspace-s00-0", "Pod s00-0"]


def test_a_workspace_owned_by_its_task_is_no_orphan() -> None:
    assert check_orphans(split(workspace(), [task()])) == []


def test_everything_left_of_a_deleted_task_is_an_orphan() -> None:
    found = check_orphans(split(workspace(), []))
    assert len(found) == 3 and all("is left of a deleted task" in v.seen for v in found)
    assert {v.task for v in found} == {f"{NS}/s00"}


def test_a_workspace_owned_by_an_earlier_task_of_the_same_name_is_an_orphan() -> None:
    found = check_orphans(split(workspace(owner="u0"), [task(uid="u1")]))
    assert sorted(v.seen.split(" is ")[0] for v in found) == KINDS
    assert all("controlled by u0, not by its task (u1)" in v.seen for v in found)


def test_a_workspace_older_than_its_task_was_adopted_from_a_deleted_one() -> None:
    found = check_orphans(split(workspace(created=-60), [task()]))
    assert len(found) == 3 and all("before its task" in v.seen for v in found)


def test_a_child_its_task_does_not_control_is_an_orphan() -> None:
    # no owner at all (say, a StatefulSet's pod and claim an upgrade left and nothing adopted) ...
    found = check_orphans(split(workspace(owner=""), [task()]))
    assert sorted(v.seen.split(" is ")[0] for v in found) == KINDS
    assert all("controlled by nothing, not by its task (u1)" in v.seen for v in found)
    # ... or the task as an owner, but not as the controller
    found = check_orphans(split(workspace(controller=False), [task()]))
    assert len(found) == 3 and all("controlled by nothing" in v.seen for v in found)


# -- 5. the operator ----------------------------------------------------------------------------


def test_crashes_and_tracebacks_in_the_operator_log_are_violations() -> None:
    log = "\n".join(
        [
            "==== soak: operator start 1",
            "2026-11-30 05:00:00,000 ERROR   kopf.objects: Handler 'reconcile' failed with an exception.",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in f',
            "    raise KeyError('x')",
            "KeyError: 'x'",
            "2026-11-30 05:00:01,000 INFO    taskpod: fine",
        ]
    )
    found = check_operator(log, History(crashes=["exited by itself with status 1"]))
    assert len(found) == 2 and found[0].seen == "exited by itself with status 1"
    assert "log line 3: Traceback" in found[1].seen and "KeyError: 'x'" in found[1].seen
    assert "Handler 'reconcile' failed" in found[1].seen
    assert check_operator("all quiet\n", History()) == []
