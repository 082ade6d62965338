"""One benchmark run for N tasks: the operator's phases on one fresh control plane, then the pod floor
(the same volume claims and pods made and deleted directly, no operator) on another, and what each
cost."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import audit, procstat
from bench.procstat import Sampler
from bench.rest import Rest
from localkube import binaries
from localkube.cluster import LocalCluster, _free_ports
from taskpod.api.models import Task, TaskTemplate
from taskpod.core import workspace

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_USER, FLOOR_USER = "taskpod-operator", "taskpod-floor"
NS = "bench"
IDLE_PAUSE = "5s"  # the idle-pause phase's: shorter than every task has been idle by then
TASKS = f"/apis/taskpod.dev/v1alpha1/namespaces/{NS}/tasks"
TEMPLATES = f"/apis/taskpod.dev/v1alpha1/namespaces/{NS}/tasktemplates"
TEMPLATE = {
    "apiVersion": "taskpod.dev/v1alpha1",
    "kind": "TaskTemplate",
    "metadata": {"name": "default", "namespace": NS},
    "spec": {
        "agent": {"type": "custom"},
        # A quick scripted agent: greets, works 0.5 s on the prompt, answers.
        "pod": {
            "image": "example.invalid/agent:1",
            "annotations": {"sim.taskpod.dev/agent": json.dumps({"work_seconds": 0.5})},
        },
        "storage": {"size": "1Gi"},
    },
}
PODS_PER_NODE = 200  # each fake node's pod CIDR is a /24
CONCURRENCY = 50  # requests in flight while applying or patching N objects


def say(text: str) -> None:
    print(f"[bench {dt.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 3)}


@dataclass
class TaskTimes:
    created: float = 0.0
    active: float | None = None  # Active with the prompt delivered
    paused: float | None = None  # Paused with a snapshot taken after the pause was asked
    resumed: float | None = None  # Active again, lifetime 2
    auto_paused: float | None = None  # Paused by idlePause (status.autoPause), the pod gone


@dataclass
class Watcher:
    """Follows every Task through one watch; records when each reaches each milestone."""

    rest: Rest
    times: dict[str, TaskTimes] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def see(self, task: dict[str, Any]) -> None:
        name = task["metadata"]["name"]
        status = task.get("status") or {}
        phase = status.get("phase") or "Pending"
        self._count(self.phases.get(name), phase)
        self.phases[name] = phase
        times = self.times.setdefault(name, TaskTimes(created=time.monotonic()))
        now = time.monotonic()
        if times.active is None and phase == "Active" and status.get("prompt"):
            times.active = now
        # The operator snapshots before it deletes the pod (or keeps the idle-time one when nothing
        # changed since), and Paused means the pod is gone: Paused with a snapshot recorded is the
        # milestone, as "every pod gone" is the pod floor's.
        if times.paused is None and phase == "Paused" and status.get("logSnapshot"):
            times.paused = now
        lifetime = (status.get("workspace") or {}).get("lifetime")  # 2: the task's second pod
        if times.resumed is None and phase == "Active" and lifetime == 2:
            times.resumed = now
        automatic = (status.get("autoPause") or {}).get("reason") == "Idle"
        if times.auto_paused is None and phase == "Paused" and automatic and status.get("logSnapshot"):
            times.auto_paused = now

    async def follow(self) -> None:
        def listed(tasks: list[dict[str, Any]]) -> None:
            for task in tasks:
                self.see(task)

        def changed(event: dict[str, Any]) -> None:
            if event.get("type") in ("ADDED", "MODIFIED"):
                self.see(event["object"])

        await self.rest.follow(TASKS, listed, changed)

    def _count(self, old: str | None, new: str) -> None:
        """A timeline point at every change of the counts: a brief state (all Paused for 0.2 s) shows."""
        if old == new:
            return
        if old is not None:
            self.counts[old] -= 1
        self.counts[new] += 1
        point = (round(time.monotonic() - self.t0, 2), {k: v for k, v in self.counts.items() if v})
        if self.timeline and self.timeline[-1][0] == point[0]:
            self.timeline[-1] = point  # several changes within 10 ms: keep the last
        else:
            self.timeline.append(point)

    async def until(self, done: Any, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                phases = {k: v for k, v in self.counts.items() if v}
                raise TimeoutError(f"{what}: not there after {timeout:.0f}s; tasks by phase: {phases}")
            await asyncio.sleep(0.1)
        return time.monotonic()


async def _all(calls: list[Any]) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Any) -> None:
        async with limit:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


def _cluster(directory: Path, n: int) -> LocalCluster:
    cluster = LocalCluster(directory)
    cluster.up(
        nodes=max(1, math.ceil(n / PODS_PER_NODE)),
        tie_to_parent=True,
        audit_users=(OPERATOR_USER, FLOOR_USER),
    )
    kubectl = str(binaries.ensure("kubectl"))
    kc = ["--kubeconfig", str(cluster.kubeconfig)]
    subprocess.run(
        [kubectl, *kc, "apply", "--server-side", "-f", str(ROOT / "crds")], check=True, capture_output=True
    )
    subprocess.run(
        [
            kubectl,
            *kc,
            "wait",
            "--timeout=120s",  # the TaskTemplate CRD (460 KB of schema) can take over 30 s under load
            "--for=condition=Established",
            "crd/tasks.taskpod.dev",
            "crd/tasktemplates.taskpod.dev",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([kubectl, *kc, "create", "namespace", NS], check=True, capture_output=True)
    return cluster


def _simulator(cluster: LocalCluster) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"), str(ROOT)])}
    log = (cluster.directory / "simulator.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "agentsim", "--kubeconfig", str(cluster.kubeconfig)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _task(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": f"t{i:05d}", "namespace": NS},
        "spec": {"prompt": f"Benchmark task {i}: say hello", "displayName": f"Benchmark task {i}"},
    }


async def operator_phases(
    directory: Path, n: int, idle_seconds: float, single_pauses: int, profile: Path | None = None
) -> dict[str, Any]:
    cluster = _cluster(directory, n)
    simulator = _simulator(cluster)
    kubeconfig = cluster.user_kubeconfig(OPERATOR_USER)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TASKPOD_AGENT_TRANSPORT": "direct",
        "PYTHONUNBUFFERED": "1",
    }
    log = (cluster.directory / "operator.log").open("ab")
    listen = f"127.0.0.1:{_free_ports(['metrics'])['metrics']}"
    operator = subprocess.Popen(
        [sys.executable, "-m", "taskpod", "-n", NS, "--http-listen", listen],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    metrics = Reconciles(f"http://{listen}/metrics")
    sampler = Sampler(operator.pid)
    profiler = None
    if profile is not None:  # py-spy samples the operator through apply, pause and resume
        profiler = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),  # the venv's (the dev extra)
                "record",
                "--pid",
                str(operator.pid),
                "--format",
                "raw",
                "--rate",
                "50",
                "--nonblocking",
                "--gil",  # only the thread that holds the GIL: where the CPU goes, not where threads wait
                "--output",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    rest = Rest(cluster.kubeconfig)
    watcher = Watcher(rest)
    background = [asyncio.create_task(watcher.follow())]
    result: dict[str, Any] = {"phases": {}}
    timeout = 120 + n * 0.5

    async def phase(name: str, act: Any, done: Any, latencies: Any) -> None:
        sampler.start_phase()
        before = await metrics.read()
        cpu0 = procstat.cpu_by_process()
        wall0, t0 = time.time(), time.monotonic()
        await act()
        t_end = await watcher.until(done, timeout, name)
        wall1 = time.time()
        usage = sampler.end_phase()
        cpu = procstat.since(cpu0, procstat.cpu_by_process())
        requests = audit.count(cluster.audit_log, OPERATOR_USER, wall0, wall1)
        result["phases"][name] = {
            "all_seconds": round(t_end - t0, 2),
            "latency": percentiles(latencies()),
            "operator_cpu_seconds": usage.cpu_seconds,
            "operator_peak_rss_mib": usage.peak_rss_mib,
            "api_requests": dict(sorted(requests.items())),
            "api_writes": audit.writes(requests),
            "reconciles": Reconciles.since(before, await metrics.read()),
            "cpu_seconds_by_process": cpu,
        }
        figures = result["phases"][name]
        say(
            f"N={n} {name}: all in {t_end - t0:.1f}s, {figures['latency']}, "
            f"cpu {usage.cpu_seconds}s, rss {usage.peak_rss_mib} MiB"
        )

    try:
        await rest.create(TEMPLATES, TEMPLATE)

        async def apply() -> None:
            async def create(i: int) -> None:
                watcher.times.setdefault(f"t{i:05d}", TaskTimes()).created = time.monotonic()
                await rest.create(TASKS, _task(i))

            await _all([lambda i=i: create(i) for i in range(n)])

        def names() -> list[str]:
            return [f"t{i:05d}" for i in range(n)]

        await phase(
            "apply",
            apply,
            lambda: all(watcher.times.get(x) and watcher.times[x].active for x in names()),
            lambda: [watcher.times[x].active - watcher.times[x].created for x in names()],  # type: ignore[operator]
        )
        pause_started: dict[str, float] = {}

        async def pause() -> None:
            async def one(x: str) -> None:
                pause_started[x] = time.monotonic()
                await rest.merge(f"{TASKS}/{x}", {"spec": {"paused": True}})

            await _all([lambda x=x: one(x) for x in names()])

        await phase(
            "pause",
            pause,
            lambda: all(watcher.times[x].paused for x in names()),
            lambda: [watcher.times[x].paused - pause_started[x] for x in names()],  # type: ignore[operator]
        )
        resume_started: dict[str, float] = {}

        async def resume() -> None:
            async def one(x: str) -> None:
                resume_started[x] = time.monotonic()
                await rest.merge(f"{TASKS}/{x}", {"spec": {"paused": False}})

            await _all([lambda x=x: one(x) for x in names()])

        await phase(
            "resume",
            resume,
            lambda: all(watcher.times[x].resumed for x in names()),
            lambda: [watcher.times[x].resumed - resume_started[x] for x in names()],  # type: ignore[operator]
        )

        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it has
            profiler.wait(60)
        say(f"N={n} idle: settling, then measuring {idle_seconds:.0f}s")
        settled = await metrics.settle(quiet=max(5, n // 100))
        say(f"N={n} idle: settled after {settled}s")
        sampler.start_phase()
        before = await metrics.read()
        wall0 = time.time()
        await asyncio.sleep(idle_seconds)
        usage = sampler.end_phase()
        reconciles = Reconciles.since(before, await metrics.read())
        requests = audit.count(cluster.audit_log, OPERATOR_USER, wall0, time.time())
        minutes = idle_seconds / 60
        result["idle"] = {
            "seconds": idle_seconds,
            "settled_after_seconds": settled,
            "cpu_percent_of_one_core": round(100 * usage.cpu_seconds / idle_seconds, 2),
            "api_requests_per_minute": round(sum(requests.values()) / minutes, 2),
            "api_writes_per_minute": round(audit.writes(requests) / minutes, 2),
            "api_requests": dict(sorted(requests.items())),
            "operator_rss_mib": usage.end_rss_mib,
            "reconciles": reconciles,
        }
        say(f"N={n} idle: {result['idle']}")
        result["single_pause"] = await single_task_pauses(rest, watcher, single_pauses)
        # Every task idle (longer than idlePause already): the template gets an idlePause, and each task
        # pauses itself, snapshot first. Its floor is the floor's pause: the same pods deleted.
        idle_asked = time.monotonic()

        async def idle_pause() -> None:
            await rest.merge(f"{TEMPLATES}/default", {"spec": {"idlePause": IDLE_PAUSE}})

        await phase(
            "idle_pause",
            idle_pause,
            lambda: all(watcher.times[x].auto_paused for x in names()),
            lambda: [watcher.times[x].auto_paused - idle_asked for x in names()],  # type: ignore[operator]
        )
        result["timeline"] = watcher.timeline
        result["operator_peak_rss_mib"] = max(p["operator_peak_rss_mib"] for p in result["phases"].values())
    finally:
        for job in background:
            if job.done() and not job.cancelled() and job.exception():
                say(f"the watch failed: {job.exception()!r}")
            job.cancel()
        await rest.close()
        sampler.stop()
        for process in (operator, simulator):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        cluster.down(quiet=True)
    return result


@dataclass
class Reconciles:
    """Reconciles the operator ran and skipped (nothing they read had changed), from its own /metrics:
    where its CPU goes besides Kopf's handling of each watch event."""

    url: str

    async def read(self) -> dict[str, float]:
        wanted = {
            "taskpod_reconcile_duration_seconds_count": "run",
            "taskpod_reconciles_skipped_total": "skipped",
        }
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                text = (await http.get(self.url)).text
        except httpx.HTTPError:
            return {}
        return {
            wanted[sample.name]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in wanted
        }

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
        return {k: int(after[k] - before.get(k, 0)) for k in after}

    async def settle(self, quiet: int, window: float = 10, limit: float = 300) -> float:
        """Wait until a `window` brings at most `quiet` reconciles, run or skipped: the control plane has
        stopped reporting changes (at 5,000 tasks, its controllers finish minutes after the last task is
        Active). Returns the seconds waited, at most about `limit`."""
        start = time.monotonic()
        before = await self.read()
        while time.monotonic() - start < limit:
            await asyncio.sleep(window)
            after = await self.read()
            if sum(self.since(before, after).values()) <= quiet:
                break
            before = after
        return round(time.monotonic() - start, 1)


