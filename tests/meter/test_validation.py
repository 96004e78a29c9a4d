"""What may be published: held until confirmed, counters, identity, layout, physics."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

import pytest

from agent.meter.parity import encode_7e1
from agent.meter.pipeline import Pipeline, RejectionLog
from agent.meter.simulator import SimulatedEbz
from agent.meter.telegram import Reason, TariffSum, Telegram, parse
from agent.meter.validation import (
    ADOPT_AFTER,
    OVERRULE_AFTER,
    UNUSUAL_VOLTAGE_STEP_DV,
    Outcome,
    Validator,
    Verdict,
)
from tests.harness.paths import read_capture, split_telegrams

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
IOBROKER_2R = "ebz_dd3_2r06eta_iobroker-smartmeter-issue192_2telegrams.crlf-reconstructed.txt"
PHILIPPOO66_DTA = "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt"


def _published_sample(ident: str, lines: str) -> bytes:
    """A telegram quoted in public, rebuilt with CR LF and the blank line the Pulse bridge
    drops (not byte-exact); meter ids replaced with made-up ones."""
    body = "".join(f"1-0:{line}\r\n" for line in lines.split())
    return f"/{ident}\r\n\r\n{body}!\r\n".encode().replace(b"1-0:96.8", b"0-0:96.8")


# The two public telegrams from a two-way eBZ with an exporting phase. Both sign that
# phase, their signed phases add up to 16.7.0, and their status word has the FNN bit
# "L3 direction negative" (0x4000) set (firmware-notes/unverified.md B9).
# hombach/ioBroker.tibberlink#931 (2R06ETA): 80.67 + 818.21 - 863.38 = 35.50 W.
ISSUE_931 = _published_sample(
    "EBZ5DD32R06ETA_107",
    """0.0.0*255(1EBZ0100000931) 96.1.0*255(1EBZ0100000931) 1.8.0*255(020459.99309320*kWh)
    2.8.0*255(000101.91484041*kWh) 16.7.0*255(000035.50*W) 36.7.0*255(000080.67*W)
    56.7.0*255(000818.21*W) 76.7.0*255(-000863.38*W) 32.7.0*255(222.7*V) 52.7.0*255(230.5*V)
    72.7.0*255(229.9*V) 96.5.0*255(001C4104) 96.8.0*255(045F9973)""",
)
# hombach/ioBroker.tibberlink src/lib/tibberLocal.test.ts, EBZ_MODE5_HEX (2R06DTA, with
# tariffs): 135.95 + 239.91 - 373.17 = 2.69 W; 1.003 + 7458.781 = 7459.784 kWh.
TIBBERLINK_DTA = _published_sample(
    "EBZ5DD32R06DTA_107",
    """0.0.0*255(1EBZ0100000947) 96.1.0*255(1EBZ0100000947) 1.8.0*255(007459.78471652*kWh)
    1.8.1*255(000001.003*kWh) 1.8.2*255(007458.781*kWh) 2.8.0*255(027521.39912794*kWh)
    16.7.0*255(000002.69*W) 36.7.0*255(000135.95*W) 56.7.0*255(000239.91*W)
    76.7.0*255(-000373.17*W) 32.7.0*255(236.1*V) 52.7.0*255(235.7*V) 72.7.0*255(239.1*V)
    96.5.0*255(001C4104) 96.8.0*255(064FAE25)""",
)


def ahpohl() -> list[bytes]:
    return split_telegrams(read_capture(AHPOHL))


@pytest.fixture(params=["capture", "simulator"])
def seven(request: pytest.FixtureRequest) -> list[bytes]:
    """Seven consecutive telegrams: the ahpohl capture, or a simulated BZ06ETA."""
    if request.param == "capture":
        return ahpohl()
    meter = SimulatedEbz(rng=random.Random(12), power_w=180.0)
    return [meter.next_telegram() for _ in range(7)]


def set_power(raw: bytes, code: str, delta_cw: int) -> bytes:
    """The telegram with power `code` changed by `delta_cw` hundredths of a watt."""
    value = parse(raw).values[code]
    cw = int(value.replace(".", "")) + delta_cw
    new = f"{'-' if cw < 0 else ''}{abs(cw) // 100:06d}.{abs(cw) % 100:02d}"
    old_line = f"{code}*255({value}*W)".encode()
    assert raw.count(old_line) == 1
    return raw.replace(old_line, f"{code}*255({new}*W)".encode())


def set_value(raw: bytes, code: str, value: str) -> bytes:
    """The telegram with the value of `code` replaced (same line, same unit)."""
    old = parse(raw).values[code]
    line = re.compile(rb"(:" + re.escape(code.encode()) + rb"\*255\()" + re.escape(old.encode()))
    assert len(line.findall(raw)) == 1
    return line.sub(lambda m: m[1] + value.encode(), raw)


def set_volts(raw: bytes, code: str, decivolts: int) -> bytes:
    return set_value(raw, code, f"{decivolts // 10:03d}.{decivolts % 10}")


def shift_energy(raw: bytes, code: str, units: int) -> bytes:
    """The telegram with register `code` changed by `units` of its last digit."""
    value = parse(raw).values[code]
    whole, _, frac = value.partition(".")
    digits = str(int(whole + frac) + units).zfill(len(whole) + len(frac))
    new = digits[: len(whole)] + ("." + digits[len(whole) :] if frac else "")
    return raw.replace(f"({value}*kWh)".encode(), f"({new}*kWh)".encode())


def describe(raw: bytes) -> str:
    t = parse(raw)
    return ", ".join(
        f"{code}={t.values[code]}"
        for code in ("96.8.0", "1.8.0", "2.8.0", "16.7.0")
        if code in t.values
    )


def check_all(v: Validator, raws: Iterable[bytes]) -> list[Verdict]:
    return [v.check(parse(raw)) for raw in raws]


def published(verdicts: Iterable[Verdict]) -> list[bytes]:
    return [t.raw for verdict in verdicts for t in verdict.publish]


def feed_wire(pipeline: Pipeline, texts: Iterable[bytes | tuple[bytes]]) -> list[Telegram]:
    """Texts go through parity, framing and parsing; a 1-tuple holds wire bytes as they are."""
    out: list[Telegram] = []
    for item in texts:
        wire = item[0] if isinstance(item, tuple) else encode_7e1(item)
        for result in pipeline.feed(wire):
            out.extend(result.verdict.publish)
    return out


def sim(seed: int = 1, **options: object) -> SimulatedEbz:
    return SimulatedEbz(rng=random.Random(seed), **options)  # type: ignore[arg-type]


# --- holding and confirming ----------------------------------------------------------------------


def test_the_first_telegram_waits_for_its_successor(seven: list[bytes]) -> None:
    raws = seven
    v = Validator()
    first = v.check(parse(raws[0]))
    assert first.outcome is Outcome.HELD and first.publish == ()
    second = v.check(parse(raws[1]))
    assert second.outcome is Outcome.ACCEPTED
    assert [t.raw for t in second.publish] == raws[:2]  # oldest first


def test_seven_consecutive_telegrams_are_all_published_in_order(seven: list[bytes]) -> None:
    raws = seven
    verdicts = check_all(Validator(), raws)
    assert [x.outcome for x in verdicts] == [Outcome.HELD] + [Outcome.ACCEPTED] * 6
    assert published(verdicts) == raws
    assert all(x.adopted == "" for x in verdicts[2:])


def test_the_iobroker_2r_pair_is_published() -> None:
    raws = split_telegrams(read_capture(IOBROKER_2R))
    assert published(check_all(Validator(), raws)) == raws


def test_a_simulated_meter_is_published_whole() -> None:
    meter = sim(power_w=900.0)
    raws = [meter.next_telegram() for _ in range(600)]
    v = Validator()
    verdicts = check_all(v, raws)
    assert verdicts[0].outcome is Outcome.HELD
    assert published(verdicts) == raws
    assert v.stats.accepted == 600 and sum(v.stats.rejected.values()) == 0


def test_a_telegram_after_a_gap_is_held_then_confirmed() -> None:
    meter = sim()
    v = Validator()
    check_all(v, [meter.next_telegram() for _ in range(3)])
    meter.skip(2)
    after_gap = meter.next_telegram()
    assert v.check(parse(after_gap)).outcome is Outcome.HELD
    nxt = meter.next_telegram()
    assert [t.raw for t in v.check(parse(nxt)).publish] == [after_gap, nxt]


# --- counters ------------------------------------------------------------------------------------


def test_a_falling_energy_counter_is_rejected_counted_and_logged(seven: list[bytes]) -> None:
    raws = seven
    v = Validator()
    check_all(v, raws[:2])
    fell = shift_energy(raws[2], "1.8.0", -10_000)  # 0.1 Wh below the previous telegram
    assert parse(fell).energy["1.8.0"].units < parse(raws[1]).energy["1.8.0"].units
    verdict = v.check(parse(fell))
    assert verdict.outcome is Outcome.REJECTED and verdict.reason is Reason.ENERGY_FELL
    assert verdict.publish == ()
    assert v.stats.rejected[Reason.ENERGY_FELL] == 1
    log = RejectionLog(every=60.0)
    assert log.add(verdict.reason, now=100.0) == "rejected 1 telegram: 1 energy counter fell"
    assert log.add(Reason.ENERGY_FELL, now=101.0) is None  # rate-limited
    assert log.tick(now=130.0) is None
    assert log.tick(now=160.0) == "rejected 1 telegram: 1 energy counter fell"
    # The stream goes on: the next good telegrams are published, the bad one never.
    later = check_all(v, raws[3:])
    assert fell not in published(later)
    assert published(later)[-3:] == raws[-3:]


def test_seconds_that_do_not_grow_are_rejected(seven: list[bytes]) -> None:
    raws = seven
    v = Validator()
    check_all(v, raws[:3])
    again = v.check(parse(raws[2]))  # the same telegram twice
    assert (again.outcome, again.reason) == (Outcome.REJECTED, Reason.SECONDS)
    older = v.check(parse(raws[1]))
    assert (older.outcome, older.reason) == (Outcome.REJECTED, Reason.SECONDS)
    assert v.stats.rejected[Reason.SECONDS] == 2
    assert published(check_all(v, raws[3:5]))[-1] == raws[4]


# --- identity and layout -------------------------------------------------------------------------


def _run_until_adopted(v: Validator, meter: SimulatedEbz) -> tuple[list[Verdict], list[bytes]]:
    raws = [meter.next_telegram() for _ in range(ADOPT_AFTER + 5)]
    return check_all(v, raws), raws


def test_a_new_meter_id_is_adopted_after_consistent_repeats_exactly_once() -> None:
    meter = sim(2)
    v = Validator()
    check_all(v, [meter.next_telegram() for _ in range(10)])
    meter.meter_id = "1EBZ0100000002"
    verdicts, raws = _run_until_adopted(v, meter)
    head = verdicts[: ADOPT_AFTER - 1]
    assert [(x.outcome, x.reason) for x in head] == [(Outcome.REJECTED, Reason.IDENTITY)] * len(
        head
    )
    adopted = [i for i, x in enumerate(verdicts) if x.adopted]
    assert adopted == [ADOPT_AFTER - 1]
    assert "1EBZ0100000002" in verdicts[ADOPT_AFTER - 1].adopted
    assert published(verdicts) == raws[ADOPT_AFTER - 1 :]


def test_pin_lost_after_a_power_cut_is_rejected_then_adopted() -> None:
    meter = sim(3)
    v = Validator()
    check_all(v, [meter.next_telegram() for _ in range(10)])
    meter.set_layout(reduced=True)  # whole kWh, no power lines, no voltages
    verdicts, raws = _run_until_adopted(v, meter)
    head = verdicts[: ADOPT_AFTER - 1]
    assert [(x.outcome, x.reason) for x in head] == [(Outcome.REJECTED, Reason.LAYOUT)] * len(head)
    assert [i for i, x in enumerate(verdicts) if x.adopted] == [ADOPT_AFTER - 1]
    assert "layout" in verdicts[ADOPT_AFTER - 1].adopted
    assert published(verdicts) == raws[ADOPT_AFTER - 1 :]
    # The PIN entered again: back to the full layout, the same way.
    meter.set_layout(reduced=False)
    verdicts, raws = _run_until_adopted(v, meter)
    assert [i for i, x in enumerate(verdicts) if x.adopted] == [ADOPT_AFTER - 1]
    assert published(verdicts) == raws[ADOPT_AFTER - 1 :]


def test_one_odd_layout_between_good_telegrams_is_not_adopted() -> None:
    meter = sim(4)
    v = Validator()
    good = [meter.next_telegram() for _ in range(5)]
    meter.set_layout(voltages=False)
    odd = meter.next_telegram()
    meter.set_layout(voltages=True)
    rest = [meter.next_telegram() for _ in range(5)]
    verdicts = check_all(v, [*good, odd, *rest])
    assert verdicts[5].reason is Reason.LAYOUT
    assert not any(x.adopted for x in verdicts)
    assert published(verdicts) == good + rest


def test_a_wrong_reference_is_overruled_after_a_consistent_run() -> None:
    meter = sim(5)
    v = Validator()
    # Damage that no check can see at start: both telegrams 1 kWh too high, consistently.
    wrong = [shift_energy(meter.next_telegram(), "1.8.0", 10**8) for _ in range(2)]
    assert published(check_all(v, wrong)) == wrong
    truth = [meter.next_telegram() for _ in range(OVERRULE_AFTER + 3)]
    verdicts = check_all(v, truth)
    head = verdicts[: OVERRULE_AFTER - 1]
    assert [(x.outcome, x.reason) for x in head] == [(Outcome.REJECTED, Reason.ENERGY_FELL)] * len(
        head
    )
    assert [i for i, x in enumerate(verdicts) if x.adopted] == [OVERRULE_AFTER - 1]
    assert "overruled" in verdicts[OVERRULE_AFTER - 1].adopted
    assert published(verdicts) == truth[OVERRULE_AFTER - 1 :]


# --- resync --------------------------------------------------------------------------------------


def test_after_reset_the_next_telegram_is_held() -> None:
    meter = sim(6)
    v = Validator()
    check_all(v, [meter.next_telegram() for _ in range(4)])
    v.reset()
    meter.skip(3)  # the port was closed for a few seconds
    first = meter.next_telegram()
    assert v.check(parse(first)).outcome is Outcome.HELD
    second = meter.next_telegram()
    assert [t.raw for t in v.check(parse(second)).publish] == [first, second]


def test_reset_forgets_a_held_telegram_from_before_the_resync() -> None:
    meter = sim(7)
    v = Validator()
    check_all(v, [meter.next_telegram() for _ in range(4)])
    meter.skip(1)
    before = meter.next_telegram()
    assert v.check(parse(before)).outcome is Outcome.HELD
    v.reset()
    after = [meter.next_telegram() for _ in range(2)]
    verdicts = check_all(v, after)
    assert verdicts[0].outcome is Outcome.HELD
    assert published(verdicts) == after
    assert v.stats.rejected[Reason.UNCONFIRMED] == 1


def test_pipeline_resync_drops_the_partial_telegram() -> None:
    meter = sim(8)
    p = Pipeline()
    telegrams = [meter.next_telegram() for _ in range(3)]
    assert feed_wire(p, telegrams) != []
    partial = meter.next_telegram()
    p.feed(encode_7e1(partial[:150]))
    p.resync()
    meter.skip(2)
    later = [meter.next_telegram() for _ in range(2)]
    results = [r for raw in later for r in p.feed(encode_7e1(raw))]
    assert [r.raw for r in results] == later  # no fragment of `partial` comes out
    assert [t.raw for r in results for t in r.verdict.publish] == later


# --- physics: energy against power ---------------------------------------------------------------


def test_energy_that_disagrees_with_power_is_never_published(seven: list[bytes]) -> None:
    raws = seven
    bad = shift_energy(raws[2], "1.8.0", 100)  # 1 mWh: 3.6 W over the second
    verdicts = check_all(Validator(), [*raws[:2], bad, *raws[3:]])
    assert verdicts[2].outcome is not Outcome.ACCEPTED
    assert published(verdicts) == raws[:2] + raws[3:]


def test_energy_power_disagreement_is_counted_under_its_own_reason(seven: list[bytes]) -> None:
    """Rejections are counted per reason (issue 2 §3): this one as ENERGY_POWER, so the log
    and STATUS say what was wrong."""
    raws = seven
    v = Validator()
    check_all(v, [*raws[:2], shift_energy(raws[2], "1.8.0", 100), *raws[3:]])
    assert v.stats.rejected[Reason.ENERGY_POWER] == 1


def test_power_that_disagrees_with_energy_is_never_published(seven: list[bytes]) -> None:
    raws = seven
    # 16.7.0 and L1 both 5 W high: the phase sum still holds, the energy growth does not.
    good = parse(raws[2])
    bad = raws[2]
    for code in ("16.7.0", "36.7.0"):
        old = good.values[code].encode()
        new = f"{(good.power[code] + 500) / 100:09.2f}".encode()
        bad = bad.replace(b"(" + old + b"*W)", b"(" + new + b"*W)")
    assert bad != raws[2]
    assert parse(bad).power["16.7.0"] == sum(
        parse(bad).power[c] for c in ("36.7.0", "56.7.0", "76.7.0")
    )
    verdicts = check_all(Validator(), [*raws[:2], bad, *raws[3:]])
    assert bad not in published(verdicts), "published " + describe(bad)


def test_energy_growing_faster_than_any_load_is_rejected(seven: list[bytes]) -> None:
    raws = seven
    v = Validator()
    check_all(v, raws[:2])
    jump = shift_energy(raws[2], "1.8.0", 50_000_000)  # +0.5 kWh in one second: 1.8 MW
    verdict = v.check(parse(jump))
    assert (verdict.outcome, verdict.reason) == (Outcome.REJECTED, Reason.ENERGY_RATE)


@pytest.mark.parametrize("units", [10, 50_000_000], ids=["100uWh", "0.5kWh"])
def test_the_same_energy_damage_twice_in_a_row_is_never_published(
    seven: list[bytes], units: int
) -> None:
    """Two telegrams agreeing with each other do not outvote the reference one second
    before them: overruling it takes OVERRULE_AFTER (module docstring)."""
    raws = seven
    twice = [shift_energy(raws[i], "1.8.0", units) for i in (3, 4)]
    verdicts = check_all(Validator(), [*raws[:3], *twice, *raws[5:]])
    escaped = [describe(r) for r in twice if r in published(verdicts)]
    assert escaped == [], f"+{units} units published: {escaped}"


def _bit_error_in_energy(raw: bytes) -> tuple[bytes]:
    wire = bytearray(encode_7e1(raw))
    wire[raw.index(b"1.8.0") + 20] ^= 0x01  # parity error in the 1.8.0 value
    return (bytes(wire),)


def _repeated_phase_line(raw: bytes) -> bytes:
    line = re.search(rb"1-0:36\.7\.0\*255\([^)]*\)\r\n", raw)
    assert line is not None
    return raw.replace(line[0], line[0] * 2)


@pytest.mark.parametrize("damage", [_bit_error_in_energy, _repeated_phase_line])
def test_damage_across_a_lost_second_is_held_to_the_same_physics(damage) -> None:  # type: ignore[no-untyped-def]
    """A telegram two seconds after the reference, the second between known only from a
    damaged telegram's intact lines: a 1.8.0 off by 3 units (30 uWh) must not pass."""
    raws = ahpohl()
    plus3 = shift_energy(raws[5], "1.8.0", 3)
    out = feed_wire(Pipeline(), [*raws[:4], damage(raws[4]), plus3, raws[6]])
    assert [t.raw for t in out][:4] == raws[:4]
    assert plus3 not in [t.raw for t in out], "published 1.8.0 = " + describe(plus3)


