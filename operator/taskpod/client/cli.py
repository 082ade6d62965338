"""kubectl task: the day-to-day commands for taskpod Tasks, as a kubectl plugin.

Installed as the console script `kubectl-task`, so `kubectl task ...` finds it on PATH, and
`kubectl_complete-task`, which kubectl (1.26+) calls for shell completion of plugin commands.

It acts as the kubectl user does: `--kubeconfig`, `KUBECONFIG`, `--context` and `-n/--namespace`
mean what they mean to kubectl. Data goes to stdout; progress, notes and errors to stderr.
Exit codes: 0 done; 1 failed (API error, not found, no cluster); 2 bad usage; 3 the task's state does
not allow it now (e.g. logs of a task in Error, a prompt edit while it runs); 4 timed out waiting.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click
import yaml
from kubernetes import config as kubeconfig
from pydantic import ValidationError
from rich.cells import cell_len
from rich.console import Console
from urllib3.exceptions import HTTPError as TransportError

from taskpod import kube
from taskpod.agentapi import AgentError, AgentUnavailable
from taskpod.api.models import GitState, Phase, Repository, Task, rfc3339
from taskpod.client import tasks
from taskpod.core import naming

EXIT_ERROR, EXIT_USAGE, EXIT_CONFLICT, EXIT_TIMEOUT = 1, 2, 3, 4
PHASES = [p.value for p in Phase]
T = TypeVar("T")

err = Console(stderr=True, highlight=False, soft_wrap=True)


class Failure(click.ClickException):
    """A one-line error and an exit code; never a traceback."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares a class-wide default

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


run = kube.run  # a command's calls, on an event loop of its own


