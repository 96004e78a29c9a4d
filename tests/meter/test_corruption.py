"""The core promise at scale: damaged telegrams never reach Tibber, clean ones do.

Simulated eBZ meters (BZ import-only with voltages; 2R two-direction with export; DTA
two-direction with tariff registers, voltages and a property number in 0.0.0) push
telegrams through the whole in-process pipeline (parity, framing, parsing, validation) with
a share of them damaged on the optical link, every kind of damage on every line (the
simulator's CORRUPTIONS). Every published telegram is compared with the clean telegram of
the same meter second, and the outcome is tallied per line hit: injected, rejected,
published within the documented undetectable class, escaped.

The undetectable class (agent/meter/validation.py, module docstring; simulator.undetectable)
is counted separately and bounded; nothing else may ever escape, on any line.

One thing is outside the model: the same damage (the same byte changed the same way) in
two consecutive telegrams. Two independent link errors do not do that; the stream never
repeats one, and the README says so.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pytest

from agent.meter.parity import encode_7e1
from agent.meter.pipeline import Pipeline
from agent.meter.simulator import (
    CORRUPTIONS,
    SimulatedEbz,
    applicable_corruptions,
    corrupt_line,
    undetectable,
)
from agent.meter.telegram import Telegram, parse
from agent.meter.validation import ADOPT_AFTER
from agent.meter.validation import Outcome as Fate

MIXED_TELEGRAMS = 20_000
MIXED_RATE = 0.05
PER_KIND_TELEGRAMS = 6_000
PER_KIND_RATE = 0.10
CLEAN_TELEGRAMS = 20_000
MIN_CLEAN_PUBLISHED = 0.999  # issue 4: at >= 5 % damaged, mixed kinds
# One kind at twice that rate: a clean telegram between two damaged ones is 4x as likely,
# and a telegram cut short leaves no line to vouch for its neighbours.
MIN_CLEAN_PUBLISHED_PER_KIND = 0.995
# Issue 7: a clean telegram whose predecessor was published waits for its successor only
# for an unusual step (status word, a voltage by >= 2 V, a tariff register's first step).
MAX_HELD_WITHOUT_CAUSE = 0.01
# The lines with an undetectable class, and the share of what hits them that may get
# through (published within the class) where the damage is a changed digit, the worst
# kind: total energy registers, a last digit moved by 1 or 2 (about 1 in 40 digit changes
# of the line); tariff registers, a last digit moved by 1 in the second before the
# register steps (rarer still); voltages, the tenths digit (always) or the ones digit
# moved by 1 (mostly): about 1 in 10 digit changes of the line. Other kinds get through
# less often. A run may exceed share x hits by 3 standard deviations of chance, no more.
MAX_UNDETECTABLE_SHARE = {
    "1.8.0": 0.03,
    "2.8.0": 0.03,
    "1.8.1": 0.01,
    "1.8.2": 0.01,
    "2.8.1": 0.01,
    "2.8.2": 0.01,
    "32.7.0": 0.12,
    "52.7.0": 0.12,
    "72.7.0": 0.12,
}
TAIL = 3  # clean telegrams appended so the last ones are not left waiting for confirmation
METERS = ("BZ", "2R", "DTA")
TARIFF_PERIOD = 1_800  # seconds between tariff switches of the DTA meter


def make_meter(kind: str, seed: int) -> SimulatedEbz:
    rng = random.Random(seed)
    if kind == "BZ":
        return SimulatedEbz(rng=rng, power_w=400.0)
    if kind == "2R":
        return SimulatedEbz(
            rng=rng,
            ident="EBZ5DD32R06ETA_107",
            export_kwh=1.206,
            voltages=False,
            power_w=400.0,
            pv_w=600.0,
        )
    # The philippoo66 capture's type and counters, tariffs on both directions, and a
    # property number in 0.0.0 (meters.md §4); import and export alternate with the sun.
    return SimulatedEbz(
        rng=rng,
        ident="EBZ5DD32R06DTA_107",
        energy_kwh=2.66313813,
        export_kwh=2.152,
        power_w=700.0,
        pv_w=900.0,
        tariffs=True,
        export_tariffs=True,
        property_number="123456",
    )


def telegrams(meter: SimulatedEbz, n: int) -> Iterator[bytes]:
    """n consecutive clean telegrams; the DTA meter switches tariff every TARIFF_PERIOD."""
    for i in range(n):
        if meter.has_tariffs and i and i % TARIFF_PERIOD == 0:
            meter.set_tariff(1 + (i // TARIFF_PERIOD) % 2)
        yield meter.next_telegram()


@dataclass
class Tally:
    injected: int = 0
    undetectable: int = 0
    escaped: int = 0

    @property
    def rejected(self) -> int:
        return self.injected - self.undetectable - self.escaped


@dataclass
class Run:
    clean: int = 0  # clean telegrams sent
    clean_published: int = 0
    held_without_cause: int = 0  # clean, its predecessor published, and still held
    corruptions: Counter[str] = field(default_factory=Counter)
    lines: defaultdict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    escapes: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # 96.8.0 of every publication

    def table(self) -> str:
        rows = [f"{'line':8} {'injected':>8} {'rejected':>8} {'undetect.':>9} {'escaped':>7}"]
        for line, t in sorted(self.lines.items()):
            rows.append(f"{line:8} {t.injected:8} {t.rejected:8} {t.undetectable:9} {t.escaped:7}")
        return "\n".join(rows)

    def report(self) -> str:
        return (
            f"clean {self.clean_published}/{self.clean}, held without cause "
            f"{self.held_without_cause}, corruptions {dict(self.corruptions)}\n{self.table()}"
            + (f"\nescapes: {self.escapes[:6]}" if self.escapes else "")
        )


# (clean text, its 96.8.0, the bytes sent, corruption kind or None, the line it hit)
Sent = tuple[bytes, int, bytes, "str | None", str]


def _account(run: Run, truth: dict[int, tuple[bytes, str | None, str]], pub: Telegram) -> None:
    second = pub.seconds if pub.seconds is not None else -1
    run.order.append(second)
    if second not in truth:
        run.lines["?"].escaped += 1
        run.escapes.append(f"unknown second {pub.values.get('96.8.0')}: {pub.raw[:60]!r}")
        return
    clean, kind, line = truth[second]
    if pub.raw == clean:
        run.clean_published += kind is None
        return
    neighbours = tuple(truth.get(s, (None,))[0] for s in (second - 1, second + 1))
    code = undetectable(pub.raw, clean, neighbours)
    if kind is not None and code == line:
        run.lines[line].undetectable += 1
        return
    run.lines[line if kind is not None else "?"].escaped += 1
    differs = [
        f"{k} {v} -> {pub.values.get(k)}"
        for k, v in parse(clean).values.items()
        if pub.values.get(k) != v
    ]
    run.escapes.append(f"{kind} on {line}, 96.8.0={second:08X}: {', '.join(differs)}")


def _drive(stream: Iterator[Sent], tail: list[bytes]) -> Run:
    """Every publication of every result is checked against the clean telegram of its second."""
    run = Run()
    truth: dict[int, tuple[bytes, str | None, str]] = {}
    pipeline = Pipeline()
    last_published = -1
    for text, seconds, wire, kind, line in stream:
        truth[seconds] = (text, kind, line)
        if kind is None:
            run.clean += 1
        else:
            run.corruptions[kind] += 1
            run.lines[line].injected += 1
        for result in pipeline.feed(wire):
            if (
                kind is None
                and result.raw == text
                and result.verdict.outcome is Fate.HELD
                and last_published == seconds - 1
            ):
                run.held_without_cause += 1
            for pub in result.verdict.publish:
                _account(run, truth, pub)
                last_published = pub.seconds if pub.seconds is not None else -1
    for text in tail:  # not counted: they only confirm what came before
        seconds = parse(text).seconds or -1
        truth[seconds] = (text, "tail", "tail")
        for result in pipeline.feed(encode_7e1(text)):
            for pub in result.verdict.publish:
                _account(run, truth, pub)
    return run


def _damaged(
    text: bytes, kind: str, rng: random.Random, previous: tuple[int, int] | None
) -> tuple[bytes, str, tuple[int, int] | None]:
    """`text` damaged by `kind`, never the same way as the telegram before (see module
    docstring). Returns the wire bytes, the line hit and the damage's signature."""
    wire = encode_7e1(text)
    while True:
        damaged, line = corrupt_line(wire, kind, rng)
        first = next(
            (i for i, (a, b) in enumerate(zip(wire, damaged, strict=False)) if a != b), len(damaged)
        )
        signature = (first, damaged[first]) if len(damaged) == len(wire) else None
        if signature is None or signature != previous:
            return damaged, line, signature


