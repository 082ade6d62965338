"""A small async client for the Kubernetes REST API, as a kubeconfig user: what the benchmark drives the
cluster with (creates, patches, lists and watches), so the driver itself never becomes the bottleneck."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

MERGE = "application/merge-patch+json"


def _tls(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    folder = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    ca = folder / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    cert, key = folder / "client.crt", folder / "client.key"
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return str(cluster["server"]), context


class Rest:
    def __init__(self, kubeconfig: Path, connections: int = 64) -> None:
        server, context = _tls(kubeconfig)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(base_url=server, verify=context, limits=limits, timeout=60)

    async def close(self) -> None:
        await self.http.aclose()

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(path, json=body)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        return dict(response.json())

    async def merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.patch(path, content=json.dumps(patch), headers={"Content-Type": MERGE})
        if response.status_code != 200:
            raise RuntimeError(f"PATCH {path}: {response.status_code} {response.text[:300]}")
        return dict(response.json())

    async def list(self, path: str) -> dict[str, Any]:
        response = await self.http.get(path)
        response.raise_for_status()
        return dict(response.json())

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events from `resource_version` on, until the server ends the stream."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "false"}
        async with self.http.stream("GET", path, params=params, timeout=None) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line:
                    yield dict(json.loads(line))
