"""The D0 pipeline as the reader drives it: every D0/mode-C capture in random read sizes,
exactly which telegrams come out and which are rejected and why; generated damage never
published beyond the documented undetectable class; no clean telegram lost between two
damaged ones; the checks' rules one by one."""

from __future__ import annotations

import random
import re
from decimal import Decimal

import pytest

from agent.meter.d0.check import MAX_CANDIDATES, VOLATILE_AFTER, D0Checker
from agent.meter.d0.framing import ETX, STX, bcc
from agent.meter.d0.grammar import Reason
from agent.meter.d0.pipeline import D0Pipeline
from agent.meter.d0.simulate import (
    Sent,
    SimulatedEasyMeter,
    SimulatedZpa,
    change_digit,
    damaged_stream,
)
from agent.meter.parity import encode_7e1
from agent.meter.pipeline import Result
from agent.meter.protocols import AutoPipeline
from agent.meter.validation import ADOPT_AFTER, OVERRULE_AFTER, Outcome
from tests.conftest import Figure
from tests.harness.paths import split_telegrams
from tests.meter.d0.helpers import (
    ACE3000,
    E350,
    EBZ_7,
    MT174,
    Q3DA,
    Q3DB,
    capture,
    chunks,
    pipeline_results,
)

SEEDS = range(20)
_ENERGY = re.compile(rb"(1-0:1\.8\.0\*255\()(\d{8})\.(\d{7})(\*kWh\))")


def published(results: list[Result]) -> list[bytes]:
    return [t.raw for r in results for t in r.verdict.publish]


def easymeter_successor(text: bytes, step: int) -> bytes:
    """The capture `step` push periods later: 1.8.0 raised by 2 s of its 1.7.0 power per
    step (1688.21 W x 2 s = 9379 digits of 1e-7 kWh), the rest as captured."""
    m = _ENERGY.search(text)
    assert m is not None
    digits = int(m[2] + m[3]) + 9379 * step
    new = f"{digits // 10**7:08d}.{digits % 10**7:07d}".encode()
    return text[: m.start(2)] + new + text[m.end(3) :]


# -- the captures ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ebz_capture_each_telegram_published_once_its_successor_confirms_it(seed: int) -> None:
    data = capture(EBZ_7)
    results = pipeline_results(data, random.Random(seed))
    telegrams = split_telegrams(data)
    assert [r.raw for r in results] == telegrams
    assert [r.verdict.outcome for r in results] == [Outcome.HELD] * 7
    assert published(results) == telegrams[:6]  # the last one waits for its successor
    assert [bool(r.verdict.adopted) for r in results] == [False, True] + [False] * 5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [Q3DA, Q3DB])
def test_easymeter_capture_held_then_published_as_captured(name: str, seed: int) -> None:
    data = capture(name)
    telegram = data[: data.index(b"!\r\n") + 3]
    trailer = data[len(telegram) :]
    p = D0Pipeline(parity="none")
    first = pipeline_results(data, random.Random(seed), 0.0, p)
    assert [(r.raw, r.verdict.outcome, r.verdict.publish) for r in first] == [
        (telegram, Outcome.HELD, ())
    ]
    nxt = easymeter_successor(telegram, 1)
    second = pipeline_results(nxt + trailer, random.Random(seed), 2.0, p)
    assert [r.verdict.outcome for r in second] == [Outcome.HELD]
    assert published(second) == [telegram]
    assert second[0].verdict.publish[0].values["1.7.0"] == "001688.21" or name == Q3DB
    assert sum(p.rejected.values()) == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_iskra_readout_accepted_on_its_bcc_once_a_second_frame_vouches_for_its_ident(
    seed: int,
) -> None:
    """The BCC 0x19 verifies. The very first frame waits for a second with the same ident
    line (which lies before STX, outside the BCC); from then on each frame is published as
    it arrives. The capture is one readout, so a second readout is the same bytes again."""
    data = capture(MT174)
    p = D0Pipeline(parity="none")
    first = pipeline_results(data, random.Random(seed), 0.0, p)
    assert [(r.verdict.outcome, published([r])) for r in first] == [(Outcome.HELD, [])]
    second = pipeline_results(data, random.Random(seed), 60.0, p)
    assert [(r.verdict.outcome, published([r])) for r in second] == [
        (Outcome.ACCEPTED, [data, data])
    ]
    third = pipeline_results(data, random.Random(seed), 120.0, p)
    assert [(r.verdict.outcome, published([r])) for r in third] == [(Outcome.ACCEPTED, [data])]
    assert third[0].verdict.publish[0].protocol == "d0" and sum(p.rejected.values()) == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_ace3000_readout_rejected_for_its_bcc(seed: int) -> None:
    p = D0Pipeline(parity="none")
    results = pipeline_results(capture(ACE3000), random.Random(seed), 0.0, p)
    assert [(r.verdict.outcome, r.verdict.reason) for r in results] == [
        (Outcome.REJECTED, Reason.BCC)
    ]
    assert p.rejected == {Reason.BCC: 1}


