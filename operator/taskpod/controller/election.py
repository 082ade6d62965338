"""Leader election through a coordination.k8s.io Lease, as client-go does it.

Kopf's peering freezes peers of equal priority, so it is not leader election. Instead, a process that
runs with --leader-election first waits to hold the Lease, then runs the operator, renewing the Lease
every RENEW seconds from a thread of its own. If it cannot renew within RENEW_DEADLINE (well within the
lease duration, hung calls included), it exits at once: another replica may take over only after LEASE
seconds without a renewal, and by then this one is gone, so two leaders never reconcile at the same
time. On a clean stop (SIGTERM, a rolling upgrade) it gives the Lease up, so the next replica takes
over within STANDBY_RETRY seconds.

Expiry is judged like client-go: by how long this process has watched the same record go unrenewed,
on its own monotonic clock, never by comparing another machine's clock with ours.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskpod.kube import ApiException

log = logging.getLogger("taskpod.controller.election")
LEASE = 15  # seconds a silent holder keeps the Lease
RENEW = 4.0  # seconds between renewals
RETRY = 1.0  # seconds before trying again after a failed renewal
RENEW_DEADLINE = 8.0  # a leader that could not renew for this long steps down (exits)
STANDBY_RETRY = 2.0  # seconds between attempts while standing by
CALL_TIMEOUT = 2.0  # seconds one Lease call may take
# The last renewal attempt starts at most RENEW_DEADLINE + RETRY after the last success and makes two
# calls; the leader is gone before any standby can see the lease expire.
assert RENEW_DEADLINE + RETRY + 2 * CALL_TIMEOUT < LEASE


def default_identity() -> str:
    """The pod's name in a cluster (POD_NAME from the downward API), else host and process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_namespace() -> str:
    """Where the Lease lives: POD_NAMESPACE, else the in-cluster ServiceAccount's, else default."""
    if ns := os.environ.get("POD_NAMESPACE"):
        return ns
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _micro_time() -> str:
    """Now as a MicroTime, the Lease's timestamp format."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi(Protocol):
    """The three Lease calls an election makes (kube.Leases), each raising ApiException as answered."""

    def read(self, namespace: str, name: str) -> dict[str, Any]: ...
    def create(self, namespace: str, body: dict[str, Any]) -> None: ...
    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class Elector:
    leases: LeaseApi
    namespace: str
    name: str
    identity: str
    lease_seconds: int = LEASE
    _seen: tuple[Any, ...] | None = None  # the record last read: holder, renew time, transitions
    _seen_at: float = 0.0  # when it last changed, on our monotonic clock
    _last_renewal: float = 0.0
    # One Lease call sequence at a time: a release must not interleave with a renewal in flight, whose
    # write would make the release's compare-and-swap fail, leaving standbys to wait out the lease.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _resigned: bool = False

    # -- one attempt ---------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round trip: True when this process holds the Lease afterwards."""
        try:
            lease = self._read()
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = time.monotonic()
        if record != self._seen:
            self._seen, self._seen_at = record, now
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        if holder and holder != self.identity and now < self._seen_at + duration:
            return False  # someone else holds it and has renewed it lately
        taking_over = holder != self.identity
        stamp = _micro_time()
        lease["spec"] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": stamp if taking_over else spec.get("acquireTime", stamp),
            "renewTime": stamp,
            "leaseTransitions": (spec.get("leaseTransitions") or 0) + (1 if taking_over and holder else 0),
        }
        try:  # the resourceVersion we read makes this a compare-and-swap
            self.leases.replace(self.namespace, self.name, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another replica wrote first
            raise
        self._seen, self._seen_at = (self.identity, stamp, lease["spec"]["leaseTransitions"]), now
        if taking_over:
            log.info(
                "acquired the Lease %s/%s as %s (from %s)",
                self.namespace,
                self.name,
                self.identity,
                holder or "nobody",
            )
        return True

    def _read(self) -> dict[str, Any]:
        return self.leases.read(self.namespace, self.name)

    def _create(self) -> bool:
        stamp = _micro_time()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            self.leases.create(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        log.info("created the Lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    def _attempt(self) -> bool:
        with self._lock:
            if self._resigned:
                return False
            try:
                return self.try_acquire_or_renew()
            except Exception as exc:  # the API server is away: just another failed attempt
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
                return False

    # -- the loops -----------------------------------------------------------------------------

    def wait_for_leadership(self, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True), or `stop` is set (False)."""
        log.info("waiting for the Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not (stop and stop.is_set()):
            started = time.monotonic()
            if self._attempt():
                self._last_renewal = started
                return True
            time.sleep(STANDBY_RETRY)
        return False

    def keep_renewing(self, stop: threading.Event, on_lost: Any) -> threading.Thread:
        """Renew from a daemon thread until `stop`; call `on_lost()` if leadership cannot be kept."""

        def loop() -> None:
            renewed = True
            while not stop.wait(RENEW if renewed else RETRY):
                started = time.monotonic()  # the server stamps the renewal after this: err early
                renewed = self._attempt()
                if stop.is_set():  # stopped (and maybe released) while that attempt waited or ran
                    return
                if renewed:
                    self._last_renewal = started
                elif self._held_by_other() or time.monotonic() - self._last_renewal > RENEW_DEADLINE:
                    log.error("lost the Lease %s/%s: stepping down", self.namespace, self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=loop, name="taskpod-lease", daemon=True)
        thread.start()
        return thread

    def _held_by_other(self) -> bool:
        return bool(self._seen and self._seen[0] and self._seen[0] != self.identity)

    def release(self, attempts: int = 3) -> None:
        """Give the Lease up (a clean stop), so a standby takes over without waiting for expiry.

        Waits for a renewal in flight, and no renewal follows. A write by anyone else between our read
        and our write (a 409) is read again and retried, a few times."""
        with self._lock:
            self._resigned = True
            for attempt in range(1, attempts + 1):
                try:
                    if self._give_up():
                        log.info("released the Lease %s/%s", self.namespace, self.name)
                    return
                except ApiException as exc:
                    if exc.status == 409 and attempt < attempts:
                        continue
                    log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, exc)
                except Exception as exc:
                    log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, exc)
                return

    def _give_up(self) -> bool:
        """One read and compare-and-swap: True when we held the Lease and now nobody does."""
        lease = self._read()
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return False
        stamp = _micro_time()
        lease["spec"] = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": stamp}
        self.leases.replace(self.namespace, self.name, lease)
        return True