def _stream(
    texts: Iterator[bytes], seconds: Iterator[int], hit: set[int], rng: random.Random, kind: str
) -> Iterator[Sent]:
    previous = None
    for index, (text, second) in enumerate(zip(texts, seconds, strict=False)):
        if index not in hit:
            previous = None
            yield text, second, encode_7e1(text), None, ""
            continue
        chosen = kind or rng.choice(applicable_corruptions(text))
        wire, line, previous = _damaged(text, chosen, rng, previous)
        yield text, second, wire, chosen, line


@functools.cache
def clean_run(meter_kind: str) -> tuple[tuple[bytes, int], ...]:
    meter = make_meter(meter_kind, 31)
    out = []
    for text in telegrams(meter, CLEAN_TELEGRAMS + TAIL):
        out.append((text, meter.seconds))
    return tuple(out)


@functools.cache
def mixed_run(meter_kind: str, seed: int) -> Run:
    meter = make_meter(meter_kind, seed)
    rng = random.Random(seed * 7919 + 1)
    hit = set(rng.sample(range(MIXED_TELEGRAMS), round(MIXED_RATE * MIXED_TELEGRAMS)))
    texts = list(telegrams(meter, MIXED_TELEGRAMS + TAIL))
    first = meter.seconds - len(texts) + 1
    seconds = itertools.count(first)
    return _drive(_stream(iter(texts[:-TAIL]), seconds, hit, rng, ""), texts[-TAIL:])