@contextmanager
def _explained(namespace: str) -> Iterator[None]:
    """Turn what can go wrong talking to the cluster into one sentence and an exit code."""
    try:
        yield
    except kube.ApiException as exc:
        message = kube.api_message(exc)
        if exc.status == 404 and "could not find the requested resource" in message:
            raise Failure(
                "this cluster has no taskpod Task resource: install taskpod (helm install, or "
                "kubectl apply -f crds/)"
            ) from None
        if exc.status == 404:
            raise Failure(f"{message} in namespace {namespace}") from None
        code = EXIT_USAGE if exc.status in (400, 422) else EXIT_ERROR
        raise Failure(message, code) from None
    except tasks.TaskConflict as exc:
        raise Failure(str(exc), EXIT_CONFLICT) from None
    except tasks.NoTemplate as exc:
        raise Failure(str(exc)) from None
    except tasks.GitFailed as exc:
        raise Failure(str(exc)) from None
    except AgentUnavailable as exc:
        raise Failure(f"cannot reach the task's agent: {exc}") from None
    except AgentError as exc:
        raise Failure(f"the task's agent answered with an error: {exc}") from None
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    except TimeoutError as exc:
        raise Failure(str(exc), EXIT_TIMEOUT) from None
    except (TransportError, OSError) as exc:
        host = kube.connection().server
        raise Failure(f"cannot reach the cluster at {host}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause, which says what really happened (refused, timed out, no such host)."""
    while (inner := getattr(exc, "reason", None) or exc.__cause__) is not None and inner is not exc:
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = str(exc)
    return text.split(": ", 1)[-1] if "Failed to establish" in text else text


# -- options every command takes, as kubectl has them -------------------------------------------


def cluster_options(all_namespaces: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--kubeconfig, --context and -n/--namespace (and -A when the command lists); the command gets
    `namespace`: the one asked for, the context's, or "default" (None with -A)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(
            *args: Any, kubeconfig_path: str | None, context: str | None, namespace: str | None, **kw: Any
        ) -> Any:
            try:
                default = kube.use_kubeconfig(kubeconfig_path, context)
            except (kubeconfig.ConfigException, OSError) as exc:
                raise Failure(f"no usable kubeconfig: {exc}") from None
            namespace = None if kw.pop("all_namespaces", False) else namespace or default
            with _explained(namespace or "(all)"):
                return command(*args, namespace=namespace, **kw)

        options = [
            click.option(
                "--kubeconfig",
                "kubeconfig_path",
                metavar="PATH",
                help="Kubeconfig file (default: KUBECONFIG, then ~/.kube/config).",
            ),
            click.option("--context", metavar="NAME", help="Kubeconfig context (default: the current one)."),
            click.option(
                "-n",
                "--namespace",
                metavar="NS",
                help="Namespace (default: the context's, else default).",
            ),
        ]
        if all_namespaces:
            options.append(
                click.option("-A", "--all-namespaces", is_flag=True, help="Tasks in every namespace.")
            )
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def _complete_tasks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Task names in the namespace the command line names so far, for shell completion."""
    try:
        default = kube.use_kubeconfig(ctx.params.get("kubeconfig_path"), ctx.params.get("context"))
        namespace = ctx.params.get("namespace") or default
        return [t.name for t in run(tasks.list_tasks(namespace)) if t.name.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []


task_argument = functools.partial(click.argument, "name", metavar="TASK", shell_complete=_complete_tasks)


class Progress:
    """A spinner on a terminal; elsewhere (CI, pipes) each change of progress as a line, printed once
    (the opening text is not: a quick command stays quiet)."""

    def __init__(self, text: str) -> None:
        self._status = err.status(text) if err.is_terminal else None
        self._last = text

    def __enter__(self) -> Progress:
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)
        elif text != self._last:
            err.print(text)
        self._last = text


# -- formatting ---------------------------------------------------------------------------------


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago', like kubectl's ages."""
    if when is None:
        return ""
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """kubectl's plain table: left-aligned columns three spaces apart; a multi-line cell continues
    under its own column."""
    split = [[cell.splitlines() or [""] for cell in row] for row in [headers, *rows]]
    widths = [max(cell_len(line) for row in split for line in row[i]) for i in range(len(headers))]
    out = []
    for row in split:
        for n in range(max(len(cell) for cell in row)):
            parts = [
                _pad(cell[n] if n < len(cell) else "", width) for cell, width in zip(row, widths, strict=True)
            ]
            out.append("   ".join(parts).rstrip())
    return "\n".join(out)


def _pad(text: str, width: int) -> str:
    """Pad to `width` terminal cells: CJK characters and most emoji take two."""
    return text + " " * (width - cell_len(text))


def _state(task: Task) -> str:
    return task.status.state.state.value if task.status.state and task.status.state.state else ""


def _display_name(task: Task) -> str:
    return task.spec.display_name or task.status.display_name or ""


TASK_COLUMNS: dict[str, tuple[str, Callable[[Task], str]]] = {
    "namespace": ("NAMESPACE", lambda t: t.namespace),
    "name": ("NAME", lambda t: t.name),
    "display-name": ("DISPLAY NAME", _display_name),
    "status": ("STATUS", lambda t: t.status.phase.value if t.status.phase else "Pending"),
    "state": ("STATE", _state),
    "state-changed": ("STATE CHANGED", lambda t: ago(t.status.state.timestamp if t.status.state else None)),
    "message": ("MESSAGE", lambda t: t.status.message or ""),
    "template": ("TEMPLATE", lambda t: t.spec.template),
    "paused": ("PAUSED", lambda t: str(t.spec.paused).lower()),
    "age": ("AGE", lambda t: ago(t.metadata.creation_timestamp).removesuffix(" ago")),
}
DEFAULT_COLUMNS = ["name", "status", "state", "state-changed", "message"]
LOG_COLUMNS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "id": ("ID", lambda m: str(m["id"])),
    "time": ("TIME", lambda m: str(m.get("time") or "")),
    "role": ("ROLE", lambda m: str(m["role"])),
    "content": ("CONTENT", lambda m: str(m["content"]).rstrip()),
}


def _columns(spec: str | None, known: dict[str, Any], default: list[str]) -> list[str]:
    if not spec:
        return default
    chosen = [c.strip().lower() for c in spec.split(",") if c.strip()]
    if unknown := [c for c in chosen if c not in known]:
        raise Failure(f"unknown column {', '.join(unknown)}; choose from {', '.join(known)}", EXIT_USAGE)
    return chosen


def _dump(data: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def _read_input(value: str | None, from_stdin: bool, what: str) -> str:
    if from_stdin and value is not None:
        raise Failure(f"give the {what} as an argument or with --stdin, not both", EXIT_USAGE)
    if from_stdin:
        value = sys.stdin.read()
    if value is None:
        raise Failure(f"no {what}: give it as an argument, or pipe it in with --stdin", EXIT_USAGE)
    if not value.strip():
        raise Failure(f"the {what} is empty", EXIT_USAGE)
    return value


def _fail(message: str, code: int) -> NoReturn:
    raise Failure(message, code)


# -- the commands -------------------------------------------------------------------------------


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 done, 1 failed, 2 bad usage, 3 not allowed in the task's current state, "
    "4 timed out. Completion: kubectl calls kubectl_complete-task (installed alongside).",
)
@click.version_option(package_name="taskpod", prog_name="kubectl task")
def cli() -> None:
    """Run coding-agent tasks on Kubernetes: create, watch, talk to, pause and resume them."""


