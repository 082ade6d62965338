"""The workspace pod's clone step (operator/taskpod/core/clone.sh), run by sh and git as the init container
runs it, against a forge on loopback that wants a token."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskpod.core.workspace import CLONE_SCRIPT, credentials_env
from tests import sshserver
from tests.gitserver import GitServer, git
from tests.sshserver import SshServer

TOKEN = "ghp_s3cr3t-Tök€n"
FILES = {"README.md": "# Shop\n", "src/app.py": "print('hi')\n", "docs/ünïcødé.md": "ok\n"}


@dataclass
class Run:
    code: int
    out: str
    message: str  # what the kubelet would keep as the termination message


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "forge").mkdir()
    with GitServer(tmp_path / "forge", TOKEN) as server:
        yield server


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The Secret's files, as its volume mounts them."""
    path = tmp_path / "secret"
    path.mkdir()
    (path / "password").write_text(TOKEN)
    return path


def clone(
    tmp_path: Path, url: str, *, secret: Path | None = None, dir_: str = "workspace/shop", **env: str
) -> Run:
    log = tmp_path / "termination-log"
    log.unlink(missing_ok=True)
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "workspace"),
        "TMPDIR": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "TASKPOD_TERMINATION_LOG": str(log),
        "TASKPOD_REPO_URL": url,
        "TASKPOD_REPO_DIR": str(tmp_path / dir_),
        "TASKPOD_REPO_BRANCH": "taskpod/fix-login",
        "TASKPOD_REPO_DEPTH": "1",
        **({e["name"]: e["value"] for e in credentials_env(str(secret))} if secret else {}),
        **env,
    }
    (tmp_path / "workspace").mkdir(exist_ok=True)
    run = subprocess.run(["sh", "-c", CLONE_SCRIPT], env=environ, capture_output=True, text=True, timeout=60)
    return Run(run.returncode, run.stdout + run.stderr, log.read_text() if log.exists() else "")


def everything_under(path: Path) -> str:
    return "\n".join(
        p.read_bytes().decode(errors="replace") for p in path.rglob("*") if p.is_file() and not p.is_symlink()
    )


def test_the_script_is_plain_posix_sh() -> None:
    if shutil.which("dash") is None:
        pytest.skip("dash is not installed")
    subprocess.run(["dash", "-n", "-c", CLONE_SCRIPT], check=True)


def test_a_clone_with_a_token_is_on_its_working_branch_with_its_base_and_no_secret(
    tmp_path: Path, forge: GitServer, secret: Path
) -> None:
    head = forge.create("shop", FILES)
    run = clone(tmp_path, forge.url("shop"), secret=secret)
    assert run.code == 0, run.out
    checkout = tmp_path / "workspace/shop"
    assert {p: (checkout / p).read_text() for p in FILES} == FILES
    assert git("branch", "--show-current", cwd=checkout) == "taskpod/fix-login"
    assert git("rev-parse", "HEAD", "refs/taskpod/base", cwd=checkout).split() == [head, head]
    assert (checkout / ".git/shallow").exists()  # depth 1
    assert git("config", "user.email", cwd=checkout) == "agent@taskpod.invalid"
    assert git("remote", "get-url", "origin", cwd=checkout) == forge.url("shop")
    # The token went over the wire, and nowhere else: not the checkout, its config, or the output.
    assert any(r.authorized for r in forge.requests)
    assert TOKEN not in everything_under(tmp_path / "workspace") + run.out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("taskpod-clone")] == []
    assert [p.name for p in (tmp_path / "workspace").iterdir()] == ["shop"]


def test_a_second_start_finds_the_checkout_and_keeps_the_agents_work(
    tmp_path: Path, forge: GitServer, secret: Path
) -> None:
    forge.create("shop", FILES)
    assert clone(tmp_path, forge.url("shop"), secret=secret).code == 0
    checkout = tmp_path / "workspace/shop"
    (checkout / "README.md").write_text("# Shop, fixed\n")
    git("commit", "--quiet", "--all", "--message", "Fix the login", cwd=checkout)
    ours = git("rev-parse", "HEAD", cwd=checkout)
    forge.commit("shop", "README.md", "# Shop, moved on\n")
    asked = len(forge.requests)

    run = clone(tmp_path, forge.url("shop"), secret=secret)
    assert run.code == 0
    assert "not cloning again" in run.out
    assert len(forge.requests) == asked  # not even a fetch
    assert git("rev-parse", "HEAD", cwd=checkout) == ours
    assert (checkout / "README.md").read_text() == "# Shop, fixed\n"


