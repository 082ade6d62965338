"""One reconcile per task: gather what the watches saw, decide, act, and write status once.

Every trigger (the Task, its template, its pod or volume claim changing) runs the same
level-triggered reconcile, serialised per task so that the last writer always saw the newest facts:
two writers racing could otherwise leave an older observation in status. It writes only what differs,
so an idle cluster costs no API calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from taskpod import kube
from taskpod.agentapi import AgentClient, AgentError, AgentUnavailable
from taskpod.api.models import (
    AgentStatus,
    GitState,
    InvalidTask,
    Key,
    Phase,
    Task,
    TaskStatus,
    TaskTemplate,
    parse_time,
    rfc3339,
)
from taskpod.controller import metrics, reports
from taskpod.controller.agents import Agents, Target, deliver_prompt
from taskpod.controller.names import Namer
from taskpod.controller.workqueue import Backoff, WorkQueue
from taskpod.core import agentstate, automation, clock, lifecycle, plan, snapshots, workspace
from taskpod.core.lifecycle import AgentView, ClaimView, NodeView, Observation, PodView

log = logging.getLogger("taskpod")
SNAPSHOT_TIMEOUT = 5.0  # seconds; a pause never waits longer on an unreachable agent
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# A task on its way somewhere passes several steps, often a moment apart: pod created, scheduled,
# started; the agent answering, taking its prompt, working, reporting, going idle. A change of status
# waits this long, so that the steps after it fold into one write (see plan.status_write); the first
# status and reaching Paused, Error or Unknown go at once. So STATE lags the agent by at most this.
STATUS_HOLD = 1.0  # seconds
# The pod watch can be a moment behind our own writes, and a reconcile that reads it then would create
# (or delete) again. So the pod as we created it stands in for the watch's nothing, and the pod we
# deleted counts as going, until the watch shows it or this long has passed.
WRITE_TRUST = 30.0  # seconds
IDLE_SNAPSHOT_RETRY = 10.0  # seconds before an idle agent's unread conversation is read again
REFUSED_RETRY = 10.0  # seconds before a pod or claim the API server refused is asked for again
LEFTOVER_RECHECK = 5.0  # seconds between looks at a deleted task's workspace that garbage collection removes
MAX_MESSAGE = 4096  # characters of an error kept in status.message


@dataclass(frozen=True)
class _Written:
    """The status we last wrote, and the task versions that predate it (the watch may still show those)."""

    uid: str
    version: str  # the resourceVersion our write produced
    status: Mapping[str, Any]
    stale_versions: tuple[str, ...]  # newest last, a bounded few


@dataclass(frozen=True)
class _Inputs:
    """Everything a reconcile of one task reads from the watches: equal inputs, equal outcome. What the
    agent says and what a reconcile leaves pending (a retry, a name, a report) come as pokes, which
    always run."""

    uid: str
    generation: int | None  # the spec
    deleting: bool
    status_version: str
    template: Any  # TaskTemplate, or the reason it is invalid, or None
    pod: PodView | None
    claim: ClaimView | None
    node: NodeView | None
    agent: AgentView | None


class Index(Protocol):
    """The read side of a Kopf index or an informer's cache: key -> the values stored for it."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Api(Protocol):
    """The Kubernetes calls a reconcile makes: taskpod.kube in the operator, a fake in tests."""

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def patch_task_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def adopt(self, obj: Mapping[str, Any], owner: dict[str, Any], uid: str) -> dict[str, Any]: ...

    async def delete_pod(self, namespace: str, name: str, uid: str) -> bool: ...

    async def delete_task_once(self, namespace: str, name: str, uid: str) -> bool: ...

    async def get_task(self, namespace: str, name: str) -> dict[str, Any]: ...

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class EventSink(Protocol):
    def __call__(self, task: Task | InvalidTask, *, type: str, reason: str, message: str) -> None: ...


@dataclass
class Views:
    """What a reconcile reads: what the watches last saw of each kind (Kopf's indexes of Tasks and
    TaskTemplates, the informers' caches of pods, claims and nodes)."""

    tasks: Index
    templates: Index
    pods: Index
    claims: Index
    nodes: Index


def _one(index: Index, key: Any) -> Any:
    values = index.get(key)
    return next(iter(values), None) if values else None


def _node(views: Views, pod: PodView | None) -> NodeView | None:
    return _one(views.nodes, pod.node_name) if pod is not None and pod.node_name else None


def _target(task: Task, pod: PodView | None, even_if_paused: bool = False) -> Target | None:
    """The agent to follow: the one in the running pod, unless the task is pausing. A pausing agent is
    being stopped: following it on made a reconcile of every reconnect as it went (at N = 1,000, 13 CPU-s
    more in a pause). The pod says where its agent listens, so neither needs the template."""
    if task.spec.paused and not even_if_paused:
        return None
    if pod is None or pod.deleting or pod.phase != "Running" or not pod.pod_ip or pod.agent_port is None:
        return None
    return Target(pod.uid, task.namespace, pod.name, pod.pod_ip, pod.agent_port, pod.lifetime or 0)


@dataclass(frozen=True)
class _Children:
    """A workspace's pod and claim, as a reconcile read or left them."""

    pod: PodView | None
    claim: ClaimView | None


@dataclass
class _Pass:
    """One reconcile of one task: what it read, and what its steps have made of it so far."""

    task: Task
    key: Key
    template: TaskTemplate | None
    pod: PodView | None
    claim: ClaimView | None
    lifetime: int  # the current pod's, else the last one's as status recorded it
    action: plan.PodAction = plan.PodAction.NONE
    workspace_error: str | None = None
    leftover: str | None = None  # what a deleted task of the same name left
    restarting: str | None = None  # why no pod runs while a failed one's successor waits
    automated: bool = False  # it has lifecycle automation (core/automation.py) to decide
    paused_by: automation.PauseReason | None = None  # who holds it paused, if anyone
    pause_message: str | None = None  # an automatic pause's why, for the Paused phase's message


@dataclass(frozen=True)
class _Wanted:
    made_of: tuple[str, int, str]  # the task's uid and generation, the template's resourceVersion
    spec_hash: str | None  # of the pod they make; None when they make none
    refusal: str | None  # why they make none


