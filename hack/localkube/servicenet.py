"""How pods on the real node reach Services: kube-proxy for ClusterIPs, CoreDNS for `*.svc` names.

Both run as host processes of the node, as the kubelet does:
- kube-proxy (iptables mode) turns each Service's ClusterIP into the DNAT rules of its endpoints, the
  `kubernetes` Service's among them, whose endpoint is the API server on this machine's address. It
  masquerades all Service traffic, so that a pod's reply to another pod on the same bridge comes back
  through the host whether or not the host passes bridged packets to iptables (br_netfilter). It is told
  to set no sysctls (no conntrack tuning, no NodePorts on localhost).
- CoreDNS answers on the bridge's address (`DNS_IP`), which the kubelet gives pods as their nameserver:
  the cluster's names from the API server, every other name from the host's resolv.conf.

`down` removes every KUBE- chain (`remove_chains`); `iptables_rules` is what the host footprint compares
before and after.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
COREDNS_USER = "system:coredns"
KUBE_PROXY_USER = "system:kube-proxy"  # bound to system:node-proxier by the API server's bootstrap policy
TABLES = ("nat", "filter", "mangle")


def dns_ip(pod_subnet: ipaddress.IPv4Network) -> str:
    """The bridge's address, the host's on the pod network: where pods find cluster DNS."""
    return str(next(pod_subnet.hosts()))


def kube_proxy_config(
    kubeconfig: Path, hostname: str, pod_subnet: ipaddress.IPv4Network, ports: dict[str, int]
) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": hostname,
        "mode": "iptables",
        "clusterCIDR": str(pod_subnet),
        "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
        # masqueradeAll: pod -> ClusterIP -> pod on one bridge works without br_netfilter;
        # no localhost NodePorts: kube-proxy would set route_localnet
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
        # zeros: leave the host's conntrack sysctls as they are
        "conntrack": {
            "maxPerCore": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        "nodePortAddresses": ["primary"],
    }


def corefile(listen: str, ready_port: int, kubeconfig: Path) -> str:
    return f""".:53 {{
    bind {listen}
    ready 127.0.0.1:{ready_port}
    errors
    cache 30
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . /etc/resolv.conf
}}
"""


def coredns_rbac() -> list[dict[str, object]]:
    """What CoreDNS reads, as upstream's deployment grants it: a ClusterRole and its binding."""
    name = COREDNS_USER
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
        },
    ]


_COUNTERS = re.compile(r"\[\d+:\d+\]")
_JUMP = re.compile(r" -[jg] KUBE-")


_NOTHING = re.compile(r"^(\*\w+|COMMIT|:[A-Z]+ ACCEPT\s*)$")


def normalized_rules(saved: str) -> list[str]:
    """iptables-save output without its comments (dates) and packet counters, and without what a table
    shows by merely existing: its header, COMMIT, and built-in chains that accept. A fresh machine has
    no nat or mangle table until something loads it, and the same tables empty are the same host."""
    lines = (_COUNTERS.sub("", line) for line in saved.splitlines() if line and not line.startswith("#"))
    return [line for line in lines if not _NOTHING.match(line)]


def iptables_rules() -> list[str]:
    """The host's IPv4 and IPv6 rules of the tables kube-proxy writes, for the footprint."""
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            out = subprocess.run([tool, "-t", table], capture_output=True, text=True).stdout
            rules += [f"{tool} -t {table} {line}" for line in normalized_rules(out)]
    return rules


def removal(saved: str) -> str:
    """An `iptables-restore --noflush` script that removes every KUBE- chain in `saved` (iptables-save
    output) and every rule of another chain that jumps to one; empty when there are none."""
    script: list[str] = []
    table, chains, deletes = "", list[str](), list[str]()
    for line in saved.splitlines():
        if line.startswith("*"):
            table, chains, deletes = line, [], []
        elif line.startswith(":KUBE-"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A ") and not line.split()[1].startswith("KUBE-") and _JUMP.search(line):
            deletes.append("-D" + line[2:])
        elif line == "COMMIT" and (chains or deletes):
            script += [table, *deletes, *(f"-F {c}" for c in chains), *(f"-X {c}" for c in chains), "COMMIT"]
    return "".join(f"{line}\n" for line in script)


def remove_chains() -> list[str]:
    """Remove the node's iptables chains, IPv4 and IPv6: all of kube-proxy's, also its copy of the kubelet's
    KUBE-FIREWALL, which `kube-proxy --cleanup` leaves on purpose. Returns what could not be removed."""
    left = []
    for family in ("iptables", "ip6tables"):
        if shutil.which(f"{family}-save") is None:
            continue
        saved = subprocess.run([f"{family}-save"], capture_output=True, text=True).stdout
        if script := removal(saved):
            done = subprocess.run(
                [f"{family}-restore", "--noflush"], input=script, capture_output=True, text=True
            )
            if done.returncode != 0:
                left.append(f"{family} chains: {done.stderr.strip()}")
    return left