# --- two-direction meters ------------------------------------------------------------------------


def test_2r_export_passes() -> None:
    meter = sim(9, ident="EBZ5DD32R06ETA_107", export_kwh=1.206, voltages=False, pv_w=700.0)
    raws = [meter.next_telegram() for _ in range(900)]
    parsed = [parse(r) for r in raws]
    assert min(t.power["16.7.0"] for t in parsed) < 0 < max(t.power["16.7.0"] for t in parsed)
    assert parsed[-1].energy["2.8.0"].units > parsed[0].energy["2.8.0"].units
    v = Validator()
    assert published(check_all(v, raws)) == raws
    assert sum(v.stats.rejected.values()) == 0


def _all_export(n: int) -> list[bytes]:
    meter = sim(10, ident="EBZ5DD32R06ETA_107", export_kwh=10.0, voltages=False, pv_w=9000.0)
    meter.set_mean_power(100.0)
    raws = [meter.next_telegram() for _ in range(n)]
    assert all(max(parse(r).power.values()) < 0 for r in raws)  # every phase exporting
    return raws


def _unsigned_phases(raw: bytes) -> bytes:
    return re.sub(rb"(1-0:[357]6\.7\.0\*255\()-", rb"\1", raw)


def test_public_2r_telegrams_with_an_exporting_phase_pass_the_signed_sum() -> None:
    """The evidence for dropping the unsigned-phase tolerance (firmware-notes B9): both
    public telegrams of a 2R eBZ with an exporting phase pass, signs and all."""
    for raw in (ISSUE_931, TIBBERLINK_DTA):
        t = parse(raw)
        assert min(t.power.values()) < 0 < t.power["16.7.0"]
        assert Validator().check(t).outcome is Outcome.HELD  # plausible: awaits its successor


