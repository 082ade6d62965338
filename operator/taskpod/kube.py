"""The Kubernetes API calls the operator makes, as async functions.

They go as plain REST over one aiohttp session per event loop. Where the API server is and how to be let
in (a `Connection`) comes from the pod's service account in a cluster, else from KUBECONFIG, read the way
Kopf reads it: in a cluster, and outside one with a certificate, a token or a password, the operator never
loads the `kubernetes` package (see taskpod/__main__.py). A kubeconfig user who logs in through a program
(exec) is read by the package, as a kubectl user's commands (`use_kubeconfig`) always are: it takes every
kubeconfig kubectl takes. `exec_in_pod`, theirs only, uses it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import ssl
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import aiohttp

from taskpod.agentapi import Transport
from taskpod.api.models import GROUP, VERSION, storable
from taskpod.core.workspace import FIELD_MANAGER

if TYPE_CHECKING:
    import kopf
    from kubernetes import client

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

__all__ = [
    "UNREACHABLE",
    "ApiException",
    "Connection",
    "Leases",
    "NoCredential",
    "adopt",
    "agent_port",
    "agent_transport",
    "annotate_task",
    "api_message",
    "apply",
    "connection",
    "create",
    "create_task",
    "delete_pod",
    "delete_task",
    "delete_task_once",
    "get_pod",
    "get_task",
    "list_objects",
    "list_page",
    "login",
    "namespace_terminating",
    "patch_task_spec",
    "patch_task_status",
    "read_configmap",
    "retire_statefulsets",
    "token_review",
    "use_kubeconfig",
    "watch",
]

log = logging.getLogger("taskpod")
T = TypeVar("T")
NO_CREDENTIAL = (
    "the kubeconfig's user logs in through a program or a token file, which gave no credential (the "
    "kubernetes package logged why); not going on as system:anonymous"
)
_user: tuple[str, str | None] | None = None  # (kubeconfig, context) once use_kubeconfig() chose them
# Seconds to connect, then to wait for an answer. The client's default is to wait forever: a connection
# that died without a word would hold a reconcile (and its task) for good. A call that times out fails,
# and the reconcile is retried.
CALL_TIMEOUT = (10.0, 60.0)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Seconds between reads of the service account's token: the kubelet rotates it long before it expires,
# and client-go reads it again as often.
TOKEN_REREAD = 60.0


class NoCredential(RuntimeError):
    """The kubeconfig's user logs in through a program or a token file, which gave no credential."""

    def __init__(self) -> None:
        super().__init__(NO_CREDENTIAL)


class ApiException(Exception):
    """A call the API server answered outside 2xx: its status, reason, and body (its Status object, as
    JSON text). Named and shaped as the `kubernetes` client's exception, whose fields callers read."""

    def __init__(
        self,
        status: int | None = None,
        reason: str | None = None,
        body: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, reason)
        self.status, self.reason, self.body, self.headers = status, reason, body, headers

    def __str__(self) -> str:
        told = f"({self.status})\nReason: {self.reason}\n"
        return told + (f"HTTP response body: {self.body}\n" if self.body else "")


# What a call raises when the API server cannot be reached or refuses it (down, restarting, not yet
# serving, or no credential to give it): reported in a line and tried again, never a traceback.
UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError, ApiException, NoCredential)


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to be let in: what every call and watch carries."""

    server: str
    tls: ssl.SSLContext
    headers: Callable[[], dict[str, str]]  # asked per request: a token that rotates is read anew
    proxy: str | None = None
    tls_server_name: str | None = None

    def reach(self) -> dict[str, Any]:
        """A request's credentials, HTTP proxy and TLS server name, as aiohttp takes them."""
        return {"headers": self.headers(), "proxy": self.proxy, "server_hostname": self.tls_server_name}