@functools.cache
def per_kind_run(meter_kind: str, kind: str) -> Run:
    clean = clean_run(meter_kind)
    body, tail = clean[:PER_KIND_TELEGRAMS], clean[PER_KIND_TELEGRAMS : PER_KIND_TELEGRAMS + TAIL]
    rng = random.Random(f"{meter_kind}-{kind}")
    hit = set(rng.sample(range(len(body)), round(PER_KIND_RATE * len(body))))
    texts = (text for text, _ in body)
    seconds = (s for _, s in body)
    return _drive(_stream(texts, seconds, hit, rng, kind), [text for text, _ in tail])


MIXED = [(m, s) for s in (1, 2) for m in METERS]
PER_KIND = list(itertools.product(METERS, CORRUPTIONS))


def _ids(params: list[tuple[str, object]]) -> list[str]:
    return [f"{a}-{b}" for a, b in params]


def assert_clean_published(run: Run, bound: float = MIN_CLEAN_PUBLISHED) -> None:
    assert run.clean > 0
    share = run.clean_published / run.clean
    assert share >= bound, f"{share:.4%} of clean telegrams published; {run.report()}"


def assert_nothing_escapes(run: Run) -> None:
    escaped = {line: t.escaped for line, t in run.lines.items() if t.escaped}
    assert run.escapes == [] and escaped == {}, (
        f"{len(run.escapes)} damaged published, per line {escaped}:\n{run.report()}"
    )


def assert_undetectable_bounded(run: Run) -> None:
    """Only the documented lines, each within its bound."""

    def allowed(line: str, hits: int) -> float:
        share = MAX_UNDETECTABLE_SHARE.get(line)
        return 0.0 if share is None else share * hits + 3 * math.sqrt(share * hits) + 1

    over = {
        line: f"{t.undetectable}/{t.injected}"
        for line, t in run.lines.items()
        if t.undetectable > allowed(line, t.injected)
    }
    assert over == {}, f"undetectable damage beyond its bound: {over}\n{run.report()}"


def assert_few_held(run: Run) -> None:
    share = run.held_without_cause / run.clean
    assert share <= MAX_HELD_WITHOUT_CAUSE, f"{share:.3%} held without cause\n{run.report()}"


