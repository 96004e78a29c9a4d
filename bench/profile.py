"""What dominates the agent's cost, its import footprint, and what that suggests for a Pi.

`measure_profile()` measures, against a real TLS mosquitto on loopback (tests/harness):

* start-up: the agent (`python -m agent run`, a pty as its meter) started STARTS times,
  exec to READY=1 on the notify socket and resident memory at READY and once connected,
  with its bytecode cached as an installed agent has it (pip compiles it at install) and
  without (PYTHONDONTWRITEBYTECODE, as this environment and tests/perf run it); one more
  start under `-X importtime` and `-S` (no site hooks of this environment importing on the
  agent's behalf) says which imports the time goes to, before READY=1 and after it;
* resident memory by layer, each in a fresh interpreter: the interpreter alone, the
  agent's modules, paho (with ssl, http, email), the TLS context with the credentials,
  and gpiozero with an LED on mock pins (what a Pi's LED adds; off a Pi it is not loaded);
* each stage a telegram passes, in-process, warm (back to back, thread CPU time) and cold
  (one telegram a second, as the meter sends them): parity, framing, parsing, validation,
  the payload, and the publish (paho and the TLS write) over the agent's own TibberConnection;
  the metrics' JSON; the log records the steady path emits (through MeterReader and
  TibberUplink, as `run` wires them); the TLS handshake's CPU at connect, with the test
  PKI's ECDSA keys and with RSA-2048 ones as AWS IoT issues.

`markdown(profile)` writes the sections for docs/performance.md: every number in them comes
from the Profile. `pi_estimate()` scales the x86 figures to a Raspberry Pi Zero 2 W and a
Pi 1 by clock and per-clock ratios stated with their sources: an estimate, not a
measurement. `python -m bench.profile` prints the markdown. Needs mosquitto and a pty (no
root); takes about a minute.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import platform
import random
import re
import site
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.probes import rss_mb
from tests.harness.agent import AgentConfig, AgentProcess
from tests.harness.broker import TlsBroker
from tests.harness.certs import Pki, make_pki
from tests.harness.meter import PtyMeter
from tests.harness.notify import NotifySocket

REPO_ROOT = Path(__file__).resolve().parents[1]  # the agent measured is the checkout's
STARTS = 5  # per kind of start; the best is the figure (the others are load and noise)
UNCACHED_STARTS = 3
TRACED_STARTS = 3  # under -X importtime; per module the least of them
WARM_TELEGRAMS = 2000
REPEATS = 3  # warm loops per stage; the median
PUBLISHES = 300
COLD_SAMPLES = 12  # telegrams one second apart
HANDSHAKES = 5
TOP = 12  # rows of the import tables
READY_LINE = "tibber-agent running"  # logged right after READY=1 (supervisor.run)
CONNECTED_LINE = "tibber: connected"
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)\s*$")


# ------------------------------------------------------------------ the figures
@dataclass(frozen=True)
class Imported:
    module: str
    self_us: int
    cumulative_us: int
    level: int  # nesting as -X importtime prints it (0: imported by the agent's code or runpy)
    phase: str  # "interpreter", "ready" (before READY=1), "connected", "later"
    before_ready: bool  # printed before READY=1: for a later phase, work that competed with it


@dataclass(frozen=True)
class StartUp:
    ready_ms: tuple[float, ...]  # exec to READY=1, bytecode cached
    ready_uncached_ms: tuple[float, ...]  # PYTHONDONTWRITEBYTECODE=1
    ready_isolated_ms: tuple[float, ...]  # -S -P, bytecode cached: no site hooks
    first_ready_ms: float  # the first start, compiling into an empty bytecode cache
    bare_interpreter_ms: float  # exec to `python -c` running, best of STARTS
    bare_isolated_ms: float  # the same with -S -P
    rss_ready_mb: float  # median over the cached starts, read as READY=1 arrives
    rss_connected_mb: float  # 0.5 s after "connected" in its log
    rss_bare_mb: float  # `python -c` sleeping
    imports: tuple[Imported, ...]  # the -X importtime -S start
    checkout_has_bytecode: bool  # agent/__pycache__ exists (the uncached starts read it)


@dataclass(frozen=True)
class MemoryLayer:
    what: str
    rss_mb: float  # after it, in a fresh interpreter


@dataclass(frozen=True)
class Stage:
    name: str
    warm_us: float  # thread CPU per telegram, back to back (median of REPEATS loops)
    cold_us: float  # median over COLD_SAMPLES, one telegram a second
    cold_max_us: float


@dataclass(frozen=True)
class Profile:
    when: str
    machine: str
    cpu_model: str
    cpu_mhz: float
    python: str
    commit: str
    tree_changed: bool
    startup: StartUp
    memory: tuple[MemoryLayer, ...]
    stages: tuple[Stage, ...]  # in the order a telegram passes them
    pipeline_warm_us: float  # Pipeline.feed alone (parity..validation), back to back
    publish_network_thread_us: float  # the network thread's CPU per publish (its PUBACK)
    publish_dropped: int  # of PUBLISHES, refused by the link (stalled, offline)
    metrics_us: float  # one bridge metric + one node metric (JSON), warm
    metrics_cold_us: float
    bridge_metric_interval: float
    node_metric_interval: float
    # MeterReader.feed -> TibberUplink, one telegram a second (every obis_interval-th
    # publishes): the mean, and the medians of the telegrams that published and not
    steady_path_cold_us: float
    steady_path_publishing_us: float
    steady_path_quiet_us: float
    steady_path_max_us: float
    steady_telegrams: int
    steady_published: int
    log_records: int  # emitted at the agent's level (INFO) on that steady path
    handshake_ms: dict[str, float]  # key type -> client CPU of connect + TLS handshake
    trimmed_ms: float = 0.0  # loading TRIMMED after what READY=1 needs, best of STARTS
    trimmed_mb: float = 0.0  # the RSS it adds


# ------------------------------------------------------------------ helpers
def _machine() -> tuple[str, float]:
    model, mhz = platform.processor() or platform.machine(), 0.0
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "cpu MHz" and not mhz:
                mhz = float(value)
    return model, mhz


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def _thread_us(fn: Callable[[], object]) -> float:
    t0 = time.thread_time_ns()
    fn()
    return (time.thread_time_ns() - t0) / 1e3


def _next_second() -> None:
    """Sleep to the next whole second of the monotonic clock: a cold wake, as the meter's."""
    time.sleep(1.0 - time.monotonic() % 1.0)