@dataclass
class _TokenFile:
    """The service account's token, read again every TOKEN_REREAD seconds: the kubelet rotates it."""

    path: Path
    token: str = ""
    read_at: float = field(default=-TOKEN_REREAD)

    def __call__(self) -> dict[str, str]:
        if time.monotonic() - self.read_at >= TOKEN_REREAD:
            self.token, self.read_at = self.path.read_text().strip(), time.monotonic()
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _in_cluster() -> kopf.ConnectionInfo | None:
    """The pod's service account, as client-go's in-cluster configuration finds it; None elsewhere."""
    import kopf  # the operator's, loaded already; not worth its import for a kubectl-task command

    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not host or not port or not token.exists():
        return None
    ca = SERVICE_ACCOUNT / "ca.crt"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        token=token.read_text().strip() or None,
    )


def login() -> kopf.ConnectionInfo:
    """The operator's credentials, for Kopf and for our calls alike: the pod's service account in a
    cluster, else KUBECONFIG's (else ~/.kube/config's) current context. A client certificate, a token or
    a password there is read as it stands; a user who logs in through a program (exec, as cloud logins
    do) or a token file is logged in by the `kubernetes` package. Kopf logs in again
    when the API server refuses a token that expired. Raises when there is no kubeconfig either."""
    import kopf

    if (found := _as_read()) is not None:
        return found
    through = kopf.login_via_client(logger=log, settings=kopf.OperatorSettings())
    if through is None or not _credentialed(through):
        raise NoCredential()  # Kopf tries its login handler again, after a while
    # A tokenFile's newline, which client-go trims too, would make Kopf's every header invalid.
    return dataclasses.replace(through, token=through.token.strip() if through.token else None)


def _as_read() -> kopf.ConnectionInfo | None:
    """The operator's credentials as read without the `kubernetes` package: the service account's, else
    KUBECONFIG's (else ~/.kube/config's) current context as Kopf reads it. None when that context's user
    has no credential there (a program or a token file gives it): the package is let in to read it."""
    import kopf

    found = _in_cluster() or kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if found is None:
        raise RuntimeError("no credentials: not in a cluster, and no KUBECONFIG or ~/.kube/config")
    if _credentialed(found):
        return found
    _allow_the_kubernetes_package()
    return None


def _credentialed(info: kopf.ConnectionInfo) -> bool:
    """Whether the credential is in the connection as read: a service account's token, or a kubeconfig
    user's token, password or client certificate. Kopf's own reading runs no exec plugin and reads no
    token file; without one of these, the API server would take the operator for system:anonymous."""
    return bool(info.token or info.password or info.certificate_path or info.certificate_data)


def _allow_the_kubernetes_package() -> None:
    """Undo taskpod.__main__'s without_the_kubernetes_package(): this kubeconfig needs the package's
    reading (its memory is the price, outside a cluster only)."""
    if "kubernetes" in sys.modules and sys.modules["kubernetes"] is None:
        del sys.modules["kubernetes"]
        log.info("the kubeconfig's user logs in through a program or a token file: kubernetes reads it")


def _client_configuration() -> client.Configuration:
    """A configuration read by the `kubernetes` package: the context use_kubeconfig() chose, else
    KUBECONFIG's current one, else the service account's. A kubectl user's, or an operator's whose
    kubeconfig user logs in through a program."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if _user is not None:
        config.load_kube_config(config_file=_user[0], context=_user[1], client_configuration=cfg)
        return cfg
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    return cfg


def _bearer(cfg: client.Configuration) -> dict[str, str]:
    """The Authorization header that the `kubernetes` configuration gives, asked for per call: an exec
    plugin's token is renewed as it expires (the configuration's refresh hook)."""
    token = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
    token = (token or "").strip()  # a tokenFile's newline, which client-go trims too, is no header
    if not token:
        return {}
    return {"Authorization": token if token.lower().startswith("bearer ") else f"Bearer {token}"}


@cache
def connection() -> Connection:
    """How this process reaches the API server: a kubectl user's kubeconfig after use_kubeconfig(), else
    the operator's, found as login() finds it."""
    if _user is None:
        if (info := _in_cluster()) is not None:  # the token as the kubelet last rotated it, per request
            return Connection(info.server, info.as_ssl_context(), _TokenFile(SERVICE_ACCOUNT / "token"))
        if (info := _as_read()) is not None:
            return Connection(info.server, info.as_ssl_context(), info.as_http_headers, info.proxy_url)
    # The package's reading: asked per request, an exec plugin's token is renewed as it expires.
    cfg = _client_configuration()
    if _user is None and not (_bearer(cfg) or cfg.cert_file):
        raise NoCredential()  # not cached: the next call runs the program again
    tls = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if not cfg.verify_ssl:
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        tls.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Connection(str(cfg.host), tls, lambda: _bearer(cfg), cfg.proxy, cfg.tls_server_name)


