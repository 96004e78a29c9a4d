"""What a process costs, read from /proc: CPU from every thread's schedstat (nanoseconds,
not 10 ms ticks), wakeups as context switches of every thread, resident memory. Used by
the benchmark and by tests/perf alike."""

from __future__ import annotations

import math
import os


def threads(pid: int) -> list[str]:
    return os.listdir(f"/proc/{pid}/task")


def cpu_ns(pid: int) -> int:
    """CPU time of all the process's threads so far (user + system), in ns."""
    total = 0
    for tid in threads(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return total


def switches_by_kind(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all the process's threads so far."""
    voluntary = involuntary = 0
    for tid in threads(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return voluntary, involuntary


def switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all the process's threads so far."""
    return sum(switches_by_kind(pid))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank: the ceil(q * n)-th smallest value."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


class Usage:
    """CPU and wakeups of a set of processes between two moments (start() .. stop())."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self._t0 = self._cpu0 = self._sw0 = 0.0
        self.seconds = self.cpu_s = 0.0
        self.switches = 0

    def start(self) -> None:
        import time

        self._cpu0 = sum(cpu_ns(p) for p in self.pids)
        self._sw0 = sum(switches(p) for p in self.pids)
        self._t0 = time.monotonic()

    def stop(self) -> Usage:
        import time

        self.seconds = time.monotonic() - self._t0
        self.cpu_s = (sum(cpu_ns(p) for p in self.pids) - self._cpu0) / 1e9
        self.switches = int(sum(switches(p) for p in self.pids) - self._sw0)
        return self

    @property
    def share(self) -> float:
        """Of one core."""
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def wakeups_per_s(self) -> float:
        return self.switches / self.seconds if self.seconds else 0.0
