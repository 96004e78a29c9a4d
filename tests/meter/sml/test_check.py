"""The SML checker: a verified frame is published at once unless it contradicts the last
accepted one; a consistent run wins in the end, so it never stays stuck."""

from __future__ import annotations

import random
from dataclasses import replace

from agent.meter.sml.check import SmlChecker, SmlVerdict
from agent.meter.sml.decode import SmlReading, SmlValue, decode
from agent.meter.sml.simulate import SimulatedSml, damaged_stream
from agent.meter.sml.transport import Reason, SmlFrame, SmlFramer
from agent.meter.validation import ADOPT_AFTER, OVERRULE_AFTER
from tests.meter.sml.test_transport import DZG, EBZ_SMZ1, Q3A, capture, feed

E180 = "1-0:1.8.0*255"
E280 = "1-0:2.8.0*255"


def frame_of(raw: bytes = b"\x00" * 352) -> SmlFrame:
    return SmlFrame(raw, b"", "x25")


def reading(seconds: int | None, wh_digits: int, scaler: int = -5, sid: bytes = b"A") -> SmlReading:
    return SmlReading(sid, seconds, {E180: SmlValue(wh_digits, scaler, 30)})


def run(checker: SmlChecker, *items: tuple[SmlReading, float]) -> list[SmlVerdict]:
    return [checker.check(r, frame_of(), t) for r, t in items]


def published(name: str) -> list[int | None]:
    checker = SmlChecker()
    out = []
    for i, o in enumerate(SmlFramer().feed(capture(name))):
        if isinstance(o, SmlFrame):
            r = decode(o.file)
            if checker.check(r, o, float(i)).publish:
                out.append(r.seconds)
    return out


def test_every_good_frame_of_the_captures_is_published_at_once() -> None:
    assert published(EBZ_SMZ1) == [104569093, 104569094, 104569095, 104569096]
    assert published(DZG) == [9513016, 9513017, 9513018]
    assert published(Q3A) == [16310127, 16310128, 16310131, 16310132]


def test_the_first_frame_is_the_reference_and_says_so() -> None:
    (v,) = run(SmlChecker(), (reading(10, 100), 0.0))
    assert v.publish and v.reason is None and v.adopted == "first reference, server id 41"


def test_energy_that_falls_is_rejected() -> None:
    checker = SmlChecker()
    verdicts = run(checker, (reading(10, 1000), 0.0), (reading(11, 999), 1.0))
    assert [v.publish for v in verdicts] == [True, False]
    assert verdicts[1].reason is Reason.ENERGY_FELL
    assert checker.reference is not None and checker.reference.seconds == 10


def test_energy_may_grow_by_69_kw_over_the_seconds_and_one_digit_more() -> None:
    # 69 kW for 2 s = 38.33 Wh = 3833333 digits of 10 uWh, plus one digit of truncation.
    limit = 69_000 * 2 * 100_000 // 3600 + 1
    ok = run(SmlChecker(), (reading(10, 0), 0.0), (reading(12, limit), 99.0))
    assert ok[1].publish
    too_much = run(SmlChecker(), (reading(10, 0), 0.0), (reading(12, limit + 1), 99.0))
    assert too_much[1].reason is Reason.ENERGY_RATE
    # Whole kWh (scaler +3): a one-digit step is always allowed (truncation).
    assert run(SmlChecker(), (reading(10, 5, 3), 0.0), (reading(11, 6, 3), 1.0))[1].publish
    late = run(SmlChecker(), (reading(10, 5, 3), 0.0), (reading(11, 7, 3), 1.0))
    assert late[1].reason is Reason.ENERGY_RATE


def test_a_seconds_index_that_does_not_grow_is_rejected() -> None:
    checker = SmlChecker()
    verdicts = run(checker, (reading(10, 5), 0.0), (reading(10, 5), 1.0), (reading(9, 5), 2.0))
    assert [v.reason for v in verdicts] == [None, Reason.SECONDS, Reason.SECONDS]
    assert run(checker, (reading(11, 5), 3.0))[0].publish


def test_without_a_seconds_index_arrival_time_bounds_the_growth() -> None:
    checker = SmlChecker()
    start = (reading(None, 0), 100.0)
    one_second = 69_000 * 100_000 // 3600
    assert run(checker, start, (reading(None, one_second), 101.0))[1].publish
    assert run(checker, (reading(None, 3 * one_second), 101.5))[0].reason is Reason.ENERGY_RATE


