"""The agent inside the task: the prompt arrives once, the state follows the agent, a pause keeps a
snapshot of the conversation, and logs read the right source for the phase.

The workspace simulator (hack/agentsim) plays each pod's agent at its pod IP. The operator reaches agents
directly, as it does in-cluster, unless a test says otherwise; taskpod.client.tasks (what the CLI uses) goes
through the API server's pod proxy, as a user's kubectl does, wherever the cluster allows it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskpod import kube as taskkube
from taskpod.client import tasks as taskops
from taskpod.core.agentstate import prompt_sha
from taskpod.core.workspace import credentials_env
from tests.gitserver import GitServer, git
from tests.support import (
    ROOT,
    Kube,
    McpClient,
    Operator,
    agent_messages,
    agent_url,
    condition,
    create_task,
    delivered,
    free_port,
    get_task,
    node_bin,
    patch_task,
    phase_is,
    pod_token,
    prompts_in,
    report_tool,
    sim_config,
    template_with,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.local_pods, pytest.mark.usefixtures("user_credentials")]


def test_prompt_arrives_once_after_the_agent_answers(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, startup_seconds=2, work_seconds=1)
    create_task(kube, namespace, "login", prompt="Fix the flaky login test")
    task = wait_for(partial(delivered, kube, namespace, "login"), 60, "the prompt to be delivered")
    assert task["status"]["phase"] == "Active"
    assert task["status"]["prompt"]["sha256"] == prompt_sha("Fix the flaky login test")
    assert task["status"]["prompt"]["lifetime"] == 1
    assert prompts_in(agent_messages(kube, namespace, "login"), "Fix the flaky login test") == 1


def test_state_goes_working_then_idle_and_a_report_of_complete_stands(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, work_seconds=3, reply="All tests pass now.")
    create_task(kube, namespace, "flaky", prompt="Make the tests pass")

    def state(expected: str) -> dict[str, Any] | None:
        # After the prompt: before it, the agent may already have gone working then idle on its greeting.
        status = get_task(kube, namespace, "flaky").get("status", {})
        s = status.get("state") or {}
        return (
            s
            if s.get("state") == expected and status.get("phase") == "Active" and status.get("prompt")
            else None
        )

    working = wait_for(lambda: state("working"), 60, "STATE working")
    idle = wait_for(lambda: state("idle"), 60, "STATE idle")
    assert idle["timestamp"] > working["timestamp"]
    assert idle["message"] == "All tests pass now."


def test_pause_snapshots_the_newest_messages_within_64_kib(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace)
    create_task(kube, namespace, "big", prompt="Summarise the repo")
    wait_for(partial(delivered, kube, namespace, "big"), 60, "delivered")
    wait_for(
        lambda: agent_messages(kube, namespace, "big")[-1]["content"].startswith("Done:"), 30, "the answer"
    )
    # 50 messages of ~20 KiB (1 MiB) with Unicode, then one of 200 KiB at the end.
    history = [{"role": "agent", "content": f"{i} " + "é漢🙂" * 2700} for i in range(50)]
    history.append({"role": "agent", "content": "start " + "日本" * 34_000 + " the end"})
    sim_config(kube, namespace, "big", append_messages=history)

    patch_task(kube, namespace, "big", {"paused": True})
    task = wait_for(partial(phase_is, kube, namespace, "big", "Paused"), 60, "Paused")
    record = task["status"]["logSnapshot"]
    assert record["configMap"] == "big-snapshot" and record["truncated"] is True
    assert record["messages"] <= 10 and record["bytes"] <= 64 * 1024
    cm = kube.core.read_namespaced_config_map("big-snapshot", namespace)
    envelope = json.loads(cm.data["snapshot.json"])
    assert envelope["format"] == "agentapi"
    messages = envelope["data"]["messages"]
    assert len(envelope["data"]["messages"]) == record["messages"]
    last = messages[-1]["content"]
    assert last.startswith("[taskpod: message truncated") and last.endswith(" the end")
    assert 56 * 1024 - 4 <= len(last.split("]\n", 1)[1].encode()) <= 56 * 1024
    assert "日本" in last and "\ufffd" not in last

    logs = taskkube.run(taskops.logs(namespace, "big"))
    assert logs.snapshot and logs.snapshot_at == record["takenAt"]
    assert logs.messages == messages


def test_logs_are_live_while_active_and_a_conflict_in_error(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, reply="Looking into it.")
    create_task(kube, namespace, "live", prompt="Look into it")
    wait_for(partial(delivered, kube, namespace, "live"), 60, "delivered")

    def replied() -> taskops.Logs | None:
        logs = taskkube.run(taskops.logs(namespace, "live"))
        return logs if logs.messages and logs.messages[-1]["content"] == "Looking into it." else None

    logs = wait_for(replied, 30, "the agent's reply in the live logs")
    assert logs.snapshot is False
    assert [m["content"].strip() for m in logs.messages if m["role"] == "user"] == ["Look into it"]

    create_task(kube, namespace, "broken", template="missing")
    wait_for(partial(phase_is, kube, namespace, "broken", "Error"), 30, "Error")
    with pytest.raises(taskops.TaskConflict, match="cannot fetch logs"):
        taskkube.run(taskops.logs(namespace, "broken"))


def test_an_edited_prompt_is_delivered_once_after_resume(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace)
    create_task(kube, namespace, "orm", prompt="Upgrade the ORM")
    wait_for(partial(delivered, kube, namespace, "orm"), 60, "delivered")
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException, match="the task must be paused to change its prompt"):
        patch_task(kube, namespace, "orm", {"prompt": "Upgrade the ORM to 2.0"})

    patch_task(kube, namespace, "orm", {"paused": True})
    wait_for(partial(phase_is, kube, namespace, "orm", "Paused"), 60, "Paused")
    patch_task(kube, namespace, "orm", {"prompt": "Upgrade the ORM to 2.0"})
    assert condition(get_task(kube, namespace, "orm"), "PromptDelivered")["status"] in ("True", "False")
    patch_task(kube, namespace, "orm", {"paused": False})
    task = wait_for(partial(delivered, kube, namespace, "orm"), 60, "the edited prompt delivered")
    assert task["status"]["prompt"]["lifetime"] == 2
    messages = agent_messages(kube, namespace, "orm")
    assert prompts_in(messages, "Upgrade the ORM to 2.0") == 1
    assert prompts_in(messages, "Upgrade the ORM") == 1  # the conversation survived the pause; no re-send


@pytest.mark.pod_proxy
def test_through_the_pod_proxy_the_operator_delivers_follows_and_snapshots(
    kube: Kube, namespace: str, simulator: object, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transport an operator outside the cluster uses: every agent call goes via pods/proxy."""
    operator.start("--agent-transport", "proxy")
    monkeypatch.delenv("TASKPOD_AGENT_TRANSPORT", raising=False)  # taskpod.client.tasks: the proxy as well
    template_with(kube, namespace, reply="Proxied answer.")
    create_task(kube, namespace, "via", prompt="Answer through the proxy")
    wait_for(partial(delivered, kube, namespace, "via"), 60, "the prompt delivered through the proxy")
    wait_for(
        lambda: (
            (get_task(kube, namespace, "via")["status"].get("state") or {}).get("message")
            == "Proxied answer."
        ),
        30,
        "STATE idle with the agent's answer",
    )
    taskkube.run(taskops.send(namespace, "via", "And once more", progress=lambda _: None))

    def sent() -> taskops.Logs | None:
        live = taskkube.run(taskops.logs(namespace, "via"))
        return live if prompts_in(live.messages, "And once more") == 1 else None

    live = wait_for(sent, 30, "the input in the live logs")
    assert live.snapshot is False and prompts_in(live.messages, "Answer through the proxy") == 1
    # Every call so far reached the agent through the API server's proxy, which adds X-Forwarded-For.
    requests = httpx.get(agent_url(kube, namespace, "via") + "/_sim/log", timeout=5).json()["requests"]
    calls = {(r["method"], r["path"]) for r in requests}
    assert {("GET", "/events"), ("POST", "/message"), ("GET", "/messages")} <= calls
    assert all(r["forwarded_for"] for r in requests), [r for r in requests if not r["forwarded_for"]]

    patch_task(kube, namespace, "via", {"paused": True})
    task = wait_for(partial(phase_is, kube, namespace, "via", "Paused"), 60, "Paused")
    assert task["status"]["logSnapshot"]["messages"] >= 4


