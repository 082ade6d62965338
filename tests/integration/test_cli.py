"""`kubectl task`, run as a user runs it: the real kubectl finds the plugin on PATH, against the real
control plane, with the operator and the workspace simulator playing the agents."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.cells import cell_len

from tests.support import (
    SIM,
    Kube,
    Operator,
    create_task,
    create_template,
    get_task,
    phase_is,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.local_pods]
BIN = Path(sys.executable).parent  # where the venv installed kubectl-task


class Run:
    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.code, self.out, self.err = result.returncode, result.stdout, result.stderr

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


def kubectl_task(
    kube: Kube,
    *args: str,
    stdin: str | None = None,
    kubeconfig: Path | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> Run:
    """`kubectl task ARGS` with the venv's bin on PATH, as after `pip install taskpod`."""
    from localkube import binaries

    env_extra, env = (
        env,
        {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "KUBECONFIG": str(kubeconfig or kube.kubeconfig),
        },
    )
    if not kube.proxyable_pods():
        env["TASKPOD_AGENT_TRANSPORT"] = "direct"  # loopback pod IPs: the API server won't proxy there
    env.pop("ANTHROPIC_API_KEY", None)  # names from the prompt: no network
    env.update(env_extra or {})
    result = subprocess.run(
        [str(binaries.ensure("kubectl")), "task", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Run(result)


def ok(run: Run) -> Run:
    assert run.code == 0, run
    assert "Traceback" not in run.err, run
    return run


@pytest.fixture
def template(kube: Kube, namespace: str) -> str:
    agent = {"work_seconds": 1, "reply": "Fixed: the login test waits for the session now."}
    create_template(kube, namespace, "sim", annotations={SIM: json.dumps(agent)})
    return "sim"


def test_a_task_through_its_life_from_the_command_line(
    kube: Kube, namespace: str, template: str, simulator: object, operator: Operator
) -> None:
    n = ("-n", namespace)
    name = ok(kubectl_task(kube, "create", "Fix the flaky login test", *n, "-q")).out.strip()
    assert re.fullmatch(r"fix-the-flaky-login-test-[0-9a-f]{4}", name), name
    assert get_task(kube, namespace, name)["spec"]["displayName"] == "Fix the flaky login test"

    listed = ok(kubectl_task(kube, "list", *n)).out.splitlines()
    assert re.split(r"\s{2,}", listed[0]) == ["NAME", "STATUS", "STATE", "STATE CHANGED", "MESSAGE"]
    assert listed[1].startswith(name)

    status = ok(kubectl_task(kube, "status", name, *n, "--watch"))
    assert re.search(r"^Status:\s+Active$", status.out, re.M), status
    assert re.search(r"^State:\s+idle \(", status.out, re.M), status

    logs = ok(kubectl_task(kube, "logs", name, *n))
    assert "Fix the flaky login test" in logs.out and "Fixed: the login test" in logs.out
    assert "Snapshot" not in logs.err
    live = json.loads(ok(kubectl_task(kube, "logs", name, *n, "-o", "json")).out)
    assert live["snapshot"] is False
    assert [m["role"] for m in live["messages"]][-2:] == ["user", "agent"]

    ok(kubectl_task(kube, "send", name, "Also run the signup test", *n))
    wait_for(
        lambda: "Also run the signup test" in ok(kubectl_task(kube, "logs", name, *n)).out,
        30,
        "the input in the logs",
    )

    paused = ok(kubectl_task(kube, "pause", name, *n))
    assert re.search(
        rf"task {name} paused; its snapshot holds \d+ messages, the conversation as of ", paused.out
    ), paused
    snap = ok(kubectl_task(kube, "logs", name, *n))
    assert f"Snapshot of task {name}, taken " in snap.err
    assert "Also run the signup test" in snap.out
    snap_json = json.loads(ok(kubectl_task(kube, "logs", name, *n, "-o", "json")).out)
    assert snap_json["snapshot"] is True and snap_json["snapshot_at"]
    assert get_task(kube, namespace, name)["status"]["logSnapshot"]["takenAt"] == snap_json["snapshot_at"]

    ok(kubectl_task(kube, "prompt", name, "Fix the flaky login test, then the signup test", *n))
    assert ok(kubectl_task(kube, "prompt", name, *n)).out.strip() == (
        "Fix the flaky login test, then the signup test"
    )
    resumed = ok(kubectl_task(kube, "resume", name, *n))
    assert f"task {name} resumed" in resumed.out
    ok(kubectl_task(kube, "status", name, *n, "--watch"))
    after = json.loads(ok(kubectl_task(kube, "logs", name, *n, "-o", "json")).out)["messages"]
    users = [m["content"].strip() for m in after if m["role"] == "user"]
    assert users == [
        "Fix the flaky login test",
        "Also run the signup test",
        "Fix the flaky login test, then the signup test",
    ]

    deleted = ok(kubectl_task(kube, "delete", name, *n, "-y"))
    assert f"task {name} deleted" in deleted.out
    empty = ok(kubectl_task(kube, "list", *n))
    assert empty.out == "" and "No tasks found." in empty.err


def test_create_reads_stdin_and_list_filters_and_prints_json(
    kube: Kube, namespace: str, template: str, simulator: object, operator: Operator
) -> None:
    n = ("-n", namespace)
    prompt = "修复登录测试 🚀\nand say what you changed"
    name = ok(kubectl_task(kube, "create", "--stdin", "--paused", *n, "-q", stdin=prompt)).out.strip()
    task = get_task(kube, namespace, name)
    assert task["spec"]["prompt"] == prompt and task["spec"]["paused"] is True
    assert task["spec"]["displayName"] == "修复登录测试 🚀"
    ok(kubectl_task(kube, "create", "Upgrade the ORM", "--name", "orm", "--display-name", "ORM upgrade", *n))
    repo = ("--repo", "git@forge.example.com:acme/shop.git", "--ref", "v1.2", "--branch", "fix/login")
    ok(kubectl_task(kube, "create", "Fix the login", "--name", "login", "--paused", *repo, *n))
    assert get_task(kube, namespace, "login")["spec"]["repository"] == {
        "url": "git@forge.example.com:acme/shop.git",
        "ref": "v1.2",
        "branch": "fix/login",
    }
    ok(kubectl_task(kube, "delete", "login", *n, "-y"))
    wait_for(lambda: phase_is(kube, namespace, name, "Paused"), 60, "the paused task to be Paused")

    paused = ok(kubectl_task(kube, "list", *n, "--status", "paused", "-c", "name,display-name,status"))
    header, *rows = paused.out.splitlines()
    assert [re.split(r"\s{3,}", row) for row in rows] == [[name, "修复登录测试 🚀", "Paused"]]
    # Columns line up on a terminal, where each CJK character and the emoji take two cells.
    assert cell_len(rows[0].split("Paused")[0]) == cell_len(header.split("STATUS")[0])
    items = json.loads(ok(kubectl_task(kube, "ls", *n, "-o", "json")).out)["items"]
    assert {i["metadata"]["name"] for i in items} == {name, "orm"}
    everywhere = ok(kubectl_task(kube, "list", "-A", "-o", "name")).out.splitlines()
    assert f"task.taskpod.dev/{name}" in everywhere

    # --edit opens $EDITOR on the prompt (here a non-interactive one) and keeps what it saved.
    edited = kubectl_task(kube, "prompt", name, "--edit", *n, env={"EDITOR": "sed -i -e s/say/tell/"})
    assert "prompt changed" in ok(edited).out
    assert get_task(kube, namespace, name)["spec"]["prompt"] == "修复登录测试 🚀\nand tell what you changed"


def test_context_and_its_namespace_are_honoured_like_kubectl(
    kube: Kube, namespace: str, template: str, tmp_path: Path
) -> None:
    create_task(kube, namespace, "here", template=template, paused=True)
    config = yaml.safe_load(kube.kubeconfig.read_text())
    context = config["contexts"][0]
    config["contexts"].append({"name": "team", "context": {**context["context"], "namespace": namespace}})
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))

    assert ok(kubectl_task(kube, "list", "--context", "team", "-o", "name", kubeconfig=path)).out == (
        "task.taskpod.dev/here\n"
    )
    default = kubectl_task(kube, "list", "-o", "name", kubeconfig=path)  # the current context: default ns
    assert default.out == "" and "No tasks found." in default.err
    wrong = kubectl_task(kube, "list", "--context", "nope", kubeconfig=path)
    assert wrong.code == 1 and "context 'nope' not found" in wrong.err


