"""What the operator keeps of each Task in memory: with 5,000 tasks, every kilobyte is 5 MB."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf

from taskpod.api.models import Task
from taskpod.controller import handlers
from taskpod.controller.settings import Settings


def test_the_tasks_index_keeps_what_a_reconcile_reads_and_drops_the_bulk() -> None:
    manifest = '{"apiVersion":"taskpod.dev/v1alpha1","kind":"Task","spec":{"prompt":"' + "x" * 5000 + '"}}'
    body = {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {
            "name": "fix-login",
            "namespace": "dev",
            "uid": "u1",
            "resourceVersion": "7",
            "annotations": {handlers.LAST_APPLIED: manifest, "team": "auth"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:prompt": {}}}}],
        },
        "spec": {"prompt": "x" * 5000},
        "status": {"phase": "Active"},
    }
    kept = handlers.task_entry(body)
    assert isinstance(kept, Task)
    assert kept.raw["metadata"]["annotations"] == {"team": "auth"}
    assert "managedFields" not in kept.raw["metadata"]
    assert kept.metadata.resource_version == "7" and kept.metadata.uid == "u1"
    assert kept.spec.prompt == "x" * 5000 and kept.stored_status == body["status"]


def test_as_many_api_calls_run_at_once_as_there_are_reconcile_workers() -> None:
    """The kubernetes client blocks, so each call takes a thread (asyncio.to_thread). Those came from
    asyncio's default pool, min(32, CPUs + 4): 6 threads on this 2-CPU machine, so 64 reconcile workers
    shared 6 API calls in flight, and a 1,000-task pause reacted at about 15 tasks a second."""

    async def scenario() -> None:
        configure: Any = handlers.configure  # a Kopf startup handler, called as Kopf would
        memo = handlers.memo_for(Settings())
        await configure(settings=kopf.OperatorSettings(), memo=memo)
        together = threading.Barrier(handlers.RECONCILE_WORKERS, timeout=5)  # all must be waiting at once
        await asyncio.gather(*(asyncio.to_thread(together.wait) for _ in range(handlers.RECONCILE_WORKERS)))
        await memo.reconciler.stop()

    asyncio.run(scenario())
