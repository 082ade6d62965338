"""Upstream Kubernetes binaries, built from Go modules and cached outside the checkout by version.

A first build compiles Kubernetes from source and takes many minutes on two cores, so it prints progress.
The cache lives in ``${XDG_CACHE_HOME:-~/.cache}/taskpod/bin/<name>-<version>``: a fresh clone on the
same machine finds it and never rebuilds. ``KUBEBUILDER_ASSETS`` (the envtest layout) wins when it holds
the binary.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
AGENTAPI_VERSION = "v0.11.8"
CONTAINERD_VERSION = "v2.4.2"
COREDNS_VERSION = "v1.12.4"  # go/coredns/go.mod pins it
PAUSE_VERSION = "v1"  # our own program (go/pause): bump when it changes


def _kube_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    return (
        f"-s -w -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor}"
        f" -X {pkg}.gitTreeState=clean"
    )


@dataclass(frozen=True)
class Component:
    """How to build one binary: either a package of a module in this repository, or `go install pkg@v`."""

    name: str
    version: str
    package: str
    module_dir: Path | None = None  # set: build inside our own module (go.mod pins the version)
    ldflags: str = "-s -w"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cache_name(self) -> str:
        return f"{self.name}-{self.version}"


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        Component("etcd", ETCD_VERSION, ".", GO_DIR / "etcd"),
        *(
            Component(n, KUBERNETES_VERSION, f"./cmd/{n}", GO_DIR / "kube", _kube_ldflags(KUBERNETES_VERSION))
            for n in (
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubectl",
                "kubelet",
                "kube-proxy",
            )
        ),
        Component("kwok", KWOK_VERSION, f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"),
        Component(
            "helm",
            HELM_VERSION,
            f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
            ldflags=f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        ),
        # Our own module (go.mod `tool` directive): `go install ...@v` needs the proxy's version list,
        # which the proxy refuses for agentapi.
        Component("agentapi", AGENTAPI_VERSION, "github.com/coder/agentapi", GO_DIR / "agentapi"),
        # The real node (node.py): containerd and its runc shim, its CLI for importing images, and the
        # pods' sandbox program. runc and the CNI plugins are Debian's.
        *(
            Component(
                n, CONTAINERD_VERSION, f"github.com/containerd/containerd/v2/cmd/{n}@{CONTAINERD_VERSION}"
            )
            for n in ("containerd", "containerd-shim-runc-v2", "ctr")
        ),
        Component("pause", PAUSE_VERSION, ".", GO_DIR / "pause"),
        # The real node's cluster DNS: our main with only the plugins it uses (go/coredns).
        Component("coredns", COREDNS_VERSION, ".", GO_DIR / "coredns"),
    ]
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "taskpod" / "bin"


def _prebuilt(name: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (candidate := Path(assets) / name).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def path(name: str) -> Path:
    """Where the binary is or will be; does not build."""
    return _prebuilt(name) or cache_dir() / COMPONENTS[name].cache_name


def ensure(name: str) -> Path:
    """Return the binary's path, building it first if neither KUBEBUILDER_ASSETS nor the cache has it."""
    if prebuilt := _prebuilt(name):
        return prebuilt
    component = COMPONENTS[name]
    target = cache_dir() / component.cache_name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{component.cache_name}.lock"):
        if not target.exists():  # another process may have built it while we waited
            _build(component, target)
    return target


def ensure_all(names: list[str] | None = None) -> dict[str, Path]:
    return {n: ensure(n) for n in names or list(COMPONENTS)}


@contextmanager
def _lock(lockfile: Path) -> Iterator[None]:
    with lockfile.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(msg: str) -> None:
    print(f"[localkube] {msg}", file=sys.stderr, flush=True)


def _build(component: Component, target: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"cannot build {component.name}: the 'go' command is not on PATH")
    _say(f"building {component.name} {component.version} from source (first time only; cached as {target})")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", **component.env}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".build-{component.name}-") as tmp:
        out = Path(tmp) / component.name
        if component.module_dir is not None:
            cmd = [
                go,
                "build",
                "-v",
                "-trimpath",
                "-ldflags",
                component.ldflags,
                "-o",
                str(out),
                component.package,
            ]
            cwd: Path | None = component.module_dir
        else:
            env["GOBIN"] = tmp
            cmd = [go, "install", "-v", "-trimpath", "-ldflags", component.ldflags, component.package]
            cwd = None
        started = time.monotonic()
        _run_with_progress(cmd, cwd, env, component.name)
        if not out.exists():
            raise RuntimeError(f"building {component.name} produced no binary at {out}")
        os.replace(out, target)  # atomic: a reader never sees a half-written binary
    _say(f"built {component.name} {component.version} in {time.monotonic() - started:.0f}s")


def _run_with_progress(cmd: list[str], cwd: Path | None, env: dict[str, str], name: str) -> None:
    """Run a go build, printing a progress line every few seconds (go -v names each compiled package)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    started = time.monotonic()
    done = threading.Event()

    def report() -> None:
        while not done.wait(15):
            last = lines[-1] if lines else "resolving modules"
            _say(f"  {name}: {len(lines)} packages compiled, {time.monotonic() - started:.0f}s ... {last}")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    for line in proc.stdout:
        lines.append(line.rstrip())
    rc = proc.wait()
    done.set()
    if rc != 0:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"building {name} failed (exit {rc}): {' '.join(cmd)}\n{tail}")


def version_of(name: str) -> str:
    """The version line the binary reports about itself."""
    args = {"helm": ["version", "--short"], "agentapi": ["--version"], "kwok": ["--version"]}.get(
        name, ["--version"]
    )
    result = subprocess.run([str(ensure(name)), *args], capture_output=True, text=True, timeout=30)
    return (
        (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else ""
    )
