"""What a user does with a task from outside the cluster: create, list, pause, resume, re-prompt and
delete it, read its logs, send it input. The `kubectl task` plugin (taskpod.client.cli) is a shell
around these.

These run with the user's kubectl credentials (the kubectl plugin calls them) and reach the agent
through the API server's pod proxy, so nothing but the API server needs to be reachable
(TASKPOD_AGENT_TRANSPORT=direct goes to the pod IP instead). Coder's rules:
logs are live while Active, the stored snapshot while Paused, Pending or Initializing, and a conflict
while Error or Unknown; sending to a paused task resumes it first and waits for an idle agent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from taskpod import kube
from taskpod.agentapi import AgentClient, AgentError, AgentMessage, AgentUnavailable
from taskpod.api.models import (
    DEFAULT_AGENT_PORT,
    GROUP,
    VERSION,
    AgentState,
    AgentStatus,
    GitState,
    Phase,
    Repository,
    Task,
    rfc3339,
)
from taskpod.core import automation, naming
from taskpod.core.snapshots import across_lifetimes, configmap_name, messages_of, tidy
from taskpod.core.workspace import CONTAINER, PORT_NAME

SNAPSHOT_PHASES = frozenset({Phase.PAUSED, Phase.PENDING, Phase.INITIALIZING})
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


class TaskConflict(Exception):
    """The task's phase does not allow this now (Coder answered HTTP 409)."""


@dataclass(frozen=True)
class Logs:
    messages: list[dict[str, Any]]
    snapshot: bool  # True: from the snapshot taken at the last pause, not live
    snapshot_at: str | None = None

    def dump(self) -> dict[str, Any]:
        return {"messages": self.messages, "snapshot": self.snapshot, "snapshot_at": self.snapshot_at}


async def _task(namespace: str, name: str) -> Task:
    return Task.from_api(await kube.get_task(namespace, name))


@asynccontextmanager
async def _connected(task: Task) -> AsyncIterator[AgentClient]:
    """The agent of an active task, through the API server's pod proxy, for the block's length."""
    workspace = task.status.workspace
    if workspace is None or not workspace.pod:
        raise TaskConflict(f"task {task.name} has no running workspace")
    try:
        port = await kube.agent_port(task.namespace, workspace.pod, PORT_NAME) or DEFAULT_AGENT_PORT
    except kube.ApiException as exc:
        if exc.status != 404:
            raise
        # The status is a moment behind the pod: a pause or a restart has removed it, not yet reported.
        raise AgentUnavailable(f"pod {workspace.pod} is gone") from None
    # The pod proxy by default; "direct" where this machine reaches pod IPs (in-cluster, or the local
    # control plane, whose loopback pod IPs the API server refuses to proxy to).
    via_proxy = os.environ.get("TASKPOD_AGENT_TRANSPORT", "proxy") != "direct"
    transport = kube.agent_transport(via_proxy=via_proxy)
    try:
        if transport.server is None and not workspace.pod_ip:
            raise TaskConflict(f"task {task.name}'s pod has no IP yet")
        yield transport.client(task.namespace, workspace.pod, workspace.pod_ip or "", port)
    finally:
        await transport.aclose()


class GitFailed(Exception):
    """git in the workspace said no (a push the forge refused, say); the message is git's."""


@dataclass(frozen=True)
class Diff:
    text: str  # the diff against the base, live; empty when not live
    live: bool
    recorded: GitState | None  # what status shows: the last report, for a task that is not Active


def _in_checkout(task: Task, doing: str) -> str:
    """The pod of an Active task with a repository, where `doing` can run; else TaskConflict."""
    if (
        task.status.phase is not Phase.ACTIVE
        or task.status.workspace is None
        or not task.status.workspace.pod
    ):
        raise TaskConflict(f"cannot {doing} task {task.name} now: it is {task.status.phase or Phase.PENDING}")
    if task.spec.repository is None and task.status.repository is None:
        raise TaskConflict(f"task {task.name} has no repository")
    return task.status.workspace.pod


# Against the base, the working tree included (what the agent changed, committed or not), then the files it
# added and has not told git of, which a diff leaves out.
DIFF = (
    'cd "$TASKPOD_CHECKOUT" && git -c core.quotepath=off diff --stat --patch refs/taskpod/base && '
    'git -c core.quotepath=off ls-files --others --exclude-standard | sed "s/^/untracked: /"'
)


