"""Lifecycle automation's decisions (core/automation.py), by tables, with an injected clock."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from taskpod.api.models import (
    AgentState,
    AgentStatus,
    AutoPause,
    Phase,
    PodTemplate,
    TaskSpec,
    TaskTemplateSpec,
)
from taskpod.core import automation
from taskpod.core.automation import PauseReason, Policy, Seen, decide, duration, idle_since, policy

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
POD = PodTemplate(image="agent:1")


def at(minutes: float) -> dt.datetime:
    return T0 + minutes * MIN


IDLE = Seen(
    spec_paused=False,
    wake="",
    auto_pause=None,
    idle_since=at(0),
    phase=Phase.ACTIVE,
    active_since=at(-10),
    state=AgentState.IDLE,
    state_at=at(0),
    agent=AgentStatus.STABLE,
)
THIRTY = Policy(idle_pause=30 * MIN)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", 30 * MIN),
        ("1h30m", 90 * MIN),
        ("45s", dt.timedelta(seconds=45)),
        ("2h", dt.timedelta(hours=2)),
        ("0", None),
        ("0s", None),
        ("0h0m0s", None),
        (None, None),
        ("", None),
        ("30", None),  # no unit: not a duration (the CRD refuses it)
        ("1d", None),
        ("m30", None),
    ],
)
def test_durations_as_people_write_them(text: str | None, expected: dt.timedelta | None) -> None:
    assert duration(text) == expected


def test_the_tasks_setting_overrides_the_templates_one_by_one() -> None:
    template = TaskTemplateSpec(pod=POD, idle_pause="30m", pause_on_finish=True, delete_after_finish="24h")
    assert policy(TaskSpec(prompt="x"), template) == Policy(30 * MIN, True, dt.timedelta(hours=24))
    mine = TaskSpec(prompt="x", idle_pause="0", pause_on_finish=False)
    assert policy(mine, template) == Policy(None, False, dt.timedelta(hours=24))  # 0 turns it off
    assert policy(TaskSpec(prompt="x", idle_pause="5m"), None) == Policy(idle_pause=5 * MIN)
    assert not policy(TaskSpec(prompt="x"), TaskTemplateSpec(pod=POD)).any


@pytest.mark.parametrize(
    ("why", "seen", "now", "paused_by", "look_again"),
    [
        ("idle long enough", IDLE, at(30), PauseReason.IDLE, None),
        ("idle, not long enough: look again when it is", IDLE, at(20), None, 600.0),
        ("working now, whatever status said", replace(IDLE, agent=AgentStatus.RUNNING), at(60), None, None),
        ("not heard since a restart: never early, nor blind", replace(IDLE, agent=None), at(60), None, None),
        (
            "idle from now: look again when it would be due",
            replace(IDLE, idle_since=None),
            at(60),
            None,
            1800.0,
        ),
        ("Unknown: the clock does not run", replace(IDLE, phase=Phase.UNKNOWN), at(60), None, None),
        ("Error", replace(IDLE, phase=Phase.ERROR), at(60), None, None),
        ("the user paused it", replace(IDLE, spec_paused=True), at(60), None, None),
        ("done counts as idle", replace(IDLE, state=AgentState.COMPLETE), at(30), PauseReason.IDLE, None),
    ],
)
def test_idle_pause(
    why: str, seen: Seen, now: dt.datetime, paused_by: PauseReason | None, look_again: float | None
) -> None:
    decision = decide(THIRTY, seen, now)
    assert (decision.paused_by, decision.look_again) == (paused_by, look_again), why
    if paused_by is not None:
        assert decision.auto_pause == {
            "reason": "Idle",
            "pausedAt": "2026-12-01T12:30:00Z",
            "wake": "",
            "wokenAt": None,
        }
        assert decision.event is not None and decision.event.reason == "AutoPaused"
        assert "Paused after 30m idle" in decision.event.message
    else:
        assert decision.auto_pause is None and decision.event is None
    assert not decision.delete


def test_no_policy_no_pause() -> None:
    assert decide(Policy(), IDLE, at(10_000)).paused_by is None


def paused_auto(wake: str = "", woken: dt.datetime | None = None) -> AutoPause:
    return AutoPause(reason="Idle", paused_at=at(30), wake=wake, woken_at=woken)


@pytest.mark.parametrize(
    ("why", "seen", "paused_by", "woken", "event"),
    [
        (
            "stays paused (nothing else is read: not even an idle clock)",
            replace(IDLE, auto_pause=paused_auto(), phase=Phase.PAUSED, agent=None, idle_since=None),
            PauseReason.IDLE,
            False,
            None,
        ),
        (
            "the wake annotation changed: awake",
            replace(IDLE, auto_pause=paused_auto(), wake="2026-12-01T13:00:00Z", phase=Phase.PAUSED),
            None,
            True,
            "Woken",
        ),
        (
            "a manifest's own wake value is kept, and only a new one wakes",
            replace(IDLE, auto_pause=paused_auto(wake="1"), wake="1", phase=Phase.PAUSED, agent=None),
            PauseReason.IDLE,
            False,
            None,
        ),
        (
            "the user's pause takes over, quietly",
            replace(IDLE, auto_pause=paused_auto(), spec_paused=True, phase=Phase.PAUSED),
            None,
            True,
            None,
        ),
        (
            "woken before: that record is history",
            replace(IDLE, auto_pause=paused_auto(woken=at(40)), idle_since=at(41), active_since=at(41)),
            None,
            False,
            None,
        ),
    ],
)
def test_waking(why: str, seen: Seen, paused_by: PauseReason | None, woken: bool, event: str | None) -> None:
    decision = decide(THIRTY, seen, at(50))
    assert decision.paused_by == paused_by, why
    if woken:
        assert decision.auto_pause is not None and decision.auto_pause["wokenAt"] == "2026-12-01T12:50:00Z"
        assert decision.auto_pause["reason"] == "Idle"
    else:
        assert decision.auto_pause is None
    assert (decision.event.reason if decision.event else None) == event


def test_woken_then_idle_again_pauses_again_after_a_whole_idle_pause() -> None:
    woken = replace(IDLE, auto_pause=paused_auto(woken=at(40)), idle_since=at(41), active_since=at(41))
    assert decide(THIRTY, woken, at(70)).paused_by is None
    again = decide(THIRTY, woken, at(71))
    assert again.paused_by is PauseReason.IDLE and again.auto_pause is not None
    assert again.auto_pause["wokenAt"] is None


FINISHED = replace(IDLE, state=AgentState.COMPLETE, state_at=at(5), idle_since=at(5))


@pytest.mark.parametrize(
    ("why", "seen", "paused_by"),
    [
        ("complete, waiting", FINISHED, PauseReason.FINISHED),
        ("failed, waiting", replace(FINISHED, state=AgentState.FAILED), PauseReason.FINISHED),
        ("still writing its last words", replace(FINISHED, agent=AgentStatus.RUNNING), None),
        (
            "resumed since it finished: not again for the same finish",
            replace(FINISHED, active_since=at(6)),
            None,
        ),
        ("idle is not finished", replace(FINISHED, state=AgentState.IDLE), None),
        ("paused already", replace(FINISHED, phase=Phase.PAUSED), None),
    ],
)
def test_pause_on_finish(why: str, seen: Seen, paused_by: PauseReason | None) -> None:
    decision = decide(Policy(pause_on_finish=True), seen, at(6))
    assert decision.paused_by == paused_by, why
    if paused_by is not None:
        assert decision.auto_pause is not None and decision.auto_pause["reason"] == "Finished"
        assert decision.event is not None and "reported " in decision.event.message


DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("why", "seen", "now", "delete", "look_again"),
    [
        ("a day after it finished", FINISHED, at(5) + DAY, True, None),
        ("paused, a day after", replace(FINISHED, phase=Phase.PAUSED, agent=None), at(5) + DAY, True, None),
        ("not yet", FINISHED, at(5) + DAY - MIN, False, 60.0),
        (
            "given more to do since: not while it works",
            replace(FINISHED, agent=AgentStatus.RUNNING),
            at(5) + 2 * DAY,
            False,
            None,
        ),
        ("never finished", IDLE, at(5) + 2 * DAY, False, None),
        ("Error, never finished", replace(IDLE, phase=Phase.ERROR), at(5) + 2 * DAY, False, None),
    ],
)
def test_delete_after_finish(
    why: str, seen: Seen, now: dt.datetime, delete: bool, look_again: float | None
) -> None:
    decision = decide(Policy(delete_after_finish=DAY), seen, now)
    assert (decision.delete, decision.look_again) == (delete, look_again), why
    if delete:
        assert decision.event is not None and decision.event.reason == "Deleting"
        assert "1d" not in decision.event.message and "24h ago" in decision.event.message


def test_the_nearest_of_two_timers_is_the_next_look() -> None:
    both = Policy(idle_pause=30 * MIN, delete_after_finish=DAY)
    assert decide(both, FINISHED, at(6)).look_again == 29 * 60


@pytest.mark.parametrize(
    ("why", "phase", "agent", "before", "expected"),
    [
        ("starts when the agent is first seen waiting", Phase.ACTIVE, AgentStatus.STABLE, None, at(3)),
        ("and then stands", Phase.ACTIVE, AgentStatus.STABLE, at(1), at(1)),
        ("work clears it", Phase.ACTIVE, AgentStatus.RUNNING, at(1), None),
        ("not heard yet (a restart): it stands", Phase.ACTIVE, None, at(1), at(1)),
        ("not heard, never idle: nothing starts", Phase.ACTIVE, None, None, None),
        ("paused: cleared", Phase.PAUSED, None, at(1), None),
        (
            "Unknown: cleared, so that it counts again from Active",
            Phase.UNKNOWN,
            AgentStatus.STABLE,
            at(1),
            None,
        ),
        ("Pending (pausing)", Phase.PENDING, AgentStatus.STABLE, at(1), None),
    ],
)
def test_the_idle_clock(
    why: str,
    phase: Phase,
    agent: AgentStatus | None,
    before: dt.datetime | None,
    expected: dt.datetime | None,
) -> None:
    assert idle_since(before, phase, agent, at(3)) == expected, why


def test_seen_from_a_stored_status() -> None:
    status = {
        "phase": "Active",
        "idleSince": "2026-12-01T12:00:00Z",
        "state": {"state": "complete", "timestamp": "2026-12-01T12:05:00Z"},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AgentReady",
                "message": "",
                "lastTransitionTime": "2026-12-01T11:50:00Z",
            }
        ],
        "autoPause": {
            "reason": "Idle",
            "pausedAt": "2026-12-01T11:00:00Z",
            "wake": "x",
            "wokenAt": "2026-12-01T11:40:00Z",
        },
    }
    seen = automation.seen_from(status, False, "y", AgentStatus.STABLE)
    assert seen.idle_since == at(0) and seen.active_since == at(-10) and seen.state_at == at(5)
    assert seen.state is AgentState.COMPLETE and seen.phase is Phase.ACTIVE
    assert seen.auto_pause is not None and seen.auto_pause.woken_at == at(-20)
    assert automation.seen_from({}, True, "", None).phase is None


def test_a_long_wake_value_is_kept_as_its_hash_and_still_wakes_when_it_changes() -> None:
    long = "x" * 300_000
    paused = decide(THIRTY, replace(IDLE, wake=long), at(30))
    assert paused.auto_pause is not None and paused.auto_pause["wake"].startswith("sha256:")
    record = AutoPause.model_validate(paused.auto_pause)
    assert automation.in_effect(record, False, long)
    assert not automation.in_effect(record, False, long + "y")
    assert automation.wake_token("2026-12-01T12:00:00Z") == "2026-12-01T12:00:00Z"
