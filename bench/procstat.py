"""CPU seconds and memory of a process (the operator), sampled from /proc while phases run."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
