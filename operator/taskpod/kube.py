"""The Kubernetes API calls the operator makes, as async functions.

The `kubernetes` client blocks, so every call runs in a worker thread (Kopf's executor) and never
stalls the event loop that all tasks share.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import httpx
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from taskpod.api.models import GROUP, VERSION, storable
from taskpod.core.workspace import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

__all__ = [
    "ApiException",
    "adopt",
    "agent_port",
    "agent_transport",
    "api_client",
    "api_message",
    "apply",
    "create",
    "create_task",
    "delete_pod",
    "delete_task",
    "get_task",
    "list_objects",
    "namespace_terminating",
    "patch_task_spec",
    "patch_task_status",
    "read_configmap",
    "retire_statefulsets",
    "token_review",
    "use_kubeconfig",
]


_user: tuple[str, str | None] | None = None  # (kubeconfig, context) once use_kubeconfig() chose them
# Seconds to connect, then to wait for an answer. The client's default is to wait forever: a connection
# that died without a word would hold a reconcile (and its task) for good. A call that times out fails,
# and the reconcile is retried.
CALL_TIMEOUT = (10.0, 60.0)


class _BoundedClient(client.ApiClient):  # type: ignore[misc]
    """An ApiClient whose calls give up after CALL_TIMEOUT unless they ask for a timeout of their own."""

    def call_api(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().call_api(*args, _request_timeout=_request_timeout or CALL_TIMEOUT, **kwargs)


@cache
def api_client() -> client.ApiClient:
    """The operator's API client: the in-cluster service account, or KUBECONFIG outside a cluster;
    or a kubectl user's, after use_kubeconfig()."""
    cfg = client.Configuration()
    if _user is not None:
        config.load_kube_config(config_file=_user[0], context=_user[1], client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            # read KUBECONFIG now: the client library only looks at it when first imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    cfg.connection_pool_maxsize = 64  # one per worker thread, so calls never queue for a socket
    return _BoundedClient(cfg)


def use_kubeconfig(path: str | None = None, context: str | None = None) -> str:
    """Act as a kubectl user: credentials from `path` (else the first file in KUBECONFIG, else
    ~/.kube/config) and `context` (else the current one). Returns the namespace that context names,
    or "default"; raises config.ConfigException when there is no usable kubeconfig."""
    global _user
    path = path or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
    path = path or os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION)
    contexts, current = config.list_kube_config_contexts(config_file=path)
    chosen = current
    if context:
        chosen = next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            raise config.ConfigException(f"context {context!r} not found in {path}")
    _user = (path, context)
    api_client.cache_clear()
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