async def diff(namespace: str, name: str) -> Diff:
    """The workspace's changes since the task's base: live while Active (through pods/exec); otherwise
    what the workspace last reported, which has the stat but not the lines."""
    task = await _task(namespace, name)
    if task.status.phase is not Phase.ACTIVE:
        if task.status.repository is None:
            raise TaskConflict(f"task {name} has no repository, or has reported none of its changes yet")
        return Diff("", live=False, recorded=task.status.repository)
    ran = await kube.exec_in_pod(namespace, _in_checkout(task, "diff"), CONTAINER, ["sh", "-c", DIFF])
    if ran.code != 0:
        raise GitFailed(ran.err.strip() or f"git diff exited {ran.code}")
    return Diff(ran.out, live=True, recorded=task.status.repository)


async def push(namespace: str, name: str) -> str:
    """Push an Active task's working branch now (the workspace image's taskpod-git-state push, which also
    records it in status); git's words on success. GitFailed with them when the push fails."""
    task = await _task(namespace, name)
    pod = _in_checkout(task, "push")
    ran = await kube.exec_in_pod(namespace, pod, CONTAINER, ["taskpod-git-state", "push"])
    if ran.code != 0:
        raise GitFailed(ran.err.strip().removeprefix("taskpod-git-state: ") or f"the push exited {ran.code}")
    return ran.out.strip()


async def logs(namespace: str, name: str) -> Logs:
    """The conversation across the task's lifetimes: what the snapshot kept of the earlier ones, then the
    live messages of the current one while Active (each message says its `lifetime`)."""
    task = await _task(namespace, name)
    phase = task.status.phase
    if phase is Phase.ACTIVE:
        try:
            async with _connected(task) as client:
                live = [_shown(m) for m in await client.messages()]
        except (AgentUnavailable, AgentError):
            if paused(task) is None:
                raise
            # Paused, and the status not saying so yet: the agent is stopping, its conversation kept.
            return await _snapshot_logs(task)
        lifetime = (task.status.workspace.lifetime if task.status.workspace else None) or 1
        kept = (await _snapshot_logs(task)).messages if lifetime > 1 else []
        return Logs(across_lifetimes(kept, live, lifetime), snapshot=False)
    if phase in SNAPSHOT_PHASES or phase is None:
        return await _snapshot_logs(task)
    raise TaskConflict(f"cannot fetch logs for task in current state: {phase} ({task.status.message})")


async def _snapshot_logs(task: Task) -> Logs:
    cm = await kube.read_configmap(task.namespace, configmap_name(task.name))
    # None yet; or a deleted task's of the same name, not yet removed: never another task's words.
    messages = messages_of(cm, task.metadata.uid) or []
    taken = task.status.log_snapshot.taken_at if task.status.log_snapshot else None
    at = rfc3339(taken) if taken and messages else None
    return Logs(messages, snapshot=True, snapshot_at=at)


def _shown(message: AgentMessage) -> dict[str, Any]:
    """A live message as logs show it: without a terminal screen's padding, as snapshots keep it."""
    return {**message.dump(), "content": tidy(message.content)}


async def follow(namespace: str, name: str, interval: float = 1.0) -> AsyncIterator[dict[str, Any]]:
    """Messages of an Active task as they complete (every message so far first); ends when the task
    leaves Active. A message is complete once a newer one exists or the agent is stable again."""
    shown: set[int] = set()
    while True:
        task = await _task(namespace, name)
        if task.status.phase is not Phase.ACTIVE:
            return
        try:
            async with _connected(task) as client:
                stable = (await client.status()).status is AgentStatus.STABLE
                messages = await client.messages()
        except (AgentUnavailable, AgentError, TaskConflict):
            messages, stable = [], False  # between lifetimes (status a moment behind), a hiccup: look again
        for i, message in enumerate(messages):
            if message.id not in shown and (stable or i < len(messages) - 1):
                shown.add(message.id)
                yield _shown(message)
        await asyncio.sleep(interval)


