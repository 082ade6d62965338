"""Pod IPs that a local process can listen on, so the workspace simulator can play every pod.

kwok gives each pod an IP from its node's pod CIDR but runs nothing there. Two ways make such an IP
answer on this machine:

- loopback: CIDRs inside 127.0.0.0/8, which Linux already routes to `lo`. Needs no privilege, but the
  API server refuses to proxy to loopback addresses, so `pods/proxy` cannot reach these pods.
- routed: CIDRs inside 198.18.0.0/15 (RFC 2544's benchmarking block, never used on a real network),
  made local with one `ip route add local <cidr> dev lo` per node. Needs CAP_NET_ADMIN; in return the
  API server proxies to the pods like it would on a real cluster. `down` removes the routes.

`auto` takes routed when this process may add routes, otherwise loopback.

A cluster that dies without `down` (its test run SIGKILLed) would leave its routes behind, so each route
has an owner record in ~/.cache/taskpod/routes naming the cluster directory, and `prune` removes the
routes of clusters that are gone before a new one picks its range.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

MODES = ("auto", "loopback", "routed")
ROUTED_BLOCK = ipaddress.IPv4Network("198.18.0.0/15")
ROUTE_PROTO = "187"  # marks our routes in `ip route show proto 187`
OWNERS = Path.home() / ".cache" / "taskpod" / "routes"


def _owner_file(cidr: str) -> Path:
    return OWNERS / cidr.replace("/", "_")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("ip") or "/sbin/ip"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=10)


def _local_routes() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix of the local routing table (what this machine already answers for)."""
    try:
        out = _ip("-4", "route", "show", "table", "local").stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    nets = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("local", "broadcast"):
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(words[1], strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def _listening_loopback_octets() -> set[int]:
    used = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            addr = line.split()[1].split(":")[0]
            octets = bytes.fromhex(addr)[::-1]  # little-endian hex
            if octets[0] == 127:
                used.add(octets[1])
    return used


def loopback_cidrs(nodes: int) -> list[str]:
    """127.X.N.0/24 per node, with an X that no listening socket on this machine uses yet."""
    used = _listening_loopback_octets()
    octet = random.choice([o for o in range(20, 250) if o not in used])
    return [f"127.{octet}.{i}.0/24" for i in range(nodes)]


def _our_routes() -> list[str]:
    try:
        out = _ip("-4", "route", "show", "table", "local", "proto", ROUTE_PROTO).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[1] for line in out.splitlines() if line.startswith("local ")]


def prune(alive: Callable[[Path], bool]) -> list[str]:
    """Remove our routes whose cluster (per its owner record) is no longer alive; returns them."""
    gone = []
    for cidr in _our_routes():
        owner = _owner_file(cidr)
        try:
            directory = Path(owner.read_text().strip())
        except OSError:
            directory = None
        if directory is not None and alive(directory):
            continue
        remove_routes([cidr])
        gone.append(cidr)
    return gone


def recently_started(directory: Path, grace: float = 300) -> bool:
    """A cluster whose state was written lately may still be starting: leave its routes alone."""
    try:
        return time.time() - (directory / "state.json").stat().st_mtime < grace
    except OSError:
        return False


def routed_cidrs(nodes: int, owner: Path | None = None) -> list[str] | None:
    """Add a local route per node for free /24s of ROUTED_BLOCK; None when routes can't be added."""
    taken = _local_routes()
    subnets: list[ipaddress.IPv4Network] = list(ROUTED_BLOCK.subnets(new_prefix=24))
    starts = [
        i
        for i in range(len(subnets) - nodes + 1)
        if not any(s.overlaps(t) for s in subnets[i : i + nodes] for t in taken)
    ]
    if not starts:
        return None
    start = random.choice(starts)
    cidrs = [str(s) for s in subnets[start : start + nodes]]
    added: list[str] = []
    for cidr in cidrs:
        if owner is not None:  # the record first: a route never exists without its owner's name
            with contextlib.suppress(OSError):
                OWNERS.mkdir(parents=True, exist_ok=True)
                _owner_file(cidr).write_text(str(owner))
        try:
            result = _ip("route", "add", "local", cidr, "dev", "lo", "proto", ROUTE_PROTO)
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is None or result.returncode != 0:
            remove_routes(added)
            return None
        added.append(cidr)
    return cidrs


def remove_routes(cidrs: list[str]) -> None:
    for cidr in cidrs:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _ip("route", "del", "local", cidr, "dev", "lo", "proto", ROUTE_PROTO)
        _owner_file(cidr).unlink(missing_ok=True)


def choose(mode: str, nodes: int, owner: Path | None = None) -> tuple[list[str], list[str]]:
    """Pod CIDRs for `nodes` nodes, and the routes added for them (to remove on `down`)."""
    if mode not in MODES:
        raise ValueError(f"pod network must be one of {', '.join(MODES)}, not {mode!r}")
    if mode in ("auto", "routed"):
        cidrs = routed_cidrs(nodes, owner)
        if cidrs is not None:
            return cidrs, list(cidrs)
        if mode == "routed":
            raise RuntimeError(
                "could not add a local route for pod IPs in 198.18.0.0/15: "
                "`ip route add local ... dev lo` needs CAP_NET_ADMIN "
                "(run as root, or use --pod-network loopback)"
            )
    return loopback_cidrs(nodes), []