def test_send_resumes_a_paused_task_then_delivers_the_input(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, reply="On it.")
    create_task(kube, namespace, "later", prompt="Start the upgrade")
    wait_for(partial(delivered, kube, namespace, "later"), 60, "delivered")
    patch_task(kube, namespace, "later", {"paused": True})
    wait_for(partial(phase_is, kube, namespace, "later", "Paused"), 60, "Paused")

    said: list[str] = []
    taskkube.run(taskops.send(namespace, "later", "Now finish it", timeout=120, progress=said.append))
    assert said[0] == "Resuming task later..."
    assert get_task(kube, namespace, "later")["status"]["phase"] == "Active"
    messages = agent_messages(kube, namespace, "later")
    assert prompts_in(messages, "Now finish it") == 1
    assert prompts_in(messages, "Start the upgrade") == 1  # the resume did not re-send the prompt
    with pytest.raises(ValueError, match="empty"):
        taskkube.run(taskops.send(namespace, "later", "  "))


def test_a_pause_does_not_wait_for_an_unreachable_agent(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace)
    create_task(kube, namespace, "stuck", prompt="Do it")
    wait_for(partial(delivered, kube, namespace, "stuck"), 60, "delivered")
    sim_config(kube, namespace, "stuck", hang=["/messages", "/status"])
    started = time.monotonic()
    patch_task(kube, namespace, "stuck", {"paused": True})
    wait_for(partial(phase_is, kube, namespace, "stuck", "Paused"), 60, "Paused despite the hanging agent")
    assert time.monotonic() - started < 30
    events = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=stuck").items
    assert any(e.reason == "SnapshotSkipped" for e in events)