def use_kubeconfig(path: str | None = None, context: str | None = None) -> str:
    """Act as a kubectl user: credentials from `path` (else the first file in KUBECONFIG, else
    ~/.kube/config) and `context` (else the current one). Returns the namespace that context names,
    or "default"; raises kubernetes.config.ConfigException when there is no usable kubeconfig."""
    from kubernetes import config

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
    connection.cache_clear()
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


# Every call goes as plain REST, not through the `kubernetes` package's typed APIs: its models cost 19 MiB
# of memory and 1.2 s of CPU to import, its argument validation and body sanitising more CPU than a status
# patch itself, and each object 2-3 ms to build, then as much to turn back into a dict. Answers come back
# as plain JSON.
RESOURCES = {  # kind: (group/version, plural)
    "Pod": ("v1", "pods"),
    "Node": ("v1", "nodes"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "TokenReview": ("authentication.k8s.io/v1", "tokenreviews"),
    "Task": (f"{GROUP}/{VERSION}", "tasks"),
    "TaskTemplate": (f"{GROUP}/{VERSION}", "tasktemplates"),
}
WRITES = ("POST", "PUT", "PATCH")
JSON = "application/json"


def path(kind: str, namespace: str | None = None, name: str = "", subresource: str = "") -> str:
    """The URL path of a kind's collection (all namespaces when `namespace` is None), or of one object."""
    if kind not in RESOURCES:
        raise ValueError(f"no calls on a {kind}")
    group_version, plural = RESOURCES[kind]
    url = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    if namespace is not None:
        url += f"/namespaces/{quote(namespace, safe='')}"
    url += f"/{plural}"
    return url + (f"/{quote(name, safe='')}{subresource}" if name else "")


# Connections to the API server, per event loop. Each holds TLS state and buffers, and the calls in
# flight are at most the reconciles running (RECONCILE_WORKERS) plus the odd template status or event:
# past this many, a call waits for a free connection rather than opening one more.
#
# aiohttp, not httpx, on this path: measured here (a TLS server on loopback, 3,000 merge patches, 32 in
# flight), httpx took 2.4 ms of the client's CPU per call, urllib3 in threads 0.84 ms, aiohttp 0.23 ms.
# A reconcile makes several calls per task and phase, and on two cores every CPU-second counts twice.
API_CONNECTIONS = 32
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Connection, aiohttp.ClientSession]]
_sessions = weakref.WeakKeyDictionary()
_watch_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[Connection, aiohttp.ClientSession]
]
_watch_sessions = weakref.WeakKeyDictionary()


