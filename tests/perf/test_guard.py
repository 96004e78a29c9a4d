"""A regression guard for the agent's cost that cannot flake (issue 10): counts, not clocks.

* Work per telegram, in-process: a real MeterReader whose outlet is a real TibberUplink
  connected to the TLS broker, fed telegrams through `reader.feed` (as `demo` does). Counted
  in the feeding thread: Python function calls and C calls per telegram (sys.setprofile);
  the growth of sys.getallocatedblocks() over 1,000 telegrams (a leak guard); the peak bytes
  allocated while one telegram is handled (tracemalloc). The reader and the uplink see the
  telegrams a second apart on their clock (LineClock), so the rate limit and the freshness
  check decide as on the line, and each reading's PUBACK is in before the next telegram:
  what a telegram costs does not depend on how fast this machine is.
* Wakeups, the agent as a subprocess: voluntary context switches of all its threads, over a
  fixed 30 s with no meter data, then over 40 telegrams at 1 telegram/s.

Each bound on a count of work is today's figure (COUNTED) times SLACK; every test prints
what it measured, so after a change to the hot path the figures can be re-measured and
COUNTED updated. The wakeup bounds are issue 10's goals.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType

import pytest

from agent.config import MeterSettings
from agent.meter.reader import MeterReader
from agent.meter.simulator import SimulatedEbz
from agent.state import MeterState
from agent.tibber.uplink import TibberUplink
from bench.probes import switches_by_kind, threads
from tests.harness.agent import TOPIC_EVENT, TOPIC_OBIS
from tests.harness.broker import TlsBroker
from tests.harness.certs import Pki
from tests.harness.meter import BYTE_TIME_S, CHUNK, encode_7e1
from tests.test_mqtt_link import tibber_settings

pytestmark = pytest.mark.perf

# Today's counts per telegram, measured by this file (the figures it prints) on 5dc8ebc plus
# the lead's uncommitted hot-path rework, 2026-11-30: the same figures in every run, quiet or
# with two CPU hogs beside it. Key: (figure, obis_interval).
#   calls:   Python function calls ("call" events of sys.setprofile) in the feeding thread,
#            mean over MEASURED telegrams after WARM_UP;
#   c_calls: C function calls ("c_call" events), likewise;
#   peak:    bytes, the mean over MEASURED telegrams of tracemalloc's peak while
#            reader.feed handles one telegram, above what was allocated before it.
# Re-measure after a change to the hot path: run this file with -s and copy the figures.
COUNTED: dict[tuple[str, int], float] = {
    ("calls", 2): 111.0,
    ("c_calls", 2): 150.0,
    ("peak", 2): 4530.0,
    ("calls", 0): 111.0,
    ("c_calls", 0): 145.0,
    ("peak", 0): 3580.0,
}
SLACK = 1.5  # a bound is COUNTED x SLACK: room for small changes, not for a second pass
# Leak guard: memory blocks still allocated after LEAK_TELEGRAMS, beyond what the warm-up
# left. A leak of one object per telegram adds >= LEAK_TELEGRAMS; caches filling up once
# (re, paho's mids, interned strings) add a few dozen (measured +1 to +65).
LEAK_TELEGRAMS = 1000
LEAK_BLOCKS = 200
WARM_UP = 50
MEASURED = 300

# Issue 10's goals for wakeups (context switches per second, all threads).
SILENT_S = 30.0
SILENT_WAKEUPS_PER_S = 2.0
TELEGRAMS = 40
WAKEUPS_PER_TELEGRAM_S = 5.0
WATCHDOG_USEC = 30_000_000  # WatchdogSec=30, as in tibber-agent.service


# ------------------------------------------------------------------ work per telegram
class LineClock:
    """time.monotonic() plus one second for every telegram fed: the reader and the uplink
    see telegrams a second apart, as from the meter, however fast the test feeds them. Real
    time still passes in between, so the network thread's waits stay real waits."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def next_second(self) -> None:
        self.offset += 1.0


