"""Lifecycle automation as a user meets it, on the local control plane with the simulated agent and small
durations: an idle task pauses on its own and says why; `kubectl task send` wakes it and the input arrives
once; a working agent is never paused; a killed operator neither restarts the idle clock nor pauses
early; the same manifest applied again changes nothing; a finished task pauses, then is deleted."""

from __future__ import annotations

import datetime as dt
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskpod import kube as taskkube
from taskpod.client import tasks as taskops
from tests.support import (
    Kube,
    Operator,
    agent_messages,
    condition,
    create_task,
    delivered,
    free_port,
    get_task,
    kubectl,
    phase_is,
    pod_token,
    prompts_in,
    tasks_api,
    template_with,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.local_pods, pytest.mark.usefixtures("user_credentials")]


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def auto_paused(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    task = phase_is(kube, namespace, name, "Paused")
    return task if task is not None and task["status"].get("autoPause") else None


def test_an_idle_task_pauses_itself_and_send_wakes_it_with_the_input_delivered_once(
    kube: Kube, namespace: str, simulator: object, operator: Operator, tmp_path: Path
) -> None:
    template_with(kube, namespace, reply="Done: {prompt}", work_seconds=1)
    manifest = tmp_path / "task.yaml"
    task = {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": "nap", "namespace": namespace},
        "spec": {"prompt": "Upgrade the ORM", "idlePause": "4s"},
    }
    manifest.write_text(json.dumps(task))
    kubectl(kube, "apply", "-f", str(manifest))
    wait_for(partial(delivered, kube, namespace, "nap"), 60, "the prompt delivered")
    paused = wait_for(
        partial(auto_paused, kube, namespace, "nap"),
        60,
        "the idle task paused on its own",
        explain=lambda: get_task(kube, namespace, "nap")["status"],
    )

    status = paused["status"]
    assert paused["spec"]["paused"] is False  # the user's spec is the user's: the pause is in status
    assert status["autoPause"]["reason"] == "Idle" and "wokenAt" not in status["autoPause"]
    assert (condition(paused, "Paused")["status"], condition(paused, "Paused")["reason"]) == ("True", "Idle")
    assert when(status["autoPause"]["pausedAt"]) >= when(status["prompt"]["deliveredAt"]) + dt.timedelta(
        seconds=4
    )
    assert status["logSnapshot"]["messages"] >= 2  # the snapshot first, as for any pause
    table = kubectl(kube, "get", "tasks", "-n", namespace)
    assert "Paused after 4s idle (idlePause)" in table, table
    assert kube.core.list_namespaced_pod(namespace, label_selector="taskpod.dev/task=nap").items == []

    # The same manifest again (what a GitOps tool does every few minutes): nothing changes, nothing wakes.
    version = paused["metadata"]["resourceVersion"]
    assert "unchanged" in kubectl(kube, "apply", "-f", str(manifest))
    time.sleep(3)
    again = get_task(kube, namespace, "nap")
    assert again["metadata"]["resourceVersion"] == version and again["status"]["phase"] == "Paused"

    said: list[str] = []
    taskkube.run(taskops.send(namespace, "nap", "Now the migrations", timeout=120, progress=said.append))
    assert said[0] == "Resuming task nap..."
    woken = get_task(kube, namespace, "nap")
    assert woken["spec"]["paused"] is False and "taskpod.dev/wake" in woken["metadata"]["annotations"]
    assert woken["status"]["autoPause"]["wokenAt"] and woken["status"]["workspace"]["lifetime"] == 2
    messages = agent_messages(kube, namespace, "nap")
    assert prompts_in(messages, "Now the migrations") == 1
    # The conversation goes on (the simulator keeps it on the volume, as AgentAPI's state file does), and
    # the prompt is in it once: the new lifetime was not given it again.
    assert prompts_in(messages, "Upgrade the ORM") == 1
    wait_for(
        lambda: (
            (m := agent_messages(kube, namespace, "nap")) and "Done: Now the migrations" in m[-1]["content"]
        ),
        30,
        "the answer",
    )
    # The logs: the conversation across both lifetimes, each message once, marked with its lifetime.
    shown = taskkube.run(taskops.logs(namespace, "nap"))
    lines = [(int(m["lifetime"]), str(m["role"]), str(m["content"])) for m in shown.messages]
    assert not shown.snapshot
    assert [line for line in lines if line[1] == "user"] == [
        (1, "user", "Upgrade the ORM"),
        (2, "user", "Now the migrations"),
    ], lines
    assert lines[-1] == (2, "agent", "Done: Now the migrations"), lines
    assert len(lines) == len(set(lines)), lines
    # Idle again after its answer: paused again, a whole idlePause later.
    wait_for(partial(auto_paused, kube, namespace, "nap"), 60, "paused again once idle")
    events = kubectl(kube, "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=nap")
    assert "AutoPaused" in events and "Woken" in events, events


def test_a_working_agent_is_not_paused_and_resume_wakes_an_idle_pause(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, work_seconds=10, reply="Finished the long job.")
    create_task(kube, namespace, "busy", prompt="A long job", idlePause="3s")
    wait_for(partial(delivered, kube, namespace, "busy"), 60, "the prompt delivered")
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:  # three idlePauses of work: it keeps running
        task = get_task(kube, namespace, "busy")
        assert task["status"]["phase"] == "Active" and "autoPause" not in task["status"], task["status"]
        time.sleep(0.5)
    paused = wait_for(partial(auto_paused, kube, namespace, "busy"), 60, "paused once the work is done")
    assert when(paused["status"]["autoPause"]["pausedAt"]) >= when(
        paused["status"]["prompt"]["deliveredAt"]
    ) + dt.timedelta(seconds=13)

    taskkube.run(taskops.resume(namespace, "busy"))
    wait_for(partial(phase_is, kube, namespace, "busy", "Active"), 60, "Active again after resume")
    with pytest.raises(taskops.TaskConflict, match="not paused"):
        taskkube.run(taskops.resume(namespace, "busy"))


def test_a_killed_operator_neither_restarts_the_idle_clock_nor_pauses_early(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, reply="Waiting for you.")
    create_task(kube, namespace, "clock", prompt="Say hello", idlePause="20s")

    def idle_since() -> str | None:
        status = get_task(kube, namespace, "clock")["status"]
        return str(status["idleSince"]) if "idleSince" in status else None

    wait_for(partial(delivered, kube, namespace, "clock"), 60, "the prompt delivered")
    since = when(wait_for(idle_since, 60, "the idle clock"))
    time.sleep(max(0.0, (since + dt.timedelta(seconds=8) - dt.datetime.now(dt.UTC)).total_seconds()))
    operator.kill()
    time.sleep(3)
    operator.start()
    paused = wait_for(partial(auto_paused, kube, namespace, "clock"), 60, "the automatic pause")
    at = when(paused["status"]["autoPause"]["pausedAt"])
    # 20 s from the clock's start: not before it (early), nor 20 s from the restart (at 31 s or later).
    assert since + dt.timedelta(seconds=20) <= at < since + dt.timedelta(seconds=28), (since, at)


def test_a_finished_task_pauses_then_is_deleted_with_its_workspace(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/report"
    operator.start("--report-listen", f"127.0.0.1:{port}", "--report-url", url)
    template_with(kube, namespace, reply="On it.")
    api = tasks_api(kube)
    template = api.get_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", namespace, "tasktemplates", "default"
    )
    template["spec"].update(pauseOnFinish=True, deleteAfterFinish="8s")  # the template's defaults
    api.replace_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", namespace, "tasktemplates", "default", template
    )
    create_task(kube, namespace, "done", prompt="Open a PR")
    wait_for(partial(delivered, kube, namespace, "done"), 60, "delivered")
    token = pod_token(kube, namespace, "done-0")
    report = {"state": "complete", "message": "Opened PR #7", "uri": "https://example.com/pr/7"}
    assert httpx.post(url, json=report, headers={"Authorization": f"Bearer {token}"}).status_code == 200

    paused = wait_for(
        partial(auto_paused, kube, namespace, "done"),
        60,
        "paused on finish",
        explain=lambda: get_task(kube, namespace, "done")["status"],
    )
    assert condition(paused, "Paused")["reason"] == "Finished"
    assert paused["status"]["state"]["state"] == "complete"  # what it reported still shows
    finished = when(paused["status"]["state"]["timestamp"])

    def gone() -> bool:
        try:
            get_task(kube, namespace, "done")
        except Exception as exc:  # the API's 404
            return getattr(exc, "status", None) == 404
        return False

    wait_for(gone, 60, "the task deleted after deleteAfterFinish")
    assert dt.datetime.now(dt.UTC) >= finished + dt.timedelta(seconds=8)
    wait_for(
        lambda: (
            not kube.core.list_namespaced_persistent_volume_claim(
                namespace, label_selector="taskpod.dev/task=done"
            ).items
        ),
        60,
        "its volume claim gone with it",
    )
    events = kubectl(kube, "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=done")
    assert "AutoPaused" in events and "Deleting" in events, events
