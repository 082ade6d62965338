"""When a local control plane still counts as alive: a second cluster must never take a live one's routes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localkube import cluster, podnet
from localkube.cluster import LocalCluster, Process, State


@pytest.fixture
def gone_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def state_with(directory: Path, processes: dict[str, int], age: float = 0) -> LocalCluster:
    directory.mkdir(parents=True, exist_ok=True)
    state = State(str(directory), str(directory / "kubeconfig"), "https://127.0.0.1:1", [], {})
    state.processes = {
        name: Process(pid, cluster._start_time(pid) or "gone", ["x"], "x.log")
        for name, pid in processes.items()
    }
    state.save()
    if age:
        then = time.time() - age
        os.utime(directory / "state.json", (then, then))
    return LocalCluster(directory)


def test_a_cluster_with_one_component_down_is_alive_but_not_running(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], gone_pid: int
) -> None:
    local = state_with(tmp_path / "a", {"kube-apiserver": sleeper.pid, "provisioner": gone_pid}, age=3600)
    assert local.alive() and not local.running()
    assert cluster.in_use(local.directory)


def test_a_cluster_whose_components_are_all_gone_is_not_in_use(tmp_path: Path, gone_pid: int) -> None:
    local = state_with(tmp_path / "a", {"kube-apiserver": gone_pid}, age=3600)
    assert not local.alive() and not cluster.in_use(local.directory)
    assert cluster.in_use(state_with(tmp_path / "b", {"etcd": gone_pid}).directory)  # still starting


def test_a_pid_reused_by_another_process_is_not_the_component(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    local = state_with(tmp_path / "a", {"etcd": sleeper.pid}, age=3600)
    state = local.state()
    assert state is not None
    state.processes["etcd"].started = "1"  # the same pid, started at another time
    state.save()
    os.utime(local.directory / "state.json", (time.time() - 3600,) * 2)
    assert not local.alive()


def test_a_second_cluster_keeps_the_routes_of_a_live_one_with_a_component_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes], gone_pid: int
) -> None:
    monkeypatch.setattr(podnet, "OWNERS", tmp_path / "routes")
    (tmp_path / "routes").mkdir()
    live = state_with(tmp_path / "live", {"kube-apiserver": sleeper.pid, "kwok": gone_pid}, age=3600)
    dead = state_with(tmp_path / "dead", {"kube-apiserver": gone_pid}, age=3600)
    podnet._owner_file("198.18.1.0/24").write_text(str(live.directory))
    podnet._owner_file("198.18.2.0/24").write_text(str(dead.directory))
    monkeypatch.setattr(podnet, "_our_routes", lambda: ["198.18.1.0/24", "198.18.2.0/24"])
    removed: list[str] = []
    monkeypatch.setattr(podnet, "_ip", lambda *args: removed.append(args[3]))

    assert podnet.prune(cluster.in_use) == removed == ["198.18.2.0/24"]


def test_a_component_that_exited_but_is_not_reaped_yet_is_not_alive(tmp_path: Path) -> None:
    """A component this process started again (LocalCluster.start) is its child: once it exits, it stays
    a zombie until reaped, and must not pass for alive (kill() waited for it forever)."""
    child = subprocess.Popen(["sleep", "0.2"])
    local = state_with(tmp_path / "a", {"kube-apiserver": child.pid}, age=3600)
    assert local.alive()
    time.sleep(0.5)  # exited: a zombie now
    assert not local.alive()
