"""How the agent is driven and measured, shared by the benchmark (bench/run.py) and the budget
test (tests/perf/test_budget.py), so the project measures its cost one way.

* PacedLine: a simulated eBZ DD3 on a pty meter, one parity-encoded telegram per second
  written at the 9600-baud line's pace, the wall-clock time of each telegram's last byte
  kept (the start of its latency; the kernel's timestamps at the broker are on that scale):
  taken just before the write of the last bytes, so a latency includes that write.
* measure_steady: latency (bench/latency.py), CPU, wakeups and RSS over a window at one
  telegram per second.
* measure_silent: CPU and wakeups with the pty plugged and nothing on the line.
* measure_bursts: CPU per telegram, telegrams written as fast as the agent reads them.
* ready_times_ms: exec to READY=1.

The agent is a process here (its pid), whatever started it.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.meter.simulator import SimulatedEbz
from bench.latency import latencies_ms, published_readings, seconds_key
from bench.probes import cpu_ns, nearest_rank, rss_mb, switches_by_kind
from tests.harness.agent import BRIDGE_ID, TOPIC_OBIS, AgentProcess
from tests.harness.broker import TlsBroker
from tests.harness.meter import BYTE_TIME_S, PtyMeter, encode_7e1
from tests.harness.notify import NotifySocket
from tests.harness.observer import Message
from tests.harness.sniffer import TcpSniffer

PERIOD_S = 1.0  # the eBZ pushes one telegram a second
# The last bytes of a telegram go out in one write right after the line's time for them, so
# the last byte's time is taken when it is written, not a pty chunk's sleep later.
TAIL_BYTES = 16
WARMUP_TELEGRAMS = 6  # before a steady window: the agent learns the meter's pace
BURST = 3000  # telegrams; issue 10: a burst of >= 3,000 as fast as the agent reads them
BURSTS = 3
BURST_TIMEOUT_S = 60.0
COUNTS = re.compile(r"\((\d+) telegrams, (\d+) rejected\)")  # in the agent's STATUS


class MeasurementError(AssertionError):
    """The run cannot give the figure (the agent did not process what was sent...). An
    AssertionError, so a test that measures fails with the reason."""


# ------------------------------------------------------------------------------ the line
class PacedLine:
    """A simulated eBZ DD3 pushing one telegram per `period` through `meter`."""

    def __init__(self, meter: PtyMeter, seed: int, period: float = PERIOD_S) -> None:
        self.meter = meter
        self.ebz = SimulatedEbz(rng=random.Random(seed))
        self.period = period
        self.sent_at: dict[bytes, float] = {}  # seconds index -> time.time() of the last byte
        self._tick: float | None = None

    def send(self) -> bytes:
        """One telegram, paced like the line; returns its seconds index."""
        text = self.ebz.next_telegram()
        wire = encode_7e1(text)
        key = seconds_key(text)
        if key is None:
            raise MeasurementError("the simulator sent a telegram without 0-0:96.8.0")
        self.meter.write(wire[:-TAIL_BYTES])
        time.sleep(TAIL_BYTES * BYTE_TIME_S)
        # Taken just before the last bytes reach the pty, not after: the agent may read them
        # and publish before this thread runs again (its segment then came "before" a time
        # taken after the write, and the next reading's was matched, 2 s late).
        self.sent_at[key] = time.time()
        self.meter.write(wire[-TAIL_BYTES:], paced=False)
        return key

    def push(self) -> bytes:
        """send(), then wait for the next tick of the meter's clock."""
        if self._tick is None:
            self._tick = time.monotonic()
        key = self.send()
        self._tick += self.period
        time.sleep(max(0.0, self._tick - time.monotonic()))
        return key

    def push_for(self, seconds: float) -> list[bytes]:
        t0 = time.monotonic()
        keys = []
        while time.monotonic() - t0 < seconds:
            keys.append(self.push())
        return keys

    def rest(self) -> None:
        """The line falls silent: the next push() starts a new clock."""
        self._tick = None


@dataclass(frozen=True)
class Span:
    """CPU and wakeups of one process between two moments."""

    seconds: float
    cpu_s: float
    voluntary: int
    involuntary: int

    @property
    def share(self) -> float:
        """Of one core."""
        return self.cpu_s / self.seconds

    @property
    def wakeups_per_s(self) -> float:
        """Voluntary + involuntary context switches of all threads, per second."""
        return (self.voluntary + self.involuntary) / self.seconds

    @property
    def voluntary_per_s(self) -> float:
        return self.voluntary / self.seconds