@cli.command()
@click.argument("prompt", required=False)
@click.option("--name", help="Task name (default: generated from the prompt).")
@click.option("--display-name", help="Human title, at most 64 characters (default: generated).")
@click.option("--template", help="TaskTemplate to use (default: the namespace's only one).")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the prompt from standard input.")
@click.option("--paused", is_flag=True, help="Create it paused: no workspace until resumed.")
@click.option("--repo", metavar="URL", help="Git repository to clone into the workspace (https or ssh).")
@click.option("--ref", help="Branch, tag or commit to start from (default: the remote's default branch).")
@click.option("--branch", help="Working branch for the agent (default: taskpod/<task name>).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the task's name.")
@cluster_options()
def create(
    namespace: str,
    prompt: str | None,
    name: str | None,
    display_name: str | None,
    template: str | None,
    from_stdin: bool,
    paused: bool,
    repo: str | None,
    ref: str | None,
    branch: str | None,
    quiet: bool,
) -> None:
    """Create a task from PROMPT.

    Without --name, the name and display name come from the prompt: through Anthropic's API when
    ANTHROPIC_API_KEY is set, else from the prompt's own words. --repo, --ref and --branch override the
    template's repository; its credentials come from the template's secretRef."""
    text = _read_input(prompt, from_stdin, "prompt")
    if display_name is not None and not 0 < len(display_name) <= naming.DISPLAY_MAX:
        _fail(f"--display-name must be 1 to {naming.DISPLAY_MAX} characters", EXIT_USAGE)
    repository = _repository(repo, ref, branch)
    with Progress("Creating the task..."):
        task = run(
            tasks.create(
                namespace,
                text,
                name=name,
                display_name=display_name,
                template=template,
                paused=paused,
                repository=repository,
            )
        )
    if quiet:
        click.echo(task.name)
        return
    click.echo(f'task {task.name} created in namespace {namespace}: "{_display_name(task)}"')
    err.print(f"Follow it with: kubectl task status {task.name} -n {namespace} --watch")


def _repository(url: str | None, ref: str | None, branch: str | None) -> Repository | None:
    """The task's repository from the create options, checked as the API server would check it."""
    given = {"url": url, "ref": ref, "branch": branch}
    if all(v is None for v in given.values()):
        return None
    try:
        return Repository.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        field = exc.errors()[0]["loc"][0]
        if field == "url":  # not echoed: it may hold a token
            _fail(
                "--repo must be an https://, http://, ssh://, git:// or scp-like (git@host:org/repo) URL,"
                " with no credentials in it: they go in the Secret of the template's repository.secretRef",
                EXIT_USAGE,
            )
        _fail(f"--{field} {given[str(field)]!r} is not a git branch, tag or commit name", EXIT_USAGE)


@cli.command("list")
@click.option(
    "--status",
    "phase",
    type=click.Choice(PHASES, case_sensitive=False),
    help="Only tasks with this status.",
)
@click.option("-l", "--selector", metavar="SELECTOR", help="Label selector, as kubectl takes it.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml", "name"]),
    default="table",
    show_default=True,
    help="json and yaml print the Task objects.",
)
@click.option(
    "-c",
    "--columns",
    metavar="COLS",
    help=f"Table columns, comma-separated, from: {', '.join(TASK_COLUMNS)}.",
)
@cluster_options(all_namespaces=True)
def list_(
    namespace: str | None, phase: str | None, selector: str | None, output: str, columns: str | None
) -> None:
    """List tasks: NAME, STATUS, STATE, STATE CHANGED and MESSAGE."""
    default = (["namespace"] if namespace is None else []) + DEFAULT_COLUMNS
    chosen = _columns(columns, TASK_COLUMNS, default)
    found = run(tasks.list_tasks(namespace, selector))
    if phase:
        found = [t for t in found if (t.status.phase or Phase.PENDING).value.lower() == phase.lower()]
    if output in ("json", "yaml"):
        _dump({"apiVersion": "v1", "kind": "List", "items": [t.raw for t in found]}, output)
        return
    if not found:
        err.print("No tasks found.")
        return
    if output == "name":
        click.echo("\n".join(f"task.taskpod.dev/{t.name}" for t in found))
        return
    click.echo(
        table(
            [TASK_COLUMNS[c][0] for c in chosen],
            [[TASK_COLUMNS[c][1](t) for c in chosen] for t in found],
        )
    )