def _session(*, watching: bool = False) -> tuple[Connection, aiohttp.ClientSession]:
    """This event loop's session with the API server (a kubectl-task command runs its own loop), made
    anew when the configuration changed (use_kubeconfig). `watching`: the watches' own session, whose
    connections are held by a stream each, and whose reads may be silent for minutes."""
    loop = asyncio.get_running_loop()
    cfg = connection()
    sessions = _watch_sessions if watching else _sessions
    known = sessions.get(loop)
    if known is None or known[0] is not cfg or known[1].closed:
        connector = aiohttp.TCPConnector(ssl=cfg.tls, limit=0 if watching else API_CONNECTIONS)
        # No bound on the whole call or on the wait for a free connection: connecting, and each read, are.
        read = WATCH_SILENCE if watching else CALL_TIMEOUT[1]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CALL_TIMEOUT[0], sock_read=read)
        known = sessions[loop] = (cfg, aiohttp.ClientSession(connector=connector, timeout=timeout))
    return known


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coro), and this event loop's sessions with the API server closed at its end: for a
    command, or a test, that makes its calls on a loop of its own."""

    async def closing() -> T:
        try:
            return await coro
        finally:
            await close()

    return asyncio.run(closing())


async def close() -> None:
    """Close this event loop's sessions with the API server, if it has them (at the loop's end)."""
    for sessions in (_sessions, _watch_sessions):
        known = sessions.pop(asyncio.get_running_loop(), None)
        if known is not None:
            await known[1].close()


async def _call(
    method: str, url: str, body: Any = None, content_type: str = JSON, **query: Any
) -> dict[str, Any]:
    """One call; `body` goes as it is (bytes), or as JSON (an object). Answers come back as plain JSON;
    a status outside 2xx raises ApiException, as the `kubernetes` client would."""
    cfg, session = _session()
    params = [("fieldManager", FIELD_MANAGER)] if method in WRITES else []
    params += [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in query.items()]
    reach = cfg.reach()
    headers = {"Accept": JSON, **reach.pop("headers")}
    content = None
    if body is not None:
        headers["Content-Type"] = content_type
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.request(
        method,
        cfg.server.rstrip("/") + url,
        params=params,
        headers=headers,
        data=content,
        **reach,
    ) as response:
        answer = await response.read()
        _raise_for(response, answer)
    return dict(json.loads(answer))


def _raise_for(response: aiohttp.ClientResponse, answer: bytes) -> None:
    """A status outside 2xx as an ApiException, with the API server's words."""
    if not 200 <= response.status <= 299:
        raise ApiException(
            response.status, response.reason, answer.decode(errors="replace"), response.headers
        )


def _object(obj: Mapping[str, Any]) -> str:
    return path(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])


async def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply: create or update to exactly `obj`, idempotently; returns the live object."""
    return await _call("PATCH", _object(obj), apply_body(obj), APPLY, force=True)


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create `obj` (a 409 if one of its name exists); returns it as created."""
    return await _call("POST", path(obj["kind"], obj["metadata"]["namespace"]), obj)


async def adopt(obj: Mapping[str, Any], owner: dict[str, Any], uid: str) -> dict[str, Any]:
    """Make `owner` the controller of the object that `obj` names and `uid` is (not a successor of the
    same name), which has no owner: one an upgrade from the StatefulSet left. Returns it."""
    patch = {"metadata": {"uid": uid, "ownerReferences": [owner]}}  # uid: a precondition
    return await _call("PATCH", _object(obj), patch, MERGE)


async def _delete(url: str, body: dict[str, Any] | None = None, *, gone: tuple[int, ...] = (404,)) -> bool:
    """Delete; False when the API server answers one of the `gone` statuses (it is gone already)."""
    try:
        await _call("DELETE", url, body)
    except ApiException as exc:
        if exc.status not in gone:
            raise
        return False
    return True


async def delete_pod(namespace: str, name: str, uid: str) -> bool:
    """Delete this pod (its uid: not a successor of the same name). False when it is gone already (a
    404, or a 409: another pod has its name now), which the watch may not have said."""
    body = {"preconditions": {"uid": uid}}
    return await _delete(path("Pod", namespace, name), body, gone=(404, 409))


async def patch_task_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """One merge patch of the Task's status subresource; keys set to None are removed."""
    return await _call("PATCH", path("Task", namespace, name, "/status"), {"status": status}, MERGE)


async def patch_template_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of the TaskTemplate's status subresource (its Ready condition)."""
    return await _call("PATCH", path("TaskTemplate", namespace, name, "/status"), {"status": status}, MERGE)


def agent_transport(via_proxy: bool, timeout: float = 5.0) -> Transport:
    """How to reach agents, on one aiohttp session made in the running loop; the caller closes it.
    Direct: plain HTTP to pod IPs (in-cluster, or a local control plane). Proxy: HTTPS to the API server
    with the operator's own credentials, which needs RBAC on pods/proxy but works from anywhere kubectl
    does.

    No bound on connections: each followed agent holds one for its /events stream for good, and a
    bound would make the one-off calls (a prompt, a snapshot, a probe) wait behind the streams. aiohttp's
    pool finds an idle connection by its host without looking at those in use; httpx's scanned them all
    per request, which had made each call cost O(agents) on a shared client.
    """
    if not via_proxy:
        # Each agent's /events stream holds a connection for good; a one-off call opens its own plain
        # one and closes it after, rather than keep a second per agent idle.
        direct = aiohttp.TCPConnector(limit=0, force_close=True)
        return Transport(aiohttp.ClientSession(connector=direct), None, timeout=timeout)
    cfg = connection()
    # Through the proxy a new connection costs a TLS handshake, so the one-off calls keep theirs a while.
    proxy = aiohttp.TCPConnector(ssl=cfg.tls, limit=0, keepalive_timeout=30)
    # Per request: a follower lives as long as its pod, longer than an in-cluster token.
    return Transport(aiohttp.ClientSession(connector=proxy), cfg.server, cfg.reach, timeout)