def test_a_ref_a_tag_or_a_commit_is_where_the_branch_starts(tmp_path: Path, forge: GitServer) -> None:
    first = forge.create("shop", FILES)
    git("tag", "v1.0", first, cwd=forge.root / "shop.git")
    second = forge.commit("shop", "README.md", "# Shop 2\n")
    token = tmp_path / "opaque-secret"  # an Opaque Secret with `token` rather than `password`
    token.mkdir()
    (token / "token").write_text(TOKEN)
    for ref, expected in (("v1.0", first), ("main", second), (first, first)):
        shutil.rmtree(tmp_path / "workspace", ignore_errors=True)
        run = clone(tmp_path, forge.url("shop"), secret=token, TASKPOD_REPO_REF=ref, TASKPOD_REPO_DEPTH="0")
        assert run.code == 0, (ref, run.out)
        checkout = tmp_path / "workspace/shop"
        assert git("rev-parse", "HEAD", "refs/taskpod/base", cwd=checkout).split() == [expected, expected]
        assert not (checkout / ".git/shallow").exists()  # depth 0: the whole history


def test_a_wrong_token_fails_with_gits_words_and_no_token(
    tmp_path: Path, forge: GitServer, secret: Path
) -> None:
    forge.create("shop", FILES)
    forge.token = "the-right-one"
    run = clone(tmp_path, forge.url("shop"), secret=secret)
    assert run.code == 1
    assert run.message.startswith("git fetch failed: ")
    assert "Authentication failed" in run.message
    assert TOKEN not in run.message + run.out
    assert not (tmp_path / "workspace/shop").exists()


def test_a_secret_that_git_would_print_is_redacted(tmp_path: Path, forge: GitServer, secret: Path) -> None:
    """Adversarial: a ref that holds the token makes git print it (`couldn't find remote ref ...`)."""
    forge.create("shop", FILES)
    (secret / "password").write_text(f"{TOKEN}\n")  # as `kubectl create secret --from-file` leaves it
    run = clone(tmp_path, forge.url("shop"), secret=secret, TASKPOD_REPO_REF=f"x{TOKEN}y")
    assert run.code == 1
    assert "[redacted]" in run.message
    assert TOKEN not in run.message + run.out


def test_no_secret_and_a_forge_that_wants_one_fails_at_once(tmp_path: Path, forge: GitServer) -> None:
    forge.create("shop", FILES)
    run = clone(tmp_path, forge.url("shop"))
    assert run.code == 1
    assert "could not read Username" in run.message or "Authentication failed" in run.message


def test_a_secret_that_is_missing_is_named_and_the_next_try_after_it_appears_clones(
    tmp_path: Path, forge: GitServer
) -> None:
    """The Secret's volume is optional, so a missing Secret mounts as an empty directory: the clone says
    which Secret, rather than the pod waiting unexplained; the kubelet's retry clones once it is there."""
    forge.create("shop", FILES)
    empty = tmp_path / "secret"
    empty.mkdir()
    run = clone(tmp_path, forge.url("shop"), secret=empty, TASKPOD_GIT_SECRET="shop-token")
    assert run.code == 1
    expected = "The credentials Secret shop-token cannot be used: it is missing"
    assert run.message.startswith(expected), run.message
    assert not forge.requests  # it did not go on to ask the forge without credentials
    (empty / "token").write_text(TOKEN)
    run = clone(tmp_path, forge.url("shop"), secret=empty, TASKPOD_GIT_SECRET="shop-token")
    assert run.code == 0, run.out


def test_a_repository_that_is_not_there(tmp_path: Path, forge: GitServer, secret: Path) -> None:
    run = clone(tmp_path, forge.url("nope"), secret=secret)
    assert run.code == 1
    assert "git fetch failed: " in run.message and "nope.git" in run.message


def test_a_ref_that_is_not_there(tmp_path: Path, forge: GitServer, secret: Path) -> None:
    forge.create("shop", FILES)
    run = clone(tmp_path, forge.url("shop"), secret=secret, TASKPOD_REPO_REF="no-such-branch")
    assert run.code == 1
    assert "no-such-branch" in run.message


def test_a_branch_name_git_refuses(tmp_path: Path, forge: GitServer, secret: Path) -> None:
    forge.create("shop", FILES)
    run = clone(tmp_path, forge.url("shop"), secret=secret, TASKPOD_REPO_BRANCH="fix..login.lock")
    assert run.code == 1
    assert run.message.startswith("The working branch fix..login.lock is not a valid branch name")


def test_files_where_the_checkout_goes_are_never_overwritten(
    tmp_path: Path, forge: GitServer, secret: Path
) -> None:
    forge.create("shop", FILES)
    (tmp_path / "workspace/shop").mkdir(parents=True)
    (tmp_path / "workspace/shop/notes.txt").write_text("mine")
    run = clone(tmp_path, forge.url("shop"), secret=secret)
    assert run.code == 1
    assert "holds files and is not a git checkout" in run.message
    assert (tmp_path / "workspace/shop/notes.txt").read_text() == "mine"


