"""The Kubernetes API calls the operator makes, as async functions.

The `kubernetes` client blocks, so every call runs in a worker thread (Kopf's executor) and never
stalls the event loop that all tasks share.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from taskpod.models import GROUP, VERSION
from taskpod.workspace import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

__all__ = ["ApiException", "api_client", "apply", "patch_task_status"]


@cache
def api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, or from KUBECONFIG outside a cluster."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = 32  # one per worker thread, so calls never queue for a socket
    return client.ApiClient(cfg)


def _plain(obj: Any) -> dict[str, Any]:
    return dict(api_client().sanitize_for_serialization(obj))


def _apply_sync(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    kw = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
    kind = obj["kind"]
    if kind == "StatefulSet":
        result = client.AppsV1Api(api_client()).patch_namespaced_stateful_set(
            meta["name"], meta["namespace"], obj, **kw
        )
    elif kind == "Service":
        result = client.CoreV1Api(api_client()).patch_namespaced_service(
            meta["name"], meta["namespace"], obj, **kw
        )
    elif kind == "ConfigMap":
        result = client.CoreV1Api(api_client()).patch_namespaced_config_map(
            meta["name"], meta["namespace"], obj, **kw
        )
    else:
        raise ValueError(f"cannot apply a {kind}")
    return _plain(result)


async def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply: create or update to exactly `obj`, idempotently; returns the live object."""
    return await asyncio.to_thread(_apply_sync, obj)


def _patch_status_sync(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    result = client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "tasks", name, {"status": status}, _content_type=MERGE
    )
    return dict(result)


async def patch_task_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """One merge patch of the Task's status subresource; keys set to None are removed."""
    return await asyncio.to_thread(_patch_status_sync, namespace, name, status)
