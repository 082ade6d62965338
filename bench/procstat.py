"""CPU seconds and memory of a process (the operator), sampled from /proc while phases run; and the CPU
seconds of every process the bench started, by name, to say where a phase's time went."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(proc: Path) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces): state, ppid, ..."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def _cpu(stat: list[str]) -> float:
    return (int(stat[11]) + int(stat[12])) / TICKS  # utime + stime


def cpu_seconds(pid: int) -> float:
    return _cpu(_stat(Path(f"/proc/{pid}")))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _name(cmdline: list[str]) -> str:
    """kube-apiserver-v1.36.3 -> kube-apiserver; python -m taskpod -> taskpod."""
    if "-m" in cmdline[:-1]:
        return cmdline[cmdline.index("-m") + 1]
    return Path(cmdline[0]).name.split("-v")[0] if cmdline else "?"  # empty: a kernel thread, a zombie


def cpu_by_process(root: int | None = None) -> dict[str, float]:
    """CPU seconds so far of `root` (this process by default) and every process below it, summed by name.
    A process that ends between two readings takes its seconds with it."""
    root = root or os.getpid()
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = _stat(entry)
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        parents[pid] = int(stat[1])
        names[pid] = _name(cmdline)
        seconds[pid] = _cpu(stat)
    totals: dict[str, float] = {}
    for pid, cpu in seconds.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            name = "bench" if pid == root else names[pid]
            totals[name] = totals.get(name, 0.0) + cpu
    return totals


def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each process used between two readings, the busiest first, leaving out the idle ones."""
    used = {name: round(cpu - before.get(name, 0.0), 1) for name, cpu in after.items()}
    return dict(sorted(((k, v) for k, v in used.items() if v >= 0.1), key=lambda kv: -kv[1]))


@dataclass
class Usage:
    cpu_seconds: float
    peak_rss_mib: float
    end_rss_mib: float


class Sampler:
    """Samples RSS every `interval` seconds in a thread; `phase()` marks a phase's start and end."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._cpu0 = cpu_seconds(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._peak = max(self._peak, rss_mib(self.pid))
            except OSError:
                return

    def start_phase(self) -> None:
        self._cpu0 = cpu_seconds(self.pid)
        self._peak = rss_mib(self.pid)

    def end_phase(self) -> Usage:
        rss = rss_mib(self.pid)
        self._peak = max(self._peak, rss)
        return Usage(round(cpu_seconds(self.pid) - self._cpu0, 2), round(self._peak, 1), round(rss, 1))

    def stop(self) -> None:
        self._stop.set()
        time.sleep(0)
