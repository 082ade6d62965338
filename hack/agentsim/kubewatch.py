"""Follow pods with a list-then-watch loop on asyncio (aiohttp), the way a kubelet or an informer does.

Why not the kubernetes client's Watch in a thread: its blocking socket read cannot be interrupted, so a
simulator stopped by a test would leave threads behind until the watch times out, and it turns every pod
into model objects only to turn them back into dicts. Here a watch is one coroutine: cancelling it closes
its connection at once. The kubernetes client still reads the kubeconfig (certificates, tokens, exec
plugins), so any cluster kubectl can reach works.

Level-triggered: after each (re)list the full set of pods is handed over, so an event missed while the
connection was down (a pod deleted, say) is corrected; a watch that expired (410 Gone) relists.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import client, config

log = logging.getLogger("agentsim.kubewatch")
Pod = dict[str, Any]
WATCH_SECONDS = 290  # the API server ends a watch after this; we resume from the last resourceVersion


@dataclass(frozen=True)
class Cluster:
    """Where the API server is and how to talk to it, read from a kubeconfig."""

    server: str
    ssl: ssl.SSLContext | bool
    headers: dict[str, str]

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | Path | None = None) -> Cluster:
        """The kubeconfig's current context; None: $KUBECONFIG or ~/.kube/config, as kubectl."""
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg)
        headers = {"Accept": "application/json"}
        token = cfg.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        if not cfg.host.startswith("https"):
            return cls(cfg.host, False, headers)
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return cls(cfg.host.rstrip("/"), context, headers)

    def claim_path(self, namespace: str, name: str) -> str:
        return f"{self.server}/api/v1/namespaces/{quote(namespace)}/persistentvolumeclaims/{quote(name)}"

    def pods_path(self, namespace: str | None) -> str:
        base = "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{quote(namespace)}/pods"
        return self.server + base


class WatchExpired(Exception):
    """The resourceVersion we resume from is too old (410 Gone): list again."""


class PodWatch:
    """Pods matching a label selector in one namespace (or all), handed over as full lists and then events."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str | None,
        selector: str,
        on_list: Callable[[list[Pod]], Awaitable[None]],
        on_event: Callable[[str, Pod], Awaitable[None]],
    ) -> None:
        self.cluster, self.namespace, self.selector = cluster, namespace, selector
        self.on_list, self.on_event = on_list, on_event
        self.listed = asyncio.Event()  # set after the first complete list was handed over

    async def run(self, session: aiohttp.ClientSession) -> None:
        """List and watch until cancelled, retrying with back-off when the API server cannot be reached."""
        version: str | None = None
        pause = 0.5
        while True:
            try:
                if version is None:
                    version = await self._list(session)
                    self.listed.set()
                version = await self._watch(session, version)
                pause = 0.5
            except WatchExpired:
                version = None
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                log.warning(
                    "pod watch (%s): %s: %s; retrying in %.1fs", self._scope, type(exc).__name__, exc, pause
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    @property
    def _scope(self) -> str:
        return f"namespace {self.namespace}" if self.namespace else "all namespaces"

    async def _list(self, session: aiohttp.ClientSession) -> str:
        pods: list[Pod] = []
        params = {"labelSelector": self.selector, "limit": "500"}
        while True:
            async with session.get(self.cluster.pods_path(self.namespace), params=params) as response:
                response.raise_for_status()
                page = await response.json()
            pods.extend(page.get("items") or [])
            token = page["metadata"].get("continue")
            if not token:
                break
            params["continue"] = token
        await self.on_list(pods)
        return str(page["metadata"]["resourceVersion"])

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> str:
        params = {
            "watch": "1",
            "labelSelector": self.selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_SECONDS + 30)
        async with session.get(
            self.cluster.pods_path(self.namespace), params=params, timeout=timeout
        ) as response:
            if response.status == 410:
                raise WatchExpired
            response.raise_for_status()
            async for event in _lines(response):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired
                    raise ValueError(f"watch error: {obj.get('message')}")
                version = obj["metadata"].get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    await self.on_event(kind, obj)
        return version


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The watch's JSON lines, however long (a pod with big annotations exceeds aiohttp's line limit)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
