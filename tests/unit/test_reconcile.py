"""The reconciler: one status patch when something changed and none otherwise, even while the watch still
shows a version older than our own last write; and the workspace's pod and claim, created, stopped,
replaced and recreated as the task, its template and the cluster ask, each exactly once although the
watches lag behind our own writes."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from taskpod import kube
from taskpod.agentapi import AgentError, AgentMessage
from taskpod.api.models import AgentState, AgentStatus, InvalidTask, Task, TaskTemplate
from taskpod.controller import reconcile, reports
from taskpod.controller.handlers import task_entry
from taskpod.controller.reconcile import Options, Reconciler, Views
from taskpod.core import naming, snapshots, workspace
from taskpod.core.lifecycle import LIFETIME_LABEL, AgentView, ClaimView, NodeView, PodView

NS, NAME = "team", "fix-login"
KEY = (NS, NAME)
POD, CLAIM = f"{NAME}-0", f"workspace-{NAME}-0"
T = TypeVar("T")


class FakeIndex:
    def __init__(self, values: dict[Any, Any]) -> None:
        self.values = values

    def get(self, key: Any, default: Any = None) -> Any:
        return [self.values[key]] if key in self.values else default

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


def tasks_index(bodies: dict[Any, dict[str, Any]]) -> FakeIndex:
    """A tasks index as the operator's holds it: each body parsed at the edge (handlers.task_entry)."""
    return FakeIndex({key: task_entry(body) for key, body in bodies.items()})


class FakeIndexOfMany(FakeIndex):
    """An index whose keys each hold several values, as a Kopf index does."""

    def get(self, key: Any, default: Any = None) -> Any:
        return list(self.values[key]) if key in self.values else default


class FakeAgent:
    """An agent that is up, stable and has an empty conversation; records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def messages(self) -> list[Any]:
        return []

    async def send(self, content: str, kind: str = "user") -> None:
        self.sent.append(content)


class FakeAgents:
    def __init__(self) -> None:
        self.agent = FakeAgent()
        self.views = {KEY: AgentView(lifetime=1, answered=True, healthy=True, status=AgentStatus.STABLE)}
        self.idle_pending: set[Any] = set()
        self.followed: list[Any] = []  # the target of each reconcile

    def ensure(self, key: Any, target: Any, answered_before: bool = False) -> None:
        self.followed.append(target)

    def client(self, key: Any) -> FakeAgent:
        return self.agent

    def target(self, key: Any) -> Any:
        """The agent followed last, as the reconciles asked for it (its lifetime, say)."""
        return next((t for t in reversed(self.followed) if t is not None), None)


class FakeApi:
    """Stands in for the API server: remembers the task's status and the workspace's objects, and
    records every write."""

    def __init__(self) -> None:
        self.version = 10
        self.status: dict[str, Any] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.applies: list[dict[str, Any]] = []  # server-side applies (snapshot ConfigMaps)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, name): what the server holds
        self.created: list[dict[str, Any]] = []  # as created, with the uid the server gave
        self.calls: list[tuple[str, ...]] = []  # every write but status, in order
        self.gone: set[str] = set()  # uids of pods deleted
        self.refusal: kube.ApiException | None = None  # the answer to a create, while set
        self.task_deleted = False  # the task is gone: reads and status writes answer 404
        self.configmap_reads = 0
        self._uids = itertools.count(1)

    async def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if self.task_deleted:
            raise _failure(404, f'tasks.taskpod.dev "{name}" not found', reason="NotFound")
        self.status_patches.append(copy.deepcopy(status))
        self.version += 1
        self.status = _merge(self.status, status)
        return {"metadata": {"resourceVersion": str(self.version)}, "status": copy.deepcopy(self.status)}

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"]))
        self.applies.append(obj)
        return obj

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        where = (obj["kind"], obj["metadata"]["name"])
        self.calls.append(("create", *where))
        if self.refusal is not None:
            raise self.refusal
        if where in self.objects:
            raise _failure(409, f'{obj["kind"]} "{where[1]}" already exists', reason="AlreadyExists")
        made = copy.deepcopy(obj)
        made["metadata"]["uid"] = f"{obj['kind'].lower()}-{next(self._uids)}"
        self.objects[where] = made
        self.created.append(made)
        return copy.deepcopy(made)

    async def adopt(self, obj: Mapping[str, Any], owner: dict[str, Any], uid: str) -> dict[str, Any]:
        where = (obj["kind"], obj["metadata"]["name"])
        self.calls.append(("adopt", *where, uid))
        held = self.objects[where]
        assert held["metadata"]["uid"] == uid, "adopted a successor of the same name"
        held["metadata"]["ownerReferences"] = [owner]
        return copy.deepcopy(held)

    async def delete_task_once(self, namespace: str, name: str, uid: str) -> bool:
        self.calls.append(("delete", "Task", name, uid))
        self.task_deleted = True
        return True

    async def delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        """True unless that pod is known to be gone: deleted before, or another holds its name."""
        self.calls.append(("delete", "Pod", name, uid))
        held = self.objects.get(("Pod", name))
        if uid in self.gone or (held is not None and held["metadata"].get("uid") != uid):
            return False
        self.objects.pop(("Pod", name), None)
        self.gone.add(uid)
        return True

    async def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        if self.task_deleted:
            raise _failure(404, f'tasks.taskpod.dev "{name}" not found', reason="NotFound")
        return task_body(str(self.version), self.status)

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.configmap_reads += 1
        return None

    def pods_created(self) -> list[dict[str, Any]]:
        return [o for o in self.created if o["kind"] == "Pod"]

    def deletes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == "delete"]


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _failure(status: int, message: str, cause: str = "", reason: str = "") -> kube.ApiException:
    exc = kube.ApiException(status=status, reason="x")
    causes = [{"reason": cause}] if cause else []
    body = {"kind": "Status", "message": message, "details": {"causes": causes}}
    if reason:
        body["reason"] = reason
    exc.body = json.dumps(body)
    return exc


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def task_body(version: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": NAME, "namespace": NS, "uid": "u1", "generation": 1, "resourceVersion": version},
        "spec": {"prompt": "Fix the flaky login test"},
        "status": status or {},
    }


def paused_body(version: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = task_body(version, status)
    body["spec"]["paused"], body["metadata"]["generation"] = True, 2
    return body


def resumed_body(version: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = task_body(version, status)
    body["metadata"]["generation"] = 3
    return body


def template(image: str = "agent:1", version: str = "1") -> TaskTemplate:
    return TaskTemplate.model_validate(
        {
            "metadata": {"name": "default", "namespace": NS, "resourceVersion": version},
            "spec": {"pod": {"image": image}},
        }
    )


def running(body: Mapping[str, Any], uid: str = "p1") -> PodView:
    """A pod as the watch shows it once it runs, with its agent answering at 127.1.0.5."""
    shown = copy.deepcopy(dict(body))
    shown["metadata"]["uid"] = uid
    shown["spec"]["nodeName"] = "n0"
    shown["status"] = {
        "phase": "Running",
        "podIP": "127.1.0.5",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return PodView.parse(shown)


def views(task: dict[str, Any], api: FakeApi) -> Views:
    """An Active workspace whose pod and claim are what the operator would make: nothing to do."""
    made_of = template()
    parsed = Task.model_validate(task)
    return Views(
        tasks=tasks_index({KEY: task}),
        templates=FakeIndex({(NS, "default"): made_of}),
        pods=FakeIndex({KEY: running(workspace.pod(parsed, made_of, 1))}),
        claims=FakeIndex({KEY: ClaimView(CLAIM, uid="c1", owner_uid="u1")}),
        nodes=FakeIndex({"n0": NodeView("n0", ready=True)}),
    )


def no_workspace(task: dict[str, Any], api: FakeApi) -> Views:
    """A task whose workspace the watches show nothing of (yet)."""
    v = views(task, api)
    v.pods, v.claims = FakeIndex({}), FakeIndex({})
    return v


def watch_catches_up(v: Views, api: FakeApi, body: Callable[..., dict[str, Any]] = task_body) -> Views:
    """The watches show what the API server holds: the task's status and the workspace as created."""
    v.tasks = tasks_index({KEY: body(str(api.version), api.status)})
    pod, claim = api.objects.get(("Pod", POD)), api.objects.get(("PersistentVolumeClaim", CLAIM))
    v.pods = FakeIndex({KEY: PodView.parse(pod)} if pod else {})
    v.claims = FakeIndex({KEY: ClaimView.parse(claim)} if claim else {})
    return v