cli.add_command(list_, "ls")  # Coder's alias


def describe(task: Task) -> str:
    s = task.status
    rows = [
        ("Name", task.name),
        ("Namespace", task.namespace),
        ("Display name", _display_name(task)),
        ("Template", task.spec.template),
        ("Status", s.phase.value if s.phase else "Pending"),
        ("State", f"{_state(task)} ({ago(s.state.timestamp)})" if s.state else ""),
        ("Message", s.message or ""),
        ("Paused", _paused_line(task)),
    ]
    if s.state is not None and s.state.uri:
        rows.append(("Link", s.state.uri))  # the agent's report's: a pull request, say
    if s.repository is not None:
        rows.append(("Repository", _git_line(s.repository)))
    if s.prompt is not None:
        rows.append(("Prompt", f"delivered {ago(s.prompt.delivered_at)} (lifetime {s.prompt.lifetime})"))
    if s.workspace is not None and (s.workspace.claim or s.workspace.pod):
        pod = s.workspace.pod or "none"
        rows.append(("Workspace", f"pod {pod}, volume claim {s.workspace.claim or 'none'}"))
    if s.log_snapshot is not None:
        snap = s.log_snapshot
        # A pause with nothing new to keep leaves the earlier snapshot, so say when it is from.
        when = (
            f"the conversation as of {rfc3339(snap.taken_at)} ({ago(snap.taken_at)})" if snap.taken_at else ""
        )
        rows.append(("Snapshot", f"{snap.messages} messages, {snap.bytes} bytes: {when}".rstrip(": ")))
    return "\n".join(f"{k + ':':14} {v}" for k, v in rows)


def _paused_line(task: Task) -> str:
    """Whether the task is paused, and by whom: its spec, or lifecycle automation (status.autoPause)."""
    by = tasks.paused(task)
    auto = task.status.auto_pause
    if by is None:
        return "false"
    if auto is None or by.value == "Requested":
        return "true (spec.paused)"
    return (
        f"true, automatically ({by.value}, {ago(auto.paused_at)}): `kubectl task send` or `resume` wakes it"
    )


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _git_line(git: GitState) -> str:
    """The checkout as status shows it: "taskpod/x, 2 commits ahead of 1a2b3c4d5e6f, 3 files changed
    (+40 -7), 1 uncommitted, from URL (reported 5m ago)"."""
    parts = [git.branch or f"detached at {(git.head or '?')[:12]}"]
    if git.base is not None:
        parts.append(f"{_plural(git.ahead or 0, 'commit')} ahead of {git.base[:12]}")
        lines = f"+{git.insertions or 0} -{git.deletions or 0}"
        parts.append(f"{_plural(git.files_changed or 0, 'file')} changed ({lines})")
    if git.uncommitted:
        parts.append(f"{git.uncommitted} uncommitted")
    when = f" (reported {ago(git.reported_at)})" if git.reported_at else ""
    return ", ".join(parts) + f", from {git.url}{when}"


def _summary(task: Task) -> str:
    phase = task.status.phase.value if task.status.phase else "Pending"
    state = _state(task)
    return f"{task.name}: {phase}" + (f", {state}" if state else "") + f" - {task.status.message or ''}"


@cli.command()
@task_argument()
@click.option("-w", "--watch", is_flag=True, help="Follow it live until it settles, then exit.")
@click.option(
    "-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --watch waits at most.")
@cluster_options()
def status(namespace: str, name: str, watch: bool, output: str, timeout: float) -> None:
    """Show a task's status; with --watch, until it is idle, done, paused or in Error.

    --watch exits 0 once settled, 1 when the task is in Error."""
    task = run(tasks.get(namespace, name))
    if watch:
        with Progress(_summary(task)) as progress:
            task = run(
                tasks.wait(namespace, name, tasks.settled, timeout, lambda t: progress.update(_summary(t)))
            )
    if output != "text":
        _dump(task.raw, output)
    else:
        click.echo(describe(task))
    if watch and task.status.phase is Phase.ERROR:
        sys.exit(EXIT_ERROR)


