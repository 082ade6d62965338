"""A small async client for the Kubernetes REST API, as a kubeconfig user: what the benchmark drives the
cluster with (creates, patches, deletes, lists and watches), so the driver itself never becomes the
bottleneck.

aiohttp, as the operator's own calls (taskpod/kube.py): the floors are a raw client doing the least the
cluster needs, and a client that spends more CPU per call than the operator does would flatter every
ratio. With httpx here, the pod floor's driver spent 18 CPU-s of the apply's 100 on 2,000 creates.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

MERGE = "application/merge-patch+json"
CALL = aiohttp.ClientTimeout(total=60)
STREAM = aiohttp.ClientTimeout(total=None, sock_connect=10)


def tls(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    """The server and the TLS (its CA, the user's certificate) of a local control plane's kubeconfig."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    context = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:  # ssl loads a key from files only
        cert, key = Path(folder) / "client.crt", Path(folder) / "client.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        context.load_cert_chain(str(cert), str(key))
    return str(cluster["server"]), context


class Rest:
    """Made in the event loop that uses it."""

    def __init__(self, kubeconfig: Path, connections: int = 64) -> None:
        self.server, context = tls(kubeconfig)
        connector = aiohttp.TCPConnector(ssl=context, limit=connections)
        self.http = aiohttp.ClientSession(connector=connector, timeout=CALL)

    async def close(self) -> None:
        await self.http.close()

    async def _send(self, method: str, path: str, ok: tuple[int, ...], **kwargs: Any) -> dict[str, Any]:
        async with self.http.request(method, self.server + path, **kwargs) as response:
            answer = await response.read()
            if response.status not in ok:
                raise RuntimeError(
                    f"{method} {path}: {response.status} {answer[:300].decode(errors='replace')}"
                )
        return dict(json.loads(answer))

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", path, (200, 201), json=body)

    async def merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(patch).encode()
        return await self._send("PATCH", path, (200,), data=data, headers={"Content-Type": MERGE})

    async def delete(self, path: str) -> dict[str, Any]:
        return await self._send("DELETE", path, (200, 202))

    async def list(self, path: str) -> dict[str, Any]:
        return await self._send("GET", path, (200,))

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events from `resource_version` on, until the server ends the stream."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "false"}
        async with self.http.get(self.server + path, params=params, timeout=STREAM) as response:
            if response.status != 200:
                raise RuntimeError(f"watch {path}: {response.status}")
            buffered = b""  # one JSON object per line, as long as the object
            async for chunk in response.content.iter_any():
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield dict(json.loads(line))

    async def follow(
        self,
        path: str,
        listed: Callable[[builtins.list[dict[str, Any]]], None],
        changed: Callable[[dict[str, Any]], None],
    ) -> None:
        """List, then watch from the list's version, for good, as an informer does: `listed` gets each
        listing's items, `changed` each watch event. A watch the API server cuts (it drops a watcher that
        falls behind), or that ends, goes on from the last version seen, without a list; a 410 or any other
        refusal lists afresh."""
        version: str | None = None
        while True:
            if version is None:
                try:
                    listing = await self.list(path)
                except Exception as exc:  # e.g. a CRD not served yet, or 429 while storage initialises
                    print(f"[bench] listing {path}: {exc!r}; again in 1s", file=sys.stderr, flush=True)
                    await asyncio.sleep(1)
                    continue
                listed(listing["items"])
                version = listing["metadata"]["resourceVersion"]
            try:
                async for event in self.watch(path, version):
                    if event.get("type") == "ERROR":  # 410: the version is too old
                        version = None
                        break
                    changed(event)
                    version = event["object"]["metadata"]["resourceVersion"]
            except (TimeoutError, aiohttp.ClientError) as exc:  # cut: on from the last version
                print(f"[bench] watch of {path} cut: {exc!r}; on from {version}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.1)
            except RuntimeError as exc:  # refused (a 410 at the start, a 429): list afresh
                print(f"[bench] watch of {path} refused: {exc}; listing again", file=sys.stderr, flush=True)
                version = None
                await asyncio.sleep(0.1)