def test_unsigned_phases_under_a_negative_total_are_rejected() -> None:
    """The form only an edited sample ever showed, and lost '-' signs produce."""
    raws = [_unsigned_phases(r) for r in _all_export(12)]
    assert all(parse(r).power["16.7.0"] < 0 < parse(r).power["36.7.0"] for r in raws)
    v = Validator()
    verdicts = check_all(v, raws)
    assert {(x.outcome, x.reason) for x in verdicts} == {(Outcome.REJECTED, Reason.POWER_SUM)}
    assert published(verdicts) == []


def test_a_lost_minus_on_the_total_is_rejected() -> None:
    raws = _all_export(12)
    bad = raws[6].replace(b"16.7.0*255(-", b"16.7.0*255(", 1)
    assert parse(bad).power["16.7.0"] > 0
    verdicts = check_all(Validator(), [*raws[:6], bad, *raws[7:]])
    assert verdicts[6].reason is Reason.POWER_SUM
    assert published(verdicts) == raws[:6] + raws[7:]


@pytest.mark.parametrize("seconds_gap", [1, 2, 5])
def test_power_sum_failure_alone_never_publishes(seconds_gap: int) -> None:
    meter = sim(11)
    v = Validator()
    check_all(v, [meter.next_telegram() for _ in range(3)])
    meter.skip(seconds_gap - 1)
    raw = meter.next_telegram()
    bad = re.sub(
        rb"(1-0:56\.7\.0\*255\(\d{5})(\d)",
        lambda m: m[1] + b"9" if m[2] != b"9" else m[1] + b"8",
        raw,
    )
    verdict = v.check(parse(bad))
    assert (verdict.outcome, verdict.reason) == (Outcome.REJECTED, Reason.POWER_SUM)
    assert all(t.raw != bad for t in verdict.publish)


