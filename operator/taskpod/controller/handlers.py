"""Kopf wiring only: what the operator watches, and which reconcile each change triggers.

Kopf's indexes keep the latest view of every Task and TaskTemplate, and informers of our own that of
every workspace pod and claim and every node (see informers.py), each parsed once at the edge; a change
of any of them reconciles the task it belongs to. Nothing polls the API server. There are no change
handlers and no daemons, hence no finalizers: deleting a Task never waits for the operator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from aiohttp import web
from pydantic import ValidationError

from taskpod import kube
from taskpod.api.models import GROUP, VERSION, InvalidTask, Key, Task, TaskTemplate
from taskpod.controller import heap, informers, metrics, reports
from taskpod.controller.agents import Agents
from taskpod.controller.informers import Informer, Source
from taskpod.controller.reconcile import MAX_MESSAGE, Options, Reconciler, Views
from taskpod.controller.settings import Settings
from taskpod.core import clock, workspace
from taskpod.core.lifecycle import ClaimView, NodeView, PodView
from taskpod.core.workspace import MANAGED_BY, TASK_LABEL

TASKS = (GROUP, VERSION, "tasks")
TEMPLATES = (GROUP, VERSION, "tasktemplates")
SELECTOR = f"{MANAGED_BY}=taskpod,{TASK_LABEL}"  # the workspaces' pods and claims, by the API server
log = logging.getLogger("taskpod")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
RECONCILE_WORKERS = 64
LOGIN_BACKOFF = 10.0  # seconds before a failed login or start-up step runs again (Kopf's default: 60)


def _post_event(task: Task | InvalidTask, *, type: str, reason: str, message: str) -> None:
    kopf.event(task.raw, type=type, reason=reason, message=message[:1024])


def memo_for(settings: Settings, health: metrics.Health | None = None) -> kopf.Memo:
    """What every handler gets as `memo` (Kopf gives each object a shallow copy of it): the settings,
    this process's one Reconciler, what /healthz asks, and the report endpoint's server once it runs."""
    options = Options(
        agent_grace=dt.timedelta(seconds=settings.agent_grace_seconds),
        report_url=settings.report_url,
        naming_env=settings.naming,
        workers=RECONCILE_WORKERS,  # reconciles at a time, each with at most one API call in flight
    )
    reconciler = Reconciler(event=_post_event, options=options)
    return kopf.Memo(
        settings=settings,
        reconciler=reconciler,
        health=health or metrics.Health(),
        servers=[],
        children=Children(),
        background=[],
    )


@dataclass
class Children:
    """What the informers keep of the workspaces' pods and claims, by their task's key, and of nodes."""

    pods: informers.Cache[PodView] = field(default_factory=informers.Cache)
    claims: informers.Cache[ClaimView] = field(default_factory=informers.Cache)
    nodes: informers.Cache[NodeView] = field(default_factory=informers.Cache)

    def informers(self, namespaces: tuple[str, ...], reconciler: Reconciler) -> list[informers.Informer[Any]]:
        """An informer per kind and namespace (one for all when `namespaces` is empty), each telling
        `reconciler` what changed."""

        def pod_changed(key: Hashable, uid: str, gone: bool) -> None:
            if gone:
                reconciler.pod_deleted(cast(Key, key), uid)
            reconciler.notice(cast(Key, key))

        def claim_changed(key: Hashable, uid: str, gone: bool) -> None:
            reconciler.notice(cast(Key, key))

        def node_changed(name: Hashable, uid: str, gone: bool) -> None:
            # A node's readiness decides its tasks' phase. Its pods are found by a scan of the pods
            # cache: a node changes far less often than pods do.
            for key in self.pods:
                if any(pod.node_name == name for pod in self.pods.get(key) or ()):
                    reconciler.notice(key)

        made: list[informers.Informer[Any]] = []
        for namespace in namespaces or (None,):
            pods, claims = (
                Source("Pod", namespace, SELECTOR),
                Source("PersistentVolumeClaim", namespace, SELECTOR),
            )
            made.append(Informer(kube, pods, _task_key, PodView.parse, self.pods, pod_changed))
            made.append(Informer(kube, claims, _task_key, ClaimView.parse, self.claims, claim_changed))
        made.append(Informer(kube, Source("Node"), _name, NodeView.parse, self.nodes, node_changed))
        return made


def _task_key(body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    task = (meta.get("labels") or {}).get(TASK_LABEL)
    return (meta.get("namespace") or "", task) if task else None


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf builds a deep-copied "essence" of every object on every event to diff it for change
    handlers. With event handlers only, nothing reads that diff: skip the copy (5% of the CPU at 500
    tasks, by py-spy) and keep no last-handled-configuration annotation."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "taskpod.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="taskpod.dev")
    settings.persistence.diffbase_storage = NoDiffBase()
    # Every resource is named in full and the CRDs are installed before the operator (Helm's crds/): no
    # need to watch CRDs and namespaces cluster-wide, which would need RBAC the operator has no use for.
    settings.scanning.disabled = True
    settings.posting.level = logging.ERROR  # our own Events tell the story; no "handler succeeded" noise
    settings.watching.server_timeout = 300  # plus Kopf's inactivity timeout, so a stalled watch recovers
    settings.watching.client_timeout = 330
    reconciler: Reconciler = memo.reconciler
    # Kopf posts each object's Events from a worker of its own, on an HTTP pool without a limit: a burst
    # of tasks opened a TLS connection per poster, each with a 256 KiB read buffer, kept alive after.
    # A bounded set of posters keeps the pool (and the handshakes) small. A worker lingers idle_timeout
    # for its object's next Event, so a short linger keeps the throughput at hundreds a second.
    settings.posting.worker_limit = 32
    settings.posting.idle_timeout = 0.1
    ours: Settings = memo.settings
    transport = kube.agent_transport(ours.agent_transport == "proxy")
    reconciler.agents = Agents(transport, reconciler.poke, ours.agent_probe_after_seconds)
    memo.health.attach(asyncio.get_running_loop(), reconciler.phase_counts)  # /healthz asks this loop
    children: Children = memo.children
    watching = children.informers(ours.namespaces, reconciler)
    # Reconciles wait for every cache's first list: a task reconciled before its pod is known would
    # be told Pending, and its pod created again.
    reconciler.queue.wait_for(asyncio.gather(*(i.synced.wait() for i in watching)))
    memo.background.extend(asyncio.create_task(i.run(), name=f"watch {i.source}") for i in watching)
    if (trim := heap.malloc_trim()) is not None:
        queue = reconciler.queue
        memo.background.append(
            asyncio.create_task(heap.trim_after_bursts(lambda: queue.processed, queue.idle, trim))
        )
    if (listen := ours.report_host_port) is not None:
        runner = web.AppRunner(
            reports.app(kube.token_review, reconciler.accept_report, reconciler.accept_git), access_log=None
        )
        await runner.setup()
        await web.TCPSite(runner, *listen).start()
        memo.servers.append(runner)


@kopf.on.startup(backoff=LOGIN_BACKOFF)  # an API server not there yet: try again soon, not in Kopf's 60 s
async def upgrade_from_statefulsets(memo: kopf.Memo, **_: Any) -> None:
    """Before the watches start, the StatefulSets of earlier releases give their pods and volume claims
    up: reconciles adopt the claims and replace the pods, snapshot first (see kube.retire_statefulsets)."""
    ours: Settings = memo.settings
    selector = f"{MANAGED_BY}=taskpod,{TASK_LABEL}"
    try:
        retired = await kube.retire_statefulsets(list(ours.namespaces) or None, selector)
    except kube.UNREACHABLE as exc:  # a line each time, not a traceback: the API server may come later
        raise kopf.TemporaryError(
            f"listing StatefulSets: {kube.api_message(exc)}", delay=LOGIN_BACKOFF
        ) from exc
    for name in retired:
        log.info("upgrade: retired StatefulSet %s; its pod and volume claim are the operator's now", name)


@kopf.on.cleanup()
async def stop_following(memo: kopf.Memo, **_: Any) -> None:
    # Not left to taskpod.__main__ alone: when Kopf's root tasks end, it gives every task started since
    # (our watches) 5 s to end on its own, then cancels it with a warning. Stopped here, they are gone
    # by then. (A stop during start-up skips this handler: that is the 5 s such a stop takes.)
    await stop(memo)


async def stop(memo: kopf.Memo) -> None:
    """Stop what `configure` started and close every connection. Kopf runs it at its end, and
    taskpod.__main__ again after Kopf: a stop during start-up skips Kopf's cleanup handlers."""
    background, memo.background = memo.background, []
    for job in background:
        job.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    reconciler: Reconciler = memo.reconciler
    await reconciler.stop()
    if reconciler.agents is not None:
        await reconciler.agents.stop_all()
        await reconciler.agents.transport.aclose()
    servers, memo.servers = memo.servers, []
    for runner in servers:
        await runner.cleanup()
    await kube.close()