async def send(
    namespace: str, name: str, content: str, timeout: float = 300, progress: Callable[[str], None] = print
) -> None:
    """Send input as a user message; a paused task is resumed first, and the agent must be stable.

    Whether it is stable is the agent's own answer, asked just before sending: the task's STATE may be a
    moment old (Claude Code's screen moves again just after it goes idle), and an agent that reported
    complete or failed takes input too."""
    if not content.strip():
        raise ValueError("the input is empty")
    task = await _task(namespace, name)
    resumed = paused(task) is not None
    if resumed:
        progress(f"Resuming task {name}...")
        task = await _resume(task)
    deadline = time.monotonic() + timeout
    while True:
        task = await _task(namespace, name)
        if task.status.phase in (Phase.ERROR, Phase.UNKNOWN):
            raise TaskConflict(
                f"cannot send to task in current state: {task.status.phase} ({task.status.message})"
            )
        waiting = str(task.status.phase or Phase.PENDING)
        if resumed and not await _resumed(task):
            waiting = "the operator to resume it"
        elif task.status.phase is Phase.ACTIVE:
            try:
                async with _connected(task) as client:
                    if await deliver(client, content):
                        return
                waiting = "Active, the agent busy"
            except AgentUnavailable:  # e.g. its pod going away for a pause someone else asked for
                waiting = "Active, the agent not answering"
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {name}'s agent did not become ready for input within {timeout:.0f}s")
        progress(f"Waiting for task {name}: {waiting}")
        await asyncio.sleep(1)


REFUSED_AT_ONCE = 5.0  # seconds: AgentAPI's refusals come at once, its failures after writing take 15 s


async def deliver(client: AgentClient, content: str) -> bool:
    """Send `content` if the agent is stable; False if it is not (or stopped being so), to try again.

    AgentAPI answers a message that arrives while the screen changes with HTTP 500, as it answers every
    failure, but refuses it before writing anything; a failure once it has written (the screen not
    settling) comes only after its 15 s waits. So only a quick refusal from an agent that is no longer
    stable is taken as "not now": anything else may have reached the agent and is not sent twice."""
    if (await client.status()).status is not AgentStatus.STABLE:
        return False
    started = time.monotonic()
    try:
        await client.send(content, "user")
    except AgentError:
        quick = time.monotonic() - started < REFUSED_AT_ONCE
        if quick and (await client.status()).status is not AgentStatus.STABLE:
            return False
        raise
    return True


# -- what the plugin's other commands do --------------------------------------------------------


class NoTemplate(Exception):
    """No TaskTemplate fits: none, several without a choice, or the chosen one missing."""


async def choose_template(namespace: str, wanted: str | None) -> str:
    """The TaskTemplate a new task uses: `wanted` if it exists, else the namespace's only one."""
    names = sorted(str(t["metadata"]["name"]) for t in await kube.list_objects("TaskTemplate", namespace))
    if wanted is not None:
        if wanted in names:
            return wanted
        raise NoTemplate(
            f"TaskTemplate {wanted!r} not found in namespace {namespace}"
            + (f"; there are: {', '.join(names)}" if names else "")
        )
    if len(names) == 1:
        return names[0]
    if not names:
        raise NoTemplate(
            f"no TaskTemplate in namespace {namespace}: create one first (see examples/1-tasktemplate.yaml)"
        )
    listed = ", ".join(names)
    raise NoTemplate(
        f"namespace {namespace} has {len(names)} TaskTemplates ({listed}): choose one with --template"
    )


async def create(
    namespace: str,
    prompt: str,
    *,
    name: str | None = None,
    display_name: str | None = None,
    template: str | None = None,
    paused: bool = False,
    repository: Repository | None = None,
) -> Task:
    """Create a task, naming it from the prompt when no name is given (see taskpod.core.naming).
    `repository`: its fields override the template's repository (see Repository)."""
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    if name is not None and (why := naming.invalid_task_name(name)):
        raise ValueError(why)
    chosen = await choose_template(namespace, template)
    names = await naming.generate(prompt, name=name, display_name=display_name)
    for attempt in range(3):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Task",
            "metadata": {"name": names.name, "namespace": namespace},
            "spec": {
                "prompt": prompt,
                "displayName": names.display_name,
                "template": chosen,
                "paused": paused,
                **({"repository": repository.dump()} if repository is not None else {}),
            },
        }
        try:
            return Task.from_api(await kube.create_task(namespace, body))
        except kube.ApiException as exc:
            if exc.status != 409 or name is not None or attempt == 2:
                raise
            # A generated name taken already: same stem, another suffix.
            names = naming.Names(naming.with_suffix(names.name[:-5]), names.display_name, names.source)
    raise AssertionError("unreachable")


