"""The soak's shell: the processes, the operations and the observations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from bench.rest import tls
from bench.soak import (
    API,
    BEHAVIOURS,
    NAMESPACES,
    OP_TIMEOUT,
    ROOT,
    SIM,
    TASK_LABEL,
    TEMPLATES,
    WAITING,
    T,
    claim_name,
    pod_name,
    say,
)
from bench.soak.checks import (
    INVARIANTS,
    Conversation,
    History,
    Observed,
    Violation,
    check,
    check_lingering,
    describe_workspace,
    iso,
    key_of,
    who_of,
)
from bench.soak.schedule import Kind, Op, template
from localkube import binaries
from localkube.cluster import LocalCluster, _set_pdeathsig


@dataclass
class Incarnation:
    """One task, from its creation to its deletion."""

    slot: int
    namespace: str
    name: str
    uid: str
    template: str
    paused: bool
    prompts: list[str]
    pauses: list[float] = field(default_factory=list)
    deleted: bool = False

    @property
    def who(self) -> str:
        return f"{self.namespace}/{self.name}"


class Ledger:
    """What the run did: every operation with its outcome (in `ops.jsonl` and in memory), outcomes and
    faults counted by kind."""

    def __init__(self, path: Path) -> None:
        self.file: TextIO = path.open("a", encoding="utf-8")
        self.entries: list[dict[str, Any]] = []
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()
        self.soak_errors = 0  # operations that failed in the soak's own code
        self.t0 = time.monotonic()

    def record(self, op: Op, target: str, outcome: str, detail: dict[str, Any] | None = None) -> None:
        """`outcome` starts with ok, skipped, refused or failed, then a colon and why."""
        self.outcomes[op.kind][outcome.split(":")[0]] += 1
        entry = {
            "time": iso(time.time()),
            "elapsed": round(time.monotonic() - self.t0, 2),
            "kind": str(op.kind),
            "target": target,
            "outcome": outcome,
            **({"detail": detail} if detail else {}),
        }
        self.entries.append(entry)
        self.file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Workload:
    """The tasks and templates as the soak made them: a fixed number of slots, each empty or holding a
    task; every task ever made; the templates' behaviours and which are broken now."""

    def __init__(self, slots: int) -> None:
        self.slots: list[Incarnation | None] = [None] * slots
        self.names = [0] * slots  # per slot: how many names it has had
        self.made: list[Incarnation] = []
        self.broken: set[tuple[str, str]] = set()
        self.behaviours = {(ns, t): dict(BEHAVIOURS[t]) for ns in NAMESPACES for t in TEMPLATES}

    @staticmethod
    def _at(op: Op, fits: list[T]) -> T | None:
        return fits[min(int(op.pick * len(fits)), len(fits) - 1)] if fits else None

    def pick(self, op: Op, paused: bool | None = None) -> Incarnation | None:
        """The task the operation's `pick` falls on, among those that exist (and are paused, or not)."""
        return self._at(op, [t for t in self.slots if t is not None and paused in (None, t.paused)])

    def free_slot(self, op: Op) -> int | None:
        return self._at(op, [i for i, t in enumerate(self.slots) if t is None])

    def name(self, slot: int, same_name: bool) -> tuple[str, str]:
        """The namespace and name of a new task in `slot`: the slot's last name again, or a new one."""
        if not same_name or self.names[slot] == 0:
            self.names[slot] += 1
        suffix = f"-r{self.names[slot] - 1}" if self.names[slot] > 1 else ""
        return NAMESPACES[slot % len(NAMESPACES)], f"s{slot:02d}{suffix}"

    def history(self, crashes: list[str]) -> History:
        return History(
            pauses={t.uid: t.pauses for t in self.made},
            prompts={p.strip() for t in self.made for p in t.prompts},
            broken=set(self.broken),
            crashes=list(crashes),
        )