def test_e350_readout_gives_nothing() -> None:
    p = D0Pipeline(parity="none")
    assert pipeline_results(capture(E350), random.Random(1), 0.0, p) == []
    assert p.framer.pending == len(capture(E350))


def test_a_7e1_head_and_one_that_strips_parity_give_the_same() -> None:
    data = capture(EBZ_7) + capture(MT174)
    a = D0Pipeline(parity="even").feed(encode_7e1(data), 0.0)
    b = D0Pipeline(parity="none").feed(data, 0.0)
    assert [r.raw for r in a] == [r.raw for r in b] and published(a) == published(b)
    assert published(a) == split_telegrams(capture(EBZ_7))[:6]
    # Another meter's frame after the eBZ's: a new layout, adopted only after a run.
    assert a[-1].verdict.reason == Reason.LAYOUT


# -- damage ----------------------------------------------------------------------------


def _run(sent: list[Sent], period: float) -> tuple[D0Pipeline, list[bytes], dict[bytes, int]]:
    """Feed a stream telegram by telegram (arrival = index x period); which telegram each
    framed text came from, and what was published."""
    p = D0Pipeline()
    out: list[bytes] = []
    origin: dict[bytes, int] = {}
    for i, s in enumerate(sent):
        for r in p.feed(s.wire, i * period):
            origin.setdefault(r.raw, i)
            out += [t.raw for t in r.verdict.publish]
    return p, out, origin


def _energy(text: bytes) -> int:
    m = _ENERGY.search(text)
    assert m is not None
    return int(m[2] + m[3])


def _undetectable_energy(sent: list[Sent], i: int, raw: bytes, period: float = 2.0) -> bool:
    """The documented checksum-less class: only 1.8.0 differs, and it lies between the
    values of the nearest intact telegrams before and after (at start, with none before: at
    most 69 kW x the gap below the one after)."""
    if _ENERGY.sub(b"", raw) != _ENERGY.sub(b"", sent[i].clean):
        return False
    before = [j for j in range(i) if not sent[j].damage]
    after = [j for j in range(i + 1, len(sent)) if not sent[j].damage]
    if not after:
        return False
    high = _energy(sent[after[0]].clean)
    if before:
        low = _energy(sent[before[-1]].clean)
    else:  # 1e-7 kWh digits: 69 kW x the gap
        low = high - int(69_000 * (after[0] - i) * period / 3600 * 1e7) - 1
    return low <= _energy(raw) <= high


@pytest.mark.parametrize("seed", range(40))
def test_damaged_bcc_frames_are_never_published(seed: int) -> None:
    rng = random.Random(seed)
    sent = list(damaged_stream(SimulatedZpa(rng), rng, 300, 0.3))
    p, out, _ = _run(sent, 1.0)
    clean = {s.clean for s in sent}
    assert all(raw in clean for raw in out)
    assert len(set(out)) == len(out)
    # Every intact frame is published, except one whose predecessor's damage took its start
    # (a lost ETX or BCC, a cut: the framer cannot tell where that frame ended).
    lost = [i for i, s in enumerate(sent) if not s.damage and s.clean not in out]
    assert all(sent[i - 1].damage for i in lost)
    assert sum(p.rejected.values()) >= sum(1 for s in sent if s.damage) - len(lost)


@pytest.mark.parametrize("seed", range(200))
def test_damaged_checksumless_telegrams_are_never_published_beyond_the_documented_class(
    seed: int,
) -> None:
    """Single damage (never two damaged telegrams in a row): what gets through is only a
    1.8.0 between its intact neighbours (check.py's table)."""
    rng = random.Random(seed)
    meter = SimulatedEasyMeter(rng, gateway=seed % 2 == 0)
    sent = list(damaged_stream(meter, rng, 300, 0.25, isolated=True))
    _, out, origin = _run(sent, 2.0)
    clean = {s.clean for s in sent}
    escaped = [raw for raw in out if raw not in clean]
    assert all(_undetectable_energy(sent, origin[raw], raw) for raw in escaped)
    assert len(set(out)) == len(out)


