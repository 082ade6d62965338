"""Lifecycle automation in the reconcile (core/automation.py's decisions acted on): an idle task pauses on
its own, its decision in status before its pod stops; the wake annotation wakes it; a restarted operator
neither resets the idle clock nor pauses early; a finished task is paused, then deleted. Against the
reconcile tests' stand-in API server, with a clock the test moves."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from prometheus_client import REGISTRY

from taskpod.api.models import AgentStatus
from taskpod.controller.reconcile import Reconciler, Views
from taskpod.core.lifecycle import AgentView
from tests.unit.test_reconcile import (
    KEY,
    FakeAgents,
    FakeApi,
    FakeIndex,
    reconciler_with,
    task_body,
    tasks_index,
    views,
)

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, minutes: float) -> None:
        self.at += dt.timedelta(minutes=minutes)


def body(
    version: str, status: dict[str, Any] | None = None, *, wake: str | None = None, **spec: Any
) -> dict[str, Any]:
    made = task_body(version, status)
    made["spec"].update(spec)
    if wake is not None:
        made["metadata"]["annotations"] = {"taskpod.dev/wake": wake}
    return made


def seen(v: Views, api: FakeApi, *, wake: str | None = None, **spec: Any) -> Views:
    """The task's watch catches up with what the API server holds (the pod's is the test's to move)."""
    v.tasks = tasks_index({KEY: body(str(api.version), api.status, wake=wake, **spec)})
    return v


def pod_gone(v: Views) -> Views:
    v.pods = FakeIndex({})
    return v


def automatic_pauses() -> float:
    """taskpod_automatic_actions_total{action="AutoPaused"}, as /metrics shows it."""
    value = REGISTRY.get_sample_value("taskpod_automatic_actions_total", {"action": "AutoPaused"})
    return value or 0.0


def make_reconciler(api: FakeApi, clock: Clock, events: list[str]) -> Reconciler:
    return reconciler_with(events, api, now=clock)


def agent_is(reconciler: Reconciler, status: AgentStatus | None) -> None:
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    if status is None:  # as Agents.ensure leaves it for an agent that answered the previous process
        agents.views[KEY] = AgentView(lifetime=1, answered=True)
    else:
        agents.views[KEY] = AgentView(lifetime=1, answered=True, healthy=True, status=status)


def reconcile(reconciler: Reconciler, v: Views) -> None:
    async def once() -> None:
        await reconciler.reconcile(KEY, v)
        await reconciler.stop()

    asyncio.run(once())


def idle_for_half_an_hour(
    api: FakeApi, clock: Clock, events: list[str], **spec: Any
) -> tuple[Reconciler, Views]:
    """An Active task whose agent went idle at T0, with idlePause 30m: status as the operator wrote it."""
    reconciler = make_reconciler(api, clock, events)
    v = views(body("5", idlePause="30m", **spec), api)
    reconcile(reconciler, v)
    assert api.status["phase"] == "Active" and api.status["idleSince"] == "2026-12-01T12:00:00Z"
    return reconciler, v


def test_an_idle_task_pauses_itself_its_decision_written_before_its_pod_stops(api: FakeApi) -> None:
    clock, events = Clock(), list[str]()
    reconciler, v = idle_for_half_an_hour(api, clock, events)
    clock.advance(29)
    v = seen(v, api, idlePause="30m")
    reconcile(reconciler, v)
    assert api.deletes() == [] and "autoPause" not in api.status  # not yet

    clock.advance(1)
    before = len(api.status_patches)
    counted = automatic_pauses()
    reconcile(reconciler, seen(v, api, idlePause="30m"))
    first = api.status_patches[before]
    assert first == {
        "autoPause": {"reason": "Idle", "pausedAt": "2026-12-01T12:30:00Z", "wake": "", "wokenAt": None}
    }
    assert [c[:2] for c in api.calls][-1] == ("delete", "Pod")
    assert "AutoPaused" in events
    assert automatic_pauses() == counted + 1

    reconcile(reconciler, pod_gone(seen(v, api, idlePause="30m")))
    status = api.status
    paused = next(c for c in status["conditions"] if c["type"] == "Paused")
    assert (status["phase"], paused["status"], paused["reason"]) == ("Paused", "True", "Idle")
    assert status["message"].startswith("Paused after 30m idle (idlePause)")
    assert "idleSince" not in status  # not Active: the clock stopped
    assert events.count("AutoPaused") == 1 and "Paused" not in events  # one Event tells it, with why

    # The same manifest applied again changes nothing: no write, no pod.
    writes, calls = len(api.status_patches), len(api.calls)
    reconcile(reconciler, seen(v, api, idlePause="30m"))
    assert (len(api.status_patches), len(api.calls)) == (writes, calls)
    assert api.status["phase"] == "Paused"


