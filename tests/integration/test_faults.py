"""The fault matrix: every AgentAPI call the operator makes, failing each way an agent can fail, at each
stage of a task's life; then the API server and the operator killed mid-delivery and mid-pause.

Each cell ends as a user would check it: the phase its stage implies, a healthy agent, the prompt in the
agent's log exactly once with PromptDelivered True, no wedge (every wait is bounded), and nothing lost (the
agent's newest words in the MESSAGE column, the conversation whole after a pause and resume). Faults are
counted ({path: COUNT}), so each heals by itself: what matters is how the task looks once the agent is
well again, and how long that takes. Calls: GET /events, GET /status, GET /messages, POST /message;
faults: drop (no answer, the connection closed), fail (500), garbage, hang, slow; plus the whole agent
down, and a cell with no fault (the baseline), in each stage:

- delivery: the fault is in the agent's behaviour from its start (its own TaskTemplate's annotation), so
  the first calls meet it. The agent initialises for a few seconds first, so the quiet-stream probe
  (GET /status) comes before the prompt does.
- following: the task is Active, its prompt delivered and its agent idle; then the fault is set through
  /_sim/config and the operator is made to use the call: the open stream is cut so that the follower
  reconnects into it (/events), the stream stays quiet so that the probe asks (/status), the agent takes
  turns and goes idle, which reads the conversation for the idle snapshot (/messages), and a user sends
  input with `kubectl task send`'s code, retrying as a user would after an error (POST /message: the
  operator itself posts nothing once the prompt is in). Then the agent says something new, which the
  MESSAGE column must show.
- pause: the fault is set, then the task is paused: Paused within PAUSE_BOUND with its workspace at zero,
  and a fresh snapshot recorded in status, or a SnapshotSkipped Event saying why (the table says which);
  then it is resumed with its conversation whole and the prompt not sent again. The faulted call is in
  use as the pause arrives: the follower in a faulted reconnect (/events), a faulted probe (/status), the
  snapshot's read (/messages), the prompt's delivery being refused (POST /message, from the agent's start).

A stage's cells run at once, each its own Task, in one namespace with one operator (stages one after
another, so that one's load does not skew another's times); one test per cell then asserts what its
cell recorded. Recovery times (the end state's start minus the fault's healing,
i.e. the last faulted request being over; or minus the pause or resume asked) are printed as a table at
the end of the module (pytest -s, or -rA) and written as JSON to the path printed with it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from kubernetes import client, config, watch

from localkube.cluster import LocalCluster
from taskpod import kube as taskkube
from taskpod.agentapi import AgentError, AgentUnavailable
from taskpod.client import tasks as taskops
from tests.support import (
    SIM,
    Kube,
    Operator,
    act_as_user,
    agent_messages,
    agent_url,
    create_namespace,
    create_task,
    create_template,
    delete_namespace,
    get_task,
    patch_task,
    prompts_in,
    sim_config,
    tasks_api,
    template_with,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.local_pods]
T = TypeVar("T")

CALLS = {
    "GET-events": "/events",
    "GET-status": "/status",
    "GET-messages": "/messages",
    "POST-message": "/message",
}
FAULTS = ("drop", "fail", "garbage", "hang", "slow")
COUNT = 2  # requests each fault spoils before it heals; a slow one, 1: a late answer is not asked again
DOWN_SECONDS = 4.0  # how long the whole agent is down
INIT_SECONDS = 3.0  # a delivery cell's agent initialises this long: the probe comes before the prompt
SLOW_SECONDS = 3.0  # the simulator's default slow_seconds
CLIENT_TIMEOUT = 5.0  # the operator's AgentAPI timeout: a hung request is over for it this much later
PROBE_AFTER = 2  # --agent-probe-after: seconds of a quiet stream before the operator asks GET /status
STEADY = 3.0  # an end state must hold this long (a status about to flip is not an end state)
END_BOUND = 60.0  # no wedge: a cell reaches its end state within this long of its fault healing
PAUSE_BOUND = 30.0  # a pause completes within this long, whatever the agent does
SETUP_BOUND = 90.0  # a fresh task is Active with its prompt delivered within this long


@dataclass(frozen=True)
class Cell:
    stage: str  # delivery | following | pause
    call: str  # a key of CALLS; "agent" (the whole agent down) or "no" (no fault)
    fault: str  # one of FAULTS; "down" or "fault"

    def __str__(self) -> str:
        return f"{self.call}-{self.fault}-{self.stage}"

    @property
    def name(self) -> str:
        return str(self).lower()  # the Task's (and its template's) name

    @property
    def path(self) -> str | None:
        return CALLS.get(self.call)

    @property
    def faulty(self) -> bool:
        return self.call != "no"

    @property
    def prompt(self) -> str:
        return f"Fix the flaky login test ({self})"

    @property
    def count(self) -> int:
        """How many requests the fault spoils."""
        return 1 if self.fault == "slow" else COUNT

    def behaviour(self, down: float = DOWN_SECONDS) -> dict[str, Any]:
        """The simulator keys that inject this cell's fault."""
        if self.path is not None:
            return {self.fault: {self.path: self.count}}
        return {"down": down} if self.fault == "down" else {}

    @property
    def lasts(self) -> float:
        """How long after a faulted request arrives it is over for the operator."""
        return {"hang": CLIENT_TIMEOUT, "slow": SLOW_SECONDS}.get(self.fault, 0.0)


