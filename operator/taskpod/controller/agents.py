"""Following each workspace's agent: one asyncio task per running pod reads AgentAPI's /events stream.

Why our own asyncio tasks and not Kopf daemons: Kopf puts a finalizer on every object with a daemon, so
deleting a Task would wait for a running operator. A follower lives exactly as long as its pod; the
reconcile starts it when the pod is Ready and stops it when the pod goes. What it hears goes into an
in-memory AgentView and pokes the reconcile, which stays the only writer of status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from taskpod.agentapi import (
    AgentClient,
    AgentError,
    AgentEvent,
    AgentMessage,
    AgentUnavailable,
    Transport,
)
from taskpod.api.models import AgentStatus, Key, storable
from taskpod.core import clock
from taskpod.core.lifecycle import AgentView

log = logging.getLogger("taskpod.controller.agents")
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
PROBE_AFTER = 60.0  # seconds of a quiet /events stream before its agent is asked how it is
PROBE_RETRY = 5.0  # seconds between asking again an agent that did not answer
PROBES_PER_SECOND = 20.0  # at most, over all quiet agents


@dataclass(frozen=True)
class Target:
    """Where one pod's agent listens; a new pod (resume, restart) is a new target."""

    pod_uid: str
    namespace: str
    pod: str
    pod_ip: str
    port: int
    lifetime: int


class _Follower(NamedTuple):
    target: Target
    task: asyncio.Task[None]
    client: AgentClient