def test_a_new_wake_value_wakes_it_and_the_old_one_does_not(api: FakeApi) -> None:
    clock, events = Clock(), list[str]()
    reconciler, v = idle_for_half_an_hour(api, clock, events, wake="1")
    clock.advance(30)
    reconcile(reconciler, seen(v, api, wake="1", idlePause="30m"))
    reconcile(reconciler, v := pod_gone(seen(v, api, wake="1", idlePause="30m")))
    assert api.status["phase"] == "Paused" and api.status["autoPause"]["wake"] == "1"

    clock.advance(5)
    reconcile(reconciler, v := seen(v, api, wake="2", idlePause="30m"))
    assert api.status["autoPause"]["wokenAt"] == "2026-12-01T12:35:00Z"
    assert "Woken" in events
    assert [c[:2] for c in api.calls][-1] == ("create", "Pod")  # its next lifetime
    assert api.status["phase"] != "Paused"


def test_a_restarted_operator_keeps_the_idle_clock_and_does_not_pause_early(api: FakeApi) -> None:
    clock, events = Clock(), list[str]()
    _, v = idle_for_half_an_hour(api, clock, events)
    clock.advance(20)
    # A new process: nothing in memory, and its agent not heard from yet.
    second = make_reconciler(api, clock, events)
    agent_is(second, None)
    reconcile(second, v := seen(v, api, idlePause="30m"))
    assert api.status.get("idleSince") == "2026-12-01T12:00:00Z"  # not reset
    clock.advance(15)  # 35 minutes idle, the agent still not heard: never paused blind
    reconcile(second, v := seen(v, api, idlePause="30m"))
    assert "autoPause" not in api.status
    agent_is(second, AgentStatus.STABLE)  # heard, waiting since 12:00 as status says: due
    reconcile(second, seen(v, api, idlePause="30m"))
    assert api.status["autoPause"]["pausedAt"] == "2026-12-01T12:35:00Z"


@pytest.mark.parametrize("written", ["2026-12-01T12:00:00", "2026-12-01T13:00:00+01:00"])
def test_an_idle_clock_written_without_utc_is_read_as_the_api_server_reads_it(
    api: FakeApi, written: str
) -> None:
    """The API server's date-time takes a time without a zone (as UTC) or with an offset; the clock read
    back must neither stop every reconcile of the task (naive against aware) nor move."""
    clock, events = Clock(), list[str]()
    _, v = idle_for_half_an_hour(api, clock, events)
    api.status["idleSince"] = written  # rewritten by another client, say a backup restored
    clock.advance(30)
    second = make_reconciler(api, clock, events)
    agent_is(second, AgentStatus.STABLE)
    reconcile(second, seen(v, api, idlePause="30m"))
    assert "ReconcileFailed" not in events
    assert api.status["autoPause"]["pausedAt"] == "2026-12-01T12:30:00Z"  # 30m after 12:00 UTC


def test_work_stops_the_idle_clock(api: FakeApi) -> None:
    clock, events = Clock(), list[str]()
    reconciler, v = idle_for_half_an_hour(api, clock, events)
    clock.advance(10)
    agent_is(reconciler, AgentStatus.RUNNING)
    reconcile(
        reconciler,
        v := seen(v, api, idlePause="30m"),
    )
    assert "idleSince" not in api.status
    clock.advance(60)
    reconcile(
        reconciler,
        v := seen(v, api, idlePause="30m"),
    )
    assert "autoPause" not in api.status and api.deletes() == []
    agent_is(reconciler, AgentStatus.STABLE)
    reconcile(reconciler, seen(v, api, idlePause="30m"))
    assert api.status["idleSince"] == "2026-12-01T13:10:00Z"  # counts again from now


