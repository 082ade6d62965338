"""The operator's configuration, as a user gives it (flags, the chart's TASKPOD_* variables, defaults), and
what its log leaves out."""

from __future__ import annotations

import logging

import pytest

from taskpod.__main__ import KOPF_POSTING, not_for_a_namespace_being_deleted, parse_args


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("TASKPOD_", "ANTHROPIC_")):
            monkeypatch.delenv(name)


def test_defaults_watch_every_namespace_directly() -> None:
    settings = parse_args([])
    assert settings.cluster_wide and settings.namespaces == ()
    assert settings.agent_transport == "direct"
    assert (settings.agent_grace_seconds, settings.agent_probe_after_seconds) == (30.0, 60.0)
    assert not settings.leader_election and settings.lease_name == "taskpod-operator"
    assert settings.report_host_port is None and settings.naming == {}


def test_the_charts_variables_configure_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "TASKPOD_NAMESPACES": "team-a, team-b,",
        "TASKPOD_AGENT_TRANSPORT": "proxy",
        "TASKPOD_AGENT_GRACE_SECONDS": "45",
        "TASKPOD_LEADER_ELECTION": "true",
        "TASKPOD_REPORT_LISTEN": "0.0.0.0:8081",
        "ANTHROPIC_API_KEY": "sk-test",
        "TASKPOD_NAMING_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = parse_args([])
    assert settings.namespaces == ("team-a", "team-b") and not settings.cluster_wide
    assert settings.agent_transport == "proxy" and settings.agent_grace_seconds == 45.0
    assert settings.leader_election and settings.report_host_port == ("0.0.0.0", 8081)
    assert settings.naming == {"ANTHROPIC_API_KEY": "sk-test", "TASKPOD_NAMING_TIMEOUT": "3"}


def test_a_flag_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPOD_NAMESPACES", "team-a")
    monkeypatch.setenv("TASKPOD_AGENT_GRACE_SECONDS", "45")
    monkeypatch.setenv("TASKPOD_LEADER_ELECTION", "true")
    settings = parse_args(["--all-namespaces", "--agent-grace", "5", "--no-leader-election"])
    assert settings.cluster_wide and settings.agent_grace_seconds == 5.0 and not settings.leader_election
    assert parse_args(["-n", "team-c"]).namespaces == ("team-c",)


@pytest.mark.parametrize(
    ("argv", "variables", "said"),
    [
        (["--agent-grace", "0"], {}, "agent_grace_seconds: Input should be greater than 0"),
        ([], {"TASKPOD_AGENT_TRANSPORT": "carrier-pigeon"}, "agent_transport: Input should be 'direct' or"),
        ([], {"TASKPOD_NAMESPACES": "a", "TASKPOD_ALL_NAMESPACES": "true"}, "not both"),
        ([], {"TASKPOD_LEADER_ELECTION": "maybe"}, "leader_election: Input should be a valid boolean"),
        ([], {"TASKPOD_NAMESPACES": " , "}, "namespaces: Value error, names no namespace"),
        (
            [],
            {"TASKPOD_REPORT_LISTEN": "nonsense"},
            "report_listen: Value error, 'nonsense' is not HOST:PORT",
        ),
        (["--report-listen", "0.0.0.0:99999"], {}, "report_listen: Value error, '0.0.0.0:99999'"),
        (["--http-listen", "localhost:http"], {}, "http_listen: Value error, 'localhost:http' is not"),
    ],
)
def test_a_bad_setting_stops_it_at_once_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    variables: dict[str, str],
    said: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


# Kopf's lines, as an operator logged them while a namespace of 20 tasks was deleted (CI, 2026-11-30).
TERMINATING = (
    "Request attempt #1/9 failed; will retry: POST https://127.0.0.1:46005/api/v1/namespaces/team/events "
    '-> APIForbiddenError(\'events "kopf-event-" is forbidden: unable to create new content in namespace '
    "team because it is being terminated', {'kind': 'Status', 'reason': 'Forbidden', 'details': {'causes': "
    "[{'reason': 'NamespaceTerminating'}]}, 'code': 403}, status=403)"
)
GONE = (
    'Failed to post an event. Ignoring and continuing. Code: 404. Message: namespaces "team" not found. '
    "Details: {'name': 'team', 'kind': 'namespaces'}Event: type='Warning', reason='TemplateNotFound'"
)
OTHER = (
    "Request attempt #1/9 failed; will retry: POST https://127.0.0.1:46005/api/v1/namespaces/team/events "
    '-> APIForbiddenError(\'events is forbidden: User "taskpod" cannot create resource "events"\', '
    "status=403)"
)


@pytest.mark.parametrize(
    ("level", "text", "shown"),
    [(logging.ERROR, TERMINATING, False), (logging.WARNING, GONE, False), (logging.ERROR, OTHER, True)],
    ids=["namespace terminating", "namespace gone", "RBAC refuses Events"],
)
def test_events_that_cannot_go_to_a_namespace_being_deleted_are_not_logged(
    level: int, text: str, shown: bool
) -> None:
    record = logging.LogRecord(KOPF_POSTING, level, __file__, 1, text, None, None)
    assert not_for_a_namespace_being_deleted(record) is shown


def test_the_operator_runs_without_the_kubernetes_package() -> None:
    """The operator's whole import graph loads without the `kubernetes` package (the kubectl-task
    commands' only), and Kopf, imported after the operator's entry made it unimportable, holds none of
    its models: 19 MiB of memory the operator never uses."""
    import subprocess
    import sys

    probe = (
        "from taskpod.__main__ import without_the_kubernetes_package as hide; hide()\n"
        "import sys, kopf\n"
        "from taskpod.controller import election, handlers, metrics, reconcile\n"
        "from kopf._cogs.helpers import thirdparty\n"
        "loaded = sorted(m for m, v in sys.modules.items() if m.startswith('kubernetes') and v is not None)\n"
        "print(loaded, thirdparty.V1ObjectMetaSync)\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["[]", "None"]