class Operator:
    """The operator as its own process, SIGKILLed and started again by the soak; any other exit is a
    crash, recorded with the end of its log, and the operator is started again."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes: list[str] = []

    def start(self) -> None:
        args = [a for ns in NAMESPACES for a in ("--namespace", ns)]
        args += ["--agent-grace", "5", "--agent-probe-after", "5"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "TASKPOD_"))}
        env |= {"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()}
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"==== soak: operator start {self.starts} at {iso(time.time())}\n")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskpod", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_set_pdeathsig,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL, as a node dying or the OOM killer would; False when it was not running."""
        if not self.running:
            return False
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None
        return True

    def crashed(self) -> bool:
        """True (and recorded) when it exited though nobody killed it."""
        if self.proc is None or self.proc.poll() is None:
            return False
        tail = " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        self.crashes.append(
            f"exited by itself with status {self.proc.returncode} at {iso(time.time())}: {tail}"
        )
        self.proc = None
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT / "hack"), str(ROOT)])


class Soak:
    """One run: the processes, what was done to each task, and what the cluster shows."""

    def __init__(self, directory: Path, settle_seconds: float, tasks: int) -> None:
        self.directory, self.settle_seconds = directory, settle_seconds
        self.cluster = LocalCluster(directory / "cluster")
        self.state_dir = directory / "agent-state"
        self.operator = Operator(self.cluster.kubeconfig, directory / "operator.log")
        self.simulator: subprocess.Popen[bytes] | None = None
        self.api: httpx.AsyncClient | None = None  # the API server, as the user
        self.agents = httpx.AsyncClient(timeout=5)
        self.workload = Workload(tasks)
        self.ledger = Ledger(directory / "ops.jsonl")
        self.restarts: set[asyncio.Task[None]] = set()
        self.looks: list[tuple[float, list[dict[str, Any]]]] = []  # the last look at the tasks, and when
        self.lingering: dict[str, Violation] = {}  # by task uid: unsettled during the run, untouched
        self.stopped = False

    # -- processes ---------------------------------------------------------------------------------

    def up(self) -> None:
        self.cluster.up(tie_to_parent=True)
        kubectl = [str(binaries.ensure("kubectl")), "--kubeconfig", str(self.cluster.kubeconfig)]
        subprocess.run(
            [*kubectl, "apply", "--server-side", "-f", str(ROOT / "crds")], check=True, capture_output=True
        )
        crds = ["crd/tasks.taskpod.dev", "crd/tasktemplates.taskpod.dev"]
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", *crds], check=True, capture_output=True
        )
        for namespace in NAMESPACES:
            subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
            templates = {"apiVersion": "v1", "kind": "List", "items": [template(n) for n in TEMPLATES]}
            subprocess.run(
                [*kubectl, "create", "-n", namespace, "-f", "-"],
                input=json.dumps(templates).encode(),
                check=True,
                capture_output=True,
            )
        self.simulator = subprocess.Popen(
            [
                *(sys.executable, "-m", "agentsim", "--kubeconfig", str(self.cluster.kubeconfig)),
                *("--state-dir", str(self.state_dir), *(a for ns in NAMESPACES for a in ("-n", ns))),
            ],
            stdout=(self.directory / "simulator.log").open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": _pythonpath()},
            preexec_fn=_set_pdeathsig,
        )
        self.operator.start()
        server, context = tls(self.cluster.kubeconfig)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self.api = httpx.AsyncClient(base_url=server, verify=context, limits=limits, timeout=60)

    async def down(self) -> None:
        self.stopped = True
        for job in self.restarts:
            job.cancel()
        with contextlib.suppress(Exception):
            await self.agents.aclose()
        if self.api is not None:
            with contextlib.suppress(Exception):
                await self.api.aclose()
        self.operator.stop()
        if self.simulator is not None and self.simulator.poll() is None:
            self.simulator.terminate()
            try:
                self.simulator.wait(20)
            except subprocess.TimeoutExpired:
                self.simulator.kill()
        self.cluster.down(quiet=True)
        for store in ("etcd", "volumes"):  # of no use once it is down; the logs stay
            shutil.rmtree(self.cluster.directory / store, ignore_errors=True)
        self.ledger.close()

    async def watch_operator(self) -> None:
        """Start the operator again whenever it exits by itself (the crash is recorded)."""
        while True:
            await asyncio.sleep(1)
            if self.operator.crashed():
                say(f"the operator crashed: {self.operator.crashes[-1][:200]}; starting it again")
                self.operator.start()

    # -- the API ----------------------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.api is not None
        return self.api

    async def call(self, method: str, path: str, body: Any = None, merge: bool = False) -> httpx.Response:
        headers = {"Content-Type": "application/merge-patch+json"} if merge else {}
        content = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        return await self.http.request(method, path, content=content, headers=headers, timeout=OP_TIMEOUT)

    async def items(self, path: str) -> list[dict[str, Any]]:
        response = await self.call("GET", path)
        response.raise_for_status()
        return list(response.json()["items"])

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        response = await self.call("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name(name)}")
        return dict(response.json()) if response.status_code == 200 else None

    @staticmethod
    def agent_url(pod: dict[str, Any] | None) -> str | None:
        """Where a Running pod's agent listens (its IP, the container port named agentapi)."""
        status = (pod or {}).get("status") or {}
        if pod is None or status.get("phase") != "Running" or not status.get("podIP"):
            return None
        ports = [
            p for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("name") == "agentapi"
        ]
        return f"http://{status['podIP']}:{ports[0]['containerPort'] if ports else 3284}"

    # -- operations -------------------------------------------------------------------------------

    async def execute(self, op: Op) -> None:
        try:
            await {
                Kind.CREATE: self.create,
                Kind.PAUSE: self.pause,
                Kind.RESUME: self.resume,
                Kind.SEND: self.send,
                Kind.EDIT: self.edit,
                Kind.DELETE: self.delete,
                Kind.TEMPLATE: self.change_template,
                Kind.FAULT: self.agent_fault,
                Kind.KILL: self.kill,
            }[op.kind](op)
        except (httpx.HTTPError, OSError) as exc:
            self.ledger.record(op, "", f"failed: {exc!r}")
        except Exception as exc:  # a bug of the soak's own: recorded, counted, and the run goes on
            self.ledger.soak_errors += 1
            say(f"operation {op} failed in the soak itself: {exc!r}")
            self.ledger.record(op, "", f"failed: soak error {exc!r}")

    async def create(self, op: Op) -> None:
        slot = self.workload.free_slot(op)
        if slot is None:
            self.ledger.record(op, "", "skipped: no free slot")
            return
        await self.create_in(op, slot, op.params)

    async def create_in(self, op: Op, slot: int, params: dict[str, Any]) -> None:
        namespace, name = self.workload.name(slot, params["same_name"])
        template = TEMPLATES[params["template"]]
        body = {
            "apiVersion": "taskpod.dev/v1alpha1",
            "kind": "Task",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"prompt": params["prompt"], "template": template, "paused": params["paused"]},
        }
        asked = time.time()
        response = await self.call("POST", f"{API}/namespaces/{namespace}/tasks", body)
        detail = {"template": template, "paused": params["paused"], "prompt": params["prompt"]}
        if response.status_code != 201:
            self.ledger.record(
                op, f"{namespace}/{name}", f"refused: {response.status_code} {response.text[:200]}", detail
            )
            return
        uid = response.json()["metadata"]["uid"]
        task = Incarnation(slot, namespace, name, uid, template, params["paused"], [params["prompt"]])
        if task.paused:
            task.pauses.append(asked)
        self.workload.slots[slot] = task
        self.workload.made.append(task)
        self.ledger.record(op, task.who, "ok", {**detail, "uid": uid})

    async def set_paused(self, op: Op, paused: bool) -> None:
        task = self.workload.pick(op, paused=not paused)
        if task is None:
            self.ledger.record(op, "", "skipped: no task fits")
            return
        asked = time.time()
        path = f"{API}/namespaces/{task.namespace}/tasks/{task.name}"
        response = await self.call("PATCH", path, {"spec": {"paused": paused}}, merge=True)
        if response.status_code != 200:
            self.ledger.record(op, task.who, f"refused: {response.status_code} {response.text[:200]}")
            return
        task.paused = paused
        if paused:
            task.pauses.append(asked)
        self.ledger.record(op, task.who, "ok")

    async def pause(self, op: Op) -> None:
        await self.set_paused(op, True)

    async def resume(self, op: Op) -> None:
        await self.set_paused(op, False)

    async def edit(self, op: Op) -> None:
        task = self.workload.pick(op, paused=True)
        if task is None:
            self.ledger.record(op, "", "skipped: no paused task")
            return
        path = f"{API}/namespaces/{task.namespace}/tasks/{task.name}"
        prompt = op.params["prompt"]
        response = await self.call("PATCH", path, {"spec": {"prompt": prompt}}, merge=True)
        if response.status_code != 200:
            self.ledger.record(op, task.who, f"refused: {response.status_code} {response.text[:200]}")
            return
        task.prompts.append(prompt)
        self.ledger.record(op, task.who, "ok", {"prompt": prompt})

    async def delete(self, op: Op) -> None:
        task = self.workload.pick(op)
        if task is None:
            self.ledger.record(op, "", "skipped: no task")
            return
        response = await self.call("DELETE", f"{API}/namespaces/{task.namespace}/tasks/{task.name}")
        if response.status_code not in (200, 202):
            self.ledger.record(op, task.who, f"refused: {response.status_code} {response.text[:200]}")
            return
        task.deleted = True
        self.workload.slots[task.slot] = None
        self.ledger.record(op, task.who, "ok", {"uid": task.uid})
        if "recreate" in op.params:
            await self.create_in(Op(op.at, Kind.CREATE), task.slot, op.params["recreate"])

    async def send(self, op: Op) -> None:
        """A user's message straight to an idle agent (as `kubectl task send` does once it is idle)."""
        task = self.workload.pick(op, paused=False)
        if task is None:
            self.ledger.record(op, "", "skipped: no running task")
            return
        response = await self.call("GET", f"{API}/namespaces/{task.namespace}/tasks/{task.name}")
        status = (response.json().get("status") or {}) if response.status_code == 200 else {}
        state = (status.get("state") or {}).get("state")
        if status.get("phase") != "Active" or state != "idle":
            self.ledger.record(op, task.who, f"skipped: {status.get('phase')}, {state}")
            return
        url = self.agent_url(await self.pod(task.namespace, task.name))
        if url is None:
            self.ledger.record(op, task.who, "skipped: no running pod")
            return
        body = {"content": op.params["text"], "type": "user"}
        try:
            answer = await self.agents.post(f"{url}/message", json=body)
        except httpx.HTTPError as exc:
            self.ledger.record(op, task.who, f"failed: {exc!r}", {"text": op.params["text"]})
            return
        if answer.status_code == 200:
            outcome = "ok"
        elif "after accepting" in answer.text:  # the flaky agent keeps the message, then answers 500
            outcome = "ok: accepted, then a scripted 500"
        else:
            outcome = f"refused: {answer.status_code} {answer.text[:200]}"
        self.ledger.record(op, task.who, outcome, {"text": op.params["text"]})

    async def agent_fault(self, op: Op) -> None:
        task = self.workload.pick(op, paused=False)
        if task is None:
            self.ledger.record(op, "", "skipped: no running task")
            return
        url = self.agent_url(await self.pod(task.namespace, task.name))
        fault = op.params["fault"]
        if url is None:
            self.ledger.record(op, task.who, "skipped: no running pod", op.params)
            return
        config = (
            {"down": op.params["seconds"]}
            if fault == "down"
            else {fault: {op.params["path"]: op.params["count"]}}
        )
        try:
            answer = await self.agents.post(f"{url}/_sim/config", json=config)
        except httpx.HTTPError as exc:  # down already, say
            self.ledger.record(op, task.who, f"failed: {exc!r}", op.params)
            return
        if answer.status_code == 200:
            self.ledger.faults[f"agent {fault}"] += 1
            self.ledger.record(op, task.who, "ok", op.params)
        else:
            self.ledger.record(op, task.who, f"refused: {answer.status_code} {answer.text[:200]}", op.params)

    async def change_template(self, op: Op) -> None:
        namespace = NAMESPACES[op.params["namespace"]]
        name = TEMPLATES[op.params["template"]]
        change, value = op.params["change"], op.params.get("value")
        pod: dict[str, Any] = {}
        if change == "env":
            pod = {"env": [{"name": "SOAK_REVISION", "value": value}]}
        elif change == "image":
            pod = {"image": value}
        elif change == "sim":
            self.workload.behaviours[(namespace, name)] = {**BEHAVIOURS[name], **(value or {})}
            pod = {"annotations": {SIM: json.dumps(self.workload.behaviours[(namespace, name)])}}
        else:
            pod = {"annotations": {WAITING: value if change == "break" else None}}
        path = f"{API}/namespaces/{namespace}/tasktemplates/{name}"
        response = await self.call("PATCH", path, {"spec": {"pod": pod}}, merge=True)
        if response.status_code != 200:
            self.ledger.record(
                op, f"{namespace}/{name}", f"refused: {response.status_code} {response.text[:200]}", pod
            )
            return
        if change == "break":
            self.workload.broken.add((namespace, name))
            self.ledger.faults["template break"] += 1
        elif change == "heal":
            self.workload.broken.discard((namespace, name))
        self.ledger.record(op, f"{namespace}/{name}", "ok", {"change": change, **pod})

    async def kill(self, op: Op) -> None:
        if not self.operator.kill():
            self.ledger.record(op, "operator", "skipped: not running")
            return
        self.ledger.faults["operator kill"] += 1
        delay = float(op.params["restart_after"])
        self.ledger.record(op, "operator", "ok", {"restart_after": round(delay, 1)})

        async def restart() -> None:
            await asyncio.sleep(delay)
            if not self.operator.running:
                self.operator.start()

        job = asyncio.get_running_loop().create_task(restart())
        self.restarts.add(job)
        job.add_done_callback(self.restarts.discard)

    # -- observing and settling ---------------------------------------------------------------------

    async def observe(self) -> Observed:
        observed = Observed()
        labelled = f"?labelSelector={TASK_LABEL}"
        for namespace in NAMESPACES:
            core = f"/api/v1/namespaces/{namespace}"
            observed.tasks += await self.items(f"{API}/namespaces/{namespace}/tasks")
            observed.pods += await self.items(f"{core}/pods{labelled}")
            observed.claims += await self.items(f"{core}/persistentvolumeclaims{labelled}")
            observed.configmaps += await self.items(f"{core}/configmaps{labelled}")
            observed.events += await self.items(f"{core}/events?fieldSelector=reason%3DSnapshotSkipped")
        pods = {key_of(p): p for p in observed.pods}
        current = set()
        for task in observed.tasks:
            namespace, name = key_of(task)
            # The simulator keeps a conversation per workspace volume, by the uid of the pod's controller:
            # the task's. Another uid's file under the same name is a deleted task's.
            state = self.state_dir / namespace / name / f"{task['metadata']['uid']}.json"
            current.add(state)
            url = self.agent_url(pods.get((namespace, pod_name(name))))
            live = None
            if (task.get("status") or {}).get("phase") == "Active" and url is not None:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    live = (await self.agents.get(f"{url}/messages")).json()["messages"]
            if live is not None:
                observed.conversations[who_of(task)] = Conversation("agent", live)
            elif (stored := self.stored(state)) is not None:
                observed.conversations[who_of(task)] = Conversation("state file", stored)
        for path in sorted(self.state_dir.glob("*/**/*.json")):
            if path not in current and (stored := self.stored(path)) is not None:
                label = f"{path.relative_to(self.state_dir)}"
                observed.conversations[label] = Conversation("state file of a deleted task", stored)
        return observed

    @staticmethod
    def stored(path: Path) -> list[dict[str, Any]] | None:
        try:
            return list(json.loads(path.read_text())["messages"])
        except (OSError, ValueError, KeyError):
            return None

    async def quiet_agents(self) -> None:
        """No fault from now on: clear the counted faults of every running agent."""
        for namespace in NAMESPACES:
            for pod in await self.items(f"/api/v1/namespaces/{namespace}/pods?labelSelector={TASK_LABEL}"):
                if (url := self.agent_url(pod)) is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        await self.agents.post(
                            f"{url}/_sim/config", json={"fail": {}, "hang": {}, "garbage": {}}
                        )

    async def settle(self) -> tuple[float, Observed, dict[str, list[Violation]]]:
        """Faults off, the operator running; then check every 5 s until clean or settle_seconds passed."""
        for job in list(self.restarts):
            job.cancel()
        if not self.operator.running:
            self.operator.start()
        await self.quiet_agents()
        started = time.monotonic()
        while True:
            await asyncio.sleep(5)
            log_text = self.operator.log.read_text(errors="replace")
            observed = await self.observe()
            found = check(observed, self.workload.history(self.operator.crashes), log_text)
            waited = time.monotonic() - started
            if not any(found.values()) or waited >= self.settle_seconds:
                return round(waited, 1), observed, found
            if round(waited) % 30 < 5:
                first = next(v for vs in found.values() for v in vs)
                say(
                    f"settling ({waited:.0f}s): {sum(map(len, found.values()))} violations, "
                    f"e.g. {first.task}: {first.seen}"
                )

    async def look(self, minutes: float, done: int) -> None:
        """Once a minute: say how far the run is, and find tasks that stay unsettled with nothing
        touching them (check_lingering)."""
        tasks = [t for ns in NAMESPACES for t in await self.items(f"{API}/namespaces/{ns}/tasks")]
        elapsed = time.monotonic() - self.ledger.t0
        phases = Counter((t.get("status") or {}).get("phase") or "none" for t in tasks)
        say(
            f"{elapsed / 60:.1f}/{minutes:g} min: {done} operations, faults {dict(self.ledger.faults)}, "
            f"tasks {dict(sorted(phases.items()))}"
        )
        if self.looks:
            before_at, before = self.looks[-1]
            # Untouched since 30 s before the earlier look: a fault acts a while after it is set (five
            # hung calls of the operator's, 5 s each, say).
            touched = self.touched(tasks, since=before_at - 30)
            for violation in check_lingering(before, tasks, self.workload.broken, touched):
                task = next(t for t in tasks if who_of(t) == violation.task)
                uid = task["metadata"]["uid"]
                if uid not in self.lingering:
                    namespace, name = key_of(task)
                    claim = await self.call(
                        "GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name(name)}"
                    )
                    workspace = describe_workspace(
                        claim.json() if claim.status_code == 200 else None, await self.pod(namespace, name)
                    )
                    self.lingering[uid] = Violation("phase", violation.task, f"{violation.seen}; {workspace}")
                    say(f"{violation.task}: {self.lingering[uid].seen}")
        self.looks = [(elapsed, tasks)]

    def touched(self, tasks: list[dict[str, Any]], since: float) -> set[str]:
        """The tasks an operation changed since `since` (seconds into the run), directly or through
        their template; all of them when the operator was killed."""
        recent = [
            e for e in self.ledger.entries if e["elapsed"] >= since and not e["outcome"].startswith("skipped")
        ]
        if any(e["kind"] == Kind.KILL for e in recent):
            return {who_of(t) for t in tasks}
        targets = {e["target"] for e in recent}
        return targets | {
            who_of(t)
            for t in tasks
            if f"{t['metadata']['namespace']}/{(t.get('spec') or {}).get('template')}" in targets
        }

    def evidence(self, violation: Violation, observed: Observed) -> dict[str, Any]:
        """What led to a violation: the operations on its task; those on its template and the operator
        kills; the operator's log lines that name the task."""
        who = violation.task
        if "/" not in who:
            return {}
        namespace = who.split("/")[0]
        templates = {
            f"{namespace}/{(t.get('spec') or {}).get('template')}" for t in observed.tasks if who_of(t) == who
        }

        def line(e: dict[str, Any]) -> str:
            change = f" ({e['detail'].get('change')})" if e["kind"] == Kind.TEMPLATE else ""
            return (
                f"{e['time'][11:23]} +{e['elapsed']}s {e['kind']}{change} {e['target']}: {e['outcome'][:160]}"
            )

        operations = [line(e) for e in self.ledger.entries if e["target"] == who]
        context = [line(e) for e in self.ledger.entries if e["target"] in templates or e["kind"] == Kind.KILL]
        named = re.compile(re.escape(who) + r"(?![\w-])")
        log = [
            line[:300]
            for line in self.operator.log.read_text(errors="replace").splitlines()
            if named.search(line)
        ]
        return {"operations": operations[-100:], "context": context[-30:], "operator_log": log[-20:]}

    async def even_out(self, rng: random.Random) -> None:
        """Pause or resume tasks until about as many run as are paused, so the end checks see both
        (pauses and resumes are a random walk: a run can end with every task paused)."""
        for _ in self.workload.slots:
            tasks = [t for t in self.workload.slots if t is not None]
            paused = sum(t.paused for t in tasks)
            if abs(2 * paused - len(tasks)) <= max(2, len(tasks) // 4):
                return
            pause = 2 * paused < len(tasks)
            at = time.monotonic() - self.ledger.t0
            await self.set_paused(Op(at, Kind.PAUSE if pause else Kind.RESUME, rng.random()), pause)

    async def run(self, ops: list[Op], minutes: float, seed: int) -> dict[str, Any]:
        self.ledger.t0 = time.monotonic()
        watchdog = asyncio.get_running_loop().create_task(self.watch_operator())
        next_progress = 60.0
        try:
            for done, op in enumerate(ops):
                delay = self.ledger.t0 + op.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.execute(op)
                if op.at >= next_progress:
                    next_progress += 60
                    with contextlib.suppress(httpx.HTTPError):
                        await self.look(minutes, done + 1)
            await self.even_out(random.Random(seed))
            ran = time.monotonic() - self.ledger.t0
            say(f"operations done after {ran / 60:.1f} min; settling (at most {self.settle_seconds:.0f}s)")
            settled, observed, found = await self.settle()
            found["phase"] = [*self.lingering.values(), *found["phase"]]
        finally:
            watchdog.cancel()
        (self.directory / "final.json").write_text(json.dumps(asdict(observed), indent=1, ensure_ascii=False))
        applied = {k: sum(v.values()) - v["skipped"] for k, v in self.ledger.outcomes.items()}
        return {
            "minutes": round(ran / 60, 2),
            "settle_seconds": settled,
            "operations": {
                "total": sum(applied.values()),
                "scheduled": len(ops),
                "by_kind": dict(sorted(applied.items())),
                "outcomes": {k: dict(sorted(v.items())) for k, v in sorted(self.ledger.outcomes.items())},
            },
            "faults": {"total": sum(self.ledger.faults.values()), **dict(sorted(self.ledger.faults.items()))},
            "operator_starts": self.operator.starts,
            "soak_errors": self.ledger.soak_errors,
            "tasks": {
                "created": len(self.workload.made),
                "deleted": sum(t.deleted for t in self.workload.made),
                "templates_left_broken": sorted("/".join(b) for b in self.workload.broken),
                "phases_at_the_end": dict(
                    sorted(
                        Counter(
                            (t.get("status") or {}).get("phase") or "none" for t in observed.tasks
                        ).items()
                    )
                ),
            },
            "invariants": {
                name: {
                    "what": INVARIANTS[name],
                    "ok": not violations,
                    "violations": [
                        {"task": v.task, "seen": v.seen, **self.evidence(v, observed)} for v in violations
                    ],
                }
                for name, violations in found.items()
            },
        }