# --- meter ids: 0.0.0 and 96.1.0 -----------------------------------------------------------------


def _change_char(raw: bytes, code: str, index: int) -> bytes:
    """One character of `code`'s value changed to another of its class (digit, letter)."""
    value = parse(raw).values[code]
    old = value[index]
    new = "7" if old == "1" else "1" if old.isdigit() else "X" if old != "X" else "Y"
    return set_value(raw, code, value[:index] + new + value[index + 1 :])


@pytest.mark.parametrize("code", ["0.0.0", "96.1.0"])
def test_a_changed_character_in_either_id_line_is_never_published(
    seven: list[bytes], code: str
) -> None:
    raws = seven
    for index in range(len(parse(raws[3]).values[code])):
        bad = _change_char(raws[3], code, index)
        verdicts = check_all(Validator(), [*raws[:3], bad, *raws[4:]])
        assert verdicts[3].reason is Reason.IDENTITY, (index, verdicts[3])
        assert published(verdicts) == raws[:3] + raws[4:], index


@pytest.mark.parametrize("code", ["0.0.0", "96.1.0"])
def test_a_changed_id_in_the_first_telegram_is_never_published(
    seven: list[bytes], code: str
) -> None:
    raws = seven
    bad = _change_char(raws[0], code, 5)
    verdicts = check_all(Validator(), [bad, *raws[1:]])
    assert published(verdicts) == raws[1:]


