"""The upgrade from releases whose workspace was a one-pod StatefulSet with a headless Service.

The workspaces here are made as those releases made them (the same names, labels, owners, volume claim
template and retention policy), with their status as those releases left it; then this release's
operator starts. Nothing may be lost: not the volume, not the conversation, and the prompt is not
delivered again.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx

from taskpod.core import agentstate, clock
from tests.support import (
    SIM,
    Kube,
    Operator,
    agent_messages,
    agent_url,
    condition,
    create_task,
    get_task,
    phase_is,
    prompts_in,
    tasks_api,
    template_with,
    wait_for,
)

OURS = {"app.kubernetes.io/managed-by": "taskpod", "app.kubernetes.io/name": "taskpod-workspace"}


def previous_release_workspace(task: dict[str, Any], agent: dict[str, Any], replicas: int) -> list[Any]:
    """The Service and StatefulSet that the release before the Pod redesign made for `task`."""
    name, uid = task["metadata"]["name"], task["metadata"]["uid"]
    labels = {**OURS, "taskpod.dev/task": name}
    selector = {"app.kubernetes.io/managed-by": "taskpod", "taskpod.dev/task": name}
    owner = {"apiVersion": "taskpod.dev/v1alpha1", "kind": "Task", "name": name, "uid": uid}
    owner |= {"controller": True, "blockOwnerDeletion": True}
    meta = {"name": name, "labels": labels, "ownerReferences": [owner]}
    service = {
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": [{"name": "agentapi", "port": 3284, "targetPort": "agentapi"}],
        },
    }
    container = {
        "name": "agent",
        "image": "example.invalid/agent:1",
        "ports": [{"name": "agentapi", "containerPort": 3284, "protocol": "TCP"}],
        "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
        "readinessProbe": {"httpGet": {"path": "/status", "port": "agentapi"}, "periodSeconds": 5},
    }
    statefulset = {
        "metadata": {**meta, "annotations": {"taskpod.dev/spec-hash": "0123456789abcdef"}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": selector},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Delete"},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {SIM: json.dumps(agent), "taskpod.dev/lifetime": "1"},
                },
                "spec": {
                    "containers": [container],
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "workspace", "labels": labels},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    return [service, statefulset]


def as_left_by_the_previous_release(
    kube: Kube, namespace: str, name: str, prompt: str, *, paused: bool
) -> dict[str, Any]:
    """Status as the previous release wrote it: the prompt delivered in lifetime 1, Active or Paused."""
    now = clock.now()
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "phase": "Paused" if paused else "Active",
        "message": "Task is paused." if paused else "Workspace is ready.",
        "observedGeneration": 2 if paused else 1,
        "workspace": {"pod": None if paused else f"{name}-0", "lifetime": 1},
        "prompt": agentstate.prompt_record(agentstate.prompt_sha(prompt), now, 1),
        "conditions": [
            {
                "type": "Paused",
                "status": "True" if paused else "False",
                "reason": "Paused" if paused else "Running",
                "message": "",
                "observedGeneration": 2 if paused else 1,
                "lastTransitionTime": stamp,
            }
        ],
    }
    return dict(
        tasks_api(kube).patch_namespaced_custom_object_status(
            "taskpod.dev", "v1alpha1", namespace, "tasks", name, {"status": status}
        )
    )


def answers(kube: Kube, namespace: str, name: str) -> bool:
    return httpx.get(agent_url(kube, namespace, name) + "/status", timeout=2).is_success


def claim_of(kube: Kube, namespace: str, name: str) -> Any:
    return kube.core.read_namespaced_persistent_volume_claim(f"workspace-{name}-0", namespace)


def owned_by_task(obj: Any, task: dict[str, Any]) -> bool:
    owners = [(o.kind, o.uid, o.controller) for o in obj.metadata.owner_references or []]
    return owners == [("Task", task["metadata"]["uid"], True)]


def test_an_upgrade_moves_running_and_paused_tasks_to_pods_losing_nothing(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    operator.stop()  # the previous release ran until now
    agent: dict[str, Any] = {"reply": "On it."}
    template_with(kube, namespace, reply="On it.")
    tasks = {
        name: create_task(kube, namespace, name, prompt=f"The {name} task's prompt")
        for name in ("running", "resting")
    }
    for task in tasks.values():
        service, statefulset = previous_release_workspace(task, agent, replicas=1)
        kube.core.create_namespaced_service(namespace, service)
        kube.apps.create_namespaced_stateful_set(namespace, statefulset)
    for name in tasks:  # each ran: a pod on its claim, the prompt said, an answer
        wait_for(
            partial(answers, kube, namespace, name),
            90,
            f"{name}'s agent under its StatefulSet",
        )
        url = agent_url(kube, namespace, name)
        said = [
            {"role": "user", "content": f"The {name} task's prompt"},
            {"role": "agent", "content": f"Working on the {name} task."},
        ]
        httpx.post(url + "/_sim/config", json={"append_messages": said}, timeout=5).raise_for_status()
    claims = {name: claim_of(kube, namespace, name).metadata.uid for name in tasks}
    # "resting" was paused: its StatefulSet scaled to zero, its claim kept.
    tasks_api(kube).patch_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", namespace, "tasks", "resting", {"spec": {"paused": True}}
    )
    kube.apps.patch_namespaced_stateful_set_scale("resting", namespace, {"spec": {"replicas": 0}})
    wait_for(
        lambda: not kube.core.list_namespaced_pod(namespace, label_selector="taskpod.dev/task=resting").items,
        60,
        "the paused task's pod gone",
    )
    for name in tasks:
        as_left_by_the_previous_release(
            kube, namespace, name, f"The {name} task's prompt", paused=name == "resting"
        )

    operator.start()  # this release
    wait_for(
        lambda: (
            not kube.apps.list_namespaced_stateful_set(namespace).items
            and not kube.core.list_namespaced_service(namespace).items
        ),
        60,
        "the StatefulSets and Services retired",
    )

    # The running task: its conversation kept before its pod was replaced by one of ours, on the same
    # claim, and its prompt not delivered again.
    task = wait_for(
        lambda: (
            (t := phase_is(kube, namespace, "running", "Active"))
            and t["status"]["workspace"].get("lifetime") == 2
            and t
        ),
        90,
        "the running task Active in a pod of its own",
        explain=partial(get_task, kube, namespace, "running"),
    )
    assert task["status"]["workspace"]["claim"] == "workspace-running-0"
    claim = claim_of(kube, namespace, "running")
    assert claim.metadata.uid == claims["running"] and owned_by_task(claim, tasks["running"])
    pod = kube.core.read_namespaced_pod("running-0", namespace)
    assert owned_by_task(pod, tasks["running"]) and pod.metadata.labels["taskpod.dev/lifetime"] == "2"
    snapshot = kube.core.read_namespaced_config_map("running-snapshot", namespace).data["snapshot.json"]
    kept = [m["content"] for m in json.loads(snapshot)["data"]["messages"]]
    assert "The running task's prompt" in kept and "Working on the running task." in kept, kept
    # The agent's conversation lives on the claim, as agentapi's state file does: the prompt in it once.
    assert prompts_in(agent_messages(kube, namespace, "running"), "The running task's prompt") == 1
    assert task["status"]["prompt"]["lifetime"] == 1, "delivered once, by the previous release"

    # The paused task: still paused, its claim adopted; a resume brings it back on the same claim.
    def paused_with_its_claim_adopted() -> dict[str, Any] | None:
        task = phase_is(kube, namespace, "resting", "Paused")
        return (
            task if task and owned_by_task(claim_of(kube, namespace, "resting"), tasks["resting"]) else None
        )

    task = wait_for(
        paused_with_its_claim_adopted,
        60,
        "the paused task Paused, its claim adopted",
        explain=partial(get_task, kube, namespace, "resting"),
    )
    assert condition(task, "Paused")["status"] == "True"
    assert claim_of(kube, namespace, "resting").metadata.uid == claims["resting"]
    tasks_api(kube).patch_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", namespace, "tasks", "resting", {"spec": {"paused": False}}
    )
    task = wait_for(partial(phase_is, kube, namespace, "resting", "Active"), 60, "resumed")
    assert task["status"]["workspace"]["lifetime"] == 2
    assert claim_of(kube, namespace, "resting").metadata.uid == claims["resting"]
    assert prompts_in(agent_messages(kube, namespace, "resting"), "The resting task's prompt") == 1
