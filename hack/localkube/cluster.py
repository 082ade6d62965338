"""A real Kubernetes control plane on this machine, without containers.

etcd, kube-apiserver (RBAC, client certificates, ServiceAccount signing), kube-controller-manager,
kube-scheduler, kwok for fake nodes whose pod IPs a local process can listen on (see podnet), and a
small PV provisioner. Or, instead of kwok, a real node: a kubelet with containerd that runs pods for real
(see node), with kube-proxy and CoreDNS so that its pods reach Services and the API server (see servicenet).
Every process runs in its own session with its log under the cluster directory; `state.json` records
what was started so that `down` can stop all of it, even from another process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from localkube import binaries, pki, podnet, servicenet
from localkube.node import NODE_BINARIES, Node, ensure_packages, host_ip
from localkube.node import missing as node_missing

HERE = Path(__file__).resolve().parent
STAGES = HERE / "stages.yaml"
STORAGE_CLASS = "standard"
PROVISIONER = "localkube.taskpod.dev/hostpath"
NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE = "kwok-node-"  # the fake nodes' names: kwok-node-0, kwok-node-1, ...
SERVICE_CIDR = "10.0.0.0/24"
COMPONENT_ORDER = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "provisioner",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
]
NODE_KINDS = ("kwok", "real")


def _say(msg: str) -> None:
    print(f"[localkube] {msg}", file=sys.stderr, flush=True)


@dataclass
class Process:
    pid: int
    started: str  # /proc/<pid>/stat start time: tells our process from a later one that reused the pid
    cmd: list[str]
    log: str


@dataclass
class State:
    directory: str
    kubeconfig: str
    server: str
    pod_cidrs: list[str]
    ports: dict[str, int]
    processes: dict[str, Process] = field(default_factory=dict)
    routes: list[str] = field(default_factory=list)  # local routes added for pod IPs, removed on down
    node: str = "kwok"  # kwok: fake nodes; real: a kubelet with containerd (see node.py)

    def save(self) -> None:
        Path(self.directory, "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> State | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["processes"] = {k: Process(**v) for k, v in raw.get("processes", {}).items()}
        return cls(**raw)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(proc: Process) -> bool:
    """Our process still runs: the pid is not reused by another, and it is not a zombie (one this
    process started and has not reaped yet)."""
    if _start_time(proc.pid) != proc.started:
        return False
    with contextlib.suppress(ChildProcessError):  # ours, and exited: reap it now
        if os.waitpid(proc.pid, os.WNOHANG)[0] == proc.pid:
            return False
    return True


def _free_ports(names: list[str]) -> dict[str, int]:
    """Ask the kernel for distinct free ports, holding them all open until every one is chosen."""
    socks = []
    try:
        for _ in names:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return {name: s.getsockname()[1] for name, s in zip(names, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def _set_pdeathsig() -> None:
    """Run in the child: die with the parent, so a crashed test run leaves no control plane behind.

    SIGKILL, not SIGTERM: with etcd gone too, kube-apiserver's graceful shutdown can hang for good."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalCluster:
    """Start, query and stop a control plane rooted at `directory`."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).resolve()
        self._tie = False
        self._audit_users: tuple[str, ...] = ()

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def state(self) -> State | None:
        return State.load(self.directory)

    def running(self) -> bool:
        """Every component it started runs: usable as it is."""
        state = self.state()
        return bool(state and state.processes and all(_alive(p) for p in state.processes.values()))

    def alive(self) -> bool:
        """Some component it started still runs: not usable perhaps, but not gone, so its routes and
        files are still its own (one component stopped or restarted by a test is not a dead cluster)."""
        state = self.state()
        return bool(state and any(_alive(p) for p in state.processes.values()))

    # -- one component at a time (what the fault tests do to a live cluster) -------------------

    def kill(self, name: str) -> None:
        """SIGKILL one component, as a crash would; its record stays, for start() to bring it back."""
        state = self.state()
        assert state is not None, f"no cluster in {self.directory}"
        proc = state.processes[name]
        if _alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        while _alive(proc):
            time.sleep(0.05)

    def start(self, name: str) -> None:
        """Start a killed component again with the command it ran before; for the API server, wait
        until it is ready."""
        state = self.state()
        assert state is not None, f"no cluster in {self.directory}"
        proc = state.processes[name]
        if _alive(proc):
            return
        self._spawn(state, name, proc.cmd)
        if name == "kube-apiserver":
            self._wait(state, name, lambda: _ready(state, self.directory / "pki"), timeout=90)

    def revive(self) -> list[str]:
        """Start again every component that has exited, as a kubelet would restart a static pod
        (kube-scheduler exits when its cache turns inconsistent, which an API server restart can cause);
        returns their names."""
        state = self.state()
        assert state is not None, f"no cluster in {self.directory}"
        dead = [
            name for name in COMPONENT_ORDER if name in state.processes and not _alive(state.processes[name])
        ]
        for name in dead:
            self.start(name)
        return dead

    # -- start ---------------------------------------------------------------------------------

    def up(
        self,
        nodes: int = 1,
        tie_to_parent: bool = False,
        pod_network: str = "auto",
        audit_users: tuple[str, ...] = (),
        node: str = "kwok",
    ) -> State:
        """Start everything and return once nodes are Ready and the default ServiceAccount exists.

        `pod_network` is auto, loopback or routed (see podnet). Requests made by `audit_users` are
        written to `audit.log` in the cluster directory (JSON lines, metadata only), which is how the
        benchmark counts the API calls of the operator and of its floor client. `node` is kwok (`nodes`
        fake nodes) or real (one real node, this machine; see node.py)."""
        if self.running():
            state = self.state()
            assert state is not None
            _say(f"already running: {state.server} (kubeconfig {state.kubeconfig})")
            return state
        self.down(quiet=True)
        real = node == "real"
        if real and (why := node_missing()) is not None:
            raise RuntimeError(f"cannot run a real node here: {why}")
        bins = binaries.ensure_all(
            ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
            + (NODE_BINARIES if real else [])
        )
        if real:
            ensure_packages()
        started = time.monotonic()
        for sub in ("pki", "etcd", "volumes"):
            shutil.rmtree(self.directory / sub, ignore_errors=True)
        pki_dir = self.directory / "pki"
        pki_dir.mkdir(parents=True)
        ports = _free_ports(
            ["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
            + (
                ["kubelet", "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics", "coredns-ready"]
                if real
                else []
            )
        )
        podnet.prune(in_use)
        cidrs, routes = podnet.choose(pod_network, nodes, owner=self.directory) if not real else ([], [])
        state = State(
            directory=str(self.directory),
            kubeconfig=str(self.kubeconfig),
            server=f"https://127.0.0.1:{ports['kube-apiserver']}",
            pod_cidrs=cidrs,
            ports=ports,
            routes=routes,
            node=node,
        )
        state.save()  # from here on, `down` knows the routes to remove
        certs = self._make_pki(pki_dir, state)
        self._tie = tie_to_parent
        self._audit_users = audit_users
        try:
            self._start_etcd(state, bins["etcd"])
            self._start_apiserver(state, bins["kube-apiserver"], certs)
            self._register_nodes(state)
            self._start_controllers(state, bins, certs)
            if real:
                self._start_real_node(state, certs)
            self._wait_ready(state)
        except BaseException:
            state.save()
            self.down(quiet=True)
            raise
        state.save()
        _say(f"ready in {time.monotonic() - started:.1f}s: {state.server}, kubeconfig {state.kubeconfig}")
        return state

    def _make_pki(self, d: Path, state: State) -> dict[str, pki.KeyPair]:
        ca = pki.make_ca(d)
        sa = pki.make_signing_key(d)
        hosts = (
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            *([host_ip()] if state.node == "real" else []),  # the `kubernetes` Service's endpoint
        )
        certs = {
            "ca": ca,
            "sa": sa,
            "apiserver": pki.issue(ca, d, "kube-apiserver", "kube-apiserver", hosts=hosts),
            "admin": pki.issue(ca, d, "admin", "localkube-admin", orgs=("system:masters",)),
            # how the API server authenticates to kubelets (logs, exec, the pods' proxy)
            "kubelet-client": pki.issue(
                ca, d, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",)
            ),
        }
        pki.write_kubeconfig(self.kubeconfig, state.server, ca, certs["admin"])
        for name, cn in [
            ("kube-controller-manager", "system:kube-controller-manager"),
            ("kube-scheduler", "system:kube-scheduler"),
        ]:
            pair = pki.issue(ca, d, name, cn)
            pki.write_kubeconfig(d / f"{name}.kubeconfig", state.server, ca, pair, user=cn)
        return certs

    def _spawn(self, state: State, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the shell that ran `make cluster`
                env={**os.environ, **(env or {})},
                preexec_fn=_set_pdeathsig if self._tie else None,
            )
        started = _start_time(proc.pid) or ""
        state.processes[name] = Process(proc.pid, started, cmd, str(log))
        state.save()

    def _start_etcd(self, state: State, etcd: Path) -> None:
        client = f"http://127.0.0.1:{state.ports['etcd']}"
        peer = f"http://127.0.0.1:{state.ports['etcd-peer']}"
        self._spawn(
            state,
            "etcd",
            [
                str(etcd),
                "--name=localkube",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=localkube={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(
            state, "etcd", lambda: httpx.get(f"{client}/health", timeout=2).json().get("health") == "true"
        )

    def _start_apiserver(self, state: State, apiserver: Path, certs: dict[str, pki.KeyPair]) -> None:
        d = self.directory / "pki"
        if state.node == "real":  # pods reach it through the `kubernetes` Service, at this machine's address
            address = ["--bind-address=0.0.0.0", f"--advertise-address={host_ip()}"]
        else:  # the loopback address is not a valid Endpoints IP: no `kubernetes` endpoints
            address = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
            ]
        self._spawn(
            state,
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
                *address,
                f"--secure-port={state.ports['kube-apiserver']}",
                f"--cert-dir={d}",
                f"--tls-cert-file={certs['apiserver'].cert}",
                f"--tls-private-key-file={certs['apiserver'].key}",
                f"--client-ca-file={certs['ca'].cert}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs['sa'].cert}",
                f"--service-account-signing-key-file={certs['sa'].key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={certs['kubelet-client'].cert}",
                f"--kubelet-client-key={certs['kubelet-client'].key}",
                f"--kubelet-certificate-authority={certs['ca'].cert}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--profiling=false",
                *self._audit_flags(),
            ],
        )
        self._wait(state, "kube-apiserver", lambda: _ready(state, d), timeout=90)

    def _register_nodes(self, state: State) -> None:
        """Create the fake Nodes (kwok manages but never creates them) and the default StorageClass."""
        api = _client(self.kubeconfig)
        from kubernetes import client

        core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
        for i, cidr in enumerate(state.pod_cidrs):  # none for a real node: its kubelet registers it
            name = f"{KWOK_NODE}{i}"
            core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "type": "kwok",
                        },
                    },
                    "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                }
            )
        storage.create_storage_class(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "WaitForFirstConsumer",
            }
        )

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self._audit_users:
            return []
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "Metadata", "users": list(self._audit_users)},
                {"level": "None"},
            ],
        }
        path = self.directory / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        self.audit_log.unlink(missing_ok=True)
        return [
            f"--audit-policy-file={path}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
        ]

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ("system:masters",)) -> Path:
        """A kubeconfig for a client certificate of `user` (in `groups`), signed by the cluster's CA."""
        state = self.state()
        if state is None:
            raise RuntimeError(f"no cluster in {self.directory}")
        d = self.directory / "pki"
        ca = pki.KeyPair(d / "localkube-ca.crt", d / "localkube-ca.key")
        pair = pki.issue(ca, d, f"user-{user}", user, orgs=groups)
        return pki.write_kubeconfig(self.directory / f"{user}.kubeconfig", state.server, ca, pair, user=user)

    def _start_controllers(self, state: State, bins: dict[str, Path], certs: dict[str, pki.KeyPair]) -> None:
        d = self.directory / "pki"
        for name in ("kube-controller-manager", "kube-scheduler"):
            kc = d / f"{name}.kubeconfig"
            extra = (
                [
                    f"--service-account-private-key-file={certs['sa'].key}",
                    f"--root-ca-file={certs['ca'].cert}",
                    "--use-service-account-credentials=true",
                    f"--cluster-signing-cert-file={certs['ca'].cert}",
                    f"--cluster-signing-key-file={certs['ca'].key}",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                ]
                if name == "kube-controller-manager"
                else ["--kube-api-qps=200", "--kube-api-burst=400"]
            )
            self._spawn(
                state,
                name,
                [
                    str(bins[name]),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={state.ports[name]}",
                    *extra,
                ],
            )
        if state.node == "kwok":
            self._start_kwok(state, bins["kwok"])
        self._spawn(
            state,
            "provisioner",
            [
                sys.executable,
                "-m",
                "localkube.provisioner",
                f"--kubeconfig={self.kubeconfig}",
                f"--root={self.directory / 'volumes'}",
            ],
            env={"PYTHONPATH": str(HERE.parent)},
        )

    def _start_kwok(self, state: State, kwok: Path) -> None:
        self._spawn(
            state,
            "kwok",
            [
                str(kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={STAGES}",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--node-ip={state.pod_cidrs[0].rsplit('.', 1)[0]}.1",
                f"--server-address=127.0.0.1:{state.ports['kwok']}",
            ],
            env={"HOME": str(self.directory)},
        )  # kwok always loads ~/.kwok/kwok.yaml; keep a user's out

    def _start_real_node(self, state: State, certs: dict[str, pki.KeyPair]) -> None:
        """containerd, the sandbox image, then the kubelet, which registers this machine as a node; then
        kube-proxy and CoreDNS, for the pods' Services."""
        node = Node(self.directory)
        node.claim_host(lambda directory: LocalCluster(directory).alive())
        files = node.prepare(certs["ca"], state.server, state.ports)
        cmd, env = node.containerd_command()
        self._spawn(state, "containerd", cmd, env=env)
        self._wait(state, "containerd", lambda: node.ctr("version").returncode == 0)
        node.import_pause()
        self._spawn(state, "kubelet", node.kubelet_command(files))
        from kubernetes import utils

        utils.create_from_yaml(_client(self.kubeconfig), yaml_objects=servicenet.coredns_rbac())
        self._spawn(state, "kube-proxy", node.kube_proxy_command(files))
        self._spawn(state, "coredns", node.coredns_command(files))

    def _wait_ready(self, state: State) -> None:
        from kubernetes import client

        api = _client(self.kubeconfig)
        core = client.CoreV1Api(api)

        def nodes_ready() -> bool:
            nodes = core.list_node().items
            return bool(nodes) and all(
                any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
                for n in nodes
            )

        def default_service_account() -> bool:
            return any(
                sa.metadata.name == "default" for sa in core.list_namespaced_service_account("default").items
            )

        def scheduler_healthy() -> bool:
            return (
                httpx.get(
                    f"https://127.0.0.1:{state.ports['kube-scheduler']}/healthz", verify=False, timeout=2
                ).text
                == "ok"
            )

        self._wait(state, "kwok" if state.node == "kwok" else "kubelet", nodes_ready, timeout=120)
        if state.node == "real":
            for name, url in [
                ("kube-proxy", f"http://127.0.0.1:{state.ports['kube-proxy-healthz']}/healthz"),
                ("coredns", f"http://127.0.0.1:{state.ports['coredns-ready']}/ready"),
            ]:
                self._wait(state, name, lambda url=url: httpx.get(url, timeout=2).status_code == 200)
        self._wait(state, "kube-controller-manager", default_service_account)
        self._wait(state, "kube-scheduler", scheduler_healthy)

    def _wait(self, state: State, name: str, check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc_name, proc in state.processes.items():
                if not _alive(proc):
                    tail = Path(proc.log).read_text(errors="replace").splitlines()[-20:]
                    raise RuntimeError(
                        f"{proc_name} exited during start-up; last lines of {proc.log}:\n" + "\n".join(tail)
                    )
            try:
                if check():
                    return
            except Exception as exc:  # not up yet: connection refused, 403 before RBAC bootstrap, ...
                last = exc
            time.sleep(0.25)
        raise TimeoutError(
            f"{name} not ready after {timeout:.0f}s (last error: {last}); see {self.directory}"
        )

    # -- stop ----------------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> None:
        """Stop every process this cluster started (SIGTERM, then SIGKILL), newest first."""
        state = self.state()
        if state is None:
            if not quiet:
                _say(f"no cluster state in {self.directory}; nothing to stop")
            return
        order = sorted(
            state.processes,
            key=lambda n: COMPONENT_ORDER.index(n) if n in COMPONENT_ORDER else 99,
            reverse=True,
        )
        for name in order:
            proc = state.processes[name]
            if _alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in state.processes.values()):
            time.sleep(0.1)
        for proc in state.processes.values():
            if _alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        state.processes = {}
        if state.node == "real":
            left = Node(self.directory).clean()
            if left:
                _say("could not remove all the real node left behind: " + "; ".join(left))
        podnet.remove_routes(state.routes)
        state.routes = []
        state.save()
        if not quiet:
            _say(f"stopped the control plane in {self.directory}")


def in_use(directory: Path) -> bool:
    """Whether the cluster in `directory` may still use what it made (its pod routes): some component
    of it runs, or it is starting."""
    return LocalCluster(directory).alive() or podnet.recently_started(directory)


def _ready(state: State, pki_dir: Path) -> bool:
    """The API server answers /readyz to the admin."""
    tls = ssl.create_default_context(cafile=str(pki_dir / "localkube-ca.crt"))
    tls.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
    with httpx.Client(verify=tls) as c:
        return c.get(f"{state.server}/readyz", timeout=3).text == "ok"


def _client(kubeconfig: Path) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def kubeconfig_server(kubeconfig: Path) -> str:
    data = yaml.safe_load(kubeconfig.read_text())
    return str(data["clusters"][0]["cluster"]["server"])