def test_a_burst_of_frames_from_a_reader_that_fell_behind_is_not_rejected() -> None:
    """Frames read in one go arrive at the same instant; each still took its time on the
    wire (352 B at 9600 Bd: 0.37 s), so an honest 1 kW step is allowed."""
    checker = SmlChecker()
    kw_second = 1000 * 100_000 // 3600
    items = [(reading(None, i * kw_second), 50.0) for i in range(5)]
    assert all(v.publish for v in run(checker, *items))
    assert not run(checker, (reading(None, 5 * kw_second + 10**7), 50.0))[0].publish


def test_a_resolution_switch_is_compared_at_the_coarser_digit() -> None:
    """After a PIN entry or a power cut the eBZ switches between whole kWh and 10 uWh."""
    checker = SmlChecker()
    fine = reading(10, 13024_12345678, -5)  # 13024.12345678 kWh in 10 uWh
    coarse = reading(11, 13024, 3)  # the same register as whole kWh
    verdicts = run(checker, (fine, 0.0), (coarse, 1.0), (reading(12, 13024_12350000, -5), 2.0))
    assert [v.publish for v in verdicts] == [True, True, True]


def test_a_new_server_id_is_adopted_after_it_repeats() -> None:
    checker = SmlChecker()
    run(checker, (reading(100, 5000), 0.0))
    other = [(reading(7 + i, 10 + i, sid=b"B"), 1.0 + i) for i in range(ADOPT_AFTER)]
    verdicts = run(checker, *other)
    assert [v.reason for v in verdicts[:-1]] == [Reason.IDENTITY] * (ADOPT_AFTER - 1)
    assert verdicts[-1].publish and verdicts[-1].adopted == "new server id 42 (was 41)"
    assert checker.reference is not None and checker.reference.server_id == b"B"


def test_the_old_meter_between_new_ids_restarts_the_count() -> None:
    checker = SmlChecker()
    run(checker, (reading(100, 5000), 0.0))
    items = [
        (reading(7, 10, sid=b"B"), 1.0),
        (reading(101, 5000), 2.0),  # the reference's meter again: accepted
        (reading(8, 11, sid=b"B"), 3.0),
        (reading(9, 12, sid=b"B"), 4.0),
    ]
    assert [v.publish for v in run(checker, *items)] == [False, True, False, False]


def test_a_counter_reset_is_overruled_after_a_consistent_run() -> None:
    checker = SmlChecker()
    run(checker, (reading(1000, 10**9), 0.0))
    items = [(reading(1001 + i, 100 + i), 1.0 + i) for i in range(OVERRULE_AFTER)]
    verdicts = run(checker, *items)
    assert [v.publish for v in verdicts] == [False] * (OVERRULE_AFTER - 1) + [True]
    assert verdicts[-1].adopted == "meter data overruled the last reference (energy counter fell)"
    assert run(checker, (reading(1012, 120), 20.0))[0].publish


def test_an_inconsistent_run_never_overrules() -> None:
    checker = SmlChecker()
    run(checker, (reading(1000, 10**9), 0.0))
    # Low values that also fall among themselves: no run builds up.
    items = [(reading(1001 + i, 100 - i), 1.0 + i) for i in range(3 * OVERRULE_AFTER)]
    assert not any(v.publish for v in run(checker, *items))


def test_reset_keeps_the_reference_but_restarts_a_run() -> None:
    checker = SmlChecker()
    run(checker, (reading(1000, 10**9), 0.0))
    run(checker, *[(reading(1001 + i, 100 + i), 1.0 + i) for i in range(OVERRULE_AFTER - 1)])
    checker.reset()
    # The run starts again: the next low frame is still rejected, a high one accepted.
    assert run(checker, (reading(1020, 200), 30.0))[0].reason is Reason.ENERGY_FELL
    assert run(checker, (reading(1021, 10**9 + 1), 31.0))[0].publish


def test_two_direction_registers_are_both_checked() -> None:
    checker = SmlChecker()
    base = SmlReading(b"A", 10, {E180: SmlValue(500, -5, 30), E280: SmlValue(800, -5, 30)})
    fell = replace(base, seconds=11, values={**base.values, E280: SmlValue(799, -5, 30)})
    assert [v.publish for v in run(checker, (base, 0.0), (fell, 1.0))] == [True, False]


def test_through_the_whole_path_nothing_but_sent_frames_is_published() -> None:
    """Framer, decoder and checker on damaged simulated streams: every published reading
    comes from a frame the meter sent, in order, and every intact frame is published."""
    for seed in range(20):
        rng = random.Random(seed)
        meter = SimulatedSml(rng=rng, escape_value=seed % 2 == 0)
        stream = damaged_stream(meter, rng, 150, rate=0.4)
        checker = SmlChecker()
        out = feed(stream.wire, rng)
        good = [o for o in out if isinstance(o, SmlFrame)]
        sent = [o.raw for o in good if checker.check(decode(o.file), o, 0.0).publish]
        assert sent == list(stream.intact), seed
