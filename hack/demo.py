"""make demo: a local control plane, the operator, and one task through its life, shown with kubectl.

Every step prints the kubectl command a user would type, then what it shows. The control plane stays up
afterwards so you can look around; `make cluster-down` stops it.

`make demo NODE=real` does it for real: a real node (this machine's kubelet, containerd and runc), the
images built from images/*/Dockerfile, taskpod installed with Helm (the operator as a pod), and Claude Code
in the workspace doing the task. Only the language model is a stand-in (hack/modelsim).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from localkube import binaries, images
from localkube.cluster import LocalCluster
from localkube.node import Node

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "demo"
TASK = "fix-flaky-login"
JSONPATH_AGENT = "jsonpath=prompt: {.status.prompt}{'\\n'}state:  {.status.state}{'\\n'}"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class Demo:
    task, namespace = TASK, NAMESPACE

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.kubeconfig = directory / "kubeconfig"
        self.kubectl_bin = str(binaries.ensure("kubectl"))
        os.environ["KUBECONFIG"] = str(self.kubeconfig)  # `kubectl task` acts as the user does
        # kubectl finds the plugin (kubectl-task, installed in the venv) on PATH
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    def kubectl(self, *args: str, show: bool = True, check: bool = True) -> str:
        if show:
            print(f"$ kubectl {' '.join(args)}", flush=True)
        # kubectl takes no flags before a plugin's name; the plugin reads KUBECONFIG like kubectl does
        flags = [] if args[0] == "task" else ["--kubeconfig", str(self.kubeconfig)]
        result = subprocess.run([self.kubectl_bin, *flags, *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        if show and result.stderr.strip():  # kubectl task's notes (e.g. "Snapshot of ...")
            print(result.stderr.rstrip(), flush=True)
        if show and result.stdout.strip():
            print(result.stdout.rstrip(), flush=True)
        return result.stdout

    def watch_tasks(self, until: Callable[[str], bool], timeout: float = 90) -> None:
        """Like `kubectl get tasks -w`: print the table whenever it changes, until `until(phase)`."""
        print(f"$ kubectl get tasks -n {self.namespace} --watch", flush=True)
        last, header_shown, deadline = "", False, time.monotonic() + timeout
        while time.monotonic() < deadline:
            phase = self.kubectl(
                "get",
                "task",
                self.task,
                "-n",
                self.namespace,
                "-o",
                "jsonpath={.status.phase}",
                show=False,
                check=False,
            )
            done = until(phase)  # asked before the table is read, so the table shows where it got to
            table = self.kubectl("get", "tasks", "-n", self.namespace, show=False)
            lines = table.splitlines()
            if len(lines) > 1 and lines[1] != last:
                if not header_shown:
                    print(lines[0])
                    header_shown = True
                print(lines[1], flush=True)
                last = lines[1]
            if done:
                return
            time.sleep(0.3)
        raise SystemExit(f"the task did not get there in {timeout:.0f}s; see {self.directory}/operator.log")

    def state(self) -> str:
        jsonpath = "jsonpath={.status.state.state}"
        return self.kubectl(
            "get", "task", self.task, "-n", self.namespace, "-o", jsonpath, show=False, check=False
        )

    def pause(self, paused: bool) -> None:
        spec = '{"spec":{"paused":%s}}' % ("true" if paused else "false")
        self.kubectl("patch", "task", self.task, "-n", self.namespace, "--type", "merge", "-p", spec)

    def show_logs(self) -> None:
        self.kubectl("task", "logs", self.task, "-n", self.namespace, "-c", "role,content")

    def run(self) -> None:
        say("Starting a local Kubernetes control plane (etcd, kube-apiserver, controllers, kwok nodes)")
        state = LocalCluster(self.directory).up()
        if any(c.startswith("127.") for c in state.pod_cidrs):
            # Loopback pod IPs (no right to add routes here): the API server won't proxy to them.
            os.environ["TASKPOD_AGENT_TRANSPORT"] = "direct"
        self.kubectl("get", "nodes")

        say("Installing the taskpod CRDs")
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self.kubectl(
            "wait", "--for=condition=Established", "crd/tasks.taskpod.dev", "crd/tasktemplates.taskpod.dev"
        )
        self.kubectl("delete", "namespace", self.namespace, "--ignore-not-found", "--wait=true", show=False)
        self.kubectl("create", "namespace", self.namespace)

        say("Starting the workspace simulator (plays each pod's agent) and the operator (python -m taskpod)")
        print(f"  logs: {self.directory}/simulator.log, {self.directory}/operator.log")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "TASKPOD_AGENT_TRANSPORT": "direct"}
        shutil.rmtree(self.directory / "agent-state", ignore_errors=True)  # a fresh namespace, a fresh agent
        simulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentsim",
                "--kubeconfig",
                str(self.kubeconfig),
                "--state-dir",
                str(self.directory / "agent-state"),
            ],
            stdout=(self.directory / "simulator.log").open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        operator = subprocess.Popen(
            [sys.executable, "-m", "taskpod", "--namespace", self.namespace],
            stdout=(self.directory / "operator.log").open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self.story()
        finally:
            for process in (operator, simulator):
                process.terminate()
                process.wait(15)

    def story(self) -> None:
        say("Applying the example TaskTemplate and Task")
        self.kubectl("apply", "-n", self.namespace, "-f", str(ROOT / "examples"))
        self.watch_tasks(lambda phase: phase == "Active")
        self.kubectl("get", "pods,pvc", "-n", self.namespace)

        say("The operator delivered the prompt once the agent was stable; the agent works, then goes idle")
        self.watch_tasks(lambda _: self.state() == "idle")
        self.kubectl("get", "task", self.task, "-n", self.namespace, "-o", JSONPATH_AGENT)

        say("Pausing the task: a snapshot of its conversation, then its pod deleted; its volume stays")
        self.pause(True)
        self.watch_tasks(lambda phase: phase == "Paused")
        self.kubectl("wait", "--for=condition=Paused", f"task/{self.task}", "-n", self.namespace)
        self.kubectl("get", "pods,pvc,configmaps", "-n", self.namespace, "-l", "taskpod.dev/task")
        self.kubectl("get", "task", self.task, "-n", self.namespace, "-o", "jsonpath={.status.logSnapshot}")
        print()

        say("Reading the logs while paused: the snapshot, marked as such")
        self.show_logs()

        say("Resuming it: a new pod (lifetime 2) on the same volume claim")
        self.pause(False)
        self.watch_tasks(lambda phase: phase == "Active")
        self.kubectl("get", "task", self.task, "-n", self.namespace, "-o", "jsonpath={.status.workspace}")
        print()
        say("Logs again, live from the agent: the conversation was kept and the prompt not sent twice")
        self.show_logs()

        say("What happened, as the task's Events tell it")
        describe = self.kubectl("describe", "task", self.task, "-n", self.namespace, show=False)
        print(f"$ kubectl describe task {self.task} -n {self.namespace}   (Events)")
        print(describe[describe.find("Events:") :].rstrip())

        say("The same, the way people use it day to day: the kubectl task plugin")
        self.kubectl("task", "list", "-n", self.namespace)
        self.kubectl("task", "status", self.task, "-n", self.namespace)

        say("Done. The control plane is still running; look around with:")
        print(f"  export KUBECONFIG={self.kubeconfig}")
        print(f"  {self.kubectl_bin} get tasks -n {self.namespace}")
        print(f"  PATH={Path(sys.executable).parent}:$PATH {self.kubectl_bin} task -h")
        print("  make cluster-down    # stops it")


class RealDemo(Demo):
    """The same story on a real node, with the chart's operator pod and Claude Code in the workspace."""

    task, namespace, system = "hello", "demo", "taskpod-system"
    prompt = "Write hello.txt, please"  # what hack/modelsim/scripts/hello.json answers

    def run(self) -> None:
        say("Starting a local control plane with a real node: this machine's kubelet, containerd and runc")
        cluster = LocalCluster(self.directory)
        if cluster.running() and (state := cluster.state()) is not None and state.node != "real":
            raise SystemExit(
                f"{self.directory} runs a control plane with kwok nodes: make cluster-down first"
            )
        cluster.up(node="real")
        self.kubectl("get", "nodes", "-o", "wide")

        say("Building the images from images/*/Dockerfile into the node's containerd (first time: minutes)")
        names = ("operator", "workspace")
        built = dict(zip(names, images.build_all(names, Node(self.directory)), strict=True))
        print("\n".join(f"  {name}" for name in built.values()), flush=True)

        say("Starting the language-model stand-in: Claude Code is real, the model it talks to is scripted")
        port = _free_port()
        print(f"  hack/modelsim on port {port}, scripted by hack/modelsim/scripts/hello.json", flush=True)
        model = subprocess.Popen(
            [sys.executable, "-m", "modelsim", "--port", str(port), "--script", str(SCRIPT)],
            stdout=(self.directory / "modelsim.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        try:
            self.install(built, f"http://{_gateway()}:{port}")
            self.story()
        finally:
            model.terminate()
            model.wait(15)

    def said(self) -> str:
        jsonpath = "jsonpath={.status.state.message}"
        return self.kubectl(
            "get", "task", self.task, "-n", self.namespace, "-o", jsonpath, show=False, check=False
        )

    def install(self, built: dict[str, str], model_url: str) -> None:
        say(
            "Installing taskpod with Helm: the operator as a pod, the default template on the workspace image"
        )
        self.kubectl("delete", "namespace", self.namespace, "--ignore-not-found", "--wait=true", show=False)
        for ns in (self.system, self.namespace):
            if not self.kubectl("get", "namespace", ns, "--ignore-not-found", show=False):
                self.kubectl("create", "namespace", ns)
            self.kubectl("label", "namespace", ns, "--overwrite", *RESTRICTED)  # Pod Security enforced
        self.kubectl(
            "create", "secret", "generic", "anthropic", "-n", self.namespace,
            "--from-literal=ANTHROPIC_API_KEY=sk-ant-demo-not-a-real-key-0000000000",
        )  # fmt: skip
        values = self.directory / "demo-values.json"
        values.write_text(json.dumps(images.chart_values(built, [self.namespace], model_url), indent=2))
        helm = [str(binaries.ensure("helm")), "--kubeconfig", str(self.kubeconfig)]
        command = ["upgrade", "--install", "taskpod", str(ROOT / "charts" / "taskpod"), "-n", self.system]
        print(f"$ helm {' '.join(command)} -f {values} --wait", flush=True)
        result = subprocess.run([*helm, *command, "-f", str(values), "--wait", "--timeout=300s"], text=True)
        if result.returncode != 0:
            raise SystemExit("helm install failed")
        # The image keeps its name (localhost/taskpod-operator:local) when rebuilt, and is never pulled:
        # a pod from an earlier run would go on running the earlier build.
        self.kubectl("rollout", "restart", "deployment/taskpod", "-n", self.system)
        self.kubectl("rollout", "status", "deployment/taskpod", "-n", self.system, "--timeout=180s")
        self.kubectl("get", "pods", "-n", self.system, "-o", "wide")

    def story(self) -> None:
        say("Applying a Task: Claude Code is asked to write hello.txt")
        manifest = self.directory / "hello-task.yaml"
        manifest.write_text(
            "apiVersion: taskpod.dev/v1alpha1\nkind: Task\nmetadata:\n  name: hello\n"
            f"spec:\n  prompt: {self.prompt}\n"
        )
        self.kubectl("apply", "-n", self.namespace, "-f", str(manifest))
        self.watch_tasks(lambda phase: phase == "Active", timeout=300)
        self.kubectl("get", "pods,pvc", "-n", self.namespace, "-o", "wide")

        say("Claude Code works, then goes idle: STATE and MESSAGE are its own")
        self.watch_tasks(lambda _: self.state() == "idle" and "hello.txt" in self.said(), timeout=180)
        self.kubectl("exec", "-n", self.namespace, f"{self.task}-0", "--", "cat", "/workspace/hello.txt")

        say("Asking it for a report with kubectl task send: it calls the report tool the image gives it")
        self.kubectl("task", "send", self.task, "Report that you are done.", "-n", self.namespace)
        self.watch_tasks(lambda _: self.state() == "complete", timeout=180)
        self.show_logs()

        say("Pausing the task: a snapshot of the conversation, then its pod deleted; its volume stays")
        self.pause(True)
        self.watch_tasks(lambda phase: phase == "Paused", timeout=120)
        self.kubectl("get", "pods,pvc,configmaps", "-n", self.namespace, "-l", "taskpod.dev/task")

        say("Resuming it: a new pod on the same volume; the file is still there and nothing is sent twice")
        self.pause(False)
        self.watch_tasks(lambda phase: phase == "Active", timeout=300)
        self.kubectl("exec", "-n", self.namespace, f"{self.task}-0", "--", "cat", "/workspace/hello.txt")
        self.kubectl("task", "status", self.task, "-n", self.namespace)

        say("Done. The control plane, its real node and taskpod are still running; look around with:")
        print(f"  export KUBECONFIG={self.kubeconfig}")
        print(f"  {self.kubectl_bin} get tasks,pods -A")
        print(f"  {self.kubectl_bin} logs -n {self.system} deploy/taskpod")
        print("  make cluster-down    # stops it all and gives the host back as it was")


SCRIPT = Path(__file__).resolve().parent / "modelsim" / "scripts" / "hello.json"
RESTRICTED = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/enforce-version=latest",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _gateway() -> str:
    """The bridge's address on this machine: how the real node's pods reach a server here."""
    from localkube import node

    return str(next(node.POD_SUBNET.hosts()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=ROOT / ".cluster", help="cluster directory (default .cluster)"
    )
    parser.add_argument("--node", choices=("kwok", "real"), default="kwok", help="kwok (default) or real")
    args = parser.parse_args()
    (RealDemo if args.node == "real" else Demo)(args.dir.resolve()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