def test_prompt_delivery_is_exactly_once_across_operator_kills(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace, startup_seconds=0.5, post_delay_seconds=0.3)
    rng = random.Random(4)
    for round_ in range(20):
        name = f"kill-{round_}"
        create_task(kube, namespace, name, prompt=f"Task number {round_}")
        time.sleep(rng.uniform(0.5, 3.5))  # somewhere between scheduling and delivery
        operator.kill()
        operator.start()
        wait_for(partial(delivered, kube, namespace, name), 60, f"{name} delivered")
        assert prompts_in(agent_messages(kube, namespace, name), f"Task number {round_}") == 1, name


@pytest.mark.parametrize("fault", ["fail", "garbage", "hang"])
def test_a_misbehaving_agent_is_unknown_and_recovers(
    kube: Kube, namespace: str, simulator: object, operator: Operator, fault: str
) -> None:
    operator.start("--agent-grace", "3")
    template_with(kube, namespace)
    create_task(kube, namespace, "odd", prompt="Do the thing")
    wait_for(partial(delivered, kube, namespace, "odd"), 60, "delivered")

    sim_config(kube, namespace, "odd", **{fault: ["/events", "/status", "/messages"]})
    # The agent's current stream keeps going until it reconnects; cut it by restarting the operator.
    operator.start()
    task = wait_for(
        partial(phase_is, kube, namespace, "odd", "Unknown"), 60, "Unknown after the grace period"
    )
    assert "has not answered" in task["status"]["message"]
    assert task["status"]["agent"]["healthy"] is False
    assert operator.proc is not None and operator.proc.poll() is None, "the operator must not crash"

    sim_config(kube, namespace, "odd", **{fault: []})
    wait_for(partial(phase_is, kube, namespace, "odd", "Active"), 60, "Active again once the agent answers")
    assert prompts_in(agent_messages(kube, namespace, "odd"), "Do the thing") == 1