async def single_task_pauses(rest: Rest, watcher: Watcher, count: int) -> dict[str, Any]:
    """One task paused `count` times in turn, with everything else idle: patch -> Paused, snapshot in."""
    name = "t00000"
    latencies = []
    for _ in range(count):
        watcher.times[name].paused = None
        asked = time.monotonic()
        await rest.merge(f"{TASKS}/{name}", {"spec": {"paused": True}})
        done = await watcher.until(lambda: watcher.times[name].paused is not None, 60, "single pause")
        latencies.append(done - asked)
        watcher.times[name].resumed = None
        await rest.merge(f"{TASKS}/{name}", {"spec": {"paused": False}})
        await watcher.until(lambda: watcher.phases.get(name) == "Active", 60, "single resume")
        await asyncio.sleep(1.5)  # the agent greets and settles before the next pause
    return {"count": count, **percentiles(latencies)}


async def floor_phases(directory: Path, n: int, *, tasks: bool = False) -> dict[str, Any]:
    """The pod floor: the same volume claims and pods made and deleted directly by a client, with no
    controller: what the cluster itself needs. Apply creates each task's claim and pod, pause deletes the
    pod (the claim stays), resume creates the pod again (lifetime 2), as the operator does.

    With `tasks`, the task floor: what any operator that keeps a Task's status must cause besides. The
    user's own writes come first (the Task created, then patched paused and back), a watcher follows the
    Tasks (the bench's, as in the operator's run), and each task gets one status write per phase, once its
    pod is Ready or gone. What only taskpod does (the prompt, the snapshot, Events) is left out."""
    cluster = _cluster(directory, n)
    simulator = _simulator(cluster)
    rest = Rest(cluster.user_kubeconfig(FLOOR_USER))
    template = TaskTemplate.model_validate(TEMPLATE)
    pods = f"/api/v1/namespaces/{NS}/pods"
    claims = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
    ready: set[str] = set()
    alive: set[str] = set()
    statuses = _Statuses(rest)

    def see(pod: dict[str, Any], deleted: bool = False) -> None:
        name = pod["metadata"]["name"]
        conditions = (pod.get("status") or {}).get("conditions") or []
        if deleted:
            alive.discard(name)
            ready.discard(name)
        else:
            alive.add(name)
            is_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            (ready.add if is_ready and not pod["metadata"].get("deletionTimestamp") else ready.discard)(name)
        statuses.see(name, ready=name in ready, gone=name not in alive)

    def listed(items: list[dict[str, Any]]) -> None:
        alive.clear()  # a new listing: what it lacks went while no watch ran
        ready.clear()
        for pod in items:
            see(pod)
        for name in list(statuses.waiting):  # a pod that went unseen is gone all the same
            statuses.see(name, ready=name in ready, gone=name not in alive)

    def follow() -> Any:
        return rest.follow(
            pods, listed, lambda event: see(event["object"], deleted=event["type"] == "DELETED")
        )

    async def until(done: Any, what: str) -> None:
        deadline = time.monotonic() + 120 + n * 0.5
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{floor} {what}: {len(ready)} pods Ready, {len(alive)} there")
            await asyncio.sleep(0.1)

    floor = "task floor" if tasks else "pod floor"
    background = [asyncio.create_task(follow())]
    if tasks:
        background.append(asyncio.create_task(Watcher(rest).follow()))
    result: dict[str, Any] = {}
    models = [Task.model_validate(_task(i)) for i in range(n)]
    try:

        async def timed(name: str, act: Any, done: Any) -> None:
            cpu0 = procstat.cpu_by_process()
            wall0, t0 = time.time(), time.monotonic()
            await act()
            await until(done, name)
            requests = audit.count(cluster.audit_log, FLOOR_USER, wall0, time.time())
            result[name] = {
                "all_seconds": round(time.monotonic() - t0, 2),
                "api_requests": dict(sorted(requests.items())),
                "api_writes": audit.writes(requests),
                "cpu_seconds_by_process": procstat.since(cpu0, procstat.cpu_by_process()),
            }
            say(f"N={n} {floor} {name}: {result[name]['all_seconds']}s")

        def unowned(obj: dict[str, Any]) -> dict[str, Any]:
            obj["metadata"].pop("ownerReferences", None)  # no Task to own them here
            return obj

        def expect(t: Task, when: str, status: dict[str, Any]) -> None:
            if tasks:
                statuses.expect(workspace.names(t.name).pod, t.name, when, status)

        async def paused(t: Task, value: bool) -> None:
            if tasks:  # the user's own write, as in the operator's run
                await rest.merge(f"{TASKS}/{t.name}", {"spec": {"paused": value}})

        async def create() -> None:
            async def one(i: int, t: Task) -> None:  # the claim, then the pod on it, as a reconcile does
                if tasks:  # the user's own write, as in the operator's run
                    await rest.create(TASKS, _task(i))
                expect(t, "ready", {"phase": "Active", "workspace": {"lifetime": 1}})
                await rest.create(claims, unowned(workspace.claim(t, template)))
                await rest.create(pods, unowned(workspace.pod(t, template, 1)))

            await _all([lambda i=i, t=t: one(i, t) for i, t in enumerate(models)])

        async def pause() -> None:  # the pod goes (default grace, as the operator's delete); the claim stays
            async def one(t: Task) -> None:
                await paused(t, True)
                expect(t, "gone", {"phase": "Paused"})
                await rest.delete(f"{pods}/{workspace.names(t.name).pod}")

            await _all([lambda t=t: one(t) for t in models])

        async def resume() -> None:  # a new pod on the same claim: the task's second
            async def one(t: Task) -> None:
                await paused(t, False)
                expect(t, "ready", {"phase": "Active", "workspace": {"lifetime": 2}})
                await rest.create(pods, unowned(workspace.pod(t, template, 2)))

            await _all([lambda t=t: one(t) for t in models])

        def settled(pods_done: Any) -> Any:
            return lambda: pods_done() and statuses.done()

        await timed("apply", create, settled(lambda: len(ready) >= n))
        await timed("pause", pause, settled(lambda: not alive))
        await timed("resume", resume, settled(lambda: len(ready) >= n))
    finally:
        for job in background:
            job.cancel()
        await statuses.close()
        await rest.close()
        simulator.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            simulator.wait(20)
        cluster.down(quiet=True)
    return result


