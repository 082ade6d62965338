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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, watch

from localkube import images, node, servicenet
from localkube.cluster import LocalCluster
from taskpod.core import workspace
from tests.gitserver import GitServer, git
from tests.support import (
    ROOT,
    Kube,
    create_task,
    delivered,
    free_port,
    get_task,
    helm_runner,
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
CHART = ROOT / "charts" / "taskpod"
SCRIPT = ROOT / "hack" / "modelsim" / "scripts" / "hello.json"  # make demo NODE=real's too
REPORT_TOOL = "mcp__taskpod__report_task"  # the image's MCP server "taskpod", as Claude Code names its tool


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
    # kube-proxy programs the Service a moment after its endpoints exist: a first connection may go
    # nowhere. Each try gives up after 3 s; the Service must answer within 45 s.
    fetch = (
        "import time, urllib.request\n"
        "deadline = time.monotonic() + 45\n"
        "while True:\n"
        "    try:\n"
        "        answer = urllib.request.urlopen('http://backend.default.svc/', timeout=3).read()\n"
        "        print(answer.decode()); break\n"
        "    except OSError:\n"
        "        if time.monotonic() > deadline: raise\n"
        "        time.sleep(0.5)\n"
    )
    assert real.kubectl("exec", "frontend", "--", "python", "-c", fetch).strip() == "served-through-a-service"
    # and the backend through its own Service (hairpin), by the address: busybox resolves no names
    hairpin = real.kubectl("exec", "backend", "--", "wget", "-qO-", f"http://{cluster_ip}/")
    assert hairpin.strip() == "served-through-a-service"


def _pause(kube: Kube, ns: str, name: str, paused: bool) -> None:
    spec = '{"spec":{"paused":%s}}' % ("true" if paused else "false")
    kubectl(kube, "patch", "task", name, "-n", ns, "--type", "merge", "-p", spec)


# -- taskpod as a user installs it: the chart, on the real node -----------------------------------------

SYSTEM, TEAM, RELEASE = "taskpod-system", "team", "taskpod"  # release "taskpod": its objects are "taskpod"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
FAKE_KEY = "sk-ant-not-a-real-key-0123456789"
CLI = Path(sys.executable).parent / "kubectl-task"  # the plugin, as the venv installed it


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model stand-in (hack/modelsim) on this machine; its URL as pods reach it. Scripted (as make demo
    NODE=real is) so that the agent writes hello.txt and says so, then, asked again, calls the report tool
    the image registers, and says it did."""
    tmp = tmp_path_factory.mktemp("modelsim")
    port = free_port()
    command = [sys.executable, "-m", "modelsim", "--port", str(port), "--script", str(SCRIPT)]
    with (tmp / "modelsim.log").open("w") as log:
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


@dataclass
class Installed:
    real: RealCluster
    helm: Callable[..., str]

    def operator_log(self) -> str:
        return self.real.kubectl("logs", "-n", SYSTEM, f"deploy/{RELEASE}", "--tail=40")

    def explain(self, ns: str, name: str) -> Callable[[], str]:
        return lambda: (
            self.operator_log() + "\n" + json.dumps(get_task(self.real.kube, ns, name).get("status"))
        )

    def task_cli(self, *args: str, timeout: float = 120) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.real.cluster.kubeconfig)}
        result = subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=timeout)
        assert result.returncode == 0, f"kubectl task {' '.join(args)}: {result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def installed(real: RealCluster, model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The chart installed as the README says, with the images built here from their Dockerfiles: the
    operator as a pod, the default template on the workspace image (Claude Code, its key from a Secret,
    the model stand-in as its gateway), the simulator template, and helm test's kubectl. Both namespaces
    enforce Pod Security `restricted`, so every pod of the chart and of its templates is admitted as
    shipped, or the install fails."""
    node_ = node.Node(real.cluster.directory)
    names = ("operator", "agent-sim", "workspace")
    built = dict(zip(names, images.build_all(names, node_), strict=True))
    built["kubectl"] = images.load_kubectl(node_)
    for ns in (SYSTEM, TEAM):
        real.kube.core.create_namespace({"metadata": {"name": ns, "labels": RESTRICTED}})
    secret = {"metadata": {"name": "anthropic"}, "stringData": {"ANTHROPIC_API_KEY": FAKE_KEY}}
    real.kube.core.create_namespaced_secret(TEAM, secret)
    values = images.chart_values(built, [TEAM], model)
    tmp = tmp_path_factory.mktemp("chart")
    (tmp / "values.json").write_text(json.dumps(values))
    helm = helm_runner(real.cluster.kubeconfig, tmp / "helm")
    helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        SYSTEM,
        "-f",
        str(tmp / "values.json"),
        "--wait",
        "--timeout=300s",
        timeout=330,
    )
    yield Installed(real, helm)
    if real.cluster.running():  # the module's last tests stop the cluster
        helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout=120s", timeout=150)