def _reporting_task(kube: Kube, namespace: str, operator: Operator, name: str) -> str:
    """A task whose prompt is delivered, with the operator serving reports; the report endpoint's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/report"
    operator.start("--report-listen", f"127.0.0.1:{port}", "--report-url", url)
    template_with(kube, namespace, reply="On it.")
    create_task(kube, namespace, name, prompt="Open a PR that fixes the login test")
    wait_for(partial(delivered, kube, namespace, name), 60, "delivered")
    return url


def test_the_agent_reports_complete_and_it_stands(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    url = _reporting_task(kube, namespace, operator, "pr")
    container = kube.core.read_namespaced_pod("pr-0", namespace).spec.containers[0]
    assert ("TASKPOD_REPORT_URL", url) in [(e.name, e.value) for e in container.env]
    token = pod_token(kube, namespace, "pr-0")

    report = {"state": "complete", "message": "Opened PR #42", "uri": "https://example.com/pr/42"}
    assert httpx.post(url, json=report, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.post(url, json=report, headers={"Authorization": "Bearer forged"}).status_code == 401

    def reported() -> dict[str, Any] | None:
        task = get_task(kube, namespace, "pr")
        return task if (task["status"].get("state") or {}).get("state") == "complete" else None

    task = wait_for(reported, 30, "STATE complete")
    assert task["status"]["state"]["message"] == "Opened PR #42"
    assert task["status"]["state"]["uri"] == "https://example.com/pr/42"
    assert task["status"]["message"] == "Opened PR #42"  # the MESSAGE column

    # A task whose agent reported complete takes input (kubectl task send), works again and goes idle:
    # the report stands.
    sim_config(kube, namespace, "pr", append_messages=[{"role": "agent", "content": "idle now"}])
    taskkube.run(taskops.send(namespace, "pr", "thanks", timeout=30, progress=lambda _: None))
    assert prompts_in(agent_messages(kube, namespace, "pr"), "thanks") == 1
    time.sleep(3)
    assert get_task(kube, namespace, "pr")["status"]["state"]["state"] == "complete"

    # A report made with the token of a previous pod (before a pause and resume) is refused.
    patch_task(kube, namespace, "pr", {"paused": True})
    wait_for(partial(phase_is, kube, namespace, "pr", "Paused"), 60, "Paused")
    patch_task(kube, namespace, "pr", {"paused": False})
    wait_for(partial(phase_is, kube, namespace, "pr", "Active"), 60, "Active")
    failed = {"state": "failed", "message": "from the old pod"}
    answer = httpx.post(url, json=failed, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code in (401, 409)
    assert get_task(kube, namespace, "pr")["status"]["state"]["state"] == "complete"


def test_the_workspace_images_report_tool_reports_for_its_pod(
    kube: Kube, namespace: str, simulator: object, operator: Operator, tmp_path: Path
) -> None:
    """The MCP server that the workspace image registers with Claude Code (images/workspace/report-mcp): the
    agent sees `report_task`, a call posts its report with the pod's token, and whatever stops a report
    comes back to the agent as the tool's error, never as silence."""
    url = _reporting_task(kube, namespace, operator, "mcp")
    token = tmp_path / "token"
    token.write_text(pod_token(kube, namespace, "mcp-0"))
    env = {
        "TASKPOD_REPORT_URL": url,
        "TASKPOD_REPORT_TOKEN_FILE": str(token),
        "TASKPOD_REPORT_BACKOFF_MS": "20",
    }
    with McpClient(report_tool(), env) as mcp:
        (tool,) = mcp.request("tools/list")["tools"]
        assert tool["name"] == "report_task"
        assert tool["_meta"] == {"anthropic/alwaysLoad": True}  # never deferred behind a tool search
        assert tool["inputSchema"]["required"] == ["state", "message"]
        assert set(tool["inputSchema"]["properties"]["state"]["enum"]) == {
            "complete",
            "failed",
            "working",
            "idle",
        }

        message = (
            "Opened PR ✓ 🚀 " + "é" * 1010 + "🚀" * 10
        )  # longer than the operator keeps: cut at a character
        answer = mcp.call(
            "report_task", {"state": "complete", "message": message, "link": "https://example.com/7"}
        )
        assert not answer.get("isError"), answer
        assert answer["content"][0]["text"] == "Reported complete."
        task = wait_for(
            lambda: (
                (t := get_task(kube, namespace, "mcp"))["status"].get("state", {}).get("state") == "complete"
                and t
            ),
            30,
            "STATE complete",
        )
        assert task["status"]["state"]["message"] == message[:1024]
        assert task["status"]["state"]["uri"] == "https://example.com/7"

        refused = mcp.call("report_task", {"state": "done", "message": "x"})  # not a state
        assert refused.get("isError") and "complete" in refused["content"][0]["text"]

        token.write_text("forged")
        forged = mcp.call("report_task", {"state": "failed", "message": "not from the pod"})
        assert forged.get("isError") and "HTTP 401" in forged["content"][0]["text"], forged
        token.unlink()
        missing = mcp.call("report_task", {"state": "failed", "message": "no token"})
        assert (
            missing.get("isError") and "cannot read the pod's report token" in missing["content"][0]["text"]
        )
        assert get_task(kube, namespace, "mcp")["status"]["state"]["state"] == "complete"

    away = {**env, "TASKPOD_REPORT_URL": f"http://127.0.0.1:{free_port()}/report"}
    token.write_text("any")
    with McpClient(report_tool(), away) as mcp:
        unreachable = mcp.call("report_task", {"state": "complete", "message": "done"})
        assert unreachable.get("isError") and "cannot reach the operator" in unreachable["content"][0]["text"]


