"""The plugin's pure parts: tables, ages, column choice, help and usage errors (no cluster)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from click.testing import CliRunner

from taskpod import kube
from taskpod.agentapi import AgentUnavailable
from taskpod.api.models import GitState, Task
from taskpod.client import cli, tasks

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s ago"), (59, "59s ago"), (60, "1m ago"), (3599, "59m ago"), (7200, "2h ago"), (90000, "1d ago")],
)
def test_ages_read_like_kubectl(seconds: int, shown: str) -> None:
    assert cli.ago(NOW - dt.timedelta(seconds=seconds), NOW) == shown


def test_a_time_in_the_future_is_now_and_no_time_is_blank() -> None:
    assert cli.ago(NOW + dt.timedelta(seconds=5), NOW) == "0s ago"
    assert cli.ago(None, NOW) == ""


def test_tables_align_columns_and_continue_multi_line_cells_in_their_column() -> None:
    out = cli.table(["NAME", "CONTENT", "X"], [["a", "one\ntwo", "1"], ["longer", "three", ""]])
    assert out.splitlines() == [
        "NAME     CONTENT   X",
        "a        one       1",
        "         two",
        "longer   three",
    ]


def test_wide_characters_take_two_cells() -> None:
    out = cli.table(["NAME", "X"], [["修复", "1"], ["ab", "2"]])
    assert out.splitlines() == ["NAME   X", "修复   1", "ab     2"]


def test_unknown_columns_are_named_with_the_choices() -> None:
    with pytest.raises(cli.Failure) as err:
        cli._columns("name,colour,state", cli.TASK_COLUMNS, cli.DEFAULT_COLUMNS)
    assert err.value.exit_code == cli.EXIT_USAGE
    assert "unknown column colour; choose from namespace, name," in err.value.message
    assert cli._columns(" Name , STATE", cli.TASK_COLUMNS, []) == ["name", "state"]
    assert cli._columns(None, cli.TASK_COLUMNS, ["name"]) == ["name"]


def test_help_lists_every_command_and_the_exit_codes() -> None:
    result = CliRunner().invoke(cli.cli, ["--help"])
    assert result.exit_code == 0
    for command in ("create", "list", "ls", "status", "logs", "send", "pause", "resume", "delete", "prompt"):
        assert f"  {command} " in result.output
    assert "3 not allowed in the task's current state" in " ".join(result.output.split())


def test_usage_errors_exit_2_without_a_traceback() -> None:
    result = CliRunner().invoke(cli.cli, ["list", "-o", "xml"])
    assert result.exit_code == 2 and "Invalid value for '-o'" in result.output
    result = CliRunner().invoke(cli.cli, ["status"])
    assert result.exit_code == 2 and "Missing argument 'TASK'" in result.output


def test_a_missing_kubeconfig_is_one_line(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    result = CliRunner().invoke(cli.cli, ["list"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no usable kubeconfig:") and result.output.count("\n") == 1


def test_completion_lists_commands_in_cobras_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["kubectl_complete-task", "re"])
    cli.complete()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["resume", ":4"]


def test_an_unreachable_agent_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    async def logs(namespace: str, name: str) -> object:
        raise AgentUnavailable("pod fix-login-0 is gone")

    monkeypatch.setattr(kube, "use_kubeconfig", lambda path, context: "team")
    monkeypatch.setattr(tasks, "logs", logs)
    result = CliRunner().invoke(cli.cli, ["logs", "fix-login"])
    assert result.exit_code == cli.EXIT_ERROR
    assert result.output == "error: cannot reach the task's agent: pod fix-login-0 is gone\n"


def test_status_shows_the_checkout_and_the_agents_link() -> None:
    task = Task.model_validate(
        {
            "metadata": {"name": "shop", "namespace": "team"},
            "spec": {"prompt": "Fix it"},
            "status": {
                "phase": "Active",
                "state": {"state": "complete", "message": "PR opened", "uri": "https://forge/pull/7"},
                "repository": {
                    "url": "https://forge/acme/shop.git",
                    "branch": "taskpod/shop",
                    "head": "ab" * 20,
                    "base": "1a2b3c4d5e6f7a8b" + "0" * 24,
                    "ahead": 1,
                    "filesChanged": 3,
                    "insertions": 40,
                    "deletions": 7,
                    "uncommitted": 2,
                },
            },
        }
    )
    shown = {k: v.strip() for k, v in (line.split(":", 1) for line in cli.describe(task).splitlines())}
    assert shown["Link"] == "https://forge/pull/7"
    assert shown["Repository"] == (
        "taskpod/shop, 1 commit ahead of 1a2b3c4d5e6f, 3 files changed (+40 -7), 2 uncommitted,"
        " from https://forge/acme/shop.git"
    )
    detached = task.model_copy(
        update={"status": task.status.model_copy(update={"repository": GitState(head="cd" * 20, url="u")})}
    )
    reported = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    detached = detached.model_copy(
        update={
            "status": detached.status.model_copy(
                update={"repository": GitState(head="cd" * 20, url="u", reported_at=reported)}
            )
        }
    )
    assert "Repository:    detached at cdcdcdcdcdcd, from u (reported 5m ago)" in cli.describe(detached)


def test_status_says_who_paused_the_task() -> None:
    base = {"metadata": {"name": "nap", "namespace": "team"}, "spec": {"prompt": "Fix it"}}
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)).isoformat()
    auto = {"phase": "Paused", "autoPause": {"reason": "Idle", "pausedAt": at, "wake": ""}}

    def paused(**changes: Any) -> str:
        body = {**base, **changes}
        shown = dict(line.split(":", 1) for line in cli.describe(Task.model_validate(body)).splitlines())
        return shown["Paused"].strip()

    assert paused() == "false"
    assert paused(spec={"prompt": "Fix it", "paused": True}) == "true (spec.paused)"
    assert paused(status=auto) == (
        "true, automatically (Idle, 3m ago): `kubectl task send` or `resume` wakes it"
    )
    woken = {**base, "metadata": {**base["metadata"], "annotations": {"taskpod.dev/wake": "now"}}}
    assert paused(metadata=woken["metadata"], status=auto) == "false"  # the wake annotation changed