def cells(stage: str) -> list[Cell]:
    matrix = [Cell(stage, call, fault) for call in CALLS for fault in FAULTS]
    return [*matrix, Cell(stage, "agent", "down"), Cell(stage, "no", "fault")]


@dataclass
class Outcome:
    """What one cell (or one kill test) showed: its problem, if any, and how long recovery took."""

    name: str
    stage: str
    problem: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def dump(self) -> dict[str, Any]:
        return {
            "cell": self.name,
            "stage": self.stage,
            "ok": self.problem is None,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "notes": self.notes,
            "problem": self.problem,
        }


# -- what a user watches: the tasks of a namespace, through one watch ---------------------------------


class TaskWatch:
    """Every Task of a namespace as the watch showed it, each version with when it came: what
    `kubectl get tasks -w` shows, without a poll per cell."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.api, self.namespace = tasks_api(kube), namespace
        self._versions: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {namespace}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        args = ("taskpod.dev", "v1alpha1", self.namespace, "tasks")
        while not self._stop.is_set():
            try:
                listed = self.api.list_namespaced_custom_object(*args)
                for body in listed["items"]:
                    self._add(body)
                stream = watch.Watch().stream(
                    self.api.list_namespaced_custom_object,
                    *args,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=10,
                )
                for event in stream:
                    self._add(event["object"])
                    if self._stop.is_set():
                        return
            except Exception:  # the API server away, a watch expired: list again
                time.sleep(0.2)

    def _add(self, body: dict[str, Any]) -> None:
        with self._changed:
            versions = self._versions.setdefault(body["metadata"]["name"], [])
            version = body["metadata"]["resourceVersion"]
            if not versions or versions[-1][1]["metadata"]["resourceVersion"] != version:
                versions.append((time.time(), body))
                self._changed.notify_all()

    def stop(self) -> None:
        self._stop.set()

    def steady(
        self, name: str, holds: Callable[[dict[str, Any]], bool], since: float, what: str, bound: float
    ) -> tuple[float, dict[str, Any]]:
        """When `holds` became and stayed true of the task (not before `since`), once it has held for
        STEADY seconds; fail after `bound` seconds, saying what the task showed."""
        deadline = time.time() + bound + STEADY
        with self._changed:
            while True:
                versions = self._versions.get(name, [])
                start: float | None = None
                for seen, body in reversed(versions):
                    if not holds(body):
                        break
                    start = max(seen, since)
                    if seen <= since:
                        break
                if start is not None and time.time() - start >= STEADY:
                    return start, versions[-1][1]
                if time.time() > deadline:
                    shown = describe(versions[-1][1]) if versions else "no task"
                    raise AssertionError(f"{name}: not {what} within {bound:.0f}s; it showed {shown}")
                self._changed.wait(0.2)


def describe(task: dict[str, Any]) -> str:
    """The parts of a task's status a user reads, in one line."""
    status = task.get("status") or {}
    conditions = {c["type"]: f"{c['status']} ({c.get('reason')})" for c in status.get("conditions", [])}
    return json.dumps(
        {
            "phase": status.get("phase"),
            "message": status.get("message"),
            "agent": status.get("agent"),
            "state": status.get("state"),
            "PromptDelivered": conditions.get("PromptDelivered"),
            "generation": [task["metadata"].get("generation"), status.get("observedGeneration")],
        }
    )


def caught_up(task: dict[str, Any]) -> bool:
    return bool((task.get("status") or {}).get("observedGeneration") == task["metadata"]["generation"])


def active(task: dict[str, Any], words: str | None = None) -> bool:
    """Active with a healthy agent and the prompt delivered (and showing `words`, if given)."""
    status = task.get("status") or {}
    delivered = [c["status"] for c in status.get("conditions", []) if c["type"] == "PromptDelivered"]
    return (
        caught_up(task)
        and status.get("phase") == "Active"
        and (status.get("agent") or {}).get("healthy") is True
        and delivered == ["True"]
        and (words is None or status.get("message") == words)
    )


def paused(task: dict[str, Any]) -> bool:
    return caught_up(task) and (task.get("status") or {}).get("phase") == "Paused"


# -- the agent, as the simulator shows it ------------------------------------------------------------


def epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def arrivals(url: str, path: str, since: float) -> list[float]:
    """When requests to `path` reached the agent (its /_sim/log), from `since` on."""
    log = httpx.get(url + "/_sim/log", timeout=5).json()["requests"]
    return [t for r in log if r["path"] == path and (t := epoch(r["time"])) >= since]


def reached(url: str, path: str, since: float, count: int) -> bool:
    """Whether `count` requests to `path` have reached the agent since `since`."""
    return len(arrivals(url, path, since)) >= count


def stable(url: str) -> bool:
    return bool(httpx.get(url + "/status", timeout=5).json()["status"] == "stable")


def answering(url: str) -> bool:
    try:
        return httpx.get(url + "/_sim/config", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def said(url: str, content: str, role: str = "agent") -> None:
    """The agent (or the user at its terminal) says something, as the agent's own work would."""
    post = httpx.post(url + "/_sim/config", json={"append_messages": [{"role": role, "content": content}]})
    post.raise_for_status()


def conversation(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


# -- a stage: a namespace, an operator and a watch; its cells run at once --------------------------------


class Stage:
    def __init__(self, kube: Kube, stage: str, directory: Path) -> None:
        self.kube, self.stage = kube, stage
        self.namespace = f"faults-{stage}-{secrets.token_hex(2)}"
        self.operator = Operator(kube.kubeconfig, [self.namespace], directory / f"operator-{stage}.log")

    def __enter__(self) -> Stage:
        create_namespace(self.kube, self.namespace)
        template_with(self.kube, self.namespace)  # "default": an agent with no fault
        self.operator.start("--agent-probe-after", str(PROBE_AFTER))
        self.watch = TaskWatch(self.kube, self.namespace)
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.stop()
        self.operator.stop()
        delete_namespace(self.kube, self.namespace)

    def run(self, drive: Callable[[Stage, Cell, Outcome], None]) -> dict[str, Outcome]:
        todo = cells(self.stage)
        with ThreadPoolExecutor(len(todo), thread_name_prefix=self.stage) as pool:
            done = list(pool.map(partial(self._one, drive), todo))
        return {outcome.name: outcome for outcome in done}

    def _one(self, drive: Callable[[Stage, Cell, Outcome], None], cell: Cell) -> Outcome:
        outcome = Outcome(str(cell), cell.stage)
        try:
            drive(self, cell, outcome)
        except Exception as exc:
            outcome.problem = f"{exc}\n--- operator log about {cell.name} ---\n{self.log_about(cell.name)}"
        return outcome

    def log_about(self, name: str, lines: int = 12) -> str:
        log = self.operator.log.read_text(errors="replace").splitlines() if self.operator.log.exists() else []
        return "\n".join([line for line in log if f"/{name}" in line][-lines:])

    # What a cell does, as a user would.

    def start(self, cell: Cell, template: str = "default") -> str:
        """Create the cell's task; its agent's URL once its pod has an IP."""
        create_task(self.kube, self.namespace, cell.name, prompt=cell.prompt, template=template)
        return self.agent(cell.name)

    def agent(self, name: str) -> str:
        return wait_for(partial(_pod_url, self.kube, self.namespace, name), SETUP_BOUND, f"{name}-0 to run")

    def ready(self, cell: Cell) -> float:
        """Wait until the task is Active with its prompt delivered and its agent idle after its reply."""
        words = f"Done: {cell.prompt}"
        at, _ = self.watch.steady(cell.name, partial(active, words=words), 0, "Active and idle", SETUP_BOUND)
        return at

    def healed(self, url: str, cell: Cell, since: float) -> float:
        """When the fault set at `since` healed: its last faulted request over, or the agent back up."""
        if cell.path is None:
            back = since + (DOWN_SECONDS if cell.fault == "down" else 0.0)
            wait_for(lambda: time.time() >= back and answering(url), 60, "the agent answering again")
            return max(back, time.time() - 0.2) if cell.faulty else back
        path = cell.path

        def spoilt() -> list[float] | None:
            seen = arrivals(url, path, since)
            return seen if len(seen) >= cell.count else None

        seen = wait_for(spoilt, END_BOUND, f"{cell.count} {cell.call} requests reaching the agent")
        return seen[cell.count - 1] + cell.lasts

    def settle(self, cell: Cell, since: float, words: str | None = None) -> tuple[float, dict[str, Any]]:
        """The end state: Active, healthy, delivered (showing `words`), steadily, from `since` on."""
        what = "Active with a healthy agent and the prompt delivered" + (
            f", showing {words!r}" if words else ""
        )
        return self.watch.steady(cell.name, partial(active, words=words), since, what, END_BOUND)

    def prompt_once(self, cell: Cell) -> None:
        count = prompts_in(agent_messages(self.kube, self.namespace, cell.name), cell.prompt)
        assert count == 1, f"{cell.name}: the prompt is in the agent's log {count} times"

    def snapshot(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The snapshot ConfigMap's taken-at annotation and messages, or None."""
        try:
            cm = self.kube.core.read_namespaced_config_map(f"{name}-snapshot", self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cm.metadata.annotations or {}), json.loads(cm.data["snapshot.json"])["data"]["messages"]

    def skipped(self, name: str, since: float) -> list[str]:
        """The messages of SnapshotSkipped Events about the task since `since`."""
        events = self.kube.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [
            e.message or ""
            for e in events
            if e.reason == "SnapshotSkipped"
            and (e.last_timestamp or e.event_time or e.metadata.creation_timestamp).timestamp() >= since - 1
        ]


def _pod_url(kube: Kube, namespace: str, name: str) -> str | None:
    pod = kube.core.read_namespaced_pod(f"{name}-0", namespace)
    ready = pod.status.pod_ip and pod.status.phase == "Running" and not pod.metadata.deletion_timestamp
    return agent_url(kube, namespace, name) if ready else None


# -- the three stages --------------------------------------------------------------------------------


def deliver(stage: Stage, cell: Cell, outcome: Outcome) -> None:
    """The fault is there from the agent's start: the prompt must still arrive, once."""
    agent = {"init_seconds": INIT_SECONDS, **cell.behaviour()}
    create_template(stage.kube, stage.namespace, cell.name, annotations={SIM: json.dumps(agent)})
    started = time.time()
    url = stage.start(cell, template=cell.name)
    heal = stage.healed(url, cell, 0.0) if cell.faulty else started
    end, _ = stage.settle(cell, heal, words=f"Done: {cell.prompt}")
    stage.prompt_once(cell)
    outcome.seconds = {"from_heal": max(end - heal, 0.0)} if cell.faulty else {}
    outcome.seconds["from_create"] = end - started


def follow(stage: Stage, cell: Cell, outcome: Outcome) -> None:
    """Set the fault on a followed, idle agent, make the operator use the call, then check that the
    task shows the agent's newest words."""
    url = stage.start(cell)
    stage.ready(cell)
    set_at = time.time()
    last_reply: str | None = None
    if cell.call == "GET-events":
        sim_config(stage.kube, stage.namespace, cell.name, **cell.behaviour(), down=0)  # cuts the stream
    elif cell.call == "GET-messages":
        sim_config(stage.kube, stage.namespace, cell.name, **cell.behaviour())
        for turn in range(1, cell.count + 1):  # each turn ends idle: the idle snapshot reads /messages
            last_reply = take_turn(url, f"Turn {turn} of {cell}")
            wait_for(partial(reached, url, "/messages", set_at, turn), 30, "the idle snapshot's read")
    elif cell.call == "POST-message":
        sim_config(stage.kube, stage.namespace, cell.name, **cell.behaviour())
        last_reply = send_until_healed(stage, cell, url, set_at, outcome)
    else:  # /status (the probe comes by itself), the whole agent down, or no fault
        sim_config(stage.kube, stage.namespace, cell.name, **cell.behaviour())
    heal = stage.healed(url, cell, set_at)
    time.sleep(max(heal - time.time(), 0.0))
    words = f"Newest words of {cell}"
    said(url, words)
    end, _ = stage.settle(cell, heal, words=words)
    stage.prompt_once(cell)
    outcome.seconds = {"from_heal": max(end - heal, 0.0), "from_fault": end - set_at}
    if last_reply is not None:  # nothing lost: the conversation as of the last idle is kept

        def kept() -> bool:
            snap = stage.snapshot(cell.name)
            return snap is not None and last_reply in [m["content"] for m in snap[1]]

        wait_for(kept, 20, f"the snapshot of {cell.name} to hold the reply {last_reply!r} of its last idle")


def take_turn(url: str, content: str) -> str:
    """The user types at the agent's terminal: it works, replies and goes idle. Returns its reply."""

    def sent() -> bool:
        return httpx.post(url + "/message", json={"type": "user", "content": content}, timeout=5).is_success

    wait_for(sent, 30, f"the agent to take {content!r}")
    wait_for(partial(stable, url), 30, "the reply")
    return f"Done: {content}"


def send_until_healed(stage: Stage, cell: Cell, url: str, since: float, outcome: Outcome) -> str:
    """A user sends input with `kubectl task send`'s code; after an error they send the same again, and
    they go on until the fault has had its COUNT requests. Each input must reach the agent once."""
    inputs: list[str] = []
    failed = False
    while failed or len(arrivals(url, "/message", since)) < cell.count:
        if not failed:
            inputs.append(f"Input {len(inputs) + 1} of {cell}")
        try:
            taskkube.run(taskops.send(stage.namespace, cell.name, inputs[-1], timeout=60, progress=_quiet))
            failed = False
        except (AgentError, AgentUnavailable) as exc:
            outcome.notes.append(f"send refused: {str(exc)[:120]}")
            failed = True
            time.sleep(1)
    wait_for(partial(stable, url), 30, "the reply")
    messages = agent_messages(stage.kube, stage.namespace, cell.name)
    counts = {text: prompts_in(messages, text) for text in inputs}
    assert set(counts.values()) == {1}, f"inputs in the agent's log (each must be once): {counts}"
    return f"Done: {inputs[-1]}"


def _quiet(_: str) -> None:
    pass


def pause(stage: Stage, cell: Cell, outcome: Outcome) -> None:
    """Pause with the faulted call in use: Paused in bounded time with the workspace at zero and the
    conversation kept (or a SnapshotSkipped saying why); resumed whole, the prompt not sent again."""
    words: str | None = None
    if cell.call == "POST-message":  # the prompt's delivery is being refused when the pause comes
        create_template(
            stage.kube, stage.namespace, cell.name, annotations={SIM: json.dumps(cell.behaviour())}
        )
        url = stage.start(cell, template=cell.name)
        wait_for(lambda: arrivals(url, "/message", 0.0), 60, "the prompt's POST /message")
        before = agent_messages(stage.kube, stage.namespace, cell.name)
    else:
        url = stage.start(cell)
        stage.ready(cell)
        words = f"Said before the pause by {cell}"
        said(url, words)
        before = agent_messages(stage.kube, stage.namespace, cell.name)  # read before /messages is faulted
        set_at = time.time()
        sim_config(stage.kube, stage.namespace, cell.name, **cell.behaviour(down=60))
        if cell.call == "GET-events":
            sim_config(stage.kube, stage.namespace, cell.name, down=0)  # the follower reconnects into it
            wait_for(lambda: arrivals(url, "/events", set_at), 30, "the follower's faulted reconnect")
        elif cell.call == "GET-status":
            wait_for(lambda: arrivals(url, "/status", set_at), 30, "the operator's faulted probe")
    asked = time.time()
    patch_task(stage.kube, stage.namespace, cell.name, {"paused": True})
    at, task = stage.watch.steady(cell.name, paused, asked, "Paused", PAUSE_BOUND)
    outcome.seconds["pause"] = at - asked
    running = _running_pods(stage.kube, stage.namespace, cell.name)
    assert running == [], f"Paused, but its pods {running} run"
    outcome.notes.append(check_snapshot(stage, cell, task, asked, words or cell.prompt, before))

    asked = time.time()
    patch_task(stage.kube, stage.namespace, cell.name, {"paused": False})
    at, _ = stage.settle(cell, asked)
    outcome.seconds["resume"] = at - asked
    after = agent_messages(stage.kube, stage.namespace, cell.name)
    kept = conversation(after)[: len(before)]
    assert kept == conversation(before), f"the conversation before the pause {before} is not in {after}"
    stage.prompt_once(cell)


def check_snapshot(
    stage: Stage, cell: Cell, task: dict[str, Any], asked: float, newest: str, before: list[dict[str, Any]]
) -> str:
    """The pause kept the conversation up to `newest`, or a SnapshotSkipped Event says why not (the
    operator waits at most 5 s for the agent). Returns what happened, for the table."""
    snap = stage.snapshot(cell.name)
    if snap is not None and newest in [m["content"] for m in snap[1]]:
        record = (task.get("status") or {}).get("logSnapshot") or {}
        annotations, messages = snap
        assert record.get("takenAt") == annotations.get("taskpod.dev/taken-at"), (
            f"status.logSnapshot {record} is not the ConfigMap's snapshot (taken at {annotations})"
        )
        assert record.get("messages") == len(messages), f"status.logSnapshot {record}, {len(messages)} kept"
        return "fresh snapshot"
    if cell.call == "POST-message" and not (task.get("status") or {}).get("prompt"):
        return "the prompt not delivered before the pause: nothing to keep"
    skipped = stage.skipped(cell.name, asked)
    assert any(m.strip() for m in skipped), (
        f"no snapshot holding {newest!r}, and no SnapshotSkipped Event saying why: {skipped}"
    )
    faulted = cell.fault == "down" or cell.call == "GET-messages"
    why = skipped[-1][:90]
    return f"SnapshotSkipped: {why}" if faulted else f"SnapshotSkipped, /messages not faulted: {why}"


# -- fixtures: the stages, each run once for its cells' tests; the table of recovery times ------------


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Outcome]]:
    rows: list[Outcome] = []
    yield rows
    path = tmp_path_factory.mktemp("faults") / "recovery.json"
    path.write_text(json.dumps([row.dump() for row in rows], indent=2))
    print("\n" + render(rows) + f"\nrecovery times as JSON: {path}")


def render(rows: list[Outcome]) -> str:
    lines = [f"{'cell':34} {'result':6} seconds"]
    for row in rows:
        times = ", ".join(f"{k} {v:.1f}" for k, v in row.seconds.items())
        lines.append(
            f"{row.name:34} {'ok' if row.problem is None else 'FAIL':6} {times}  {'; '.join(row.notes)}"
        )
    lines.append("")
    stages = list(dict.fromkeys(row.stage for row in rows))
    for stage in stages:
        measured = [row for row in rows if row.stage == stage and row.seconds]
        for key in list(dict.fromkeys(k for row in measured for k in row.seconds)):
            values = sorted((row.seconds[key], row.name) for row in measured if key in row.seconds)
            slowest = ", ".join(f"{name} {v:.1f}" for v, name in values[-3:][::-1])
            median = statistics.median(v for v, _ in values)
            lines.append(f"{stage} {key}: p50 {median:.1f} s, max {values[-1][0]:.1f} s (slowest: {slowest})")
    return "\n".join(lines)


def roomy(kube: Kube) -> Kube:
    """The cluster with an API client whose pool has a connection for every cell's thread."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 64
    return Kube(kube.kubeconfig, client.ApiClient(cfg), kube.local)


@pytest.fixture(scope="module")
def user_credentials(kube: Kube) -> Iterator[None]:
    """taskpod.client.tasks (what `kubectl task send` runs) uses the kubeconfig of the cluster under test."""
    with pytest.MonkeyPatch.context() as patch:
        act_as_user(kube, patch)
        yield
    taskkube.connection.cache_clear()


def run_stage(
    name: str,
    drive: Callable[[Stage, Cell, Outcome], None],
    kube: Kube,
    table: list[Outcome],
    tmp: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    """Every cell of a stage at once, in its own namespace with its own operator; their outcomes."""
    directory = tmp.mktemp(name)
    with Stage(roomy(kube), name, directory) as stage:
        outcomes = stage.run(drive)
    table.extend(outcomes.values())
    print(f"the operator's log of the {name} stage: {stage.operator.log}")
    return outcomes


@pytest.fixture(scope="module")
def delivery(
    kube: Kube,
    crds: list[str],
    simulator: Path,
    table: list[Outcome],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    return run_stage("delivery", deliver, kube, table, tmp_path_factory)


@pytest.fixture(scope="module")
def following(
    kube: Kube,
    crds: list[str],
    simulator: Path,
    table: list[Outcome],
    user_credentials: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    return run_stage("following", follow, kube, table, tmp_path_factory)


@pytest.fixture(scope="module")
def pausing(
    kube: Kube,
    crds: list[str],
    simulator: Path,
    table: list[Outcome],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    return run_stage("pause", pause, kube, table, tmp_path_factory)


def _verdict(outcome: Outcome) -> None:
    assert outcome.problem is None, outcome.problem


@pytest.mark.parametrize("cell", cells("delivery"), ids=str)
def test_a_fault_during_delivery(cell: Cell, delivery: dict[str, Outcome]) -> None:
    _verdict(delivery[str(cell)])


@pytest.mark.parametrize("cell", cells("following"), ids=str)
def test_a_fault_while_following(cell: Cell, following: dict[str, Outcome]) -> None:
    _verdict(following[str(cell)])


@pytest.mark.parametrize("cell", cells("pause"), ids=str)
def test_a_fault_at_pause(cell: Cell, pausing: dict[str, Outcome]) -> None:
    _verdict(pausing[str(cell)])


# -- the API server killed and started again ---------------------------------------------------------

API_DOWN_SECONDS = 4.0


class ControlPlane:
    """The local control plane, kept as a kubelet or systemd keeps one: a component that exits is started
    again (LocalCluster.revive)."""

    def __init__(self, cluster: LocalCluster | None) -> None:
        if cluster is None:
            pytest.skip("needs the local control plane, whose API server a test may kill")
        self.cluster = cluster
        self.revived: list[str] = []

    def bounce_api_server(self) -> float:
        """Kill the API server, keep it down a few seconds, start it; returns when it is ready again."""
        self.cluster.kill("kube-apiserver")
        try:
            time.sleep(API_DOWN_SECONDS)
        finally:
            self.cluster.start("kube-apiserver")  # waits for /readyz
        return time.time()

    def revive(self) -> None:
        self.revived += self.cluster.revive()

    def wait(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
        explain: Callable[[], object] | None = None,
    ) -> T:
        """wait_for(check), keeping the control plane running meanwhile."""

        def supervised() -> T | None:
            self.revive()
            return check()

        return wait_for(supervised, timeout, what, explain=explain)

    def healthy_again(self, kube: Kube, namespace: str) -> None:
        """The cluster works again for the tests after this one: nodes Ready, and a new task goes Active."""

        def nodes_ready() -> bool:
            nodes = kube.core.list_node().items
            return bool(nodes) and all(
                any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
                for n in nodes
            )

        self.wait(nodes_ready, 90, "every node Ready again")
        create_task(kube, namespace, "afterwards", prompt="Check the cluster works")

        def seen() -> object:  # where it stopped: the operator's status, or the pod's (kwok's) part
            pods = kube.core.list_namespaced_pod(namespace, label_selector="taskpod.dev/task=afterwards")
            return {
                "status": get_task(kube, namespace, "afterwards").get("status"),
                "pods": [(p.metadata.name, p.status.phase, p.spec.node_name) for p in pods.items],
                "revived": self.revived,
            }

        self.wait(partial(settled, kube, namespace, "afterwards"), SETUP_BOUND, "a new task Active", seen)


def settled(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    task = get_task(kube, namespace, name)
    return task if active(task) else None


@contextlib.contextmanager
def recording(table: list[Outcome], name: str, stage: str) -> Iterator[Outcome]:
    """A row of the table for a test outside the matrix, with its problem if it fails."""
    outcome = Outcome(name, stage)
    table.append(outcome)
    try:
        yield outcome
    except Exception as exc:
        outcome.problem = str(exc)
        raise


def test_the_api_server_killed_mid_delivery_delivers_the_prompt_once(
    kube: Kube,
    namespace: str,
    simulator: Path,
    operator: Operator,
    local_cluster: LocalCluster | None,
    table: list[Outcome],
) -> None:
    plane = ControlPlane(local_cluster)
    template_with(kube, namespace, post_delay_seconds=3)  # the POST is in flight while the server is away
    prompt = "Upgrade the ORM while the API server is away"
    create_task(kube, namespace, "midway", prompt=prompt)
    url = wait_for(partial(_pod_url, kube, namespace, "midway"), 60, "midway-0 to run")
    wait_for(lambda: arrivals(url, "/message", 0.0), 60, "the prompt's POST /message")
    with recording(table, "api-server-killed-mid-delivery", "api-server") as outcome:
        try:
            back = plane.bounce_api_server()
            plane.wait(partial(settled, kube, namespace, "midway"), END_BOUND, "Active, the prompt delivered")
            outcome.seconds["from_api_server_ready"] = time.time() - back
            assert prompts_in(agent_messages(kube, namespace, "midway"), prompt) == 1
        finally:
            plane.healthy_again(kube, namespace)
            outcome.notes += [f"{name} exited; started again" for name in plane.revived]


def test_the_api_server_killed_mid_pause_pauses_with_the_snapshot(
    kube: Kube,
    namespace: str,
    simulator: Path,
    operator: Operator,
    local_cluster: LocalCluster | None,
    table: list[Outcome],
) -> None:
    plane = ControlPlane(local_cluster)
    template_with(kube, namespace)
    prompt = "Refactor the auth module"
    create_task(kube, namespace, "halfway", prompt=prompt)
    wait_for(partial(settled, kube, namespace, "halfway"), SETUP_BOUND, "Active with the prompt delivered")
    url = agent_url(kube, namespace, "halfway")
    wait_for(partial(said_last, url, f"Done: {prompt}"), 30, "the agent's reply")
    said(url, "Said just before the pause")
    before = agent_messages(kube, namespace, "halfway")
    sim_config(kube, namespace, "halfway", slow={"/messages": 1}, slow_seconds=2)  # the pause's read is slow
    asked = time.time()
    patch_task(kube, namespace, "halfway", {"paused": True})
    wait_for(lambda: arrivals(url, "/messages", asked), 30, "the pause's snapshot read")
    with recording(table, "api-server-killed-mid-pause", "api-server") as outcome:
        try:
            back = plane.bounce_api_server()
            # The operator's part: the conversation kept and recorded, the workspace pod deleted.
            plane.wait(partial(_paused_by_operator, kube, namespace, "halfway"), END_BOUND, "pod deleted")
            outcome.seconds["pod deleted, snapshot kept"] = time.time() - back
            kept, _ = _kept(kube, namespace, "halfway")
            assert kept[-1] == "Said just before the pause", kept
            # The pod gone: after an API server restart, the kubelet's part (kwok's) can take a while.
            plane.wait(partial(_paused, kube, namespace, "halfway"), 120, "Paused")
            outcome.seconds["Paused"] = time.time() - back
            patch_task(kube, namespace, "halfway", {"paused": False})
            plane.wait(partial(settled, kube, namespace, "halfway"), END_BOUND, "Active again")
            after = agent_messages(kube, namespace, "halfway")
            assert conversation(after)[: len(before)] == conversation(before), (before, after)
            assert prompts_in(after, prompt) == 1
        finally:
            plane.healthy_again(kube, namespace)
            outcome.notes += [f"{name} exited; started again" for name in plane.revived]


def _kept(kube: Kube, namespace: str, name: str) -> tuple[list[str], str]:
    """The contents of the messages in a task's snapshot ConfigMap, and when it was taken."""
    cm = kube.core.read_namespaced_config_map(f"{name}-snapshot", namespace)
    messages = json.loads(cm.data["snapshot.json"])["data"]["messages"]
    return [m["content"] for m in messages], str(cm.metadata.annotations["taskpod.dev/taken-at"])


def _running_pods(kube: Kube, namespace: str, name: str) -> list[str]:
    """The task's workspace pods that are not on their way out."""
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"taskpod.dev/task={name}").items
    return [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]


