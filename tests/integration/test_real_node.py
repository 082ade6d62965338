"""The local control plane's real node: a kubelet with containerd on this machine runs pods for real, and
`down` gives the host back as it found it.

Skipped, with the reason, where the machine cannot run one (not root, no cgroups).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localkube import images, node, servicenet
from localkube.cluster import LocalCluster
from tests.support import (
    ROOT,
    Kube,
    Operator,
    create_task,
    create_template,
    delivered,
    free_port,
    get_task,
    install_crds,
    kubectl,
    phase_is,
    prompts_in,
    tasks_api,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(node.missing() is not None, reason=f"no real node here: {node.missing()}"),
]
BUSYBOX = "localhost/busybox:localkube"
PYTHON = "docker.io/library/python:3.11-slim-bookworm"  # the operator image's base (images.py makes it)
GATEWAY = next(node.POD_SUBNET.hosts())  # the bridge's address: how pods reach this machine


class RealCluster:
    def __init__(self, cluster: LocalCluster, before: node.Footprint) -> None:
        self.cluster, self.before = cluster, before
        self.kube = Kube.connect(cluster.kubeconfig, local=True)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        return kubectl(self.kube, *args, stdin=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    directory = tmp_path_factory.mktemp("real-node")
    if (stale := node.HostRecord.load()) is not None and not LocalCluster(Path(stale.directory)).alive():
        node.Node(Path(stale.directory)).clean()  # a killed run's node: `up` would clean it first anyway
    before = node.footprint(directory / "node")
    cluster = LocalCluster(directory)
    cluster.up(tie_to_parent=True, node="real")
    try:
        node.Node(cluster.directory).import_rootfs(node.busybox_rootfs(directory), BUSYBOX, ["/bin/sh"])
        yield RealCluster(cluster, before)
    finally:
        cluster.down()


def _pod(name: str, command: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", command],
                    **container,
                }
            ],
        },
    }


def _run(real: RealCluster, pod: dict[str, Any]) -> dict[str, Any]:
    """Create the pod and wait until it is Ready; returns it as the API server has it."""
    real.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    real.kubectl(
        "wait", "--for=condition=Ready", f"pod/{pod['metadata']['name']}", "--timeout=90s", timeout=100
    )
    return dict(json.loads(real.kubectl("get", "pod", pod["metadata"]["name"], "-o", "json")))


def test_the_machine_is_a_ready_node(real: RealCluster) -> None:
    nodes = json.loads(real.kubectl("get", "nodes", "-o", "json"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == [socket.gethostname()]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert nodes[0]["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")


def test_a_pod_serves_the_host_on_its_bridge_ip(real: RealCluster) -> None:
    pod = _run(
        real,
        _pod(
            "web",
            "mkdir -p /tmp/www && echo served-by-a-real-pod > /tmp/www/index.html "
            "&& exec httpd -f -p 8080 -h /tmp/www",
            readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        ),
    )
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in node.POD_SUBNET
    assert httpx.get(f"http://{ip}:8080/", timeout=5).text.strip() == "served-by-a-real-pod"
    # and through the API server's proxy to the pod, as `kubectl task logs` and `send` reach agents
    proxied = real.kubectl("get", "--raw", "/api/v1/namespaces/default/pods/web:8080/proxy/")
    assert proxied.strip() == "served-by-a-real-pod"


def test_a_pod_reaches_the_host_and_exec_and_logs_work(real: RealCluster, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("served-by-the-host\n")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _run(real, _pod("talker", "echo hello-from-the-log; exec sleep 3600"))
        gateway = str(next(node.POD_SUBNET.hosts()))  # the bridge: the host's address on the pod network
        got = real.kubectl("exec", "talker", "--", "wget", "-qO-", f"http://{gateway}:{server.server_port}/")
        assert got.strip() == "served-by-the-host"
        assert "hello-from-the-log" in real.kubectl("logs", "talker")
    finally:
        server.shutdown()


def test_limits_are_applied_to_the_container(real: RealCluster) -> None:
    pod = _run(
        real,
        _pod("limited", "exec sleep 3600", resources={"limits": {"memory": "64Mi", "cpu": "250m"}}),
    )
    # The kernel's own limits, read on the host: the pod's cgroup under the node's cgroup root.
    uid = pod["metadata"]["uid"]
    found = {
        knob: [
            p.read_text().strip()
            for p in Path("/sys/fs/cgroup").glob(f"*/{node.CGROUP_ROOT}/**/pod{uid}/{knob}")
        ]
        for knob in ("memory.limit_in_bytes", "cpu.cfs_quota_us", "memory.max", "cpu.max")
    }
    memory = found["memory.limit_in_bytes"] or found["memory.max"]  # cgroup v1, or v2
    cpu = found["cpu.cfs_quota_us"] or [v.split()[0] for v in found["cpu.max"]]
    assert memory == [str(64 * 1024 * 1024)]
    assert cpu == ["25000"]  # 250m of a 100 ms period


def test_a_volume_keeps_its_files_across_pods(real: RealCluster) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "files", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    real.kubectl("apply", "-f", "-", stdin=json.dumps(claim))
    mounted = {
        "volumeMounts": [{"name": "files", "mountPath": "/data"}],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},  # a user of its own, as a workspace is
    }
    volume = [{"name": "files", "persistentVolumeClaim": {"claimName": "files"}}]
    first = _pod("writer", "echo kept > /data/note && exec sleep 3600", **mounted)
    first["spec"]["volumes"] = volume
    _run(real, first)
    real.kubectl("delete", "pod", "writer", "--wait=true", timeout=60)
    second = _pod("reader", "exec sleep 3600", **mounted)
    second["spec"]["volumes"] = volume
    _run(real, second)
    assert real.kubectl("exec", "reader", "--", "cat", "/data/note").strip() == "kept"


@pytest.fixture(scope="module")
def python_image(real: RealCluster) -> str:
    """The Python base image in the node's containerd: busybox's static wget resolves no DNS names."""
    node_ = node.Node(real.cluster.directory)
    if not node_.has_image(PYTHON):
        (base,) = (b for b in images.BASES if b.name == PYTHON)
        with tempfile.TemporaryDirectory(dir=real.cluster.directory) as work:
            images.ensure_base(base, Path(work))
            images.load(node_, PYTHON, Path(work))
    return PYTHON


IN_CLUSTER_CLIENT = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
request = urllib.request.Request(
    url + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps(review).encode(),
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read(), "Content-Type": "application/json"},
)
tls = ssl.create_default_context(cafile=f"{sa}/ca.crt")
print(json.load(urllib.request.urlopen(request, context=tls, timeout=10))["status"]["userInfo"]["username"])
"""


