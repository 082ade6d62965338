"""Following an agent: what the follower hears becomes the task's agent view, and a reconcile runs only when
that view changes."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from taskpod.agentapi import Transport
from taskpod.controller import agents as agents_module
from taskpod.controller.agents import Agents, Target
from tests.support import free_port


def test_an_agent_that_stays_down_pokes_once_not_at_every_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found measuring pauses at N = 1,000: a stopped agent's follower retried every few seconds until its
    pod's deletion reached the operator, and each failed attempt ran a reconcile."""
    monkeypatch.setattr(agents_module, "RECONNECT_DELAYS", (0.02,))
    pokes: list[tuple[str, str]] = []

    async def scenario() -> int:
        agents = Agents(Transport(aiohttp.ClientSession(), timeout=1.0), pokes.append)
        target = Target("uid-1", "team", "fix-login-0", "127.0.0.1", free_port(), 1)  # nobody listens there
        agents.ensure(("team", "fix-login"), target)
        for _ in range(100):  # a dozen or more attempts
            await asyncio.sleep(0.01)
        attempts_seen = agents.views[("team", "fix-login")]
        assert not attempts_seen.healthy and attempts_seen.silent_since is not None
        await agents.stop_all()
        await agents.transport.aclose()
        return len(pokes)

    assert asyncio.run(scenario()) == 1
