"""Server CPU per operation, read from /proc: user plus system time of a process and all its
threads. Steadier than throughput on a shared machine, where the load generator competes for
the same cores."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process, all its threads, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuMeter:
    """CPU a process spent between `start()` and `stop()`, in seconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = 0.0
        self.seconds = 0.0

    def start(self) -> CpuMeter:
        self.started = cpu_seconds(self.pid)
        return self

    def stop(self) -> float:
        self.seconds = cpu_seconds(self.pid) - self.started
        return self.seconds
