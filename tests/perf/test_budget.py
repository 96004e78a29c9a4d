"""The agent's cost on this machine against the product's budget.

A real TLS broker, a pty meter, the agent as a subprocess. Figures are read from /proc
(schedstat: CPU in ns of every thread; status: context switches and RSS) and from what the
agent tells systemd (STATUS). Three measurements, each with start-up excluded:

* steady state: one telegram per second paced like a 9600-baud line, the config as shipped
  (`obis_interval = 2`: every second telegram published, one latency sample each) but with
  the LED disabled (its flicker wakes the LED thread twice per reading sent, which these
  figures leave out: issue 10), the watchdog pinged as under the shipped unit: latency
  (from the meter's last byte to the kernel handing the agent's segment to the broker's
  socket, tests/harness/sniffer.py), CPU share, wakeups, RSS;
* a burst: BURST telegrams written as fast as the agent reads them: CPU per telegram;
* start-up: exec to READY=1.

The driving and the measuring are bench/scenario.py's, shared with the benchmark
(`python -m bench`), so the two measure cost one way. Also written to docs/reliability.md
by scripts/reliability.py.
"""

from __future__ import annotations

import os
import random
import statistics

import pytest

from agent.meter.simulator import SimulatedEbz
from bench.probes import nearest_rank
from bench.scenario import (
    BURST,
    BURSTS,
    PacedLine,
    measure_bursts,
    measure_steady,
    processed,
    ready_times_ms,
    warm_for_bursts,
)
from tests.harness.agent import TOPIC_EVENT, TOPIC_OBIS

pytestmark = pytest.mark.perf

# At least this many latency samples, or a p99 says nothing about the worst percent.
MIN_SAMPLES = 100
OBIS_INTERVAL = 2  # the default: one reading published per 2 s
# Seconds of steady state measured: enough for MIN_SAMPLES published readings (PERF_WINDOW
# may lengthen it, never below that).
WINDOW = max(float(os.environ.get("PERF_WINDOW", "0")), OBIS_INTERVAL * MIN_SAMPLES + 5.0)
WATCHDOG_USEC = 30_000_000  # WatchdogSec=30, as in tibber-agent.service

# The budget (developers' brief, "Cheap on a Pi"), except where said.
LATENCY_P99_MS = 5.0
# The brief asks for <= 0.10 % of a core at 1 telegram/s. On this VM a thread woken after a
# long idle spell runs 15-60x slower for its first milliseconds (a 368-byte bytes.translate
# takes ~250 us one second after a sleep, ~4 us in a hot loop), so the share depends on how
# idle the machine is, and a shared CI machine is not quiet. The budget itself is measured
# by the benchmark on a quiet machine (`python -m bench`, docs/performance.md); here the run
# summary says BUDGET NOT MET above it, and the test fails beyond REGRESSION_CPU_SHARE,
# which only new work reaches (a thread spinning, a timer at tens of hertz). Finer
# regressions are caught without the VM's noise by counting: tests/perf/test_guard.py.
BRIEF_CPU_SHARE = 0.0010  # of one core
REGRESSION_CPU_SHARE = 0.0100
WAKEUPS_PER_S = 5.0
RSS_MB = 30.0
CPU_PER_TELEGRAM_US = 100.0
READY_MS = 300.0


def test_nearest_rank() -> None:
    lat = [float(v) for v in range(1, 101)]
    assert nearest_rank(lat, 0.99) == 99.0  # 99 of 100 samples are <= it
    assert nearest_rank([*lat, 1000.0], 0.99) == 100.0  # n = 101: the 100th smallest
    assert nearest_rank([5.0, 1.0], 0.99) == 5.0
    assert nearest_rank([3.0], 0.5) == 3.0


