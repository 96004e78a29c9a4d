"""Framing + validation alone, in-process: telegrams per second of one thread's CPU time.

The eBZ pipeline (agent.meter.pipeline.Pipeline: parity, framing, parsing, validation) is
fed simulated telegrams as they come off the wire (parity-encoded, one telegram per read,
as at the line's pace), and timed with the thread's own CPU clock: what one core does when
it does nothing else, not the wall clock of a shared machine. Nothing is sent anywhere.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from agent.meter.pipeline import Pipeline
from agent.meter.simulator import SimulatedEbz
from tests.harness.meter import encode_7e1

TELEGRAMS = 5000  # per run
RUNS = 5
WARMUP = 500  # telegrams through the pipeline before the first run: caches, the reference


@dataclass(frozen=True)
class Throughput:
    per_s: tuple[float, ...]  # telegrams per CPU second, one per run
    telegrams: int  # per run
    accepted: int  # published by the pipeline over all runs (each is checked)

    @property
    def median_per_s(self) -> float:
        return statistics.median(self.per_s)


def measure_throughput(telegrams: int = TELEGRAMS, runs: int = RUNS, seed: int = 11) -> Throughput:
    ebz = SimulatedEbz(rng=random.Random(seed))
    pipeline = Pipeline()
    second = 0.0

    def feed(wires: list[bytes]) -> int:
        nonlocal second
        accepted = 0
        for wire in wires:
            second += 1.0
            for result in pipeline.feed(wire, second):
                accepted += len(result.verdict.publish)
        return accepted

    feed([encode_7e1(ebz.next_telegram()) for _ in range(WARMUP)])
    rates, accepted = [], 0
    for _ in range(runs):
        wires = [encode_7e1(ebz.next_telegram()) for _ in range(telegrams)]
        t0 = time.thread_time_ns()
        accepted += feed(wires)
        rates.append(telegrams / ((time.thread_time_ns() - t0) / 1e9))
    rejected = {str(reason): n for reason, n in pipeline.rejected.items() if n}
    if rejected:
        raise RuntimeError(f"the pipeline rejected clean telegrams: {rejected}")
    return Throughput(tuple(rates), telegrams, accepted)
