"""Timing decisions with a made-up clock: rate limit, fixed cadence, backoff."""

from __future__ import annotations

import itertools
import random

import pytest

from agent.schedule import Backoff, Every, RateLimit


def meter_times(n: int, period: float = 1.0, jitter: float = 0.02, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [1000.0 + i * period + rng.uniform(-jitter, jitter) for i in range(n)]


def taken(limit: RateLimit, times: list[float]) -> list[int]:
    return [i for i, t in enumerate(times) if limit.take(t)]


# --- RateLimit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_interval_2_at_a_1s_meter_publishes_every_second_telegram(seed: int) -> None:
    out = taken(RateLimit(2.0), meter_times(1000, seed=seed))
    assert out == list(range(0, 1000, 2))  # never every third


def test_interval_2_with_the_worst_case_jitter_pattern() -> None:
    # Each pair arrives as close together as the jitter allows: 1.96 s between takes.
    times = [1000.0 + i + (0.02 if i % 2 == 0 else -0.02) for i in range(1000)]
    assert taken(RateLimit(2.0), times) == list(range(0, 1000, 2))


def test_interval_0_publishes_every_telegram() -> None:
    times = meter_times(1000)
    assert taken(RateLimit(0.0), times) == list(range(1000))
    # Even telegrams arriving in one burst.
    assert taken(RateLimit(0), [5.0] * 10) == list(range(10))


@pytest.mark.parametrize(
    ("interval", "period", "every"),
    [
        (0.5, 1.0, 1),  # shorter than the meter: every telegram
        (1.0, 1.0, 1),
        (1.5, 1.0, 2),
        (2.5, 1.0, 3),
        (3.0, 1.0, 3),
        (0.5, 0.25, 2),
        (0.75, 0.25, 3),
    ],
)
def test_fractional_intervals(interval: float, period: float, every: int) -> None:
    times = meter_times(400, period=period, jitter=period / 50)
    assert taken(RateLimit(interval), times) == list(range(0, 400, every))


def test_early_slack_is_a_tenth_of_the_interval_at_most_a_quarter_second() -> None:
    limit = RateLimit(2.0)
    assert limit.take(0.0)
    assert not limit.take(1.79)
    assert limit.take(1.81)
    long = RateLimit(10.0)
    assert long.take(0.0)
    assert not long.take(9.74)
    assert long.take(9.76)


def test_a_refused_event_does_not_push_the_next_one_back() -> None:
    limit = RateLimit(2.0)
    assert limit.take(0.0)
    assert not limit.take(1.0)
    assert limit.take(2.0)  # measured from the last *taken* event


def test_a_stall_in_events_then_the_first_is_taken() -> None:
    limit = RateLimit(2.0)
    assert limit.take(0.0)
    assert limit.take(3600.0)
    assert not limit.take(3601.0)


# --- Every ---------------------------------------------------------------------------------------


def test_every_is_due_at_its_interval_and_reports_the_span() -> None:
    e = Every(120.0, start=0.0)
    assert not e.due(119.99)
    assert e.due(120.0)
    assert e.done(120.0) == 120.0
    assert not e.due(239.0)
    assert e.due(240.0)


def test_every_does_not_burst_after_a_stall() -> None:
    e = Every(120.0, start=0.0)
    now = 3600.0 + 37.0  # the owner was away for an hour
    fired = 0
    while e.due(now):
        e.done(now)
        fired += 1
    assert fired == 1
    assert e.next == now + 120.0
    assert not e.due(now + 119.0)
    assert e.due(now + 120.0)


def test_every_does_not_drift_when_served_late() -> None:
    rng = random.Random(3)
    e = Every(120.0, start=0.0)
    for k in range(1, 1001):
        assert e.next == 120.0 * k
        late = e.next + rng.uniform(0.0, 5.0)  # the loop woke up a bit late each time
        assert e.due(late)
        e.done(late)
    assert e.next == 120.0 * 1001


def test_every_spans_sum_to_the_elapsed_time() -> None:
    e = Every(300.0, start=10.0)
    rng = random.Random(4)
    now = 10.0
    spans = []
    for _ in range(50):
        now = e.next + rng.uniform(0.0, 2.0)
        spans.append(e.done(now))
    assert sum(spans) == pytest.approx(now - 10.0)


def test_every_with_a_fractional_interval() -> None:
    e = Every(0.5, start=0.0)
    ticks = [t / 10 for t in range(1, 51)]
    fired = []
    for t in ticks:
        if e.due(t):
            e.done(t)
            fired.append(t)
    assert fired == pytest.approx([0.5 * k for k in range(1, 11)])


# --- Backoff -------------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jitters_within_half_to_full_ceiling() -> None:
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(5))
    assert b.delay() == 0.0  # no failure yet: no wait
    ceilings = []
    for _ in range(12):
        b.failed()
        ceiling = min(60.0, 2.0 ** (b.failures - 1))
        ceilings.append(ceiling)
        delays = [b.delay() for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # it does jitter
    assert ceilings[:7] == [1, 2, 4, 8, 16, 32, 60]
    assert all(c == 60.0 for c in ceilings[6:])


def test_backoff_resets_after_success() -> None:
    b = Backoff(base=0.5, cap=5.0, rng=random.Random(6))
    for _ in range(10):
        b.failed()
    assert 2.5 <= b.delay() <= 5.0
    b.succeeded()
    assert b.delay() == 0.0
    b.failed()
    assert 0.25 <= b.delay() <= 0.5


def test_backoff_delays_of_two_agents_are_not_in_lockstep() -> None:
    a = Backoff(rng=random.Random(1))
    b = Backoff(rng=random.Random(2))
    for _ in range(4):
        a.failed()
        b.failed()
    pairs = [(a.delay(), b.delay()) for _ in range(20)]
    assert sum(x == y for x, y in pairs) == 0
    assert len(set(itertools.chain.from_iterable(pairs))) == 40
