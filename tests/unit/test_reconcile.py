"""The reconciler's write discipline: one status patch when something changed, none otherwise, even while
the watch still shows a version older than our own last write."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from taskpod import kube
from taskpod.agentapi import AgentMessage
from taskpod.api.models import AgentStatus, Task, TaskTemplate
from taskpod.controller import reconcile
from taskpod.controller.reconcile import Options, Reconciler, Views
from taskpod.core import naming, plan
from taskpod.core.lifecycle import AgentView, ContainerProblem, NodeView, PodView, StatefulSetView

NS, NAME = "team", "fix-login"
KEY = (NS, NAME)


class FakeIndex:
    def __init__(self, values: dict[Any, Any]) -> None:
        self.values = values

    def get(self, key: Any, default: Any = None) -> Any:
        return [self.values[key]] if key in self.values else default

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


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

    def ensure(self, key: Any, target: Any, answered_before: bool = False) -> None:
        assert target is not None and target.pod_ip == "127.1.0.5"

    def client(self, key: Any) -> FakeAgent:
        return self.agent


class FakeApi:
    """Stands in for the API server: remembers the task's status and counts writes."""

    def __init__(self) -> None:
        self.version = 10
        self.status: dict[str, Any] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.applies: list[dict[str, Any]] = []

    async def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.status_patches.append(copy.deepcopy(status))
        self.version += 1
        self.status = _merge(self.status, status)
        return {"metadata": {"resourceVersion": str(self.version)}, "status": copy.deepcopy(self.status)}

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applies.append(obj)
        return obj

    async def scale_statefulset(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        raise AssertionError("scaled by hand: these tests always have a template to apply")

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        raise AssertionError("no pod here is stuck at an older revision")

    async def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        return task_body(str(self.version), self.status)

    async def pod_refusal(self, pod: dict[str, Any]) -> str | None:
        return None

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


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


def views(task: dict[str, Any], api: FakeApi) -> Views:
    """An Active workspace whose children already match what the operator would build."""
    from taskpod.api.models import Task
    from taskpod.core import workspace

    template = TaskTemplate.model_validate(
        {"metadata": {"name": "default", "namespace": NS}, "spec": {"pod": {"image": "agent:1"}}}
    )
    parsed = Task.model_validate(task)
    sts = workspace.statefulset(parsed, template, 1, 1, None)
    service = workspace.service(parsed, template)
    pod = PodView(
        name=f"{NAME}-0",
        phase="Running",
        node_name="n0",
        pod_ip="127.1.0.5",
        ready=True,
        lifetime=1,
        agent_port=3284,
    )
    return Views(
        tasks=FakeIndex({KEY: task}),
        templates=FakeIndex({(NS, "default"): template}),
        statefulsets=FakeIndex({KEY: StatefulSetView.parse(sts)}),
        pods=FakeIndex({KEY: pod}),
        services=FakeIndex({KEY: workspace.spec_hash(service)}),
        nodes=FakeIndex({"n0": NodeView("n0", ready=True)}),
    )


def reconciler_with(events: list[str], api: FakeApi, **options: Any) -> Reconciler:
    r = Reconciler(event=lambda body, **kw: events.append(kw["reason"]), api=api, options=Options(**options))
    r.agents = FakeAgents()  # type: ignore[assignment]
    return r


def run(reconciler: Reconciler, v: Views, *, if_changed: bool = False) -> None:
    asyncio.run(reconciler.reconcile(KEY, v, if_changed=if_changed))


def test_first_reconcile_writes_status_once_and_tells_the_story(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    run(reconciler, views(task_body("5"), api))
    assert len(api.status_patches) == 1
    assert api.status_patches[0]["phase"] == "Active"
    assert api.applies == []  # children already match: nothing to apply
    assert events == ["PromptDelivered", "WorkspaceReady"]


def test_a_stale_watch_version_does_not_cause_a_second_write(api: FakeApi) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    stale = task_body("5")
    run(reconciler, views(stale, api))
    # More events arrive while the watch still shows version 5, from before our write.
    run(reconciler, views(stale, api))
    run(reconciler, views(stale, api))
    assert len(api.status_patches) == 1 and events == ["PromptDelivered", "WorkspaceReady"]
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

    # Our own status write comes back; a StatefulSet status update (no view keeps it) and an older
    # version of the task still in the watch: nothing a reconcile reads has changed.
    ours = views(task_body(str(api.version), api.status), api)
    run(reconciler, ours, if_changed=True)
    run(reconciler, first, if_changed=True)
    run(reconciler, views(task_body(str(api.version), api.status), api), if_changed=True)
    assert len(ensured) == 1

    # The pod fails: that reconcile runs, and says so in status.
    changed = views(task_body(str(api.version), api.status), api)
    pod = _one_value(changed.pods)
    changed.pods = FakeIndex({KEY: replace(pod, phase="Failed", ready=False)})
    run(reconciler, changed, if_changed=True)
    assert len(ensured) == 2 and api.status_patches[-1]["phase"] == "Error"

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


def _one_value(index: Any) -> Any:
    return next(iter(index.values.values()))


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
    assert events == ["PromptDelivered", "ReconcileFailed", "WorkspaceReady"]
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
    assert [a["kind"] for a in api.applies] == ["ConfigMap", "StatefulSet"]
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


async def _async(value: Any) -> Any:
    return value


def paused_body(version: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = task_body(version, status)
    body["spec"]["paused"], body["metadata"]["generation"] = True, 2
    return body


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
        [scaled] = [a for a in api.applies if a["kind"] == "StatefulSet"]
        assert scaled["spec"]["replicas"] == 0

        v.statefulsets = FakeIndex({KEY: StatefulSetView.parse(scaled)})
        v.pods = FakeIndex({KEY: replace(_one_value(v.pods), deleting=True)})
        v.tasks = FakeIndex({KEY: paused_body(str(api.version), api.status)})
        await reconciler.reconcile(KEY, v)  # the pod is stopping: nothing new to write
        v.pods = FakeIndex({})
        v.tasks = FakeIndex({KEY: paused_body(str(api.version), api.status)})
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
    assert events[-2:] == ["Pausing", "Paused"]


def test_a_task_paused_before_its_prompt_went_in_gets_no_prompt(api: FakeApi) -> None:
    reconciler = reconciler_with([], api)
    counting_reconciles(reconciler)
    run(reconciler, views(paused_body("5"), api))
    assert reconciler.agents.agent.sent == []  # type: ignore[union-attr]
    assert api.status["phase"] == "Pending" and api.status["message"].startswith("Pausing")


def test_a_step_within_a_phase_waits_for_the_next_then_is_written(api: FakeApi) -> None:
    """Steps within Pending or Initializing fold into one status write per hold; a new phase goes at once.
    At 1,000 tasks a resume made 4.6 status patches per task, each one a write for etcd."""
    reconciler = reconciler_with([], api)
    counting_reconciles(reconciler)
    reconciler.options.status_hold = 0.1

    async def scenario() -> list[tuple[str, str]]:
        reconciler.start(1)
        await reconciler.reconcile(KEY, views(task_body("5"), api))  # Active
        v = views(task_body(str(api.version), api.status), api)
        pod = _one_value(v.pods)
        steps = [
            replace(pod, ready=False, phase="Pending"),  # the containers restart: a new phase, at once
            replace(pod, ready=False),  # then the agent starts: held, and written when the hold ends
            replace(pod, ready=False, phase="Pending"),  # held, and folded into what comes next
            pod,  # Active again: at once
        ]
        for step in steps:
            v.pods = FakeIndex({KEY: step})
            await reconciler.reconcile(KEY, v)
            await asyncio.sleep(0.3 if step.phase == "Running" and not step.ready else 0)
        await reconciler.stop()
        return [(p["phase"], p["message"]) for p in api.status_patches]

    starting = "Workspace is starting: its containers are being created."
    assert asyncio.run(scenario()) == [
        ("Active", "Workspace is ready."),
        ("Initializing", starting),
        ("Initializing", "Workspace pod fix-login-0 is not Ready."),  # its agent answered before
        ("Active", "Workspace is ready."),
    ]


def test_a_deleted_task_stops_its_follower_and_is_forgotten(api: FakeApi) -> None:
    stopped: list[Any] = []
    reconciler = reconciler_with([], api)
    agents = reconciler.agents
    assert isinstance(agents, FakeAgents)
    run(reconciler, views(task_body("5"), api))
    agents.ensure = lambda key, target, answered_before=False: stopped.append((key, target))
    gone = views(task_body("5"), api)
    gone.tasks = FakeIndex({})
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


def _created(api: FakeApi) -> list[dict[str, Any]]:
    return [a for a in api.applies if a["kind"] == "StatefulSet"]


def test_a_statefulset_the_watch_has_yet_to_show_is_not_applied_again(api: FakeApi) -> None:
    """Found measuring: at N = 1,000 with 64 API threads, 18 tasks got a second StatefulSet apply and a
    second WorkspaceCreated Event, from reconciles that ran before the watch showed what they created."""
    events: list[str] = []
    reconciler = reconciler_with(events, api)

    async def scenario() -> None:
        v = views(task_body("5"), api)
        v.statefulsets, v.pods = FakeIndex({}), FakeIndex({})
        await reconciler.reconcile(KEY, v)
        await reconciler.reconcile(KEY, v)  # the watch is still behind
        assert len(_created(api)) == 1 and events.count("WorkspaceCreated") == 1
        v.statefulsets = FakeIndex({KEY: StatefulSetView.parse(_created(api)[0])})
        await reconciler.reconcile(KEY, v)  # it has caught up
        await reconciler.stop()

    asyncio.run(scenario())
    assert len(_created(api)) == 1 and events.count("WorkspaceCreated") == 1
    assert KEY not in reconciler.memory.applied  # nothing kept once the watch shows it


@pytest.mark.parametrize("how", ["deleted", "watch never showed it"])
def test_a_statefulset_gone_since_our_apply_is_created_again(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    events: list[str] = []
    reconciler = reconciler_with(events, api)
    if how != "deleted":
        monkeypatch.setattr(reconcile, "APPLIED_TRUST", 0.0)

    async def scenario() -> None:
        v = views(task_body("5"), api)
        v.statefulsets, v.pods = FakeIndex({}), FakeIndex({})
        await reconciler.reconcile(KEY, v)
        if how == "deleted":
            reconciler.statefulset_deleted(KEY)
        await reconciler.reconcile(KEY, v)
        await reconciler.stop()

    asyncio.run(scenario())
    assert len(_created(api)) == 2 and events.count("WorkspaceCreated") == 2


def test_our_own_apply_coming_back_runs_no_reconcile_but_a_change_by_someone_else_does(
    api: FakeApi,
) -> None:
    """Found measuring: at N = 1,000, the watch bringing back each StatefulSet we had just scaled ran a
    reconcile per task and phase, with nothing left to do."""
    reconciler = reconciler_with([], api)
    ensured = counting_reconciles(reconciler)

    async def scenario() -> None:
        v = views(paused_body("5"), api)
        await reconciler.reconcile(KEY, v, if_changed=True)  # the pause: scaled to zero
        [scaled] = _created(api)
        assert scaled["spec"]["replicas"] == 0 and len(ensured) == 1

        v.tasks = FakeIndex({KEY: paused_body(str(api.version), api.status)})  # our status write, back
        v.statefulsets = FakeIndex({KEY: StatefulSetView.parse(scaled)})  # and our apply
        await reconciler.reconcile(KEY, v, if_changed=True)
        assert len(ensured) == 1

        # Someone scales it up by hand: that runs, and the pause holds.
        v.statefulsets = FakeIndex({KEY: replace(StatefulSetView.parse(scaled), replicas=1)})
        await reconciler.reconcile(KEY, v, if_changed=True)
        await reconciler.stop()
        assert len(ensured) == 2 and [a["spec"]["replicas"] for a in _created(api)] == [0, 0]

    asyncio.run(scenario())


def _failure(status: int, message: str, cause: str = "") -> kube.ApiException:
    exc = kube.ApiException(status=status, reason="x")
    causes = [{"reason": cause}] if cause else []
    exc.body = json.dumps({"kind": "Status", "message": message, "details": {"causes": causes}})
    return exc


@pytest.mark.parametrize(
    ("failure", "refused", "terminating"),
    [
        (
            _failure(422, 'StatefulSet.apps "x" is invalid: spec.template.annotations: Invalid value'),
            True,
            False,
        ),
        (_failure(403, 'statefulsets.apps "x" is forbidden: exceeded quota: q'), True, False),
        (
            _failure(500, "failed to create typed patch object (/x): .spec.replicas: expected numeric"),
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


def _sts(uid: str = "s1", owner: str | None = "u1", revision: str | None = "r2") -> StatefulSetView:
    return StatefulSetView(NAME, 1, 1, "h", {}, uid=uid, owner_uid=owner, update_revision=revision)


def _pod(owner: str | None = "s1", revision: str | None = "r2", **kw: Any) -> PodView:
    return PodView(
        f"{NAME}-0", kw.pop("phase", "Running"), uid="p1", owner_uid=owner, revision=revision, **kw
    )


TASK = Task.model_validate(
    {"metadata": {"name": NAME, "namespace": NS, "uid": "u1"}, "spec": {"prompt": "p"}}
)


@pytest.mark.parametrize(
    ("sts", "pod", "leftover"),
    [
        (_sts(), _pod(), None),
        (None, None, None),
        (_sts(owner="u0"), _pod(owner="s0"), f"StatefulSet {NAME}"),  # a deleted task's, same name
        (None, _pod(owner="s0"), f"pod {NAME}-0"),  # its StatefulSet gone, its pod not yet
        (_sts(), _pod(owner="s0"), f"pod {NAME}-0"),  # ours made, the old pod still going
        (_sts(owner=None), _pod(owner=None), None),  # no owner said: nothing to tell apart
    ],
    ids=["ours", "nothing", "old statefulset", "old pod alone", "old pod beside ours", "unowned"],
)
def test_a_deleted_tasks_workspace_is_never_taken_for_ours(
    sts: StatefulSetView | None, pod: PodView | None, leftover: str | None
) -> None:
    assert plan.leftover(TASK, sts, pod) == leftover


BACKOFF = (ContainerProblem("agent", "ImagePullBackOff", "not found"),)


@pytest.mark.parametrize(
    ("pod", "stuck"),
    [
        (_pod(revision="r1", phase="Pending", waiting=BACKOFF), True),
        (_pod(revision="r1", phase="Failed"), True),
        (_pod(revision="r2", phase="Pending", waiting=BACKOFF), False),  # the current revision: Error
        (_pod(revision="r1", ready=True), False),  # rolls by itself
        (_pod(revision="r1", phase="Pending"), False),  # still starting
        (_pod(revision="r1", phase="Failed", deleting=True), False),  # going already
    ],
    ids=["older, cannot pull", "older, failed", "current", "older, ready", "older, starting", "deleting"],
)
def test_a_pod_stuck_at_an_older_revision_is_replaced(pod: PodView, stuck: bool) -> None:
    assert plan.stuck_at_an_older_revision(_sts(), pod) is stuck