def test_cost_at_one_telegram_per_second(
    agent_config,
    start_agent,
    tls_broker,
    observer,
    pty_meter,
    notify_socket,
    figure,
    budget_not_met,
):
    agent_config.tibber["obis_interval"] = str(OBIS_INTERVAL)
    agent = start_agent(env=notify_socket.env(watchdog_usec=WATCHDOG_USEC))
    observer.wait_for(TOPIC_EVENT, timeout=10)
    assert pty_meter.wait_opened(10)
    # The agent's segments to the broker are timestamped by the kernel as they reach it.
    steady = measure_steady(
        agent.pid, PacedLine(pty_meter, seed=5), tls_broker, lambda: observer.messages, WINDOW
    )
    lat = list(steady.latency_ms)
    sent = steady.sent
    # The readings the broker delivered from the window's telegrams, counted apart from the
    # latency samples: a reading whose segment the sniffer missed has no sample.
    published = steady.published
    rss = steady.rss_mb
    samples = "" if len(lat) == published else f", {len(lat)} with a latency sample"
    elapsed = steady.span.seconds
    share = steady.span.share
    wakeups = steady.span.wakeups_per_s
    p99 = nearest_rank(lat, 0.99) if lat else float("inf")
    how = (
        f"{sent} telegrams at 1/s over {elapsed:.0f} s, obis_interval {OBIS_INTERVAL} "
        f"(the default: {published} published{samples}), LED disabled (its flicker not "
        "counted), watchdog pinged as with WatchdogSec=30"
    )
    for name, value, bound, ok in (
        (
            "added latency, last byte to broker, p99 (kernel timestamp at the broker's socket)",
            f"{p99:.2f} ms (nearest rank of n={len(lat)}; p50 "
            f"{statistics.median(lat) if lat else float('nan'):.2f} ms, "
            f"max {max(lat, default=float('nan')):.2f} ms)",
            f"<= {LATENCY_P99_MS} ms",
            p99 <= LATENCY_P99_MS,
        ),
        (
            "CPU at 1 telegram/s",
            f"{share * 100:.3f} % of a core",
            f"<= {BRIEF_CPU_SHARE * 100:.2f} % (the brief's budget; the test fails above "
            f"{REGRESSION_CPU_SHARE * 100:.2f} %)",
            share <= BRIEF_CPU_SHARE,
        ),
        (
            "wakeups (context switches, all threads)",
            f"{wakeups:.2f} /s",
            f"<= {WAKEUPS_PER_S} /s",
            wakeups <= WAKEUPS_PER_S,
        ),
        ("resident memory", f"{rss:.1f} MB", f"<= {RSS_MB} MB", rss <= RSS_MB),
    ):
        figure(fault="budget: " + name, injected=how, measured=value, bound=bound, ok=ok)
    print(
        f"p99 {p99:.2f} ms (n={len(lat)}), cpu {share * 100:.3f} %, "
        f"{wakeups:.2f} wakeups/s, RSS {rss:.1f} MB"
    )
    # Every second telegram of the window was published (the last may wait for its
    # successor).
    assert len(lat) >= max(MIN_SAMPLES, sent // OBIS_INTERVAL - 1), (len(lat), sent)
    assert p99 <= LATENCY_P99_MS, sorted(lat)[-5:]
    assert share <= REGRESSION_CPU_SHARE, share
    if share > BRIEF_CPU_SHARE:
        budget_not_met(
            f"CPU at 1 telegram/s {share * 100:.3f} % of a core > "
            f"{BRIEF_CPU_SHARE * 100:.2f} % (issue 10)"
        )
    assert wakeups <= WAKEUPS_PER_S, wakeups
    assert rss <= RSS_MB, rss


def test_cpu_per_telegram_in_a_burst(start_agent, observer, pty_meter, notify_socket, figure):
    """BURSTS x BURST consecutive telegrams written to the pty as fast as the agent takes
    them, with the default config. Per burst: CPU of all the agent's threads, divided by the
    telegrams it framed (accepted + rejected, from its STATUS: what it processed, not what
    was written). Start-up is excluded: the agent has connected, sent its hello and accepted
    a few telegrams at the meter's pace before the first burst. The median of the bursts is
    the figure: how the agent and the writer take turns on the pty (and so how many
    telegrams one read() gets) varies with whatever else the machine runs."""
    # A watchdog ping every 0.5 s refreshes the counters in STATUS.
    agent = start_agent(env=notify_socket.env(watchdog_usec=1_000_000))
    observer.wait_for(TOPIC_EVENT, timeout=10)
    assert pty_meter.wait_opened(10)
    meter = SimulatedEbz(rng=random.Random(6))
    warm_for_bursts(pty_meter, meter)
    assert processed(notify_socket)[0] >= 4, notify_socket.all()[-1:]
    published0 = len(observer.messages)

    runs = [
        (r.us_per_telegram, r.framed, r.seconds, r.wakeups_per_telegram)
        for r in measure_bursts(agent.pid, pty_meter, meter, notify_socket, BURSTS, BURST)
    ]
    per_telegram_us = statistics.median(r[0] for r in runs)
    published = sum(m.topic == TOPIC_OBIS for m in observer.messages[published0:])
    figure(
        fault="budget: CPU per telegram",
        injected=f"{BURSTS} bursts of {BURST} telegrams (consecutive seconds, parity-encoded) "
        "written as fast as the agent reads them; obis_interval 2 (default): "
        f"{published} published",
        measured=f"{per_telegram_us:.0f} us, median of "
        + ", ".join(
            f"{us:.0f} us ({n} framed in {s:.2f} s, {sw:.2f} wakeups each)" for us, n, s, sw in runs
        )
        + " (CPU of all threads until STATUS showed them processed)",
        bound=f"<= {CPU_PER_TELEGRAM_US:.0f} us",
        ok=per_telegram_us <= CPU_PER_TELEGRAM_US,
    )
    print(f"{per_telegram_us:.1f} us per telegram: {runs}")
    assert per_telegram_us <= CPU_PER_TELEGRAM_US, runs


def test_ready_within_300_ms(start_agent, notify_socket, figure):
    """READY=1 after exec: as soon as the config is valid and the workers run (no network,
    no meter needed). Best of three starts, since the first pays for a cold page cache."""
    times = ready_times_ms(lambda: start_agent(env=notify_socket.env()), notify_socket, 3)
    best = min(times)
    figure(
        fault="budget: READY=1 after exec",
        injected="3 starts, best of",
        measured=f"{best:.0f} ms (all: {', '.join(f'{t:.0f}' for t in times)})",
        bound=f"<= {READY_MS:.0f} ms",
        ok=best <= READY_MS,
    )
    assert best <= READY_MS, times