async def pause(namespace: str, name: str) -> bool:
    """Ask for a pause; False when the task was already paused."""
    task = await _task(namespace, name)
    if task.spec.paused:
        return False
    await kube.patch_task_spec(namespace, name, {"paused": True})
    return True


def paused(task: Task) -> automation.PauseReason | None:
    """Who holds the task paused: its user (spec.paused), or an automatic pause (status.autoPause)."""
    wake = task.metadata.annotations.get(automation.WAKE_ANNOTATION, "")
    return automation.paused_by(task.spec.paused, task.status.auto_pause, wake)


async def _resume(task: Task) -> Task:
    """End the user's pause (spec.paused), or wake an automatic one: a new value of the wake annotation
    (the operator never writes spec, so neither pause fights a GitOps tool's manifest). The task as
    the API server has it then."""
    if task.spec.paused:
        raw = await kube.patch_task_spec(task.namespace, task.name, {"paused": False})
    else:
        value = rfc3339(dt.datetime.now(dt.UTC).replace(microsecond=0))
        if task.metadata.annotations.get(automation.WAKE_ANNOTATION) == value:
            value += "+1"  # twice in one second: a value it has not had
        raw = await kube.annotate_task(task.namespace, task.name, {automation.WAKE_ANNOTATION: value})
    return Task.from_api(raw)


async def _resumed(task: Task) -> bool:
    """Whether the operator has acted on the resume, and the pod in status is one it keeps running: input
    given to a pod still stopping for the pause would be lost with it."""
    if task.spec.paused or (task.status.observed_generation or 0) < task.metadata.generation:
        return False
    auto = task.status.auto_pause
    if auto is not None and auto.woken_at is None:
        return False  # the wake not seen yet
    pod = task.status.workspace.pod if task.status.workspace else None
    if task.status.phase is not Phase.ACTIVE or pod is None:
        return True  # nothing to give it to yet: the loop waits for Active
    found = await kube.get_pod(task.namespace, pod)
    return found is not None and not (found.get("metadata") or {}).get("deletionTimestamp")


async def resume(namespace: str, name: str) -> None:
    """Coder's rule: only a paused task can be resumed; either kind of pause."""
    task = await _task(namespace, name)
    if paused(task) is None:
        raise TaskConflict(f"task {name} is not paused (it is {task.status.phase or 'Pending'})")
    await _resume(task)


async def set_prompt(namespace: str, name: str, prompt: str) -> None:
    """Change the prompt of a paused task; it is delivered after the next resume."""
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    task = await _task(namespace, name)
    if not task.spec.paused:
        raise TaskConflict(
            f"the task must be paused to change its prompt: run `kubectl task pause {name}` first"
        )
    await kube.patch_task_spec(namespace, name, {"prompt": prompt})


async def get(namespace: str, name: str) -> Task:
    return await _task(namespace, name)


async def list_tasks(namespace: str | None, selector: str | None = None) -> list[Task]:
    """Tasks in `namespace` (all namespaces when None), oldest first."""
    tasks = [Task.from_api(t) for t in await kube.list_objects("Task", namespace, selector)]
    return sorted(tasks, key=lambda t: (t.metadata.creation_timestamp or _EPOCH, t.namespace, t.name))


async def delete(namespace: str, name: str) -> None:
    await kube.delete_task(namespace, name)


async def wait(
    namespace: str,
    name: str,
    until: Callable[[Task], bool],
    timeout: float,
    progress: Callable[[Task], None],
    interval: float = 1.0,
) -> Task:
    """Poll the task until `until(task)`; `progress` sees every version; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        task = await _task(namespace, name)
        progress(task)
        if until(task):
            return task
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {name} did not get there within {timeout:.0f}s")
        await asyncio.sleep(interval)


def settled(task: Task) -> bool:
    """Nothing more will happen without someone acting: idle or done, paused, or broken."""
    phase = task.status.phase
    if task.status.observed_generation != task.metadata.generation:
        return False
    if phase is Phase.ACTIVE:
        state = task.status.state.state if task.status.state else None
        return state in (AgentState.IDLE, AgentState.COMPLETE, AgentState.FAILED)
    return phase in (Phase.PAUSED, Phase.ERROR)
