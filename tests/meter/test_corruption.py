"""The core promise at scale: damaged telegrams never reach Tibber, clean ones do.

Simulated eBZ meters (BZ import-only with voltages, 2R two-direction with export) push
telegrams through the whole in-process pipeline (parity, framing, parsing, validation) with
a share of them damaged on the optical link. Every published telegram is compared with the
clean telegram of the same meter second.

One class of damage is beyond the physics: an energy register off by one or two units of
its last digit (10-20 uWh) still agrees with the reported power, because the meter's own
display truncation moves that digit by one (agent/meter/validation.py, module docstring).
It is counted separately and bounded; nothing else may ever escape.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from agent.meter.parity import encode_7e1
from agent.meter.pipeline import Pipeline
from agent.meter.simulator import CORRUPTIONS, SimulatedEbz, corrupt, corrupted_stream
from agent.meter.telegram import ENERGY_CODES, Telegram, parse

MIXED_TELEGRAMS = 20_000
MIXED_RATE = 0.05
PER_KIND_TELEGRAMS = 10_000
PER_KIND_RATE = 0.10
MIN_CLEAN_PUBLISHED = 0.999  # issue 4: at >= 5 % damaged, mixed kinds
# One kind at twice that rate: a clean telegram between two damaged ones is 4x as likely,
# and a telegram cut short leaves no line to vouch for its neighbours.
MIN_CLEAN_PUBLISHED_PER_KIND = 0.995
# The undetectable class (a last digit changed by 1 or 2) is about 3 % of energy_digit
# corruptions (the last of 14 digits, up to 4 of 9 other values), and most of it passes;
# 8 % leaves room for the spread over ~150 corruptions. Anything outside the class must
# never pass (assert_nothing_escapes).
MAX_UNDETECTABLE_SHARE = 0.08
UNDETECTABLE_UNITS = 2
# (clean text, its 96.8.0, the bytes sent, corruption kind or None)
Sent = tuple[bytes, int, bytes, "str | None"]
TAIL = 3  # clean telegrams appended so the last ones are not left waiting for confirmation


def make_meter(kind: str, seed: int) -> SimulatedEbz:
    rng = random.Random(seed)
    if kind == "BZ":
        return SimulatedEbz(rng=rng, power_w=400.0)
    return SimulatedEbz(
        rng=rng,
        ident="EBZ5DD32R06ETA_107",
        export_kwh=1.206,
        voltages=False,
        power_w=400.0,
        pv_w=600.0,
    )


@dataclass
class Outcome:
    clean: int = 0  # clean telegrams sent
    clean_published: int = 0
    corruptions: Counter[str] = field(default_factory=Counter)
    undetectable: list[str] = field(default_factory=list)  # the tolerated class
    escapes: list[str] = field(default_factory=list)  # anything else published wrong
    order: list[int] = field(default_factory=list)  # 96.8.0 of every publication

    def report(self) -> str:
        return (
            f"clean {self.clean_published}/{self.clean}, corruptions {dict(self.corruptions)}, "
            f"undetectable {len(self.undetectable)}, escapes {len(self.escapes)}"
        )


def _diff(pub: Telegram, clean_raw: bytes) -> str | None:
    """None if pub is the clean telegram or differs only within the undetectable class;
    else a description. Raises _Undetectable for the tolerated class."""
    if pub.raw == clean_raw:
        return None
    clean = parse(clean_raw)
    changed = sorted(
        k
        for k in clean.values.keys() | pub.values.keys()
        if clean.values.get(k) != pub.values.get(k)
    )
    desc = f"96.8.0={clean.values.get('96.8.0')}: " + ", ".join(
        f"{k} {clean.values.get(k)} -> {pub.values.get(k)}" for k in changed
    )
    restored = pub.raw
    for code in changed:
        if code not in ENERGY_CODES or code not in pub.energy or code not in clean.energy:
            return desc
        if pub.energy[code].decimals != clean.energy[code].decimals:
            return desc
        if abs(pub.energy[code].units - clean.energy[code].units) > UNDETECTABLE_UNITS:
            return desc
        restored = restored.replace(
            f"({pub.values[code]}*kWh)".encode(), f"({clean.values[code]}*kWh)".encode()
        )
    if restored != clean_raw or pub.layout != clean.layout:
        return desc
    raise _Undetectable(desc)


class _Undetectable(Exception):
    pass


def _account(outcome: Outcome, truth: dict[int, tuple[bytes, str | None]], pub: Telegram) -> None:
    seconds = pub.seconds if pub.seconds is not None else -1
    outcome.order.append(seconds)
    if seconds not in truth:
        outcome.escapes.append(f"unknown second {pub.values.get('96.8.0')}: {pub.raw[:60]!r}")
        return
    clean_raw, kind = truth[seconds]
    try:
        desc = _diff(pub, clean_raw)
    except _Undetectable as e:
        outcome.undetectable.append(f"{kind}: {e}")
        return
    if desc is None:
        outcome.clean_published += kind is None
    else:
        outcome.escapes.append(f"{kind}: {desc}")


def _drive(stream: Iterator[Sent], tail: Callable[[], list[bytes]]) -> Outcome:
    """Every publication of every result is checked against the clean telegram of its second."""
    outcome = Outcome()
    truth: dict[int, tuple[bytes, str | None]] = {}
    pipeline = Pipeline()
    for text, seconds, wire, kind in stream:
        truth[seconds] = (text, kind)
        if kind is None:
            outcome.clean += 1
        else:
            outcome.corruptions[kind] += 1
        for result in pipeline.feed(wire):
            for pub in result.verdict.publish:
                _account(outcome, truth, pub)
    for text in tail():  # not counted: they only confirm what came before
        truth[parse(text).seconds or -1] = (text, "tail")
        for result in pipeline.feed(encode_7e1(text)):
            for pub in result.verdict.publish:
                _account(outcome, truth, pub)
    return outcome


@functools.cache
def mixed_run(meter_kind: str, seed: int) -> Outcome:
    meter = make_meter(meter_kind, seed)
    rng = random.Random(seed * 7919 + 1)

    def stream() -> Iterator[Sent]:
        for text, wire, kind in corrupted_stream(meter, MIXED_TELEGRAMS, MIXED_RATE, rng):
            yield text, meter.seconds, wire, kind

    return _drive(stream(), lambda: [meter.next_telegram() for _ in range(TAIL)])


@functools.cache
def clean_stream(meter_kind: str) -> tuple[tuple[bytes, int, bytes], ...]:
    meter = make_meter(meter_kind, 31)
    out = []
    for _ in range(PER_KIND_TELEGRAMS + TAIL):
        text = meter.next_telegram()
        out.append((text, meter.seconds, encode_7e1(text)))
    return tuple(out)


@functools.cache
def per_kind_run(meter_kind: str, kind: str) -> Outcome:
    clean = clean_stream(meter_kind)
    body, tail = clean[:PER_KIND_TELEGRAMS], clean[PER_KIND_TELEGRAMS:]
    rng = random.Random(f"{meter_kind}-{kind}")
    hit = set(rng.sample(range(len(body)), round(PER_KIND_RATE * len(body))))

    def stream() -> Iterator[Sent]:
        for i, (text, seconds, wire) in enumerate(body):
            if i in hit:
                yield text, seconds, corrupt(wire, kind, rng), kind
            else:
                yield text, seconds, wire, None

    return _drive(stream(), lambda: [text for text, _, _ in tail])


MIXED = [(m, s) for s in (1, 2) for m in ("BZ", "2R")]
PER_KIND = list(itertools.product(("BZ", "2R"), CORRUPTIONS))


def _ids(params: list[tuple[str, object]]) -> list[str]:
    return [f"{a}-{b}" for a, b in params]


def assert_clean_published(outcome: Outcome, bound: float = MIN_CLEAN_PUBLISHED) -> None:
    assert outcome.clean > 0
    share = outcome.clean_published / outcome.clean
    assert share >= bound, f"{share:.4%} of clean telegrams published; {outcome.report()}"


def assert_nothing_escapes(outcome: Outcome) -> None:
    assert outcome.escapes == [], f"{len(outcome.escapes)} damaged published: {outcome.escapes[:8]}"


def assert_undetectable_bounded(outcome: Outcome) -> None:
    bound = MAX_UNDETECTABLE_SHARE * outcome.corruptions["energy_digit"]
    assert len(outcome.undetectable) <= bound, (
        f"{len(outcome.undetectable)} energy registers published within "
        f"{UNDETECTABLE_UNITS} units of the truth, bound {bound:.2f} "
        f"({MAX_UNDETECTABLE_SHARE:.1%} of {outcome.corruptions['energy_digit']} energy_digit "
        f"corruptions): {outcome.undetectable[:6]}"
    )


def assert_ordered(outcome: Outcome) -> None:
    pairs = list(itertools.pairwise(outcome.order))
    bad = [(hex(a), hex(b)) for a, b in pairs if b <= a]
    assert bad == [], f"96.8.0 not strictly increasing: {bad[:8]}"


# --- mixed damage, 5 %, BZ and 2R, two seeds -----------------------------------------------------


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_clean_telegrams_are_published(meter_kind: str, seed: int) -> None:
    outcome = mixed_run(meter_kind, seed)
    assert set(outcome.corruptions) == set(CORRUPTIONS)
    assert sum(outcome.corruptions.values()) == round(MIXED_RATE * MIXED_TELEGRAMS)
    assert_clean_published(outcome)


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_nothing_damaged_escapes(meter_kind: str, seed: int) -> None:
    assert_nothing_escapes(mixed_run(meter_kind, seed))


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_undetectable_energy_digits_are_bounded(meter_kind: str, seed: int) -> None:
    assert_undetectable_bounded(mixed_run(meter_kind, seed))


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_publications_are_in_order_without_duplicates(meter_kind: str, seed: int) -> None:
    outcome = mixed_run(meter_kind, seed)
    assert len(outcome.order) >= outcome.clean_published > 0
    assert_ordered(outcome)


# --- one kind at a time, 10 % --------------------------------------------------------------------


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_clean_telegrams_are_published(meter_kind: str, kind: str) -> None:
    outcome = per_kind_run(meter_kind, kind)
    assert outcome.corruptions == {kind: round(PER_KIND_RATE * PER_KIND_TELEGRAMS)}
    assert_clean_published(outcome, MIN_CLEAN_PUBLISHED_PER_KIND)


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_nothing_damaged_escapes(meter_kind: str, kind: str) -> None:
    assert_nothing_escapes(per_kind_run(meter_kind, kind))


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_undetectable_energy_digits_are_bounded(meter_kind: str, kind: str) -> None:
    assert_undetectable_bounded(per_kind_run(meter_kind, kind))


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_publications_are_in_order_without_duplicates(meter_kind: str, kind: str) -> None:
    assert_ordered(per_kind_run(meter_kind, kind))
