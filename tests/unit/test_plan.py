"""The reconcile's plan: what the workspace's pod needs, which workspace is a deleted task's leftover, and
for the status it composed, whether to write, hold or leave it, and the Event it tells."""

from __future__ import annotations

from typing import Any

import pytest

from taskpod.api.models import Phase, Task
from taskpod.core.lifecycle import ClaimView, PodView, Verdict
from taskpod.core.plan import Event, PodAction, Write, leftover, pod_action, status_write, story_event


def status(phase: str, message: str = "", generation: int = 1, **more: Any) -> dict[str, Any]:
    return {"phase": phase, "message": message, "observedGeneration": generation, **more}


STARTING = "Workspace is starting: its containers are being created."


@pytest.mark.parametrize(
    ("current", "composed", "hold", "write"),
    [
        pytest.param(status("Active", "ready"), status("Active", "ready"), True, Write.NONE, id="same"),
        pytest.param({}, status("Pending", "waiting"), True, Write.NOW, id="first status: the task is seen"),
        pytest.param({}, status("Error", "no template"), True, Write.NOW, id="first status in Error"),
        pytest.param(
            status("Pending", "created"),
            status("Pending", "scheduled"),
            True,
            Write.HOLD,
            id="within Pending",
        ),
        pytest.param(
            status("Pending", "created"),
            status("Initializing", STARTING),
            True,
            Write.HOLD,
            id="Pending to Initializing: the pod starts, more follows",
        ),
        pytest.param(
            status("Initializing", STARTING),
            status("Active", "ready"),
            True,
            Write.HOLD,
            id="Active reached: the prompt and the agent's first turn fold in",
        ),
        pytest.param(
            status("Active", "working"), status("Active", "idle"), True, Write.HOLD, id="a turn within Active"
        ),
        pytest.param(
            status("Active", "idle"),
            status("Pending", "pausing", generation=2),
            True,
            Write.HOLD,
            id="pausing: a quick stop writes Paused alone",
        ),
        pytest.param(
            status("Pending", "pausing"), status("Paused", "paused"), True, Write.NOW, id="Paused reached"
        ),
        pytest.param(
            status("Active", "idle"), status("Paused", "paused", generation=2), True, Write.NOW, id="paused"
        ),
        pytest.param(
            status("Active", "ready"), status("Error", "failed"), True, Write.NOW, id="Error reached"
        ),
        pytest.param(status("Active", "ready"), status("Unknown", "lost"), True, Write.NOW, id="Unknown"),
        pytest.param(status("Error", "bad"), status("Error", "worse"), True, Write.NOW, id="within Error"),
        pytest.param(
            status("Paused", "paused"),
            status("Paused", "paused", displayName="Fix it"),
            True,
            Write.NOW,
            id="within Paused",
        ),
        pytest.param(status("Active", "working"), status("Active", "idle"), False, Write.NOW, id="holds off"),
        pytest.param(
            status("Active", "x", agent={"healthy": True}),
            status("Active", "x", agent=None),
            True,
            Write.HOLD,
            id="a field removed is a change",
        ),
    ],
)
def test_when_status_is_written(
    current: dict[str, Any], composed: dict[str, Any], hold: bool, write: Write
) -> None:
    assert status_write(current, composed, hold=hold) is write


@pytest.mark.parametrize(
    ("old", "phase", "kind"),
    [
        ("Pending", Phase.PAUSED, "Normal"),
        ("Active", Phase.ERROR, "Warning"),
        ("Active", Phase.UNKNOWN, "Warning"),
        (None, Phase.ERROR, "Warning"),  # a task in Error from its first status
        ("Error", Phase.ACTIVE, "Normal"),  # recovered: news
        ("Unknown", Phase.ACTIVE, "Normal"),
        ("Initializing", Phase.ACTIVE, None),  # the way up: the prompt's Event tells it
        ("Active", Phase.ACTIVE, None),  # no change
        ("Active", Phase.PENDING, None),  # a step on the way (pausing): status tells it
        ("Pending", Phase.INITIALIZING, None),
    ],
)
def test_which_phase_changes_tell_an_event(old: str | None, phase: Phase, kind: str | None) -> None:
    verdict = Verdict(phase, "SomeReason", "One sentence on why.")
    expected = Event(kind, "SomeReason", "One sentence on why.") if kind else None
    assert story_event(old, verdict) == expected


def test_an_automatic_pause_is_told_by_its_own_event_and_trouble_still_is() -> None:
    paused = Verdict(Phase.PAUSED, "Paused", "Paused after 30m idle (idlePause).")
    assert story_event("Pending", paused, automatic=True) is None  # AutoPaused told it, with why
    assert story_event("Pending", paused) == Event("Normal", "Paused", "Paused after 30m idle (idlePause).")
    failed = Verdict(Phase.ERROR, "PodFailed", "The pod failed.")
    assert story_event("Pending", failed, automatic=True) == Event("Warning", "PodFailed", "The pod failed.")


WANTED = "h2"


def pod(phase: str = "Running", spec_hash: str | None = WANTED, **kw: Any) -> PodView:
    return PodView("fix-bug-0", phase, uid="p1", owner_uid="u1", spec_hash=spec_hash, **kw)