def test_a_property_number_in_0_0_0_is_adopted_after_repeats_then_guarded() -> None:
    """One meter shows a property number in 0.0.0 (meters.md §4): its pair of ids becomes
    the identity once it has repeated like a new meter's; then a changed character in
    either line is an identity change, never published."""
    meter = sim(13, property_number="123456")
    raws = [meter.next_telegram() for _ in range(ADOPT_AFTER + 5)]
    v = Validator()
    verdicts = check_all(v, raws)
    assert [i for i, x in enumerate(verdicts) if x.adopted] == [ADOPT_AFTER - 1]
    assert "123456" in verdicts[ADOPT_AFTER - 1].adopted
    assert published(verdicts) == raws[ADOPT_AFTER - 1 :]
    for code in ("0.0.0", "96.1.0"):
        good = [meter.next_telegram() for _ in range(3)]
        bad = _change_char(meter.next_telegram(), code, 2)
        after = [meter.next_telegram() for _ in range(3)]
        verdicts = check_all(v, [*good, bad, *after])
        assert verdicts[3].reason is Reason.IDENTITY
        assert published(verdicts) == good + after


# --- voltages ------------------------------------------------------------------------------------

VOLTAGES = ("32.7.0", "52.7.0", "72.7.0")


@pytest.mark.parametrize("code", VOLTAGES)
@pytest.mark.parametrize("step_dv", [20, 31, 49, 90, -20, -49, -90])
def test_a_voltage_2_v_or_more_from_both_neighbours_is_never_published(
    seven: list[bytes], code: str, step_dv: int
) -> None:
    """Neighbours that agree, and between them a voltage >= 2 V off both: a changed ones
    or tens digit. It waits for its successor, which does not confirm it."""
    raws = seven
    around = [parse(raws[i]).volts[code] for i in (2, 4)]
    assert abs(around[0] - around[1]) < UNUSUAL_VOLTAGE_STEP_DV  # they agree
    off = (max(around) if step_dv > 0 else min(around)) + step_dv
    bad = set_volts(raws[3], code, off)
    verdicts = check_all(Validator(), [*raws[:3], bad, *raws[4:]])
    assert verdicts[3].outcome is not Outcome.ACCEPTED
    assert published(verdicts) == raws[:3] + raws[4:]


