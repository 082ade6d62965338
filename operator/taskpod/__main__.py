"""python -m taskpod: run the operator.

Flags and TASKPOD_* variables build one Settings (taskpod.controller.settings), passed to the handlers through
Kopf's memo. The Kubernetes connection comes from the in-cluster service account, or from KUBECONFIG
(taskpod.kube.login, for Kopf and our own calls alike).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from typing import Any, cast

from pydantic import ValidationError

from taskpod.controller.settings import Settings


def _help(field: str, default: bool = True) -> str:
    """A flag's help: the setting's description, its variable, and its default."""
    info = Settings.model_fields[field]
    shown = f"; default {info.default}" if default and info.default not in (None, (), False) else ""
    return f"{info.description}{shown}; env TASKPOD_{field.upper()}"


def parse_args(argv: list[str] | None = None) -> Settings:
    """The settings: these flags, then the TASKPOD_* variables, then the defaults."""
    parser = argparse.ArgumentParser(prog="python -m taskpod", description="The taskpod operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", metavar="NS", help=_help("namespaces")
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_const", const=True, help=_help("all_namespaces")
    )
    parser.add_argument("--liveness", metavar="URL", help=_help("liveness"))
    parser.add_argument("--agent-transport", choices=["direct", "proxy"], help=_help("agent_transport"))
    parser.add_argument(
        "--agent-grace",
        dest="agent_grace_seconds",
        type=float,
        metavar="SECONDS",
        help=_help("agent_grace_seconds"),
    )
    parser.add_argument(
        "--agent-probe-after",
        dest="agent_probe_after_seconds",
        type=float,
        metavar="SECONDS",
        help=_help("agent_probe_after_seconds"),
    )
    parser.add_argument("--report-listen", metavar="HOST:PORT", help=_help("report_listen"))
    parser.add_argument("--report-url", metavar="URL", help=_help("report_url"))
    parser.add_argument("--http-listen", metavar="HOST:PORT", help=_help("http_listen"))
    parser.add_argument(
        "--leader-election", action=argparse.BooleanOptionalAction, help=_help("leader_election")
    )
    parser.add_argument("--lease-name", help=_help("lease_name"))
    parser.add_argument("--lease-namespace", help=_help("lease_namespace"))
    parser.add_argument("-v", "--verbose", action="store_const", const=True, help=_help("verbose"))
    args = vars(parser.parse_args(argv))
    if args["all_namespaces"]:  # the flag wins over TASKPOD_NAMESPACES
        args["namespaces"] = ()
    elif args["namespaces"]:
        args["all_namespaces"] = False
    try:
        return Settings.from_environment(**args)
    except ValidationError as exc:
        said = (f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        parser.error("; ".join(said))


KOPF_POSTING = "kopf._core.engines.posting"


def not_for_a_namespace_being_deleted(record: logging.LogRecord) -> bool:
    """Whether to log this line of Kopf's Event poster: not its failures to post into a namespace being
    deleted (an error a retry, 9 in all) or gone (a warning). Deleting a namespace of tasks deletes
    their templates too, often first, and the tasks' Error Events have nowhere to go; nothing is lost,
    as the namespace's Events go with it. -v shows them."""
    text = record.getMessage()
    terminating = "NamespaceTerminating" in text
    gone = "Failed to post an event" in text and "Code: 404" in text and 'namespaces "' in text
    return not (terminating or gone)


def without_the_kubernetes_package() -> None:
    """Make the `kubernetes` package unimportable in this process, unless something has imported it
    already. The operator reaches the API server through taskpod.kube alone; the package serves the
    kubectl-task commands. Kopf imports its models whenever it can, and they cost 19 MiB of memory that the
    operator would never use. A None in sys.modules makes an import raise ModuleNotFoundError, and Kopf
    then works without it, as it is documented to. kube.login() allows it again for a kubeconfig user who
    logs in through a program, which only the package runs."""
    sys.modules.setdefault("kubernetes", cast(Any, None))


def main(argv: list[str] | None = None) -> int:
    without_the_kubernetes_package()
    import kopf  # after the line above: Kopf looks for the package when first imported

    settings = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if not settings.verbose:  # Kopf logs every handler run at INFO; our Events and warnings tell the story
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        for chatty in ("httpx", "httpx2"):  # a line per agent call (httpx) or Anthropic call (httpx2)
            logging.getLogger(chatty).setLevel(logging.WARNING)
        logging.getLogger(KOPF_POSTING).addFilter(not_for_a_namespace_being_deleted)
    from taskpod.controller import election, handlers, metrics  # importing handlers registers them with Kopf

    health = metrics.Health()
    if settings.http_listen:
        metrics.serve(settings.http_listen, health)
    elector = _elected(settings) if settings.leader_election else None
    metrics.LEADER.set(1)
    memo = handlers.memo_for(settings, health)

    async def operate() -> None:
        try:
            await kopf.operator(
                standalone=True,
                # Kopf's own default is user@host from the passwd database, which has no entry for the
                # image's uid 65532 (or for the arbitrary uids some platforms run pods as): it would crash
                # at start. (Kopf's Identity is a NewType of str that it does not export.)
                identity=cast(Any, election.default_identity()),
                clusterwide=settings.cluster_wide,
                namespaces=settings.namespaces,
                liveness_endpoint=settings.liveness,
                memo=memo,
            )
        finally:
            await handlers.stop(memo)  # also when a stop during start-up skipped Kopf's cleanup handlers

    try:
        asyncio.run(operate())  # what kopf.run does, and what configure started stopped at the end
    except asyncio.CancelledError:
        pass
    finally:
        if elector is not None:
            elector[1].set()  # stop renewing, then hand over at once
            elector[0].release()
            elector[0].leases.close()
    return 0


def _elected(settings: Settings) -> tuple[Any, threading.Event]:
    """Block until this process leads; from then on, exit the moment leadership cannot be kept."""
    from taskpod import kube
    from taskpod.controller import election

    elector = election.Elector(
        kube.Leases(election.CALL_TIMEOUT),
        settings.lease_namespace or election.default_namespace(),
        settings.lease_name,
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