def test_two_damaged_telegrams_in_a_row_measured(figure: Figure) -> None:
    """Outside the single-damage model: neighbouring telegrams both damaged. Whatever gets
    through is still only a 1.8.0 value (the phase sum, the identity and the layout hold);
    how often one lies outside its intact neighbours is measured and recorded."""
    damaged = escaped = outside = 0
    for seed in range(200):
        rng = random.Random(seed)
        sent = list(damaged_stream(SimulatedEasyMeter(rng), rng, 300, 0.25))
        _, out, origin = _run(sent, 2.0)
        clean = {s.clean for s in sent}
        damaged += sum(1 for s in sent if s.damage)
        for raw in out:
            if raw in clean:
                continue
            escaped += 1
            i = origin[raw]
            assert _ENERGY.sub(b"", raw) == _ENERGY.sub(b"", sent[i].clean)
            if not _undetectable_energy(sent, i, raw):
                outside += 1
                assert sent[i - 1].damage or sent[i + 1].damage
    assert outside <= escaped < damaged / 100
    measured = (
        f"{escaped} of {damaged} damaged telegrams published with a changed 1.8.0 "
        f"({outside} outside their intact neighbours, each next to a second damaged one)"
    )
    print(f"\nD0 checksum-less, 25 % damaged, adjacent damage allowed: {measured}")
    figure(
        fault="D0 checksum-less push (EasyMeter-like): random damage incl. neighbours",
        injected="200 streams x 300 telegrams, 25 % damaged (any kind), adjacent allowed",
        measured=measured,
        bound="only 1.8.0; between intact neighbours unless two neighbours are damaged",
        ok=True,
    )


@pytest.mark.parametrize("kind", ["bit_flip", "lost_byte", "truncate", "repeat_line"])
@pytest.mark.parametrize("seed", range(30))
def test_no_clean_telegram_lost_between_two_damaged_ones(kind: str, seed: int) -> None:
    """Damage the grammar or the framing catch: a clean telegram between two such is
    published once the next clean one confirms it, over a stream of them."""
    rng = random.Random(seed)
    sent = list(damaged_stream(SimulatedEasyMeter(rng), rng, 200, 0.35, kinds=(kind,)))
    _, out, _ = _run(sent, 2.0)
    assert all(raw in {s.clean for s in sent} for raw in out)
    for i in range(1, len(sent) - 2):
        if not sent[i].damage and (not sent[i + 1].damage or not sent[i + 2].damage):
            # a truncated telegram directly before may swallow the next one's start
            if kind in ("truncate", "lost_byte") and sent[i - 1].damage:
                continue
            assert sent[i].clean in out, i


def test_clean_between_two_damaged_ones_deterministic() -> None:
    rng = random.Random(3)
    meter = SimulatedEasyMeter(rng)
    texts = [meter.next_telegram() for _ in range(6)]
    wires = [encode_7e1(t) for t in texts]
    flip = bytearray(wires[2])
    flip[60] ^= 0x01  # a parity error
    wires[2] = bytes(flip)
    wires[4] = wires[4][:100]  # cut: the next '/' ends it
    p = D0Pipeline()
    out = published([r for i, w in enumerate(wires) for r in p.feed(w, 2.0 * i)])
    assert out == [texts[0], texts[1], texts[3]]  # texts[3] confirmed by texts[5]


def test_a_changed_digit_with_a_stale_bcc_is_always_rejected() -> None:
    """Every digit of a frame after STX, changed to every other digit, parity intact."""
    rng = random.Random(4)
    meter = SimulatedZpa(rng)
    frame = meter.next_telegram()
    start = frame.index(STX) + 1
    digits = [i for i in range(start, len(frame) - 1) if chr(frame[i]).isdigit()]
    assert len(digits) > 100
    for i in digits:
        for d in b"0123456789":
            if d == frame[i]:
                continue
            bad = frame[:i] + bytes([d]) + frame[i + 1 :]
            p = D0Pipeline()
            p.feed(encode_7e1(frame), 0.0)
            r = p.feed(encode_7e1(bad), 1.0)
            assert [(x.verdict.outcome, x.verdict.reason) for x in r] == [
                (Outcome.REJECTED, Reason.BCC)
            ]


def test_bcc_misses_two_bytes_changed_by_the_same_pattern_and_the_checks_see_some() -> None:
    """The BCC's blind spot, shown: two digits changed by the same XOR pattern. Measured:
    the share of random pairs of changed digits in one frame that the BCC lets through."""
    rng = random.Random(5)
    meter = SimulatedZpa(rng)
    frame = meter.next_telegram()
    body = frame[frame.index(STX) + 1 : -1]
    digits = [i for i, c in enumerate(body) if chr(c).isdigit()]
    passed = 0
    trials = 20_000
    for _ in range(trials):
        b = bytearray(body)
        for i in rng.sample(digits, 2):
            b[i] = rng.choice([d for d in b"0123456789" if d != b[i]])
        passed += bcc(bytes(b)) == frame[-1]
    share = passed / trials
    assert 0.05 < share < 0.2  # two independent errors in one frame: outside the model


# -- the checks, rule by rule --------------------------------------------------------------


def _esy(rng_seed: int = 1, **kw) -> SimulatedEasyMeter:
    return SimulatedEasyMeter(random.Random(rng_seed), **kw)


def _feed(p: D0Pipeline, texts: list[bytes], t0: float = 0.0, period: float = 2.0):
    return [r for i, t in enumerate(texts) for r in p.feed(encode_7e1(t), t0 + i * period)]


