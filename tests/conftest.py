"""Fixtures: a real Kubernetes control plane for the integration tests, and a namespace per test.

The cluster is the one named by TASKPOD_KUBECONFIG when set (any conformant cluster, e.g. kind); otherwise
a local control plane (hack/localkube) is started for the run and stopped at its end.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from localkube.cluster import LocalCluster
from tests.support import (
    ROOT,
    Kube,
    Operator,
    act_as_user,
    create_namespace,
    delete_namespace,
    install_crds,
)

# Property-based tests: a few dozen examples in `make test`, many more in `make properties`. Each
# example goes through the API server and the operator, hence no deadline; the fixtures (a namespace,
# the operator) are shared by the examples of a test on purpose.
_PROPERTIES = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
settings.register_profile("ci", _PROPERTIES, max_examples=25)
settings.register_profile("long", _PROPERTIES, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | None]:
    """The local control plane under test, for tests that stop and start its components; None on a
    cluster that is not one (TASKPOD_KUBECONFIG naming any other)."""
    existing = os.environ.get("TASKPOD_KUBECONFIG")
    if existing:
        directory = Path(existing).resolve().parent
        yield LocalCluster(directory) if (directory / "state.json").exists() else None
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.up(tie_to_parent=True)  # tied: a killed test run takes its control plane with it
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def kube(local_cluster: LocalCluster | None) -> Kube:
    existing = os.environ.get("TASKPOD_KUBECONFIG")
    if existing:
        return Kube.connect(Path(existing), local=False)
    assert local_cluster is not None
    return Kube.connect(local_cluster.kubeconfig, local=True)


@pytest.fixture(scope="session")
def crds(kube: Kube) -> list[str]:
    """taskpod's CRDs, installed from crds/ (server-side apply, so a re-run updates them) and established."""
    names = install_crds(kube)
    return names


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(4)}"  # the tests of a parametrized one share the base
    yield create_namespace(kube, name)
    delete_namespace(kube, name)


@pytest.fixture
def operator(
    kube: Kube, crds: list[str], namespace: str, tmp_path: Path, simulator: Path
) -> Iterator[Operator]:
    """The operator, running as its own process and watching the test's namespace (agents simulated)."""
    op = Operator(kube.kubeconfig, [namespace], tmp_path / "operator.log").start()
    yield op
    op.stop()
    print(f"--- operator log (last lines) ---\n{op.tail()}")


@pytest.fixture(scope="session")
def simulator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The workspace simulator, playing every taskpod pod's agent at its pod IP; yields its state dir."""
    directory = tmp_path_factory.mktemp("simulator")
    log = (directory / "simulator.log").open("ab")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentsim",
            "--kubeconfig",
            str(kube.kubeconfig),
            "--state-dir",
            str(directory / "state"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    yield directory
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def user_credentials(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    """taskpod.kube and taskpod.client.tasks act as the user of the cluster under test (see act_as_user)."""
    act_as_user(kube, monkeypatch)


@pytest.fixture(autouse=True)
def _needs_cluster_features(request: pytest.FixtureRequest) -> None:
    """Tests marked `local_pods` play pods with local processes, and tests marked `pod_proxy` reach them
    through the API server's pod proxy; on a cluster without that, they skip, saying why."""
    if request.node.get_closest_marker("local_pods") is not None:
        kube: Kube = request.getfixturevalue("kube")
        if not kube.local_pods():
            pytest.skip("needs pod IPs that are addresses of this machine (the local kwok control plane)")
    if request.node.get_closest_marker("pod_proxy") is not None:
        kube = request.getfixturevalue("kube")
        if not kube.proxyable_pods():
            pytest.skip(
                "needs pod IPs the API server proxies to; this cluster's are loopback addresses "
                "(localkube picks routed pod IPs when it may add routes: run as root)"
            )