class Meter:
    """Counts one process's CPU and context switches from start() to stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._t0 = 0.0
        self._cpu0 = 0
        self._sw0 = (0, 0)

    def start(self) -> None:
        self._cpu0, self._sw0 = cpu_ns(self.pid), switches_by_kind(self.pid)
        self._t0 = time.monotonic()

    def stop(self) -> Span:
        cpu1, sw1, t1 = cpu_ns(self.pid), switches_by_kind(self.pid), time.monotonic()
        return Span(
            t1 - self._t0, (cpu1 - self._cpu0) / 1e9, sw1[0] - self._sw0[0], sw1[1] - self._sw0[1]
        )


# ------------------------------------------------------------------------------ steady state
@dataclass(frozen=True)
class Steady:
    """One window at one telegram per second."""

    sent: int  # telegrams in the window
    published: int  # readings of the window's telegrams the broker delivered
    latency_ms: tuple[float, ...]  # one per published reading whose segment was seen
    span: Span
    rss_mb: float  # at the window's end

    @property
    def p50_ms(self) -> float:
        return nearest_rank(list(self.latency_ms), 0.5) if self.latency_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return nearest_rank(list(self.latency_ms), 0.99) if self.latency_ms else float("inf")

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latency_ms) if self.latency_ms else float("nan")


def measure_steady(
    pid: int,
    line: PacedLine,
    broker: TlsBroker,
    delivered: Callable[[], Sequence[Message]],
    seconds: float,
    *,
    client_id: str = BRIDGE_ID,
    topic: str = TOPIC_OBIS,
    warmup: int = WARMUP_TELEGRAMS,
) -> Steady:
    """`warmup` telegrams, then `seconds` at one per second with the agent's TCP segments to
    the broker timestamped by the kernel (needs root). `delivered()`: what a subscriber on
    the broker has received so far (tests.harness.observer.Observer.messages)."""
    for _ in range(warmup):
        line.push()
    sniffer = TcpSniffer(broker.port, broker.client_port(client_id))
    meter = Meter(pid)
    try:
        meter.start()
        window = line.push_for(seconds)
        span = meter.stop()
        rss = rss_mb(pid)
        time.sleep(0.3)  # the last reading reaches the subscriber
    finally:
        sniffer.close()
    published = published_readings(delivered(), topic)
    lat = latencies_ms(window, line.sent_at, published, sniffer.segments())
    return Steady(
        sent=len(window),
        published=sum(key in published for key in window),
        latency_ms=tuple(lat),
        span=span,
        rss_mb=rss,
    )


def measure_silent(pid: int, seconds: float) -> Span:
    """CPU and wakeups over `seconds` with nothing on the line (the caller keeps the pty
    plugged and sends nothing)."""
    meter = Meter(pid)
    meter.start()
    time.sleep(seconds)
    return meter.stop()


# ------------------------------------------------------------------------------ bursts
def processed(sock: NotifySocket) -> tuple[int, int]:
    """(accepted, rejected) from the agent's latest STATUS."""
    for n in reversed(sock.all()):
        found = COUNTS.search(n.fields.get("STATUS", ""))
        if found:
            return int(found[1]), int(found[2])
    return 0, 0


@dataclass(frozen=True)
class BurstRun:
    us_per_telegram: float  # CPU of all threads / telegrams framed
    framed: int  # accepted + rejected, from STATUS
    seconds: float
    wakeups_per_telegram: float


def warm_for_bursts(meter: PtyMeter, ebz: SimulatedEbz, telegrams: int = 5) -> None:
    """A few telegrams at the meter's pace before the first burst, so start-up is not in it;
    then time for their counts to reach STATUS."""
    for _ in range(telegrams):
        meter.send_telegram(ebz.next_telegram())
        time.sleep(0.9)
    time.sleep(1.2)


def measure_bursts(
    pid: int,
    meter: PtyMeter,
    ebz: SimulatedEbz,
    sock: NotifySocket,
    bursts: int = BURSTS,
    size: int = BURST,
) -> list[BurstRun]:
    """`bursts` x `size` consecutive telegrams written to the pty as fast as the agent takes
    them. Per burst: CPU of all the agent's threads divided by the telegrams it framed
    (accepted + rejected, from its STATUS: what it processed, not what was written). The
    agent must ping its watchdog often (WATCHDOG_USEC 1 s: STATUS every 0.5 s), and be warm:
    connected and past a few telegrams at the meter's pace."""
    runs = []
    for _ in range(bursts):
        wire = b"".join(encode_7e1(ebz.next_telegram()) for _ in range(size))
        accepted0, rejected0 = processed(sock)
        cpu0, sw0, t0 = cpu_ns(pid), sum(switches_by_kind(pid)), time.monotonic()
        meter.write_all(wire, timeout=10)
        deadline = t0 + BURST_TIMEOUT_S
        while True:
            accepted, rejected = processed(sock)
            framed = accepted - accepted0 + rejected - rejected0
            # The last one may wait for a successor that only the next burst brings.
            if framed >= size - 1:
                break
            if time.monotonic() >= deadline:
                raise MeasurementError(
                    f"{framed} of {size} processed after {BURST_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.005)
        cpu1, sw1, t1 = cpu_ns(pid), sum(switches_by_kind(pid)), time.monotonic()
        if rejected != rejected0:
            raise MeasurementError(f"{rejected - rejected0} clean telegrams rejected")
        runs.append(BurstRun((cpu1 - cpu0) / 1e3 / framed, framed, t1 - t0, (sw1 - sw0) / framed))
        time.sleep(0.6)  # the next STATUS settles the counts of this burst
    return runs


# ------------------------------------------------------------------------------ start-up
def ready_times_ms(start: Callable[[], AgentProcess], sock: NotifySocket, n: int) -> list[float]:
    """n starts, each from exec to the agent's READY=1 on `sock`, then stopped."""
    times = []
    for _ in range(n):
        before = sum(x.fields.get("READY") == "1" for x in sock.all())
        t0 = time.monotonic()
        agent = start()
        try:
            ready = sock.wait_count(before + 1, "READY", "1", timeout=10)[-1]
        finally:
            agent.stop()
        times.append((ready.t - t0) * 1000)
    return times
