"""The control plane the other tests rely on behaves like real Kubernetes: schemas, StatefulSets, storage,
garbage collection and RBAC are enforced by the upstream components, not by us."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import Kube, kubectl, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def widget_crd(kube: Kube, namespace: str) -> Iterator[str]:
    """A throwaway CRD, unique per test, with a schema the API server enforces."""
    group = f"{namespace}.example.taskpod.dev"
    ext = client.ApiextensionsV1Api(kube.api)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        conds = ext.read_custom_resource_definition(f"widgets.{group}").status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(established, 30, "the CRD to be established")
    yield group
    ext.delete_custom_resource_definition(f"widgets.{group}")


def test_namespace_configmap_and_crd_schema(kube: Kube, namespace: str, widget_crd: str) -> None:
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    assert kube.core.read_namespaced_config_map("settings", namespace).data == {"a": "1"}

    custom = client.CustomObjectsApi(kube.api)
    ok = {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": "ok"}, "spec": {"size": 3}}
    custom.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", ok)

    bad = {**ok, "metadata": {"name": "bad"}, "spec": {"size": "big"}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", bad)
    assert err.value.status == 422
    assert "spec.size" in err.value.body and "must be of type integer" in err.value.body


def _statefulset(name: str, replicas: int = 1) -> dict[str, object]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Delete"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/agent:1",
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                        }
                    ]
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "work"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }


def _running_pod(kube: Kube, namespace: str, name: str) -> client.V1Pod | None:
    pod = kube.core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase == "Running" and pod.status.pod_ip else None


@pytest.mark.local_pods
def test_statefulset_gets_storage_and_a_pod_ip_a_local_process_can_play(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("ws"))

    pod = wait_for(lambda: _running_pod(kube, namespace, "ws-0"), 60, "pod ws-0 to run")
    claim = kube.core.read_namespaced_persistent_volume_claim("work-ws-0", namespace)
    assert claim.status.phase == "Bound"
    ip = ipaddress.ip_address(pod.status.pod_ip)
    assert any(ip in cidr for cidr in kube.pod_cidrs())

    # A process bound to the pod IP plays the pod: whoever dials the pod IP reaches it.
    server = socket.create_server((str(ip), 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].sendall(b"hello from the pod"), daemon=True).start()
    with socket.create_connection((str(ip), port), timeout=5) as conn:
        assert conn.recv(100) == b"hello from the pod"
    server.close()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the pod at {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.local_pods
@pytest.mark.pod_proxy
def test_the_api_server_proxies_to_a_played_pod(kube: Kube, namespace: str) -> None:
    """What `kubectl task logs` relies on: pods/proxy from outside reaches the process playing the pod."""
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("ws"))
    pod = wait_for(lambda: _running_pod(kube, namespace, "ws-0"), 60, "pod ws-0 to run")
    server = http.server.ThreadingHTTPServer((pod.status.pod_ip, 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        out = kubectl(kube, "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/ws-0:{port}/proxy/status")
        assert out == "hello from the pod at /status"
    finally:
        server.shutdown()
        server.server_close()


def test_scale_to_zero_keeps_the_claim_and_deletion_collects_children(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("ws"))
    wait_for(lambda: _running_pod(kube, namespace, "ws-0"), 60, "pod ws-0 to run")
    claim_uid = kube.core.read_namespaced_persistent_volume_claim("work-ws-0", namespace).metadata.uid

    kube.apps.patch_namespaced_stateful_set_scale("ws", namespace, {"spec": {"replicas": 0}})

    def pod_gone() -> bool:
        return not kube.core.list_namespaced_pod(namespace, label_selector="app=ws").items

    wait_for(pod_gone, 60, "the pod to be deleted after scale-down")
    claim = kube.core.read_namespaced_persistent_volume_claim("work-ws-0", namespace)
    assert claim.metadata.uid == claim_uid and claim.status.phase == "Bound"

    # The StatefulSet owns its claims (retention policy whenDeleted: Delete): deleting it collects them.
    kube.apps.delete_namespaced_stateful_set("ws", namespace, propagation_policy="Background")
    wait_for(
        lambda: not kube.core.list_namespaced_persistent_volume_claim(namespace).items,
        60,
        "the claim to be garbage-collected",
    )

    # Any owner reference works the same way.
    owner = kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    kube.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}}
    )
    kube.core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        return "child" not in [c.metadata.name for c in kube.core.list_namespaced_config_map(namespace).items]

    wait_for(child_gone, 60, "the owned ConfigMap to be garbage-collected")


def test_rbac_is_enforced_for_a_service_account_token(kube: Kube, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(kube.api)
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token = kube.core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    cfg = client.Configuration()
    cfg.host = kube.api.configuration.host
    cfg.ssl_ca_cert = kube.api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(cfg))

    as_reader.list_namespaced_config_map(namespace)  # granted
    forbidden: list[Callable[[], object]] = [
        lambda: as_reader.list_namespaced_secret(namespace),
        lambda: as_reader.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}}),
        lambda: as_reader.list_namespaced_config_map("default"),
    ]
    for call in forbidden:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in err.value.body
