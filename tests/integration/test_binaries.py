"""Every upstream binary comes from the cache and tells its true version."""

from __future__ import annotations

import subprocess

import pytest
from kubernetes import client

from localkube import binaries
from tests.support import Kube

pytestmark = pytest.mark.integration


def _run(name: str, *args: str) -> str:
    result = subprocess.run([str(binaries.ensure(name)), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("kube-apiserver", ["--version"], f"Kubernetes {binaries.KUBERNETES_VERSION}"),
        ("kube-controller-manager", ["--version"], f"Kubernetes {binaries.KUBERNETES_VERSION}"),
        ("kube-scheduler", ["--version"], f"Kubernetes {binaries.KUBERNETES_VERSION}"),
        ("kubectl", ["version", "--client"], f"Client Version: {binaries.KUBERNETES_VERSION}"),
        ("etcd", ["--version"], f"etcd Version: {binaries.ETCD_VERSION.lstrip('v')}"),
        ("kwok", ["--version"], binaries.KWOK_VERSION.lstrip("v")),
        ("helm", ["version", "--short"], binaries.HELM_VERSION),
        ("agentapi", ["--version"], binaries.AGENTAPI_VERSION.lstrip("v")),
        ("kubelet", ["--version"], f"Kubernetes {binaries.KUBERNETES_VERSION}"),
        ("containerd", ["--version"], binaries.CONTAINERD_VERSION.lstrip("v")),
        ("ctr", ["--version"], binaries.CONTAINERD_VERSION.lstrip("v")),
    ],
)
def test_binary_reports_its_version(name: str, args: list[str], expected: str) -> None:
    assert binaries.path(name).exists()
    assert expected in _run(name, *args)


def test_agentapi_help_runs() -> None:
    assert "server" in _run("agentapi", "--help")


def test_api_server_reports_its_version(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("the version of an existing cluster is not ours to check")
    info = client.VersionApi(kube.api).get_code()
    assert info.git_version == binaries.KUBERNETES_VERSION
    assert (info.major, info.minor) == tuple(binaries.KUBERNETES_VERSION.lstrip("v").split(".")[:2])