def assert_ordered(run: Run) -> None:
    bad = [(hex(a), hex(b)) for a, b in itertools.pairwise(run.order) if b <= a]
    assert bad == [], f"96.8.0 not strictly increasing: {bad[:8]}"


# --- no damage: everything published, almost nothing waits -----------------------------------


@pytest.mark.parametrize("meter_kind", METERS)
def test_clean_telegrams_are_published_in_order_and_rarely_held(meter_kind: str) -> None:
    """CLEAN_TELEGRAMS consecutive telegrams (the DTA meter switching tariff every half
    hour): all published, in order; held only for an unusual step, <= 1 %."""
    clean = clean_run(meter_kind)
    body = clean[:CLEAN_TELEGRAMS]
    run = _drive(((t, s, encode_7e1(t), None, "") for t, s in body), [t for t, _ in clean[-TAIL:]])
    # 0.0.0 and 96.1.0 differ on the DTA meter: they become its identity once repeated.
    lost_at_start = ADOPT_AFTER - 1 if meter_kind == "DTA" else 0
    assert run.clean_published == CLEAN_TELEGRAMS - lost_at_start, run.report()
    assert_ordered(run)
    assert_few_held(run)


# --- mixed damage, 5 %, every kind on every line, two seeds ------------------------------------


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_clean_telegrams_are_published(meter_kind: str, seed: int) -> None:
    run = mixed_run(meter_kind, seed)
    assert set(run.corruptions) == set(CORRUPTIONS)
    assert sum(run.corruptions.values()) == round(MIXED_RATE * MIXED_TELEGRAMS)
    assert_clean_published(run)
    assert_few_held(run)


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_nothing_damaged_escapes(meter_kind: str, seed: int) -> None:
    assert_nothing_escapes(mixed_run(meter_kind, seed))


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_undetectable_damage_is_bounded(meter_kind: str, seed: int) -> None:
    assert_undetectable_bounded(mixed_run(meter_kind, seed))


@pytest.mark.parametrize(("meter_kind", "seed"), MIXED, ids=_ids(MIXED))
def test_mixed_publications_are_in_order_without_duplicates(meter_kind: str, seed: int) -> None:
    run = mixed_run(meter_kind, seed)
    assert len(run.order) >= run.clean_published > 0
    assert_ordered(run)


@pytest.mark.parametrize("meter_kind", METERS)
def test_every_line_is_damaged(meter_kind: str) -> None:
    """The model hits every line of the layout, ident and end mark included."""
    run = mixed_run(meter_kind, 1)
    layout = parse(clean_run(meter_kind)[0][0])
    lines = {"ident", "blank", "end", *layout.values}
    assert lines <= {line for line, t in run.lines.items() if t.injected > 0}, run.report()


# --- one kind at a time, 10 % --------------------------------------------------------------------


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_clean_telegrams_are_published(meter_kind: str, kind: str) -> None:
    run = per_kind_run(meter_kind, kind)
    assert run.corruptions == {kind: round(PER_KIND_RATE * PER_KIND_TELEGRAMS)}
    assert_clean_published(run, MIN_CLEAN_PUBLISHED_PER_KIND)


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_nothing_damaged_escapes(meter_kind: str, kind: str) -> None:
    assert_nothing_escapes(per_kind_run(meter_kind, kind))


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_undetectable_damage_is_bounded(meter_kind: str, kind: str) -> None:
    assert_undetectable_bounded(per_kind_run(meter_kind, kind))


@pytest.mark.parametrize(("meter_kind", "kind"), PER_KIND, ids=_ids(PER_KIND))
def test_per_kind_publications_are_in_order_without_duplicates(meter_kind: str, kind: str) -> None:
    assert_ordered(per_kind_run(meter_kind, kind))


# --- per line, per meter kind: the figure for docs/reliability.md -----------------------------

Figure = Callable[..., None]  # the `figure` fixture (tests/conftest.py)
NOTE = (
    "the same for every meter kind's row: the undetectable class is the damage "
    "agent/meter/validation.py lists as such (an energy register's last digit, a voltage "
    "close to a neighbouring second's); a published telegram counts as escaped when it "
    "differs from the clean telegram of its meter second in any other way."
)