def test_the_easymeter_phase_sum_rejects_one_changed_power_digit() -> None:
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(3)]
    bad = texts[1].replace(b"21.7.0*255(000", b"21.7.0*255(001")
    p = D0Pipeline()
    results = _feed(p, [texts[0], bad, texts[2]])
    assert results[1].verdict.reason == Reason.POWER_SUM
    assert published(results) == [texts[0]]  # texts[2] confirms texts[0]


def test_a_status_change_waits_for_its_successor() -> None:
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(2)]
    odd = meter.next_telegram().replace(b"(80)", b"(81)")  # once: damage
    texts += [odd] + [meter.next_telegram() for _ in range(2)]
    meter.status = "81"  # for good: the meter's own change
    texts += [meter.next_telegram() for _ in range(3)]
    out = published(_feed(D0Pipeline(), texts))
    assert odd not in out
    assert out == [texts[0], texts[1], texts[3], texts[5], texts[6]]  # texts[4]: see below
    # texts[4] (status 80) is followed by the first 81: unconfirmed, lost; texts[5] (81) is
    # confirmed by texts[6].


def test_two_damaged_status_words_in_a_row_do_not_make_it_a_clock() -> None:
    """Volatility counts differences from the reference, so damage in two neighbouring
    telegrams (80 -> 81, 82, then 80 again) does not stop the status being compared: a
    later damaged status is still held back."""
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(3)]
    texts.append(meter.next_telegram().replace(b"(80)", b"(81)"))
    texts.append(meter.next_telegram().replace(b"(80)", b"(82)"))
    texts += [meter.next_telegram() for _ in range(3)]
    odd = meter.next_telegram().replace(b"(80)", b"(83)")
    texts += [odd] + [meter.next_telegram() for _ in range(2)]
    p = D0Pipeline()
    out = published(_feed(p, texts))
    assert p.checker.volatile == set()
    assert all(b"(80)" in t for t in out) and odd not in out


def test_energy_that_falls_or_outruns_69_kw_is_rejected() -> None:
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(4)]
    p = D0Pipeline()
    _feed(p, texts[:2])
    fell = easymeter_successor(texts[1], -1000)
    r = p.feed(encode_7e1(fell), 4.0)
    assert r[0].verdict.reason == Reason.ENERGY_FELL
    # 100 Wh in the 4 s since the reference (texts[0]) is 90 kW: more than any connection.
    digits = _energy(texts[1]) + 1_000_000
    jump = _ENERGY.sub(
        lambda m: m[1] + f"{digits // 10**7:08d}.{digits % 10**7:07d}".encode() + m[4], texts[1]
    )
    r = p.feed(encode_7e1(jump), 4.0)
    assert r[0].verdict.reason == Reason.ENERGY_RATE
    # The same growth over 26 s is 14 kW: plausible (held for its successor).
    assert p.feed(encode_7e1(jump), 26.0)[0].verdict.outcome is Outcome.HELD


def test_bcc_frames_arriving_together_are_held_to_their_wire_time() -> None:
    """A reader that fell behind gets frames in one read: the time between them is at least
    one frame's time on the line (len x 10 bits / 9600 Bd), not zero."""
    meter = SimulatedZpa(random.Random(2), mean_w=2000)
    a, b = meter.next_telegram(), meter.next_telegram()
    p = D0Pipeline()
    assert published(p.feed(encode_7e1(a + b), 0.0)) == [a, b]
    # 1.8.0 + 1 Wh more than 69 kW allows in one frame's wire time: rejected.
    wire_s = len(b) * 10 / 9600
    grow = int(69_000 * wire_s / 3600) + 3  # Wh
    c = _bump_zpa_energy(b, grow)
    r = p.feed(encode_7e1(c), 0.0)
    assert [x.verdict.reason for x in r] == [Reason.ENERGY_RATE]
    # 2 Wh in one wire time is within 69 kW (one digit of slack): accepted, though it
    # arrived in the same read (zero seconds of arrival time).
    assert int(69_000 * wire_s / 3600) >= 2
    d = _bump_zpa_energy(b, 2)
    r = p.feed(encode_7e1(d), 0.0)
    assert [(x.verdict.outcome, published([x])) for x in r] == [(Outcome.ACCEPTED, [d])]


def _bump_zpa_energy(frame: bytes, wh: int) -> bytes:
    m = re.search(rb"1-0:1\.8\.0\*255\((\d{6})\.(\d{3})", frame)
    assert m is not None
    value = int(m[1] + m[2]) + wh
    text = (
        frame[: m.start(1)] + f"{value // 1000:06d}.{value % 1000:03d}".encode() + frame[m.end(2) :]
    )
    body = text[text.index(STX) + 1 : -1]
    return text[:-1] + bytes([bcc(body)])