@dataclass(frozen=True)
class _Created:
    """The pod as our create left it, and when (loop time)."""

    view: PodView
    at: float


@dataclass(frozen=True)
class _Deleted:
    """The pod we deleted, and when (loop time)."""

    uid: str
    at: float
    lifetime: int | None = None  # its lifetime: status may not say it yet (a write held)


@dataclass(frozen=True)
class _Recreation:
    """Failed pods replaced in a row, and when (loop time) the next may start."""

    count: int
    due: float
    why: str


@dataclass(frozen=True)
class _DeliveryFailure:
    attempts: int  # in a row
    reason: str
    delay: float  # seconds between the last attempt and the next
    due: float  # loop time of the next attempt (the clock of the queue's timers)

    def shown(self) -> agentstate.DeliveryFailure:
        return agentstate.DeliveryFailure(self.attempts, self.reason, self.delay)


@dataclass
class Memory:
    """What this process last wrote, applied or read for each task: a reconcile writes only what
    differs, while the watches may still show what was there before our own writes."""

    written: dict[Key, _Written] = field(default_factory=dict)  # the status we last wrote
    created: dict[Key, _Created] = field(default_factory=dict)  # the pod, until the watch shows it
    deleted: dict[Key, _Deleted] = field(default_factory=dict)  # the pod last deleted, until the next one
    # uids of a task's pods, or of the task itself, that the API server says are gone while the watch
    # still shows them: Kopf's re-list after a watch gap adds what it finds and never removes what it
    # missed, so such an object stays in its index for good
    gone: dict[Key, set[str]] = field(default_factory=dict)
    recreations: dict[Key, _Recreation] = field(default_factory=dict)  # failed pods, until one is Ready
    told_claim_deleting: dict[Key, str] = field(default_factory=dict)  # uid of the claim we warned of
    # what makes the wanted pod (task uid and generation, template version), and its spec hash or why
    # the two make none
    wanted: dict[Key, _Wanted] = field(default_factory=dict)
    seen: dict[Key, _Inputs] = field(default_factory=dict)  # what the last reconcile read
    asked: dict[Key, tuple[bool, float]] = field(default_factory=dict)  # paused wish, when first seen

    def wrote_status(self, key: Key, uid: str, read_version: str, written: Mapping[str, Any]) -> None:
        """Our status write: the task as `written` back, over the version read (`read_version`), which
        the watch may still show, as may the versions of our earlier writes."""
        previous = self.written.get(key)
        stale: tuple[str, ...] = ()
        if previous is not None and previous.uid == uid:
            stale = (*previous.stale_versions, previous.version)
        stale = (*stale, read_version)
        version = written["metadata"]["resourceVersion"]
        self.written[key] = _Written(uid, version, written.get("status") or {}, stale[-16:])

    def forget(self, key: Key) -> None:
        for memory in vars(self).values():
            memory.pop(key, None)


@dataclass
class News:
    """What reconciles learnt that the task's status does not show yet: the next status write carries it."""

    prompts: dict[Key, dict[str, Any]] = field(default_factory=dict)  # delivered
    snapshots: dict[Key, dict[str, Any]] = field(default_factory=dict)  # taken
    reports: dict[Key, agentstate.Report] = field(default_factory=dict)  # received from the agent
    git: dict[Key, GitState] = field(default_factory=dict)  # the checkout's, received from the workspace
    delivery_failures: dict[Key, _DeliveryFailure] = field(default_factory=dict)  # the prompt's, in a row

    def forget(self, key: Key) -> None:
        for news in vars(self).values():
            news.pop(key, None)


@dataclass
class Options:
    """How a Reconciler behaves: made from the operator's settings, or a test's choice."""

    agent_grace: dt.timedelta = lifecycle.AGENT_GRACE  # agent silence before Unknown
    report_url: str | None = None  # where workspaces send their agent's reports
    naming_env: Mapping[str, str] = field(default_factory=dict)  # ANTHROPIC_* for display names
    workers: int = 0  # reconciles at a time, started with the first event (0: only explicit start())
    status_hold: float = STATUS_HOLD
    now: Callable[[], dt.datetime] = clock.now  # the time status tells (a fake clock in tests)


