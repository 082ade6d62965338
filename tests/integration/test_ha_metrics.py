"""Running more than one replica, and watching the operator: leader election through a Lease, and the
Prometheus metrics after a scripted lifecycle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    Kube,
    Operator,
    agent_messages,
    create_task,
    delivered,
    free_port,
    patch_task,
    phase_is,
    prompts_in,
    sim_config,
    template_with,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.local_pods]
LEASE = "taskpod-operator"


def holder(kube: Kube, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(LEASE, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity if lease.spec else None


@pytest.fixture
def replicas(kube: Kube, crds: list[str], namespace: str, tmp_path: Path) -> Iterator[dict[str, Operator]]:
    """Two operator processes electing a leader through a Lease in the test's namespace."""
    started: dict[str, Operator] = {}

    def start(name: str) -> Operator:
        op = Operator(kube.kubeconfig, [namespace], tmp_path / f"{name}.log")
        started[name] = op.start("--leader-election", "--lease-namespace", namespace, env={"POD_NAME": name})
        return op

    yield {name: start(name) for name in ("op-a", "op-b")}
    for name, op in started.items():
        op.stop()
        print(f"--- {name} log (last lines) ---\n{op.tail(15)}")


def test_one_leader_reconciles_and_a_standby_takes_over_when_it_dies(
    kube: Kube, namespace: str, simulator: object, replicas: dict[str, Operator]
) -> None:
    template_with(kube, namespace)
    leader = wait_for(lambda: holder(kube, namespace), 30, "a leader")
    standby = next(name for name in replicas if name != leader)
    create_task(kube, namespace, "before", prompt="Before the failover")
    wait_for(partial(delivered, kube, namespace, "before"), 60, "the prompt delivered by the leader")
    assert "waiting for the Lease" in replicas[standby].log.read_text()
    assert "acquired" not in replicas[standby].log.read_text() and holder(kube, namespace) == leader

    replicas[leader].kill()
    killed = time.monotonic()
    create_task(kube, namespace, "after", prompt="After the failover")
    wait_for(lambda: holder(kube, namespace) == standby, 40, "the standby to take the Lease")
    took_over = time.monotonic() - killed
    wait_for(partial(delivered, kube, namespace, "after"), 60, "the new leader to deliver the prompt")
    print(f"takeover after the leader's SIGKILL: {took_over:.1f}s")
    assert took_over < 25  # the lease is 15 s; generous for a loaded 2-core machine

    assert prompts_in(agent_messages(kube, namespace, "before"), "Before the failover") == 1
    assert prompts_in(agent_messages(kube, namespace, "after"), "After the failover") == 1

    # A clean stop hands over at once: what a rolling upgrade does.
    replicas[leader].start()  # back, as a standby now
    wait_for(lambda: "waiting for the Lease" in replicas[leader].log.read_text(), 30, "the new standby")
    stopped = time.monotonic()
    replicas[standby].stop()
    wait_for(lambda: holder(kube, namespace) == leader, 15, "the handover")
    print(f"handover after a clean stop: {time.monotonic() - stopped:.1f}s")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_tell_what_happened(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    port = free_port()
    operator.start("--http-listen", f"127.0.0.1:{port}")
    template_with(kube, namespace, reply="Done.")
    create_task(kube, namespace, "watched", prompt="Do the thing")
    wait_for(partial(delivered, kube, namespace, "watched"), 60, "delivered")
    patch_task(kube, namespace, "watched", {"paused": True})
    wait_for(partial(phase_is, kube, namespace, "watched", "Paused"), 60, "Paused")
    patch_task(kube, namespace, "watched", {"paused": False})
    wait_for(partial(phase_is, kube, namespace, "watched", "Active"), 60, "Active again")
    create_task(kube, namespace, "broken", template="missing")
    wait_for(partial(phase_is, kube, namespace, "broken", "Error"), 30, "Error")
    # One failed AgentAPI call: the next /messages answers 500.
    wait_for(partial(delivered, kube, namespace, "watched"), 60, "the agent back")
    sim_config(kube, namespace, "watched", fail={"/messages": 1})

    def metrics_settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        m = scrape(port)
        return m if m.get(("taskpod_resume_duration_seconds_count", ())) == 1 else None

    m = wait_for(metrics_settled, 30, "the resume to be counted")
    assert m[("taskpod_tasks", (("phase", "Active"),))] == 1
    assert m[("taskpod_tasks", (("phase", "Error"),))] == 1
    assert m[("taskpod_tasks", (("phase", "Paused"),))] == 0
    assert m[("taskpod_prompt_deliveries_total", (("outcome", "sent"),))] == 1  # not again after resume
    assert m[("taskpod_pause_duration_seconds_count", ())] == 1
    assert 0 < m[("taskpod_pause_duration_seconds_sum", ())] < 30
    assert m[("taskpod_snapshot_bytes_count", ())] >= 1
    assert m[("taskpod_snapshot_bytes_sum", ())] > 0
    assert m[("taskpod_snapshot_duration_seconds_count", ())] == m[("taskpod_snapshot_bytes_count", ())]
    assert m[("taskpod_reconcile_duration_seconds_count", ())] >= 5
    assert m[("taskpod_leader", ())] == 1

    # The failed call: the operator's next /messages is the snapshot when the agent goes idle again.
    httpx.post(
        f"http://{kube.core.read_namespaced_pod('watched-0', namespace).status.pod_ip}:3284/message",
        json={"content": "Once more", "type": "user"},
        timeout=5,
    ).raise_for_status()
    errors = ("taskpod_agentapi_errors_total", (("call", "GET /messages"), ("kind", "error")))
    wait_for(lambda: scrape(port).get(errors) == 1, 30, "the failed /messages call counted")

    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