@contextlib.contextmanager
def _rig(directory: Path, pki: Pki | None = None) -> Iterator[tuple[TlsBroker, AgentConfig, Pki]]:
    pki = pki or make_pki(directory / "pki")
    with TlsBroker(directory / "broker", pki) as broker, PtyMeter(directory / "ttyIR") as meter:
        meter.plug()
        config = AgentConfig(directory / "agent", str(directory / "ttyIR"), broker.port, pki)
        config.write()
        yield broker, config, pki


# ------------------------------------------------------------------ start-up
class _Agent(AgentProcess):
    """The harness's agent process with interpreter options in front."""

    def __init__(self, config: Path, env: dict[str, str], options: Sequence[str] = ()):
        super().__init__(config, "run", env)
        self.options = list(options)

    def argv(self) -> list[str]:
        return [sys.executable, *self.options, "-m", "agent", "-c", str(self.config), "run"]


def _start_once(
    config: Path, notify: NotifySocket, env: dict[str, str], options: Sequence[str] = ()
) -> tuple[float, float, float, str]:
    """(ms exec to READY=1, RSS MB at READY, RSS MB connected, the agent's log)."""
    log = config.parent / "agent-run.log"
    log.unlink(missing_ok=True)
    agent = _Agent(config, {**env, **notify.env()}, options)
    for key in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):
        if key not in env:
            agent.env.pop(key, None)
    before = len([n for n in notify.all() if n.fields.get("READY") == "1"])
    t0 = time.monotonic()
    agent.start()
    try:
        ready = notify.wait_count(before + 1, "READY", "1", timeout=30)[-1]
        rss_ready = rss_mb(agent.pid)
        agent.wait_for_log(CONNECTED_LINE, timeout=30)
        time.sleep(0.5)
        rss_connected = rss_mb(agent.pid)
    finally:
        agent.stop()
    return (ready.t - t0) * 1000, rss_ready, rss_connected, agent.log_text()


def _bare_interpreter(env: dict[str, str], options: Sequence[str] = ()) -> tuple[float, float]:
    """(best ms from exec to the first line of `python -c` running, as READY=1 is timed;
    RSS MB of a bare interpreter sleeping)."""
    code = "import sys, time; print(time.monotonic(), flush=True); time.sleep(float(sys.argv[1]))"
    times, rss = [], 0.0
    for n in range(STARTS):
        t0 = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, *options, "-c", code, "0.5" if n == 0 else "0"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            times.append((float(child.stdout.readline()) - t0) * 1000)
            if n == 0:
                time.sleep(0.2)
                rss = rss_mb(child.pid)
        finally:
            child.wait(10)
    return min(times), rss


def parse_importtime(log: str) -> list[Imported]:
    """-X importtime's lines of one start, each with the phase its top-level import ended
    in: an import shows when it ends, after the imports nested in it, so the imports of a
    top-level import that ends after READY=1 (paho's, begun in the network thread before
    it) all count as after."""
    rows: list[tuple[str, int, int, int]] = []
    phase_at: list[str] = []  # per row
    phase = "interpreter"
    ready_at = -1  # rows before READY=1
    for line in log.splitlines():
        found = IMPORT_LINE.match(line)
        if found is None:
            if READY_LINE in line:
                phase, ready_at = "connected", len(rows)
            elif CONNECTED_LINE in line:
                phase = "later"
            continue
        self_us, cumulative, indent, module = found.groups()
        level = (len(indent) - 1) // 2
        rows.append((module, int(self_us), int(cumulative), level))
        if level == 0 and phase == "interpreter" and module == "runpy":
            phase_at.append("interpreter")
            phase = "ready"
            continue
        phase_at.append(phase)
    # A nested import takes the phase of the top-level import it belongs to (the next
    # level-0 row).
    out: list[Imported] = []
    owner = "later"
    ready_at = len(rows) if ready_at < 0 else ready_at
    for index in reversed(range(len(rows))):
        module, self_us, cumulative, level = rows[index]
        if level == 0:
            owner = phase_at[index]
        out.append(Imported(module, self_us, cumulative, level, owner, index < ready_at))
    out.reverse()
    return out


def least_of(starts: Sequence[Sequence[Imported]]) -> list[Imported]:
    """The first start's rows, each with the least self and cumulative time any start
    measured for its module: one start's figures carry whatever else the machine did."""
    self_us: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    for rows in starts:
        for r in rows:
            self_us[r.module] = min(self_us.get(r.module, r.self_us), r.self_us)
            cumulative[r.module] = min(cumulative.get(r.module, r.cumulative_us), r.cumulative_us)
    return [
        replace(r, self_us=self_us[r.module], cumulative_us=cumulative[r.module]) for r in starts[0]
    ]


def by_package(imports: Sequence[Imported], phase: str) -> list[tuple[str, int, int]]:
    """(package, self us, modules) per top-level package (the agent's per module; a C
    accelerator counted with its module: _ssl with ssl), largest first."""
    totals: dict[str, list[int]] = {}
    for row in imports:
        if row.phase != phase:
            continue
        name = row.module if row.module.startswith("agent") else row.module.split(".")[0]
        name = name.lstrip("_") or name
        entry = totals.setdefault(name, [0, 0])
        entry[0] += row.self_us
        entry[1] += 1
    return sorted(((k, v[0], v[1]) for k, v in totals.items()), key=lambda r: -r[1])


def _search_path(source: Path = REPO_ROOT) -> str:
    """The agent's source and the site-packages, for an interpreter started with -S
    (no site hooks: neither this environment's .pth files nor the editable install's)."""
    return os.pathsep.join([str(source), *site.getsitepackages()])


