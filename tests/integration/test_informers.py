"""The informers against the real API server: the label selector is the server's, a list then a watch
keeps the cache, and a deletion is told with the uid that went. A watch's 410 is tested in
tests/unit/test_informers.py only: a fresh API server serves every version until its first etcd
compaction, five minutes in. test_faults.py kills the API server under a running operator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping
from typing import Any

import pytest

from taskpod import kube as taskkube
from taskpod.controller import informers
from taskpod.core.lifecycle import PodView
from taskpod.core.workspace import MANAGED_BY, TASK_LABEL
from tests.support import Kube

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("user_credentials")]
SELECTOR = f"{MANAGED_BY}=taskpod,{TASK_LABEL}"


def pod(namespace: str, name: str, task: str | None) -> dict[str, Any]:
    labels = {MANAGED_BY: "taskpod", TASK_LABEL: task} if task else {"app": "not-ours"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]},
    }


def task_key(body: Mapping[str, Any]) -> Hashable | None:
    meta = body["metadata"]
    return (meta["namespace"], meta["labels"][TASK_LABEL]) if TASK_LABEL in meta.get("labels", {}) else None


async def until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def test_a_cache_follows_the_selected_pods_and_tells_each_change(kube: Kube, namespace: str) -> None:
    async def scenario() -> None:
        first = await taskkube.create(pod(namespace, "first-0", "first"))
        await taskkube.create(pod(namespace, "stranger", None))
        told: list[tuple[Hashable, str, bool]] = []
        cache: informers.Cache[PodView] = informers.Cache()
        informer = informers.Informer(
            taskkube,
            informers.Source("Pod", namespace, SELECTOR),
            task_key,
            PodView.parse,
            cache,
            lambda key, uid, gone: told.append((key, uid, gone)),
        )
        job = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 30)
            assert list(cache) == [(namespace, "first")]  # the stranger never reaches the operator
            assert told == [((namespace, "first"), first["metadata"]["uid"], False)]

            second = await taskkube.create(pod(namespace, "second-0", "second"))
            await until(lambda: cache.get((namespace, "second")), "the second pod in the cache")
            assert told[-1] == ((namespace, "second"), second["metadata"]["uid"], False)

            await taskkube.delete_pod(namespace, "first-0", first["metadata"]["uid"])
            # A pod with no node and no kubelet goes at once; one on a (kwok) node, once it is told.
            await until(lambda: not cache.get((namespace, "first")), "the first pod gone from the cache", 60)
            assert ((namespace, "first"), first["metadata"]["uid"], True) in told
            assert list(cache) == [(namespace, "second")]
        finally:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
            await taskkube.close()

    asyncio.run(scenario())
