"""The workspace simulator: the kubelet for the agent container of taskpod's workspace pods.

kwok runs no containers, but it gives each Running pod an IP inside 127.0.0.0/8, so a process bound to
`<podIP>:<agent port>` is reachable exactly where the pod would be. For every pod labelled
`app.kubernetes.io/managed-by=taskpod` that is Running, has an IP and is not being deleted, this starts a
ScriptedAgent there (port: the container port named `agentapi`, else 3284; behaviour: the pod annotation
`sim.taskpod.dev/agent`, read when the agent starts). When the pod goes (deleted, deletion started, not
Running) the agent stops, its socket and streams closed, so a pause really kills the agent. With a state
directory each task's conversation lives in `<dir>/<namespace>/<task>/<volume>.json` across pod
lifetimes, as `agentapi --state-file` on the workspace volume keeps it: the volume is the claim the pod
mounts (its uid), else the pod's controller.

Use it from asyncio (`await Simulator(...).start()` ... `await sim.stop()`), from synchronous code
(`with BackgroundSimulator(...) as sim:`), or as a process (`python -m agentsim`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .agent import ScriptedAgent
from .behaviour import Behaviour, BehaviourError
from .kubewatch import Cluster, Pod, PodWatch

log = logging.getLogger("agentsim")
SELECTOR = "app.kubernetes.io/managed-by=taskpod"
BEHAVIOUR_ANNOTATION = "sim.taskpod.dev/agent"
TASK_LABEL = "taskpod.dev/task"
PORT_NAME = "agentapi"
DEFAULT_PORT = 3284
Key = tuple[str, str]  # namespace, pod name


@dataclass(frozen=True)
class Placement:
    """Where and how a pod's agent runs; a change of uid, IP or port means a new container."""

    namespace: str
    pod: str
    uid: str
    ip: str
    port: int
    task: str
    behaviour: str | None  # the annotation's JSON
    agent_type: str | None  # from the container's `--type` argument, if any
    volume: str = ""  # what the workspace volume lives as long as: its claim, else the pod's controller (uid)
    claim: str | None = None  # the name of the volume claim the pod mounts, if any

    @property
    def key(self) -> Key:
        return (self.namespace, self.pod)

    @property
    def incarnation(self) -> tuple[str, str, int]:
        return (self.uid, self.ip, self.port)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod} (task {self.task}) at {self.ip}:{self.port}"


def placement(pod: Pod) -> Placement | None:
    """Where the pod's agent should run now, or None when the pod should have no running agent."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return None
    containers = spec.get("containers") or []
    owner = next((c for c in containers for p in c.get("ports") or [] if p.get("name") == PORT_NAME), None)
    ports = [p for p in (owner or {}).get("ports") or [] if p.get("name") == PORT_NAME]
    labels = meta.get("labels") or {}
    return Placement(
        namespace=meta["namespace"],
        pod=meta["name"],
        uid=meta.get("uid", ""),
        ip=status["podIP"],
        port=int(ports[0]["containerPort"]) if ports else DEFAULT_PORT,
        task=labels.get(TASK_LABEL) or re.sub(r"-\d+$", "", meta["name"]),
        behaviour=(meta.get("annotations") or {}).get(BEHAVIOUR_ANNOTATION),
        agent_type=_type_argument([*(owner or {}).get("command", []), *(owner or {}).get("args", [])]),
        volume=next((o.get("uid", "") for o in meta.get("ownerReferences") or [] if o.get("controller")), ""),
        claim=next(
            (c["claimName"] for v in spec.get("volumes") or [] if (c := v.get("persistentVolumeClaim"))), None
        ),
    )


def state_file(state_dir: Path, where: Placement) -> Path:
    """Where an agent keeps its conversation, as agentapi --state-file on the workspace volume would: the
    same across the pod's restarts, a new one for a new volume (a task made again under an old name)."""
    return state_dir / where.namespace / where.task / f"{where.volume or 'unowned'}.json"


def _absence(kind: str, pod: Pod) -> str:
    """Why a pod has no agent, for the log."""
    status = pod.get("status") or {}
    if kind == "DELETED":
        return "its pod was deleted"
    if pod["metadata"].get("deletionTimestamp"):
        return "its pod is being deleted"
    if status.get("phase") != "Running":
        return f"its pod is {status.get('phase') or 'not running'}"
    return "its pod has no IP"


def _type_argument(argv: Sequence[str]) -> str | None:
    """The agent type from `agentapi server --type=claude` / `--type claude` / `-t claude`."""
    for i, arg in enumerate(argv):
        if arg.startswith("--type="):
            return arg.split("=", 1)[1]
        if arg in ("--type", "-t") and i + 1 < len(argv):
            return argv[i + 1]
    return None