@pytest.mark.timeout(1800)  # the first run on a machine builds the images
def test_the_chart_runs_the_operator_as_a_pod_and_helm_test_passes(installed: Installed) -> None:
    kube = installed.real.kube
    (pod,) = kube.core.list_namespaced_pod(
        SYSTEM, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    ).items
    assert pod.spec.node_name == socket.gethostname()
    assert ipaddress.ip_address(pod.status.pod_ip) in node.POD_SUBNET
    assert all(c.ready for c in pod.status.container_statuses), pod.status  # its probes answer
    assert pod.spec.containers[0].image == f"localhost/taskpod-operator:{images.LOCAL_TAG}"
    # It reached the API server from inside the cluster, and holds the Lease.
    lease = client.CoordinationV1Api(kube.api).read_namespaced_lease("taskpod-operator", SYSTEM)
    assert lease.spec.holder_identity.startswith(pod.metadata.name)

    out = installed.helm("test", RELEASE, "-n", SYSTEM, "--timeout=600s", timeout=630)
    assert "Phase:          Succeeded" in out, out


@pytest.mark.timeout(900)
def test_a_task_lives_on_a_real_workspace_pod(installed: Installed) -> None:
    """The agent-sim image through the chart's simulator template: a Task's workspace runs for real,
    through pause and resume."""
    kube, ns = installed.real.kube, TEAM
    explain = installed.explain(ns, "real")
    create_task(kube, ns, "real", prompt="Write hello.txt", template="taskpod-sim")
    task = wait_for(lambda: delivered(kube, ns, "real"), 120, "the prompt delivered", explain=explain)
    assert task["status"]["phase"] == "Active"
    pod = kube.core.read_namespaced_pod("real-0", ns)
    assert pod.spec.node_name == socket.gethostname()
    assert pod.status.container_statuses[0].state.running is not None  # a container really runs
    # The agent keeps its state on the volume, as the uid of the image (fsGroup makes it writable).
    state_file = "/workspace/.taskpod/agentapi-state.json"

    def exec_cat() -> str:
        return installed.real.kubectl("exec", "-n", ns, "real-0", "--", "cat", state_file)

    wait_for(lambda: "Write hello.txt" in exec_cat(), 30)

    _pause(kube, ns, "real", True)
    paused = wait_for(lambda: phase_is(kube, ns, "real", "Paused"), 90, "Paused", explain=explain)
    wait_for(lambda: not _pods(kube, ns, "real"), 60, "the pod gone")
    snapshot = kube.core.read_namespaced_config_map(paused["status"]["logSnapshot"]["configMap"], ns)
    assert "Write hello.txt" in json.dumps(snapshot.data)

    _pause(kube, ns, "real", False)
    resumed = wait_for(lambda: phase_is(kube, ns, "real", "Active"), 120, "Active again", explain=explain)
    assert resumed["status"]["workspace"]["lifetime"] == 2
    assert "Write hello.txt" in exec_cat()  # the first lifetime's files are still on the volume
    messages = httpx.get(f"http://{kube.core.read_namespaced_pod('real-0', ns).status.pod_ip}:3284/messages")
    assert prompts_in(messages.json()["messages"], "Write hello.txt") == 1
    _delete(installed, ns, "real")