def test_a_real_voltage_step_waits_for_its_successor_then_goes_out() -> None:
    """A 3 V step that stays (a big load switched elsewhere on the grid) is published one
    second late, with the telegram that confirms it."""
    meter = sim(14)
    raws = [meter.next_telegram() for _ in range(8)]
    level = parse(raws[3]).volts["52.7.0"] - parse(raws[2]).volts["52.7.0"]
    stepped = raws[:3] + [
        set_volts(r, "52.7.0", parse(r).volts["52.7.0"] + 30 - level) for r in raws[3:]
    ]
    verdicts = check_all(Validator(), stepped)
    assert verdicts[3].outcome is Outcome.HELD
    assert [t.raw for t in verdicts[4].publish] == stepped[3:5]
    assert published(verdicts) == stepped


def test_a_voltage_within_the_mains_wander_goes_out_at_once(seven: list[bytes]) -> None:
    """Below 2 V nothing tells a changed tenths digit from the mains (the undetectable
    class): such a telegram is published without waiting."""
    raws = seven
    old = parse(raws[3]).volts["32.7.0"]
    near = set_volts(raws[3], "32.7.0", old + 9 if old % 10 == 0 else old - old % 10)
    verdicts = check_all(Validator(), [*raws[:3], near, *raws[4:]])
    assert verdicts[3].outcome is Outcome.ACCEPTED


