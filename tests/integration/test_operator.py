"""The operator's story, as a user lives it: apply a task, watch it run, pause it, resume it, delete it."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import socketserver
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support import (
    ROOT,
    Kube,
    Operator,
    PhaseRecorder,
    condition,
    create_task,
    create_template,
    free_port,
    get_task,
    kubectl,
    patch_task,
    phase_is,
    tasks_api,
    wait_for,
)

pytestmark = pytest.mark.integration


def kubectl_pause(kube: Kube, namespace: str, name: str, paused: bool) -> None:
    """What a user types to pause or resume a task."""
    spec = '{"spec":{"paused":%s}}' % ("true" if paused else "false")
    kubectl(kube, "patch", "task", name, "-n", namespace, "--type", "merge", "-p", spec)


def children(kube: Kube, namespace: str, name: str) -> dict[str, list[str]]:
    selector = f"taskpod.dev/task={name}"
    return {
        "pods": [
            p.metadata.name for p in kube.core.list_namespaced_pod(namespace, label_selector=selector).items
        ],
        "claims": [
            c.metadata.name
            for c in kube.core.list_namespaced_persistent_volume_claim(
                namespace, label_selector=selector
            ).items
        ],
    }


def test_example_goes_from_pending_to_active(kube: Kube, namespace: str, operator: Operator) -> None:
    recorder = PhaseRecorder(kube, namespace, "fix-flaky-login")
    # The example's workspace is admitted where Pod Security `restricted` is enforced, as it ships.
    kubectl(kube, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl(kube, "apply", "-n", namespace, "-f", str(ROOT / "examples"))

    wait_for(
        lambda: phase_is(kube, namespace, "fix-flaky-login", "Active"), 60, "the example task to be Active"
    )
    phases = recorder.stop()
    # Forward only. Initializing may fold into Active: each step's write waits a moment for the next.
    assert phases[0] == "Pending" and phases[-1] == "Active", phases
    assert phases == [p for p in ("Pending", "Initializing", "Active") if p in phases], phases

    table = kubectl(kube, "get", "tasks", "-n", namespace)
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "STATUS", "STATE", "STATE", "CHANGED"]
    assert row.split()[:2] == ["fix-flaky-login", "Active"]

    task = get_task(kube, namespace, "fix-flaky-login")
    assert condition(task, "Ready")["status"] == "True"
    assert task["status"]["workspace"] == {
        "claim": "workspace-fix-flaky-login-0",
        "pod": "fix-flaky-login-0",
        "podIP": kube.core.read_namespaced_pod("fix-flaky-login-0", namespace).status.pod_ip,
        "lifetime": 1,
    }
    assert task["status"]["template"] == {"name": "default", "displayName": "Claude Code", "icon": "🤖"}
    kubectl(kube, "wait", "-n", namespace, "--for=condition=Ready", "task/fix-flaky-login", "--timeout=5s")

    # The workspace is a pod and a claim, both the Task's: garbage collection takes them with it.
    pod = kube.core.read_namespaced_pod("fix-flaky-login-0", namespace)
    claim = kube.core.read_namespaced_persistent_volume_claim("workspace-fix-flaky-login-0", namespace)
    for child in (pod, claim):
        owners = [(o.kind, o.name, o.controller) for o in child.metadata.owner_references or []]
        assert owners == [("Task", "fix-flaky-login", True)], owners
        assert child.metadata.labels["app.kubernetes.io/managed-by"] == "taskpod"
    assert pod.metadata.labels["taskpod.dev/lifetime"] == "1"
    assert [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim] == [
        "workspace-fix-flaky-login-0"
    ]
    assert kube.apps.list_namespaced_stateful_set(namespace).items == []
    assert kube.core.list_namespaced_service(namespace).items == []

    describe = kubectl(kube, "describe", "task", "-n", namespace, "fix-flaky-login")
    assert "WorkspaceCreated" in describe and "PromptDelivered" in describe


def test_pause_keeps_the_volume_and_resume_brings_the_workspace_back(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    create_template(kube, namespace)
    create_task(kube, namespace, "refactor")
    wait_for(lambda: phase_is(kube, namespace, "refactor", "Active"), 60, "Active")
    claim_uid = kube.core.read_namespaced_persistent_volume_claim(
        "workspace-refactor-0", namespace
    ).metadata.uid

    kubectl_pause(kube, namespace, "refactor", paused=True)
    kubectl(kube, "wait", "-n", namespace, "--for=condition=Paused", "task/refactor", "--timeout=60s")
    task = get_task(kube, namespace, "refactor")
    assert task["status"]["phase"] == "Paused"
    assert condition(task, "Ready")["status"] == "False"
    assert children(kube, namespace, "refactor")["pods"] == []
    assert (
        kube.core.read_namespaced_persistent_volume_claim("workspace-refactor-0", namespace).metadata.uid
        == claim_uid
    )
    assert task["status"]["workspace"] == {"claim": "workspace-refactor-0", "lifetime": 1}

    recorder = PhaseRecorder(kube, namespace, "refactor")
    kubectl_pause(kube, namespace, "refactor", paused=False)
    task = wait_for(lambda: phase_is(kube, namespace, "refactor", "Active"), 60, "Active again")
    phases = recorder.stop()
    assert phases[-1] == "Active" and ("Pending" in phases or "Initializing" in phases), phases
    paused = condition(task, "Paused")
    assert paused["status"] == "False", "the Paused condition must not stay True after resume"
    assert task["status"]["workspace"]["lifetime"] == 2
    pod = kube.core.read_namespaced_pod("refactor-0", namespace)
    assert pod.metadata.labels["taskpod.dev/lifetime"] == "2"
    assert (
        kube.core.read_namespaced_persistent_volume_claim("workspace-refactor-0", namespace).metadata.uid
        == claim_uid
    )

    events_say(kube, namespace, "refactor", "Paused", "Resuming")


def test_missing_template_is_an_error_that_heals_when_the_template_appears(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    create_task(kube, namespace, "orphan", template="claude-opus")
    task = wait_for(lambda: phase_is(kube, namespace, "orphan", "Error"), 30, "Error")
    assert 'TaskTemplate "claude-opus" not found' in task["status"]["message"]
    assert condition(task, "Ready")["reason"] == "TemplateNotFound"
    assert children(kube, namespace, "orphan") == {"pods": [], "claims": []}

    create_template(kube, namespace, "claude-opus")
    wait_for(lambda: phase_is(kube, namespace, "orphan", "Active"), 60, "the task to heal")


def events_say(kube: Kube, namespace: str, name: str, *words: str) -> str:
    """`kubectl get events` of the task once it shows every one of `words`: Kopf posts Events from a queue
    of its own, so one can reach the API server a moment after the status write it goes with."""

    def told() -> str | None:
        selector = f"involvedObject.name={name}"
        events = kubectl(kube, "get", "events", "-n", namespace, "--field-selector", selector)
        return events if all(word in events for word in words) else None

    return wait_for(told, 15, f"Events that say {', '.join(words)}")


def error_with_event(kube: Kube, namespace: str, name: str, reason: str) -> dict[str, Any]:
    """Wait for the task to be in Error for `reason`, said in its Ready condition and a Warning Event."""
    task = wait_for(lambda: phase_is(kube, namespace, name, "Error"), 60, "Error")
    assert condition(task, "Ready")["reason"] == reason
    events_say(kube, namespace, name, "Warning", reason)
    return task


def test_an_image_that_cannot_be_pulled_is_an_error_with_the_reason(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    # kwok plays a kubelet that cannot pull the image when the pod carries this annotation.
    create_template(kube, namespace, annotations={"sim.taskpod.dev/container-waiting": "ImagePullBackOff"})
    create_task(kube, namespace, "typo")
    task = error_with_event(kube, namespace, "typo", "ImagePullBackOff")
    assert "ImagePullBackOff" in task["status"]["message"]


def test_a_workspace_the_api_server_refuses_is_an_error_in_its_own_words(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    # The CRD takes any annotation key; the API server refuses this one on the workspace pod.
    create_template(kube, namespace, annotations={"not a key!": "x"})
    create_task(kube, namespace, "refused")
    message = error_with_event(kube, namespace, "refused", "InvalidWorkspace")["status"]["message"]
    assert message.startswith("The API server refuses the workspace pod:") and "not a key!" in message, (
        message
    )


def test_template_and_task_changes_reach_the_workspace(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    create_template(kube, namespace)
    create_task(kube, namespace, "upgrade-orm", env=[{"name": "LOG_LEVEL", "value": "info"}])
    wait_for(lambda: phase_is(kube, namespace, "upgrade-orm", "Active"), 60, "Active")

    def container() -> client.V1Container:
        return kube.core.read_namespaced_pod("upgrade-orm-0", namespace).spec.containers[0]

    tasks_api(kube).patch_namespaced_custom_object(
        "taskpod.dev",
        "v1alpha1",
        namespace,
        "tasktemplates",
        "default",
        {"spec": {"pod": {"image": "example.invalid/agent:2"}}},
        _content_type="application/merge-patch+json",
    )
    wait_for(lambda: container().image == "example.invalid/agent:2", 30, "the template's new image")

    patch_task(kube, namespace, "upgrade-orm", {"env": [{"name": "LOG_LEVEL", "value": "debug"}]})
    wait_for(
        lambda: ("LOG_LEVEL", "debug") in [(e.name, e.value) for e in container().env], 30, "the new env"
    )

    def active_in(lifetime: int) -> dict[str, Any] | None:
        """The task once its status says Active in this lifetime (a status change waits a second)."""
        task = phase_is(kube, namespace, "upgrade-orm", "Active")
        return task if task and task["status"]["workspace"].get("lifetime") == lifetime else None

    # Each change is a new pod (a pod's spec cannot change): lifetime 3.
    wait_for(
        lambda: active_in(3),
        60,
        "Active after the rollout, in lifetime 3",
        explain=lambda: get_task(kube, namespace, "upgrade-orm").get("status"),
    )

    # Someone deletes the pod by hand: the operator starts another, and says so.
    old = kube.core.read_namespaced_pod("upgrade-orm-0", namespace).metadata.uid
    kube.core.delete_namespaced_pod("upgrade-orm-0", namespace)
    wait_for(
        lambda: (
            kube.core.read_namespaced_pod("upgrade-orm-0", namespace).metadata.uid != old
            and phase_is(kube, namespace, "upgrade-orm", "Active")
        ),
        60,
        "the pod to be recreated",
    )
    events_say(kube, namespace, "upgrade-orm", "PodReplaced", "PodRecreated")


def test_deleting_the_task_leaves_nothing_behind(kube: Kube, namespace: str, operator: Operator) -> None:
    create_template(kube, namespace)
    create_task(kube, namespace, "cleanup")
    wait_for(lambda: phase_is(kube, namespace, "cleanup", "Active"), 60, "Active")
    assert all(children(kube, namespace, "cleanup").values())

    tasks_api(kube).delete_namespaced_custom_object("taskpod.dev", "v1alpha1", namespace, "tasks", "cleanup")
    wait_for(
        lambda: not any(children(kube, namespace, "cleanup").values()), 60, "every child to be collected"
    )


def test_deletion_does_not_wait_for_the_operator(kube: Kube, namespace: str, operator: Operator) -> None:
    create_template(kube, namespace)
    create_task(kube, namespace, "no-finalizer")
    wait_for(lambda: phase_is(kube, namespace, "no-finalizer", "Active"), 60, "Active")
    assert not get_task(kube, namespace, "no-finalizer")["metadata"].get("finalizers")
    operator.kill()
    tasks_api(kube).delete_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", namespace, "tasks", "no-finalizer"
    )
    wait_for(lambda: not any(children(kube, namespace, "no-finalizer").values()), 60, "children collected")


@pytest.mark.parametrize("moment", ["creating", "pausing"])
def test_a_killed_operator_converges_after_restart(
    kube: Kube, namespace: str, operator: Operator, moment: str
) -> None:
    create_template(kube, namespace)
    rng = random.Random(moment)
    for round_ in range(3):
        name = f"{moment}-{round_}"
        if moment == "creating":
            create_task(kube, namespace, name)
        else:
            create_task(kube, namespace, name)
            wait_for(partial(phase_is, kube, namespace, name, "Active"), 60, "Active")
            patch_task(kube, namespace, name, {"paused": True})
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in the middle of the operator's work
        operator.kill()
        operator.start()
        expected = "Active" if moment == "creating" else "Paused"
        task = wait_for(partial(phase_is, kube, namespace, name, expected), 60, f"{expected} after restart")
        kids = children(kube, namespace, name)
        assert kids["pods"] == ([f"{name}-0"] if moment == "creating" else [])
        assert kids["claims"] == [f"workspace-{name}-0"]
        assert condition(task, "Ready")["status"] == ("True" if expected == "Active" else "False")
        assert condition(task, "Paused")["status"] == ("False" if expected == "Active" else "True")
        assert all(
            c["observedGeneration"] == task["metadata"]["generation"] for c in task["status"]["conditions"]
        )


def exec_kubeconfig(kube: Kube, directory: Path) -> tuple[Path, Path, str]:
    """The test cluster's kubeconfig, its user's credential handed over by a program instead, as cloud
    logins (aws eks get-token, gke-gcloud-auth-plugin) do: an ExecCredential on the program's stdout.
    The program is `cat` of a file, which fails until the caller writes the credential there. Returns
    the kubeconfig, that file, and the credential."""
    config = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    entry = next(u for u in config["users"] if u["name"] == context["user"])
    user = entry["user"]

    def pem(key: str) -> str:
        data = user.get(f"{key}-data")
        return base64.b64decode(data).decode() if data else Path(user[key]).read_text()

    if "token" in user:
        status = {"token": user["token"]}
    else:
        status = {"clientCertificateData": pem("client-certificate"), "clientKeyData": pem("client-key")}
    kind = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}
    credential = directory / "credential.json"
    program = {"apiVersion": kind["apiVersion"], "command": "cat", "args": [str(credential)]}
    entry["user"] = {"exec": program | {"interactiveMode": "Never"}}
    path = directory / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, credential, json.dumps(kind | {"status": status})


def test_an_operator_whose_kubeconfig_logs_in_through_a_program_runs_tasks(
    kube: Kube, namespace: str, crds: list[str], simulator: Path, tmp_path: Path
) -> None:
    """Outside a cluster, a kubeconfig user may log in through an exec plugin. The operator runs it (by
    the kubernetes package) rather than go on as system:anonymous, for Kopf's watch and its own calls.
    While the program gives no credential, the operator says so and runs it again until it does."""
    kubeconfig, credential, answer = exec_kubeconfig(kube, tmp_path)
    op = Operator(kubeconfig, [namespace], tmp_path / "operator.log").start()
    try:
        create_template(kube, namespace)
        create_task(kube, namespace, "through-a-program")
        wait_for(lambda: "which gave no credential" in op.log.read_text(), 30, "the operator to say why")
        credential.write_text(answer)  # the login service is back
        wait_for(partial(phase_is, kube, namespace, "through-a-program", "Active"), 90, "Active")
        patch_task(kube, namespace, "through-a-program", {"paused": True})
        wait_for(partial(phase_is, kube, namespace, "through-a-program", "Paused"), 60, "Paused")
    finally:
        op.stop()
        print(f"--- operator log (last lines) ---\n{op.tail()}")
    assert 'User "system:anonymous"' not in op.log.read_text()  # never let in as nobody


def test_an_operator_stopped_while_it_starts_exits_at_once_and_cleanly(
    kube: Kube, namespace: str, crds: list[str], tmp_path: Path
) -> None:
    """SIGTERM while start-up still waits for the API server (here: for a login): Kopf skips its cleanup
    handlers then, and the operator must still stop its watches and close its connections."""
    kubeconfig, _, _ = exec_kubeconfig(kube, tmp_path)  # its program never answers
    op = Operator(kubeconfig, [namespace], tmp_path / "operator.log").start()
    wait_for(lambda: "which gave no credential" in op.log.read_text(), 30, "the operator to say why")
    assert op.proc is not None
    started = time.monotonic()
    op.proc.terminate()
    assert op.proc.wait(10) == 0
    print(f"stopped in {time.monotonic() - started:.1f}s\n{op.tail()}")
    log = op.log.read_text()
    assert "Unclosed" not in log and "never retrieved" not in log, op.tail()


def forward(port: int, upstream: tuple[str, int]) -> socketserver.ThreadingTCPServer:
    """Open `port` on 127.0.0.1, passing every connection through to `upstream` byte for byte: an API
    server that arrives at an address late (a cluster booting, a tunnel not up yet)."""

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection(upstream) as up:
                back = threading.Thread(target=pump, args=(up, self.request), daemon=True)
                back.start()
                pump(self.request, up)
                back.join()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Pipe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_operator_started_before_its_api_server_says_so_in_a_line_then_runs_tasks(
    kube: Kube, namespace: str, crds: list[str], simulator: Path, tmp_path: Path
) -> None:
    """The API server not there yet when the operator starts: each try of the start-up is one line saying
    what failed, not a traceback, and once the API server answers, the operator runs tasks."""
    if not kube.local:
        pytest.skip("points a copy of the local control plane's kubeconfig at a port of its own")
    config = yaml.safe_load(kube.kubeconfig.read_text())
    (cluster,) = [c["cluster"] for c in config["clusters"]]
    host, _, api_port = cluster["server"].removeprefix("https://").rpartition(":")
    port = free_port()
    cluster["server"] = f"https://127.0.0.1:{port}"
    late = tmp_path / "late.kubeconfig"
    late.write_text(yaml.safe_dump(config))
    op = Operator(late, [namespace], tmp_path / "operator.log").start()
    server = None
    try:
        retry = "'upgrade_from_statefulsets' failed temporarily"
        wait_for(
            lambda: op.log.read_text().count(retry) >= 2, 30, "two tries of the start-up", explain=op.tail
        )
        log = op.log.read_text()
        assert "Traceback" not in log, op.tail()
        assert "listing StatefulSets: Cannot connect to host" in log, op.tail()

        server = forward(port, (host.strip("[]"), int(api_port)))
        create_template(kube, namespace)
        create_task(kube, namespace, "late")
        wait_for(partial(phase_is, kube, namespace, "late", "Active"), 90, "Active", explain=op.tail)
        assert "Traceback" not in op.log.read_text(), op.tail()
    finally:
        op.stop()
        if server is not None:
            server.shutdown()
            server.server_close()


def test_settled_tasks_are_not_rewritten(kube: Kube, namespace: str, operator: Operator) -> None:
    """Many tasks created at once settle: no status or workspace write once nothing changes."""
    create_template(kube, namespace)
    names = [f"quiet-{i}" for i in range(10)]
    for name in names:
        create_task(kube, namespace, name)
    for name in names:
        wait_for(partial(phase_is, kube, namespace, name, "Active"), 90, f"{name} Active")

    def versions() -> dict[str, str]:
        tasks = tasks_api(kube).list_namespaced_custom_object("taskpod.dev", "v1alpha1", namespace, "tasks")
        pods = kube.core.list_namespaced_pod(namespace).items
        return {t["metadata"]["name"]: t["metadata"]["resourceVersion"] for t in tasks["items"]} | {
            f"pod/{p.metadata.name}": p.metadata.resource_version for p in pods
        }

    time.sleep(2)  # let in-flight status updates land
    before = versions()
    time.sleep(5)
    assert versions() == before


def test_a_task_with_the_longest_name_runs_pauses_and_resumes(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    """52 characters, the CRD's limit: the pod (<task>-0), the claim (workspace-<task>-0) and the task
    label on both must all still be valid names and values."""
    name = "a" + "b2-" * 16 + "cde"
    assert len(name) == 52
    create_template(kube, namespace)
    create_task(kube, namespace, name)
    wait_for(lambda: phase_is(kube, namespace, name, "Active"), 60, "Active")
    assert children(kube, namespace, name) == {"pods": [f"{name}-0"], "claims": [f"workspace-{name}-0"]}
    kubectl_pause(kube, namespace, name, paused=True)
    wait_for(lambda: phase_is(kube, namespace, name, "Paused"), 60, "Paused")
    kubectl_pause(kube, namespace, name, paused=False)
    task = wait_for(lambda: phase_is(kube, namespace, name, "Active"), 60, "Active again")
    assert task["status"]["workspace"]["lifetime"] == 2