async def get_task(namespace: str, name: str) -> dict[str, Any]:
    return await _call("GET", path("Task", namespace, name))


async def patch_task_spec(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return await _call("PATCH", path("Task", namespace, name), {"spec": spec}, MERGE)


class Leases:
    """The leader election's Lease calls, blocking: its thread renews whatever the operator's own event
    loop is doing. They run on an event loop of this object's (with a session of its own), one call at a
    time (the election serialises them); `timeout` bounds each. close() when done."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()

    def _run(self, call: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        return self._loop.run_until_complete(asyncio.wait_for(call, self.timeout))

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        return self._run(_call("GET", path("Lease", namespace, name)))

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self._run(_call("POST", path("Lease", namespace), body))

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A compare-and-swap: the body's resourceVersion must still be the Lease's (else a 409)."""
        self._run(_call("PUT", path("Lease", namespace, name), body))

    def close(self) -> None:
        self._loop.run_until_complete(close())
        self._loop.close()


async def _get_or_none(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when there is none of that name."""
    try:
        return await _call("GET", path(kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def get_pod(namespace: str, name: str) -> dict[str, Any] | None:
    return await _get_or_none("Pod", namespace, name)


async def annotate_task(namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return await _call(
        "PATCH", path("Task", namespace, name), {"metadata": {"annotations": annotations}}, MERGE
    )


async def create_task(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return await create({**body, "metadata": {**body.get("metadata", {}), "namespace": namespace}})


async def delete_task(namespace: str, name: str) -> None:
    """Delete in the foreground's stead: the workspace and snapshot go by garbage collection."""
    await _call("DELETE", path("Task", namespace, name))


async def delete_task_once(namespace: str, name: str, uid: str) -> bool:
    """Delete this Task (its uid: not a successor of the same name); False when it is gone already."""
    body = {"preconditions": {"uid": uid}}
    return await _delete(path("Task", namespace, name), body, gone=(404, 409))


async def list_objects(kind: str, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
    """Every object of `kind` in `namespace`, or in all namespaces when None."""
    query = {"labelSelector": selector} if selector else {}
    return list((await _call("GET", path(kind, namespace), **query)).get("items") or [])


async def list_page(
    kind: str, namespace: str | None, selector: str | None, limit: int, token: str | None = None
) -> dict[str, Any]:
    """One page of a list, as the API server answers it: `items`, and `metadata` with `resourceVersion`
    and, when more follow, `continue` (pass it as `token`)."""
    query: dict[str, Any] = {"limit": limit}
    if selector:
        query["labelSelector"] = selector
    if token:
        query["continue"] = token
    return await _call("GET", path(kind, namespace), **query)


# A watch ends after this long at the API server's side, then is started again from where it was; the
# client gives up on a stream silent for longer (the server's bookmarks come about once a minute).
WATCH_SECONDS = 300
WATCH_SILENCE = 360.0


async def watch(
    kind: str, namespace: str | None, selector: str | None, resource_version: str
) -> AsyncIterator[dict[str, Any]]:
    """The watch events of `kind` after `resource_version` (with bookmarks), until the API server ends
    the stream. A watch holds its connection for minutes, so watches have a session of their own and
    take none of the calls' connections. A status outside 2xx (410: the version is too old) raises
    ApiException."""
    cfg, session = _session(watching=True)
    query = [
        ("watch", "true"),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(WATCH_SECONDS)),
        ("resourceVersion", resource_version),
    ]
    if selector:
        query.append(("labelSelector", selector))
    reach = cfg.reach()
    headers = {"Accept": JSON, **reach.pop("headers")}
    url = cfg.server.rstrip("/") + path(kind, namespace)
    async with session.get(url, params=query, headers=headers, **reach) as response:
        if not 200 <= response.status <= 299:
            _raise_for(response, await response.read())
        # One JSON object per line; a line as long as an object (a pod's can pass 64 KiB).
        buffered = b""
        async for chunk in response.content.iter_any():
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)


async def read_configmap(namespace: str, name: str) -> dict[str, Any] | None:
    return await _get_or_none("ConfigMap", namespace, name)


async def agent_port(namespace: str, pod: str, port_name: str) -> int | None:
    """The pod's port of that name (the agent's, for taskpod workspaces)."""
    spec = (await _call("GET", path("Pod", namespace, pod))).get("spec") or {}
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return int(port["containerPort"])
    return None


@dataclass(frozen=True)
class Ran:
    """What a command run in a container said, as `kubectl exec` shows it."""

    code: int
    out: str
    err: str


def _exec(namespace: str, pod: str, container: str, command: list[str], timeout: float) -> Ran:
    from kubernetes import client  # a kubectl user's call: never the operator's (see the module's text)
    from kubernetes.stream import stream

    # A client of its own: stream() swaps the request method of the client it is given while it runs.
    api = client.CoreV1Api(client.ApiClient(_client_configuration()))
    try:
        conn = stream(
            api.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=command,
            stdin=False,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
        )
    except client.ApiException as exc:  # as every other call raises it
        raise ApiException(exc.status, exc.reason, exc.body, exc.headers) from exc
    out: list[str] = []
    err: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while conn.is_open() and time.monotonic() < deadline:
            conn.update(timeout=1)
            out.append(conn.read_stdout())
            err.append(conn.read_stderr())
        if conn.is_open():
            raise TimeoutError(f"{' '.join(command)} in pod {pod} did not end within {timeout:.0f}s")
        code = conn.returncode
    finally:
        conn.close()
    return Ran(code if code is not None else -1, "".join(out), "".join(err))


async def exec_in_pod(
    namespace: str, pod: str, container: str, command: list[str], timeout: float = 180
) -> Ran:
    """Run `command` in a container of a pod through the API server (pods/exec), as `kubectl exec` does."""
    return await asyncio.to_thread(_exec, namespace, pod, container, command, timeout)


async def token_review(token: str, audience: str = "taskpod") -> dict[str, Any]:
    """What the API server says of a token presented for `audience`: who, and whether it is valid."""
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }
    return dict((await _call("POST", path("TokenReview"), review)).get("status") or {})


