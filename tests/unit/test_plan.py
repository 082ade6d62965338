"""The reconcile's plan for the status it composed: write, hold or leave it, and the Event it tells."""

from __future__ import annotations

from typing import Any

import pytest

from taskpod.api.models import Phase
from taskpod.core.lifecycle import Verdict
from taskpod.core.plan import Event, Write, status_write, story_event


def status(phase: str, message: str = "", generation: int = 1, **more: Any) -> dict[str, Any]:
    return {"phase": phase, "message": message, "observedGeneration": generation, **more}


STARTING = "Workspace is starting: its containers are being created."


@pytest.mark.parametrize(
    ("current", "composed", "news", "hold", "write"),
    [
        pytest.param(
            status("Active", "ready"), status("Active", "ready"), False, True, Write.NONE, id="same"
        ),
        pytest.param(
            status("Active", "ready"),
            status("Active", "ready"),
            True,
            True,
            Write.NONE,
            id="news already shown",
        ),
        pytest.param({}, status("Pending", "waiting"), False, True, Write.NOW, id="first status"),
        pytest.param(
            status("Pending", "created"),
            status("Initializing", STARTING),
            False,
            True,
            Write.NOW,
            id="new phase",
        ),
        pytest.param(
            status("Initializing", STARTING),
            status("Initializing", "agent starting"),
            False,
            True,
            Write.HOLD,
            id="step within Initializing",
        ),
        pytest.param(
            status("Pending", "created"),
            status("Pending", "scheduled"),
            False,
            True,
            Write.HOLD,
            id="step within Pending",
        ),
        pytest.param(
            status("Initializing", STARTING),
            status("Initializing", "agent starting"),
            True,
            True,
            Write.NOW,
            id="step with news",
        ),
        pytest.param(
            status("Initializing", STARTING),
            status("Initializing", "agent starting"),
            False,
            False,
            Write.NOW,
            id="holds off",
        ),
        pytest.param(
            status("Pending", "created"),
            status("Pending", "pausing", generation=2),
            False,
            True,
            Write.NOW,
            id="answer to a spec change",
        ),
        pytest.param(
            status("Active", "working"),
            status("Active", "idle"),
            False,
            True,
            Write.NOW,
            id="step within Active",
        ),
        pytest.param(
            status("Error", "bad"), status("Error", "worse"), False, True, Write.NOW, id="step within Error"
        ),
        pytest.param(
            status("Active", "x", agent={"healthy": True}),
            status("Active", "x", agent=None),
            False,
            True,
            Write.NOW,
            id="a field removed",
        ),
    ],
)
def test_when_status_is_written(
    current: dict[str, Any], composed: dict[str, Any], news: bool, hold: bool, write: Write
) -> None:
    assert status_write(current, composed, news=news, hold=hold) is write


@pytest.mark.parametrize(
    ("old", "phase", "kind"),
    [
        ("Initializing", Phase.ACTIVE, "Normal"),
        ("Pending", Phase.PAUSED, "Normal"),
        ("Active", Phase.ERROR, "Warning"),
        ("Active", Phase.UNKNOWN, "Warning"),
        (None, Phase.ERROR, "Warning"),  # a task in Error from its first status
        ("Active", Phase.ACTIVE, None),  # no change
        ("Active", Phase.PENDING, None),  # a step on the way (pausing): status tells it
        ("Pending", Phase.INITIALIZING, None),
    ],
)
def test_which_phase_changes_tell_an_event(old: str | None, phase: Phase, kind: str | None) -> None:
    verdict = Verdict(phase, "SomeReason", "One sentence on why.")
    expected = Event(kind, "SomeReason", "One sentence on why.") if kind else None
    assert story_event(old, verdict) == expected