def test_bcc_frames_without_a_phase_sum_are_published() -> None:
    meter = SimulatedZpa(random.Random(3))
    frames = [meter.next_telegram() for _ in range(5)]
    p = D0Pipeline()
    results = _feed(p, frames, period=1.0)
    assert published(results) == frames
    # The first waits for the second (its ident is outside the BCC), then one by one.
    assert [r.verdict.outcome for r in results] == [Outcome.HELD] + [Outcome.ACCEPTED] * 4
    assert [len(r.verdict.publish) for r in results] == [0, 2, 1, 1, 1]
    t = results[1].verdict.publish[0]
    assert t.power["16.7.0"] != t.power["36.7.0"] + t.power["56.7.0"] + t.power["76.7.0"]


def test_a_new_meter_id_is_adopted_after_a_run() -> None:
    old, new = SimulatedZpa(random.Random(4)), SimulatedZpa(random.Random(5), meter_id="99000003")
    p = D0Pipeline()
    _feed(p, [old.next_telegram() for _ in range(3)], period=1.0)
    results = _feed(p, [new.next_telegram() for _ in range(ADOPT_AFTER)], t0=3.0, period=1.0)
    assert [r.verdict.reason for r in results[:-1]] == [Reason.IDENTITY] * (ADOPT_AFTER - 1)
    assert results[-1].verdict.outcome is Outcome.ACCEPTED
    assert "new meter id '99000003'" in results[-1].verdict.adopted


def test_a_clock_line_stops_being_compared_and_the_meter_is_published() -> None:
    """A checksum-less meter whose telegrams carry a time (0.9.1): every successor differs,
    so at first nothing is confirmed; after VOLATILE_AFTER the clock is not compared."""
    meter = _esy()
    texts = []
    for i in range(10):
        t = meter.next_telegram()
        texts.append(t.replace(b"!\r\n", f"0-0:0.9.1*255({120000 + 2 * i:06d})\r\n!\r\n".encode()))
    p = D0Pipeline()
    results = _feed(p, texts)
    out = published(results)
    assert out == texts[VOLATILE_AFTER - 1 : -1]
    assert any("0.9.1" in r.verdict.adopted for r in results)
    assert p.checker.volatile == {"0.9.1"}


def test_a_meter_whose_phases_never_sum_is_published_after_a_run() -> None:
    """An exporting meter that signs its phases otherwise than the captures show: the sum
    fails every time; after OVERRULE_AFTER failures it is dropped for that layout."""
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(2)]
    for _ in range(OVERRULE_AFTER + 3):
        t = meter.next_telegram()
        m = re.search(rb"1\.7\.0\*255\((\d{6}\.\d{2})", t)
        assert m is not None
        texts.append(t.replace(m[0], b"1.7.0*255(-" + m[1]))  # same width: same layout
    p = D0Pipeline()
    results = _feed(p, texts)
    reasons = [r.verdict.reason for r in results]
    assert reasons[2 : 2 + OVERRULE_AFTER] == [Reason.POWER_SUM] * OVERRULE_AFTER
    assert published(results)[-1] == texts[-2]


def test_resync_drops_held_telegrams_and_keeps_the_reference() -> None:
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(4)]
    p = D0Pipeline()
    _feed(p, texts[:2])
    p.feed(encode_7e1(texts[2])[:50], 4.0)
    assert p.framer.pending == 50
    p.resync()
    assert p.framer.pending == 0 and p.checker.reference is not None
    assert p.checker.reference.raw == texts[0]
    assert p.rejected[Reason.UNCONFIRMED] == 1  # texts[1], held, lost its successor
    assert published(p.feed(encode_7e1(texts[3]), 8.0)) == []  # held again


def test_candidates_are_bounded() -> None:
    """Telegrams that each contradict the one before (1.8.0 a little lower every time) but
    not the reference: none confirms another, and at most MAX_CANDIDATES wait."""
    meter = _esy()
    texts = [meter.next_telegram() for _ in range(2)]
    p = D0Pipeline()
    _feed(p, texts)
    base = _energy(texts[1]) + 200_000
    for i in range(20):
        digits = base - 1000 * i
        t = _ENERGY.sub(
            lambda m, d=digits: m[1] + f"{d // 10**7:08d}.{d % 10**7:07d}".encode() + m[4],
            texts[1],
        )
        r = p.feed(encode_7e1(t), 4.0 + 2 * i)
        assert r[0].verdict.outcome is Outcome.HELD
        assert published(r) == ([texts[1]] if i == 0 else [])  # the first confirms texts[1]
        assert len(p.checker._candidates) == min(i + 1, MAX_CANDIDATES)
    assert p.rejected[Reason.UNCONFIRMED] == 20 - MAX_CANDIDATES