def _pods(kube: Kube, ns: str, task: str) -> list[Any]:
    return list(kube.core.list_namespaced_pod(ns, label_selector=f"taskpod.dev/task={task}").items)


def _delete(installed: Installed, ns: str, name: str) -> None:
    """Delete the Task as a user does; every object of its workspace, its volume included, goes with it."""
    kube = installed.real.kube
    selector, claim = f"taskpod.dev/task={name}", workspace.names(name).claim

    def gone() -> bool:
        return not (
            kube.core.list_namespaced_pod(ns, label_selector=selector).items
            or kube.core.list_namespaced_persistent_volume_claim(ns, label_selector=selector).items
            or kube.core.list_namespaced_config_map(ns, label_selector=selector).items
            or [
                pv
                for pv in kube.core.list_persistent_volume().items
                if pv.spec.claim_ref and pv.spec.claim_ref.namespace == ns and pv.spec.claim_ref.name == claim
            ]
        )

    assert not gone()  # its claim and snapshot at least: what follows is not vacuous
    installed.real.kubectl("delete", "task", name, "-n", ns, "--wait=true", timeout=120)
    wait_for(gone, 120, "the workspace gone with its task")


class Transitions(threading.Thread):
    """What `kubectl get task -w` would show of one task: each distinct (phase, state) in order."""

    def __init__(self, kube: Kube, ns: str, name: str) -> None:
        super().__init__(daemon=True)
        self.kube, self.ns, self.name = kube, ns, name
        self.seen: list[tuple[str, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        api = tasks_api(self.kube)
        while not self.stopped.is_set():
            stream = watch.Watch().stream(
                api.list_namespaced_custom_object, "taskpod.dev", "v1alpha1", self.ns, "tasks",
                field_selector=f"metadata.name={self.name}", timeout_seconds=5,
            )  # fmt: skip
            try:
                for event in stream:
                    status = event["object"].get("status") or {}
                    now = (status.get("phase", ""), (status.get("state") or {}).get("state", ""))
                    if not self.seen or self.seen[-1] != now:
                        self.seen.append(now)
            except Exception:  # the watch broke (its test failed, the cluster went): watch again, or stop
                time.sleep(0.5)

    def phases(self) -> list[str]:
        return [p for i, (p, _) in enumerate(self.seen) if p and (i == 0 or self.seen[i - 1][0] != p)]


@pytest.fixture
def transitions(installed: Installed) -> Iterator[Transitions]:
    """What a watch of the task "hello" in the team's namespace sees, from before it exists."""
    watching = Transitions(installed.real.kube, TEAM, "hello")
    watching.start()
    yield watching
    watching.stopped.set()


@pytest.mark.timeout(1200)
def test_claude_code_does_a_task_as_the_chart_installs_it(
    installed: Installed, model: str, transitions: Transitions, tmp_path: Path
) -> None:
    """Claude Code in the workspace image, driven by the model stand-in, under the chart's operator pod: it
    writes hello.txt on the volume, reports complete through the report tool, and keeps its files and its
    conversation's record through a pause. No human answers anything at its first start."""
    kube, ns, real = installed.real.kube, TEAM, installed.real
    explain = installed.explain(ns, "hello")

    def requests() -> list[dict[str, Any]]:
        """What the agent asked the model, in order."""
        recorded = httpx.get(model.replace(str(GATEWAY), "127.0.0.1") + "/_requests").json()
        return [r for r in recorded if r["path"] == "/v1/messages"]

    manifest = {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": "hello", "namespace": ns},
        "spec": {"prompt": "Write hello.txt, please"},
    }
    real.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    wait_for(lambda: delivered(kube, ns, "hello"), 180, "the prompt delivered", explain=explain)
    done = wait_for(
        lambda: (
            (t := get_task(kube, ns, "hello"))["status"].get("state", {}).get("state") == "idle"
            and "I wrote hello.txt" in t["status"]["state"].get("message", "")
            and t
        ),
        120,
        "the agent idle, with its own words",
        explain=explain,
    )
    assert done["status"]["agent"]["type"] == "claude"
    # The way up, in order. Status folds a step shorter than its hold (a second) into the next write: with
    # the images cached, the pod can be Running and Ready within a second of starting, so Initializing
    # may not be written at all (seen here once in five runs).
    up = transitions.phases()[:3]
    assert up[:2] == ["Pending", "Initializing"] or up[:2] == ["Pending", "Active"], transitions.seen
    assert "Active" in up, transitions.seen
    # The recorder's watch restarts every 5 s, so it may show idle a moment after the GET above did.
    wait_for(lambda: any(s == "idle" for _, s in transitions.seen), 15, "the watch to show idle too")
    states = [s for _, s in transitions.seen if s]
    assert "working" in states and states.index("working") < len(states) - 1 - states[::-1].index("idle"), (
        states
    )
    assert real.kubectl("exec", "-n", ns, "hello-0", "--", "cat", "/workspace/hello.txt") == "hello ✓\n"
    # The agent was offered the report tool with no setup.
    tools = {t["name"] for r in requests() for t in r["body"].get("tools") or []}
    assert REPORT_TOOL in tools, sorted(tools)

    # Through the API server's pod proxy to the real pod, as a user's plugin goes.
    logs = installed.task_cli("logs", "hello", "-n", ns, "-o", "json")
    said = [(m["role"], m["content"]) for m in json.loads(logs)["messages"]]
    assert any(role == "user" and "Write hello.txt, please" in text for role, text in said), said
    assert any(role == "agent" and "I wrote hello.txt" in text for role, text in said), said
    installed.task_cli("send", "hello", "Report that you are done.", "-n", ns)
    reported = wait_for(
        lambda: (
            (t := get_task(kube, ns, "hello"))["status"].get("state", {}).get("state") == "complete" and t
        ),
        120,
        "STATE complete, from the agent's report",
        explain=explain,
    )
    assert reported["status"]["state"]["message"] == "hello.txt is written ✓"
    wait_for(lambda: any("Reported." in t for _, t in _live(installed, ns)), 60, "the agent's last words")

    # The first lifetime's last request holds the whole conversation: each input in it once.
    last = requests()[-1]["body"]["messages"]
    for given in ("Write hello.txt, please", "Report that you are done."):
        assert sum(given in json.dumps(m) for m in last if m["role"] == "user") == 1, given
    before_pause = len(requests())

    _pause(kube, ns, "hello", True)
    paused = wait_for(lambda: phase_is(kube, ns, "hello", "Paused"), 90, "Paused", explain=explain)
    assert not _pods(kube, ns, "hello")
    assert kube.core.list_namespaced_persistent_volume_claim(
        ns, label_selector="taskpod.dev/task=hello"
    ).items
    snapshot = kube.core.read_namespaced_config_map(paused["status"]["logSnapshot"]["configMap"], ns)
    kept = json.loads(snapshot.data["snapshot.json"])["data"]["messages"]  # as AgentAPI parsed the screen
    (tmp_path / "snapshot.json").write_text(json.dumps(kept, indent=1))
    seen = [(m["role"], m["content"][:200]) for m in kept]
    assert any(m["role"] == "user" and "Write hello.txt, please" in m["content"] for m in kept), seen
    assert any(m["role"] == "agent" and "I wrote hello.txt" in m["content"] for m in kept), seen
    assert any(m["role"] == "user" and "Report that you are done." in m["content"] for m in kept), seen

    _pause(kube, ns, "hello", False)
    resumed = wait_for(lambda: phase_is(kube, ns, "hello", "Active"), 180, "Active again", explain=explain)
    assert resumed["status"]["workspace"]["lifetime"] == 2
    assert "Error" not in transitions.phases(), transitions.seen  # a real pod's exit on a pause is no failure
    assert real.kubectl("exec", "-n", ns, "hello-0", "--", "cat", "/workspace/hello.txt") == "hello ✓\n"
    time.sleep(5)  # a prompt sent again would be asked of the model by now
    asked = requests()[before_pause:]
    assert not asked or all(_user_turns(r).count("Write hello.txt, please") <= 1 for r in asked), (
        "the resumed agent was given the prompt again"
    )

    # The conversation survived the pause (claude --continue): a new message reaches the model with the
    # earlier turns before it, each once.
    before_send = len(requests())
    installed.task_cli("send", "hello", "What did you write?", "-n", ns)
    conversation = wait_for(
        lambda: next(
            (
                r
                for r in requests()[before_send:]
                if r["body"].get("tools") and "What did you write?" in json.dumps(r["body"]["messages"])
            ),
            None,
        ),
        60,
        "the resumed agent asking the model, its tools offered (its conversation, not a side request)",
        explain=explain,
    )
    turns = _user_turns(conversation)
    # (Claude Code may put a <system-reminder> of its own before a turn's words.)
    holding = {
        given: [i for i, turn in enumerate(turns) if given in turn]
        for given in ("Write hello.txt, please", "Report that you are done.", "What did you write?")
    }
    assert all(len(at) == 1 for at in holding.values()), (holding, turns)
    assert holding["Write hello.txt, please"] < holding["What did you write?"], turns
    # kubectl task logs: both lifetimes, each message once, the second's after the first's.
    wait_for(lambda: any(r == "agent" for r, _ in _live(installed, ns)[-1:]), 60, "the agent's answer")
    shown = json.loads(installed.task_cli("logs", "hello", "-n", ns, "-o", "json"))["messages"]
    lifetimes = [m["lifetime"] for m in shown]
    assert lifetimes == sorted(lifetimes) and {1, 2} <= set(lifetimes), shown
    users = [(m["lifetime"], m["content"]) for m in shown if m["role"] == "user"]
    assert [u for u in users if "What did you write?" in u[1]] == [(2, "What did you write?")], users
    assert sum("Write hello.txt, please" in text for _, text in users) == 1, users
    table = installed.task_cli("logs", "hello", "-n", ns)
    assert "── lifetime 1" in table and "── lifetime 2" in table, table
    _delete(installed, ns, "hello")


def _user_turns(request: dict[str, Any]) -> list[str]:
    """The text of each user turn a request to the model carried (tool results left out)."""
    turns = []
    for message in request["body"]["messages"]:
        if message["role"] != "user":
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text").strip()
        if text:
            turns.append(text)
    return turns


FORGE_TOKEN = "ghp_real-node-Tök€n-0123456789"


@pytest.fixture
def forge(installed: Installed, tmp_path: Path) -> Iterator[GitServer]:
    """A forge on this machine, which pods reach on the bridge, wanting a token; the team's Secret
    holds it, and a template "with-forge" (the chart's default with a repository.secretRef) names it."""
    (tmp_path / "forge").mkdir()
    kube = installed.real.kube
    api = tasks_api(kube)
    default = api.get_namespaced_custom_object("taskpod.dev", "v1alpha1", TEAM, "tasktemplates", "default")
    spec = {**default["spec"], "repository": {"secretRef": {"name": "forge"}, "push": True}}
    template = {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "TaskTemplate",
        "metadata": {"name": "with-forge"},
    }
    api.create_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", TEAM, "tasktemplates", {**template, "spec": spec}
    )
    for name, token in (("forge", FORGE_TOKEN), ("forge-wrong", "ghp_wrong-token-9876543210")):
        secret = {
            "metadata": {"name": name},
            "type": "kubernetes.io/basic-auth",
            "stringData": {"password": token},
        }
        kube.core.create_namespaced_secret(TEAM, secret)
    with GitServer(tmp_path / "forge", FORGE_TOKEN, host="0.0.0.0") as server:
        yield server
    api.delete_namespaced_custom_object("taskpod.dev", "v1alpha1", TEAM, "tasktemplates", "with-forge")
    for name in ("forge", "forge-wrong"):
        kube.core.delete_namespaced_secret(name, TEAM)


@pytest.mark.timeout(900)
def test_claude_code_works_on_a_checkout_of_the_tasks_repository(
    installed: Installed, forge: GitServer
) -> None:
    """A task with a repository: cloned with the token from the Secret before the agent starts, the agent
    commits in the checkout on its working branch, and a pause and resume neither clone again nor lose the
    commit. A wrong token is the task's Error, in git's words and with no token in it."""
    kube, ns, real = installed.real.kube, TEAM, installed.real
    base = forge.create("shop", {"README.md": "# Shop\n", "src/app.py": "print('shop')\n"})
    url = forge.url("shop", host=str(GATEWAY))
    explain = installed.explain(ns, "shop")
    create_task(
        kube, ns, "shop", prompt="Fix the README, then commit", template="with-forge", repository={"url": url}
    )
    wait_for(
        lambda: (
            "committed it" in ((get_task(kube, ns, "shop")["status"].get("state") or {}).get("message") or "")
        ),
        240,
        "the agent idle, saying it committed",
        explain=explain,
    )
    assert [r.authorized for r in forge.requests][:2] == [False, True]  # asked, then given the token
    # Status shows what the agent did, as the workspace reports it: one commit ahead, one file changed.
    shown = wait_for(
        lambda: ((t := get_task(kube, ns, "shop"))["status"].get("repository") or {}).get("ahead") == 1 and t,
        60,
        "status.repository one commit ahead",
        explain=explain,
    )["status"]["repository"]
    assert (shown["url"], shown["branch"], shown["base"]) == (url, "taskpod/shop", base)
    assert (shown["filesChanged"], shown["insertions"], shown["deletions"], shown["uncommitted"]) == (
        1,
        1,
        1,
        0,
    )
    installed.task_cli("send", "shop", "Report that you are done.", "-n", ns)
    reported = wait_for(
        lambda: (t := get_task(kube, ns, "shop"))["status"].get("state", {}).get("state") == "complete" and t,
        120,
        "the agent's report, with its pull request",
        explain=explain,
    )
    assert reported["status"]["state"]["message"] == "README fixed, one commit"
    assert reported["status"]["state"]["uri"] == "https://forge.example/acme/shop/pull/1"
    # repository.push: the report tool pushed the branch before it reported complete.
    pushed = wait_for(
        lambda: (get_task(kube, ns, "shop")["status"].get("repository") or {}).get("pushed"),
        60,
        "the push in status",
        explain=explain,
    )
    assert pushed["branch"] == "taskpod/shop"
    assert git("rev-parse", "refs/heads/taskpod/shop", cwd=forge.root / "shop.git") == pushed["commit"]
    changes = installed.task_cli("diff", "shop", "-n", ns)
    assert "+# Shop, fixed ✓" in changes and "-# Shop" in changes, changes
    described = installed.task_cli("status", "shop", "-n", ns)
    assert "https://forge.example/acme/shop/pull/1" in described, described
    assert "taskpod/shop, 1 commit ahead" in described, described

    def git_in_pod(*args: str) -> str:
        return real.kubectl(
            "exec", "-n", ns, "shop-0", "-c", "agent", "--", "git", "-C", "/workspace/shop", *args
        )

    assert git_in_pod("branch", "--show-current").strip() == "taskpod/shop"
    assert git_in_pod("rev-parse", "refs/taskpod/base").strip() == base
    log = git_in_pod("log", "--format=%s", "refs/taskpod/base..HEAD").splitlines()
    assert log == ["Fix the README"]  # the agent's commit, made in the checkout it started in
    assert git_in_pod("show", "HEAD:README.md") == "# Shop, fixed ✓\n"
    assert shown["head"] == git_in_pod("rev-parse", "HEAD").strip()
    # The token reached only the clone step: not the agent's environment, nor the checkout.
    env = real.kubectl("exec", "-n", ns, "shop-0", "-c", "agent", "--", "env")
    assert FORGE_TOKEN not in env + git_in_pod("config", "--list")
    head = git_in_pod("rev-parse", "HEAD").strip()

    asked = len(forge.requests)
    _pause(kube, ns, "shop", True)
    wait_for(lambda: phase_is(kube, ns, "shop", "Paused"), 90, "Paused", explain=explain)
    paused = get_task(kube, ns, "shop")["status"]
    assert paused["repository"]["head"] == head  # a paused task still shows what it did
    assert "taskpod/shop, 1 commit ahead of" in installed.task_cli("diff", "shop", "-n", ns)
    assert paused["repository"]["reportedAt"] >= reported["status"]["repository"]["reportedAt"]
    _pause(kube, ns, "shop", False)
    resumed = wait_for(lambda: phase_is(kube, ns, "shop", "Active"), 180, "Active again", explain=explain)
    assert resumed["status"]["workspace"]["lifetime"] == 2
    assert git_in_pod("rev-parse", "HEAD").strip() == head
    assert len(forge.requests) == asked  # not cloned again: the forge was not even asked
    again = installed.task_cli("push", "shop", "-n", ns)  # on demand, nothing new: the same commit
    assert f"pushed taskpod/shop at {head[:12]}" in again, again
    clone_log = real.kubectl("logs", "-n", ns, "shop-0", "-c", "clone")
    assert "is a checkout already; not cloning again" in clone_log

    def with_secret(name: str, secret: str) -> dict[str, Any]:
        """A task of the forge's template whose credentials are the Secret `secret`, once it is Error."""
        repository = {"url": url, "secretRef": {"name": secret}}
        create_task(kube, ns, name, prompt="Fix the README", template="with-forge", repository=repository)
        explain = installed.explain(ns, name)
        return wait_for(lambda: phase_is(kube, ns, name, "Error"), 120, "Error", explain=explain)

    failed = with_secret("denied", "forge-wrong")
    message = failed["status"]["message"]
    assert message.startswith(f"The repository {url} could not be cloned: git fetch failed: "), message
    assert "Authentication failed" in message, message
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=denied").items
    assert any(e.reason == "CloneFailed" for e in events), [(e.reason, e.message) for e in events]
    shown = json.dumps(failed["status"]) + " ".join(e.message or "" for e in events)
    shown += real.kubectl("logs", "-n", ns, "denied-0", "-c", "clone")
    assert "ghp_wrong-token" not in shown and FORGE_TOKEN not in shown
    _delete(installed, ns, "denied")

    # A Secret not there yet is named in the Error; once it is created, the kubelet's next try clones.
    failed = with_secret("later", "forge-later")
    assert failed["status"]["message"] == (
        f"The repository {url} could not be cloned: The credentials Secret forge-later cannot be used: "
        "it is missing, or holds none of the keys password, token and ssh-privatekey"
    ), failed["status"]["message"]
    secret = {"metadata": {"name": "forge-later"}, "stringData": {"token": FORGE_TOKEN}}
    kube.core.create_namespaced_secret(TEAM, secret)
    try:
        wait_for(
            lambda: phase_is(kube, ns, "later", "Active"),
            240,
            "Active once the Secret is there",
            explain=installed.explain(ns, "later"),
        )
    finally:
        kube.core.delete_namespaced_secret("forge-later", TEAM)
    _delete(installed, ns, "later")
    _delete(installed, ns, "shop")


def _live(installed: Installed, ns: str) -> list[tuple[str, str]]:
    out = installed.task_cli("logs", "hello", "-n", ns, "-o", "json")
    return [(m["role"], m["content"]) for m in json.loads(out)["messages"]]


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