# The API server reads an apply body as YAML. YAML refuses JSON's surrogate-pair escapes (\ud83d\ude80 for
# one emoji), refuses DEL and the C1 controls raw, and folds its own line breaks (NEL, U+2028, U+2029)
# raw inside a string, eating the spaces around them. So a body is written with every character raw
# but those (and the byte-order mark and the two noncharacters), which get plain \u escapes.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def apply_body(obj: Any) -> bytes:
    """`obj` as a server-side apply body that the API server's YAML reader takes whatever its text."""
    text = storable(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


def api_message(exc: BaseException) -> str:
    """What went wrong, in one line: the API server's own sentence for a failed call (never its
    headers), else the exception's text, else its kind (a timeout has no text)."""
    if isinstance(exc, ApiException):
        try:
            return str(json.loads(exc.body or "{}").get("message") or exc.reason or exc.status)
        except (ValueError, AttributeError):
            return str(exc.body or exc.reason)
    return str(exc) or type(exc).__name__


def namespace_terminating(exc: BaseException) -> bool:
    """Whether a write failed because its namespace is being deleted (and its tasks with it)."""
    return isinstance(exc, ApiException) and exc.status == 403 and "NamespaceTerminating" in str(exc.body)


def _plain(obj: Any) -> dict[str, Any]:
    return dict(api_client().sanitize_for_serialization(obj))


# Where each kind we write lives (its collection, then the object); the client's typed methods take a
# dict body only, and an apply's body must be our own bytes (see apply_body).
_COLLECTIONS = {
    "Pod": "/api/v1/namespaces/{namespace}/pods",
    "PersistentVolumeClaim": "/api/v1/namespaces/{namespace}/persistentvolumeclaims",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Task": f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/tasks",
}
WRITES = ("POST", "PUT", "PATCH")


def _send(method: str, path: str, meta: Mapping[str, Any], body: Any, content_type: str, **query: Any) -> Any:
    """One call; `body` goes as it is (bytes), or as JSON (an object) for a JSON content type."""
    api = api_client()
    url_method, url, headers, _body, _post = api.param_serialize(
        method,
        path,
        path_params={"namespace": meta["namespace"], "name": meta.get("name", "")},
        query_params=[*([("fieldManager", FIELD_MANAGER)] if method in WRITES else []), *query.items()],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(url_method, url, header_params=headers, body=body)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(
            http_resp=response, body=response.data.decode(errors="replace"), data=None
        )
    # The answer as plain JSON: the client's models would cost 2-3 ms of CPU per object to build, then
    # as much to turn back into a dict.
    return dict(json.loads(response.data))


def _collection(kind: str) -> str:
    if kind not in _COLLECTIONS:
        raise ValueError(f"cannot write a {kind}")
    return _COLLECTIONS[kind]


def _apply_sync(obj: dict[str, Any]) -> dict[str, Any]:
    path = _collection(obj["kind"]) + "/{name}"
    return dict(_send("PATCH", path, obj["metadata"], apply_body(obj), APPLY, force=True))


async def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply: create or update to exactly `obj`, idempotently; returns the live object."""
    return await asyncio.to_thread(_apply_sync, obj)


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create `obj` (a 409 if one of its name exists); returns it as created."""
    path = _collection(obj["kind"])
    return dict(await asyncio.to_thread(_send, "POST", path, obj["metadata"], obj, "application/json"))


async def adopt(obj: Mapping[str, Any], owner: dict[str, Any], uid: str) -> dict[str, Any]:
    """Make `owner` the controller of the object that `obj` names and `uid` is (not a successor of the
    same name), which has no owner: one an upgrade from the StatefulSet left. Returns it."""
    patch = {"metadata": {"uid": uid, "ownerReferences": [owner]}}  # uid: a precondition
    path = _collection(obj["kind"]) + "/{name}"
    return dict(await asyncio.to_thread(_send, "PATCH", path, obj["metadata"], patch, MERGE))


async def _task(
    method: str, namespace: str, name: str, body: Any = None, subresource: str = ""
) -> dict[str, Any]:
    """One call on a Task, in a worker thread; a body is a merge patch. Not through CustomObjectsApi: its
    argument validation and body sanitising cost more CPU than the call (py-spy: a third of each status
    patch)."""
    path = _COLLECTIONS["Task"] + "/{name}" + subresource
    meta = {"namespace": namespace, "name": name}
    return dict(
        await asyncio.to_thread(_send, method, path, meta, body, MERGE if body else "application/json")
    )


async def delete_pod(namespace: str, name: str, uid: str) -> bool:
    """Delete this pod (its uid: not a successor of the same name). False when it is gone already (a
    404, or a 409: another pod has its name now), which the watch may not have said."""
    path = _collection("Pod") + "/{name}"
    body = {"preconditions": {"uid": uid}}
    try:
        await asyncio.to_thread(
            _send, "DELETE", path, {"namespace": namespace, "name": name}, body, "application/json"
        )
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise
        return False
    return True


async def patch_task_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """One merge patch of the Task's status subresource; keys set to None are removed."""
    return await _task("PATCH", namespace, name, {"status": status}, "/status")


def agent_transport(
    via_proxy: bool, timeout: float = 5.0
) -> tuple[Callable[[], httpx.AsyncClient], str | None]:
    """A maker of HTTP clients for reaching agents, and the API server URL when going through its pod
    proxy. Direct: plain HTTP to pod IPs (in-cluster). Proxy: HTTPS to the API server with the
    operator's own credentials, which needs RBAC on pods/proxy but works from anywhere kubectl does.

    One client per agent, not one for all: httpcore's pool scans its connections on every request, and
    with every follower holding an /events stream open, a shared pool made each call cost O(agents)
    (py-spy at 1,000 tasks: the operator spent its time in `_assign_requests_to_connections`).
    """
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=2, keepalive_expiry=30)
    if not via_proxy:
        # httpx builds a TLS context with the CA bundle for every client, even one that only speaks
        # plain HTTP: about 37 ms of CPU and 0.8 MiB each, so 5,000 agents would cost 4 GiB. One for all.
        plain = ssl.create_default_context()
        return (lambda: httpx.AsyncClient(verify=plain, timeout=timeout, limits=limits)), None
    cfg = api_client().configuration
    tls = (
        ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.ssl_ca_cert
        else ssl.create_default_context()
    )
    if cfg.cert_file and cfg.key_file:
        tls.load_cert_chain(cfg.cert_file, cfg.key_file)
    headers = {}
    if token := (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken"):
        headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"

    def make() -> httpx.AsyncClient:  # the TLS context is built once and shared
        return httpx.AsyncClient(verify=tls, headers=headers, timeout=timeout, limits=limits)

    return make, str(cfg.host)


async def get_task(namespace: str, name: str) -> dict[str, Any]:
    return await _task("GET", namespace, name)


async def patch_task_spec(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return await _task("PATCH", namespace, name, {"spec": spec})


async def create_task(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return await create({**body, "metadata": {**body.get("metadata", {}), "namespace": namespace}})


async def delete_task(namespace: str, name: str) -> None:
    """Delete in the foreground's stead: the workspace and snapshot go by garbage collection."""
    await _task("DELETE", namespace, name)


async def list_objects(
    plural: str, namespace: str | None, selector: str | None = None
) -> list[dict[str, Any]]:
    """Every Task or TaskTemplate (`plural`) in `namespace`, or in all namespaces when None."""
    api = client.CustomObjectsApi(api_client())
    kw = {"label_selector": selector} if selector else {}
    if namespace is None:
        found = await asyncio.to_thread(api.list_cluster_custom_object, GROUP, VERSION, plural, **kw)
    else:
        found = await asyncio.to_thread(
            api.list_namespaced_custom_object, GROUP, VERSION, namespace, plural, **kw
        )
    return list(found.get("items") or [])


def _read_configmap_sync(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _plain(client.CoreV1Api(api_client()).read_namespaced_config_map(name, namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def read_configmap(namespace: str, name: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(_read_configmap_sync, namespace, name)


def _agent_port_sync(namespace: str, pod: str, port_name: str) -> int | None:
    spec = client.CoreV1Api(api_client()).read_namespaced_pod(pod, namespace).spec
    for container in spec.containers:
        for port in container.ports or []:
            if port.name == port_name:
                return int(port.container_port)
    return None


async def agent_port(namespace: str, pod: str, port_name: str) -> int | None:
    """The pod's port of that name (the agent's, for taskpod workspaces)."""
    return await asyncio.to_thread(_agent_port_sync, namespace, pod, port_name)


def _token_review_sync(token: str, audience: str) -> dict[str, Any]:
    review = client.AuthenticationV1Api(api_client()).create_token_review(
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
    )
    return dict(_plain(review).get("status") or {})


async def token_review(token: str, audience: str = "taskpod") -> dict[str, Any]:
    """What the API server says of a token presented for `audience`: who, and whether it is valid."""
    return await asyncio.to_thread(_token_review_sync, token, audience)


def refused(exc: ApiException) -> bool:
    """Whether the API server refused what we asked for (it will again until the task or template
    changes), rather than failing to answer. A server-side apply whose values cannot be typed (a storage
    size `lots`) is refused with a 500 that says so."""
    if exc.status in (400, 403, 404, 422):
        return True
    return exc.status == 500 and "failed to create typed patch object" in api_message(exc)


def _retire_sync(namespace: str | None, selector: str) -> list[str]:
    apps, core = client.AppsV1Api(api_client()), client.CoreV1Api(api_client())
    if namespace is None:
        sets = apps.list_stateful_set_for_all_namespaces(label_selector=selector)
        services = core.list_service_for_all_namespaces(label_selector=selector)
    else:
        sets = apps.list_namespaced_stateful_set(namespace, label_selector=selector)
        services = core.list_namespaced_service(namespace, label_selector=selector)
    retired = []
    for sts in sets.items:
        meta = sts.metadata
        try:  # Orphan: garbage collection takes its ownership off the pod and the claim, deleting neither
            apps.delete_namespaced_stateful_set(
                meta.name,
                meta.namespace,
                body={"propagationPolicy": "Orphan", "preconditions": {"uid": meta.uid}},
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        retired.append(f"{meta.namespace}/{meta.name}")
    for svc in services.items:  # the StatefulSet's headless Service: nothing uses it any more
        try:
            core.delete_namespaced_service(svc.metadata.name, svc.metadata.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
    return retired


async def retire_statefulsets(namespaces: list[str] | None, selector: str) -> list[str]:
    """Delete the workspace StatefulSets (and Services) of earlier releases, leaving their pods and claims
    to the operator, which adopts them: the upgrade to the workspace as a Pod. Returns what it retired."""
    retired: list[str] = []
    for namespace in namespaces or [None]:  # type: ignore[list-item]
        retired += await asyncio.to_thread(_retire_sync, namespace, selector)
    return retired