def test_a_pause_made_while_the_operator_was_down_still_snapshots(
    kube: Kube, namespace: str, simulator: object, operator: Operator
) -> None:
    template_with(kube, namespace)
    create_task(kube, namespace, "offline", prompt="Refactor the auth module")
    wait_for(partial(delivered, kube, namespace, "offline"), 60, "delivered")
    wait_for(
        lambda: agent_messages(kube, namespace, "offline")[-1]["content"].startswith("Done:"), 30, "answer"
    )
    operator.kill()
    sim_config(
        kube,
        namespace,
        "offline",
        append_messages=[{"role": "agent", "content": "Said while nobody watched"}],
    )
    patch_task(kube, namespace, "offline", {"paused": True})
    operator.start()
    task = wait_for(partial(phase_is, kube, namespace, "offline", "Paused"), 60, "Paused")
    cm = kube.core.read_namespaced_config_map("offline-snapshot", namespace)
    contents = [m["content"] for m in json.loads(cm.data["snapshot.json"])["data"]["messages"]]
    assert contents[-1] == "Said while nobody watched"
    assert task["status"]["logSnapshot"]["messages"] == len(contents)


GIT_STATE = ROOT / "images" / "workspace" / "git-state.mjs"


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[GitServer]:
    """A forge on loopback that wants the token "t0ken"."""
    (tmp_path / "forge").mkdir()
    with GitServer(tmp_path / "forge", "t0ken") as server:
        yield server