# No site hooks, no current directory on sys.path: the agent from `_search_path` only.
ISOLATED = ("-S", "-P")


def ready_times(
    directory: Path, cache: Path, source: Path = REPO_ROOT, starts: int = STARTS
) -> list[tuple[float, float, float]]:
    """(ms exec to READY=1, RSS at READY, RSS connected) of `starts` isolated starts of the
    agent in `source` (a copy of the checkout, say, to compare two versions), bytecode
    cached after a first start that is not counted."""
    env = {"PYTHONPYCACHEPREFIX": str(cache), "PYTHONPATH": _search_path(source)}
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    with _rig(directory) as (_, config, _), NotifySocket("profile") as notify:
        _start_once(config.path, notify, env, ISOLATED)
        return [_start_once(config.path, notify, env, ISOLATED)[:3] for _ in range(starts)]


def _cached_env(cache: Path) -> dict[str, str]:
    """This environment with bytecode written to and read from `cache`, as an installed
    agent reads the bytecode pip compiled."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(cache)}


def measure_startup(directory: Path, cache: Path) -> StartUp:
    site_packages = _search_path()
    cached = {"PYTHONPYCACHEPREFIX": str(cache), "GPIOZERO_PIN_FACTORY": "mock"}
    uncached = {"PYTHONDONTWRITEBYTECODE": "1", "GPIOZERO_PIN_FACTORY": "mock"}
    with _rig(directory) as (_, config, _), NotifySocket("profile") as notify:
        first = _start_once(config.path, notify, cached)
        runs = [_start_once(config.path, notify, cached) for _ in range(STARTS)]
        plain = [_start_once(config.path, notify, uncached)[0] for _ in range(UNCACHED_STARTS)]
        isolated = {**cached, "PYTHONPATH": site_packages}
        alone = [_start_once(config.path, notify, isolated, ISOLATED)[0] for _ in range(STARTS)]
        traced = [
            parse_importtime(
                _start_once(config.path, notify, isolated, [*ISOLATED, "-X", "importtime"])[3]
            )
            for _ in range(TRACED_STARTS)
        ]
    bare_ms, bare_rss = _bare_interpreter(_cached_env(cache))
    bare_isolated_ms, _ = _bare_interpreter(_cached_env(cache), ISOLATED)
    return StartUp(
        ready_ms=tuple(r[0] for r in runs),
        ready_uncached_ms=tuple(plain),
        ready_isolated_ms=tuple(alone),
        first_ready_ms=first[0],
        bare_interpreter_ms=bare_ms,
        bare_isolated_ms=bare_isolated_ms,
        rss_ready_mb=statistics.median(r[1] for r in runs),
        rss_connected_mb=statistics.median(r[2] for r in runs),
        rss_bare_mb=bare_rss,
        imports=tuple(least_of(traced)),
        checkout_has_bytecode=(REPO_ROOT / "agent" / "__pycache__").exists(),
    )


# The last layer: what a Pi's LED adds. Off a Pi the agent never loads gpiozero (agent/led.py),
# so the benchmark's RSS here does not include it; a Pi's does (with lgpio's pin factory there,
# which this machine cannot load: mock pins stand in for it).
LED_LAYER = "+ gpiozero and an LED on its mock pins (a Pi's LED; here no GPIO: not loaded)"


def led_layer_mb(layers: Sequence[MemoryLayer]) -> float:
    """What the LED's layer adds to the one before it (0 if it was not measured)."""
    for before, layer in itertools.pairwise(layers):
        if layer.what == LED_LAYER:
            return layer.rss_mb - before.rss_mb
    return 0.0


# What each layer adds, in a fresh interpreter (-S -P). argv: the config, the standard
# library modules the agent's modules import (loaded first as a layer of its own), and the
# LED layer's name.
_LAYERS = """
import importlib, pathlib, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
stdlib = sys.argv[2].split(",") if sys.argv[2] else []
out = [("the interpreter (-S)", rss())]
for name in stdlib:
    importlib.import_module(name)
out.append((f"+ the {len(stdlib)} standard library modules the agent's modules import", rss()))
import agent.cli, agent.supervisor
out.append(("+ the agent's modules, pyserial, sdnotify (all that READY=1 needs)", rss()))
import paho.mqtt.client
out.append(("+ paho-mqtt (ssl, http.client, email, urllib)", rss()))
from agent.config import load
from agent.tibber.connection import tls_context
ctx = tls_context(load(pathlib.Path(sys.argv[1])).tibber)
out.append(("+ the TLS context with CA, certificate and key", rss()))
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory
Device.pin_factory = MockFactory()
led = LED(17, initial_value=False)
out.append((sys.argv[3], rss()))
for what, mb in out:
    print(f"{mb:.2f}\\t{what}")
"""

# The modules importing the agent's start-up modules adds to a bare interpreter's.
_NEW_MODULES = """
import sys
before = set(sys.modules)
import agent.cli, agent.supervisor
print(",".join(sorted(set(sys.modules) - before)))
"""


def measure_memory(config: Path, cache: Path) -> list[MemoryLayer]:
    env = {**_cached_env(cache), "PYTHONPATH": _search_path()}

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, *ISOLATED, "-c", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    added = run(_NEW_MODULES).strip().split(",")
    ours = ("agent", "serial", "sdnotify")
    stdlib = [m for m in added if m and m.split(".")[0] not in ours]
    layers = []
    argv = (_LAYERS, str(config), ",".join(stdlib), LED_LAYER)
    # Once to fill the bytecode cache (compiling a module costs memory its import does not
    # keep, as an installed agent, compiled by pip, never pays), then measured.
    run(*argv)
    for line in run(*argv).splitlines():
        mb, _, what = line.partition("\t")
        layers.append(MemoryLayer(what, float(mb)))
    return layers


