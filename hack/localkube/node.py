"""A real node for the local control plane: a kubelet with containerd, runc and CNI, running real pods.

kwok's nodes run nothing. This node runs containers for real, on this machine: a pod gets its own
namespaces and cgroups, an IP on a bridge that the host routes to, and `kubectl logs` and `exec` work.

What it takes from the host, and gives back on `down` (see `HostRecord` and `Node.clean`):
- processes: the kubelet, containerd, containerd's shims and every container they started, kube-proxy and
  CoreDNS (see servicenet: how pods reach Services and the API server);
- mounts: containers' root filesystems, volumes and network namespaces;
- the bridge (`BRIDGE`) and the veths on it, and the network namespaces under /run/netns;
- cgroups: everything under `CGROUP_ROOT`, in each cgroup v1 hierarchy;
- three sysctls the kubelet sets (`SYSCTLS`), put back to what they were, and one kube-proxy would set
  (it is told not to);
- kube-proxy's iptables chains (see servicenet);
- host paths the kubelet and containerd write whatever their root says (`HOST_PATHS`), removed when they
  were not there before.

The machine's cgroup mounts are left as they are (v1, hybrid): the kubelet is told `failCgroupV1: false`.
Only one real node runs on a machine at a time: those host paths are fixed. The host's record names the
cluster that owns the node (`RECORD`, outside any cluster folder), so that a node whose test run was killed
is cleaned up by the next one, even when its folder is gone.

What it needs (see `missing`): root, cgroup v1 or v2 mounted, Debian's runc, CNI plugins, umoci and
iptables (installed with apt-get when missing), and our builds of the kubelet, containerd, the pause
program, kube-proxy and CoreDNS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from localkube import binaries, pki, servicenet

CGROUP_ROOT = "taskpod-localkube"
BRIDGE = "tpk0"
POD_SUBNET = ipaddress.IPv4Network("10.244.0.0/24")
DNS_IP = servicenet.dns_ip(POD_SUBNET)
SANDBOX_IMAGE = "localhost/pause:localkube"
IMAGE_NAMESPACE = "k8s.io"  # containerd's namespace for the kubelet's images
SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "net/ipv4/conf/all/route_localnet")
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni",
)
PACKAGES = {
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "umoci": "/usr/bin/umoci",
    "busybox-static": "/bin/busybox",  # the tests' small image (`busybox_rootfs`)
    "iptables": "/usr/sbin/iptables-save",  # kube-proxy's, and how `down` removes its chains
}
CNI_BIN = "/usr/lib/cni"
NODE_BINARIES = ["kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause", "kube-proxy", "coredns"]
MNT_DETACH = 2
RECORD = Path.home() / ".cache" / "taskpod" / "real-node.json"


def _say(msg: str) -> None:
    print(f"[localkube] {msg}", file=sys.stderr, flush=True)


def missing() -> str | None:
    """Why this machine cannot run a real node, or None when it can (packages may still need installing)."""
    if os.geteuid() != 0:
        return "a real node needs root (it makes cgroups, mounts, a bridge and network namespaces)"
    if not Path("/sys/fs/cgroup").is_dir() or not _hierarchies():
        return "no cgroup hierarchy is mounted under /sys/fs/cgroup"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def ensure_packages(packages: dict[str, str] = PACKAGES) -> None:
    """Debian packages (name: a file each installs), installed with apt-get when that file is missing: by
    default the node's runc, CNI plugins, umoci and busybox."""
    wanted = [name for name, path in packages.items() if not Path(path).exists()]
    if not wanted:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"install these packages first: {' '.join(wanted)}")
    _say(f"installing {' '.join(wanted)} with apt-get (first time only)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *wanted]
    run = subprocess.run(install, env=env, capture_output=True, text=True)
    if run.returncode != 0 and "Unable to locate" in run.stderr + run.stdout:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        run = subprocess.run(install, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"apt-get install {' '.join(wanted)} failed:\n{run.stderr[-2000:]}")


# -- what the host looks like, before and after ---------------------------------------------------


def _hierarchies() -> list[Path]:
    """Each mounted cgroup hierarchy (v1: one per controller set; v2: the one unified tree)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        words = line.split()
        if len(words) > 2 and words[2] in ("cgroup", "cgroup2"):
            found.append(Path(words[1]))
    return found


def _mountpoints() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


@dataclass
class Footprint:
    """What a real node leaves on the host: everything `Node.clean` must remove. Equal before `up` and after
    `down`, or the node leaked something."""

    processes: list[str]
    mounts: list[str]
    links: list[str]
    netns: list[str]
    cgroups: list[str]
    sysctls: dict[str, str]
    paths: list[str]
    iptables: list[str]


def footprint(node_dir: Path) -> Footprint:
    prefixes = (str(node_dir), *HOST_PATHS)
    return Footprint(
        processes=sorted(f"{pid} {why}" for pid, why in _node_processes(node_dir)),
        mounts=sorted(m for m in _mountpoints() if m.startswith(prefixes)),
        links=sorted(link for link in _links() if link == BRIDGE or link.startswith("veth")),
        netns=sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        # every top-level cgroup, not only ours: a kubelet may make others (system, kube reserved)
        cgroups=sorted(str(c) for h in _hierarchies() for c in h.iterdir() if c.is_dir()),
        sysctls={name: _read_sysctl(name) for name in SYSCTLS},
        paths=sorted(p for p in HOST_PATHS if os.path.lexists(p)),
        iptables=servicenet.iptables_rules(),
    )


def _node_processes(node_dir: Path) -> Iterator[tuple[int, str]]:
    """Processes of the node: in its cgroups (containers), or started with its files (containerd's shims)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cgroups = Path(f"/proc/{entry}/cgroup").read_text()
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if f"/{CGROUP_ROOT}/" in cgroups or cgroups.rstrip().endswith(f"/{CGROUP_ROOT}"):
            yield int(entry), f"in cgroup {CGROUP_ROOT}: {cmdline[:80]}"
        elif str(node_dir) in cmdline:
            yield int(entry), cmdline[:120]


@dataclass
class HostRecord:
    """The host as it was before a node started, and the cluster folder whose node it is: what `clean`
    puts back. Kept until the node is cleaned up, so that a crashed run's changes are never taken for the
    host's own."""

    directory: str
    sysctls: dict[str, str] = field(default_factory=dict)
    absent_paths: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)

    @classmethod
    def take(cls, directory: Path) -> HostRecord:
        return cls(
            directory=str(directory),
            sysctls={name: _read_sysctl(name) for name in SYSCTLS},
            absent_paths=[p for p in HOST_PATHS if not os.path.lexists(p)],
            netns=sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        )

    @classmethod
    def load(cls) -> HostRecord | None:
        return cls(**json.loads(RECORD.read_text())) if RECORD.exists() else None

    def save(self) -> None:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(asdict(self), indent=2))