def test_a_pod_reaches_the_api_server_with_in_cluster_config(real: RealCluster, python_image: str) -> None:
    """What an operator's client does in a pod: the `kubernetes` Service from the environment, the
    ServiceAccount's token, and TLS checked against the cluster's CA."""
    real.kubectl("create", "serviceaccount", "in-cluster")
    pod = _pod("in-cluster", "exec sleep 3600", image=python_image)
    pod["spec"] |= {"serviceAccountName": "in-cluster", "automountServiceAccountToken": True}
    _run(real, pod)
    service = json.loads(real.kubectl("get", "service", "kubernetes", "-o", "json"))
    env = real.kubectl("exec", "in-cluster", "--", "env").splitlines()
    assert f"KUBERNETES_SERVICE_HOST={service['spec']['clusterIP']}" in env
    who = real.kubectl("exec", "in-cluster", "--", "python", "-c", IN_CLUSTER_CLIENT)
    assert who.strip() == "system:serviceaccount:default:in-cluster"


def test_a_pod_reaches_another_pods_service_by_its_dns_name(real: RealCluster, python_image: str) -> None:
    backend = _pod(
        "backend",
        "mkdir -p /tmp/www && echo served-through-a-service > /tmp/www/index.html "
        "&& exec httpd -f -p 8080 -h /tmp/www",
        readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    )
    backend["metadata"]["labels"] = {"app": "backend"}
    _run(real, backend)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "backend", "namespace": "default"},
        "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    real.kubectl("apply", "-f", "-", stdin=json.dumps(service))
    cluster_ip = json.loads(real.kubectl("get", "service", "backend", "-o", "json"))["spec"]["clusterIP"]
    _run(real, _pod("frontend", "exec sleep 3600", image=python_image))
    names = ["backend.default.svc", f"backend.default.svc.{servicenet.CLUSTER_DOMAIN}", "backend"]
    lookup = "import socket, sys; print(*(socket.gethostbyname(n) for n in sys.argv[1:]))"
    resolved = real.kubectl("exec", "frontend", "--", "python", "-c", lookup, *names)
    assert resolved.split() == [cluster_ip] * len(names)
    fetch = (
        "import urllib.request; print(urllib.request.urlopen('http://backend.default.svc/').read().decode())"
    )
    assert real.kubectl("exec", "frontend", "--", "python", "-c", fetch).strip() == "served-through-a-service"
    # and the backend through its own Service (hairpin), by the address: busybox resolves no names
    hairpin = real.kubectl("exec", "backend", "--", "wget", "-qO-", f"http://{cluster_ip}/")
    assert hairpin.strip() == "served-through-a-service"


