"""What the operator keeps of each Task in memory: with 5,000 tasks, every kilobyte is 5 MB."""

from __future__ import annotations

from taskpod.api.models import Task
from taskpod.controller import handlers


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