def test_values_and_volts_as_the_outlets_see_them() -> None:
    meter = SimulatedZpa(random.Random(6))
    frame = meter.next_telegram()
    t = D0Pipeline().feed(encode_7e1(frame + meter.next_telegram()), 0.0)[1].verdict.publish[0]
    assert t.protocol == "d0" and t.raw == frame and t.meter_id == "99000002" and t.bcc
    assert set(t.volts) == {"32.7.0", "52.7.0", "72.7.0"}
    assert all(2280 <= v <= 2340 for v in t.volts.values())
    assert t.energy["1.8.0"] == Decimal(t.values["1.8.0"])


def test_checker_alone_rejects_an_unchecked_range() -> None:
    meter = SimulatedZpa(random.Random(7))
    frame = meter.next_telegram().replace(b"(229", b"(129").replace(b"(230", b"(130")
    body = frame[frame.index(STX) + 1 : -1]
    frame = frame[:-1] + bytes([bcc(body)])
    if b"(1" not in frame.split(b"32.7.0*255")[1][:3]:
        frame = re.sub(rb"32\.7\.0\*255\(\d{3}", b"32.7.0*255(129", frame)
        body = frame[frame.index(STX) + 1 : -1]
        frame = frame[:-1] + bytes([bcc(body)])
    r = D0Pipeline(checker=D0Checker()).feed(encode_7e1(frame), 0.0)
    assert [x.verdict.reason for x in r] == [Reason.RANGE]


def test_etx_inside_is_no_frame_end_the_grammar_misses() -> None:
    """A byte damaged into ETX ends the frame early; the next byte is taken for the BCC.
    If that matches by chance (1 in 128), the structure check still refuses the frame."""
    meter = SimulatedZpa(random.Random(8))
    frame = meter.next_telegram()
    cut = frame[:80] + bytes([ETX])
    forged = cut + bytes([bcc(cut[cut.index(STX) + 1 :])])
    r = D0Pipeline().feed(encode_7e1(forged), 0.0)
    assert [x.verdict.reason for x in r] == [Reason.STRUCTURE]


def test_reads_of_any_size_give_the_same_results() -> None:
    rng = random.Random(9)
    sent = list(damaged_stream(SimulatedEasyMeter(rng, gateway=True), rng, 100, 0.3))
    wire = b"".join(s.wire for s in sent)
    whole = published(D0Pipeline().feed(wire, 0.0))
    p = D0Pipeline()
    assert published([r for c in chunks(wire, rng) for r in p.feed(c, 0.0)]) == whole
    assert change_digit  # the damage functions are exercised by damaged_stream


# -- runs that replace the reference: only what a neighbour confirmed is published ----------


def _new_firmware(text: bytes) -> bytes:
    """The same meter after a firmware update: another ident, so another layout."""
    return text.replace(b"/ESY5Q3DA1004 V3.04", b"/ESY5Q3DA1004 V3.05")


def _raise_energy(text: bytes, digits: int) -> bytes:
    value = _energy(text) + digits
    new = f"{value // 10**7:08d}.{value % 10**7:07d}".encode()
    return _ENERGY.sub(lambda m: m[1] + new + m[4], text)


@pytest.mark.parametrize("damage", ["status", "energy"])
def test_the_telegram_completing_a_new_layout_run_waits_for_its_successor(damage: str) -> None:
    """The reviewer's case: an EasyMeter reference, then a new ident; the telegram that
    completes the run of ADOPT_AFTER has a damaged status word, or a 1.8.0 raised by 3 Wh
    (both undetectable on their own). It must not reach Tibber, and clean telegrams after it
    must not be rejected against it ("energy counter fell")."""
    meter = _esy(3)
    texts = [meter.next_telegram() for _ in range(4)]
    texts += [_new_firmware(meter.next_telegram()) for _ in range(ADOPT_AFTER + 8)]
    at = 4 + ADOPT_AFTER - 1
    if damage == "status":
        bad = texts[at].replace(b"96.5.5*255(80)", b"96.5.5*255(00)")
    else:
        bad = _raise_energy(texts[at], 30_000)  # 3 Wh, 1e-7 kWh digits
    assert bad != texts[at]
    p = D0Pipeline()
    results = _feed(p, [*texts[:at], bad, *texts[at + 1 :]])
    out = published(results)
    assert bad not in out and set(out) <= set(texts)
    assert p.rejected[Reason.ENERGY_FELL] == 0
    assert out[-6:] == texts[-7:-1]  # the new layout flows, each confirmed by its successor
    adopted = [r.verdict.adopted for r in results if r.verdict.adopted]
    assert len(adopted) == 2 and "new telegram layout /ESY5Q3DA1004 V3.05" in adopted[1]


