"""One reconcile per task: gather what the watches saw, decide, act, and write status once.

Every trigger (the Task, its template, its pod, StatefulSet or Service changing) runs the same
level-triggered reconcile, serialised per task so that the last writer always saw the newest facts:
two writers racing could otherwise leave an older observation in status. It writes only what differs,
so an idle cluster costs no API calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskpod import kube, lifecycle, workspace
from taskpod.lifecycle import Observation, StatefulSetView
from taskpod.models import Phase, Task, TaskStatus, TaskTemplate

log = logging.getLogger("taskpod")
Key = tuple[str, str]  # (namespace, task name)
Hook = Callable[[Task], Awaitable[None]]
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Phases worth an Event of their own; the steps between them are visible in status, not in the story.
STORY_PHASES = frozenset({Phase.ACTIVE, Phase.PAUSED, Phase.ERROR, Phase.UNKNOWN})


@dataclass(frozen=True)
class _Written:
    """The status we last wrote, and the task versions that predate it (the watch may still show those)."""

    uid: str
    version: str  # the resourceVersion our write produced
    status: Mapping[str, Any]
    stale_versions: tuple[str, ...]  # newest last, a bounded few


class Index(Protocol):
    """The read side of a Kopf index: key -> the values stored for it."""

    def get(self, key: Any, default: Any = None) -> Any: ...


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None: ...


@dataclass
class Views:
    """The Kopf indexes a reconcile reads: what the watches last saw of each kind."""

    tasks: Index
    templates: Index
    statefulsets: Index
    pods: Index
    services: Index


def _one(index: Index, key: Any) -> Any:
    values = index.get(key)
    return next(iter(values), None) if values else None


async def _no_hook(task: Task) -> None:
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Reconciler:
    event: EventSink
    before_scale_down: Hook = _no_hook  # the snapshot runs here, before a pause scales the workspace to zero
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _retries: dict[Key, int] = field(default_factory=dict)
    _timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    _written: dict[Key, _Written] = field(default_factory=dict)

    async def reconcile(self, key: Key, views: Views) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            raw = _one(views.tasks, key)
            if raw is None:  # deleted: its children go by garbage collection
                self._forget(key)
                return
            try:
                await self._reconcile(raw, views)
            except Exception as exc:
                self._retry_later(key, views, raw, exc)
            else:
                self._retries.pop(key, None)

    async def _reconcile(self, raw: Mapping[str, Any], views: Views) -> None:
        task = Task.model_validate(raw)
        if task.metadata.deletion_timestamp is not None:
            return
        key = (task.namespace, task.name)
        template_value = _one(views.templates, (task.namespace, task.spec.template))
        template = template_value if isinstance(template_value, TaskTemplate) else None
        sts: StatefulSetView | None = _one(views.statefulsets, key)
        workspace_error: str | None = None
        if isinstance(template_value, str):
            workspace_error = template_value
        elif template is not None:
            try:
                sts = await self._ensure_children(task, template, sts, _one(views.services, key), raw)
            except kube.ApiException as exc:
                if exc.status not in (400, 422):
                    raise
                workspace_error = f"The workspace cannot be applied: {_api_message(exc)}"

        obs = Observation(
            generation=task.metadata.generation,
            paused=task.spec.paused,
            template_name=task.spec.template,
            template=template,
            statefulset=sts,
            pod=_one(views.pods, key),
            workspace_error=workspace_error,
        )
        await self._write_status(task, raw, obs)

    async def _ensure_children(
        self,
        task: Task,
        template: TaskTemplate,
        observed: StatefulSetView | None,
        service_hash: str | None,
        raw: Mapping[str, Any],
    ) -> StatefulSetView | None:
        """Bring the Service and StatefulSet in line with task and template; write only what differs."""
        desired_service = workspace.service(task, template)
        if service_hash != workspace.spec_hash(desired_service):
            await kube.apply(desired_service)

        replicas = workspace.desired_replicas(task)
        lifetime = workspace.next_lifetime(observed, replicas)
        desired = workspace.statefulset(task, template, replicas, lifetime, observed)
        if observed is not None and observed.spec_hash == workspace.spec_hash(desired):
            return observed
        pausing = observed is not None and observed.replicas > 0 and replicas == 0
        if pausing:
            self.event(
                raw, type="Normal", reason="Pausing", message="Pausing: scaling the workspace to zero."
            )
            await self.before_scale_down(task)
        live = StatefulSetView.parse(await kube.apply(desired))
        if observed is None:
            self.event(
                raw,
                type="Normal",
                reason="WorkspaceCreated",
                message=f"Created StatefulSet {live.name} from TaskTemplate {template.metadata.name}.",
            )
        elif observed.replicas == 0 and replicas > 0:
            self.event(
                raw,
                type="Normal",
                reason="Resuming",
                message=f"Resuming: scaling the workspace back up (lifetime {lifetime}).",
            )
        return live

    def _current_status(self, task: Task, raw: Mapping[str, Any]) -> Mapping[str, Any]:
        """The task's status as we last left it: the watch may not have brought our own writes back yet."""
        cached = self._written.get((task.namespace, task.name))
        meta = task.metadata
        if cached is not None and cached.uid == meta.uid and meta.resource_version in cached.stale_versions:
            return cached.status
        return raw.get("status") or {}

    async def _write_status(self, task: Task, raw: Mapping[str, Any], obs: Observation) -> None:
        current = self._current_status(task, raw)
        # Decide from the same status we compare against, or two versions of it would take turns forever.
        task = task.model_copy(update={"status": TaskStatus.model_validate(current)})
        status = lifecycle.lifecycle_status(task, obs, _now())
        if not lifecycle.status_changed(current, status):
            return
        key = (task.namespace, task.name)
        written = await kube.patch_task_status(task.namespace, task.name, status)
        previous = self._written.get(key)
        stale: tuple[str, ...] = ()
        if previous is not None and previous.uid == task.metadata.uid:
            stale = (*previous.stale_versions, previous.version)
        stale = (*stale, task.metadata.resource_version)
        self._written[key] = _Written(
            task.metadata.uid,
            written["metadata"]["resourceVersion"],
            written.get("status") or {},
            stale[-16:],
        )
        old_phase, new_phase = current.get("phase"), status["phase"]
        if old_phase != new_phase and new_phase in STORY_PHASES:
            verdict = lifecycle.derive_phase(obs)
            warning = new_phase in (Phase.ERROR, Phase.UNKNOWN)
            self.event(
                raw, type="Warning" if warning else "Normal", reason=verdict.reason, message=verdict.message
            )

    def _retry_later(self, key: Key, views: Views, raw: Mapping[str, Any], exc: Exception) -> None:
        attempt = self._retries.get(key, 0)
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        self._retries[key] = attempt + 1
        log.warning(
            "reconcile of %s/%s failed (attempt %d), retrying in %.0fs: %s", *key, attempt + 1, delay, exc
        )
        if attempt == 0:  # one Event per failure streak, not one per retry
            self.event(
                raw,
                type="Warning",
                reason="ReconcileFailed",
                message=f"Reconcile failed, retrying: {_api_message(exc)}",
            )
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, lambda: loop.create_task(self.reconcile(key, views)))

    def _forget(self, key: Key) -> None:
        self._retries.pop(key, None)
        self._written.pop(key, None)
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()


def _api_message(exc: Exception) -> str:
    """The API server's own sentence for a failed call, else the exception text."""
    import json

    if isinstance(exc, kube.ApiException) and exc.body:
        try:
            return str(json.loads(exc.body).get("message", exc.body))
        except (ValueError, AttributeError):
            return str(exc.body)
    return str(exc)
