"""python -m localkube {build,up,down,status}: the local control plane from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from localkube import binaries, podnet
from localkube.cluster import NODE_KINDS, LocalCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localkube", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) the upstream binaries")
    build.add_argument("names", nargs="*", choices=[[], *binaries.COMPONENTS], help="default: all")
    for name, text in [
        ("up", "start a control plane in the background"),
        ("down", "stop it"),
        ("status", "say whether it runs"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--dir", type=Path, default=Path(".cluster"), help="cluster directory (default .cluster)"
        )
        if name == "up":
            p.add_argument(
                "--node",
                choices=NODE_KINDS,
                default="kwok",
                help="kwok: fake nodes that run nothing; real: this machine as a real node, a kubelet with "
                "containerd (needs root; default kwok)",
            )
            p.add_argument("--nodes", type=int, default=1, help="fake nodes to register (default 1)")
            p.add_argument(
                "--pod-network",
                choices=podnet.MODES,
                default="auto",
                help="pod IPs in 127.0.0.0/8 (loopback), or in 198.18.0.0/15 made local by routes on lo "
                "(routed: needs CAP_NET_ADMIN, and lets the API server proxy to pods); auto picks routed "
                "when it can (default auto)",
            )
    args = parser.parse_args(argv)

    if args.command == "build":
        started = time.monotonic()
        for name in args.names or list(binaries.COMPONENTS):
            print(f"{name:25} {binaries.ensure(name)}")
        print(f"all binaries present after {time.monotonic() - started:.0f}s", file=sys.stderr)
        return 0
    cluster = LocalCluster(args.dir)
    if args.command == "up":
        state = cluster.up(nodes=args.nodes, pod_network=args.pod_network, node=args.node)
        print(f"export KUBECONFIG={state.kubeconfig}")
    elif args.command == "down":
        cluster.down()
    else:
        running = cluster.running()
        print("running" if running else "stopped")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