def _paused_by_operator(kube: Kube, namespace: str, name: str) -> bool:
    """The workspace pod deleted and status.logSnapshot recording the snapshot ConfigMap's."""
    if _running_pods(kube, namespace, name):
        return False
    _, taken = _kept(kube, namespace, name)
    return bool(
        (get_task(kube, namespace, name).get("status") or {}).get("logSnapshot", {}).get("takenAt") == taken
    )


def said_last(url: str, content: str) -> bool:
    return bool(httpx.get(url + "/messages", timeout=5).json()["messages"][-1]["content"] == content)


def _paused(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    task = get_task(kube, namespace, name)
    return task if paused(task) else None


# -- the operator SIGKILLed at random points of pauses and resumes -------------------------------------

KILL_ROUNDS = 5
KILL_TASKS = 3


def test_pauses_and_resumes_complete_across_operator_kills(
    kube: Kube, namespace: str, simulator: Path, operator: Operator, table: list[Outcome]
) -> None:
    """(test_agent.py kills the operator during deliveries.) Each round pauses every task, SIGKILLs the
    operator at a random moment, restarts it, and then does the same with a resume. Each pause's
    snapshot read is slow by a random amount, and the pause's kill comes about when one of them ends."""
    template_with(kube, namespace)
    names = [f"kill-{i}" for i in range(KILL_TASKS)]
    for name in names:
        create_task(kube, namespace, name, prompt=f"Task {name}")
    for name in names:
        wait_for(partial(settled, kube, namespace, name), SETUP_BOUND, f"{name} Active, prompt delivered")
    rng = random.Random(14)
    with recording(table, "operator-killed-in-pauses-and-resumes", "operator-kill") as outcome:
        for round_ in range(KILL_ROUNDS):
            words = {name: f"Round {round_} of {name}" for name in names}
            before = {}
            slow = [rng.uniform(0.2, 1.5) for _ in names]
            for name, seconds in zip(names, slow, strict=True):
                url = agent_url(kube, namespace, name)
                wait_for(partial(stable, url), 30, f"{name}'s agent idle")
                said(url, words[name])
                before[name] = agent_messages(kube, namespace, name)
                sim_config(kube, namespace, name, slow={"/messages": 1}, slow_seconds=seconds)
            for name in names:
                patch_task(kube, namespace, name, {"paused": True})
            # Around the end of one task's snapshot read, where the snapshot is kept, the workspace scaled
            # and the status written in quick succession.
            restarted = kill_and_restart(operator, slow[round_ % len(names)] + rng.uniform(0, 0.4), outcome)
            for name in names:
                task = wait_for(partial(_paused, kube, namespace, name), PAUSE_BOUND, f"{name} Paused")
                assert _running_pods(kube, namespace, name) == []
                kept, taken = _kept(kube, namespace, name)
                assert kept[-1] == words[name], f"round {round_}: the snapshot of {name} kept {kept}"
                record = task["status"]["logSnapshot"]
                assert record["takenAt"] == taken, (
                    f"round {round_}: {name} is Paused with status.logSnapshot {record}, but its ConfigMap"
                    f" holds the snapshot taken at {taken}"
                )
            _worst(outcome, "all Paused after the restart", time.time() - restarted)
            for name in names:
                patch_task(kube, namespace, name, {"paused": False})
            restarted = kill_and_restart(operator, rng.uniform(0.0, 2.5), outcome)
            for name in names:
                wait_for(partial(settled, kube, namespace, name), END_BOUND, f"round {round_}: {name} Active")
                after = agent_messages(kube, namespace, name)
                assert conversation(after)[: len(before[name])] == conversation(before[name]), name
                assert prompts_in(after, f"Task {name}") == 1, f"round {round_}: {name}'s prompt sent again"
            _worst(outcome, "all Active after the restart", time.time() - restarted)


def _worst(outcome: Outcome, key: str, seconds: float) -> None:
    """Keep the slowest round's time."""
    outcome.seconds[key] = max(outcome.seconds.get(key, 0.0), seconds)


def kill_and_restart(operator: Operator, after: float, outcome: Outcome) -> float:
    """SIGKILL the operator `after` seconds from now, start it again; returns when it was killed."""
    time.sleep(after)
    operator.kill()
    killed = time.time()
    operator.start()
    outcome.notes.append(f"killed {after:.2f}s in")
    return killed
