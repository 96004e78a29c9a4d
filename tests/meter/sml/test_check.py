"""The SML checker: a verified frame is published at once unless it contradicts the last
accepted one; a consistent run wins in the end, so it never stays stuck."""

from __future__ import annotations

import random
from dataclasses import replace

from agent.meter.sml.check import STOPPED_CLOCK_AFTER, SmlChecker, SmlVerdict
from agent.meter.sml.decode import SmlReading, SmlValue, decode
from agent.meter.sml.pipeline import SmlPipeline
from agent.meter.sml.simulate import SimulatedSml, damaged_stream
from agent.meter.sml.transport import Reason, SmlFrame, SmlFramer
from agent.meter.validation import ADOPT_AFTER, OVERRULE_AFTER, Outcome
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


def test_a_scaler_outside_integer8_is_never_computed_with() -> None:
    """decode() never returns one (test_decode); the checker still refuses to raise 10 to
    such a power (2**62 hung it, 2 000 000 cost 0.8 s a frame), as a reference or after one."""
    for scaler in (300_000, -300_000, 128, -129):
        checker = SmlChecker()
        assert run(checker, (reading(10, 5, scaler), 0.0))[0].reason is Reason.TYPE
        assert checker.reference is None
        run(checker, (reading(10, 5), 0.0))
        assert run(checker, (reading(11, 5, scaler), 1.0))[0].reason is Reason.TYPE
        assert checker.reference is not None and checker.reference.seconds == 10
    # The widest scalers decode() returns, against each other: judged, and quickly.
    verdicts = run(SmlChecker(), (reading(10, 1, -128), 0.0), (reading(11, 2, 127), 1.0))
    assert [v.reason for v in verdicts] == [None, Reason.ENERGY_RATE]


STOPPED = "the seconds field of server id 41 stands at 1000: frames are timed by arrival"


def test_a_meter_whose_time_stands_still_is_timed_by_arrival_after_a_run() -> None:
    """A meter that sends a fixed time (a valTime that is no clock) is not stuck: after
    STOPPED_CLOCK_AFTER frames in a row rejected only for that, its frames are judged by
    their arrival times, as a meter without a time field is, and it says so once."""
    checker = SmlChecker()
    kw_second = 1000 * 100_000 // 3600
    items = [(reading(1000, i * kw_second), float(i)) for i in range(3 * STOPPED_CLOCK_AFTER)]
    verdicts = run(checker, *items)
    learn = STOPPED_CLOCK_AFTER  # the first frame is the reference, then the run
    assert [v.publish for v in verdicts[: learn + 1]] == [True] + [False] * (learn - 1) + [True]
    assert {v.reason for v in verdicts[1:learn]} == {Reason.SECONDS}
    assert verdicts[learn].adopted == STOPPED
    assert all(v.publish and not v.adopted for v in verdicts[learn + 1 :])
    # Still held to the most a connection can draw, now over the arrival times ...
    t = float(len(items))
    last = (len(items) - 1) * kw_second
    assert run(checker, (reading(1000, last + 3 * 69_000 * 100_000 // 3600), t))[0].reason is (
        Reason.ENERGY_RATE
    )
    # ... and a burst read at one instant still gets the floor of each frame's wire time.
    burst = [(reading(1000, last + k * kw_second), t) for k in (1, 2, 3)]
    assert all(v.publish for v in run(checker, *burst))
    assert run(checker, (reading(1000, last + 3 * kw_second + 10**7), t))[0].reason is (
        Reason.ENERGY_RATE
    )


def test_a_clock_coarser_than_the_frame_rate_is_learned_too() -> None:
    """Two frames per clock tick: every other frame repeats the time. Without learning,
    half the frames are lost for good."""
    checker = SmlChecker()
    items = [(reading(1000 + i // 2, i * 100), float(i)) for i in range(6 * STOPPED_CLOCK_AFTER)]
    verdicts = run(checker, *items)
    adopted = [i for i, v in enumerate(verdicts) if v.adopted]
    assert adopted[0] == 0 and len(adopted) == 2  # the first reference, then the learning
    assert all(v.publish for v in verdicts[adopted[1] :])
    assert adopted[1] <= 2 * STOPPED_CLOCK_AFTER


def test_a_repeated_time_now_and_then_does_not_switch_the_clock_off() -> None:
    """A healthy meter: a frame repeating the last one's time (damage within the CRC's
    1/65536, or a meter that sent twice) between runs of frames whose time grows."""
    checker = SmlChecker()
    seconds, energy, t = 1000, 0, 0.0
    for _ in range(5 * STOPPED_CLOCK_AFTER):
        for _ in range(2):
            seconds, energy, t = seconds + 1, energy + 10, t + 1.0
            assert run(checker, (reading(seconds, energy), t))[0].publish
        t += 1.0
        assert run(checker, (reading(seconds, energy + 5), t))[0].reason is Reason.SECONDS


def test_a_stopped_time_run_must_be_consistent_by_arrival() -> None:
    """Frames sharing the reference's time whose energy falls among them (or grows beyond
    any load by their arrival times) build no run: the time stays in use."""
    checker = SmlChecker()
    run(checker, (reading(1000, 10**6), 0.0))
    falling = [(reading(1000, 10**6 + 100 - i % 2 * 50), 1.0 + i) for i in range(40)]
    assert not any(v.publish for v in run(checker, *falling))
    racing = [(reading(1000, 10**9 * (i + 1)), 50.0 + i) for i in range(40)]
    assert not any(v.publish for v in run(checker, *racing))


def test_a_new_meter_whose_time_stands_still_is_adopted_and_then_learned() -> None:
    """The head moved to a meter with a fixed time: the run adopting its server id judges
    its frames by arrival time where their times are equal, then its clock is learned."""
    checker = SmlChecker()
    run(checker, (reading(100, 5000), 0.0))
    items = [(reading(7, 10 + i, sid=b"B"), 1.0 + i) for i in range(3 * STOPPED_CLOCK_AFTER)]
    verdicts = run(checker, *items)
    adopted = [(i, v.adopted) for i, v in enumerate(verdicts) if v.adopted]
    assert adopted == [
        (ADOPT_AFTER - 1, "new server id 42 (was 41)"),
        (
            ADOPT_AFTER - 1 + STOPPED_CLOCK_AFTER,
            STOPPED.replace("41 stands at 1000", "42 stands at 7"),
        ),
    ]
    assert all(v.publish for v in verdicts[ADOPT_AFTER - 1 + STOPPED_CLOCK_AFTER :])


def test_a_simulated_meter_with_a_fixed_time_reaches_the_outlets() -> None:
    """The reviewer's case end to end: 300 frames of a meter whose time field never moves,
    through framer, decoder and checker (1 was accepted, 299 rejected for good)."""
    for step in (10**9, 2):
        meter = SimulatedSml(rng=random.Random(1), clock_step=step)
        pipeline = SmlPipeline()
        results = [r for i in range(300) for r in pipeline.feed(meter.next_frame(), float(i))]
        outcomes = [r.verdict.outcome for r in results]
        assert outcomes.count(Outcome.REJECTED) <= 2 * STOPPED_CLOCK_AFTER, step
        assert outcomes[-100:] == [Outcome.ACCEPTED] * 100, step
