"""What a user does with a task from outside the cluster: read its logs, send it input.

These run with the user's kubectl credentials (the kubectl plugin calls them) and reach the agent
through the API server's pod proxy, so nothing but the API server needs to be reachable
(TASKPOD_AGENT_TRANSPORT=direct goes to the pod IP instead). Coder's rules:
logs are live while Active, the stored snapshot while Paused, Pending or Initializing, and a conflict
while Error or Unknown; sending to a paused task resumes it first and waits for an idle agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskpod import kube
from taskpod.agentapi import AgentClient, direct_url, proxy_url
from taskpod.models import DEFAULT_AGENT_PORT, AgentState, Phase, Task, rfc3339
from taskpod.snapshots import DATA_KEY, configmap_name
from taskpod.workspace import PORT_NAME

SNAPSHOT_PHASES = frozenset({Phase.PAUSED, Phase.PENDING, Phase.INITIALIZING})


class TaskConflict(Exception):
    """The task's phase does not allow this now (Coder answered HTTP 409)."""


@dataclass(frozen=True)
class Logs:
    messages: list[dict[str, Any]]
    snapshot: bool  # True: from the snapshot taken at the last pause, not live
    snapshot_at: str | None = None

    def dump(self) -> dict[str, Any]:
        return {"messages": self.messages, "snapshot": self.snapshot, "snapshot_at": self.snapshot_at}


async def _task(namespace: str, name: str) -> Task:
    return Task.model_validate(await kube.get_task(namespace, name))


async def agent_client(task: Task) -> AgentClient:
    """The agent of an active task, through the API server's pod proxy."""
    workspace = task.status.workspace
    if workspace is None or not workspace.pod:
        raise TaskConflict(f"task {task.name} has no running workspace")
    port = await kube.agent_port(task.namespace, workspace.pod, PORT_NAME) or DEFAULT_AGENT_PORT
    # The pod proxy by default; "direct" where this machine reaches pod IPs (in-cluster, or the local
    # control plane, whose loopback pod IPs the API server refuses to proxy to).
    via_proxy = os.environ.get("TASKPOD_AGENT_TRANSPORT", "proxy") != "direct"
    http, server = kube.agent_transport(via_proxy=via_proxy)
    if server is None:
        if not workspace.pod_ip:
            raise TaskConflict(f"task {task.name}'s pod has no IP yet")
        return AgentClient(direct_url(workspace.pod_ip, port), http)
    return AgentClient(proxy_url(server, task.namespace, workspace.pod, port), http)


async def logs(namespace: str, name: str) -> Logs:
    task = await _task(namespace, name)
    phase = task.status.phase
    if phase is Phase.ACTIVE:
        client = await agent_client(task)
        try:
            return Logs([m.dump() for m in await client.messages()], snapshot=False)
        finally:
            await client.http.aclose()
    if phase in SNAPSHOT_PHASES or phase is None:
        cm = await kube.read_configmap(namespace, configmap_name(name))
        if cm is None or DATA_KEY not in (cm.get("data") or {}):
            return Logs([], snapshot=True)
        envelope = json.loads(cm["data"][DATA_KEY])
        taken = task.status.log_snapshot.taken_at if task.status.log_snapshot else None
        at = rfc3339(taken) if taken else None
        return Logs(list(envelope["data"]["messages"]), snapshot=True, snapshot_at=at)
    raise TaskConflict(f"cannot fetch logs for task in current state: {phase} ({task.status.message})")


async def send(
    namespace: str, name: str, content: str, timeout: float = 300, progress: Callable[[str], None] = print
) -> None:
    """Send input as a user message; a paused task is resumed first, and the agent must be idle."""
    if not content.strip():
        raise ValueError("the input is empty")
    task = await _task(namespace, name)
    if task.spec.paused:
        progress(f"Resuming task {name}...")
        await kube.patch_task_spec(namespace, name, {"paused": False})
    deadline = time.monotonic() + timeout
    while True:
        task = await _task(namespace, name)
        state = task.status.state.state if task.status.state else None
        if task.status.phase is Phase.ACTIVE and state is AgentState.IDLE:
            break
        if task.status.phase in (Phase.ERROR, Phase.UNKNOWN):
            raise TaskConflict(
                f"cannot send to task in current state: {task.status.phase} ({task.status.message})"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {name} did not become active and idle within {timeout:.0f}s")
        progress(f"Waiting for task {name}: {task.status.phase or 'Pending'}, {state or 'starting'}")
        await asyncio.sleep(1)
    client = await agent_client(task)
    try:
        await client.send(content, "user")
    finally:
        await client.http.aclose()