def test_the_workspace_images_git_state_shows_in_status_through_a_pause(
    kube: Kube, namespace: str, simulator: object, operator: Operator, tmp_path: Path, forge: GitServer
) -> None:
    """The workspace image's git-state reporter (images/workspace/git-state.mjs), run here on a checkout
    that the clone step made, with the task pod's token: status shows the branch, the commits ahead of the
    base and the diff stat, replaced whole by each report, and kept while the task is paused. Only the
    task's current pod may report, and only for a task with a repository. Its push (on the agent's
    complete report, or kubectl task push) pushes the branch with the pod's git credentials and is
    recorded in status and an Event; a refused one too, in git's words, with no token in them."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/report"
    operator.start("--report-listen", f"127.0.0.1:{port}", "--report-url", url)
    template_with(kube, namespace, reply="On it.")
    base = forge.create("shop", {"README.md": "# Shop\n", "app.py": "print(1)\n"})
    repo_url = forge.url("shop")
    create_task(kube, namespace, "shop", prompt="Fix the README", repository={"url": repo_url})
    create_task(kube, namespace, "plain", prompt="Fix the README")
    wait_for(partial(delivered, kube, namespace, "shop"), 60, "delivered")
    pod = kube.core.read_namespaced_pod("shop-0", namespace)
    assert [c.name for c in pod.spec.init_containers] == ["clone"]
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    checkout = tmp_path / "workspace" / "shop"
    assert env["TASKPOD_CHECKOUT"] == pod.spec.containers[0].working_dir == "/workspace/shop"
    # The clone step, as the pod's init container runs it (kwok runs no containers).
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "token").write_text("t0ken")
    clone_env = {e.name: e.value for e in pod.spec.init_containers[0].env}
    clone_env.update({e["name"]: e["value"] for e in credentials_env(str(secret))})  # no secretRef here
    clone_env.update(TASKPOD_REPO_DIR=str(checkout), PATH=os.environ["PATH"])
    clone_env["TASKPOD_TERMINATION_LOG"] = str(tmp_path / "termination-log")
    subprocess.run(["sh", "-c", pod.spec.init_containers[0].command[2]], env=clone_env, check=True)

    token = tmp_path / "token"
    token.write_text(pod_token(kube, namespace, "shop-0"))
    reporter_env = {
        "PATH": f"{node_bin()}:{os.environ['PATH']}",
        "TASKPOD_CHECKOUT": str(checkout),
        "TASKPOD_REPORT_URL": url,
        "TASKPOD_REPORT_TOKEN_FILE": str(token),
    }

    def report_git() -> str:
        run = subprocess.run(
            ["node", str(GIT_STATE), "once"], env=reporter_env, capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0
        return run.stderr

    def shown(**expected: Any) -> dict[str, Any] | None:
        status = (get_task(kube, namespace, "shop")["status"].get("repository")) or {}
        return status if all(status.get(k) == v for k, v in expected.items()) else None

    assert report_git() == ""
    first = wait_for(partial(shown, ahead=0), 30, "the fresh checkout in status")
    assert (
        first["url"] == repo_url
        and first["branch"] == "taskpod/shop"
        and first["base"] == first["head"] == base
    )
    assert (first["filesChanged"], first["uncommitted"]) == (0, 0)

    (checkout / "README.md").write_text("# Shop ✓\nFixed.\n")
    git("commit", "--quiet", "--all", "--message", "Fix the README", cwd=checkout)
    (checkout / "notes.txt").write_text("not committed\n")
    assert report_git() == ""
    second = wait_for(partial(shown, ahead=1), 30, "one commit ahead in status")
    assert (second["filesChanged"], second["insertions"], second["deletions"], second["uncommitted"]) == (
        1,
        2,
        1,
        1,
    )
    assert second["head"] == git("rev-parse", "HEAD", cwd=checkout) != base

    # A push, as the report tool makes it on complete: the branch on the forge, and the push in status.
    push_env = {**reporter_env, **{e["name"]: e["value"] for e in credentials_env(str(secret))}}
    pushing = subprocess.run(["node", str(GIT_STATE), "push"], env=push_env, capture_output=True, text=True)
    assert pushing.returncode == 0, pushing.stderr
    head = second["head"]
    assert git("rev-parse", "refs/heads/taskpod/shop", cwd=forge.root / "shop.git") == head
    done = wait_for(lambda: (s := shown()) and s.get("pushed") and s, 30, "pushed, in status")
    assert (done["pushed"]["branch"], done["pushed"]["commit"]) == ("taskpod/shop", head)
    assert done["pushed"]["pushedAt"] == done["reportedAt"]  # in the same report
    events = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=shop").items
    assert any(e.reason == "Pushed" and head[:12] in e.message for e in events), [e.reason for e in events]
    forge.token = "rotated"  # the Secret's token no longer works
    refused = subprocess.run(["node", str(GIT_STATE), "push"], env=push_env, capture_output=True, text=True)
    assert refused.returncode == 1 and "Authentication failed" in refused.stderr
    failed = wait_for(lambda: (s := shown()) and s.get("pushError") and s, 30, "the push's failure in status")
    assert "Authentication failed" in failed["pushError"] and "t0ken" not in failed["pushError"]
    assert failed["pushed"]["commit"] == head  # the last push that worked still stands
    events = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=shop").items
    assert any(e.reason == "PushFailed" for e in events)

    # Paused, it still shows what the agent did; the paused pod's token is no one's any more.
    patch_task(kube, namespace, "shop", {"paused": True})
    wait_for(partial(phase_is, kube, namespace, "shop", "Paused"), 60, "Paused")
    assert shown(ahead=1, head=second["head"]) is not None
    assert "409" in report_git() or "401" in report_git()

    # A task without a repository has no git state to show.
    token.write_text(pod_token(kube, namespace, "plain-0"))
    assert "has no repository" in report_git()
    assert "repository" not in get_task(kube, namespace, "plain")["status"]