# Modules a start of the service no longer loads (tests/test_startup_imports.py keeps them
# out): check's probe; subprocess and shutil (with zlib, bz2, lzma) for a Wi-Fi Pi's `iw`
# call and argparse's terminal width.
TRIMMED = ("agent.tibber.probe", "subprocess", "shutil")
_TRIMMED = """
import importlib, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
import agent.cli, agent.supervisor
before, t0 = rss(), time.perf_counter()
for name in sys.argv[1:]:
    importlib.import_module(name)
print(f"{(time.perf_counter() - t0) * 1000:.3f}\\t{rss() - before:.3f}")
"""


def measure_trimmed(cache: Path) -> tuple[float, float]:
    """(ms, MB) that loading TRIMMED adds to what READY=1 needs: what the trim saves each
    start (best of STARTS fresh interpreters; RSS of the best)."""
    env = {**_cached_env(cache), "PYTHONPATH": _search_path()}
    runs = []
    for _ in range(STARTS):
        done = subprocess.run(
            [sys.executable, *ISOLATED, "-c", _TRIMMED, *TRIMMED],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        ms, _, mb = done.stdout.strip().partition("\t")
        runs.append((float(ms), float(mb)))
    return min(runs)


# ------------------------------------------------------------------ per telegram, in-process
def _telegrams(n: int) -> list[bytes]:
    from agent.meter.simulator import SimulatedEbz

    meter = SimulatedEbz(rng=random.Random(10))
    return [meter.next_telegram() for _ in range(n)]


def _warm(make: Callable[[], Callable[[object], object]], items: Sequence[object]) -> float:
    """Thread CPU us per item, back to back: the median of REPEATS loops, each with a fresh
    stateful object from make()."""
    runs = []
    for _ in range(REPEATS):
        fn = make()
        t0 = time.thread_time_ns()
        for item in items:
            fn(item)
        runs.append((time.thread_time_ns() - t0) / 1e3 / len(items))
    return statistics.median(runs)


def measure_stages(config: Path, telegrams: list[bytes]) -> dict[str, object]:
    """Warm and cold per stage, the publish over the agent's TibberConnection, JSON
    metrics, and the steady path's log records. The caller has the broker running."""
    from agent.config import load
    from agent.meter.framing import Framer
    from agent.meter.parity import decode_7e1, encode_7e1
    from agent.meter.pipeline import Pipeline
    from agent.meter.telegram import TelegramParser
    from agent.meter.validation import Validator
    from agent.state import MeterState
    from agent.tibber.connection import TibberConnection
    from agent.tibber.metrics import Counters, MetricSchedule
    from agent.tibber.payloads import QOS_OBIS, HostInfo, PayloadBuilder, Topics, reading_message

    settings = load(config)
    assert settings.tibber is not None
    tibber = settings.tibber
    topics = Topics.of(tibber)
    wires = [encode_7e1(t) for t in telegrams]
    decoded = [decode_7e1(w) for w in wires]
    framer = Framer()
    raws = [raw for d in decoded for raw in framer.feed(d)]
    parser = TelegramParser()
    parsed = [parser.parse(r) for r in raws]
    validator = Validator()
    published = [t for t in parsed for t in validator.check(t).publish]

    warm = {
        "parity decode (bytes.translate)": _warm(lambda: decode_7e1, wires),
        "framing": _warm(lambda: Framer().feed, decoded),
        "parsing": _warm(lambda: TelegramParser().parse, raws),
        "validation": _warm(lambda: Validator().check, parsed),
        "payload (obis_stream text)": _warm(lambda: lambda t: reading_message(topics, t), parsed),
    }
    pipeline_warm = _warm(lambda: Pipeline().feed, wires)

    # Metrics: a bridge and a node metric, JSON, as the uplink builds them.
    schedule = MetricSchedule(tibber, topics, PayloadBuilder(tibber), 0.0, HostInfo)
    meter_state = MeterState()
    step = max(tibber.bridge_metric_interval, tibber.node_metric_interval)
    clock = [0.0]

    def metrics_once(_: object = None) -> object:
        clock[0] += step
        due = schedule.due(clock[0], time.time(), meter_state, Counters(0))
        assert len(due) == 2, due
        return due

    metrics_warm = _warm(lambda: metrics_once, range(200))

    link = TibberConnection(tibber)
    link.start()
    try:
        deadline = time.monotonic() + 15
        while not link.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no connection to the test broker: {link.problem}")
            time.sleep(0.01)
        topic, payload = reading_message(topics, published[-1])
        publish_us, dropped = [], 0
        process0, thread0 = time.process_time_ns(), time.thread_time_ns()
        for _ in range(PUBLISHES):
            t0 = time.thread_time_ns()
            ok = link.publish(topic, payload, QOS_OBIS)
            publish_us.append((time.thread_time_ns() - t0) / 1e3)
            dropped += not ok
            time.sleep(0.002)  # the PUBACK comes back meanwhile; the caches stay warm
        time.sleep(0.2)
        others_ns = (time.process_time_ns() - process0) - (time.thread_time_ns() - thread0)
        warm["publish (paho, TLS write)"] = statistics.median(publish_us)

        # Cold: one telegram a second through every stage, fresh stateful parts primed
        # with the first telegrams (a validator adopts the layout first).
        framer, parser, validator = Framer(), TelegramParser(), Validator()
        for w in wires[:10]:
            for raw in framer.feed(decode_7e1(w)):
                validator.check(parser.parse(raw))
        cold: dict[str, list[float]] = {name: [] for name in warm}
        metrics_cold: list[float] = []
        for w in wires[10 : 10 + COLD_SAMPLES]:
            _next_second()
            t0 = time.thread_time_ns()
            d = decode_7e1(w)
            t1 = time.thread_time_ns()
            frames = framer.feed(d)
            t2 = time.thread_time_ns()
            ts = [parser.parse(raw) for raw in frames]
            t3 = time.thread_time_ns()
            out = [p for t in ts for p in validator.check(t).publish]
            t4 = time.thread_time_ns()
            messages = [reading_message(topics, t) for t in out]
            t5 = time.thread_time_ns()
            for topic_, payload_ in messages:
                dropped += not link.publish(topic_, payload_, QOS_OBIS)
            t6 = time.thread_time_ns()
            marks = (t0, t1, t2, t3, t4, t5, t6)
            for name, a, b in zip(cold, marks, marks[1:], strict=False):
                cold[name].append((b - a) / 1e3)
        for _ in range(3):
            _next_second()
            metrics_cold.append(_thread_us(metrics_once))
    finally:
        link.stop()

    stages = [
        Stage(name, warm[name], statistics.median(cold[name]), max(cold[name])) for name in warm
    ]
    steady = _steady_path(settings, wires[10 + COLD_SAMPLES :])
    return {
        "stages": stages,
        "pipeline_warm_us": pipeline_warm,
        "publish_network_thread_us": others_ns / 1e3 / PUBLISHES,
        "publish_dropped": dropped,
        "metrics_us": metrics_warm,
        "metrics_cold_us": statistics.median(metrics_cold),
        "bridge_metric_interval": tibber.bridge_metric_interval,
        "node_metric_interval": tibber.node_metric_interval,
        **steady,
    }


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _steady_path(settings: object, wires: list[bytes]) -> dict[str, object]:
    """The path `run` wires, minus the port: MeterReader.feed -> TibberUplink, one telegram
    a second, with a handler counting the log records emitted at the agent's level."""
    from agent.hostinfo import HostInfoReader
    from agent.meter.reader import MeterReader
    from agent.state import LinkState, MeterState
    from agent.tibber.uplink import TibberUplink

    meter_settings = settings.meters[0]  # type: ignore[attr-defined]
    state = MeterState()
    uplink = TibberUplink(
        settings.tibber,  # type: ignore[attr-defined]
        state,
        host_info=HostInfoReader(),
        nodes=[(meter_settings.eui, state)],
    )
    reader = MeterReader(meter_settings, state, [uplink.nodes[0]])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as logs.setup() sets it for `run`
    counter = _Counter()
    uplink.start()
    try:
        deadline = time.monotonic() + 15
        while uplink.state is not LinkState.CONNECTED:
            if time.monotonic() > deadline:
                raise RuntimeError("the uplink did not connect to the test broker")
            time.sleep(0.01)
        for w in wires[:4]:  # the layout adopted, the hello sent
            reader.feed(w)
            time.sleep(0.5)
        root.addHandler(counter)
        published0, samples, publishing, quiet = uplink.published, [], [], []
        for w in wires[4 : 4 + COLD_SAMPLES]:
            _next_second()
            before = uplink.published
            samples.append(_thread_us(lambda w=w: reader.feed(w)))
            (publishing if uplink.published > before else quiet).append(samples[-1])
        root.removeHandler(counter)
    finally:
        root.removeHandler(counter)
        root.setLevel(level)
        uplink.stop()
    return {
        "steady_path_cold_us": statistics.fmean(samples),
        "steady_path_publishing_us": statistics.median(publishing) if publishing else 0.0,
        "steady_path_quiet_us": statistics.median(quiet) if quiet else 0.0,
        "steady_path_max_us": max(samples),
        "steady_telegrams": len(samples),
        "steady_published": uplink.published - published0,
        "log_records": len(counter.records),
    }


# ------------------------------------------------------------------ TLS handshake
def _rsa_pki(directory: Path) -> Pki:
    """The harness's PKI with RSA-2048 keys, the kind AWS IoT issues to devices."""
    import trustme

    rsa = trustme.KeyType.RSA
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(key_type=rsa)
    paths = {name: directory / name for name in ("ca.pem", "server.crt", "server.key")}
    paths |= {name: directory / name for name in ("client.crt", "client.key")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    for stem, leaf in (
        ("server", ca.issue_cert("localhost", "127.0.0.1", key_type=rsa)),
        (
            "client",
            ca.issue_cert("tibber-bridge-test", common_name="tibber-bridge-test", key_type=rsa),
        ),
    ):
        paths[f"{stem}.crt"].write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        key = paths[f"{stem}.key"]
        key.write_bytes(leaf.private_key_pem.bytes())
        key.chmod(0o600)
    return Pki(
        ca=paths["ca.pem"],
        server_crt=paths["server.crt"],
        server_key=paths["server.key"],
        client_crt=paths["client.crt"],
        client_key=paths["client.key"],
        authority=ca,
        directory=directory,
    )


def measure_handshake(config: Path) -> float:
    """Client CPU (ms) of TCP connect + TLS handshake with the agent's TLS context, the
    median of HANDSHAKES; the context is built beforehand (once per connection attempt in
    the agent, measured apart in the memory layers)."""
    from agent.config import load
    from agent.tibber.connection import tls_context

    settings = load(config).tibber
    assert settings is not None
    ctx = tls_context(settings)
    samples = []
    for _ in range(HANDSHAKES):
        t0 = time.thread_time_ns()
        with (
            socket.create_connection((settings.mqtt_url, settings.mqtt_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=settings.mqtt_url) as tls,
        ):
            tls.do_handshake()
            samples.append((time.thread_time_ns() - t0) / 1e6)
        time.sleep(0.05)
    return statistics.median(samples)


# ------------------------------------------------------------------ all of it
def measure_profile(directory: Path | None = None) -> Profile:
    """Everything above, in a scratch directory (a temporary one by default)."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="profile-")))
        cache = directory / "pycache"
        startup = measure_startup(directory / "startup", cache)
        handshakes: dict[str, float] = {}
        with _rig(directory / "inproc") as (_, config, _):
            memory = measure_memory(config.path, cache)
            trimmed_ms, trimmed_mb = measure_trimmed(cache)
            handshakes["ECDSA P-256 (the test PKI)"] = measure_handshake(config.path)
            stages = measure_stages(config.path, _telegrams(WARM_TELEGRAMS))
        rsa = _rsa_pki(directory / "rsa" / "pki")
        with _rig(directory / "rsa", rsa) as (_, config, _):
            handshakes["RSA-2048 (as AWS IoT issues)"] = measure_handshake(config.path)
    model, mhz = _machine()
    return Profile(
        when=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=f"{platform.system()} {platform.release()}, {os.cpu_count()} cores",
        cpu_model=model,
        cpu_mhz=mhz,
        python=platform.python_version(),
        commit=_git("rev-parse", "--short", "HEAD"),
        tree_changed=bool(_git("status", "--porcelain", "--untracked-files=no")),
        startup=startup,
        memory=tuple(memory),
        handshake_ms=handshakes,
        trimmed_ms=trimmed_ms,
        trimmed_mb=trimmed_mb,
        **stages,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ a Pi, estimated
@dataclass(frozen=True)
class Board:
    name: str
    core: str
    mhz: float
    per_clock: float  # this machine's core does this many times the board's work per clock
    why: str  # where per_clock comes from


# Per-clock ratios, from published single-thread comparisons (figures with their source):
# * J. Whitham, "Relative speed of Raspberry Pi, Pi 2, and desktop PC (x86 and AMD64)",
#   2015 (jwhitham.org.uk/2015/04/relative-speed-of-raspberry-pi-pi-2-and.html): a Doom
#   benchmark (integer code, single thread) took 217.1 s on a Pi 1 (ARM1176, 700 MHz)
#   and 6.9 s on a Core i3-3220 (Ivy Bridge, 3.3 GHz, x86-64): 31.5x, or 6.7x per clock.
# * The Raspberry Pi Foundation on the Pi 3 (Cortex-A53, 1.2 GHz): single-threaded
#   applications 2.5x faster than on the original Pi (700 MHz) (TechRepublic, "Raspberry
#   Pi 3 photos: a closer look at the new board", 2016): 1.46x per clock. Dhrystone says
#   more, 1.84x (875 DMIPS for the Pi 1 at 700 MHz, raspberry-pi-geek.com "Raspberry Pi 1
#   and 2 compared"; 2.3 DMIPS/MHz for the A53, ARM's figure as quoted by Wikipedia).
# This machine's core is newer than Ivy Bridge, so it does at least as much per clock:
# the ratios below make the Pi look, if anything, faster than it is.
IVY_BRIDGE_VS_ARM1176 = 31.5 / (3300 / 700)
A53_VS_ARM1176 = 2.5 * 700 / 1200
BOARDS = (
    Board(
        "Raspberry Pi Zero 2 W",
        "Cortex-A53",
        1000,
        IVY_BRIDGE_VS_ARM1176 / A53_VS_ARM1176,
        f"x86 (Ivy Bridge) {IVY_BRIDGE_VS_ARM1176:.1f}x an ARM1176 per clock (Whitham's Doom "
        f"benchmark), the A53 {A53_VS_ARM1176:.2f}x an ARM1176 (the Raspberry Pi "
        "Foundation's single-thread figure for the Pi 3)",
    ),
    Board(
        "Raspberry Pi 1",
        "ARM1176JZF-S",
        700,
        IVY_BRIDGE_VS_ARM1176,
        f"x86 (Ivy Bridge) {IVY_BRIDGE_VS_ARM1176:.1f}x an ARM1176 per clock (Whitham's Doom "
        "benchmark)",
    ),
)


@dataclass(frozen=True)
class X86Figures:
    warm_us: float  # CPU per telegram, warm
    cold_us: float  # CPU per telegram, one a second (this VM's cold caches)
    cpu_share: float  # of one core at 1 telegram/s (fraction); 0 if not measured here
    ready_ms: float
    rss_mb: float


@dataclass(frozen=True)
class Estimate:
    board: Board
    slowdown: float  # clock ratio x per-clock ratio
    clock_ratio: float
    warm_us: float
    cold_us: float
    cpu_share: float
    ready_ms: float
    rss_mb: float


def pi_estimate(x86: X86Figures, x86_mhz: float) -> list[Estimate]:
    """Scale CPU figures by clock and per-clock ratios; memory is not scaled (the same
    Python objects; a 32-bit OS, as on a Pi 1, makes them smaller). An estimate: nothing
    here ran on a Pi."""
    out = []
    for board in BOARDS:
        clock = x86_mhz / board.mhz
        slowdown = clock * board.per_clock
        out.append(
            Estimate(
                board,
                slowdown,
                clock,
                x86.warm_us * slowdown,
                x86.cold_us * slowdown,
                x86.cpu_share * slowdown,
                x86.ready_ms * slowdown,
                x86.rss_mb,
            )
        )
    return out


# ------------------------------------------------------------------ the doc's sections
def _ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


def _us(us: float) -> str:
    return f"{us:.0f} µs" if us >= 10 else f"{us:.1f} µs"


def x86_figures(p: Profile, cpu_share: float = 0.0) -> X86Figures:
    """The figures pi_estimate() scales, from a Profile (cpu_share from the benchmark's
    steady run, if the caller has one)."""
    return X86Figures(
        warm_us=sum(s.warm_us for s in p.stages),
        cold_us=p.steady_path_cold_us,
        cpu_share=cpu_share,
        ready_ms=min(p.startup.ready_isolated_ms),
        rss_mb=p.startup.rss_connected_mb + led_layer_mb(p.memory),
    )


def markdown(p: Profile, cpu_share: float = 0.0) -> str:
    """Sections for docs/performance.md. cpu_share: the CPU share at 1 telegram/s the
    benchmark measured (fraction of a core), for the Pi estimate; 0 leaves that row out."""
    s = p.startup
    best, best_plain = min(s.ready_ms), min(s.ready_uncached_ms)
    best_alone = min(s.ready_isolated_ms)
    ready_rows = [r for r in s.imports if r.phase in ("interpreter", "ready")]
    later = [r for r in s.imports if r.phase in ("connected", "later")]
    interp_us = sum(r.self_us for r in s.imports if r.phase == "interpreter")
    agent_us = sum(r.self_us for r in s.imports if r.phase == "ready")
    later_us = sum(r.self_us for r in later)
    overlap_us = sum(r.self_us for r in later if r.before_ready)
    own = [r for r in s.imports if r.phase == "ready" and r.module.startswith("agent")]
    own_us = sum(r.self_us for r in own)
    lines = [
        "## What dominates",
        "",
        f"Measured by `python -m bench.profile` ({p.when}, commit {p.commit}"
        f"{' with uncommitted changes' if p.tree_changed else ''}; {p.cpu_model}, "
        f"{p.cpu_mhz:.0f} MHz as /proc/cpuinfo reports it, {p.machine}; Python {p.python}). "
        "CPU figures are thread CPU time (CLOCK_THREAD_CPUTIME_ID). The cold figures are "
        "this VM's: a thread woken after a second of idling runs its first milliseconds "
        "many times slower than in a loop, so they say more about this machine's caches "
        "than about the code.",
        "",
        "### Start-up and the import footprint",
        "",
        f"exec to READY=1 takes {best:.0f} ms (best of {len(s.ready_ms)} starts: "
        f"{', '.join(f'{t:.0f}' for t in s.ready_ms)} ms) with the agent's bytecode cached, "
        "as an installed agent has it (pip compiles it at install), and "
        f"{best_plain:.0f} ms without (best of {len(s.ready_uncached_ms)}, "
        "PYTHONDONTWRITEBYTECODE=1 as this environment and tests/perf run it"
        f"{'' if not s.checkout_has_bytecode else '; the checkout had agent/__pycache__'}"
        f"); the first start into an empty cache took {s.first_ready_ms:.0f} ms. Of that, "
        f"{s.bare_interpreter_ms:.0f} ms is this environment's bare interpreter (exec to "
        "the first line of `python -c` running: its site hooks import many modules, some "
        "the agent needs anyway). Without "
        f"them (`python -S -P`, the agent and its packages on PYTHONPATH, as lean as a "
        f"Pi's venv or leaner) READY=1 takes {best_alone:.0f} ms (best of "
        f"{len(s.ready_isolated_ms)}: {', '.join(f'{t:.0f}' for t in s.ready_isolated_ms)} "
        f"ms), of which {s.bare_isolated_ms:.0f} ms the bare interpreter: "
        f"{best_alone - s.bare_isolated_ms:.0f} ms are the agent's.",
        "",
        f"Under `-X importtime -S` (no site hooks; per module the least of "
        f"{TRACED_STARTS} starts), {len(ready_rows)} modules were imported "
        f"before READY=1: {interp_us / 1000:.1f} ms the interpreter's own start, "
        f"{agent_us / 1000:.1f} ms the agent's imports, of which {own_us / 1000:.1f} ms "
        f"the agent's {len(own)} modules themselves (mostly creating their dataclasses "
        "and enums and compiling regular expressions at import). Self time per package "
        "before READY=1:",
        "",
        "| package | self time | modules |",
        "|---|---|---|",
    ]
    for name, us, n in by_package(s.imports, "ready")[:TOP]:
        lines.append(f"| {name} | {_ms(us)} | {n} |")
    lines += [
        "",
        f"After READY=1 the network thread imports paho-mqtt and what it pulls in: "
        f"{len(later)} more modules, {later_us / 1000:.1f} ms. It starts before READY=1 "
        f"and takes turns with the main thread for the GIL: {overlap_us / 1000:.1f} ms of "
        "its imports had ended before READY=1.",
        "",
        "| package | self time | modules |",
        "|---|---|---|",
    ]
    later_packages: dict[str, list[int]] = {}
    for phase in ("connected", "later"):
        for name, us, n in by_package(s.imports, phase):
            entry = later_packages.setdefault(name, [0, 0])
            entry[0] += us
            entry[1] += n
    for name, (us, n) in sorted(later_packages.items(), key=lambda kv: -kv[1][0])[:TOP]:
        lines.append(f"| {name} | {_ms(us)} | {n} |")
    lines += [
        "",
        f"Resident memory: {s.rss_ready_mb:.1f} MB at READY=1, {s.rss_connected_mb:.1f} MB "
        f"once connected (medians of the starts); a bare interpreter sleeping holds "
        f"{s.rss_bare_mb:.1f} MB. Layer by layer, each in a fresh interpreter:",
        "",
        "| layer | RSS after it | added |",
        "|---|---|---|",
    ]
    previous = 0.0
    for layer in p.memory:
        added = f"{layer.rss_mb - previous:+.1f} MB" if previous else ""
        lines.append(f"| {layer.what} | {layer.rss_mb:.1f} MB | {added} |")
        previous = layer.rss_mb
    stage_warm = sum(st.warm_us for st in p.stages)
    stage_cold = sum(st.cold_us for st in p.stages)
    lines += [
        "",
        "### Per telegram",
        "",
        f"Each stage in-process, warm ({WARM_TELEGRAMS} telegrams back to back, the median "
        f"of {REPEATS} loops; the publish: {PUBLISHES} QoS 1 publishes 2 ms apart over the "
        "agent's TibberConnection to the TLS broker) and cold (one telegram a second, the "
        f"median of {COLD_SAMPLES}, and the worst):",
        "",
        "| stage | warm | cold (median) | cold (worst) |",
        "|---|---|---|---|",
    ]
    for st in p.stages:
        lines.append(
            f"| {st.name} | {_us(st.warm_us)} | {_us(st.cold_us)} | {_us(st.cold_max_us)} |"
        )
    lines += [
        f"| all stages | {_us(stage_warm)} | {_us(stage_cold)} | |",
        "",
        f"Parity to validation as one `Pipeline.feed`: {_us(p.pipeline_warm_us)} per "
        f"telegram warm, {1e6 / p.pipeline_warm_us:,.0f} telegrams/s on one core. The "
        f"network thread spent {_us(p.publish_network_thread_us)} per publish reading its "
        f"PUBACK ({p.publish_dropped} publishes refused by the link). The metrics' JSON "
        f"(a bridge and a node metric) costs {_us(p.metrics_us)} warm and "
        f"{_us(p.metrics_cold_us)} cold, every {p.bridge_metric_interval:.0f} s and "
        f"{p.node_metric_interval:.0f} s: "
        f"{p.metrics_cold_us / p.bridge_metric_interval:.1f} µs a second at most.",
        "",
        f"The path `run` wires (MeterReader.feed to TibberUplink, no port), one telegram a "
        f"second for {p.steady_telegrams} s: {_us(p.steady_path_cold_us)} per telegram on "
        f"average (worst {_us(p.steady_path_max_us)}); {p.steady_published} telegrams were "
        f"published (obis_interval), a median {_us(p.steady_path_publishing_us)} each, the "
        f"others {_us(p.steady_path_quiet_us)}. It emitted {p.log_records} log records at "
        "the agent's level meanwhile.",
        "",
        "The TLS handshake's client CPU (TCP connect and handshake, the agent's TLS context, "
        f"median of {HANDSHAKES}): "
        + "; ".join(f"{ms:.1f} ms with {kind}" for kind, ms in p.handshake_ms.items())
        + ". It is paid once per connection, not per telegram.",
        "",
    ]
    lines += _trimmed_section(p)
    lines += _estimate_section(p, cpu_share)
    return "\n".join(lines)


def _trimmed_section(p: Profile) -> list[str]:
    s = p.startup
    before_ready = len([r for r in s.imports if r.phase in ("interpreter", "ready")])
    return [
        "### What keeps it small",
        "",
        "Modules are loaded where they are needed: paho-mqtt (with ssl, http.client, "
        "email and urllib, the largest layer above) by the network thread after READY=1; "
        "the SML, D0 and mode C code only for its `protocol`; gpiozero by the LED thread, "
        "and only where a GPIO device exists (/dev/gpiochip*, /dev/gpiomem*: not here, so "
        f"not in the benchmark's RSS; on a Pi its layer above adds "
        f"{led_layer_mb(p.memory):.1f} MB); "
        "the bridge importer, the simulator and check's connection test only by their "
        f"commands. {before_ready} modules are loaded before READY=1. The last trim took "
        f"{', '.join(TRIMMED)} (with zlib, bz2 and lzma) out of every start: loaded after "
        f"what READY=1 needs they add {p.trimmed_ms:.1f} ms and {p.trimmed_mb:.1f} MB "
        "(best of "
        f"{STARTS} fresh interpreters); tests/test_startup_imports.py keeps them, and the "
        "modules only other commands use, out.",
        "",
        "Per telegram nothing is logged (the steady path above emitted "
        f"{p.log_records} records in {p.steady_telegrams} telegrams), nothing is written "
        "to disk, and no thread polls: the meter thread blocks in its read with a timeout "
        "and publishes a reading as it is accepted, the network thread sleeps in select() "
        "until the broker or a deadline wakes it, and the supervisor waits on an event. "
        "The garbage start-up leaves is collected once and "
        "frozen (gc.freeze) when both ends have worked, so later collections do not walk it.",
        "",
    ]


def _estimate_section(p: Profile, cpu_share: float) -> list[str]:
    x86 = x86_figures(p, cpu_share)
    rows = pi_estimate(x86, p.cpu_mhz)
    lines = [
        "### A Pi, estimated (not measured)",
        "",
        f"Nothing here ran on a Pi. The x86 figures above are scaled by the clock ratio "
        f"({p.cpu_mhz:.0f} MHz here, from /proc/cpuinfo) and a per-clock ratio from "
        "published single-thread comparisons: a Doom benchmark (integer, one thread) ran "
        f"{IVY_BRIDGE_VS_ARM1176:.1f}x faster per clock on an Ivy Bridge Core i3-3220 than "
        "on a Pi 1's ARM1176 (J. Whitham, jwhitham.org.uk, 2015: 6.9 s at 3.3 GHz against "
        "217.1 s at 700 MHz), and the Raspberry Pi Foundation put the Pi 3's Cortex-A53 at "
        "2.5x the Pi 1 for single-threaded applications (TechRepublic, 2016), "
        f"{A53_VS_ARM1176:.2f}x per clock (Dhrystone says 1.84x: 875 DMIPS at 700 MHz "
        "against 2.3 DMIPS/MHz). This machine's core is newer than Ivy Bridge and does at "
        "least as much per clock, so the estimates lean towards a faster Pi than the real "
        "one. CPython is an interpreter with a large working set for each wake, which an "
        "in-order core with small caches suffers more than a Doom loop does: read the "
        "figures as a floor.",
        "",
        "| | clock ratio | per clock | slower by | CPU per telegram (warm .. cold) "
        "| READY=1 | RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        lines.append(
            f"| {e.board.name} ({e.board.core}, {e.board.mhz:.0f} MHz) | "
            f"{e.clock_ratio:.1f}x | {e.board.per_clock:.1f}x | {e.slowdown:.0f}x | "
            f"{_ms(e.warm_us)} .. {_ms(e.cold_us)} | {e.ready_ms / 1000:.1f} s | "
            f"≈ {e.rss_mb:.0f} MB |"
        )
    lines += [
        "",
        f"CPU per telegram runs from the warm sum of the stages ({_us(x86.warm_us)} here) to "
        f"the cold steady path's mean ({_us(x86.cold_us)} here, with this VM's cold "
        "caches), both scaled; a Pi Zero (the first, an ARM1176 at 1 GHz) takes 30 % less "
        "than the Pi 1 row. A Pi's small caches (A53: 32 KiB L1 data, 512 KiB L2 shared; "
        "ARM1176: 16 KiB L1 data, its 128 KiB L2 mainly the GPU's) make the cold end the "
        "likelier one at one telegram a second. READY=1 (the start without site hooks) is "
        "import work, interpreter-bound, scaled the same way; "
        "a first start after boot also reads the bytecode from the SD card. Memory is not "
        "scaled: the same objects; on a 32-bit OS (a Pi 1) pointers are half the size, so "
        "less. It is the RSS once connected plus the LED's layer, which a Pi loads.",
    ]
    if cpu_share:
        for e in rows:
            lines.append(
                f"At one telegram a second the benchmark's {cpu_share * 100:.3f} % of a core "
                f"here scales to about {e.cpu_share * 100:.1f} % on the {e.board.name}."
            )
    lines.append("")
    return lines


def main() -> int:
    print(markdown(measure_profile()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