def test_a_new_layout_run_publishes_the_confirmed_telegram_and_holds_the_last() -> None:
    """When the run completes, its newest telegram is held for its successor like any
    checksum-less telegram; the one before it, which the newest confirmed, is published and
    becomes the reference."""
    meter = _esy(3)
    texts = [meter.next_telegram() for _ in range(3)]
    texts += [_new_firmware(meter.next_telegram()) for _ in range(ADOPT_AFTER + 1)]
    p = D0Pipeline()
    results = _feed(p, texts[:-1])
    done = results[-1]
    assert done.verdict.outcome is Outcome.HELD and "new telegram layout" in done.verdict.adopted
    assert published([done]) == [texts[-3]]
    assert p.checker.reference is not None and p.checker.reference.raw == texts[-3]
    assert published(p.feed(encode_7e1(texts[-1]), 99.0)) == [texts[-2]]


def test_the_telegram_completing_an_overruling_run_waits_for_its_successor() -> None:
    """A meter replaced by one with the same id and layout but a lower register: every
    telegram contradicts the reference (energy fell) until a run of OVERRULE_AFTER replaces
    it. The telegram completing that run has a damaged status word: not published."""
    old, new = _esy(3), _esy(4, kwh=1000.0)
    texts = [old.next_telegram() for _ in range(3)]
    run = [new.next_telegram() for _ in range(2 * OVERRULE_AFTER + 7)]
    at = OVERRULE_AFTER - 1
    bad = run[at].replace(b"96.5.5*255(80)", b"96.5.5*255(00)")
    p = D0Pipeline()
    results = _feed(p, [*texts, *run[:at], bad, *run[at + 1 :]])
    out = published(results)
    assert bad not in out and set(out) <= set(texts + run)
    # The damaged telegram breaks the run; a new run of OVERRULE_AFTER from the one after it
    # replaces the reference: its last but one is published, then each as confirmed.
    assert out == texts[:2] + run[at + OVERRULE_AFTER - 1 : -1]
    assert any("overruled" in r.verdict.adopted for r in results)


def test_a_new_layout_with_a_clock_is_adopted() -> None:
    """A run is counted with the full confirmation, so a clock line (0.9.1) in the new
    layout would break every run: where no reference has the layout, a value that differs
    from its predecessor VOLATILE_AFTER times in a row stops being compared, as at the
    start, and stays so once the layout is adopted."""
    meter = _esy(3)
    texts = [meter.next_telegram() for _ in range(3)]
    for i in range(12):
        t = _new_firmware(meter.next_telegram())
        texts.append(t.replace(b"!\r\n", f"0-0:0.9.1*255({120000 + 2 * i:06d})\r\n!\r\n".encode()))
    p = D0Pipeline()
    results = _feed(p, texts)
    out = published(results)
    # New telegrams n0, n1...: 0.9.1 is learnt volatile at n3 (VOLATILE_AFTER differences),
    # so n3 confirms n2, the run starts at n2, and its last but one is the first published.
    first = 3 + (VOLATILE_AFTER - 1) + (ADOPT_AFTER - 2)
    assert out == texts[:2] + texts[first:-1]
    assert p.checker.volatile == {"0.9.1"}
    assert sum("0.9.1" in r.verdict.adopted for r in results) == 1


class _Updating:
    """An EasyMeter-like meter whose firmware changes (another ident) every `every`
    telegrams, back and forth: many adoptions of a new layout in one stream."""

    def __init__(self, meter: SimulatedEasyMeter, every: int) -> None:
        self._meter, self._every, self._sent = meter, every, 0

    def next_telegram(self) -> bytes:
        text = self._meter.next_telegram()
        self._sent += 1
        return _new_firmware(text) if self._sent // self._every % 2 else text

    def wire(self, text: bytes) -> bytes:
        return self._meter.wire(text)


@pytest.mark.parametrize("seed", range(100))
def test_damage_around_new_layouts_is_never_published_beyond_the_documented_class(
    seed: int,
) -> None:
    """Single damage (never two in a row), digits and characters changed with their parity
    intact, while the meter's layout changes every 8 telegrams: adopting a new layout lets
    through no more than any other telegram does (check.py's table)."""
    rng = random.Random(seed)
    meter = _Updating(SimulatedEasyMeter(rng), every=8)
    sent = list(damaged_stream(meter, rng, 120, 0.3, ("digit", "char"), isolated=True))  # type: ignore[arg-type]
    _, out, origin = _run(sent, 2.0)
    clean = {s.clean for s in sent}
    escaped = [raw for raw in out if raw not in clean]
    assert all(_undetectable_energy(sent, origin[raw], raw) for raw in escaped)
    # The new layout is adopted again and again: 16 to 36 of its ~56 telegrams published
    # per stream (seeds 0-99; a run ends when the layout changes back).
    assert sum(b"V3.05" in raw for raw in out) >= 10


# -- a phase sum that fails from the start ----------------------------------------------------


def _export_on_phase_2(text: bytes) -> bytes:
    """Phase 2 signed negative, the total as before: the sum fails on every telegram."""
    return re.sub(rb"41\.7\.0\*255\((\d)", rb"41.7.0*255(-\1", text, count=1)