@cli.command()
@task_argument()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "-c", "--columns", metavar="COLS", help=f"Table columns, comma-separated, from: {', '.join(LOG_COLUMNS)}."
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages while the task is Active.")
@cluster_options()
def logs(namespace: str, name: str, output: str, columns: str | None, follow: bool) -> None:
    """The agent's conversation: live while Active, the snapshot of the last pause otherwise.

    A task in Error or Unknown has no logs to show (exit 3)."""
    chosen = _columns(columns, LOG_COLUMNS, ["time", "role", "content"])
    result = run(tasks.logs(namespace, name))
    if output == "json" and not follow:
        _dump(result.dump(), "json")
        return
    if result.snapshot:
        when = f", taken {result.snapshot_at}" if result.snapshot_at else " (none taken yet)"
        err.print(f"Snapshot of task {name}{when}: it is not Active, so these are not live.")
    if follow and not result.snapshot:
        _follow(namespace, name, output, chosen)
        return
    if output == "table" and result.messages:
        # One table per lifetime of the workspace (a pod: the first, then one per resume), each headed by
        # where it began, when the conversation spans more than one.
        lifetimes = [m.get("lifetime") for m in result.messages]
        for lifetime, group in itertools.groupby(result.messages, key=lambda m: m.get("lifetime")):
            rows = list(group)
            if len(set(lifetimes)) > 1:
                began = f", from {rows[0].get('time')}" if rows[0].get("time") else ""
                click.echo(f"── lifetime {lifetime or 'before this record'}{began} ──")
            click.echo(
                table(
                    [LOG_COLUMNS[c][0] for c in chosen],
                    [[LOG_COLUMNS[c][1](m) for c in chosen] for m in rows],
                )
            )
    elif output == "json":
        for message in result.messages:
            click.echo(json.dumps(message, ensure_ascii=False))


def _follow(namespace: str, name: str, output: str, chosen: list[str]) -> None:
    async def stream() -> None:
        async for message in tasks.follow(namespace, name):
            if output == "json":  # one JSON object per line, as they come
                click.echo(json.dumps(message, ensure_ascii=False))
            else:
                click.echo(
                    table(
                        [LOG_COLUMNS[c][0] for c in chosen], [[LOG_COLUMNS[c][1](message) for c in chosen]]
                    ).split("\n", 1)[-1]
                )

    try:
        run(stream())
    except KeyboardInterrupt:
        return
    err.print(f"Task {name} is no longer Active; stopped following.")


@cli.command()
@task_argument()
@click.argument("text", metavar="INPUT", required=False)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the input from standard input.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for an idle agent.")
@cluster_options()
def send(namespace: str, name: str, text: str | None, from_stdin: bool, timeout: float) -> None:
    """Send INPUT to the task's agent; a paused task (by you, or automatically) is resumed first."""
    content = _read_input(text, from_stdin, "input")
    with Progress(f"Sending to task {name}...") as progress:
        run(tasks.send(namespace, name, content, timeout=timeout, progress=progress.update))
    err.print(f"Sent to task {name}.")


def _wait_phase(namespace: str, name: str, phases: set[Phase], timeout: float, text: str) -> Task:
    def there(task: Task) -> bool:
        caught_up = task.status.observed_generation == task.metadata.generation
        return caught_up and (task.status.phase in phases or task.status.phase is Phase.ERROR)

    with Progress(text) as progress:
        task = run(
            tasks.wait(namespace, name, there, timeout, lambda t: progress.update(f"{text} {_summary(t)}"))
        )
    if task.status.phase is Phase.ERROR and Phase.ERROR not in phases:
        _fail(f"task {name} is in Error: {task.status.message}", EXIT_ERROR)
    return task


@cli.command()
@task_argument()
@cluster_options()
def diff(namespace: str, name: str) -> None:
    """The workspace's changes since the task's base commit, committed or not.

    Live while the task is Active; otherwise the last reported summary (no lines), said on stderr."""
    result = run(tasks.diff(namespace, name))
    if result.live:
        click.echo(result.text, nl=False)
        return
    assert result.recorded is not None
    when = f", reported {rfc3339(result.recorded.reported_at)}" if result.recorded.reported_at else ""
    err.print(f"Task {name} is not Active: its last reported changes{when}, without their lines.")
    click.echo(_git_line(result.recorded))


@cli.command()
@task_argument()
@cluster_options()
def push(namespace: str, name: str) -> None:
    """Push an Active task's working branch to its repository now (the template's repository.push
    does it when the agent reports complete). Status records it."""
    click.echo(f"task {name}: {run(tasks.push(namespace, name))}")