def test_logs_follow_prints_messages_as_they_come_until_the_task_pauses(
    kube: Kube, namespace: str, template: str, simulator: object, operator: Operator
) -> None:
    n = ("-n", namespace)
    create_task(kube, namespace, "live", template=template)
    wait_for(lambda: phase_is(kube, namespace, "live", "Active"), 60, "Active")
    ok(kubectl_task(kube, "status", "live", *n, "--watch"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "KUBECONFIG": str(kube.kubeconfig)}
    if not kube.proxyable_pods():
        env["TASKPOD_AGENT_TRANSPORT"] = "direct"
    follow = subprocess.Popen(
        [str(BIN / "kubectl-task"), "logs", "live", *n, "-f", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert follow.stdout is not None
        seen = [json.loads(follow.stdout.readline()) for _ in range(3)]  # greeting, prompt, answer
        assert [m["role"] for m in seen] == ["agent", "user", "agent"]
        ok(kubectl_task(kube, "send", "live", "One more thing", *n))
        more = [json.loads(follow.stdout.readline()) for _ in range(2)]
        assert (more[0]["role"], more[0]["content"].strip()) == ("user", "One more thing")
        assert more[1]["role"] == "agent" and more[1]["id"] == seen[-1]["id"] + 2
        ok(kubectl_task(kube, "pause", "live", *n))
        _, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0 and "no longer Active; stopped following" in err, err


def test_bad_usage_is_one_line_and_a_non_zero_exit(
    kube: Kube, namespace: str, template: str, simulator: object, operator: Operator, tmp_path: Path
) -> None:
    n = ("-n", namespace)

    def fails(run: Run, code: int, says: str) -> None:
        assert run.code == code, run
        assert run.err.count("\n") == 1 and run.err.startswith("error: "), run
        assert says in run.err, run

    fails(kubectl_task(kube, "status", "nope", *n), 1, f'"nope" not found in namespace {namespace}')
    fails(kubectl_task(kube, "logs", "nope", "-n", "no-such-namespace"), 1, "not found in namespace")
    fails(kubectl_task(kube, "create", "", *n), 2, "the prompt is empty")
    fails(kubectl_task(kube, "create", "--stdin", *n, stdin=" \n"), 2, "the prompt is empty")
    fails(kubectl_task(kube, "create", *n), 2, "no prompt")
    fails(kubectl_task(kube, "create", "Do it", "--name", "Bad_Name", *n), 2, "task names must")
    with_token = kubectl_task(kube, "create", "Do it", "--repo", "https://me:ghp_t0ken@forge/x.git", *n)
    fails(with_token, 2, "with no credentials in it")
    assert "ghp_t0ken" not in with_token.err
    fails(kubectl_task(kube, "create", "Do it", "--repo", "/srv/x.git", *n), 2, "--repo must be an https://")
    fails(kubectl_task(kube, "create", "Do it", "--ref", "-x", *n), 2, "--ref '-x' is not a git branch")
    fails(kubectl_task(kube, "list", *n, "-c", "name,colour"), 2, "unknown column colour")

    dead = tmp_path / "kubeconfig"
    text = kube.kubeconfig.read_text()
    dead.write_text(re.sub(r"server: https://[^\s]+", "server: https://127.0.0.1:9", text))
    fails(kubectl_task(kube, "list", kubeconfig=dead), 1, "cannot reach the cluster at https://127.0.0.1:9")

    create_task(kube, namespace, "busy", template=template)
    wait_for(lambda: phase_is(kube, namespace, "busy", "Active"), 60, "Active")
    fails(kubectl_task(kube, "prompt", "busy", "Something else", *n), 3, "the task must be paused")
    fails(kubectl_task(kube, "resume", "busy", *n), 3, "is not paused")
    assert get_task(kube, namespace, "busy")["spec"]["prompt"] == "Fix the flaky login test"

    create_task(kube, namespace, "broken", template="missing")
    wait_for(lambda: phase_is(kube, namespace, "broken", "Error"), 30, "Error")
    fails(kubectl_task(kube, "logs", "broken", *n), 3, "cannot fetch logs for task in current state: Error")

    create_template(kube, namespace, "other")
    two = "2 TaskTemplates (other, sim): choose one with --template"
    fails(kubectl_task(kube, "create", "Do it", *n), 1, two)
    fails(kubectl_task(kube, "create", "Do it", "--template", "gone", *n), 1, "'gone' not found")


def test_delete_asks_first_and_says_which_it_could_not_delete(
    kube: Kube, namespace: str, template: str, simulator: object, operator: Operator
) -> None:
    n = ("-n", namespace)
    create_task(kube, namespace, "one", template=template, paused=True)
    refused = kubectl_task(kube, "delete", "one", *n)  # no terminal to ask on, and no -y
    assert refused.code == 2 and "pass -y" in refused.err
    assert get_task(kube, namespace, "one")

    mixed = kubectl_task(kube, "delete", "one", "ghost", *n, "-y")
    assert mixed.code == 1, mixed
    assert "task one deleted" in mixed.out and '"ghost" not found' in mixed.err


def test_shell_completion_offers_commands_and_task_names(kube: Kube, namespace: str, template: str) -> None:
    create_task(kube, namespace, "fix-login", template=template, paused=True)
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    complete = str(BIN / "kubectl_complete-task")

    def candidates(*words: str) -> list[str]:
        out = subprocess.run([complete, *words], capture_output=True, text=True, env=env, check=True).stdout
        lines = out.splitlines()
        assert lines[-1] == ":4"  # Cobra's "no file completion"
        return [line.split("\t")[0] for line in lines[:-1]]

    assert {"create", "list", "ls", "logs", "pause", "resume", "send"} <= set(candidates(""))
    assert candidates("logs", "-n", namespace, "fix") == ["fix-login"]