@dataclass
class _Statuses:
    """The task floor's status writes: one per task and phase, made (CONCURRENCY in flight) once the
    task's pod is where the phase leaves it."""

    rest: Rest
    waiting: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)  # by pod name
    writes: set[asyncio.Task[None]] = field(default_factory=set)
    failed: list[BaseException] = field(default_factory=list)
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))

    def expect(self, pod: str, task: str, when: str, status: dict[str, Any]) -> None:
        self.waiting[pod] = (task, when, status)

    def see(self, pod: str, *, ready: bool, gone: bool) -> None:
        found = self.waiting.get(pod)
        if found is None or not {"ready": ready, "gone": gone}[found[1]]:
            return
        del self.waiting[pod]
        write = asyncio.create_task(self._write(found[0], found[2]))
        self.writes.add(write)
        write.add_done_callback(self.writes.discard)

    async def _write(self, task: str, status: dict[str, Any]) -> None:
        async with self.limit:
            try:
                await self.rest.merge(f"{TASKS}/{task}/status", {"status": status})
            except Exception as exc:
                self.failed.append(exc)

    def done(self) -> bool:
        if self.failed:
            raise RuntimeError(f"task floor: a status write failed: {self.failed[0]!r}")
        return not self.waiting and not self.writes

    async def close(self) -> None:
        for write in self.writes:
            write.cancel()


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