@cli.command()
@task_argument()
@click.option("--no-wait", is_flag=True, help="Return once asked, not once paused.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for Paused.")
@cluster_options()
def pause(namespace: str, name: str, no_wait: bool, timeout: float) -> None:
    """Pause a task: snapshot its conversation, then stop its workspace (the files stay)."""
    if not run(tasks.pause(namespace, name)):
        err.print(f"Task {name} is already paused.")
        return
    if no_wait:
        err.print(f"Asked task {name} to pause.")
        return
    task = _wait_phase(namespace, name, {Phase.PAUSED}, timeout, "Pausing...")
    snap = task.status.log_snapshot
    note = (
        f"; its snapshot holds {snap.messages} messages, the conversation as of {rfc3339(snap.taken_at)}"
        if snap and snap.taken_at
        else ""
    )
    click.echo(f"task {name} paused{note}")


@cli.command()
@task_argument()
@click.option("--no-wait", is_flag=True, help="Return once asked, not once Active.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for Active.")
@cluster_options()
def resume(namespace: str, name: str, no_wait: bool, timeout: float) -> None:
    """Resume a paused task: its workspace starts again on the same volume.

    A task you paused gets spec.paused false; one paused automatically (idlePause, pauseOnFinish) is
    woken through its taskpod.dev/wake annotation, its spec left as you applied it."""
    run(tasks.resume(namespace, name))
    if no_wait:
        err.print(f"Asked task {name} to resume.")
        return
    _wait_phase(namespace, name, {Phase.ACTIVE}, timeout, "Resuming...")
    click.echo(f"task {name} resumed")


@cli.command()
@click.argument("names", metavar="TASK...", nargs=-1, required=True, shell_complete=_complete_tasks)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@cluster_options()
def delete(namespace: str, names: tuple[str, ...], yes: bool) -> None:
    """Delete tasks, with their workspaces, volumes and snapshots."""
    if not yes:
        if not sys.stdin.isatty():
            _fail("refusing to delete without confirmation: pass -y", EXIT_USAGE)
        which = ", ".join(names)
        click.confirm(
            f"Delete {which} in namespace {namespace}, with workspace files and snapshots?", abort=True
        )
    failed = 0
    for name in names:
        try:
            with _explained(namespace):
                run(tasks.delete(namespace, name))
        except Failure as exc:
            failed += 1
            exc.show()
            continue
        click.echo(f"task {name} deleted")
    if failed:
        sys.exit(EXIT_ERROR)


@cli.command()
@task_argument()
@click.argument("new", metavar="NEW", required=False)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the new prompt from standard input.")
@click.option("--edit", is_flag=True, help="Edit the prompt in $EDITOR.")
@cluster_options()
def prompt(namespace: str, name: str, new: str | None, from_stdin: bool, edit: bool) -> None:
    """Show the task's prompt, or change it to NEW (only while the task is paused).

    The new prompt is delivered to the agent as the next user message after resume."""
    task = run(tasks.get(namespace, name))
    if new is None and not from_stdin and not edit:
        click.echo(task.spec.prompt)
        return
    if edit:
        if new is not None or from_stdin:
            _fail("--edit takes no other prompt", EXIT_USAGE)
        if not task.spec.paused:  # say so before opening an editor for nothing
            run(tasks.set_prompt(namespace, name, task.spec.prompt))
        edited = click.edit(task.spec.prompt)
        if edited is None or edited.strip() == task.spec.prompt.strip():
            err.print("Prompt unchanged.")
            return
        # editors end files with a newline: keep the prompt's own ending
        new = edited if task.spec.prompt.endswith("\n") else edited.rstrip("\n")
    text = _read_input(new, from_stdin, "prompt")
    run(tasks.set_prompt(namespace, name, text))
    click.echo(f"task {name}: prompt changed; it is delivered after `kubectl task resume {name}`")


def main() -> None:
    cli.main(prog_name="kubectl task")


def complete() -> None:
    """kubectl_complete-task ARGS... INCOMPLETE: what kubectl asks a plugin for completion (Cobra's
    format: one candidate per line, then `:4`, "no file completion")."""
    from click.shell_completion import ShellComplete

    *args, incomplete = sys.argv[1:] or [""]
    completer = ShellComplete(cli, {}, "kubectl task", "_KUBECTL_TASK_COMPLETE")
    for item in completer.get_completions(args, incomplete):
        click.echo(f"{item.value}\t{item.help}" if item.help else item.value)
    click.echo(":4")