def line_totals(runs: Iterable[Run]) -> dict[str, Tally]:
    """The runs' tallies added up per line."""
    total: defaultdict[str, Tally] = defaultdict(Tally)
    for run in runs:
        for line, t in run.lines.items():
            total[line].injected += t.injected
            total[line].undetectable += t.undetectable
            total[line].escaped += t.escaped
    return dict(total)


def in_telegram_order(lines: Iterable[str], meter_kind: str) -> list[str]:
    """The ident, the blank line, the values as the meter sends them, the end mark; any other
    name ("after", "?": nothing may land there) last."""
    order = ["ident", "blank", *parse(clean_run(meter_kind)[0][0]).values, "end"]
    rank = {line: i for i, line in enumerate(order)}
    return sorted(lines, key=lambda line: (rank.get(line, len(order)), line))


def failures(run: Run, *checks: Callable[[Run], None]) -> list[str]:
    """The first line of each check's failure on this run (empty: all passed)."""
    out = []
    for check in checks:
        try:
            check(run)
        except AssertionError as e:
            out.append(str(e).splitlines()[0])
    return out


def _shares() -> str:
    by_share: defaultdict[float, list[str]] = defaultdict(list)
    for line, share in MAX_UNDETECTABLE_SHARE.items():
        by_share[share].append(line)
    return ", ".join(f"{' '.join(lines)} <= {share:.0%}" for share, lines in by_share.items())


@pytest.mark.parametrize("meter_kind", METERS)
def test_per_line_what_got_through(meter_kind: str, figure: Figure) -> None:
    """Every run of this meter kind (the mixed ones and one per kind of damage), added up
    per line: what was injected, rejected, published within the undetectable class, escaped.
    Bounds, on each run: nothing escapes on any line; the undetectable class only on its
    lines, each within its share (the per-run tests above assert the same)."""
    runs = {f"mixed, seed {s}": mixed_run(meter_kind, s) for m, s in MIXED if m == meter_kind}
    runs |= {f"{kind} only": per_kind_run(meter_kind, kind) for kind in CORRUPTIONS}
    found = {
        name: problems
        for name, run in runs.items()
        if (problems := failures(run, assert_nothing_escapes, assert_undetectable_bounded))
    }
    totals = line_totals(runs.values())
    cells = [
        f"{line} {t.injected}/{t.rejected}/{t.undetectable}/{t.escaped}"
        for line in in_telegram_order(totals, meter_kind)
        for t in [totals[line]]
    ]
    hit = sum(t.injected for t in totals.values())
    escaped = sum(t.escaped for t in totals.values())
    through = sum(t.undetectable for t in totals.values())
    mixed = [name for name in runs if name.startswith("mixed")]
    figure(
        fault=f"damaged telegrams, {meter_kind} meter, per line",
        injected=f"{len(mixed)} runs of {MIXED_TELEGRAMS} telegrams with {MIXED_RATE:.0%} "
        f"damaged (every kind of damage on every line) and {len(runs) - len(mixed)} of "
        f"{PER_KIND_TELEGRAMS} with {PER_KIND_RATE:.0%} damaged by one kind each, through "
        "the in-process pipeline (parity, framing, parsing, validation)",
        measured=f"{hit} damaged: {hit - through - escaped} rejected, {through} published "
        f"within the undetectable class, {escaped} escaped. Per line, "
        f"injected/rejected/undetectable/escaped: {'; '.join(cells)}"
        + (f". Runs out of bounds: {found}" if found else ""),
        bound=f"0 escaped on every line; undetectable only on {_shares()} of the line's "
        "hits (+ 3 standard deviations), in every run",
        ok=not found,
        escaped=escaped,
        undetectable=through,
        note=NOTE if meter_kind == METERS[0] else "",  # once for the three rows
    )
    assert found == {}, found
    layout = {"ident", "blank", "end", *parse(clean_run(meter_kind)[0][0]).values}
    assert layout <= {line for line, t in totals.items() if t.injected}, totals
