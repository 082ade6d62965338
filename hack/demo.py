"""make demo: a local control plane, the operator, and one task through its life, shown with kubectl.

Every step prints the kubectl command a user would type, then what it shows. The control plane stays up
afterwards so you can look around; `make cluster-down` stops it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from localkube import binaries
from localkube.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "demo"
TASK = "fix-flaky-login"
JSONPATH_AGENT = "jsonpath=prompt: {.status.prompt}{'\\n'}state:  {.status.state}{'\\n'}"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class Demo:
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
        print(f"$ kubectl get tasks -n {NAMESPACE} --watch", flush=True)
        last, header_shown, deadline = "", False, time.monotonic() + timeout
        while time.monotonic() < deadline:
            phase = self.kubectl(
                "get",
                "task",
                TASK,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.phase}",
                show=False,
                check=False,
            )
            done = until(phase)  # asked before the table is read, so the table shows where it got to
            table = self.kubectl("get", "tasks", "-n", NAMESPACE, show=False)
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
        return self.kubectl("get", "task", TASK, "-n", NAMESPACE, "-o", jsonpath, show=False, check=False)

    def show_logs(self) -> None:
        self.kubectl("task", "logs", TASK, "-n", NAMESPACE, "-c", "role,content")

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
        self.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", show=False)
        self.kubectl("create", "namespace", NAMESPACE)

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
            [sys.executable, "-m", "taskpod", "--namespace", NAMESPACE],
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
        self.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples"))
        self.watch_tasks(lambda phase: phase == "Active")
        self.kubectl("get", "pods,pvc", "-n", NAMESPACE)

        say("The operator delivered the prompt once the agent was stable; the agent works, then goes idle")
        self.watch_tasks(lambda _: self.state() == "idle")
        self.kubectl("get", "task", TASK, "-n", NAMESPACE, "-o", JSONPATH_AGENT)

        say("Pausing the task: a snapshot of its conversation, then its pod deleted; its volume stays")
        self.kubectl(
            "patch", "task", TASK, "-n", NAMESPACE, "--type", "merge", "-p", '{"spec":{"paused":true}}'
        )
        self.watch_tasks(lambda phase: phase == "Paused")
        self.kubectl("wait", "--for=condition=Paused", f"task/{TASK}", "-n", NAMESPACE)
        self.kubectl("get", "pods,pvc,configmaps", "-n", NAMESPACE, "-l", "taskpod.dev/task")
        self.kubectl("get", "task", TASK, "-n", NAMESPACE, "-o", "jsonpath={.status.logSnapshot}")
        print()

        say("Reading the logs while paused: the snapshot, marked as such")
        self.show_logs()

        say("Resuming it: a new pod (lifetime 2) on the same volume claim")
        self.kubectl(
            "patch", "task", TASK, "-n", NAMESPACE, "--type", "merge", "-p", '{"spec":{"paused":false}}'
        )
        self.watch_tasks(lambda phase: phase == "Active")
        self.kubectl("get", "task", TASK, "-n", NAMESPACE, "-o", "jsonpath={.status.workspace}")
        print()
        say("Logs again, live from the agent: the conversation was kept and the prompt not sent twice")
        self.show_logs()

        say("What happened, as the task's Events tell it")
        describe = self.kubectl("describe", "task", TASK, "-n", NAMESPACE, show=False)
        print(f"$ kubectl describe task {TASK} -n {NAMESPACE}   (Events)")
        print(describe[describe.find("Events:") :].rstrip())

        say("The same, the way people use it day to day: the kubectl task plugin")
        self.kubectl("task", "list", "-n", NAMESPACE)
        self.kubectl("task", "status", TASK, "-n", NAMESPACE)

        say("Done. The control plane is still running; look around with:")
        print(f"  export KUBECONFIG={self.kubeconfig}")
        print(f"  {self.kubectl_bin} get tasks -n {NAMESPACE}")
        print(f"  PATH={Path(sys.executable).parent}:$PATH {self.kubectl_bin} task -h")
        print("  make cluster-down    # stops it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=ROOT / ".cluster", help="cluster directory (default .cluster)"
    )
    Demo(parser.parse_args().dir.resolve()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