@dataclass
class Reconciler:
    event: EventSink
    api: Api = field(default=kube)  # the Kubernetes calls; a fake in tests
    agents: Agents | None = None
    options: Options = field(default_factory=Options)
    memory: Memory = field(default_factory=Memory)
    news: News = field(default_factory=News)
    _backoff: Backoff[Key] = field(default_factory=lambda: Backoff(RETRY_DELAYS))  # failed reconciles
    _views: Views | None = None
    queue: WorkQueue[Key] = field(init=False)
    _namer: Namer = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._process)
        self._namer = Namer(self.options.naming_env, self.poke)

    def phase_counts(self) -> Counter[str]:
        """Tasks by the phase their status shows, from the watch (run it on the event loop)."""
        counts: Counter[str] = Counter()
        if self._views is not None:
            for key in list(self._views.tasks):
                for task in self._views.tasks.get(key) or []:
                    counts[task.stored_status.get("phase") or "Pending"] += 1
        return counts

    async def accept_report(self, who: reports.Reporter, report: reports.AgentReport) -> str | None:
        """Take an agent's report if it comes from its task's current pod; else say why not."""
        key, pod = self._reporting(who)
        if pod is None:
            return f"pod {who.pod} is not the current workspace of a task; its report is ignored"
        lifetime = pod.lifetime or 0
        said = agentstate.Report(report.state, report.message, report.uri, lifetime, report.at)
        self.news.reports[key] = said
        self.poke(key)
        return None

    async def accept_git(self, who: reports.Reporter, state: GitState) -> str | None:
        """Take a workspace's git state if it comes from its task's current pod, which has a repository
        (whose url status shows beside it); else say why not. A pod being stopped for a pause still
        counts: its last word is the state a paused task shows."""
        key, pod = self._reporting(who)
        if pod is None:
            return f"pod {who.pod} is not the current workspace of a task; its git state is ignored"
        if pod.clone is None:
            return f"the task of pod {who.pod} has no repository"
        self.news.git[key] = state.model_copy(update={"url": pod.clone.url})
        self.poke(key)  # its push, if it tells one, gets its Event with the status that shows it
        return None

    def _reporting(self, who: reports.Reporter) -> tuple[Key, PodView | None]:
        """The task a reporting pod is the workspace of, and that pod if it is the task's current one."""
        key = (who.namespace, who.pod.rsplit("-", 1)[0])
        pod: PodView | None = _one(self._views.pods, key) if self._views else None
        if pod is None or pod.uid != who.pod_uid or pod.name != who.pod:
            return key, None
        return key, pod

    def poke(self, key: Key) -> None:
        """Ask for a reconcile of `key` that runs even if no view changed (the agent said something, a
        name or a report came in). While its status is held and its prompt is in, none: the hold's end
        runs one, with all that came meanwhile (an agent's turn is a dozen pokes within a second)."""
        if self._views is None or (self.queue.holding(key) and self._prompt_recorded(key)):
            return
        self.enqueue(key, self._views, forced=True)

    def notice(self, key: Key) -> None:
        """A watch (the informers') saw a change of what `key`'s reconcile reads: run it, unless nothing
        it reads changed. Before the workers run, nothing: the Tasks' first events run every task."""
        if self.queue.started:
            self.queue.add(key)

    def _prompt_recorded(self, key: Key) -> bool:
        """Whether a prompt is delivered (as far as we know): a new agent's first answer, before it, is a
        poke that runs at once, so that the prompt goes in and the agent's turn folds into the same hold."""
        task = _one(self._views.tasks, key) if self._views is not None else None
        return isinstance(task, Task) and bool(self._prompt_record(key, task))

    def _prompt_record(self, key: Key, task: Task) -> Mapping[str, Any] | None:
        """The record of the last prompt delivered: this process's, not written yet, or status's."""
        return self.news.prompts.get(key) or self._current_status(key, task).get("prompt")

    def enqueue(self, key: Key, views: Views, *, forced: bool = False) -> None:
        """Queue a reconcile of `key` for the workers: a key queued twice runs once, and a watch event
        returns at once. Kopf keeps each object's pending events (whole bodies) until its handler
        returns, so awaiting the reconcile there held 7,500 waiting workers and 76 MB of event bodies at
        5,000 tasks."""
        self._views = views
        if not self.queue.started and self.options.workers:
            # Started here, from a Kopf handler: Kopf's Events need the context its handlers run in.
            self.start(self.options.workers)
        self.queue.add(key, forced=forced)

    def start(self, workers: int) -> None:
        """Start the reconcile workers on the running loop: at most this many reconciles at a time."""
        self.queue.start(workers)

    async def stop(self) -> None:
        await self.queue.stop()

    async def _process(self, key: Key, forced: bool) -> None:
        if self._views is not None:
            await self.reconcile(key, self._views, if_changed=not forced)

    async def reconcile(self, key: Key, views: Views, *, if_changed: bool = False) -> None:
        """Bring one task in line with what the watches saw. `if_changed` (a watch event): skip it when
        nothing the reconcile reads has changed since the last one, e.g. our own status write coming
        back, or a pod status update that no view keeps."""
        self._views = views
        async with self.queue.serialised(key):
            task: Task | InvalidTask | None = _one(views.tasks, key)
            if isinstance(task, InvalidTask):
                await self._refuse(key, task)
                return
            if task is not None and task.metadata.uid in self.memory.gone.get(key, ()):
                return  # deleted while the watch was down, a ghost in the index (see Memory.gone): let be
            if task is not None:
                inputs = self._inputs(key, task, views)
                if if_changed and self.memory.seen.get(key) == inputs:
                    metrics.RECONCILES_SKIPPED.inc()
                    return
                started = time.monotonic()
                try:
                    left = await self._reconcile(task, views)
                except Exception as exc:
                    self.memory.seen.pop(key, None)
                    if kube.namespace_terminating(exc):  # the task goes with it: nothing to retry or tell
                        log.debug("namespace of %s/%s is being deleted; not reconciling it", *key)
                        return
                    metrics.RECONCILE_ERRORS.inc()
                    if version := await self._retry_later(key, task, exc):
                        # Our own write of the failure, coming back, is no reason to retry before the timer.
                        self.memory.seen[key] = replace(inputs, status_version=version)
                else:
                    self._backoff.succeeded(key)
                    # As read before the reconcile (what changed meanwhile must run the next one), but
                    # with what our own writes produced, which the watches will bring back: a pod we
                    # created coming back is no news.
                    self.memory.seen[key] = replace(
                        inputs, status_version=self._status_version(key, task), pod=left.pod, claim=left.claim
                    )
                finally:
                    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
                return
            self._forget(key)  # deleted: its children go by garbage collection
        self.queue.forget(key)

    async def _reconcile(self, task: Task, views: Views) -> _Children:
        """The steps, in order. Returns the workspace's pod and claim as this reconcile left them."""
        key = (task.namespace, task.name)
        template = _one(views.templates, (task.namespace, task.spec.template))
        if isinstance(template, TaskTemplate) and (refused := self._wanted(key, task, template).refusal):
            template = refused  # no workspace can be made of the two (say, a repository with no url)
        recorded = (self._current_status(key, task).get("workspace") or {}).get("lifetime") or 0
        if (deleted := self.memory.deleted.get(key)) is not None and deleted.lifetime is not None:
            recorded = max(recorded, deleted.lifetime)  # the pod we stopped, whose status may be held
        step = _Pass(
            task,
            key,
            template if isinstance(template, TaskTemplate) else None,
            self._as_known(key, views.pods.get(key) or ()),
            _one(views.claims, key),
            lifetime=recorded,
            workspace_error=template if isinstance(template, str) else None,  # the reason it is invalid
        )
        if task.metadata.deletion_timestamp is not None:
            return _Children(step.pod, step.claim)
        if await self._automate(step):
            return _Children(step.pod, step.claim)  # deleted: its children go by garbage collection
        task = step.task  # paused, as every step after this sees it, while an automatic pause holds it
        self._note_wish(key, task.spec.paused)
        if task.spec.paused:
            self.news.delivery_failures.pop(key, None)  # a new attempt comes with the next lifetime
        if (leftover := plan.leftover(task, step.claim, step.pod)) is not None:
            # Never used (its files, its conversation): it goes by garbage collection.
            step.pod = step.claim = None
            step.leftover = leftover
            self.queue.add_after(key, LEFTOVER_RECHECK)
        else:
            if step.pod is not None and step.pod.lifetime is not None:
                step.lifetime = step.pod.lifetime  # newer than status, should a crash have come between
            step.action = plan.pod_action(task.spec.paused, step.pod, self._wanted_hash(step))
        await self._keep_the_conversation(step)
        await self._apply_workspace(step)
        obs = self._observe(step, views)
        verdict = lifecycle.derive_phase(obs)  # once: every step after this reads it
        await self._converse(step, obs, verdict)
        read = self._status_version(key, task)
        await self._write_status(task, obs, verdict)
        if step.automated and self._status_version(key, task) != read:
            # The automation decided from the status this pass started with; what it wrote (the agent's
            # report of complete, its idle clock) may call for a decision now: one more look, no write.
            self.queue.add(key, forced=True)
        return _Children(step.pod, step.claim)

    async def _automate(self, step: _Pass) -> bool:
        """Lifecycle automation (see core/automation.py): an idle or finished task pauses on its own, an
        automatically paused one wakes, a finished one is deleted in time. A new automatic pause or a
        wake is written to status before anything acts on it, so that an operator stopped at any point
        finds it there. While one holds the task, `step.task` is the task with spec.paused true: the
        steps after this act on it as on a user's pause. Returns True when the task was deleted."""
        task, key = step.task, step.key
        if task.spec.paused:
            step.paused_by = automation.PauseReason.REQUESTED
        template = step.template.spec if step.template is not None else None
        policy = automation.policy(task.spec, template)
        current = self._current_status(key, task)
        if not policy.any and not current.get("autoPause"):
            return False
        step.automated = True
        wake = task.metadata.annotations.get(automation.WAKE_ANNOTATION, "")
        agent = self.agents.views.get(key) if self.agents is not None else None
        heard = agent.status if agent is not None and agent.healthy else None
        seen = automation.seen_from(current, task.spec.paused, wake, heard)
        now = self.options.now()
        decision = automation.decide(policy, seen, now)
        if decision.auto_pause is not None:
            written = await self.api.patch_task_status(*key, {"autoPause": decision.auto_pause})
            self.memory.wrote_status(key, task.metadata.uid, task.metadata.resource_version, written)
        if decision.delete:
            # Told once it is done: a delete the API server refuses is retried, not told again and again.
            await self.api.delete_task_once(*key, task.metadata.uid)
        if decision.event is not None:
            event = decision.event
            self.event(task, type=event.type, reason=event.reason, message=event.message)
            metrics.AUTOMATIC_ACTIONS.labels(action=decision.event.reason).inc()
        if decision.delete:
            return True
        if decision.look_again is not None:
            self.queue.add_after(key, decision.look_again + 1)  # `now` is in whole seconds
        if decision.paused_by is not None:
            step.paused_by = decision.paused_by
            step.pause_message = automation.pause_message(decision.paused_by, policy)
            step.task = task.model_copy(update={"spec": task.spec.model_copy(update={"paused": True})})
        return False

    def _wanted(self, key: Key, task: Task, template: TaskTemplate) -> _Wanted:
        """The pod's spec hash that task and template make now (see plan.pod_action), or why they make
        none (workspace.refusal): worked out only when either has changed since, not per reconcile."""
        made_of = (task.metadata.uid, task.metadata.generation, template.metadata.resource_version or "")
        known = self.memory.wanted.get(key)
        if known is None or known.made_of != made_of:
            if (refusal := workspace.refusal(task, template)) is not None:
                known = _Wanted(made_of, None, refusal)
            else:
                body = workspace.pod(task, template, 0, self.options.report_url)
                known = _Wanted(made_of, workspace.spec_hash(body), None)
            self.memory.wanted[key] = known
        return known

    def _wanted_hash(self, step: _Pass) -> str | None:
        """The spec hash of the pod to run, or None when there is none to make."""
        if step.template is None or step.workspace_error is not None:
            return None
        return self._wanted(step.key, step.task, step.template).spec_hash

    async def _keep_the_conversation(self, step: _Pass) -> None:
        """A pod that is to stop (a pause, or a replacement) first has its conversation kept."""
        task = step.task
        if step.action in (plan.PodAction.STOP, plan.PodAction.REPLACE) and not self._stopped_before(step):
            # The agent to snapshot, followed or not (e.g. just restarted).
            target = _target(task, step.pod, even_if_paused=True)
            await self._snapshot(task, quiet=step.action is plan.PodAction.REPLACE, target=target)
        elif task.spec.paused and step.pod is None:
            await self._recover_snapshot_record(task)

    async def _apply_workspace(self, step: _Pass) -> None:
        """Do what plan.pod_action said: stop, replace or recreate the pod, or create the claim and a pod.
        An orphaned claim (an upgrade's) is adopted; what the API server refuses is told in status."""
        key, pod, claim = step.key, step.pod, step.claim
        if claim is not None and claim.owner_uid is None and step.leftover is None:
            owner = workspace.owner_reference(step.task)
            named = {"kind": "PersistentVolumeClaim", "metadata": {"namespace": key[0], "name": claim.name}}
            step.claim = claim = ClaimView.parse(await self.api.adopt(named, owner, claim.uid))
        if claim is not None and claim.deleting and self.memory.told_claim_deleting.get(key) != claim.uid:
            self.memory.told_claim_deleting[key] = claim.uid
            message = (
                f"Volume claim {claim.name} is being deleted, not by taskpod: the workspace's files go with "
                "it once no pod uses it, and the next pod starts on a new, empty claim."
            )
            self.event(step.task, type="Warning", reason="ClaimDeleting", message=message)
        if pod is not None and pod.ready:
            self.memory.recreations.pop(key, None)  # one that runs: the next failure starts afresh
        if pod is not None and step.action in (
            plan.PodAction.STOP,
            plan.PodAction.REPLACE,
            plan.PodAction.RECREATE,
        ):
            again = self._stopped_before(step)  # and told, and its conversation kept: just see it go
            if again:
                pass
            elif step.action is plan.PodAction.REPLACE:
                why = (
                    "it was made by the StatefulSet of an earlier release"
                    if pod.spec_hash is None
                    else "its task or template changed since it was made"
                )
                message = f"Replacing pod {pod.name}: {why}."
                self.event(step.task, type="Normal", reason="PodReplaced", message=message)
            elif step.action is plan.PodAction.RECREATE:
                self._recreating(step, pod)
            found = await self.api.delete_pod(key[0], pod.name, pod.uid)
            self.memory.deleted[key] = _Deleted(pod.uid, asyncio.get_running_loop().time(), step.lifetime)
            if not found:
                self.memory.gone.setdefault(key, set()).add(pod.uid)
            step.pod = replace(pod, deleting=True) if found else None
            if found:  # should the watch never show it go (see _as_known), look again then
                self.queue.add_after(key, WRITE_TRUST, forced=False)  # skipped if the watch did
        elif step.action is plan.PodAction.CREATE and step.template is not None:
            await self._create_pod(step, step.template)
        waiting = self.memory.recreations.get(key)
        if waiting is not None and not step.task.spec.paused and (step.pod is None or step.pod.deleting):
            left = waiting.due - asyncio.get_running_loop().time()
            when = f"in {math.ceil(left)}s" if left > 0 else "once it is gone" if step.pod else "now"
            step.restarting = f"{waiting.why}; a new pod starts {when}."

    def _recreating(self, step: _Pass, pod: PodView) -> None:
        """A failed or exited pod: say why, and when its successor starts (with back-off)."""
        key = step.key
        before = self.memory.recreations.get(key)
        count = before.count + 1 if before is not None else 1
        delay = RETRY_DELAYS[min(count - 1, len(RETRY_DELAYS) - 1)]
        what = "exited" if pod.phase == "Succeeded" else "failed"
        why = f"pod {pod.name} {what} ({pod.ended_why})"
        self.memory.recreations[key] = _Recreation(count, asyncio.get_running_loop().time() + delay, why)
        message = f"Workspace {why}; a new pod starts in {delay:.0f}s."
        self.event(step.task, type="Warning", reason="PodFailed", message=message)

    async def _create_pod(self, step: _Pass, template: TaskTemplate) -> None:
        """The claim if it is missing, then the next pod, unless a failed one's successor must wait or
        the claim is on its way out."""
        task, key = step.task, step.key
        loop_time = asyncio.get_running_loop().time()
        waiting = self.memory.recreations.get(key)
        if waiting is not None and waiting.due > loop_time:
            self.queue.add_after(key, waiting.due - loop_time)
            return
        if step.claim is not None and step.claim.deleting:
            self.queue.add_after(key, LEFTOVER_RECHECK)  # a pod on it would never start: wait for it to go
            return
        what = "volume claim"
        try:
            if step.claim is None:
                made = await self._create_if_absent(workspace.claim(task, template))
                if not made:
                    # One of its name exists that the watch has not shown: whose it is, it shows soon.
                    self.queue.add_after(key, 1.0)
                    return
                step.claim = ClaimView.parse(made)
            what = "pod"
            lifetime = workspace.next_lifetime(step.lifetime, None)
            made = await self._create_if_absent(
                workspace.pod(task, template, lifetime, self.options.report_url)
            )
        except kube.ApiException as exc:
            if not kube.refused(exc) or kube.namespace_terminating(exc):
                raise
            step.workspace_error = f"The API server refuses the workspace {what}: {kube.api_message(exc)}"
            self.queue.add_after(key, REFUSED_RETRY)  # what refused it may go (a quota, a webhook, a policy)
            return
        if not made:
            return  # one of its name exists: the watch shows it soon
        step.pod = PodView.parse(made)
        step.lifetime = lifetime
        self.memory.created[key] = _Created(step.pod, loop_time)
        ours = self.memory.deleted.pop(key, None) is not None  # we stopped its predecessor, and told why
        self._tell_started(step, template.metadata.name, ours)

    def _tell_started(self, step: _Pass, template: str | None, ours: bool) -> None:
        """The Event of a new pod: the first, a resume's, or one after a pod that went unasked."""
        assert step.pod is not None and step.claim is not None
        pod, lifetime, task = step.pod.name, step.lifetime, step.task
        paused = self._paused_condition(task)
        paused_before = paused is not None and paused.get("status") == "True"
        if lifetime == 1:
            message = f"Created pod {pod} on volume claim {step.claim.name} from TaskTemplate {template}."
            self.event(task, type="Normal", reason="WorkspaceCreated", message=message)
        elif paused_before:
            message = f"Resuming: started pod {pod} (lifetime {lifetime})."
            self.event(task, type="Normal", reason="Resuming", message=message)
        elif not ours:
            message = (
                "The workspace pod went away while the task runs (deleted, or lost with its node); "
                f"started pod {pod} (lifetime {lifetime})."
            )
            self.event(task, type="Warning", reason="PodRecreated", message=message)

    async def _create_if_absent(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj`; if one of its name exists (the watch is behind), return {}."""
        try:
            return await self.api.create(obj)
        except kube.ApiException as exc:
            if exc.status == 409 and "AlreadyExists" in str(exc.body):
                return {}
            raise

    def _observe(self, step: _Pass, views: Views) -> Observation:
        """Follow the agent of the current pod, and put together what the phase is derived from."""
        task, key = step.task, step.key
        agent = None
        if self.agents is not None:
            target = _target(task, step.pod)
            current = self._current_status(key, step.task)
            workspace_status = current.get("workspace") or {}
            answered_before = bool(
                target is not None
                and (current.get("agent") or {}).get("healthy")
                and workspace_status.get("pod") == target.pod
                and workspace_status.get("lifetime") == target.lifetime
            )
            self.agents.ensure(key, target, answered_before)
            agent = self.agents.views.get(key)
        now = self.options.now()
        if agent is not None and not agent.healthy and agent.silent_since is not None:
            # Unknown once the silence outlasts the grace: reconcile then (`now` is in whole seconds).
            grace_left = agent.silent_since + self.options.agent_grace - now
            self.queue.add_after(key, max(grace_left.total_seconds(), 0) + 1)
        return Observation(
            generation=task.metadata.generation,
            paused=task.spec.paused,
            template_name=task.spec.template,
            template=step.template,
            claim=step.claim,
            pod=step.pod,
            lifetime=step.lifetime,
            workspace_error=step.workspace_error,
            restarting=step.restarting,
            agent=agent,
            node=_node(views, step.pod),
            leftover=step.leftover,
            now=now,
            agent_grace=self.options.agent_grace,
            pause_reason=step.paused_by.value if step.paused_by else automation.PauseReason.REQUESTED.value,
            pause_message=step.pause_message,
        )

    async def _converse(self, step: _Pass, obs: Observation, verdict: lifecycle.Verdict) -> None:
        """An Active task's agent gets its prompt, once; an idle one's conversation is kept."""
        task, key = step.task, step.key
        if (
            self.agents is None
            or task.spec.paused  # Active while pausing (the pod is still Ready): no prompt now
            or verdict.phase is not Phase.ACTIVE
        ):
            return
        had_prompt = bool(self._prompt_record(key, task))
        await self._deliver_prompt(task, obs)
        if key in self.agents.idle_pending:
            self.agents.idle_pending.discard(key)
            # Idle before the prompt went in (a greeting, or the moment it is delivered): nothing
            # worth keeping yet, and the agent is about to work on it.
            if had_prompt and not await self._snapshot(task, quiet=True):
                # The conversation could not be read: try again while the agent stays idle.
                self.agents.idle_pending.add(key)
                self.queue.add_after(key, IDLE_SNAPSHOT_RETRY)

    def _paused_condition(self, task: Task) -> Mapping[str, Any] | None:
        """The Paused condition of the task's status as we last left it, if it has one."""
        conditions = self._current_status((task.namespace, task.name), task).get("conditions") or []
        return next((c for c in conditions if c.get("type") == lifecycle.PAUSED), None)

    async def _recover_snapshot_record(self, task: Task) -> None:
        """A workspace pod already gone while status still says the task runs: the operator stopped
        between the pause's pod deletion and its status write. Its snapshot is in the ConfigMap,
        not in status: read it back (a rare GET), so that status tells the conversation as kept."""
        key = (task.namespace, task.name)
        if key in self.news.snapshots or key in self.memory.deleted:
            return  # this process stopped the pod, its conversation kept: the next write tells it
        paused = self._paused_condition(task)
        if paused is None or paused.get("reason") != "Running":
            return  # status tells it already, or the task never ran (it was made paused)
        configmap = await self.api.read_configmap(task.namespace, snapshots.configmap_name(task.name))
        entry = snapshots.status_entry_of(configmap, task.metadata.uid) if configmap is not None else None
        if entry is not None:
            self.news.snapshots[key] = entry

    def _as_known(self, key: Key, shown: Iterable[PodView]) -> PodView | None:
        """The pod as our own writes left it while the watch shows an older state (see WRITE_TRUST): the
        pod we created while it shows none, the pod we deleted as going; else what the watch shows, less
        the pods the API server said are gone."""
        now = asyncio.get_running_loop().time()
        gone = self.memory.gone.get(key, set())
        observed = next((p for p in shown if p.uid not in gone), None)
        created = self.memory.created.get(key)
        if created is not None:
            if observed is not None or created.at + WRITE_TRUST <= now:
                del self.memory.created[key]  # the watch has caught up (or should have: then it is believed)
            else:
                self.queue.add_after(key, created.at + WRITE_TRUST - now)
                observed = created.view
        deleted = self.memory.deleted.get(key)
        if observed is None or deleted is None or deleted.uid != observed.uid:
            return observed
        left = deleted.at + WRITE_TRUST - now
        if left <= 0:
            return observed  # still there, as far as the watch knows: a delete again will tell
        self.queue.add_after(key, left, forced=False)  # and look again then, should the watch say nothing
        return replace(observed, deleting=True)

    def _stopped_before(self, step: _Pass) -> bool:
        """Whether the pod to stop is one we deleted already (the watch still shows it running)."""
        deleted = self.memory.deleted.get(step.key)
        return step.pod is not None and deleted is not None and deleted.uid == step.pod.uid

    def pod_deleted(self, key: Key, uid: str) -> None:
        """The watch saw a workspace pod go: what we created before is no longer there."""
        created = self.memory.created.get(key)
        if created is not None and created.view.uid == uid:
            del self.memory.created[key]
        self.memory.gone.get(key, set()).discard(uid)

    def _inputs(self, key: Key, task: Task, views: Views) -> _Inputs:
        meta = task.metadata
        pod = _one(views.pods, key)
        return _Inputs(
            uid=meta.uid,
            generation=meta.generation,
            deleting=meta.deletion_timestamp is not None,
            status_version=self._status_version(key, task),
            template=_one(views.templates, (key[0], task.spec.template)),
            pod=pod,
            claim=_one(views.claims, key),
            node=_node(views, pod),
            agent=self.agents.views.get(key) if self.agents is not None else None,
        )

    def _lagging(self, key: Key, task: Task) -> _Written | None:
        """Our last status write, while the watch still shows `task` at a version before it; else None."""
        cached = self.memory.written.get(key)
        meta = task.metadata
        if cached is not None and cached.uid == meta.uid and meta.resource_version in cached.stale_versions:
            return cached
        return None

    def _status_version(self, key: Key, task: Task) -> str:
        """The version whose status a reconcile of `task` starts from (see _current_status)."""
        cached = self._lagging(key, task)
        return cached.version if cached else task.metadata.resource_version

    def _current_status(self, key: Key, task: Task) -> Mapping[str, Any]:
        """The task's status as we last left it: the watch may not have brought our own writes back yet."""
        cached = self._lagging(key, task)
        if cached is not None:
            return cached.status
        self.memory.written.pop(key, None)  # the watch has caught up: no need to keep a copy of every status
        return task.stored_status

    async def _deliver_prompt(self, task: Task, obs: Observation) -> None:
        """Hand the prompt to a stable agent, once: see agents.deliver_prompt for the exactly-once part.
        A refused or lost delivery is retried with back-off, and status says so meanwhile."""
        key = (task.namespace, task.name)
        recorded = self._prompt_record(key, task)
        client = self.agents.client(key) if self.agents else None
        if agentstate.was_delivered(task.spec.prompt, recorded) or client is None:
            self.news.delivery_failures.pop(key, None)
            return
        if obs.agent is None or not obs.agent.healthy or obs.agent.status is not AgentStatus.STABLE:
            return
        failed = self.news.delivery_failures.get(key)
        if failed is not None and failed.due > asyncio.get_running_loop().time():
            return  # its retry timer runs the next attempt
        try:
            delivered = await deliver_prompt(client, task.spec.prompt)
            reason = "the agent did not take it"
        except (AgentError, AgentUnavailable) as exc:
            delivered, reason = None, str(exc)
        if not delivered:
            metrics.PROMPT_DELIVERIES.labels(outcome="failed").inc()
            attempts = failed.attempts + 1 if failed is not None else 1
            delay = RETRY_DELAYS[min(attempts - 1, len(RETRY_DELAYS) - 1)]
            due = asyncio.get_running_loop().time() + delay
            self.news.delivery_failures[key] = _DeliveryFailure(attempts, reason, delay, due)
            self.queue.add_after(key, delay)
            log.warning(
                "prompt for %s/%s not delivered (attempt %d), retrying in %.0fs: %s",
                *key,
                attempts,
                delay,
                reason,
            )
            if attempts == 1:  # one Event per failure streak, not one per retry
                message = f"The agent refused the prompt, retrying: {reason}"
                self.event(task, type="Warning", reason="PromptDeliveryFailed", message=message)
            return
        self.news.delivery_failures.pop(key, None)
        metrics.PROMPT_DELIVERIES.labels(outcome=delivered).inc()
        lifetime = obs.agent.lifetime
        sha = agentstate.prompt_sha(task.spec.prompt)
        self.news.prompts[key] = agentstate.prompt_record(sha, self.options.now(), lifetime)
        message = f"Delivered the prompt to the agent (lifetime {lifetime})."
        self.event(task, type="Normal", reason="PromptDelivered", message=message)

    async def _snapshot(self, task: Task, *, quiet: bool, target: Target | None = None) -> bool:
        """Keep the agent's recent conversation in a ConfigMap; never hang, never fail the caller.
        Returns whether the conversation could be read."""
        key = (task.namespace, task.name)
        if self.agents is None:
            return False
        client = self.agents.client(key)
        if client is None and target is not None:  # not followed (e.g. just restarted): a client for once
            return await self._snapshot_from(task, self.agents.reach(target), target.lifetime, quiet=quiet)
        followed = self.agents.target(key) or target
        if client is None or followed is None:
            if not quiet:
                message = "No running agent to read the conversation from; the previous snapshot is kept."
                self.event(task, type="Warning", reason="SnapshotSkipped", message=message)
            return False
        return await self._snapshot_from(task, client, followed.lifetime, quiet=quiet)

    async def _snapshot_from(self, task: Task, client: AgentClient, lifetime: int, *, quiet: bool) -> bool:
        key = (task.namespace, task.name)
        started = time.monotonic()
        try:
            messages = await asyncio.wait_for(client.messages(), SNAPSHOT_TIMEOUT)
        except (AgentError, AgentUnavailable, TimeoutError) as exc:
            metrics.SNAPSHOTS_SKIPPED.inc()
            why = f"no answer within {SNAPSHOT_TIMEOUT:.0f}s" if isinstance(exc, TimeoutError) else str(exc)
            if quiet:
                log.info("could not read the conversation of %s/%s (%s); trying again", *key, why)
            else:
                message = f"Could not read the agent's conversation ({why}); the previous snapshot is kept."
                self.event(task, type="Warning", reason="SnapshotSkipped", message=message)
            return False
        if not any(m.role == "user" for m in messages):
            # Nothing said to the agent yet: a fresh agent, at most its greeting (e.g. just resumed without
            # its old conversation). Not worth keeping, and it must not replace the conversation we kept.
            return True
        # The agent's conversation of this lifetime after what was kept of the earlier ones (AgentAPI starts
        # each lifetime afresh): read back for a resumed task's, the first lifetime has none.
        kept: list[dict[str, Any]] = []
        if lifetime > 1:
            stored = await self.api.read_configmap(task.namespace, snapshots.configmap_name(task.name))
            kept = snapshots.messages_of(stored, task.metadata.uid) or []
        snap = snapshots.shape(snapshots.across_lifetimes(kept, [m.dump() for m in messages], lifetime))
        last = self.news.snapshots.get(key) or self._current_status(key, task).get("logSnapshot") or {}
        if last.get("sha256") == snap.digest:
            return True  # nothing new since the last one (kept by this process or, status says, another)
        taken = self.options.now()
        await self.api.apply(snapshots.configmap(task, snap, taken))
        metrics.SNAPSHOT_SECONDS.observe(time.monotonic() - started)
        metrics.SNAPSHOT_BYTES.observe(len(snap.text.encode()))
        self.news.snapshots[key] = snapshots.status_entry(task, snap, taken)
        return True

    async def _write_status(self, task: Task, obs: Observation, verdict: lifecycle.Verdict) -> None:
        key = (task.namespace, task.name)
        current = self._current_status(key, task)
        if current is not task.stored_status:
            # Decide from the same status we compare against, or two versions of it would take turns
            # forever: our last write, which the watch has not brought back yet.
            task = task.model_copy(update={"status": TaskStatus.model_validate(current)})
        report = self.news.reports.get(key)
        failure = self.news.delivery_failures.get(key)
        git = self.news.git.get(key)
        status = agentstate.task_status(
            task,
            obs,
            self.options.now(),
            self.news.prompts.get(key),
            self.news.snapshots.get(key),
            report,
            failure.shown() if failure is not None else None,
            verdict,
            git,
        )
        if "idleSince" in current or status["phase"] == Phase.ACTIVE:
            # Only the clock is read back (one timestamp): this runs at every status write of an Active task.
            agent = obs.agent.status if obs.agent is not None and obs.agent.healthy else None
            before = parse_time(current.get("idleSince"))
            idle = automation.idle_since(before, Phase(status["phase"]), agent, self.options.now())
            status["idleSince"] = rfc3339(idle) if idle is not None else None
        named = None
        if not status.get("displayName"):
            status["displayName"] = named = self._namer.name(key, task.spec.prompt)
        write = plan.status_write(current, status, hold=self.options.status_hold > 0)
        if write is plan.Write.NONE:
            self.queue.end_hold(key)
            self.news.prompts.pop(key, None)
            self.news.snapshots.pop(key, None)
            if git is not None and self.news.git.get(key) is git:
                del self.news.git[key]  # status shows it already
            return
        if write is plan.Write.HOLD and self.queue.hold(key, self.options.status_hold):
            return  # its end runs this key again
        self.queue.end_hold(key)
        written = await self.api.patch_task_status(task.namespace, task.name, status)
        # What arrived during the patch (an agent's report, a name from Anthropic) waits for the next one.
        if report is not None and self.news.reports.get(key) is report:
            del self.news.reports[key]
        if git is not None and self.news.git.get(key) is git:
            del self.news.git[key]
        if git is not None:
            self._tell_push(task, git)
        if named is not None:
            self._namer.written(key, named)
        self.news.prompts.pop(key, None)  # recorded in status now
        self.news.snapshots.pop(key, None)
        self.memory.wrote_status(key, task.metadata.uid, task.metadata.resource_version, written)
        self._observe_latency(key, task.spec.paused, status["phase"])
        automatic = obs.pause_reason != automation.PauseReason.REQUESTED
        if (event := plan.story_event(current.get("phase"), verdict, automatic=automatic)) is not None:
            self.event(task, type=event.type, reason=event.reason, message=event.message)

    def _tell_push(self, task: Task, git: GitState) -> None:
        if git.pushed is not None:
            commit = (git.pushed.commit or "")[:12]
            message = f"Pushed branch {git.pushed.branch} at {commit} to {git.url}."
            self.event(task, type="Normal", reason="Pushed", message=message)
        elif git.push_error is not None:
            self.event(
                task,
                type="Warning",
                reason="PushFailed",
                message=f"The push to {git.url} failed: {git.push_error}",
            )

    def _note_wish(self, key: Key, paused: bool) -> None:
        """Remember when a pause or resume was first seen, to time it (a new task's start is neither)."""
        asked = self.memory.asked.get(key)
        if asked is None:
            self.memory.asked[key] = (paused, -1.0)
        elif asked[0] != paused:
            self.memory.asked[key] = (paused, time.monotonic())

    def _observe_latency(self, key: Key, paused: bool, phase: str) -> None:
        asked = self.memory.asked.get(key)
        if asked is None or asked[1] < 0 or asked[0] != paused:
            return
        if paused and phase == Phase.PAUSED:
            metrics.PAUSE_SECONDS.observe(time.monotonic() - asked[1])
        elif not paused and phase == Phase.ACTIVE:
            metrics.RESUME_SECONDS.observe(time.monotonic() - asked[1])
        else:
            return
        self.memory.asked[key] = (paused, -1.0)  # observed once

    async def _retry_later(self, key: Key, task: Task, exc: Exception) -> str | None:
        """Retry a failed reconcile with back-off, and say so in an Event and, if it can be written, in
        status: a task must never show nothing while it cannot progress. Returns the version written."""
        if isinstance(exc, kube.ApiException) and exc.status == 404 and await self._gone(key):
            # The watch's DELETED forgets it; should the watch have been down, this does.
            log.debug("task %s/%s is gone; nothing to retry", *key)
            self._forget(key)
            if task.metadata.uid:
                self.memory.gone[key] = {task.metadata.uid}
            return None
        retry = self._backoff.failed(key)
        if retry is None:  # failed again before its retry was due: that one tells
            return None
        attempt, delay = retry.attempt - 1, retry.delay
        why = kube.api_message(exc)
        log.warning(
            "reconcile of %s/%s failed (attempt %d), retrying in %.0fs: %s", *key, attempt + 1, delay, why
        )
        if attempt == 0:  # one Event per failure streak, not one per retry
            self.event(
                task, type="Warning", reason="ReconcileFailed", message=f"Reconcile failed, retrying: {why}"
            )
        self.queue.add_after(key, delay)
        status = task.stored_status
        message = f"Reconcile failed (attempt {attempt + 1}), retrying in {delay:.0f}s: {why}"
        try:
            written = await self.api.patch_task_status(
                *key, {"phase": status.get("phase") or Phase.PENDING.value, "message": message[:MAX_MESSAGE]}
            )
        except Exception as failed:  # the API server is away, or the task is gone: the retry will tell
            log.debug(
                "could not write the failure of %s/%s to its status: %s", *key, kube.api_message(failed)
            )
            return None
        return str(written["metadata"]["resourceVersion"])

    async def _refuse(self, key: Key, invalid: InvalidTask) -> None:
        """A task our models refuse is Error, with why, until it changes: nothing else is done with it.
        Written once: our write coming back finds the same phase and message."""
        current = invalid.stored_status
        if current.get("phase") == Phase.ERROR and current.get("message") == invalid.message:
            return
        log.error("task %s/%s: %s", *key, invalid.message)
        try:
            await self.api.patch_task_status(*key, {"phase": Phase.ERROR.value, "message": invalid.message})
        except Exception as exc:
            log.warning("could not write that task %s/%s is invalid: %s", *key, kube.api_message(exc))
            self.queue.add_after(key, REFUSED_RETRY)
            return
        self.event(invalid, type="Warning", reason="InvalidTask", message=invalid.message)

    async def _gone(self, key: Key) -> bool:
        """Whether the task no longer exists (the watch may not have said so yet)."""
        try:
            await self.api.get_task(*key)
        except kube.ApiException as exc:
            return bool(exc.status == 404)
        except Exception:
            return False
        return False

    def _forget(self, key: Key) -> None:
        """A deleted task: stop following its agent and drop everything kept for it."""
        if self.agents is not None:
            self.agents.ensure(key, None)
        self._backoff.succeeded(key)
        self.memory.forget(key)
        self.news.forget(key)
        self._namer.forget(key)
