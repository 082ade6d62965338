"""The workspaces' pods and claims, and the nodes, as the watches last saw them: caches kept by list
and watch, as client-go's informers keep theirs.

Kopf watches the Tasks and TaskTemplates, whose events its handlers are for. These kinds need no
handlers, only a view to read and a key to reconcile: through Kopf, each of their events had cost a
per-object worker, a handler state and two handler runs, 39% of the operator's CPU by py-spy at
N = 1,000 for five kinds. Here an event costs a JSON line, a parse into its view and a comparison,
and only a changed view reconciles its task. The label selector is the API server's, so no other
workload's pods reach the operator at all.

Each informer lists (in pages), says it is synced, then watches from the list's version, again and
again; a version too old (410) lists afresh, and what the new list lacks was deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from taskpod import kube

log = logging.getLogger("taskpod")
V = TypeVar("V")
ObjectId = tuple[str, str]  # namespace ("" for a node) and name
PAGE = 500  # objects per list page
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before listing again after a failure


class Expired(Exception):
    """The watch's version is too old (410 Gone): list afresh."""


class Lister(Protocol):
    """The two calls an informer makes: taskpod.kube's, or a test's."""

    def list_page(
        self, kind: str, namespace: str | None, selector: str | None, limit: int, token: str | None = None
    ) -> Awaitable[dict[str, Any]]: ...

    def watch(
        self, kind: str, namespace: str | None, selector: str | None, resource_version: str
    ) -> Any: ...  # an async iterator of watch events


@dataclass
class Cache(Generic[V]):
    """The views of one kind by the key of what they belong to (a task's, or a node's name), the read
    side a reconcile has: `get(key)` gives every view stored for the key, as a Kopf index would."""

    _objects: dict[ObjectId, tuple[Hashable, V]] = field(default_factory=dict)
    _by_key: dict[Hashable, dict[ObjectId, V]] = field(default_factory=dict)

    def get(self, key: Hashable, default: Any = None) -> Collection[V] | Any:
        views = self._by_key.get(key)
        return tuple(views.values()) if views else default  # a copy: a reconcile awaits while it holds it

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._by_key))

    def put(self, oid: ObjectId, key: Hashable, view: V) -> bool:
        """Store the view of an object; whether it differs from what was stored (a new key is a change)."""
        old = self._objects.get(oid)
        if old is not None and old == (key, view):
            return False
        if old is not None and old[0] != key:
            self.remove(oid)
        self._objects[oid] = (key, view)
        self._by_key.setdefault(key, {})[oid] = view
        return True

    def key_of(self, oid: ObjectId) -> Hashable | None:
        old = self._objects.get(oid)
        return old[0] if old is not None else None

    def remove(self, oid: ObjectId) -> tuple[Hashable, V] | None:
        """Forget an object; its key and last view, if it was stored."""
        old = self._objects.pop(oid, None)
        if old is not None:
            views = self._by_key[old[0]]
            del views[oid]
            if not views:
                del self._by_key[old[0]]
        return old


Changed = Callable[[Hashable, str, bool], None]  # the key, the object's uid, and whether it is gone


@dataclass(frozen=True)
class Source:
    """What an informer lists and watches: the objects of `kind` in `namespace` (None: every namespace)
    that `selector` picks (None: all)."""

    kind: str
    namespace: str | None = None
    selector: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}s" + (f" in {self.namespace}" if self.namespace else "")


@dataclass
class Informer(Generic[V]):
    """Keeps `cache` up to date with the objects `source` names, and calls `changed` for each stored view
    that changed. `key` says which key an object is stored under (None: not stored), `parse` what of it
    is kept."""

    api: Lister
    source: Source
    key: Callable[[Mapping[str, Any]], Hashable | None]
    parse: Callable[[Mapping[str, Any]], V]
    cache: Cache[V]
    changed: Changed
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    # What this informer stored (a cache may be shared), with each object's uid.
    _uids: dict[ObjectId, str] = field(default_factory=dict)
    _version: str | None = None  # the version the next watch starts from; None: list first

    async def run(self) -> None:
        """List, then watch, until cancelled. A watch that fails goes on from the last version it saw,
        after a back-off; one whose version is too old, or a list that fails, lists again. The cache
        keeps what it had meanwhile."""
        failures = 0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                    self.synced.set()
                self._version = version
                await self._watch(version)
                failures = 0
            except Expired:
                log.debug("watch of %s expired; listing again", self.source)
                self._version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
                failures += 1
                log.warning(
                    "watch of %s failed, again in %.0fs: %s", self.source, delay, kube.api_message(exc)
                )
                await asyncio.sleep(delay)
            version = self._version

    async def _list(self) -> str:
        """Store what a complete list holds and forget what it lacks; the list's version."""
        token: str | None = None
        listed: dict[ObjectId, Mapping[str, Any]] = {}
        while True:
            try:
                page = await self.api.list_page(*self._query(), PAGE, token)
            except kube.ApiException as exc:
                if exc.status == 410 and token:  # the continue token expired: start the list again
                    token, listed = None, {}
                    continue
                raise
            for obj in page.get("items") or []:
                listed[_oid(obj)] = obj
            meta = page.get("metadata") or {}
            if not (token := meta.get("continue")):
                version = str(meta.get("resourceVersion") or "")
                break
        for oid in self._uids.keys() - listed.keys():
            self._forget(oid)
        for obj in listed.values():
            self._store(obj)
        return version

    async def _watch(self, version: str) -> None:
        """Apply the watch's events from `version` until the API server ends the stream, keeping the
        version reached for the next watch to start from."""
        try:
            async for event in self.api.watch(*self._query(), version):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired
                    raise kube.ApiException(status=obj.get("code"), reason=obj.get("message"))
                if kind == "DELETED":
                    self._forget(_oid(obj))
                elif kind in ("ADDED", "MODIFIED"):
                    self._store(obj)
                self._version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
        except kube.ApiException as exc:
            if exc.status == 410:
                raise Expired from exc
            raise

    def _query(self) -> tuple[str, str | None, str | None]:
        return self.source.kind, self.source.namespace, self.source.selector

    def _store(self, obj: Mapping[str, Any]) -> None:
        oid = _oid(obj)
        key = self.key(obj)
        if key is None:
            self._forget(oid)
            return
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        old_uid = self._uids.get(oid)
        if old_uid is not None and old_uid != uid:
            self._forget(oid)  # a successor of the same name: the predecessor went unseen
        elif (old_key := self.cache.key_of(oid)) is not None and old_key != key:
            self._forget(oid)  # relabelled: it no longer belongs to what it did
        self._uids[oid] = uid
        if self.cache.put(oid, key, self.parse(obj)):
            self._tell(key, uid, gone=False)

    def _forget(self, oid: ObjectId) -> None:
        uid = self._uids.pop(oid, "")
        old = self.cache.remove(oid)
        if old is not None:
            self._tell(old[0], uid, gone=True)

    def _tell(self, key: Hashable, uid: str, *, gone: bool) -> None:
        try:
            self.changed(key, uid, gone)
        except Exception:  # a bug in a callback must not stop the cache
            log.exception("handling a change of %s %r failed", self.source.kind, key)


def _oid(obj: Mapping[str, Any]) -> ObjectId:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")
