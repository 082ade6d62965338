"""Leader election over a Lease: one holder at a time, takeover only after the holder falls silent for
the lease duration (on the standby's own clock), and an immediate handover on release."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from taskpod.controller import election
from taskpod.controller.election import Elector
from taskpod.kube import ApiException


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLeases:
    """One Lease, with the API server's compare-and-swap on resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        if self.lease is not None:
            raise ApiException(status=409)
        self._store(body)

    def close(self) -> None:
        """Nothing held."""

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self._store(body)

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    @property
    def holder(self) -> str | None:
        found = (self.lease or {}).get("spec", {}).get("holderIdentity")
        return str(found) if found is not None else None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("taskpod.controller.election.time.monotonic", fake)
    return fake


def elector(api: FakeLeases, identity: str) -> Elector:
    return Elector(api, "taskpod-system", "taskpod-operator", identity)


def test_the_first_comes_first_and_the_second_stands_by(clock: Clock) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    assert a.try_acquire_or_renew() is True and api.holder == "a"
    assert b.try_acquire_or_renew() is False
    clock.now += 5
    assert a.try_acquire_or_renew() is True  # renewing
    clock.now += 5
    assert b.try_acquire_or_renew() is False  # renewed lately: still a's
    assert api.lease and api.lease["spec"]["leaseTransitions"] == 0


def test_a_silent_holder_loses_the_lease_after_its_duration_on_the_standbys_clock(clock: Clock) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    a.try_acquire_or_renew()
    assert b.try_acquire_or_renew() is False  # b starts watching the record now
    clock.now += election.LEASE - 0.5
    assert b.try_acquire_or_renew() is False  # a is quiet, but not for long enough yet
    clock.now += 1
    assert b.try_acquire_or_renew() is True and api.holder == "b"
    assert api.lease and api.lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False  # the old leader cannot renew its way back


def test_two_standbys_racing_for_an_expired_lease_cannot_both_win(clock: Clock) -> None:
    api = FakeLeases()
    elector(api, "a").try_acquire_or_renew()
    b, c = elector(api, "b"), elector(api, "c")
    b.try_acquire_or_renew(), c.try_acquire_or_renew()
    clock.now += election.LEASE + 1
    real_read = api.read
    reads = [real_read("taskpod-system", "taskpod-operator")]  # both read the same version first
    api.read = lambda ns, name: copy.deepcopy(reads[0])  # type: ignore[method-assign,assignment]
    results = [b.try_acquire_or_renew(), c.try_acquire_or_renew()]
    assert sorted(results) == [False, True] and api.holder in ("b", "c")


def test_release_hands_over_without_waiting(clock: Clock) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    a.try_acquire_or_renew()
    assert b.try_acquire_or_renew() is False
    a.release()
    assert api.holder is None
    assert b.try_acquire_or_renew() is True and api.holder == "b"
    b.release()
    a.release()  # not the holder: changes nothing
    assert api.holder is None


def test_a_leader_that_cannot_renew_steps_down_before_anyone_may_take_over(clock: Clock) -> None:
    api = FakeLeases()
    a = elector(api, "a")
    assert a.wait_for_leadership() is True
    renewed_at = clock.now

    def hung(ns: str, name: str) -> dict[str, Any]:  # each call hangs until its timeout
        clock.now += election.CALL_TIMEOUT
        raise ApiException(status=504)

    api.read = hung  # type: ignore[method-assign,assignment]

    class Stop:
        def wait(self, seconds: float) -> bool:
            clock.now += seconds
            return False

        def is_set(self) -> bool:
            return False

    lost_at: list[float] = []
    a.keep_renewing(Stop(), lambda: lost_at.append(clock.now)).join(5)  # type: ignore[arg-type]
    assert len(lost_at) == 1
    # Gone before a standby, which saw the last renewal no earlier than we made it, could take over.
    assert lost_at[0] - renewed_at < election.LEASE


def test_a_leader_steps_down_at_once_when_another_holds_the_lease(clock: Clock) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    a.wait_for_leadership()
    b.try_acquire_or_renew()
    clock.now += election.LEASE + 1  # a was paused (GC, a frozen VM) past its lease
    assert b.try_acquire_or_renew() is True

    class Stop:
        def wait(self, seconds: float) -> bool:
            return False

        def is_set(self) -> bool:
            return False

    lost: list[bool] = []
    a.keep_renewing(Stop(), lambda: lost.append(True)).join(5)  # type: ignore[arg-type]
    assert lost == [True] and api.holder == "b"


def test_release_retries_when_someone_writes_between_its_read_and_its_write(clock: Clock) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    a.try_acquire_or_renew()
    real_replace = api.replace
    interfered: list[bool] = []

    def after_another_write(ns: str, name: str, body: dict[str, Any]) -> None:
        if not interfered:  # a renewal or a kubectl annotate lands first: our resourceVersion is stale
            interfered.append(True)
            api._store(copy.deepcopy(api.lease))  # type: ignore[arg-type]
        real_replace(ns, name, body)

    api.replace = after_another_write  # type: ignore[method-assign,assignment]
    a.release()
    assert interfered and api.holder is None
    assert b.try_acquire_or_renew() is True


def test_no_renewal_follows_a_release(clock: Clock) -> None:
    """The renewal thread may be between its wait and its call when the release runs; it must not take
    back the Lease just given up."""
    api = FakeLeases()
    a = elector(api, "a")
    a.wait_for_leadership()
    a.release()

    class LateStop:  # the wait ended before stop was set; stop is set by the time the call returns
        calls = 0

        def wait(self, seconds: float) -> bool:
            self.calls += 1
            return self.calls > 1

        def is_set(self) -> bool:
            return True

    lost: list[bool] = []
    a.keep_renewing(LateStop(), lambda: lost.append(True)).join(5)  # type: ignore[arg-type]
    assert api.holder is None and lost == []