def test_a_finished_task_is_paused_then_deleted(api: FakeApi) -> None:
    clock, events = Clock(), list[str]()
    reconciler = make_reconciler(api, clock, events)
    spec: dict[str, Any] = {"pauseOnFinish": True, "deleteAfterFinish": "1h"}
    v = views(body("5", **spec), api)
    reconcile(reconciler, v)
    api.status["state"] = {"state": "complete", "message": "Done", "timestamp": "2026-12-01T12:00:00Z"}
    clock.advance(1)
    reconcile(reconciler, v := seen(v, api, **spec))
    assert api.status["autoPause"]["reason"] == "Finished"
    reconcile(reconciler, v := pod_gone(seen(v, api, **spec)))
    assert api.status["phase"] == "Paused"
    assert next(c for c in api.status["conditions"] if c["type"] == "Paused")["reason"] == "Finished"
    clock.advance(58)
    reconcile(reconciler, v := seen(v, api, **spec))
    assert not api.task_deleted
    clock.advance(1)
    reconcile(reconciler, seen(v, api, **spec))
    assert api.task_deleted and ("delete", "Task", "fix-login", "u1") in api.calls
    assert events[-1] == "Deleting"


def test_no_policy_writes_nothing_new(api: FakeApi) -> None:
    """A task without automation: no autoPause ever, and status carries only the idle clock."""
    clock, events = Clock(), list[str]()
    reconciler = make_reconciler(api, clock, events)
    v = views(body("5"), api)
    reconcile(reconciler, v)
    clock.advance(600)
    reconcile(reconciler, seen(v, api))
    assert "autoPause" not in api.status and api.deletes() == []


def test_an_operator_stopped_between_the_decision_and_the_pods_stop_finishes_the_pause(api: FakeApi) -> None:
    """The decision is in status before the pod is touched: a new process, not even hearing the agent,
    carries the pause through; a restart never undoes it nor makes a second one."""
    clock, events = Clock(), list[str]()
    first, v = idle_for_half_an_hour(api, clock, events)
    clock.advance(30)

    async def killed(namespace: str, name: str, uid: str) -> bool:
        raise RuntimeError("the operator is killed here")

    stop = api.delete_pod
    api.delete_pod = killed  # type: ignore[method-assign]
    reconcile(first, seen(v, api, idlePause="30m"))
    assert api.status["autoPause"]["pausedAt"] == "2026-12-01T12:30:00Z" and api.deletes() == []
    api.delete_pod = stop  # type: ignore[method-assign]

    clock.advance(2)
    second = make_reconciler(api, clock, events)
    agent_is(second, None)
    reconcile(second, v := seen(v, api, idlePause="30m"))
    assert [c[:2] for c in api.deletes()] == [("delete", "Pod")]
    assert api.status["autoPause"]["pausedAt"] == "2026-12-01T12:30:00Z"  # the same pause, not a new one
    reconcile(second, pod_gone(seen(v, api, idlePause="30m")))
    assert api.status["phase"] == "Paused"
    assert next(c for c in api.status["conditions"] if c["type"] == "Paused")["reason"] == "Idle"


def test_an_api_server_gone_at_the_decisions_write_leaves_the_pod_alone_until_it_is_written(
    api: FakeApi,
) -> None:
    """The decision goes to status before the pod is touched: when that write fails, the pod keeps
    running, and the retry that gets through makes one pause, not two."""
    clock, events = Clock(), list[str]()
    reconciler, v = idle_for_half_an_hour(api, clock, events)
    clock.advance(30)

    async def unreachable(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        raise ConnectionResetError("the API server went away")

    write = api.patch_task_status
    api.patch_task_status = unreachable  # type: ignore[method-assign]
    reconcile(reconciler, v := seen(v, api, idlePause="30m"))
    assert api.deletes() == [] and "autoPause" not in api.status
    assert "ReconcileFailed" in events  # said, and retried

    api.patch_task_status = write  # type: ignore[method-assign]
    clock.advance(1)
    reconcile(reconciler, v := seen(v, api, idlePause="30m"))
    assert api.status["autoPause"]["pausedAt"] == "2026-12-01T12:31:00Z"
    assert [c[:2] for c in api.deletes()] == [("delete", "Pod")]
    reconcile(reconciler, pod_gone(seen(v, api, idlePause="30m")))
    assert api.status["phase"] == "Paused" and events.count("AutoPaused") == 1