def reconciler_with(events: list[str], api: FakeApi, **options: Any) -> Reconciler:
    """A reconciler whose status writes go at once, unless `status_hold` says otherwise: each test of a
    step sees its write; the tests of holds turn them on."""
    options = {"status_hold": 0.0, **options}

    def event(task: Task | InvalidTask, *, type: str, reason: str, message: str) -> None:
        events.append(reason)

    r = Reconciler(event=event, api=api, options=Options(**options))
    r.agents = FakeAgents()  # type: ignore[assignment]
    return r


def reconciler_told_the_prompt(events: list[str], api: FakeApi) -> Reconciler:
    """A reconciler whose agent's conversation is the prompt, said once."""
    reconciler = reconciler_with(events, api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    conversation = [AgentMessage(0, "user", "Fix the flaky login test", "2026-11-29T10:00:01Z")]
    agents.agent.messages = lambda: _async(conversation)
    return reconciler


def telling(reconciler: Reconciler) -> list[tuple[str, str, str]]:
    """Every Event the reconciler tells from now on: type, reason and message."""
    told: list[tuple[str, str, str]] = []
    before = reconciler.event

    def event(task: Task | InvalidTask, *, type: str, reason: str, message: str) -> None:
        told.append((type, reason, message))
        before(task, type=type, reason=reason, message=message)

    reconciler.event = event
    return told


def run(reconciler: Reconciler, v: Views, *, if_changed: bool = False) -> None:
    asyncio.run(reconciler.reconcile(KEY, v, if_changed=if_changed))


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock a test moves on: back-offs, retries and trust periods run out at once."""

    def __init__(self) -> None:
        super().__init__()
        self.ahead = 0.0

    def time(self) -> float:
        return super().time() + self.ahead


def on_a_clock(scenario: Callable[[ClockLoop], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=ClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ClockLoop)
        return runner.run(scenario(loop))


async def after(loop: ClockLoop, seconds: float) -> None:
    """Move the test's clock on by `seconds`, and let what came due run: timers, then the reconciles
    they queue (each takes a few turns of the loop)."""
    loop.ahead += seconds
    for _ in range(50):
        await asyncio.sleep(0)


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return dict(next(c for c in status["conditions"] if c["type"] == kind))


def lifetime_of(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["labels"][LIFETIME_LABEL])


async def _async(value: Any) -> Any:
    return value


def _one_value(index: Any) -> Any:
    return next(iter(index.values.values()))


# -- status: written once, when something changed ---------------------------------------------------


def test_first_reconcile_writes_status_once_and_tells_the_story(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    run(reconciler, views(task_body("5"), api))
    assert len(api.status_patches) == 1
    assert api.status_patches[0]["phase"] == "Active"
    assert api.status["workspace"] == {"claim": CLAIM, "pod": POD, "podIP": "127.1.0.5", "lifetime": 1}
    assert api.calls == []  # pod and claim already as wanted: nothing to create, adopt or delete
    assert events == ["PromptDelivered"]  # Active is in status; the way up has no Event of its own
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    [target] = agents.followed
    assert (target.pod, target.pod_uid, target.pod_ip, target.port, target.lifetime) == (
        POD,
        "p1",
        "127.1.0.5",
        3284,
        1,
    )


def test_a_stale_watch_version_does_not_cause_a_second_write(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    stale = task_body("5")
    run(reconciler, views(stale, api))
    # More events arrive while the watch still shows version 5, from before our write.
    run(reconciler, views(stale, api))
    run(reconciler, views(stale, api))
    assert len(api.status_patches) == 1 and events == ["PromptDelivered"]
    # The watch catches up with our write: still nothing to do, and no copy of the status is kept.
    run(reconciler, views(task_body(str(api.version), api.status), api))
    assert len(api.status_patches) == 1
    assert KEY not in reconciler.memory.written  # 5,000 tasks would otherwise keep their status twice


def counting_reconciles(reconciler: Reconciler) -> list[Any]:
    """Every reconcile that runs asks the agents to follow its target: count those."""
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    ensured: list[Any] = []
    agents.ensure = lambda key, target, answered_before=False: ensured.append(target)
    return ensured


def test_a_watch_event_that_changes_nothing_a_reconcile_reads_runs_no_reconcile(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    ensured = counting_reconciles(reconciler)
    first = views(task_body("5"), api)
    run(reconciler, first, if_changed=True)
    assert len(ensured) == 1 and len(api.status_patches) == 1

    # Our own status write comes back; a pod status update (no view keeps it) and an older version of the
    # task still in the watch: nothing a reconcile reads has changed.
    ours = views(task_body(str(api.version), api.status), api)
    run(reconciler, ours, if_changed=True)
    run(reconciler, first, if_changed=True)
    run(reconciler, views(task_body(str(api.version), api.status), api), if_changed=True)
    assert len(ensured) == 1

    # The pod fails: that reconcile runs, says so in status, and has the pod deleted.
    changed = views(task_body(str(api.version), api.status), api)
    pod = _one_value(changed.pods)
    changed.pods = FakeIndex({KEY: replace(pod, phase="Failed", ready=False)})
    run(reconciler, changed, if_changed=True)
    assert len(ensured) == 2 and api.status_patches[-1]["phase"] == "Pending"
    assert "failed" in api.status_patches[-1]["message"]
    assert api.deletes() == [("delete", "Pod", POD, "p1")]

    # A spec change (a new generation) runs, and so does a poke, changed or not.
    edited = task_body(str(api.version), api.status)
    edited["metadata"]["generation"] = 2
    run(reconciler, views(edited, api), if_changed=True)
    run(reconciler, views(edited, api))
    assert len(ensured) == 4


def test_events_queued_for_one_task_make_one_reconcile_and_a_poke_always_runs(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    ensured = counting_reconciles(reconciler)

    async def settle() -> None:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if reconciler.queue.idle():
                return

    async def scenario() -> list[int]:
        reconciler.start(4)
        v = views(task_body("5"), api)
        for _ in range(3):  # a burst of watch events: the handlers return at once
            reconciler.enqueue(KEY, v)
        await settle()
        counts = [len(ensured)]
        reconciler.enqueue(KEY, views(task_body(str(api.version), api.status), api))  # our write, back
        await settle()
        counts.append(len(ensured))
        reconciler.poke(KEY)
        await settle()
        counts.append(len(ensured))
        await reconciler.stop()
        return counts

    assert asyncio.run(scenario()) == [1, 1, 2]
    assert len(api.status_patches) == 1


def test_status_from_an_older_version_cannot_make_two_writes_take_turns(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: conditions derived from the watch's older status, compared with our newer write, flipped
    lastTransitionTime back and forth forever (found with 100 idle tasks burning a CPU core)."""
    reconciler = reconciler_with([], api)
    run(reconciler, views(task_body("5"), api))  # writes status with transition times "now"
    older = copy.deepcopy(api.status)
    for c in older["conditions"]:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    # An older write of ours, still in flight in the watch, carries other transition times.
    reconciler.memory.wrote_status(
        KEY, "u1", "11", {"metadata": {"resourceVersion": "12"}, "status": api.status}
    )
    run(reconciler, views(task_body("11", older), api))
    run(reconciler, views(task_body("5"), api))
    assert len(api.status_patches) == 1


def test_a_failed_reconcile_reports_and_retries(api: FakeApi) -> None:
    calls = 0
    patch = api.patch_task_status

    async def flaky(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise kube.ApiException(status=500, reason="etcd is sad")
        return await patch(namespace, name, status)

    api.patch_task_status = flaky  # type: ignore[method-assign]
    events: list[str] = []
    reconciler = reconciler_with(events, api)

    async def scenario() -> float | None:
        await reconciler.reconcile(KEY, views(task_body("5"), api))
        retry_in = reconciler.queue.due_in(KEY)
        await reconciler.reconcile(KEY, views(task_body(str(api.version), api.status), api))  # the timer's
        await reconciler.stop()
        return retry_in

    retry_in = asyncio.run(scenario())
    assert retry_in is not None and 0 < retry_in <= reconcile.RETRY_DELAYS[0]
    failure, recovered = api.status_patches
    assert failure["phase"] == "Pending"  # a first reconcile that fails still leaves a status that says why
    assert failure["message"] == "Reconcile failed (attempt 1), retrying in 1s: etcd is sad"
    assert calls == 3 and recovered["phase"] == "Active"
    assert events == ["PromptDelivered", "ReconcileFailed"]
    assert recovered["prompt"]["sha256"]  # the delivery made before the failure is recorded
    assert reconciler.agents.agent.sent == ["Fix the flaky login test"]  # type: ignore[union-attr]


def test_failures_before_the_retry_do_not_grow_the_back_off(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An API server away fails every reconcile that watch events run meanwhile: the back-off must grow
    with time, not with the number of events (it was at 60 s within a second of an outage)."""

    async def away(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise kube.ApiException(status=503, reason="Service Unavailable")

    api.patch_task_status = away  # type: ignore[method-assign]
    reconciler = reconciler_with([], api)

    async def scenario() -> None:
        v = views(task_body("5"), api)
        for _ in range(4):  # four watch events within the first retry's second
            await reconciler.reconcile(KEY, v)
        await reconciler.stop()

    asyncio.run(scenario())
    failures = [r.getMessage() for r in caplog.records if "reconcile of" in r.getMessage()]
    assert len(failures) == 1 and "(attempt 1), retrying in 1s" in failures[0], failures


GREETING = AgentMessage(0, "agent", "Hello! What shall we do?", "2026-11-29T10:00:00Z")


@pytest.mark.parametrize("fresh", [[], [GREETING]], ids=["empty", "greeting only"])
def test_an_agent_that_was_told_nothing_never_overwrites_the_kept_snapshot(
    api: FakeApi, fresh: list[AgentMessage]
) -> None:
    """Found measuring: a resumed agent without its state file went idle with nothing but its greeting, and
    the idle snapshot replaced the conversation the pause had kept (800 of 1,000 tasks in a resume)."""
    reconciler = reconciler_with([], api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    conversation = [GREETING, AgentMessage(1, "user", "Fix the flaky login test", "2026-11-29T10:00:01Z")]
    agents.agent.messages = lambda: _async(conversation)
    run(reconciler, views(task_body("5"), api))  # found in its log: delivered, and in status
    agents.idle_pending.add(KEY)
    run(reconciler, views(task_body(str(api.version), api.status), api))
    assert [a["kind"] for a in api.applies] == ["ConfigMap"]
    kept = api.status["logSnapshot"]

    # Resumed in a new pod, the agent starts afresh, goes idle, and is paused again.
    agents.agent.messages = lambda: _async(fresh)
    agents.idle_pending.add(KEY)
    run(reconciler, views(task_body(str(api.version), api.status), api))
    paused = task_body(str(api.version), api.status)
    paused["spec"]["paused"], paused["metadata"]["generation"] = True, 2
    run(reconciler, views(paused, api))
    assert [c[:2] for c in api.calls] == [("apply", "ConfigMap"), ("delete", "Pod")]  # the pause's delete
    assert api.status["logSnapshot"] == kept


def test_an_idle_snapshot_is_written_once_per_new_conversation(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    conversation = [GREETING]
    agents.agent.messages = lambda: _async(conversation)

    def idle_again() -> list[str]:
        agents.idle_pending.add(KEY)
        run(reconciler, views(task_body(str(api.version), api.status), api))
        return [a["kind"] for a in api.applies]

    agents.idle_pending.add(KEY)  # idle on its greeting: the prompt goes in, nothing worth a snapshot
    run(reconciler, views(task_body("5"), api))
    assert agents.agent.sent == ["Fix the flaky login test"] and api.applies == []
    conversation.append(AgentMessage(1, "user", "Fix the flaky login test", "2026-11-29T10:00:01Z"))
    assert idle_again() == ["ConfigMap"]
    assert idle_again() == ["ConfigMap"]  # the same conversation: not written again
    conversation.append(AgentMessage(2, "agent", "Fixed: it waited on a timer.", "2026-11-29T10:01:00Z"))
    assert idle_again() == ["ConfigMap", "ConfigMap"]
    assert api.status["logSnapshot"]["messages"] == 3


def test_a_restarted_operator_does_not_write_an_unchanged_snapshot_again(api: FakeApi) -> None:
    """Found measuring memory: each restart of the operator wrote every idle task's snapshot again, the
    same conversation with a new takenAt (two writes a task: 10,000 at 5,000 tasks). Status now keeps the
    snapshot's hash, which a new process reads."""
    conversation = [GREETING, AgentMessage(1, "user", "Fix the flaky login test", "2026-11-29T10:00:01Z")]
    for _process in range(2):
        reconciler = reconciler_with([], api)
        agents = reconciler.agents
        assert isinstance(agents, FakeAgents)
        agents.agent.messages = lambda: _async(conversation)
        agents.idle_pending.add(KEY)
        run(reconciler, views(task_body(str(api.version), api.status), api))
    assert [a["kind"] for a in api.applies] == ["ConfigMap"]
    kept = snapshots.in_lifetime([m.dump() for m in conversation], 1)
    assert api.status["logSnapshot"]["sha256"] == snapshots.shape(kept).digest


def test_a_pausing_task_is_pending_until_its_pod_is_gone_and_the_pause_takes_two_writes(
    api: FakeApi,
) -> None:
    """Found measuring: with its agent no longer followed, a pausing task read Initializing (no agent
    answering), then Pending, then Paused: three status patches, two of them wrong. Then it read Active
    while its pod was Ready, and Pending once the pod was stopping: still three. It is Pending from the
    answer to the pause until Paused, whatever step its pod is at; its agent, being stopped, is not
    followed."""
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    followed: list[Any] = []

    def ensure(key: Any, target: Any, answered_before: bool = False) -> None:
        followed.append(target)
        if target is None:
            agents.views.pop(key, None)  # as Agents does: no follower, no view

    agents.ensure = ensure
    conversation = [AgentMessage(0, "user", "Fix the flaky login test", "2026-11-29T10:00:01Z")]
    agents.agent.messages = lambda: _async(conversation)

    async def scenario() -> list[dict[str, Any]]:
        await reconciler.reconcile(KEY, views(task_body("5"), api))
        before = len(api.status_patches)
        v = views(paused_body(str(api.version), api.status), api)
        await reconciler.reconcile(KEY, v)
        pausing = copy.deepcopy(api.status)
        assert followed[-1] is None  # its conversation kept, its agent is let go
        # The conversation first, then the pod; the claim, and with it the files, stays.
        assert [c[:2] for c in api.calls] == [("apply", "ConfigMap"), ("delete", "Pod")]

        v.pods = FakeIndex({KEY: replace(_one_value(v.pods), deleting=True)})
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # the pod is stopping: nothing new to write
        v.pods = FakeIndex({})
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # where the pause ends: at once
        await reconciler.stop()
        assert len(api.status_patches) - before == 2
        return [pausing, api.status]

    pausing, paused = asyncio.run(scenario())
    ready = next(c for c in pausing["conditions"] if c["type"] == "Ready")
    assert (pausing["phase"], ready["status"], ready["reason"]) == ("Pending", "False", "Pausing")
    assert pausing["message"].startswith("Pausing: waiting for pod fix-login-0 to stop")
    assert pausing["logSnapshot"]["messages"] == 1
    assert paused["phase"] == "Paused" and paused["logSnapshot"] == pausing["logSnapshot"]
    assert "agent" not in pausing and "agent" not in paused  # none followed, none to vouch for
    assert events[-1] == "Paused" and "Pausing" not in events  # status says Pausing; the Event, Paused


def test_a_task_paused_before_its_prompt_went_in_gets_no_prompt(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    counting_reconciles(reconciler)
    run(reconciler, views(paused_body("5"), api))
    assert reconciler.agents.agent.sent == []  # type: ignore[union-attr]
    assert api.status["phase"] == "Pending" and api.status["message"].startswith("Pausing")


def test_steps_fold_into_one_status_write_per_hold(api: FakeApi) -> None:
    """Each change of status waits a moment and is written with what followed it: a blip shorter than
    the hold is never written, a longer one once. At 1,000 tasks the apply made 6.75 status patches per
    task: Pending, Initializing, Active, the prompt, the agent working, its report, the agent idle."""
    reconciler = reconciler_with([], api, status_hold=0.1)

    async def scenario(loop: ClockLoop) -> list[tuple[str, str]]:
        reconciler.start(1)
        await reconciler.reconcile(KEY, views(task_body("5"), api))  # the first status: at once
        v = views(task_body(str(api.version), api.status), api)
        pod = _one_value(v.pods)
        restarting = [replace(pod, ready=False, phase="Pending"), replace(pod, ready=False)]
        for step in [*restarting, pod]:  # the containers restart and are back within the hold
            v.pods = FakeIndex({KEY: step})
            await reconciler.reconcile(KEY, v)
        await after(loop, 0.3)
        assert len(api.status_patches) == 1, "a blip shorter than the hold was written"
        for step in restarting:  # again, and for longer than the hold
            v.pods = FakeIndex({KEY: step})
            await reconciler.reconcile(KEY, v)
        assert len(api.status_patches) == 1, "a step was written before its hold ended"
        await after(loop, 0.3)
        await reconciler.stop()
        return [(p["phase"], p["message"]) for p in api.status_patches]

    assert on_a_clock(scenario) == [
        ("Active", "Workspace is ready."),
        ("Initializing", "Workspace pod fix-login-0 is not Ready."),  # the last step, once
    ]


@pytest.mark.parametrize("quick", [True, False], ids=["pod gone within the hold", "pod slow to stop"])
def test_a_quick_pause_writes_paused_alone(api: FakeApi, quick: bool) -> None:
    """A pause's Pending is held: when the pod goes within the hold, the pause is one status write."""
    events: list[str] = []
    reconciler = reconciler_told_the_prompt(events, api)
    reconciler.options.status_hold = 0.1

    async def scenario(loop: ClockLoop) -> list[str]:
        reconciler.start(1)
        await reconciler.reconcile(KEY, views(task_body("5"), api))  # Active
        reconciler.agents.idle_pending.add(KEY)  # type: ignore[union-attr]
        await reconciler.reconcile(KEY, views(task_body(str(api.version), api.status), api))
        await after(loop, 0.3)  # idle: its conversation kept, and told in status
        assert [a["kind"] for a in api.applies] == ["ConfigMap"] and api.status["logSnapshot"]
        before = len(api.status_patches)
        v = views(paused_body(str(api.version), api.status), api)
        await reconciler.reconcile(KEY, v)  # the conversation kept, the pod deleted: Pausing, held
        assert api.deletes() == [("delete", "Pod", POD, "p1")] and len(api.status_patches) == before
        if not quick:
            await after(loop, 0.3)  # the hold ends with the pod still stopping: Pausing is written
        v.pods = FakeIndex({})
        await reconciler.reconcile(KEY, v)  # Paused: at once, and the hold is over
        await after(loop, 0.3)
        await reconciler.stop()
        return [p["phase"] for p in api.status_patches[before:]]

    assert on_a_clock(scenario) == (["Paused"] if quick else ["Pending", "Paused"])
    assert events.count("Paused") == 1
    # The conversation as kept at idle is the pause's too: neither written again nor read back.
    assert [a["kind"] for a in api.applies] == ["ConfigMap"] and api.configmap_reads == 0


def test_a_deleted_task_stops_its_follower_and_is_forgotten(api: FakeApi) -> None:
    stopped: list[Any] = []
    reconciler = reconciler_with([], api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    run(reconciler, views(task_body("5"), api))
    agents.ensure = lambda key, target, answered_before=False: stopped.append((key, target))
    gone = views(task_body("5"), api)
    gone.tasks = tasks_index({})
    run(reconciler, gone)
    assert stopped == [(KEY, None)]
    assert KEY not in reconciler.memory.written


def test_a_display_name_that_arrives_during_the_status_patch_is_written_next(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Anthropic answer lands while the first status patch is in flight: it must not be dropped."""
    reconciler = reconciler_with([], api, naming_env={"ANTHROPIC_API_KEY": "sk-test"})
    answered = asyncio.Event()

    async def display_name_for(prompt: str, env: Any = None) -> str:
        await answered.wait()
        return "Repair the login test"

    monkeypatch.setattr(naming, "display_name_for", display_name_for)
    first_patch = api.patch_task_status

    async def patch_while_the_answer_arrives(namespace: str, name: str, status: dict[str, Any]) -> Any:
        answered.set()
        await asyncio.sleep(0.05)  # the naming task runs and pokes while this write is in flight
        return await first_patch(namespace, name, status)

    api.patch_task_status = patch_while_the_answer_arrives  # type: ignore[method-assign]

    async def scenario() -> None:
        reconciler.start(1)
        v = views(task_body("5"), api)
        await reconciler.reconcile(KEY, v)
        assert "displayName" not in api.status_patches[0] or api.status_patches[0]["displayName"] is None
        for _ in range(50):  # the poke's reconcile
            if api.status.get("displayName"):
                break
            await asyncio.sleep(0.02)
        await reconciler.stop()

    asyncio.run(scenario())
    assert api.status["displayName"] == "Repair the login test"


def test_without_a_key_the_display_name_is_the_prompts_at_once(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    run(reconciler, views(task_body("5"), api))
    assert api.status_patches[0]["displayName"] == "Fix the flaky login test"


def test_an_agent_that_falls_silent_makes_the_task_unknown_when_the_grace_ends(api: FakeApi) -> None:
    """Its follower pokes once, when the agent stops answering: the reconciler wakes itself for the end of
    the grace period instead of counting on a poke per reconnect attempt."""
    reconciler = reconciler_with([], api)
    reconciler.options.agent_grace = dt.timedelta(seconds=30)
    clock = [dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)]
    reconciler.options.now = lambda: clock[0]
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)

    async def scenario() -> float | None:
        await reconciler.reconcile(KEY, views(task_body("5"), api))
        silent = replace(agents.views[KEY], healthy=False, reason="connection refused", silent_since=clock[0])
        agents.views[KEY] = silent
        clock[0] += dt.timedelta(seconds=10)
        await reconciler.reconcile(KEY, views(task_body(str(api.version), api.status), api))
        woken_in = reconciler.queue.due_in(KEY)  # what it asked for: a look when the grace is over
        clock[0] += dt.timedelta(seconds=21)
        await reconciler.reconcile(KEY, views(task_body(str(api.version), api.status), api))  # the timer's
        await reconciler.stop()
        return woken_in

    woken_in = asyncio.run(scenario())
    assert woken_in is not None and 20 < woken_in <= 21  # 20 s of grace left, and a second for rounding
    assert [p["phase"] for p in api.status_patches] == ["Active", "Active", "Unknown"]
    assert api.status["message"] == "The agent has not answered for 31s: connection refused."


# -- the workspace: a claim and a pod, each written once although the watches lag behind ------------


def test_a_pod_the_watch_has_yet_to_show_is_not_created_again(api: FakeApi) -> None:
    """Found measuring (with the StatefulSet before the pod): at N = 1,000, 18 tasks had their workspace
    made twice and a second WorkspaceCreated Event, from reconciles that ran before the watch showed it."""
    events: list[str] = []
    reconciler = reconciler_with(events, api)

    async def scenario() -> None:
        v = no_workspace(task_body("5"), api)
        await reconciler.reconcile(KEY, v)
        await reconciler.reconcile(KEY, v)  # the watch is still behind
        assert [c[:2] for c in api.calls] == [("create", "PersistentVolumeClaim"), ("create", "Pod")]
        assert events == ["WorkspaceCreated"]
        await reconciler.reconcile(KEY, watch_catches_up(v, api))  # it has caught up
        await reconciler.stop()

    asyncio.run(scenario())
    assert len(api.calls) == 2 and events == ["WorkspaceCreated"]
    assert KEY not in reconciler.memory.created  # nothing kept once the watch shows it
    claim, pod = api.created
    assert claim["metadata"]["ownerReferences"] == pod["metadata"]["ownerReferences"]
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert lifetime_of(pod) == "1"
    [volume] = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == CLAIM
    assert api.status_patches[0]["workspace"] == {"claim": CLAIM, "pod": POD, "podIP": None, "lifetime": 1}


@pytest.mark.parametrize("how", ["deleted", "watch never showed it"])
def test_a_pod_gone_since_our_create_is_created_again(api: FakeApi, how: str) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)

    async def scenario(loop: ClockLoop) -> None:
        v = no_workspace(task_body("5"), api)
        await reconciler.reconcile(KEY, v)
        [first] = api.pods_created()
        if how == "deleted":
            reconciler.pod_deleted(KEY, "pod-0")  # an earlier pod's going: ours still stands
            await reconciler.reconcile(KEY, v)
            assert len(api.pods_created()) == 1
            reconciler.pod_deleted(KEY, first["metadata"]["uid"])
        else:
            loop.ahead += reconcile.WRITE_TRUST  # then the watch is believed
        del api.objects[("Pod", POD)]
        await reconciler.reconcile(KEY, watch_catches_up(v, api))  # it shows the claim, and no pod
        await reconciler.stop()

    on_a_clock(scenario)
    first, second = api.pods_created()
    assert (lifetime_of(first), lifetime_of(second)) == ("1", "2")
    assert [o["kind"] for o in api.created].count("PersistentVolumeClaim") == 1  # on the same claim
    assert events == ["WorkspaceCreated", "PodRecreated"]


def test_our_own_writes_coming_back_run_no_reconcile_but_a_change_by_someone_else_does(
    api: FakeApi,
) -> None:
    """Found measuring: at N = 1,000, the watch bringing back each workspace we had just written ran a
    reconcile per task and phase, with nothing left to do."""
    reconciler = reconciler_with([], api)
    ensured = counting_reconciles(reconciler)

    async def scenario() -> None:
        v = no_workspace(task_body("5"), api)
        await reconciler.reconcile(KEY, v, if_changed=True)  # creates the claim and the pod
        await reconciler.reconcile(KEY, watch_catches_up(v, api), if_changed=True)  # both, back
        assert len(ensured) == 1

        # Its kubelet starts the pod: that runs.
        pod = replace(_one_value(v.pods), phase="Running", node_name="n0", pod_ip="127.1.0.5", ready=True)
        v.pods = FakeIndex({KEY: pod})
        await reconciler.reconcile(KEY, v, if_changed=True)
        assert len(ensured) == 2 and api.status["phase"] == "Active"

        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})  # paused: the pod is deleted
        await reconciler.reconcile(KEY, v, if_changed=True)
        assert len(ensured) == 3 and api.deletes() == [("delete", "Pod", POD, pod.uid)]

        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})  # our status write, back
        v.pods = FakeIndex({KEY: replace(pod, deleting=True)})  # and our delete
        await reconciler.reconcile(KEY, v, if_changed=True)
        assert len(ensured) == 3

        v.pods = FakeIndex({})  # its kubelet has stopped it: that runs, and the pause is over
        await reconciler.reconcile(KEY, v, if_changed=True)
        await reconciler.stop()
        assert len(ensured) == 4 and api.status["phase"] == "Paused"

    asyncio.run(scenario())
    assert len(api.deletes()) == 1 and len(api.created) == 2


# -- pause and resume ---------------------------------------------------------------------------------


def test_a_pause_ends_though_the_watch_never_shows_the_pod_go(api: FakeApi) -> None:
    """Found by the fault matrix: the pod deleted while the watch was down (an API server restart). Kopf
    re-lists after such a gap, which adds what it finds and never removes what it missed: the watch shows
    the pod running for good. The pause must end all the same, told once, its conversation kept once."""
    events: list[str] = []
    reconciler = reconciler_told_the_prompt(events, api)

    async def scenario(loop: ClockLoop) -> None:
        await reconciler.reconcile(KEY, views(task_body("5"), api))  # Active
        stale = views(paused_body(str(api.version), api.status), api)  # the pod, running for good
        await reconciler.reconcile(KEY, stale)
        assert api.deletes() == [("delete", "Pod", POD, "p1")] and api.status["phase"] == "Pending"
        due = reconciler.queue.due_in(KEY)
        assert due is not None and due <= reconcile.WRITE_TRUST  # it looks again, though nothing comes

        loop.ahead += reconcile.WRITE_TRUST
        stale.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, stale)  # deleted again: the API server says it is gone
        assert api.status["phase"] == "Paused", api.status
        await reconciler.reconcile(KEY, stale)  # and it stays so

        # Resumed: the new pod, not the stale one still in the index beside it, is the workspace.
        stale.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, stale)
        [new] = api.pods_created()
        both = [_one_value(stale.pods), PodView.parse(new)]
        stale.pods = FakeIndexOfMany({KEY: both})
        stale.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, stale)
        assert api.status["workspace"]["lifetime"] == 2 and len(api.pods_created()) == 1
        assert len(api.deletes()) == 2, "the new pod taken for the stale one, or the stale for outdated"
        await reconciler.stop()

    on_a_clock(scenario)
    assert api.deletes() == [("delete", "Pod", POD, "p1")] * 2
    assert events.count("Paused") == 1 and [a["kind"] for a in api.applies] == ["ConfigMap"]
    assert api.status["workspace"]["pod"] == POD and api.status["phase"] != "Paused"  # resumed


def test_a_pause_keeps_the_conversation_then_deletes_the_pod_and_needs_no_template(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_told_the_prompt(events, api)
    run(reconciler, views(task_body("5"), api))  # Active

    v = views(paused_body(str(api.version), api.status), api)
    v.templates = FakeIndex({})  # its template was deleted meanwhile: stopping needs none
    run(reconciler, v)
    assert [c[:2] for c in api.calls] == [("apply", "ConfigMap"), ("delete", "Pod")]
    assert api.deletes() == [("delete", "Pod", POD, "p1")]
    assert api.status["phase"] == "Pending" and "Paused" not in events

    # The watch has yet to show the pod stopping: a reconcile now (our status write, back) stops nothing more.
    v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
    run(reconciler, v)
    assert len(api.calls) == 2 and api.deletes() == [("delete", "Pod", POD, "p1")]

    v.pods = FakeIndex({})
    v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
    run(reconciler, v)
    assert len(api.calls) == 2 and api.created == []  # its claim, and with it the files, stays
    assert api.status["phase"] == "Paused" and events[-1] == "Paused"
    assert api.status["workspace"] == {"claim": CLAIM, "lifetime": 1}  # no pod now, no pod IP
    assert condition(api.status, "Paused")["status"] == "True"


@pytest.mark.parametrize("lifetime", [1, 4])
def test_a_resume_starts_a_new_pod_one_lifetime_on(api: FakeApi, lifetime: int) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    counting_reconciles(reconciler)

    async def scenario() -> None:
        v = views(task_body("5"), api)
        v.pods = FakeIndex({KEY: replace(_one_value(v.pods), lifetime=lifetime)})
        await reconciler.reconcile(KEY, v)  # Active
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # the pod is deleted
        v.pods = FakeIndex({})
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # Paused
        assert api.status["phase"] == "Paused" and api.pods_created() == []

        v.tasks = tasks_index({KEY: resumed_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)
        await reconciler.reconcile(KEY, v)  # the watch has yet to show it: not created twice
        await reconciler.stop()

    asyncio.run(scenario())
    [pod] = api.pods_created()
    assert lifetime_of(pod) == str(lifetime + 1)
    assert [c[:2] for c in api.calls if c[0] == "create"] == [("create", "Pod")]  # the claim is there
    assert events[-2:] == ["Paused", "Resuming"]
    assert api.status["workspace"]["lifetime"] == lifetime + 1


def with_a_conversation(
    api: FakeApi,
) -> tuple[Reconciler, list[tuple[str, str, str]], FakeAgents, list[AgentMessage]]:
    """A reconciler telling its Events, whose agent has been given the prompt."""
    reconciler = reconciler_with([], api)
    told = telling(reconciler)
    counting_reconciles(reconciler)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    return (
        reconciler,
        told,
        agents,
        [AgentMessage(0, "user", "Fix the flaky login test", "2026-11-29T10:00:01Z")],
    )


# -- a pod replaced, recreated, or failed -------------------------------------------------------------


@pytest.mark.parametrize("agent", ["answers", "unreachable"])
def test_a_template_change_replaces_the_pod(api: FakeApi, agent: str) -> None:
    """A pod's spec is immutable: a changed template means a new pod, after its conversation is kept. Its
    agent unreachable, the replacement goes ahead without a word: it is no pause."""
    reconciler, told, agents, conversation = with_a_conversation(api)

    async def unreachable() -> list[AgentMessage]:
        raise AgentError("connection refused")

    agents.agent.messages = (lambda: _async(conversation)) if agent == "answers" else unreachable  # type: ignore[method-assign]
    run(reconciler, views(task_body("5"), api))  # Active
    told.clear()

    v = views(task_body(str(api.version), api.status), api)
    newer = template("agent:2", version="2")
    v.templates = FakeIndex({(NS, "default"): newer})
    run(reconciler, v)
    kept = [("apply", "ConfigMap")] if agent == "answers" else []
    assert [c[:2] for c in api.calls] == [*kept, ("delete", "Pod")]
    assert api.deletes() == [("delete", "Pod", POD, "p1")]
    assert [(kind, reason) for kind, reason, _ in told] == [("Normal", "PodReplaced")]
    assert api.status["phase"] == "Pending"

    # The watch still shows the old pod, not yet stopping: it is going; no second delete, no new pod yet.
    v.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})
    run(reconciler, v)
    assert len(api.deletes()) == 1 and api.pods_created() == []

    v.pods = FakeIndex({})  # gone: its successor, from the new template
    v.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})
    run(reconciler, v)
    [pod] = api.pods_created()
    assert pod["spec"]["containers"][0]["image"] == "agent:2" and lifetime_of(pod) == "2"
    wanted = workspace.pod(Task.model_validate(task_body("5")), newer, 0)
    assert workspace.spec_hash(pod) == workspace.spec_hash(wanted)
    assert [reason for _, reason, _ in told] == ["PodReplaced"]  # no PodRecreated: we stopped it


def test_a_failed_pod_is_deleted_and_its_successor_waits_for_the_back_off(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    told = telling(reconciler)
    counting_reconciles(reconciler)

    def back(v: Views) -> Views:
        v.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})
        return v

    async def scenario(loop: ClockLoop) -> None:
        v = views(task_body("5"), api)
        await reconciler.reconcile(KEY, v)  # Active
        evicted = replace(
            _one_value(v.pods),
            phase="Failed",
            ready=False,
            reason="Evicted",
            message="The node was low on resource: memory.",
        )
        v.pods = FakeIndex({KEY: evicted})
        await reconciler.reconcile(KEY, back(v))
        assert api.deletes() == [("delete", "Pod", POD, "p1")]
        why = "pod fix-login-0 failed (Evicted: The node was low on resource: memory)"
        assert ("Warning", "PodFailed", f"Workspace {why}; a new pod starts in 1s.") in told

        v.pods = FakeIndex({})  # gone: its successor waits, and status says why
        await reconciler.reconcile(KEY, back(v))
        assert api.pods_created() == []
        assert (
            api.status["phase"] == "Pending" and condition(api.status, "Ready")["reason"] == "PodRestarting"
        )
        assert api.status["message"] == f"Workspace is pending: {why}; a new pod starts in 1s."
        due = reconciler.queue.due_in(KEY)
        assert due is not None and 0 < due <= reconcile.RETRY_DELAYS[0]
        loop.ahead += due / 2
        await reconciler.reconcile(KEY, back(v))  # an event meanwhile: it still waits
        assert api.pods_created() == []

        loop.ahead += due / 2
        await reconciler.reconcile(KEY, back(v))  # the timer's
        [successor] = api.pods_created()
        assert lifetime_of(successor) == "2"

        # The successor fails before it was ever Ready: the next one waits longer.
        v.pods = FakeIndex({KEY: replace(PodView.parse(successor), phase="Failed", reason="Error")})
        await reconciler.reconcile(KEY, back(v))
        assert api.deletes()[-1] == ("delete", "Pod", POD, successor["metadata"]["uid"])
        assert any(m.endswith("failed (Error); a new pod starts in 2s.") for _, _, m in told)
        v.pods = FakeIndex({})
        await reconciler.reconcile(KEY, back(v))
        assert len(api.pods_created()) == 1
        await reconciler.stop()

    on_a_clock(scenario)
    assert "PodRecreated" not in events  # we deleted it, and said why


def test_a_pod_deleted_by_someone_else_is_recreated_with_a_warning(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    told = telling(reconciler)
    counting_reconciles(reconciler)
    run(reconciler, views(task_body("5"), api))  # Active

    v = views(task_body(str(api.version), api.status), api)
    v.pods = FakeIndex({})  # deleted by hand, or lost with its node
    run(reconciler, v)
    [pod] = api.pods_created()
    assert lifetime_of(pod) == "2" and [c[:2] for c in api.calls] == [("create", "Pod")]
    recreated = [(kind, message) for kind, reason, message in told if reason == "PodRecreated"]
    assert recreated == [
        (
            "Warning",
            "The workspace pod went away while the task runs (deleted, or lost with its node); "
            f"started pod {POD} (lifetime 2).",
        )
    ]


def test_an_upgraded_workspace_has_its_claim_adopted_and_its_pod_replaced(api: FakeApi) -> None:
    """An earlier release's StatefulSet, retired at start-up, leaves its pod and claim without an owner:
    the claim, with the files, becomes the task's; the pod, made without a spec hash, is replaced."""
    reconciler, told, agents, conversation = with_a_conversation(api)
    agents.agent.messages = lambda: _async(conversation)  # type: ignore[method-assign]
    claim = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": NS, "uid": "c-old", "labels": workspace.labels(NAME)},
    }
    old = workspace.pod(Task.model_validate(task_body("5")), template(), 3)
    old["metadata"].update(
        uid="p-old",
        ownerReferences=[],  # its StatefulSet's, taken off as it was deleted with propagation Orphan
        annotations={"taskpod.dev/lifetime": "3"},  # no spec hash; the lifetime where a StatefulSet put it
        labels=workspace.labels(NAME),
    )
    api.objects[("PersistentVolumeClaim", CLAIM)] = claim
    api.objects[("Pod", POD)] = old
    status = {"phase": "Active", "workspace": {"statefulSet": NAME, "pod": POD, "lifetime": 3}}

    v = views(task_body("5", status), api)
    v.claims = FakeIndex({KEY: ClaimView.parse(claim)})
    v.pods = FakeIndex({KEY: running(old, uid="p-old")})
    assert _one_value(v.pods).lifetime == 3 and _one_value(v.pods).owner_uid is None
    run(reconciler, v)
    assert api.calls == [
        ("apply", "ConfigMap", f"{NAME}-snapshot"),  # its conversation kept, then
        ("adopt", "PersistentVolumeClaim", CLAIM, "c-old"),
        ("delete", "Pod", POD, "p-old"),
    ]
    owner = api.objects[("PersistentVolumeClaim", CLAIM)]["metadata"]["ownerReferences"]
    assert owner == [workspace.owner_reference(Task.model_validate(task_body("5")))]
    assert [reason for _, reason, _ in told] == ["PodReplaced"]

    run(reconciler, watch_catches_up(v, api))  # the claim is ours, the old pod gone
    [pod] = api.pods_created()
    assert lifetime_of(pod) == "4" and [c[0] for c in api.calls[3:]] == ["create"]  # no claim made
    assert [reason for _, reason, _ in told] == ["PodReplaced"]


@pytest.mark.parametrize(
    "unseen",
    [["Pod"], ["PersistentVolumeClaim"], ["PersistentVolumeClaim", "Pod"]],
    ids=["pod", "claim", "both"],
)
def test_a_create_answered_already_exists_creates_nothing_more_and_does_not_fail(
    api: FakeApi, unseen: list[str]
) -> None:
    """The watch has yet to show what an earlier reconcile (say, of an operator since restarted) made.
    A claim of its name may be a deleted namesake's: no pod goes on it before the watch shows whose."""
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    names = {"Pod": POD, "PersistentVolumeClaim": CLAIM}
    for kind in unseen:
        api.objects[(kind, names[kind])] = {"kind": kind, "metadata": {"name": names[kind], "uid": "x"}}
    run(reconciler, no_workspace(task_body("5"), api))
    claim_unseen = "PersistentVolumeClaim" in unseen
    tried = ["PersistentVolumeClaim"] if claim_unseen else ["PersistentVolumeClaim", "Pod"]
    assert [c[:2] for c in api.calls] == [("create", kind) for kind in tried]
    assert [o["kind"] for o in api.created] == [k for k in tried if k not in unseen]
    assert "ReconcileFailed" not in events
    assert api.status["phase"] == "Pending" and not api.status["message"].startswith("Reconcile failed")
    assert ("WorkspaceCreated" in events) is not (claim_unseen or "Pod" in unseen)  # what it made
    assert (KEY in reconciler.memory.created) is not (claim_unseen or "Pod" in unseen)


def test_a_refused_workspace_is_an_error_told_once_and_asked_for_again(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    told = telling(reconciler)
    counting_reconciles(reconciler)
    why = (
        'pods "fix-login-0" is forbidden: violates PodSecurity "restricted:latest": privileged '
        '(container "agent" must not set securityContext.privileged=true)'
    )
    api.refusal = _failure(403, why)

    async def scenario(loop: ClockLoop) -> None:
        v = views(task_body("5"), api)  # its claim there, its pod not yet
        v.pods = FakeIndex({})
        await reconciler.reconcile(KEY, v)
        assert api.status["phase"] == "Error"
        assert api.status["message"] == f"The API server refuses the workspace pod: {why}"
        assert [(kind, reason) for kind, reason, _ in told] == [("Warning", "InvalidWorkspace")]
        due = reconciler.queue.due_in(KEY)
        assert due is not None and reconcile.REFUSED_RETRY - 1 < due <= reconcile.REFUSED_RETRY

        loop.ahead += due
        v.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # the timer's: refused again, nothing new to write or tell
        assert len(api.status_patches) == 1 and len(told) == 1

        api.refusal = None  # what refused it (a policy, a quota, a webhook) has gone
        loop.ahead += reconcile.REFUSED_RETRY
        await reconciler.reconcile(KEY, v)
        await reconciler.stop()

    on_a_clock(scenario)
    assert api.calls == [("create", "Pod", POD)] * 3
    [pod] = api.pods_created()
    assert lifetime_of(pod) == "1" and api.status["phase"] == "Pending"
    assert [reason for _, reason, _ in told] == ["InvalidWorkspace", "WorkspaceCreated"]


def test_a_deleted_namesakes_workspace_is_waited_for_never_used(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)

    async def scenario() -> None:
        v = no_workspace(task_body("5"), api)
        v.claims = FakeIndex({KEY: ClaimView(CLAIM, uid="c0", owner_uid="u0")})  # a deleted task's
        await reconciler.reconcile(KEY, v)
        assert api.calls == [] and condition(api.status, "Ready")["reason"] == "PreviousWorkspace"
        assert f"PersistentVolumeClaim {CLAIM}" in api.status["message"]
        due = reconciler.queue.due_in(KEY)
        assert due is not None and 0 < due <= reconcile.LEFTOVER_RECHECK

        v.claims = FakeIndex({})  # garbage collection has removed it
        await reconciler.reconcile(KEY, v)
        await reconciler.stop()

    asyncio.run(scenario())
    assert [c[:2] for c in api.calls] == [("create", "PersistentVolumeClaim"), ("create", "Pod")]
    assert events == ["WorkspaceCreated"]


# -- the agent: prompt, reports ------------------------------------------------------------------------


def test_a_refused_prompt_is_retried_with_back_off_and_told_once(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    attempts: list[str] = []

    async def busy(content: str, kind: str = "user") -> None:
        attempts.append(content)
        if len(attempts) < 3:
            raise AgentError("agent is busy")
        agents.agent.sent.append(content)

    agents.agent.send = busy

    async def scenario(loop: ClockLoop) -> float | None:
        v = views(task_body("5"), api)
        await reconciler.reconcile(KEY, v)
        first = reconciler.queue.due_in(KEY)
        await reconciler.reconcile(KEY, v)  # an event before the retry is due: no attempt
        assert len(attempts) == 1
        loop.ahead += reconcile.RETRY_DELAYS[0]
        await reconciler.reconcile(KEY, v)  # the timer's
        assert len(attempts) == 2
        assert condition(api.status, "PromptDelivered")["message"] == (
            "The agent refused the prompt 2 times; retrying in 2s: the agent did not take it"
        )
        loop.ahead += reconcile.RETRY_DELAYS[0]
        await reconciler.reconcile(KEY, v)  # the second wait is longer: still none
        assert len(attempts) == 2
        loop.ahead += reconcile.RETRY_DELAYS[1] - reconcile.RETRY_DELAYS[0]
        await reconciler.reconcile(KEY, v)
        await reconciler.stop()
        return first

    first = on_a_clock(scenario)
    assert first is not None and 0 < first <= reconcile.RETRY_DELAYS[0]
    assert len(attempts) == 3 and agents.agent.sent == ["Fix the flaky login test"]
    assert events.count("PromptDeliveryFailed") == 1 and events[-1] == "PromptDelivered"
    assert condition(api.status, "PromptDelivered")["status"] == "True"


def test_only_the_current_pods_agent_is_heard(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    said = reports.AgentReport(
        AgentState.COMPLETE, "Fixed: it waited on a timer.", None, dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)
    )

    async def scenario() -> list[str | None]:
        await reconciler.reconcile(KEY, views(task_body("5"), api))
        answers = [
            await reconciler.accept_report(reports.Reporter(NS, POD, "p0"), said),  # a pod before it
            await reconciler.accept_report(reports.Reporter(NS, POD, "p1"), said),
        ]
        await reconciler.reconcile(KEY, views(task_body(str(api.version), api.status), api))
        await reconciler.stop()
        return answers

    earlier, current = asyncio.run(scenario())
    assert earlier == f"pod {POD} is not the current workspace of a task; its report is ignored"
    assert current is None
    assert api.status["state"]["state"] == "complete"
    assert api.status["state"]["message"] == "Fixed: it waited on a timer."


def test_a_pod_stopped_before_the_watch_showed_it_is_not_stopped_again(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)

    async def scenario() -> None:
        v = no_workspace(task_body("5"), api)
        await reconciler.reconcile(KEY, v)  # creates the claim and the pod
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # paused at once: the pod we created is deleted
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # the watch has shown neither the pod nor its going
        await reconciler.stop()

    asyncio.run(scenario())
    [pod] = api.pods_created()
    assert api.deletes() == [("delete", "Pod", POD, pod["metadata"]["uid"])]


@pytest.mark.parametrize(
    ("failure", "refused", "terminating"),
    [
        (
            _failure(422, 'Pod "x-0" is invalid: metadata.annotations: Invalid value'),
            True,
            False,
        ),
        (
            _failure(403, 'persistentvolumeclaims "workspace-x-0" is forbidden: exceeded quota: q'),
            True,
            False,
        ),
        (
            _failure(500, "failed to create typed patch object (/x-snapshot): .data: expected map"),
            True,
            False,
        ),
        (_failure(500, "etcdserver: request timed out"), False, False),
        (_failure(503, "the server is currently unable to handle the request"), False, False),
        (_failure(403, "unable to create new content in namespace x", "NamespaceTerminating"), True, True),
    ],
    ids=["invalid", "quota", "untyped value", "etcd timeout", "unavailable", "namespace terminating"],
)
def test_a_refusal_is_told_from_a_failure_to_answer(
    failure: kube.ApiException, refused: bool, terminating: bool
) -> None:
    """A refusal is the task's Error until the task or template changes; a failure to answer is retried."""
    assert kube.refused(failure) is refused
    assert kube.namespace_terminating(failure) is terminating


def test_a_task_deleted_while_the_watch_was_down_is_let_be(api: FakeApi) -> None:
    """Kopf's re-list after a watch gap never removes what it missed: a task deleted meanwhile stays in
    its index for good. Once the API server says it is gone, it is let be. Before, each pod it made was
    taken by garbage collection (its owner is gone), and that pod's going made the next one."""
    reconciler = reconciler_with([], api)
    ghost = no_workspace(task_body("5"), api)
    api.task_deleted = True
    run(reconciler, ghost)  # the pod is made before the status write says the task is gone
    made = len(api.pods_created())
    assert made == 1 and api.status_patches == []
    ghost.pods = FakeIndex({KEY: PodView.parse(api.pods_created()[0])})
    run(reconciler, ghost)
    ghost.pods = FakeIndex({})  # garbage collection takes it and the claim: the watch says so
    api.objects.pop(("Pod", POD)), api.objects.pop(("PersistentVolumeClaim", CLAIM))
    run(reconciler, ghost)
    assert len(api.pods_created()) == made and len(api.calls) == 2, api.calls  # the claim and the pod

    api.task_deleted = False  # a new task of the same name is a task like any other
    fresh = task_body("9")
    fresh["metadata"]["uid"] = "u2"
    ghost.tasks = tasks_index({KEY: fresh})
    run(reconciler, ghost)
    assert len(api.pods_created()) == made + 1 and api.status["phase"]


@pytest.mark.parametrize("watch_saw_it_go", [True, False])
def test_the_second_look_after_a_pod_delete_runs_only_if_the_watch_never_showed_it_go(
    api: FakeApi, watch_saw_it_go: bool
) -> None:
    """Each pause used to run one more reconcile, 30 s on, in case the watch missed the pod's going: at
    1,000 tasks, 1,000 reconciles with nothing to do. Now that look is skipped if the watch saw it go."""
    reconciler = reconciler_told_the_prompt([], api)
    ran = counting_reconciles(reconciler)

    async def scenario(loop: ClockLoop) -> int:
        reconciler.start(1)  # the timer's run goes through the queue, as a watch event's does
        await reconciler.reconcile(KEY, views(task_body("5"), api))
        v = views(paused_body(str(api.version), api.status), api)
        await reconciler.reconcile(KEY, v)  # the pod deleted
        if watch_saw_it_go:
            v.pods = FakeIndex({})
        v.tasks = tasks_index({KEY: paused_body(str(api.version), api.status)})
        reconciler.enqueue(KEY, v)  # the watch event: the pod gone, or (missed) our status write back
        await after(loop, 0)
        before = len(ran)
        await after(loop, reconcile.WRITE_TRUST + 1)
        await reconciler.stop()
        return len(ran) - before

    assert on_a_clock(scenario) == (0 if watch_saw_it_go else 1)
    assert api.status["phase"] == "Paused"


def test_an_agents_turn_during_a_hold_is_one_reconcile_at_its_end(api: FakeApi) -> None:
    """The agent's pokes (status running, each message, stable again, its report) each ran a reconcile,
    though its status was held: at 1,000 tasks, 11 reconciles per task in the apply. While a hold runs,
    pokes run none; its end runs one, which sees all of them."""
    reconciler = reconciler_with([], api, status_hold=0.1)
    ran = counting_reconciles(reconciler)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)

    async def scenario(loop: ClockLoop) -> tuple[int, int]:
        reconciler.start(1)
        await reconciler.reconcile(KEY, views(task_body("5"), api))  # Active: the first status, at once
        v = views(task_body(str(api.version), api.status), api)
        agents.views[KEY] = replace(agents.views[KEY], status=AgentStatus.RUNNING)
        await reconciler.reconcile(KEY, v)  # the agent at work: held
        before = len(ran)
        for said in ("reading the test", "found the race", "fixed it"):  # its turn, within the hold
            agents.views[KEY] = replace(agents.views[KEY], last_message=said)
            reconciler.poke(KEY)
            await after(loop, 0)
        agents.views[KEY] = replace(agents.views[KEY], status=AgentStatus.STABLE)
        reconciler.poke(KEY)
        during = len(ran) - before
        await after(loop, 0.3)
        await reconciler.stop()
        return during, len(ran) - before

    during, at_its_end = on_a_clock(scenario)
    assert (during, at_its_end) == (0, 1)
    assert api.status["state"]["state"] == "idle" and api.status["state"]["message"] == "fixed it"


def test_two_replacements_within_a_hold_count_two_lifetimes(api: FakeApi) -> None:
    """Found by test_operator: a template change, then an env change within a second. The second pod's
    status was still held when it was replaced, so its successor counted from the status (lifetime 1)
    and was lifetime 2 again. The pod this process stopped counts too."""
    reconciler = reconciler_with([], api, status_hold=0.1)

    async def scenario(loop: ClockLoop) -> list[str]:
        reconciler.start(1)
        await reconciler.reconcile(KEY, views(task_body("5"), api))  # Active, lifetime 1: written at once
        v = views(task_body(str(api.version), api.status), api)
        for change in ("template", "env"):
            if change == "template":
                v.templates = FakeIndex({(NS, "default"): template("agent:2", version="2")})
            else:
                body = task_body(str(api.version), api.status)
                body["spec"]["env"], body["metadata"]["generation"] = [{"name": "LOG", "value": "debug"}], 2
                v.tasks = tasks_index({KEY: body})
            await reconciler.reconcile(KEY, v)  # the pod replaced: deleted, its status held
            v.pods = FakeIndex({})  # gone: its successor is made
            await reconciler.reconcile(KEY, v)
            made = api.pods_created()[-1]
            v.pods = FakeIndex({KEY: running(made, uid=made["metadata"]["uid"])})
        await after(loop, 0.3)
        await reconciler.stop()
        return [lifetime_of(p) for p in api.pods_created()]

    assert on_a_clock(scenario) == ["2", "3"]
    assert api.status["workspace"]["lifetime"] == 3


def test_a_new_agents_first_answer_during_a_hold_gets_its_prompt_at_once(api: FakeApi) -> None:
    """Pokes wait for the hold's end only once the prompt is in: a new agent's first answer runs a
    reconcile at once, so the prompt goes in and the agent's turn folds into the same hold."""
    reconciler = reconciler_with([], api, status_hold=0.1)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    agents.views[KEY] = AgentView(lifetime=1)  # nothing heard yet

    async def scenario(loop: ClockLoop) -> list[str]:
        reconciler.start(1)
        v = views(task_body("5"), api)
        await reconciler.reconcile(KEY, v)  # Initializing: "Agent is starting", the first status
        agents.views[KEY] = replace(agents.views[KEY], reason="connection refused")
        await reconciler.reconcile(KEY, v)  # a step: held
        assert reconciler.queue.holding(KEY)
        agents.views[KEY] = AgentView(lifetime=1, answered=True, healthy=True, status=AgentStatus.STABLE)
        reconciler.poke(KEY)
        await after(loop, 0)  # no time passes: the hold is still on
        sent = list(agents.agent.sent)
        await after(loop, 0.3)
        await reconciler.stop()
        return sent

    assert on_a_clock(scenario) == ["Fix the flaky login test"]
    assert api.status["phase"] == "Active" and api.status["prompt"]["lifetime"] == 1


def test_a_task_the_models_refuse_is_an_error_once_and_nothing_else_is_done(api: FakeApi) -> None:
    """The models mirror the CRD, so the API server should never hold a Task they refuse; should it
    (a bug of ours), the task says so in status and an Event, and the operator makes no workspace for it
    nor fails on it at every event."""
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    body = task_body("5")
    del body["spec"]["prompt"]
    v = no_workspace(task_body("5"), api)
    v.tasks = tasks_index({KEY: body})
    run(reconciler, v)
    assert api.status == {"phase": "Error", "message": "The Task is invalid at spec.prompt: Field required"}
    assert events == ["InvalidTask"] and api.calls == []

    v.tasks = tasks_index({KEY: {**body, "status": api.status}})  # our write, back
    run(reconciler, v)
    assert len(api.status_patches) == 1 and events == ["InvalidTask"] and api.calls == []

    v.tasks = tasks_index({KEY: task_body(str(api.version), api.status)})  # fixed: an ordinary task
    run(reconciler, v)
    assert api.status["phase"] == "Pending" and ("create", "Pod", POD) in api.calls
