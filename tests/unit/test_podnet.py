"""Choosing pod CIDRs that a local process can listen on."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from localkube import podnet


def test_loopback_cidrs_are_one_slash_24_per_node_inside_127() -> None:
    cidrs = [ipaddress.IPv4Network(c) for c in podnet.loopback_cidrs(3)]
    assert len(set(cidrs)) == 3
    assert all(c.prefixlen == 24 and c.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) for c in cidrs)
    # Linux routes all of 127/8 to lo: the pod IPs are bindable without any setup.
    with socket.socket() as s:
        s.bind((str(cidrs[0][7]), 0))


def test_an_unknown_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="auto, loopback, routed"):
        podnet.choose("bridge", 1)


def test_routed_cidrs_skip_what_is_already_local(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = [ipaddress.IPv4Network("198.18.0.0/16"), ipaddress.IPv4Network("198.19.0.0/17")]
    monkeypatch.setattr(podnet, "_local_routes", lambda: taken)
    added: list[list[str]] = []

    class Done:
        returncode = 0

    def ip(*args: str) -> Done:
        added.append(list(args))
        return Done()

    monkeypatch.setattr(podnet, "_ip", ip)
    cidrs = podnet.routed_cidrs(2)
    assert cidrs is not None and len(cidrs) == 2
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    assert all(n.subnet_of(ipaddress.IPv4Network("198.19.128.0/17")) for n in nets)
    assert [a[:4] for a in added] == [["route", "add", "local", c] for c in cidrs]


def test_a_refused_route_rolls_back_and_auto_falls_back_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(podnet, "_local_routes", list)
    calls: list[list[str]] = []

    class Result:
        def __init__(self, code: int) -> None:
            self.returncode = code

    def ip(*args: str) -> Result:
        calls.append(list(args))
        adds = sum(1 for c in calls if c[1] == "add")
        return Result(0 if args[1] == "del" or adds == 1 else 2)  # the second add: "Operation not permitted"

    monkeypatch.setattr(podnet, "_ip", ip)
    cidrs, routes = podnet.choose("auto", 2)
    assert routes == [] and all(c.startswith("127.") for c in cidrs)
    assert [c[1] for c in calls] == ["add", "add", "del"]  # the first route was taken back
    with pytest.raises(RuntimeError, match="CAP_NET_ADMIN"):
        podnet.choose("routed", 2)


def test_prune_removes_the_routes_of_clusters_that_are_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(podnet, "OWNERS", tmp_path / "routes")
    (tmp_path / "routes").mkdir()
    live, dead = tmp_path / "live", tmp_path / "dead"
    podnet._owner_file("198.18.1.0/24").write_text(str(live))
    podnet._owner_file("198.18.2.0/24").write_text(str(dead))
    monkeypatch.setattr(podnet, "_our_routes", lambda: ["198.18.1.0/24", "198.18.2.0/24", "198.18.3.0/24"])
    removed: list[str] = []
    monkeypatch.setattr(podnet, "_ip", lambda *args: removed.append(args[3]))

    gone = podnet.prune(lambda d: d == live)
    assert gone == removed == ["198.18.2.0/24", "198.18.3.0/24"]  # the dead cluster's, and an orphan's
    assert [p.name for p in (tmp_path / "routes").iterdir()] == ["198.18.1.0_24"]
