"""Where a measured figure comes from: the code, the machine, and what else ran meanwhile.

scripts/reliability.py and scripts/soak.py put this above every figure they write, so a
figure in docs/ always comes with the commit it measured (and whether the tree had changes),
the machine, the load average before and after, and the other processes that used the CPU
while it ran. Nothing here is typed by hand: each value is read from git, /proc or the
process table at run time.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Processes that other test runs are made of; a process under one of them counts as that run.
JOBS = ("scripts/soak.py", "scripts/reliability.py", "pytest")
RUN = " (another run)"


# ------------------------------------------------------------------------------ the code
@dataclass(frozen=True)
class CodeState:
    commit: str  # abbreviated hash, or "unknown (...)"
    subject: str
    changed: tuple[str, ...]  # `git status --porcelain` lines: modified, added, untracked

    @property
    def dirty(self) -> bool:
        return bool(self.changed)


def code_state(root: Path) -> CodeState:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout

    try:
        commit, _, subject = git("log", "-1", "--format=%h %s").strip().partition(" ")
        changed = tuple(line for line in git("status", "--porcelain").splitlines() if line)
    except (OSError, subprocess.SubprocessError) as exc:
        reason = getattr(exc, "stderr", "") or str(exc)
        return CodeState(f"unknown ({reason.strip().splitlines()[0]})", "", ())
    return CodeState(commit, subject, changed)


# ------------------------------------------------------------------------------ the machine
def machine(python: str = sys.executable) -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown memory"
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1048576:.0f} GiB"
    try:
        mosquitto = subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        mosquitto = "mosquitto: not found"
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem}; "
        f"Linux {platform.release()} {platform.machine()}; "
        f"Python {platform.python_version()} ({python}); {mosquitto}"
    )


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


# ------------------------------------------------------------------------------ the CPU
@dataclass(frozen=True)
class Neighbour:
    """Other processes of one kind (or one other test run) seen during the watch."""

    label: str
    processes: int
    cores: float  # CPU seen, in cores on average over the watch


@dataclass(frozen=True)
class Activity:
    """What the machine did while a run was watched. CPU is in cores on average."""

    started: datetime.datetime
    seconds: float
    cores: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    busy: float  # the whole machine (/proc/stat: user, nice, system, irq, softirq)
    steal: float  # taken by the hypervisor from this VM
    own: float  # this run and every process it started and reaped (getrusage)
    neighbours: tuple[Neighbour, ...]  # other processes seen in /proc, the busiest first
    unlisted: float  # other processes seen below the listing threshold, together
    runs: tuple[tuple[str, tuple[int, ...]], ...]  # other test runs seen at all: kind, pids
    threshold: float  # a kind of process is listed from this many cores on
    samples: int
    period: float

    @property
    def rest(self) -> float:
        """Machine CPU not accounted to this run: other work, seen or too short-lived."""
        return max(0.0, self.busy - self.own)


@dataclass
class _Proc:
    key: tuple[int, int]  # pid, start time: a pid can be reused
    label: str
    job: int  # the pid of the test run it belongs to, or its own
    ticks: int  # CPU ticks at the last sight


@dataclass
class ProcessWatch:
    """Samples /proc every `period` s in a thread it owns, from start() to stop().

    Processes descending from this one are the run itself; every other process is a
    neighbour, grouped under the test run it belongs to (a process below another pytest or
    soak) or its own command. A neighbour that starts and ends between two samples is not
    seen; the machine's busy time (/proc/stat) still counts it, in Activity.rest.
    """

    period: float = 2.0
    threshold: float = 0.01
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _procs: dict[int, _Proc] = field(default_factory=dict)
    _by_label: dict[str, int] = field(default_factory=dict)  # ticks seen per label
    _pids: dict[str, set[int]] = field(default_factory=dict)
    _timeline: list[tuple[float, int]] = field(default_factory=list)  # wall time, others' ticks
    _others_ticks: int = 0
    _samples: int = 0

    def start(self) -> ProcessWatch:
        self._started = datetime.datetime.now(datetime.UTC)
        self._t0 = time.monotonic()
        self._load0 = loadavg()
        self._stat0 = _machine_ticks()
        self._rusage0 = _own_cpu_s()
        self._boot_ticks0 = _uptime_ticks()
        self._scan()
        self._thread = threading.Thread(target=self._run, name="process-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Activity:
        assert self._thread is not None, "stop() before start()"
        self._stop.set()
        self._thread.join(timeout=30)
        self._scan()
        seconds = time.monotonic() - self._t0
        busy1, steal1 = _machine_ticks()
        busy0, steal0 = self._stat0
        to_cores = 1 / CLK_TCK / seconds
        by_cores = sorted(
            ((label, ticks * to_cores) for label, ticks in self._by_label.items()),
            key=lambda item: -item[1],
        )
        listed = tuple(
            Neighbour(label, len(self._pids[label]), cores)
            for label, cores in by_cores
            if cores >= self.threshold
        )
        return Activity(
            started=self._started,
            seconds=seconds,
            cores=os.cpu_count() or 1,
            load_before=self._load0,
            load_after=loadavg(),
            busy=(busy1 - busy0) * to_cores,
            steal=(steal1 - steal0) * to_cores,
            own=(_own_cpu_s() - self._rusage0) / seconds,
            neighbours=listed,
            unlisted=sum(cores for _, cores in by_cores if cores < self.threshold),
            runs=tuple(
                (label.removesuffix(RUN), tuple(sorted(pids)))
                for label, pids in sorted(self._pids.items())
                if label.endswith(RUN)
            ),
            threshold=self.threshold,
            samples=self._samples,
            period=self.period,
        )

    def others_during(self, start: float, end: float) -> float | None:
        """Neighbours' CPU in cores on average between two wall times (time.time()), from
        the samples around them; None if the watch has no sample on both sides."""
        before = [(t, n) for t, n in self._timeline if t <= start]
        after = [(t, n) for t, n in self._timeline if t >= end]
        if not before or not after or after[0][0] <= before[-1][0]:
            return None
        (t0, n0), (t1, n1) = before[-1], after[0]
        return (n1 - n0) / CLK_TCK / (t1 - t0)

    # ---------------------------------------------------------------- sampling
    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._scan()

    def _scan(self) -> None:
        table = _process_table()
        # This run, and what started it (a shell, `timeout`, sudo): neither is other work.
        mine = _descendants(os.getpid(), table) | _ancestors(os.getpid(), table)
        seen: dict[int, _Proc] = {}
        for pid, (_ppid, start, ticks) in table.items():
            if pid in mine:
                continue
            key = (pid, start)
            old = self._procs.get(pid)
            if old is not None and old.key == key:
                delta, proc = ticks - old.ticks, old
            else:
                job = _job_pid(pid, table)
                kind = kind_of(*_command(job))
                label = kind + RUN if kind in JOBS else kind
                proc = _Proc(key, label, job, ticks)
                # A process born during the watch counts from its start, an older one from
                # its first sight.
                delta = ticks if start >= self._boot_ticks0 else 0
            proc.ticks = ticks
            seen[pid] = proc
            if delta:
                self._by_label[proc.label] = self._by_label.get(proc.label, 0) + delta
                self._others_ticks += delta
            self._pids.setdefault(proc.label, set()).add(proc.job)
        self._procs = seen
        self._timeline.append((time.time(), self._others_ticks))
        self._samples += 1


def _machine_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq, steal


def _uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * CLK_TCK)


def _own_cpu_s() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


_Table = dict[int, tuple[int, int, int]]  # pid -> (ppid, start time, utime + stime)


def _process_table() -> _Table:
    table: _Table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it ended meanwhile
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        rest = stat[stat.rindex(b")") + 2 :].split()
        ppid, utime, stime, start = int(rest[1]), int(rest[11]), int(rest[12]), int(rest[19])
        table[int(entry.name)] = (ppid, start, utime + stime)
    return table


def _descendants(root: int, table: _Table) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {root}, [root]
    while todo:
        for kid in children.get(todo.pop(), ()):
            if kid not in out:
                out.add(kid)
                todo.append(kid)
    return out


def _ancestors(pid: int, table: _Table) -> set[int]:
    out: set[int] = set()
    while pid in table and pid not in out:
        out.add(pid)
        pid = table[pid][0]
    return out


def _command(pid: int) -> tuple[str, list[str]]:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?", []
    return comm, [a.decode(errors="replace") for a in argv if a]


def kind_of(comm: str, argv: Iterable[str]) -> str:
    """A short name for what a process is: a test run (pytest, one of our scripts), the
    agent, or its command name."""
    args = list(argv)
    for script in ("soak.py", "reliability.py"):
        if any(a == script or a.endswith("/" + script) for a in args):
            return f"scripts/{script}"
    if any(a == "pytest" or a.endswith("/pytest") or a.endswith("/py.test") for a in args):
        return "pytest"
    if "-m" in args and args.index("-m") + 1 < len(args):
        module = args[args.index("-m") + 1]
        if module == "pytest":
            return "pytest"
        if module == "agent":
            return "the agent (python -m agent)"
    return comm


def _job_pid(pid: int, table: _Table) -> int:
    """The pid of the test run a process belongs to (itself if none)."""
    here = pid
    for _ in range(32):
        if kind_of(*_command(here)) in JOBS:
            return here
        parent = table.get(here, (0, 0, 0))[0]
        if parent <= 1:
            break
        here = parent
    return pid


# ------------------------------------------------------------------------------ text
def cores(x: float) -> str:
    return f"{x:.2f}"


def _code(state: CodeState) -> str:
    if not state.dirty:
        return f"commit {state.commit} ({state.subject}), clean"
    shown = ", ".join(f"`{c.strip()}`" for c in state.changed[:12])
    more = f" and {len(state.changed) - 12} more" if len(state.changed) > 12 else ""
    return (
        f"commit {state.commit} ({state.subject}), **dirty**: "
        f"{len(state.changed)} paths changed or untracked: {shown}{more}"
    )


def _load(v: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in v)


def render_circumstances(
    command: str,
    code_before: CodeState,
    code_after: CodeState,
    machine_text: str,
    a: Activity,
    finished: datetime.datetime,
) -> list[str]:
    """The run's circumstances as a table: shared with scripts/soak.py."""
    code = _code(code_before)
    if code_after.commit != code_before.commit:
        code += f"; **at the end**: {_code(code_after)} (the tree changed during the run)"
    elif code_after.changed != code_before.changed:
        came = [c.strip() for c in code_after.changed if c not in code_before.changed]
        went = [c.strip() for c in code_before.changed if c not in code_after.changed]
        code += "; **the tree changed during the run**: " + "; ".join(
            f"{what}: {', '.join(f'`{c}`' for c in paths)}"
            for what, paths in (("changed since the start", came), ("reverted", went))
            if paths
        )
    listed = "; ".join(
        f"{n.label}: {cores(n.cores)} ({n.processes} process{'es' if n.processes > 1 else ''})"
        for n in a.neighbours
    )
    runs = ", ".join(f"{kind} x{len(pids)}" for kind, pids in a.runs)
    soak = any(kind == "scripts/soak.py" for kind, _ in a.runs)
    rows = [
        ("command", f"`{command}`"),
        (
            "when",
            f"{a.started:%Y-%m-%d %H:%M:%S} to {finished:%H:%M:%S} UTC ({a.seconds:.0f} s)",
        ),
        ("code", code),
        ("machine", machine_text),
        (
            "load average (1, 5, 15 min)",
            f"before {_load(a.load_before)}; after {_load(a.load_after)}",
        ),
        (
            "CPU while it ran (cores busy on average)",
            f"{cores(a.busy)} of {a.cores}: this run {cores(a.own)}, other work "
            f"{cores(a.rest)}; steal {cores(a.steal)}",
        ),
        (
            "other processes seen in /proc",
            f"{listed or 'none'} (each kind listed from {cores(a.threshold)} cores; "
            f"below that {cores(a.unlisted)} together; sampled {a.samples} times, "
            f"every {a.period:g} s)",
        ),
        (
            "other test runs seen",
            f"{runs or 'none'}; scripts/soak.py was {'' if soak else 'not '}running",
        ),
    ]
    return [
        "| | |",
        "|---|---|",
        *(f"| {k} | {cell(v)} |" for k, v in rows),
    ]


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
