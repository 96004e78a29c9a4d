"""The reader's pacing (pure): when to sleep on a timer, and past which telegrams.

A steady meter pushes a telegram of `LENGTH` bytes every second; times are made up here, so
these tests say exactly which nap the pacing asks for and what it learns from each end.
"""

from __future__ import annotations

import pytest

from agent.meter.pacing import EARLY, MAX_SKIP_NAP, MAX_SKIPPED_BYTES, Pacing

LENGTH = 400
PERIOD = 1.0


def steady(pacing: Pacing, ends: int = 3) -> float:
    """Teach the pacing a 1 s period from ends seen arriving; returns the last end."""
    t = 100.0
    for _ in range(ends):
        pacing.started(t - 0.4, LENGTH - 16)
        pacing.finished(t, LENGTH, seen_arriving=True)
        t += PERIOD
    return t - PERIOD


def test_a_steady_meter_is_napped_to_just_before_the_next_end() -> None:
    p = Pacing()
    end = steady(p)
    assert p.period == pytest.approx(PERIOD)
    nap = p.step(end + 0.001, pending=0, remaining=LENGTH, length=LENGTH).nap
    assert nap == pytest.approx(PERIOD - EARLY - 0.001)


def test_a_telegram_no_outlet_takes_is_slept_past() -> None:
    p = Pacing()
    end = steady(p)
    # Tibber took the telegram that ended at `end`; it takes the next one from end + 1.8.
    due = end + 2 * PERIOD - 0.2
    nap = p.step(end + 0.001, 0, LENGTH, LENGTH, due=due).nap
    assert nap == pytest.approx(2 * PERIOD - EARLY - 0.001)
    # The read after the nap finds the skipped telegram whole: expected, nothing unlearnt.
    p.finished(end + 2 - EARLY, LENGTH, seen_arriving=False)
    assert p.period == pytest.approx(PERIOD)
    # The target's end is seen arriving: the period stays one second (two ends, two periods).
    p.started(end + 2 - EARLY, LENGTH - 14)
    p.finished(end + 2 * PERIOD, LENGTH, seen_arriving=True)
    assert p.period == pytest.approx(PERIOD)
    assert p.skipped == 1
    # And the next nap again goes to the next due one.
    nap = p.step(end + 2.001, 0, LENGTH, LENGTH, due=end + 4 - 0.2).nap
    assert nap == pytest.approx(2 * PERIOD - EARLY - 0.001)


def test_without_a_due_time_every_telegram_is_read() -> None:
    p = Pacing()
    end = steady(p)
    assert p.step(end + 0.001, 0, LENGTH, LENGTH, due=0.0).nap < PERIOD


@pytest.mark.parametrize(
    ("length", "due_in", "skipped"),
    [
        (LENGTH, 10.0, int(MAX_SKIP_NAP // PERIOD) - 1),  # bounded by the longest nap
        (MAX_SKIPPED_BYTES // 2 + 1, 10.0, 0),  # two such telegrams would be too many bytes
        (MAX_SKIPPED_BYTES, 10.0, 0),
    ],
)
def test_sleeping_past_telegrams_is_bounded(length: int, due_in: float, skipped: int) -> None:
    p = Pacing()
    t = 100.0
    for _ in range(3):
        p.finished(t, length, seen_arriving=True)
        t += PERIOD
    end = t - PERIOD
    nap = p.step(end + 0.001, 0, length, length, due=end + due_in).nap
    assert nap == pytest.approx((1 + skipped) * PERIOD - EARLY - 0.001)
    assert nap <= MAX_SKIP_NAP


def test_a_nap_that_overshot_its_target_is_unlearnt() -> None:
    """Both the skipped telegram and the target were whole after the nap: the target's end
    was not seen, so the pacing forgets what it predicted and reads as things come."""
    p = Pacing()
    end = steady(p)
    p.step(end + 0.001, 0, LENGTH, LENGTH, due=end + 1.8)
    p.finished(end + 2.1, LENGTH, seen_arriving=False, frames=2)
    assert p.period is None
    assert p.step(end + 2.2, 0, LENGTH, LENGTH, due=end + 3.8).nap == 0.0


def test_a_lost_stream_forgets_the_skip() -> None:
    p = Pacing()
    end = steady(p)
    p.step(end + 0.001, 0, LENGTH, LENGTH, due=end + 1.8)
    p.lost()
    assert p.period is None
    p.finished(end + 5, LENGTH, seen_arriving=False)  # no longer counted as a skipped one
    assert p.skipped == 0
