"""python -m agentsim serve: ONE scripted agent serving AgentAPI on host:port, as a workspace container.

For images/agent-sim: a pod (a `helm test` hook, a workspace without an API key) that answers the operator
like Claude Code behind agentapi would, with no cluster access. The behaviour is JSON with the keys of the
pod annotation `sim.taskpod.dev/agent` (see agentsim.agent), from --behaviour or the env SIM_AGENT. With
--state-file the conversation is kept there across restarts, as `agentapi --state-file` does.
SIGTERM or Ctrl-C stops it and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from .agent import ScriptedAgent
from .behaviour import Behaviour, BehaviourError

log = logging.getLogger("agentsim")


async def _serve(agent: ScriptedAgent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # as PID 1 in a container, SIGTERM needs a handler
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    log.info("serving AgentAPI at %s (agent_type %s)", agent.url, agent.behaviour.agent_type)
    try:
        await stop.wait()
    finally:
        await agent.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentsim serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--port", type=int, default=3284, help="port to listen on (3284, as agentapi)")
    parser.add_argument(
        "--type",
        dest="agent_type",
        help="the agent type /status reports, as agentapi's --type (a behaviour's agent_type wins)",
    )
    parser.add_argument(
        "--behaviour",
        default=os.environ.get("SIM_AGENT"),
        metavar="JSON",
        help="what the agent does (default: env SIM_AGENT, else the defaults)",
    )
    parser.add_argument("--state-file", type=Path, help="keep the conversation here across restarts")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    args = parser.parse_args(argv)
    try:
        base = Behaviour(agent_type=args.agent_type) if args.agent_type else None
        behaviour = Behaviour.parse(args.behaviour, base)
    except BehaviourError as exc:
        parser.error(f"bad behaviour (--behaviour or SIM_AGENT): {exc}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent = ScriptedAgent(args.host, args.port, behaviour, state_file=args.state_file)
    try:
        asyncio.run(_serve(agent))
    except OSError as exc:  # the port is taken, the address is not ours
        log.error("cannot serve at %s: %s", agent.url, exc)
        return 1
    return 0