@kopf.on.login(backoff=LOGIN_BACKOFF)
def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf's credentials are ours (kube.login): asked again when the API server answers 401, and
    LOGIN_BACKOFF seconds after a login that failed (a kubeconfig's login program that gave nothing)."""
    try:
        return kube.login()
    except kube.NoCredential as exc:  # said in a line (the program's own words are logged above it)
        raise kopf.TemporaryError(str(exc), delay=LOGIN_BACKOFF) from exc


# -- what the watches saw ------------------------------------------------------------------------
# async, though none awaits: Kopf runs a sync handler in its thread pool, and these run on every watch
# event (py-spy at 300 tasks: 5% of the operator's samples went to handing them to threads and back).


@kopf.index(*TASKS)
async def tasks(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): task_entry(body)}


def task_entry(body: Mapping[str, Any]) -> Task | InvalidTask:
    """What the index keeps of a Task: the model, parsed here once per change rather than once per
    reconcile, holding the object less what nothing reads. managedFields, and kubectl's copy of the whole
    manifest, can outweigh the rest of it: 5,000 tasks add up."""
    meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    if LAST_APPLIED in (annotations := meta.get("annotations") or {}):
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    kept = {**body, "metadata": meta}
    try:
        return Task.from_api(kept)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return InvalidTask(kept, f"The Task is invalid at {where}: {error['msg']}"[:MAX_MESSAGE])