class Agents:
    def __init__(
        self, transport: Transport, poke: Callable[[Key], None], probe_after: float = PROBE_AFTER
    ) -> None:
        self.transport = transport
        self.probe_after = probe_after
        self.poke = poke  # asks for a reconcile of that task
        self.views: dict[Key, AgentView] = {}
        self._followers: dict[Key, _Follower] = {}
        self.idle_pending: set[Key] = set()  # went idle since the last snapshot

    def ensure(self, key: Key, target: Target | None, answered_before: bool = False) -> None:
        """Follow `target`'s agent, or nobody when None; a changed target restarts the follower.

        `answered_before`: status says this pod's agent answered an earlier operator run, so silence now
        is an agent gone quiet (Unknown after the grace period), not one still starting.
        """
        current = self._followers.get(key)
        if current is not None and current.target == target:
            return
        if current is not None:
            current.task.cancel()  # its stream closes on the way out
            del self._followers[key]
        if target is None:
            self.views.pop(key, None)
            self.idle_pending.discard(key)
            return
        self.views[key] = AgentView(lifetime=target.lifetime, answered=answered_before)
        client = self.reach(target)
        task = asyncio.get_running_loop().create_task(self._follow(key, client), name=f"follow {key}")
        self._followers[key] = _Follower(target, task, client)

    def reach(self, target: Target) -> AgentClient:
        """A client for this target's agent, followed or not."""
        return self.transport.client(target.namespace, target.pod, target.pod_ip, target.port)

    def target(self, key: Key) -> Target | None:
        follower = self._followers.get(key)
        return follower.target if follower else None

    def client(self, key: Key) -> AgentClient | None:
        """The followed agent's client (owned by its follower: do not close it)."""
        follower = self._followers.get(key)
        return follower.client if follower else None

    def _update(self, key: Key, **changes: Any) -> None:
        """Record what was heard; a reconcile runs only when it changed the view. A stopped agent's follower
        retries every few seconds, and each failure used to poke (the reconciler wakes itself up for the end
        of the grace period)."""
        view = self.views.get(key)
        if view is not None and (updated := replace(view, **changes)) != view:
            self.views[key] = updated
            self.poke(key)

    async def _follow(self, key: Key, client: AgentClient) -> None:
        attempt = 0
        while True:
            try:
                async for event in self._events(key, client):
                    attempt = 0
                    self._heard(key, event.kind, event.data)
                raise AgentUnavailable("the /events stream ended")
            except asyncio.CancelledError:
                raise
            except (AgentUnavailable, AgentError) as exc:
                self._silent(key, str(exc))
            except Exception as exc:  # never let one agent's oddity kill its follower for good
                log.exception("following the agent of %s/%s failed", *key)
                self._silent(key, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _events(self, key: Key, client: AgentClient) -> AsyncGenerator[AgentEvent, None]:
        """The agent's /events, until the stream ends. An open stream proves little: a wedged agent keeps
        it open and answers nothing else. So when it has been quiet for a while, a GET /status (bounded
        by the client's timeout) asks; an agent that does not answer is silent from then on (Unknown after
        the grace period), and asked again sooner. Quiet agents are asked at most PROBES_PER_SECOND in
        all, so a few thousand idle agents cost a few requests a second."""
        stream = client.events()
        pending = asyncio.ensure_future(_next(stream))
        quiet = self._probe_after()
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=quiet)
                if pending in done:
                    try:
                        yield pending.result()
                    except StopAsyncIteration:
                        return
                    pending = asyncio.ensure_future(_next(stream))
                    quiet = self._probe_after()
                    continue
                try:
                    report = await client.status()
                except (AgentUnavailable, AgentError) as exc:
                    self._silent(key, f"{exc} (its event stream is open, but it answers nothing else)")
                    quiet = PROBE_RETRY
                else:
                    self._heard(
                        key, "status_change", {"status": report.status, "agent_type": report.agent_type}
                    )
                    quiet = self._probe_after()
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
            await stream.aclose()

    def _probe_after(self) -> float:
        """Seconds of quiet before a stream's agent is asked how it is (jittered, so probes spread)."""
        spread = max(self.probe_after, len(self._followers) / PROBES_PER_SECOND)
        return spread * random.uniform(0.8, 1.2)

    def _silent(self, key: Key, reason: str) -> None:
        """The agent did not answer: unhealthy, silent since its first failure after the last success."""
        view = self.views.get(key)
        silent_since = view.silent_since if view and view.silent_since else clock.now()
        self._update(key, healthy=False, reason=reason, silent_since=silent_since)

    def _heard(self, key: Key, kind: str, data: dict[str, Any]) -> None:
        view = self.views.get(key)
        if view is None:
            return
        changes: dict[str, Any] = {"answered": True, "healthy": True, "reason": None, "silent_since": None}
        if kind == "status_change":
            with contextlib.suppress(ValueError):
                status = AgentStatus(str(data.get("status")))
                changes["status"] = status
                if status is AgentStatus.STABLE and view.status is not AgentStatus.STABLE:
                    self.idle_pending.add(key)
            changes["agent_type"] = data.get("agent_type") or view.agent_type
        elif kind == "message_update" and data.get("role") == "agent":
            changes["last_message"] = storable(str(data.get("message", "")))
        self._update(key, **changes)

    async def stop_all(self) -> None:
        tasks = [follower.task for follower in self._followers.values()]
        self._followers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each closes its stream


async def _next(stream: AsyncGenerator[AgentEvent, None]) -> AgentEvent:
    return await anext(stream)


async def deliver_prompt(client: AgentClient, prompt: str) -> str | None:
    """Send the prompt as a user message unless the agent already has it. Once it surely has it, say
    how: "sent" (now) or "found" (already in its log: a crash or a lost answer came between); else None.

    Exactly once across crashes and retries: the agent's own message log is checked before sending,
    and again after any failure, since a 500 or a timeout may come after the message got through.
    """
    if _has_prompt(await client.messages(), prompt):
        return "found"
    try:
        await client.send(prompt, "user")
        return "sent"
    except (AgentError, AgentUnavailable):
        try:
            return "found" if _has_prompt(await client.messages(), prompt) else None
        except (AgentError, AgentUnavailable):
            return None


def _has_prompt(messages: list[AgentMessage], prompt: str) -> bool:
    wanted = prompt.strip()
    return any(m.role == "user" and m.content.strip() == wanted for m in messages)