class PubAcks:
    """The PUBACKs the broker sent to one client, counted in its log as it grows."""

    def __init__(self, broker: TlsBroker, client_id: str) -> None:
        self._log = broker.log_path.open("rb")
        self._line = f"Sending PUBACK to {client_id} (".encode()
        self._rest = b""
        self.sent = 0

    def count(self) -> int:
        text = self._rest + self._log.read()
        done, _, self._rest = text.rpartition(b"\n")
        self.sent += done.count(self._line)
        return self.sent

    def wait(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"{self.sent} of {n} PUBACKs after {timeout} s"
            time.sleep(0.0002)

    def close(self) -> None:
        self._log.close()


class CallCounter:
    """A profile function: counts the calls made in the thread it is set in."""

    def __init__(self) -> None:
        self.calls = 0
        self.c_calls = 0

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            self.calls += 1
        elif event == "c_call":
            self.c_calls += 1


class HotPath:
    """A reader and its uplink, fed prepared telegrams one line-second apart."""

    def __init__(
        self, reader: MeterReader, uplink: TibberUplink, clock: LineClock, pubacks: PubAcks
    ) -> None:
        self.reader, self.uplink, self.clock, self.pubacks = reader, uplink, clock, pubacks
        self.meter = SimulatedEbz(rng=random.Random(10))
        self.fed = 0
        self._pubacks_before = pubacks.count() - uplink.published  # the hello's

    def wires(self, n: int) -> list[bytes]:
        """n telegrams as on the wire, made before the counting starts."""
        return [encode_7e1(self.meter.next_telegram()) for _ in range(n)]

    def feed(self, wire: bytes, around: Callable[[Callable[[], None]], None] | None = None) -> None:
        """One telegram; `around(step)` runs the feeding (to count it). Returns once the
        broker has acknowledged what it published (its log says so), so each telegram finds
        the connection as a second later on the line: the answers in, whoever reads them."""
        self.clock.next_second()
        published = self.uplink.published
        if around is None:
            self.reader.feed(wire)
        else:
            around(lambda: self.reader.feed(wire))
        self.fed += 1
        if self.uplink.published > published:
            self.pubacks.wait(self._pubacks_before + self.uplink.published)
            # The PUBACK reaches the uplink's socket; if its network thread reads it, it
            # lets go of the connection.
            time.sleep(0.001)


@contextmanager
def hot_path(pki: Pki, broker: TlsBroker, obis_interval: int) -> Iterator[HotPath]:
    clock = LineClock()
    # Metrics only every 10^6 s: they are the network thread's periodic work, not the
    # telegram's, and would race the feeding thread for the connection.
    settings = replace(
        tibber_settings(pki, broker.port),
        obis_interval=float(obis_interval),
        bridge_metric_interval=1e6,
        node_metric_interval=1e6,
    )
    state = MeterState()
    uplink = TibberUplink(settings, state, clock=clock)
    reader = MeterReader(MeterSettings(port="simulated eBZ DD3"), state, [uplink], clock=clock)
    pubacks = PubAcks(broker, settings.mqtt_client_id)
    uplink.start()
    try:
        pubacks.wait(1)  # the hello acknowledged: connected
        deadline = time.monotonic() + 10
        while not uplink.connected:
            assert time.monotonic() < deadline, f"not connected: {uplink.problem}"
            time.sleep(0.01)
        yield HotPath(reader, uplink, clock, pubacks)
    finally:
        uplink.stop(timeout=5.0)
        pubacks.close()


def count_calls(path: HotPath, n: int) -> tuple[float, float]:
    """(Python calls, C calls) per telegram in the feeding thread, mean over n telegrams."""
    counter = CallCounter()

    def counted(step: Callable[[], None]) -> None:
        sys.setprofile(counter)
        try:
            step()
        finally:
            sys.setprofile(None)  # its own c_call is counted: one per telegram, every time

    for wire in path.wires(n):
        path.feed(wire, counted)
    return counter.calls / n, counter.c_calls / n


def block_growth(path: HotPath, n: int) -> int:
    """Memory blocks allocated after n telegrams beyond those allocated before (the
    prepared telegrams are counted in both)."""
    wires = path.wires(n)
    gc.collect()
    before = sys.getallocatedblocks()
    for wire in wires:
        path.feed(wire)
    gc.collect()
    return sys.getallocatedblocks() - before


def peak_bytes(path: HotPath, n: int) -> list[int]:
    """Per telegram, tracemalloc's peak while it was fed, above the memory traced before."""
    peaks: list[int] = []

    def traced(step: Callable[[], None]) -> None:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        peaks.append(tracemalloc.get_traced_memory()[1] - before)

    wires = path.wires(n)
    tracemalloc.start()
    try:
        for wire in wires:
            path.feed(wire, traced)
    finally:
        tracemalloc.stop()
    return peaks


@pytest.mark.parametrize("obis_interval", [2, 0], ids=["obis_interval=2", "obis_interval=0"])
def test_work_per_telegram_is_counted(
    pki: Pki, tls_broker: TlsBroker, obis_interval: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calls, allocations and peak memory per telegram on the path from the bytes read to
    the reading written to the broker. Counts of the work done, whatever the machine's load:
    a bound is today's figure x SLACK."""
    with hot_path(pki, tls_broker, obis_interval) as path:
        for wire in path.wires(WARM_UP):
            path.feed(wire)
        calls, c_calls = count_calls(path, MEASURED)
        growth = block_growth(path, LEAK_TELEGRAMS)
        peaks = peak_bytes(path, MEASURED)
        state, uplink = path.reader.state, path.uplink
        fed, published, dropped = path.fed, uplink.published, uplink.dropped
    peak = statistics.fmean(peaks)
    measured = {"calls": calls, "c_calls": c_calls, "peak": peak}
    with capsys.disabled():
        print(
            f"\nobis_interval {obis_interval}: {fed} telegrams fed, {state.accepted} accepted, "
            f"{published} published; per telegram over {MEASURED}: {calls:.1f} Python calls, "
            f"{c_calls:.1f} C calls, peak {peak:.0f} B (mean; max {max(peaks)} B); "
            f"blocks +{growth} over {LEAK_TELEGRAMS}; "
            + ", ".join(f"({k!r}, {obis_interval}): {v:.1f}" for k, v in measured.items())
        )
    # The path measured is the whole one: every telegram accepted, every due one published.
    assert state.accepted >= fed - 1 and state.rejected == 0, (state.accepted, state.rejected)
    expected = state.accepted if obis_interval == 0 else state.accepted // obis_interval
    assert dropped == 0 and published >= expected, (published, expected, dropped)
    failures = [
        f"{name} per telegram {value:.1f} > {COUNTED[name, obis_interval] * SLACK:.1f}"
        for name, value in measured.items()
        if value > COUNTED[name, obis_interval] * SLACK
    ]
    if growth > LEAK_BLOCKS:
        failures.append(f"{growth} blocks more after {LEAK_TELEGRAMS} telegrams")
    assert not failures, failures


def per_thread_voluntary(pid: int) -> dict[str, int]:
    """Thread name -> voluntary switches so far, to say whose wakeups they are."""
    out: dict[str, int] = {}
    for tid in threads(pid):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n = next(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt"))
        except FileNotFoundError:
            continue
        out[f"{name}/{tid}"] = n
    return out


def _delta(after: dict[str, int], before: dict[str, int]) -> str:
    return ", ".join(f"{k} {v - before.get(k, 0)}" for k, v in sorted(after.items()))


def test_wakeups_are_counted(
    start_agent, observer, pty_meter, notify_socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """Voluntary context switches of all the agent's threads, the config as shipped
    (obis_interval 2), the LED disabled as elsewhere in tests/perf, the watchdog pinged as
    with WatchdogSec=30: over SILENT_S with the meter plugged but silent, then over
    TELEGRAMS telegrams at 1 telegram/s paced like the line.

    A voluntary switch is a thread giving up the CPU itself: a sleep, a select, a wait on a
    lock or the GIL. So it counts the agent's own wakeups: load on the machine delays them
    but does not add to them, unlike involuntary switches (preempted by other work), which
    are printed, not asserted. What load can still change is the agent's choices where they
    depend on timing: a nap that misses a telegram's predicted end falls back to waiting on
    the port (pacing.py), a few more wakeups for a telegram or two. Measured on this machine:
    with no data 1.0-1.2/s, quiet or with 2-4 CPU hogs; at 1 telegram/s 1.7-2.2/s quiet,
    2.2-3.4/s with the hogs: well inside the bounds, which are the issue's goals."""
    agent = start_agent(env=notify_socket.env(watchdog_usec=WATCHDOG_USEC))
    observer.wait_for(TOPIC_EVENT, timeout=10)
    assert pty_meter.wait_opened(10)
    time.sleep(2.0)  # start-up settled: hello acknowledged, first STATUS sent

    v0, i0 = switches_by_kind(agent.pid)
    threads0 = per_thread_voluntary(agent.pid)
    time.sleep(SILENT_S)
    v1, i1 = switches_by_kind(agent.pid)
    silent = v1 - v0
    silent_threads = _delta(per_thread_voluntary(agent.pid), threads0)

    meter = SimulatedEbz(rng=random.Random(11))
    tick = time.monotonic()

    def send_one() -> None:
        """One telegram from `tick` on, paced like the line: each CHUNK handed to the pty
        when its last byte would have arrived at 9600 Bd. Against the clock, not by sleeps
        in a row, whose overshoots on a busy machine would add up to a slower line."""
        nonlocal tick
        wire = encode_7e1(meter.next_telegram())
        for off in range(0, len(wire), CHUNK):
            chunk = wire[off : off + CHUNK]
            time.sleep(max(0.0, tick + (off + len(chunk)) * BYTE_TIME_S - time.monotonic()))
            pty_meter.write(chunk, paced=False)
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))

    # Warm-up: the port may be reopening after the silence; the agent learns the pace.
    for _ in range(8):
        send_one()
        if any(m.topic == TOPIC_OBIS for m in observer.messages):
            break
    for _ in range(3):
        send_one()
    published0 = sum(m.topic == TOPIC_OBIS for m in observer.messages)
    assert published0, agent.log_text()[-2000:]
    v2, i2 = switches_by_kind(agent.pid)
    threads2 = per_thread_voluntary(agent.pid)
    t2 = time.monotonic()
    for _ in range(TELEGRAMS):
        send_one()
    v3, i3 = switches_by_kind(agent.pid)
    elapsed = time.monotonic() - t2
    busy = v3 - v2
    busy_threads = _delta(per_thread_voluntary(agent.pid), threads2)
    time.sleep(0.3)  # the last reading reaches the observer
    published = sum(m.topic == TOPIC_OBIS for m in observer.messages) - published0

    silent_bound = SILENT_WAKEUPS_PER_S * SILENT_S
    busy_bound = WAKEUPS_PER_TELEGRAM_S * elapsed
    with capsys.disabled():
        print(
            f"\nno meter data: {silent} voluntary switches in {SILENT_S:.0f} s "
            f"({silent / SILENT_S:.2f}/s; bound {silent_bound:.0f}), {i1 - i0} involuntary; "
            f"by thread: {silent_threads}\n"
            f"{TELEGRAMS} telegrams at 1/s ({published} published): {busy} voluntary in "
            f"{elapsed:.1f} s ({busy / elapsed:.2f}/s; bound {busy_bound:.0f}), "
            f"{i3 - i2} involuntary; by thread: {busy_threads}"
        )
    assert agent.proc is not None and agent.proc.poll() is None, agent.log_text()[-2000:]
    # The agent worked through the telegrams: every second one published (the last may
    # wait for its successor).
    assert published >= TELEGRAMS // 2 - 1, published
    failures = []
    if silent > silent_bound:
        failures.append(f"{silent} wakeups in {SILENT_S:.0f} s with no meter data > {silent_bound}")
    if busy > busy_bound:
        failures.append(f"{busy} wakeups over {TELEGRAMS} telegrams > {busy_bound:.0f}")
    assert not failures, failures