def test_a_clone_cut_short_is_started_again_cleanly(tmp_path: Path, forge: GitServer, secret: Path) -> None:
    """An operator or node killed mid-clone leaves the staging directory, never a half checkout."""
    forge.create("shop", FILES)
    staging = tmp_path / "workspace/src/.taskpod-clone.shop"
    staging.mkdir(parents=True)
    (staging / "half").write_text("x")
    run = clone(tmp_path, forge.url("shop"), secret=secret, dir_="workspace/src/shop")
    assert run.code == 0, run.out
    assert not staging.exists()
    assert sorted(p.name for p in (tmp_path / "workspace/src/shop").iterdir()) == [
        ".git",
        "README.md",
        "docs",
        "src",
    ]


FAKE_SSH = """#!/bin/sh
# Records how git called ssh, and the key it was given, then fails as a refused host does.
for arg in "$@"; do printf '%s\\n' "$arg"; done > "$RECORD/args"
while [ $# -gt 0 ]; do
    if [ "$1" = -i ]; then
        stat -c %a "$2" > "$RECORD/mode"; cat "$2" > "$RECORD/key"; echo "$2" > "$RECORD/path"
    fi
    shift
done
echo "Host key verification failed." >&2
exit 255
"""


def test_ssh_gets_a_private_copy_of_the_key_and_checks_the_host(tmp_path: Path) -> None:
    """The ssh path without an ssh server: a stand-in ssh records what git's ssh command gave it."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "ssh").write_text(FAKE_SSH)
    (bin_ / "ssh").chmod(0o755)
    record = tmp_path / "record"
    record.mkdir()
    secret = tmp_path / "ssh-secret"
    secret.mkdir()
    (secret / "ssh-privatekey").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n")
    (secret / "ssh-privatekey").chmod(0o444)  # as the Secret's volume has it
    (secret / "known_hosts").write_text("forge.example ssh-ed25519 AAAA\n")
    run = clone(
        tmp_path,
        "git@forge.example:acme/shop.git",
        secret=secret,
        PATH=f"{bin_}:{os.environ['PATH']}",
        RECORD=str(record),
    )
    assert run.code == 1
    assert "Host key verification failed." in run.message
    args = (record / "args").read_text().splitlines()
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={secret}/known_hosts"):
        assert option in args, args
    assert "git@forge.example" in args
    assert (record / "mode").read_text().strip() == "600"
    assert (record / "key").read_text() == (secret / "ssh-privatekey").read_text()
    assert not Path((record / "path").read_text().strip()).exists()  # the copy is gone after the call


@pytest.fixture
def ssh_forge(tmp_path: Path) -> Iterator[SshServer]:
    if reason := sshserver.unavailable():
        pytest.skip(reason)
    with SshServer(tmp_path / "sshd") as server:
        yield server


def ssh_secret(tmp_path: Path, server: SshServer, known_hosts: str) -> Path:
    """A `kubernetes.io/ssh-auth` Secret's files, as its volume mounts them (0444)."""
    secret = tmp_path / "ssh-secret"
    secret.mkdir(exist_ok=True)
    for name, text in (("ssh-privatekey", server.private_key), ("known_hosts", known_hosts)):
        (secret / name).write_text(text)
        (secret / name).chmod(0o444)
    return secret


def test_a_clone_over_ssh_with_the_secrets_key_from_a_real_sshd(
    tmp_path: Path, forge: GitServer, ssh_forge: SshServer
) -> None:
    head = forge.create("shop", FILES)
    secret = ssh_secret(tmp_path, ssh_forge, ssh_forge.known_hosts)
    run = clone(tmp_path, ssh_forge.url(forge.root / "shop.git"), secret=secret)
    assert run.code == 0, run.out + ssh_forge.log()
    checkout = tmp_path / "workspace/shop"
    assert git("rev-parse", "HEAD", cwd=checkout) == head
    assert "Accepted publickey for root" in ssh_forge.log()
    assert ssh_forge.private_key not in everything_under(tmp_path / "workspace") + run.out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp.")]  # the key's private copy is gone


def test_a_host_not_in_known_hosts_is_refused_before_any_key_is_offered(
    tmp_path: Path, forge: GitServer, ssh_forge: SshServer
) -> None:
    forge.create("shop", FILES)
    other = ssh_forge.known_hosts.replace(f"]:{ssh_forge.port} ", f"]:{ssh_forge.port + 1} ")
    assert other != ssh_forge.known_hosts
    secret = ssh_secret(tmp_path, ssh_forge, other)
    run = clone(tmp_path, ssh_forge.url(forge.root / "shop.git"), secret=secret)
    assert run.code == 1
    assert run.message.startswith("git fetch failed: "), run.message
    assert "Host key verification failed." in run.message
    assert "Accepted" not in ssh_forge.log() and not (tmp_path / "workspace/shop").exists()