@kopf.index(*TEMPLATES)
async def templates(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    try:
        return {(namespace, name): TaskTemplate.model_validate(dict(body))}
    except ValidationError as exc:  # the CRD should prevent this; say what is wrong rather than crash
        return {(namespace, name): f'TaskTemplate "{name}" is invalid: {exc.errors()[0]["msg"]}'}


def _reconciler(kw: dict[str, Any]) -> Reconciler:
    return cast(Reconciler, kw["memo"].reconciler)


def _views(kw: dict[str, Any]) -> Views:
    children: Children = kw["memo"].children
    return Views(kw["tasks"], kw["templates"], children.pods, children.claims, children.nodes)


# -- what each change triggers -------------------------------------------------------------------


@kopf.on.event(*TASKS)
async def task_changed(namespace: str, name: str, **kw: Any) -> None:
    _reconciler(kw).enqueue((namespace, name), _views(kw))


@kopf.on.event(*TEMPLATES)
async def template_changed(namespace: str, name: str, event: kopf.RawEvent, **kw: Any) -> None:
    """Say in the template's status whether tasks can use it, then reconcile its tasks. They are found by
    a scan of the tasks index, not by an index of their own: templates change seldom, and a second index
    would cost every Task event a second handler."""
    template = next(iter(kw["templates"].get((namespace, name)) or []), None)
    status = workspace.template_status(template, clock.now()) if isinstance(template, TaskTemplate) else None
    if event.get("type") != "DELETED" and status is not None:
        try:
            await kube.patch_template_status(namespace, name, status)
        except kube.ApiException as exc:  # gone meanwhile, or no RBAC yet: its tasks still say it
            why = kube.api_message(exc)
            log.warning("cannot write the status of TaskTemplate %s/%s: %s", namespace, name, why)
    views = _views(kw)
    for key in [k for k in views.tasks if k[0] == namespace]:
        if any(isinstance(t, Task) and t.spec.template == name for t in views.tasks.get(key) or []):
            _reconciler(kw).enqueue(key, views)