def refused(exc: ApiException) -> bool:
    """Whether the API server refused what we asked for (it will again until the task or template
    changes), rather than failing to answer. A server-side apply whose values cannot be typed (a storage
    size `lots`) is refused with a 500 that says so."""
    if exc.status in (400, 403, 404, 422):
        return True
    return exc.status == 500 and "failed to create typed patch object" in api_message(exc)


async def retire_statefulsets(namespaces: list[str] | None, selector: str) -> list[str]:
    """Delete the workspace StatefulSets (and Services) of earlier releases, leaving their pods and claims
    to the operator, which adopts them: the upgrade to the workspace as a Pod. Returns what it retired."""
    retired: list[str] = []
    for namespace in namespaces or [None]:  # type: ignore[list-item]
        for sts in await list_objects("StatefulSet", namespace, selector):
            meta = sts["metadata"]
            # Orphan: garbage collection takes its ownership off the pod and the claim, deleting neither.
            orphan = {"propagationPolicy": "Orphan", "preconditions": {"uid": meta["uid"]}}
            await _delete(path("StatefulSet", meta["namespace"], meta["name"]), orphan, gone=(404, 409))
            retired.append(f"{meta['namespace']}/{meta['name']}")
        for svc in await list_objects("Service", namespace, selector):  # the StatefulSet's headless one
            await _delete(path("Service", svc["metadata"]["namespace"], svc["metadata"]["name"]))
    return retired
