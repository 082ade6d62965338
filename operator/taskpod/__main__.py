"""python -m taskpod: run the operator.

Scope: `--namespace NS` (repeatable) or `--all-namespaces`; the chart sets the same through
TASKPOD_NAMESPACES (comma-separated) or TASKPOD_ALL_NAMESPACES=true. The Kubernetes connection comes
from the in-cluster service account, or from KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import Any

import kopf


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m taskpod", description="The taskpod operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable); env TASKPOD_NAMESPACES=a,b",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default); env TASKPOD_ALL_NAMESPACES=true",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=os.environ.get("TASKPOD_LIVENESS"),
        help="serve Kopf's health probe here, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--agent-transport",
        choices=["direct", "proxy"],
        default=os.environ.get("TASKPOD_AGENT_TRANSPORT", "direct"),
        help="reach agents at the pod IP (direct, in-cluster) or through the API server's "
        "pod proxy (proxy, works from outside); env TASKPOD_AGENT_TRANSPORT",
    )
    parser.add_argument(
        "--agent-grace",
        type=float,
        metavar="SECONDS",
        default=float(os.environ.get("TASKPOD_AGENT_GRACE_SECONDS", "30")),
        help="how long an agent may be silent before the phase is Unknown (default 30)",
    )
    parser.add_argument(
        "--agent-probe-after",
        type=float,
        metavar="SECONDS",
        default=float(os.environ.get("TASKPOD_AGENT_PROBE_AFTER_SECONDS", "60")),
        help="ask an agent whose event stream has been quiet this long whether it still answers "
        "(default 60; at most 20 such probes a second in all); env TASKPOD_AGENT_PROBE_AFTER_SECONDS",
    )
    parser.add_argument(
        "--report-listen",
        metavar="HOST:PORT",
        default=os.environ.get("TASKPOD_REPORT_LISTEN"),
        help="serve the agents' report endpoint here, e.g. 0.0.0.0:8081; env TASKPOD_REPORT_LISTEN",
    )
    parser.add_argument(
        "--report-url",
        metavar="URL",
        default=os.environ.get("TASKPOD_REPORT_URL"),
        help="the report endpoint as workspaces reach it, e.g. "
        "http://taskpod.taskpod-system.svc:8081/report; env TASKPOD_REPORT_URL",
    )
    parser.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        default=os.environ.get("TASKPOD_HTTP_LISTEN"),
        help="serve /metrics (Prometheus), /healthz and /readyz here, e.g. 0.0.0.0:8080; "
        "env TASKPOD_HTTP_LISTEN",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("TASKPOD_LEADER_ELECTION", "").lower() in ("1", "true", "yes"),
        help="reconcile only while holding a coordination.k8s.io Lease, so replicas stand by "
        "(default off); env TASKPOD_LEADER_ELECTION=true",
    )
    parser.add_argument(
        "--lease-name",
        default=os.environ.get("TASKPOD_LEASE_NAME", "taskpod-operator"),
        help="the Lease's name (default taskpod-operator); env TASKPOD_LEASE_NAME",
    )
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("TASKPOD_LEASE_NAMESPACE"),
        help="the Lease's namespace (default: POD_NAMESPACE, else the in-cluster ServiceAccount's, "
        "else default); env TASKPOD_LEASE_NAMESPACE",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if not args.namespaces and not args.all_namespaces:
        from_env = [ns for ns in os.environ.get("TASKPOD_NAMESPACES", "").split(",") if ns.strip()]
        args.namespaces = [ns.strip() for ns in from_env] or None
    args.all_namespaces = not args.namespaces
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if not args.verbose:  # Kopf logs every handler run at INFO; our Events and warnings tell the story
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        for chatty in ("httpx", "httpx2"):  # a line per agent call (httpx) or Anthropic call (httpx2)
            logging.getLogger(chatty).setLevel(logging.WARNING)
    os.environ["TASKPOD_AGENT_TRANSPORT"] = args.agent_transport  # read by the startup handler
    os.environ["TASKPOD_AGENT_GRACE_SECONDS"] = str(args.agent_grace)
    os.environ["TASKPOD_AGENT_PROBE_AFTER_SECONDS"] = str(args.agent_probe_after)
    for name, value in (
        ("TASKPOD_REPORT_LISTEN", args.report_listen),
        ("TASKPOD_REPORT_URL", args.report_url),
    ):
        if value:
            os.environ[name] = value
    import taskpod.handlers  # noqa: F401  (registers the handlers)
    from taskpod import metrics

    if args.http_listen:
        metrics.serve(args.http_listen)
    elector = _elected(args) if args.leader_election else None
    metrics.LEADER.set(1)
    try:
        kopf.run(
            standalone=True,
            clusterwide=args.all_namespaces,
            namespaces=args.namespaces or (),
            liveness_endpoint=args.liveness,
        )
    finally:
        if elector is not None:
            elector[1].set()  # stop renewing, then hand over at once
            elector[0].release()
    return 0


def _elected(args: argparse.Namespace) -> tuple[Any, threading.Event]:
    """Block until this process leads; from then on, exit the moment leadership cannot be kept."""
    from kubernetes import client

    from taskpod import election, kube

    elector = election.Elector(
        client.CoordinationV1Api(kube.api_client()),
        args.lease_namespace or election.default_namespace(),
        args.lease_name,
        election.default_identity(),
    )
    elector.wait_for_leadership()
    stop = threading.Event()

    def step_down() -> None:  # another replica may lead soon: stop reconciling now, not gracefully
        logging.getLogger("taskpod").error("leadership lost; exiting so that only one replica reconciles")
        os._exit(3)

    elector.keep_renewing(stop, step_down)
    return elector, stop


if __name__ == "__main__":
    sys.exit(main())
