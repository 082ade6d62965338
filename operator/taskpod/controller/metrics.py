"""Prometheus metrics, and the small HTTP server that serves them with the health probes.

`--http-listen HOST:PORT` serves, for the whole life of the process (standby included):
  /metrics  Prometheus text format (prometheus_client)
  /healthz  liveness: 200 while the process works; for the leader, while Kopf's event loop answers
  /readyz   readiness: 200 once the process is up (a standby is ready: it serves metrics and waits)

The server runs in its own thread, so it answers while the process waits for leadership and keeps
answering if the event loop stalls, which is exactly when /healthz must say 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("taskpod.controller.metrics")
LOOP_TIMEOUT = 5.0  # seconds the event loop may take to run a no-op before /healthz fails

RECONCILE_SECONDS = Histogram(
    "taskpod_reconcile_duration_seconds",
    "Time one reconcile of a task took, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("taskpod_reconcile_errors_total", "Reconciles that failed and were retried.")
RECONCILES_SKIPPED = Counter(
    "taskpod_reconciles_skipped_total",
    "Watch events that changed nothing a reconcile reads (our own status write coming back, a pod's "
    "status update that no view keeps), so no reconcile ran.",
)
PROMPT_DELIVERIES = Counter(
    "taskpod_prompt_deliveries_total",
    "Prompt deliveries: sent now, found already in the agent's log (after a crash), or failed (retried).",
    ["outcome"],
)
SNAPSHOT_BYTES = Histogram(
    "taskpod_snapshot_bytes",
    "Size of each conversation snapshot written to a ConfigMap.",
    buckets=(512, 1024, 4096, 16384, 32768, 49152, 65536),
)
SNAPSHOT_SECONDS = Histogram(
    "taskpod_snapshot_duration_seconds",
    "Time to read the agent's conversation and write its snapshot.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SNAPSHOTS_SKIPPED = Counter(
    "taskpod_snapshots_skipped_total", "Snapshots not taken because the agent could not be read."
)
AGENTAPI_ERRORS = Counter(
    "taskpod_agentapi_errors_total",
    "Failed calls to an agent's AgentAPI, by call and kind (unavailable: no answer; error: a bad one).",
    ["call", "kind"],
)
PAUSE_SECONDS = Histogram(
    "taskpod_pause_duration_seconds",
    "From the operator seeing spec.paused become true to the task being Paused (snapshot included).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RESUME_SECONDS = Histogram(
    "taskpod_resume_duration_seconds",
    "From the operator seeing spec.paused become false to the task being Active again.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
AUTOMATIC_ACTIONS = Counter(
    "taskpod_automatic_actions_total",
    "Lifecycle automation's actions, by the Event's reason: AutoPaused (idlePause or pauseOnFinish), Woken "
    "(the wake annotation) and Deleting (deleteAfterFinish).",
    ["action"],
)
LEADER = Gauge("taskpod_leader", "1 while this process holds the leader Lease (or runs without election).")


class Health:
    """What /healthz and the tasks gauge ask: the leader's event loop, and the tasks by phase there,
    once Kopf runs (`attach`). Made in __main__ and handed to the HTTP server and to the handlers."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.phases: Callable[[], Tally[str]] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, phases: Callable[[], Tally[str]]) -> None:
        self.loop, self.phases = loop, phases

    def phase_counts(self) -> Tally[str]:
        return self.in_loop(self.phases) if self.phases is not None else Tally()

    def alive(self) -> bool:
        loop = self.loop
        if loop is None or loop.is_closed():
            return True  # standing by, or not started yet: the thread answering is the proof
        future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
        try:
            future.result(LOOP_TIMEOUT)
        except Exception:
            future.cancel()
            return False
        return True

    def in_loop(self, compute: Callable[[], Tally[str]]) -> Tally[str]:
        """Run `compute` on the event loop (where the watch data lives) and wait for its answer."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return Tally()

        async def run() -> Tally[str]:
            return compute()

        try:
            return asyncio.run_coroutine_threadsafe(run(), loop).result(LOOP_TIMEOUT)
        except Exception:
            return Tally()


class TasksByPhase(Collector):
    """taskpod_tasks{phase}: counted at scrape time from what the operator's watch holds."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("taskpod_tasks", "Tasks the operator watches, by phase.", labels=["phase"])
        counts = self.health.phase_counts()
        for phase in ("Pending", "Initializing", "Active", "Paused", "Error", "Unknown"):
            family.add_metric([phase], counts.get(phase, 0))
        yield family


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass each server makes
    tasks: CollectorRegistry  # this server's own: taskpod_tasks from its Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(REGISTRY) + generate_latest(self.tasks), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.health.alive()
            self._reply(200 if ok else 503, b"ok\n" if ok else b"event loop not answering\n")
        elif path == "/readyz":
            self._reply(200, b"ok\n")
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # probes every few seconds: not worth a log line
        pass


def serve(listen: str, health: Health) -> ThreadingHTTPServer:
    """Start serving /metrics, /healthz and /readyz on HOST:PORT in a daemon thread."""
    host, _sep, port = listen.rpartition(":")
    tasks = CollectorRegistry(auto_describe=True)  # not the process's REGISTRY: each server, its own
    tasks.register(TasksByPhase(health))
    handler = type("Handler", (_Handler,), {"health": health, "tasks": tasks})
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="taskpod-http", daemon=True).start()
    log.info("serving /metrics, /healthz and /readyz on %s", listen)
    return server
