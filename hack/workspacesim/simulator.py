"""The workspace simulator: the kubelet for the agent container of taskpod workspace pods.

kwok runs no containers, but it gives each Running pod an IP inside 127.0.0.0/8, so a process bound to
`<podIP>:<agent port>` is reachable exactly where the pod would be. For every Running workspace pod this
starts a ScriptedAgent there, and stops it when the pod goes away, so a pause really kills the agent.
With a state directory, each task's conversation is kept in `<dir>/<namespace>/<task>.json` across pod
lifetimes, the way `agentapi --state-file` on the workspace volume keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from workspacesim.agent import Script, ScriptedAgent

log = logging.getLogger("workspacesim")
SELECTOR = "app.kubernetes.io/managed-by=taskpod"
SCRIPT_ANNOTATION = "sim.taskpod.dev/agent"
TASK_LABEL = "taskpod.dev/task"


@dataclass(frozen=True)
class Placement:
    """Where a pod's agent should listen, or None when the pod should have no agent."""

    uid: str
    namespace: str
    task: str
    ip: str
    port: int
    script: str | None
    agent_type: str


def placement(pod: dict[str, Any]) -> Placement | None:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return None
    port = next(
        (
            p["containerPort"]
            for c in spec.get("containers", [])
            for p in c.get("ports") or []
            if p.get("name") == "agentapi"
        ),
        3284,
    )
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    return Placement(
        uid=meta["uid"],
        namespace=meta["namespace"],
        task=labels.get(TASK_LABEL, meta["name"]),
        ip=status["podIP"],
        port=int(port),
        script=annotations.get(SCRIPT_ANNOTATION),
        agent_type="custom",
    )


class Simulator:
    def __init__(
        self, kubeconfig: str, state_dir: Path | None = None, namespaces: list[str] | None = None
    ) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.api = client.ApiClient(cfg)
        self.state_dir = state_dir
        self.namespaces = namespaces or []
        self.agents: dict[str, tuple[Placement, ScriptedAgent]] = {}  # by pod uid

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        scopes: list[str | None] = list(self.namespaces) or [None]
        for ns in scopes:
            threading.Thread(target=self._watch, args=(ns, loop, queue), daemon=True).start()
        try:
            while True:
                kind, pod = await queue.get()
                await self._apply(pod["metadata"]["uid"], None if kind == "DELETED" else placement(pod))
        finally:
            for _, agent in list(self.agents.values()):
                await agent.stop()

    def _watch(
        self, namespace: str | None, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]
    ) -> None:
        core = client.CoreV1Api(self.api)
        while True:
            try:
                if namespace is None:
                    stream = watch.Watch().stream(
                        core.list_pod_for_all_namespaces, label_selector=SELECTOR, timeout_seconds=300
                    )
                else:
                    stream = watch.Watch().stream(
                        core.list_namespaced_pod, namespace, label_selector=SELECTOR, timeout_seconds=300
                    )
                for event in stream:
                    pod = self.api.sanitize_for_serialization(event["object"])
                    loop.call_soon_threadsafe(queue.put_nowait, (event["type"], pod))
            except Exception:
                log.exception("pod watch failed; restarting")
                threading.Event().wait(1)

    async def _apply(self, uid: str, wanted: Placement | None) -> None:
        current = self.agents.get(uid)
        if current is not None and current[0] == wanted:
            return
        if current is not None:
            del self.agents[uid]
            await current[1].stop()
            log.info(
                "stopped the agent of %s/%s at %s:%d",
                current[0].namespace,
                current[0].task,
                current[0].ip,
                current[0].port,
            )
        if wanted is None:
            return
        state = self.state_dir / wanted.namespace / f"{wanted.task}.json" if self.state_dir else None
        agent = ScriptedAgent(wanted.ip, wanted.port, Script.parse(wanted.script), wanted.agent_type, state)
        self.agents[uid] = (wanted, agent)
        asyncio.get_running_loop().create_task(self._start(wanted, agent))

    async def _start(self, where: Placement, agent: ScriptedAgent) -> None:
        try:
            await agent.start()
            log.info("started an agent for %s/%s at %s:%d", where.namespace, where.task, where.ip, where.port)
        except OSError as exc:
            log.error(
                "cannot start the agent for %s/%s at %s:%d: %s",
                where.namespace,
                where.task,
                where.ip,
                where.port,
                exc,
            )