# --- tariff registers ----------------------------------------------------------------------------


def test_the_tariff_captures_add_up_to_their_total() -> None:
    """1.8.1 + 1.8.2 is 1.8.0 truncated to whole Wh on both public DTA telegrams."""
    (real,) = split_telegrams(read_capture(PHILIPPOO66_DTA))
    assert parse(real).tariffs == (TariffSum("1.8.0", 13813, 10**5, (999, 1664)),)
    assert parse(TIBBERLINK_DTA).tariffs == (TariffSum("1.8.0", 71652, 10**5, (1003, 7458781)),)
    assert Validator().check(parse(real)).outcome is Outcome.HELD


def dta(seed: int = 15, **options: object) -> SimulatedEbz:
    """A simulated 2R06DTA (the philippoo66 capture's counters), tariff 1 running."""
    settings: dict[str, object] = {
        "ident": "EBZ5DD32R06DTA_107",
        "energy_kwh": 2.66313813,
        "export_kwh": 2.152,
        "power_w": 1400.0,
        "tariffs": True,
    }
    return sim(seed, **{**settings, **options})


def set_tariff(raw: bytes, code: str, wh: int) -> bytes:
    return set_value(raw, code, f"{wh // 1000:06d}.{wh % 1000:03d}")


def _calm_second(raws: list[bytes], start: int) -> int:
    """An index >= start two seconds away from any step of the tariff registers: a wrong
    last digit there lands outside the window of the remainder (validation._Spread)."""
    regs = [(parse(r).energy["1.8.1"], parse(r).energy["1.8.2"]) for r in raws]
    for i in range(start, len(raws) - 3):
        if regs[i - 2] == regs[i - 1] == regs[i] == regs[i + 1] == regs[i + 2]:
            return i
    raise AssertionError(f"no calm second after {start}")


