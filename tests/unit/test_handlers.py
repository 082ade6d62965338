"""What the operator keeps of each Task in memory: with 5,000 tasks, every kilobyte is 5 MB."""

from __future__ import annotations

from taskpod import handlers


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
    kept = handlers.task_view(body)
    assert kept["metadata"]["annotations"] == {"team": "auth"}
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["resourceVersion"] == "7" and kept["metadata"]["uid"] == "u1"
    assert kept["spec"] == body["spec"] and kept["status"] == body["status"]
