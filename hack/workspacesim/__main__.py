"""python -m workspacesim: run the workspace simulator in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from workspacesim.simulator import Simulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workspacesim", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", type=Path, help="keep each task's conversation here across pauses")
    parser.add_argument("-n", "--namespace", action="append", dest="namespaces", help="default: all")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Simulator(args.kubeconfig, args.state_dir, args.namespaces).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