class Simulator:
    """Plays the agent of every matching pod; see the module docstring."""

    def __init__(
        self,
        kubeconfig: str | Path | None = None,
        namespaces: Iterable[str] = (),
        state_dir: Path | None = None,
        selector: str = SELECTOR,
    ) -> None:
        self.kubeconfig, self.state_dir, self.selector = kubeconfig, state_dir, selector
        self.namespaces: list[str | None] = list(dict.fromkeys(namespaces)) or [None]
        self.agents: dict[Key, tuple[Placement, ScriptedAgent]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._cluster: Cluster | None = None
        self._watches: list[asyncio.Task[None]] = []

    def agent(self, namespace: str, pod: str) -> ScriptedAgent | None:
        found = self.agents.get((namespace, pod))
        return found[1] if found else None

    async def start(self, timeout: float = 60) -> None:
        """Start watching; returns once every watched scope was listed and its pods' agents started."""
        cluster = self._cluster = await asyncio.to_thread(Cluster.from_kubeconfig, self.kubeconfig)
        self._session = aiohttp.ClientSession(
            headers=cluster.headers, connector=aiohttp.TCPConnector(ssl=cluster.ssl)
        )
        watches = []
        for namespace in self.namespaces:

            async def on_list(pods: list[Pod], scope: str | None = namespace) -> None:
                await self._resync(scope, pods)

            watch = PodWatch(cluster, namespace, self.selector, on_list, self._on_event)
            watches.append(watch)
            self._watches.append(asyncio.get_running_loop().create_task(watch.run(self._session)))
        log.info(
            "watching pods (%s) in %s",
            self.selector,
            ", ".join(n or "all namespaces" for n in self.namespaces),
        )
        try:
            await asyncio.wait_for(asyncio.gather(*(w.listed.wait() for w in watches)), timeout)
        except TimeoutError:
            await self.stop()
            raise TimeoutError(f"could not list pods within {timeout:.0f}s (see the log for why)") from None

    async def stop(self) -> None:
        """Stop watching, then stop every agent."""
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        self._watches.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.gather(*(self._stop(key, "the simulator stops") for key in list(self.agents)))

    async def run(self) -> None:
        """Start, then play pods until cancelled (SIGTERM in the CLI), then stop."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _on_event(self, kind: str, pod: Pod) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        await self._apply(key, None if kind == "DELETED" else placement(pod), _absence(kind, pod))

    async def _resync(self, namespace: str | None, pods: list[Pod]) -> None:
        wanted = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        for key in [k for k in self.agents if (namespace is None or k[0] == namespace) and k not in wanted]:
            await self._stop(key, "its pod is gone")
        for key, pod in wanted.items():
            await self._apply(key, placement(pod), _absence("LISTED", pod))

    async def _apply(self, key: Key, wanted: Placement | None, why: str) -> None:
        current = self.agents.get(key)
        if current is not None and wanted is not None and current[0].incarnation == wanted.incarnation:
            return
        if current is not None:
            await self._stop(key, "its pod was replaced" if wanted else why)
        if wanted is not None:
            await self._start(wanted)

    async def _start(self, where: Placement) -> None:
        try:
            # The container's --type, unless the annotation names one.
            base = Behaviour(agent_type=where.agent_type) if where.agent_type else None
            behaviour = Behaviour.parse(where.behaviour, base)
        except BehaviourError as exc:
            log.error("not starting the agent of %s: bad %s annotation: %s", where, BEHAVIOUR_ANNOTATION, exc)
            return
        state = state_file(self.state_dir, await self._on_its_volume(where)) if self.state_dir else None
        agent = ScriptedAgent(
            where.ip, where.port, behaviour, state_file=state, name=f"{where.namespace}/{where.pod}"
        )
        try:
            await agent.start()
        except OSError as exc:
            log.error("cannot start the agent of %s: %s", where, exc)
            return
        self.agents[where.key] = (where, agent)
        log.info("started the agent of %s%s", where, f" (state {state})" if state else "")

    async def _on_its_volume(self, where: Placement) -> Placement:
        """`where`, its volume the uid of the claim it mounts: a task's workspace claim outlives its pods
        and whatever controlled them (an upgrade moves a pod from a StatefulSet to the Task)."""
        if where.claim is None or self._session is None or self._cluster is None:
            return where
        try:
            async with self._session.get(self._cluster.claim_path(where.namespace, where.claim)) as response:
                if response.status == 200:
                    return replace(where, volume=(await response.json())["metadata"]["uid"])
                log.warning(
                    "claim %s of %s: HTTP %d; keyed by its controller", where.claim, where, response.status
                )
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.warning("claim %s of %s: %s; keyed by its controller", where.claim, where, exc)
        return where

    async def _stop(self, key: Key, reason: str) -> None:
        found = self.agents.pop(key, None)
        if found is not None:
            await found[1].stop()
            log.info("stopped the agent of %s: %s", found[0], reason)


class BackgroundSimulator:
    """A Simulator on its own event-loop thread, for synchronous code such as tests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.simulator = Simulator(*args, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentsim", daemon=True)

    def start(self, timeout: float = 60) -> BackgroundSimulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.simulator.start(timeout), self._loop).result(timeout + 5)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.simulator.stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BackgroundSimulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