def _restricted_namespace_with_operator(
    real: RealCluster, ns: str, image: str, tmp_path: Path, env: list[dict[str, str]], **agent: Any
) -> Operator:
    """A namespace under Pod Security `restricted`, its "default" TaskTemplate on `image` with the chart's
    security contexts, and the operator (a process on the host) serving reports where pods reach it."""
    kube = real.kube
    install_crds(kube)
    kube.core.create_namespace(
        {"metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    chart = ROOT / "charts" / "taskpod" / "templates" / "tasktemplate-sim.yaml"
    assert "runAsNonRoot: true" in chart.read_text()  # the same security contexts as the chart's
    create_template(
        kube,
        ns,
        image=image,
        imagePullPolicy="Never",
        env=env,
        podSecurityContext={
            "fsGroup": 1000,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        securityContext={
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    if agent:
        patch = {"spec": {"agent": agent}}
        tasks_api(kube).patch_namespaced_custom_object(
            "taskpod.dev", "v1alpha1", ns, "tasktemplates", "default", patch
        )
    port = free_port()
    return Operator(
        real.cluster.kubeconfig,
        [ns],
        tmp_path / "operator.log",
        "--report-listen",
        f"0.0.0.0:{port}",
        "--report-url",
        f"http://{GATEWAY}:{port}/report",
    ).start()


def _pause(kube: Kube, ns: str, name: str, paused: bool) -> None:
    spec = '{"spec":{"paused":%s}}' % ("true" if paused else "false")
    kubectl(kube, "patch", "task", name, "-n", ns, "--type", "merge", "-p", spec)


@pytest.mark.timeout(1800)  # the first run on a machine builds the image it runs
def test_a_task_lives_on_a_real_workspace_pod(real: RealCluster, tmp_path: Path) -> None:
    """The operator (here, a process on the host) and the agent-sim image built from its Dockerfile: a
    Task's workspace runs for real, under Pod Security `restricted`, through pause and resume."""
    kube = real.kube
    node_ = node.Node(real.cluster.directory)
    (image,) = images.build_all(("agent-sim",), node_)
    ns = "real-tasks"
    operator = _restricted_namespace_with_operator(
        real, ns, image, tmp_path, [{"name": "SIM_AGENT", "value": json.dumps({"work_seconds": 1})}]
    )
    try:
        create_task(kube, ns, "real", prompt="Write hello.txt")
        task = wait_for(
            lambda: delivered(kube, ns, "real"), 120, "the prompt delivered", explain=operator.tail
        )
        assert task["status"]["phase"] == "Active"
        pod = kube.core.read_namespaced_pod("real-0", ns)
        assert pod.spec.node_name == socket.gethostname()
        assert pod.status.container_statuses[0].state.running is not None  # a container really runs
        # The agent keeps its state on the volume, as the uid of the image (fsGroup makes it writable).
        state_file = "/workspace/.taskpod/agentapi-state.json"
        wait_for(
            lambda: "Write hello.txt" in real.kubectl("exec", "-n", ns, "real-0", "--", "cat", state_file), 30
        )

        _pause(kube, ns, "real", True)
        paused = wait_for(lambda: phase_is(kube, ns, "real", "Paused"), 90, "Paused", explain=operator.tail)
        wait_for(lambda: not kube.core.list_namespaced_pod(ns).items, 60, "the pod gone")
        snapshot = kube.core.read_namespaced_config_map(paused["status"]["logSnapshot"]["configMap"], ns)
        assert "Write hello.txt" in json.dumps(snapshot.data)

        _pause(kube, ns, "real", False)
        resumed = wait_for(
            lambda: phase_is(kube, ns, "real", "Active"), 120, "Active again", explain=operator.tail
        )
        assert resumed["status"]["workspace"]["lifetime"] == 2
        # the first lifetime's files are still on the volume, and the prompt went in once
        assert "Write hello.txt" in real.kubectl("exec", "-n", ns, "real-0", "--", "cat", state_file)
        messages = httpx.get(
            f"http://{kube.core.read_namespaced_pod('real-0', ns).status.pod_ip}:3284/messages"
        )
        assert prompts_in(messages.json()["messages"], "Write hello.txt") == 1

        kubectl(kube, "delete", "task", "real", "-n", ns, "--wait=true", timeout=90)
        wait_for(
            lambda: (
                not kube.core.list_namespaced_pod(ns).items
                and not kube.core.list_namespaced_persistent_volume_claim(ns).items
            ),
            90,
            "the workspace gone with its task",
        )
    finally:
        operator.stop()


@pytest.fixture
def model(tmp_path: Path) -> Iterator[str]:
    """The model stand-in (hack/modelsim) on this machine, scripted to have the agent write hello.txt; its
    URL as pods reach it."""
    script = {
        "rules": [
            {
                "when": "Write hello.txt",
                "steps": [
                    {"tool": "Write", "input": {"file_path": "/workspace/hello.txt", "content": "hello ✓\n"}},
                    {"text": "I wrote hello.txt in the workspace."},
                ],
            }
        ]
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "modelsim",
        "--port",
        str(port),
        "--script",
        str(tmp_path / "script.json"),
    ]
    with (tmp_path / "modelsim.log").open("w") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "hack")},
        )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/_requests", timeout=2).status_code == 200, 30)
        yield f"http://{GATEWAY}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(1800)  # the first run on a machine builds the image it runs
def test_claude_code_does_a_task_on_a_real_workspace(real: RealCluster, model: str, tmp_path: Path) -> None:
    """The workspace image, built from its Dockerfile: Claude Code behind AgentAPI, driven by the model
    stand-in, writes hello.txt on the volume. No human answers anything at its first start."""
    kube = real.kube
    (image,) = images.build_all(("workspace",), node.Node(real.cluster.directory))
    ns = "claude-tasks"
    env = [
        {"name": "ANTHROPIC_BASE_URL", "value": model},
        {"name": "ANTHROPIC_API_KEY", "value": "sk-ant-not-a-real-key-0123456789"},
        {"name": "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "value": "1"},
    ]
    operator = _restricted_namespace_with_operator(real, ns, image, tmp_path, env, type="claude")
    say = lambda: operator.tail() + "\n" + json.dumps(get_task(kube, ns, "hello").get("status"))  # noqa: E731
    try:
        create_task(kube, ns, "hello", prompt="Write hello.txt, please")
        wait_for(lambda: delivered(kube, ns, "hello"), 180, "the prompt delivered", explain=say)
        done = wait_for(
            lambda: (
                (t := get_task(kube, ns, "hello"))["status"].get("state", {}).get("state") == "idle"
                and "I wrote hello.txt" in t["status"]["state"].get("message", "")
                and t
            ),
            120,
            "the agent idle, with its own words",
            explain=say,
        )
        assert done["status"]["agent"]["type"] == "claude"
        assert real.kubectl("exec", "-n", ns, "hello-0", "--", "cat", "/workspace/hello.txt") == "hello ✓\n"

        _pause(kube, ns, "hello", True)
        paused = wait_for(lambda: phase_is(kube, ns, "hello", "Paused"), 90, "Paused", explain=say)
        snapshot = kube.core.read_namespaced_config_map(paused["status"]["logSnapshot"]["configMap"], ns)
        kept = json.loads(snapshot.data["snapshot.json"])["data"]["messages"]  # as AgentAPI parsed the screen
        (tmp_path / "snapshot.json").write_text(json.dumps(kept, indent=1))
        seen = [(m["role"], m["content"][:200]) for m in kept]
        assert any(m["role"] == "user" and "Write hello.txt, please" in m["content"] for m in kept), seen
        assert any(m["role"] == "agent" and "I wrote hello.txt" in m["content"] for m in kept), seen

        _pause(kube, ns, "hello", False)
        resumed = wait_for(lambda: phase_is(kube, ns, "hello", "Active"), 180, "Active again", explain=say)
        assert resumed["status"]["workspace"]["lifetime"] == 2
        assert real.kubectl("exec", "-n", ns, "hello-0", "--", "cat", "/workspace/hello.txt") == "hello ✓\n"
        sent = [
            r
            for r in httpx.get(model.replace(str(GATEWAY), "127.0.0.1") + "/_requests").json()
            if r["path"] == "/v1/messages"
        ]
        asked = [r for r in sent if "Write hello.txt, please" in json.dumps(r["body"]["messages"][:1])]
        assert len({json.dumps(r["body"]["messages"][:1]) for r in asked}) == 1  # the prompt went in once
    finally:
        operator.stop()


def test_down_leaves_the_host_as_it_was(real: RealCluster) -> None:
    """Last in this module: it stops the cluster the others used."""
    running = node.footprint(real.cluster.directory / "node")
    assert node.BRIDGE in running.links and running.processes and running.mounts  # the node made them
    assert any(":KUBE-SERVICES" in rule for rule in running.iptables)
    assert any(c.endswith(f"/{node.CGROUP_ROOT}") for c in running.cgroups)
    real.cluster.down()
    deadline = time.monotonic() + 10
    after = node.footprint(real.cluster.directory / "node")
    while after != real.before and time.monotonic() < deadline:  # veths go with their network namespace
        time.sleep(0.5)
        after = node.footprint(real.cluster.directory / "node")
    assert after == real.before
    assert not node.RECORD.exists()


def test_a_node_left_by_a_killed_run_is_cleaned_up_by_the_next(
    real: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A test run killed with its node up leaves containers, mounts and cgroups behind, and its folder
    may be gone: the next real node's start removes them before it claims the host."""
    killed = LocalCluster(tmp_path_factory.mktemp("killed-node"))
    killed.up(tie_to_parent=True, node="real")
    node.Node(killed.directory).import_rootfs(node.busybox_rootfs(killed.directory), BUSYBOX, ["/bin/sh"])
    _run(RealCluster(killed, real.before), _pod("orphan", "exec sleep 3600"))
    state = killed.state()
    assert state is not None
    for name in reversed(list(state.processes)):  # as SIGKILL of the whole run would
        killed.kill(name)
    assert any("sleep 3600" in p for p in node.footprint(killed.directory / "node").processes)

    after_crash = LocalCluster(tmp_path_factory.mktemp("next-node"))
    after_crash.up(tie_to_parent=True, node="real")
    try:
        assert not any("sleep 3600" in p for p in node.footprint(after_crash.directory / "node").processes)
        assert json.loads(node.RECORD.read_text())["directory"] == str(after_crash.directory)
    finally:
        after_crash.down()
    assert node.footprint(after_crash.directory / "node") == real.before
