"""python -m agentsim: play the agent of every Running taskpod workspace pod, in the foreground.

Logs each agent started and stopped. SIGTERM or Ctrl-C stops the agents (their conversations are saved
with every change already) and exits. `python -m agentsim serve` runs one agent instead, without a
cluster (agentsim.serve).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .simulator import Simulator


def _raise_file_limit() -> None:
    """Each agent is a listening socket plus its clients: thousands of agents need thousands of files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard)
            )


async def _serve(simulator: Simulator) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await simulator.run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from .serve import main as serve

        return serve(argv[1:])
    # Imported here: the simulator needs the kubernetes client, which `serve` (images/agent-sim) lacks.
    from .simulator import SELECTOR, Simulator

    parser = argparse.ArgumentParser(
        prog="python -m agentsim",
        description=__doc__.splitlines()[0],
        epilog="python -m agentsim serve --help: one agent on a port, without a cluster",
    )
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config, as kubectl")
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], dest="namespaces", help="repeatable; default: all"
    )
    parser.add_argument(
        "--state-dir", type=Path, help="keep each task's conversation here across pod restarts"
    )
    parser.add_argument(
        "--selector", default=SELECTOR, help=f"label selector of the pods to play ({SELECTOR})"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _raise_file_limit()
    simulator = Simulator(args.kubeconfig, args.namespaces, args.state_dir, args.selector)
    try:
        asyncio.run(_serve(simulator))
    except TimeoutError as exc:
        logging.getLogger("agentsim").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
