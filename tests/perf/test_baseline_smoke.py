"""The benchmark's baseline pipeline (bench/baseline.py) runs and delivers readings.

No timing is asserted (shared CI machines are noisy; the benchmark reports the figures):
only that reader, local broker and sender together carry the pty meter's telegrams to the
TLS broker, as the agent would send them: QoS 1, not retained, on the agent's obis_stream
topic, from the bridge's client id, each one a telegram that was sent.
"""

from __future__ import annotations

import math
import random

import pytest

from agent.meter.simulator import SimulatedEbz
from bench.baseline import run_baseline
from tests.harness.agent import BRIDGE_ID, TOPIC_OBIS

pytestmark = pytest.mark.perf

SECONDS = 5.0


def test_baseline_delivers_readings(tmp_path, pki, tls_broker, pty_meter):
    result = run_baseline(tmp_path / "baseline", pki, tls_broker, pty_meter, SECONDS)
    print(result.summary())

    publishes = [p for p in tls_broker.received_publishes(BRIDGE_ID) if p.topic == TOPIC_OBIS]
    # Warm-up and window: one reading per 2 s, the first after the first telegram.
    assert len(publishes) >= 2, tls_broker.log_text()[-3000:]
    assert all(p.qos == 1 and not p.retain for p in publishes), publishes
    # The payload sizes of the telegrams the run sent (the same seed: the same telegrams),
    # blank line after the ident removed as the Pulse does.
    sent = SimulatedEbz(rng=random.Random(5))
    sizes = {len(sent.next_telegram()) - 2 for _ in range(30)}
    assert all(p.size in sizes for p in publishes), (publishes, sizes)

    assert result.telegrams >= SECONDS - 1
    assert result.published >= 1
    assert len(result.latency_ms) == result.published  # every reading's segment was seen
    assert all(ms > 0 for ms in result.latency_ms), result.latency_ms
    assert math.isfinite(result.mean_ms)
    assert result.cpu_share > 0 and result.reader_cpu_share > 0
