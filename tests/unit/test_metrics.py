"""The HTTP endpoint of the operator's metrics: each server counts the tasks of its own Health, and a
second server in one process (a test's, an embedding's) does not collide with the first."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from functools import partial

import httpx
from prometheus_client.parser import text_string_to_metric_families

from taskpod.controller import metrics
from tests.support import free_port


def tasks_gauge(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "taskpod_reconcile_errors" in families  # the process's own metrics are there too
    return {s.labels["phase"]: s.value for s in families["taskpod_tasks"].samples}


def test_two_servers_each_tell_the_tasks_of_their_own_health() -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        servers = []
        for active in (2, 5):
            health = metrics.Health()
            health.attach(loop, partial(Counter, {"Active": active, "Paused": 1}))
            port = free_port()
            servers.append((metrics.serve(f"127.0.0.1:{port}", health), port, active))
        for server, port, active in servers:
            counts = tasks_gauge(port)
            assert (counts["Active"], counts["Paused"], counts["Error"]) == (active, 1, 0)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            server.shutdown()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
