"""The workspace simulator (hack/agentsim) plays a workspace pod's agent at the pod's IP, stops it when the
pod goes, and gives the next pod of the same task the conversation back; as a process and in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from agentsim.simulator import BackgroundSimulator
from tests.support import ROOT, Kube, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.local_pods]

# The pods carry a managed-by value of their own, and the simulator under test selects it: a session-wide
# simulator (tests/conftest.py's `simulator` fixture watches every namespace for managed-by=taskpod) would
# otherwise race this one for the pod's address.
MANAGED_BY = "agentsim-test"
PORT = 4000


def statefulset(name: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, "taskpod.dev/task": name}
    behaviour = '{"greeting": "Ready.", "work_seconds": 0.2, "reply": "On it: {prompt}"}'
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"sim.taskpod.dev/agent": behaviour}},
                "spec": {
                    "containers": [
                        {
                            "name": "agent",
                            "image": "example.invalid/agent:1",
                            "args": ["server", "--type=claude", "--allowed-hosts=*", "--", "claude"],
                            "ports": [{"name": "agentapi", "containerPort": PORT}],
                        }
                    ]
                },
            },
        },
    }


@pytest.fixture
def simulator_log(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """The simulator as a process (`python -m agentsim`), as a developer runs it; yields its log."""
    log = tmp_path / "simulator.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "agentsim", "--kubeconfig", str(kube.kubeconfig)),
                *("--namespace", namespace, "--state-dir", str(tmp_path / "state")),
                *("--selector", f"app.kubernetes.io/managed-by={MANAGED_BY}"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        print(f"--- simulator log ---\n{log.read_text(errors='replace')[-5000:]}")


def running_pod(kube: Kube, namespace: str, name: str) -> client.V1Pod | None:
    pod = kube.core.read_namespaced_pod(name, namespace)
    running = pod.status.phase == "Running" and pod.status.pod_ip and not pod.metadata.deletion_timestamp
    return pod if running else None


def answers(url: str) -> dict[str, Any] | None:
    response = httpx.get(url + "/status", timeout=2)
    return dict(response.json()) if response.status_code == 200 else None


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/status", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_the_simulator_plays_the_pod_and_a_scale_down_kills_it(
    kube: Kube, namespace: str, simulator_log: Path, tmp_path: Path
) -> None:
    kube.apps.create_namespaced_stateful_set(namespace, statefulset("ws"))
    pod = wait_for(lambda: running_pod(kube, namespace, "ws-0"), 60, "pod ws-0 to run")
    url = f"http://{pod.status.pod_ip}:{PORT}"

    status = wait_for(lambda: answers(url), 30, f"the agent to answer at {url}")
    assert status["status"] == "stable" and status["agent_type"] == "claude"  # the container's --type
    sent = httpx.post(url + "/message", json={"content": "Fix the login test", "type": "user"}, timeout=5)
    assert sent.status_code == 200, sent.text

    def conversation() -> list[tuple[str, str]] | None:
        messages = httpx.get(url + "/messages", timeout=2).json()["messages"]
        return [(m["role"], m["content"]) for m in messages] if len(messages) == 3 else None

    expected = [("agent", "Ready."), ("user", "Fix the login test"), ("agent", "On it: Fix the login test")]
    assert wait_for(conversation, 10, "the scripted answer") == expected

    # Scaled to zero (a paused task): the pod goes, and with it the agent.
    kube.apps.patch_namespaced_stateful_set_scale("ws", namespace, {"spec": {"replicas": 0}})
    wait_for(lambda: refused(url), 60, "the agent to stop answering after the scale-down")
    owner = kube.apps.read_namespaced_stateful_set("ws", namespace).metadata.uid  # the volume's lifetime
    assert (tmp_path / "state" / namespace / "ws" / f"{owner}.json").exists()

    # Scaled up again (resumed): a new pod, a new agent, the same conversation.
    kube.apps.patch_namespaced_stateful_set_scale("ws", namespace, {"spec": {"replicas": 1}})
    pod = wait_for(lambda: running_pod(kube, namespace, "ws-0"), 60, "pod ws-0 to run again")
    url = f"http://{pod.status.pod_ip}:{PORT}"
    wait_for(lambda: answers(url), 30, "the agent of the new pod to answer")
    assert conversation() == expected

    log = simulator_log.read_text()
    assert f"started the agent of {namespace}/ws-0 (task ws)" in log
    assert f"stopped the agent of {namespace}/ws-0 (task ws)" in log


def bare_pod(name: str, behaviour: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY}  # no task label: the task is the pod's name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": {"sim.taskpod.dev/agent": behaviour}},
        "spec": {"containers": [{"name": "agent", "image": "example.invalid/agent:1"}]},
    }


def test_in_process_pods_running_before_the_start_are_played_and_a_deletion_stops_them(
    kube: Kube, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    kube.core.create_namespaced_pod(namespace, bare_pod("solo", '{"agent_type": "aider"}'))
    kube.core.create_namespaced_pod(namespace, bare_pod("typo", '{"wrok_seconds": 1}'))
    solo = wait_for(lambda: running_pod(kube, namespace, "solo"), 60, "pod solo to run")
    typo = wait_for(lambda: running_pod(kube, namespace, "typo"), 60, "pod typo to run")
    url = f"http://{solo.status.pod_ip}:3284"  # no port named agentapi: AgentAPI's default

    selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    with BackgroundSimulator(kube.kubeconfig, [namespace], selector=selector) as sim:
        # start() returns once the pods that already run have their agents: no waiting needed.
        assert answers(url) == {
            "$schema": f"https://{solo.status.pod_ip}:3284/schemas/StatusResponseBody.json",
            "status": "stable",
            "agent_type": "aider",
        }
        agent = sim.simulator.agent(namespace, "solo")
        assert agent is not None and [r["path"] for r in agent.requests] == ["/status"]
        # A behaviour the simulator cannot read: no agent, and the log says why.
        assert sim.simulator.agent(namespace, "typo") is None and refused(f"http://{typo.status.pod_ip}:3284")
        assert "unknown key(s) wrok_seconds" in caplog.text

        kube.core.delete_namespaced_pod("solo", namespace)
        wait_for(lambda: refused(url), 60, "the agent to stop answering once its pod is deleted")
        assert sim.simulator.agent(namespace, "solo") is None