# -- configuration ----------------------------------------------------------------------------------


def host_ip() -> str:
    """The address the node registers (InternalIP): the one of the default route, else of the hostname."""
    out = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.255"], capture_output=True, text=True)
    words = out.stdout.split()
    if "src" in words:
        return words[words.index("src") + 1]
    return socket.gethostbyname(socket.gethostname())


def containerd_config(node_dir: Path) -> str:
    d = node_dir / "containerd"
    return f"""version = 3
root = "{d / "root"}"
state = "{d / "state"}"
imports = []  # not the host's /etc/containerd/conf.d

[grpc]
  address = "{d / "containerd.sock"}"

[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{SANDBOX_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # root here lacks CAP_SYS_RESOURCE: runc may not lower a process's oom_score_adj below its own
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{PACKAGES["runc"]}"
        SystemdCgroup = false
        Root = "{node_dir / "runc"}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{node_dir / "cni" / "net.d"}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true

# Nothing under the host's /opt, /run/nri or /etc: every path is the node's own.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{d / "image-verifier"}"
"""


def cni_config(node_dir: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "localkube",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,  # the host answers on the bridge's first address: pods reach it
                "ipMasq": False,  # pods talk to this machine only; no iptables needed
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(POD_SUBNET)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node_dir / "cni" / "ipam"),
                },
            }
        ],
    }


