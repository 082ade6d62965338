"""Helpers shared by the integration tests: a cluster handle and waiting for what a user would watch."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

T = TypeVar("T")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass
class Kube:
    """The cluster under test: its kubeconfig and an admin API client."""

    kubeconfig: Path
    api: client.ApiClient
    local: bool  # started by this test run (localkube), not an existing cluster

    @classmethod
    def connect(cls, kubeconfig: Path, local: bool) -> Kube:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        return cls(kubeconfig, client.ApiClient(cfg), local)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def loopback_pods(self) -> bool:
        """True when every node's pod CIDR lies in 127.0.0.0/8, so a local process can play a pod."""
        nodes = self.core.list_node().items
        cidrs = [
            c for n in nodes for c in (n.spec.pod_cidrs or ([n.spec.pod_cidr] if n.spec.pod_cidr else []))
        ]
        return bool(cidrs) and all(
            ipaddress.ip_network(c)[0] in LOOPBACK and ipaddress.ip_network(c)[-1] in LOOPBACK for c in cidrs
        )


ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"


def install_crds(kube: Kube) -> list[str]:
    """Apply every CRD in crds/ and wait until the API server serves them."""
    ext = client.ApiextensionsV1Api(kube.api)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        ext.patch_custom_resource_definition(
            name, crd, field_manager="taskpod-tests", force=True, _content_type="application/apply-patch+yaml"
        )
        names.append(name)

    def established() -> bool:
        return all(
            any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(n).status.conditions or []
            )
            for n in names
        )

    wait_for(established, 30, "the taskpod CRDs to be established")
    return names


def wait_for(
    check: Callable[[], T | None], timeout: float = 60, what: str = "condition", interval: float = 0.2
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # a not-yet-existing object is a normal intermediate state
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def plain(api: client.ApiClient, obj: Any) -> Any:
    """A client model as the plain JSON a user would see with `kubectl get -o json`."""
    return api.sanitize_for_serialization(obj)