def test_a_meter_whose_phases_never_sum_from_the_start_gets_a_reference() -> None:
    """The reviewer's case: no reference yet, and the sum fails on every telegram. After
    OVERRULE_AFTER failures in a row the sum is dropped for that layout (said once) and the
    meter is read like any other."""
    meter = _esy(3)
    texts = [_export_on_phase_2(meter.next_telegram()) for _ in range(OVERRULE_AFTER + 5)]
    p = D0Pipeline()
    results = _feed(p, texts)
    reasons = [r.verdict.reason for r in results]
    assert reasons[:OVERRULE_AFTER] == [Reason.POWER_SUM] * OVERRULE_AFTER
    assert published(results) == texts[OVERRULE_AFTER:-1]
    said = [r.verdict.adopted for r in results if "phase sum" in r.verdict.adopted]
    assert len(said) == 1 and "1.7.0 = 21.7.0 + 41.7.0 + 61.7.0" in said[0]


def test_a_new_layout_whose_phases_never_sum_is_adopted_after_the_sum_is_dropped() -> None:
    """A reference in the old layout, then a new firmware whose phases never sum: the
    failures count though no reference has the new layout, so it is not stuck."""
    meter = _esy(3)
    texts = [meter.next_telegram() for _ in range(3)]
    n = OVERRULE_AFTER + ADOPT_AFTER + 4
    texts += [_export_on_phase_2(_new_firmware(meter.next_telegram())) for _ in range(n)]
    results = _feed(D0Pipeline(), texts)
    reasons = [r.verdict.reason for r in results[3:]]
    assert reasons[:OVERRULE_AFTER] == [Reason.POWER_SUM] * OVERRULE_AFTER
    assert published(results)[-1] == texts[-2]


def test_damage_in_a_few_telegrams_does_not_drop_the_phase_sum() -> None:
    """A sum broken by damage now and then, clean telegrams between: never OVERRULE_AFTER in
    a row, so the sum stays checked (from the start, before any reference)."""
    meter = _esy(3)
    texts = []
    for i in range(4 * OVERRULE_AFTER):
        t = meter.next_telegram()
        texts.append(_export_on_phase_2(t) if i % 4 else t)
    p = D0Pipeline()
    _feed(p, texts)
    assert p.checker.sum_off == set()


# -- the ZPA GH305's frame shape (tibber-bridge.md §4.2) ---------------------------------------


def _gh305_frames(count: int) -> list[bytes]:
    """Frames in the shape of the bridge's GH305 capture: ident line, a blank line, STX, the
    data lines, ETX, BCC. The id and the lines after C.1.0 are invented (the capture elides
    them); 1.8.0 grows by 1 Wh per frame."""
    out = []
    for i in range(count):
        body = (
            f"1-0:C.1.0*255(1ZPA0099000004)\r\n1-0:1.8.0*255({4321 + i / 1000:010.4f}*kWh)\r\n"
            "1-0:16.7.0*255(000169*W)\r\n!\r\n\x03"
        ).encode()
        out.append(b"/ZPA5GH305.v2-21.00-G\r\n\r\n\x02" + body + bytes([bcc(body)]))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_the_zpa_gh305_shape_is_published_through_d0_and_auto(seed: int) -> None:
    """The reviewer's zpa.py: the GH305's blank line before STX was always refused (bad
    structure). Through the d0 pipeline and through protocol auto, in random reads: the
    first frame waits for the second, then each is published whole as it arrives."""
    frames = _gh305_frames(4)
    for p in (D0Pipeline(), AutoPipeline()):
        rng = random.Random(seed)
        reads = [(c, float(i)) for i, f in enumerate(frames) for c in chunks(encode_7e1(f), rng)]
        results = [r for c, now in reads for r in p.feed(c, now)]
        assert published(results) == frames
        assert [len(r.verdict.publish) for r in results] == [0, 2, 1, 1]
        assert sum(p.rejected.values()) == 0


def test_a_gh305_frame_that_lost_its_blank_line_is_not_published() -> None:
    """The blank line lies outside the BCC: a frame without it (a lost line) is another
    layout, rejected like any layout change, not published with a changed shape."""
    frames = _gh305_frames(4)
    lost = frames[2].replace(b"\r\n\r\n\x02", b"\r\n\x02")
    p = D0Pipeline()
    results = _feed(p, [frames[0], frames[1], lost, frames[3]], period=1.0)
    assert [r.verdict.reason for r in results] == [None, None, Reason.LAYOUT, None]
    assert published(results) == [frames[0], frames[1], frames[3]]


def test_the_simulated_zpa_sends_the_gh305_shape() -> None:
    frame = SimulatedZpa(random.Random(1)).next_telegram()
    assert frame.startswith(b"/ZPA5SIM305.v100\r\n\r\n\x02")