def kubelet_config(
    node_dir: Path, ports: dict[str, int], ca: Path, serving: pki.KeyPair
) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # the host's cgroups are v1 (hybrid): leave them as they are
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{node_dir / 'containerd' / 'containerd.sock'}",
        "resolvConf": str(node_dir / "resolv.conf"),
        "clusterDNS": [DNS_IP],
        "clusterDomain": servicenet.CLUSTER_DOMAIN,
        "enforceNodeAllocatable": [],
        "makeIPTablesUtilChains": False,
        "address": "0.0.0.0",
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet-healthz"],
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "serializeImagePulls": False,
        # a test machine's disk is often fuller than a node's: don't evict or collect images for it
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "registerNode": True,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


# -- images without a registry -----------------------------------------------------------------------


def oci_archive(rootfs: Path, out: Path, *, entrypoint: list[str], work: Path, tag: str = "local") -> Path:
    """An OCI image archive of `rootfs` (made with umoci) tagged `tag`, for `ctr images import`."""
    layout = work / "layout"
    shutil.rmtree(layout, ignore_errors=True)
    umoci = PACKAGES["umoci"]
    subprocess.run([umoci, "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run([umoci, "new", "--image", f"{layout}:{tag}"], check=True, capture_output=True)
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True
    )
    shutil.copytree(rootfs, bundle / "rootfs", dirs_exist_ok=True, symlinks=True)
    subprocess.run(
        [umoci, "repack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True
    )
    config = [umoci, "config", "--image", f"{layout}:{tag}"]
    for arg in entrypoint:
        config += ["--config.entrypoint", arg]
    subprocess.run(config, check=True, capture_output=True)
    with tarfile.open(out, "w") as tar:
        for item in sorted(layout.iterdir()):
            tar.add(item, arcname=item.name)
    return out


# -- the node ------------------------------------------------------------------------------------


class Node:
    """The real node of the cluster in `directory`: its files live in `directory/node`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dir = directory / "node"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    def claim_host(self, alive: Callable[[Path], bool]) -> HostRecord:
        """Make this cluster the owner of the machine's real node, and record the host as it is. A node
        that another cluster left (its run killed: `alive` says it is not running) is cleaned up first;
        one that still runs is refused."""
        record = HostRecord.load()
        if record is not None and Path(record.directory) != self.directory:
            if alive(Path(record.directory)):
                raise RuntimeError(f"a real node of another cluster runs on this machine: {record.directory}")
            _say(f"cleaning up the real node that {record.directory} left behind")
            if left := Node(Path(record.directory)).clean():
                raise RuntimeError("could not clean up the real node left behind: " + "; ".join(left))
            record = None
        if record is None:
            record = HostRecord.take(self.directory)
            record.save()
        return record

    def prepare(self, ca: pki.KeyPair, server: str, ports: dict[str, int]) -> dict[str, Path]:
        """Write every configuration file, make the cgroup root and the node's credentials (the host must be
        claimed first). Returns the files the processes are started with."""
        if overlap := _overlapping_route(POD_SUBNET):
            raise RuntimeError(f"the pod subnet {POD_SUBNET} overlaps this machine's route {overlap}")
        for sub in ("containerd", "runc", "cni/net.d", "cni/ipam", "kubelet", "pki", "bin"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "containerd.toml").write_text(containerd_config(self.dir))
        (self.dir / "cni" / "net.d" / "10-localkube.conflist").write_text(json.dumps(cni_config(self.dir)))
        (self.dir / "resolv.conf").write_text("")
        _make_cgroup_root()
        _make_bridge()  # before any pod: CoreDNS listens on its address
        # containerd finds its shim on PATH, under its own name
        shim = self.dir / "bin" / "containerd-shim-runc-v2"
        shim.unlink(missing_ok=True)
        shim.symlink_to(binaries.ensure("containerd-shim-runc-v2"))
        name = socket.gethostname()
        ip = host_ip()
        d = self.dir / "pki"
        client = pki.issue(ca, d, "kubelet-client", f"system:node:{name}", orgs=("system:nodes",))
        serving = pki.issue(ca, d, "kubelet-serving", name, hosts=(name, ip, "127.0.0.1"))
        kubeconfig = pki.write_kubeconfig(
            d / "kubelet.kubeconfig", server, ca, client, user=f"system:node:{name}"
        )
        config = self.dir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(self.dir, ports, ca.cert, serving)))
        proxy_user, dns_user = servicenet.KUBE_PROXY_USER, servicenet.COREDNS_USER
        proxy_kubeconfig = pki.write_kubeconfig(
            d / "kube-proxy.kubeconfig",
            server,
            ca,
            pki.issue(ca, d, "kube-proxy", proxy_user),
            user=proxy_user,
        )
        dns_kubeconfig = pki.write_kubeconfig(
            d / "coredns.kubeconfig", server, ca, pki.issue(ca, d, "coredns", dns_user), user=dns_user
        )
        proxy_config = self.dir / "kube-proxy.yaml"
        proxy_config.write_text(
            yaml.safe_dump(servicenet.kube_proxy_config(proxy_kubeconfig, name, POD_SUBNET, ports))
        )
        corefile = self.dir / "Corefile"
        corefile.write_text(servicenet.corefile(DNS_IP, ports["coredns-ready"], dns_kubeconfig))
        return {"config": config, "kubeconfig": kubeconfig, "kube-proxy": proxy_config, "coredns": corefile}

    def containerd_command(self) -> tuple[list[str], dict[str, str]]:
        cmd = [str(binaries.ensure("containerd")), "--config", str(self.dir / "containerd.toml")]
        env = {"PATH": f"{self.dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        return cmd, env

    def kubelet_command(self, files: dict[str, Path]) -> list[str]:
        return [
            str(binaries.ensure("kubelet")),
            f"--config={files['config']}",
            f"--kubeconfig={files['kubeconfig']}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'pki'}",
            f"--hostname-override={socket.gethostname()}",
            f"--node-ip={host_ip()}",
            "--v=1",
        ]

    def kube_proxy_command(self, files: dict[str, Path]) -> list[str]:
        return [str(binaries.ensure("kube-proxy")), f"--config={files['kube-proxy']}", "--v=1"]

    def coredns_command(self, files: dict[str, Path]) -> list[str]:
        return [str(binaries.ensure("coredns")), "-conf", str(files["coredns"])]

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(binaries.ensure("ctr")),
            "--address",
            str(self.containerd_socket),
            "-n",
            IMAGE_NAMESPACE,
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)

    def has_image(self, name: str) -> bool:
        return name in self.ctr("images", "ls", "-q").stdout.split()

    def import_image(self, archive: Path, name: str) -> None:
        """Load an OCI archive into the kubelet's image store as `name`, which is the archive's repository
        and its reference's tag (pods must never pull it)."""
        self.ctr("images", "import", "--base-name", name.rsplit(":", 1)[0], str(archive))
        if not self.has_image(name):
            raise RuntimeError(f"importing {archive} as {name} left no image of that name")

    def import_rootfs(self, rootfs: Path, name: str, entrypoint: list[str]) -> None:
        """Make an image of a root filesystem and load it as `name`, unless it is loaded already."""
        if self.has_image(name):
            return
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            tag = name.rsplit(":", 1)[1]
            archive = oci_archive(
                rootfs, Path(tmp) / "image.tar", entrypoint=entrypoint, work=Path(tmp), tag=tag
            )
            self.import_image(archive, name)

    def import_pause(self) -> None:
        """The sandbox image, made here from our pause program: no registry to pull it from."""
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            rootfs = Path(tmp) / "rootfs"
            rootfs.mkdir()
            shutil.copy2(binaries.ensure("pause"), rootfs / "pause")
            self.import_rootfs(rootfs, SANDBOX_IMAGE, ["/pause"])

    def clean(self) -> list[str]:
        """Remove what the node made on the host, once the kubelet and containerd are stopped: container
        processes, mounts, network namespaces, the bridge, cgroups; then put back the sysctls and host
        paths as they were. Returns what could not be removed (empty when all went)."""
        record = HostRecord.load()
        if record is None or Path(record.directory) != self.directory:
            return []  # this cluster's node was cleaned up already (or never ran)
        left: list[str] = []
        _kill_all(self.dir)
        left += servicenet.remove_chains()
        for point in sorted(_our_mounts(self.dir, record), key=len, reverse=True):
            if libc_umount(point) != 0 and point in _mountpoints():
                left.append(f"mount {point}")
        if os.path.isdir("/run/netns"):
            for ns in os.listdir("/run/netns"):
                if ns not in record.netns:
                    with contextlib.suppress(OSError):
                        os.remove(f"/run/netns/{ns}")
        if BRIDGE in _links():
            # The pods' veths go with their network namespaces, but the kernel takes its time (over 10 s,
            # seen under load): delete each one on our bridge now, which removes both its ends.
            shown = subprocess.run(
                ["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True, text=True
            )
            for line in shown.stdout.splitlines():
                veth = line.split(":")[1].strip().split("@")[0]
                subprocess.run(["ip", "link", "delete", veth], capture_output=True)
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        left += _remove_cgroups()
        for name, value in record.sysctls.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", name).write_text(value)
        for path in sorted(record.absent_paths, key=len, reverse=True):
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    left.append(f"path {path}")
        if not left:
            RECORD.unlink(missing_ok=True)
        return left


def _overlapping_route(subnet: ipaddress.IPv4Network) -> str | None:
    out = subprocess.run(["ip", "-4", "-o", "route", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        words = line.split()
        if not words or words[0] == "default" or (len(words) > 2 and words[2] == BRIDGE):
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(words[0], strict=False).overlaps(subnet):
                return line.strip()
    return None


def _make_cgroup_root() -> None:
    """The kubelet's cgroup root, in every hierarchy; cpuset needs its cpus and mems set before use."""
    for hierarchy in _hierarchies():
        root = hierarchy / CGROUP_ROOT
        root.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            parent = hierarchy / knob
            if parent.exists() and not (root / knob).read_text().strip():
                (root / knob).write_text(parent.read_text())


def _make_bridge() -> None:
    """The pods' bridge with the host's address on it, as the CNI bridge plugin would make it (and then
    finds it made)."""
    if BRIDGE not in _links():
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True, capture_output=True)
    address = f"{DNS_IP}/{POD_SUBNET.prefixlen}"
    shown = subprocess.run(["ip", "-o", "addr", "show", BRIDGE], capture_output=True, text=True).stdout
    if address not in shown.split():
        subprocess.run(["ip", "addr", "add", address, "dev", BRIDGE], check=True, capture_output=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True, capture_output=True)


def _remove_cgroups() -> list[str]:
    left = []
    for hierarchy in _hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.exists():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, root]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # a process that was just killed may not have left it yet
            if d.exists():
                left.append(f"cgroup {d}")
    return left


def _kill_all(node_dir: Path) -> None:
    """SIGKILL every container process and shim of the node, until none is left (or 10 s pass)."""
    deadline = time.monotonic() + 10
    while (found := list(_node_processes(node_dir))) and time.monotonic() < deadline:
        for pid, _ in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _our_mounts(node_dir: Path, record: HostRecord) -> list[str]:
    """Mounts the node made: under its own folder, its network namespaces, and under host paths it made."""
    made = (*record.absent_paths, str(node_dir), "/run/containerd", "/var/lib/kubelet")
    return [
        m
        for m in _mountpoints()
        if m.startswith(made) or (m.startswith("/run/netns/") and m.rsplit("/", 1)[1] not in record.netns)
    ]


def libc_umount(point: str) -> int:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return int(libc.umount2(point.encode(), MNT_DETACH))


def busybox_rootfs(where: Path) -> Path:
    """A root filesystem of Debian's static busybox, with its applets linked (sh, httpd, wget, ...)."""
    rootfs = where / "busybox-rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").mkdir(exist_ok=True)
    shutil.copy2(PACKAGES["busybox-static"], rootfs / "bin" / "busybox")
    subprocess.run([str(rootfs / "bin" / "busybox"), "--install", "-s", str(rootfs / "bin")], check=True)
    for link in (rootfs / "bin").iterdir():  # --install links to the absolute host path: make them relative
        if link.is_symlink():
            link.unlink()
            link.symlink_to("busybox")
    return rootfs