@pytest.mark.parametrize("code", ["1.8.1", "1.8.2"])
def test_a_changed_tariff_digit_is_never_published(code: str) -> None:
    """Every digit of a running (1.8.1) or idle (1.8.2) tariff register, changed at a
    calm second: rejected or held and refuted, never published, nor does it poison the
    reference (today's main published a higher last digit, then rejected what followed)."""
    meter = dta(power_w=400.0)  # a step of 1.8.1 every 9 s
    raws = [meter.next_telegram() for _ in range(90)]
    k = _calm_second(raws, 30)
    wh = parse(raws[k]).energy[code].units
    for place in range(9):
        for delta in (1, 2, 5, -1):
            digit = (wh // 10**place) % 10
            if not 0 <= digit + delta <= 9:
                continue
            bad = set_tariff(raws[k], code, wh + delta * 10**place)
            verdicts = check_all(Validator(), [*raws[:k], bad, *raws[k + 1 :]])
            assert published(verdicts) == raws[:k] + raws[k + 1 :], (place, delta)


def test_a_tariff_switch_is_followed_without_losing_a_telegram() -> None:
    meter = dta()
    raws = [meter.next_telegram() for _ in range(60)]
    meter.set_tariff(2)
    raws += [meter.next_telegram() for _ in range(60)]
    assert parse(raws[-1]).energy["1.8.2"].units > parse(raws[59]).energy["1.8.2"].units
    verdicts = check_all(Validator(), raws)
    assert published(verdicts) == raws
    held = [i for i, x in enumerate(verdicts) if x.outcome is Outcome.HELD]
    assert len(held) <= 4, held  # the start, a first step, the switch: never each step


def test_tariff_registers_that_grow_faster_than_their_total_are_rejected() -> None:
    """Right after the reference: 1.8.2 two digits up while 1.8.0 grew by a fraction."""
    meter = dta(power_w=400.0)
    raws = [meter.next_telegram() for _ in range(60)]
    k = _calm_second(raws, 20)
    v = Validator()
    check_all(v, raws[:k])
    wh = parse(raws[k]).energy["1.8.2"].units
    verdict = v.check(parse(set_tariff(raws[k], "1.8.2", wh + 2)))
    assert (verdict.outcome, verdict.reason) == (Outcome.REJECTED, Reason.TARIFF)