@pytest.mark.parametrize(
    ("paused", "current", "wanted", "action"),
    [
        pytest.param(False, pod(deleting=True), WANTED, PodAction.NONE, id="deleting: its successor waits"),
        pytest.param(False, pod(spec_hash="h1", deleting=True), WANTED, PodAction.NONE, id="deleting, old"),
        pytest.param(False, pod("Failed", deleting=True), WANTED, PodAction.NONE, id="deleting, failed"),
        pytest.param(True, pod(deleting=True), WANTED, PodAction.NONE, id="paused, deleting already"),
        pytest.param(True, pod(), WANTED, PodAction.STOP, id="paused, running"),
        pytest.param(True, pod("Pending"), WANTED, PodAction.STOP, id="paused, starting"),
        pytest.param(True, pod("Failed"), WANTED, PodAction.STOP, id="paused, failed: not recreated"),
        pytest.param(True, pod(spec_hash="h1"), WANTED, PodAction.STOP, id="paused, outdated"),
        pytest.param(True, pod(), None, PodAction.STOP, id="paused, no pod to make: still stopped"),
        pytest.param(True, None, WANTED, PodAction.NONE, id="paused, stopped"),
        pytest.param(True, None, None, PodAction.NONE, id="paused, stopped, no pod to make"),
        pytest.param(False, None, None, PodAction.NONE, id="no pod to make, none running"),
        pytest.param(False, pod(spec_hash="h1"), None, PodAction.NONE, id="no pod to make: what runs stays"),
        pytest.param(False, pod("Failed"), None, PodAction.NONE, id="no pod to make, failed: stays"),
        pytest.param(False, None, WANTED, PodAction.CREATE, id="no pod"),
        pytest.param(False, pod("Failed"), WANTED, PodAction.RECREATE, id="failed"),
        pytest.param(False, pod("Succeeded"), WANTED, PodAction.RECREATE, id="exited"),
        pytest.param(False, pod("Failed", spec_hash="h1"), WANTED, PodAction.RECREATE, id="failed, outdated"),
        pytest.param(False, pod(spec_hash="h1"), WANTED, PodAction.REPLACE, id="outdated"),
        pytest.param(False, pod("Pending", spec_hash="h1"), WANTED, PodAction.REPLACE, id="old, starting"),
        pytest.param(False, pod(spec_hash=None), WANTED, PodAction.REPLACE, id="an old StatefulSet's pod"),
        pytest.param(False, pod(), WANTED, PodAction.NONE, id="current, running"),
        pytest.param(False, pod("Pending"), WANTED, PodAction.NONE, id="current, starting"),
        pytest.param(False, pod("Unknown"), WANTED, PodAction.NONE, id="current, its node lost"),
    ],
)  # fmt: skip
def test_what_the_pod_needs(
    paused: bool, current: PodView | None, wanted: str | None, action: PodAction
) -> None:
    assert pod_action(paused, current, wanted) is action


TASK = Task.model_validate(
    {"metadata": {"name": "fix-bug", "namespace": "dev", "uid": "u1"}, "spec": {"prompt": "Fix the bug"}}
)
CLAIM = "the PersistentVolumeClaim workspace-fix-bug-0 of a deleted task of the same name is being removed"
POD = "the pod fix-bug-0 of a deleted task of the same name is being removed"
HANDED_OVER = "the {} is being handed over by the StatefulSet of an earlier release"


def claim(owner: str | None = "u1", kind: str = "Task") -> ClaimView:
    return ClaimView("workspace-fix-bug-0", uid="c1", owner_uid=owner, owner_kind=kind if owner else None)


def owned(owner: str | None = "u1", kind: str = "Task") -> PodView:
    return PodView("fix-bug-0", "Running", uid="p1", owner_uid=owner, owner_kind=kind if owner else None)


@pytest.mark.parametrize(
    ("found_claim", "found_pod", "expected"),
    [
        pytest.param(claim(), owned(), None, id="ours"),
        pytest.param(None, None, None, id="nothing"),
        pytest.param(claim(), None, None, id="ours, stopped"),
        pytest.param(None, owned(), None, id="our pod, its claim not seen yet"),
        pytest.param(claim("u0"), None, CLAIM, id="a deleted task's claim"),
        pytest.param(claim("u0"), owned("u0"), CLAIM, id="a deleted task's claim and pod: the claim told"),
        pytest.param(claim("u0"), owned(), CLAIM, id="a deleted task's claim under our pod"),
        pytest.param(None, owned("u0"), POD, id="a deleted task's pod, its claim gone"),
        pytest.param(claim(), owned("u0"), POD, id="a deleted task's pod beside our claim"),
        pytest.param(claim(None), owned(None), None, id="left by an upgrade: ours to adopt"),
        pytest.param(claim(None), None, None, id="an upgrade's claim alone"),
        pytest.param(claim(None), owned("u0"), POD, id="an upgrade's claim, a deleted task's pod"),
        pytest.param(claim("u0"), owned(None), CLAIM, id="a deleted task's claim, an unowned pod"),
        pytest.param(
            claim("s1", "StatefulSet"), owned("s1", "StatefulSet"),
            HANDED_OVER.format("PersistentVolumeClaim workspace-fix-bug-0"), id="an upgrade, mid-way",
        ),
        pytest.param(
            claim(None), owned("s1", "StatefulSet"), HANDED_OVER.format("pod fix-bug-0"),
            id="an upgrade: the claim handed over, the pod not yet",
        ),
    ],
)  # fmt: skip
def test_a_deleted_tasks_workspace_is_never_taken_for_ours(
    found_claim: ClaimView | None, found_pod: PodView | None, expected: str | None
) -> None:
    assert leftover(TASK, found_claim, found_pod) == expected
