"""The simulated eBZ DD3 against the real captures, its physics, and the link corruptions."""

from __future__ import annotations

import itertools
import random
import re
import time
from dataclasses import dataclass

import pytest

from agent.meter.parity import PARITY_ERROR, decode_7e1, encode_7e1
from agent.meter.simulator import (
    CORRUPTIONS,
    SimulatedEbz,
    applicable_corruptions,
    corrupt,
    corrupt_line,
    corrupted_stream,
    line_of,
    undetectable,
)
from tests.harness.paths import read_capture

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
RUST_2R = "ebz_dd3_2r06eta_rust-test-fixture.txt"
DTA = "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt"
CRLF = b"\r\n"
_LINE = re.compile(rb"(\d+-\d+:\d+\.\d+\.\d+)\*255\(([^)]*)\)")


def capture(name: str) -> bytes:
    return read_capture(name)  # NOT PROVEN here without ../shared/telegrams


def split_telegrams(stream: bytes) -> list[bytes]:
    return [part + b"!\r\n" for part in stream.split(b"!\r\n") if part]


def shape(line: bytes) -> bytes:
    """A line with every digit replaced: the same shape means the same widths and format."""
    if line.startswith(b"0-0:96.8.0*255("):  # eight hex digits of seconds
        line = line[:15] + re.sub(rb"[0-9A-F]", b"h", line[15:])
    return re.sub(rb"\d", b"d", line)


@dataclass
class Reading:
    seconds: int
    energy: int  # 1e-8 kWh
    export: int | None
    power_cw: int
    phases_cw: tuple[int, ...]
    voltages_dv: tuple[int, ...]


def _centi(value: bytes) -> int:
    return int(value.replace(b".", b"").split(b"*")[0])


def parse(text: bytes) -> Reading:
    """Deliberately independent of the project's parser: a plain regex reading of the values."""
    values = {code: value for code, value in _LINE.findall(text)}
    phases = tuple(_centi(values[b"1-0:%b.7.0" % c]) for c in (b"36", b"56", b"76"))
    voltages = tuple(
        _centi(values[b"1-0:%b.7.0" % c])
        for c in (b"32", b"52", b"72")
        if b"1-0:%b.7.0" % c in values
    )
    export = values.get(b"1-0:2.8.0")
    return Reading(
        seconds=int(values[b"0-0:96.8.0"], 16),
        energy=_centi(values[b"1-0:1.8.0"]),
        export=None if export is None else _centi(export),
        power_cw=_centi(values[b"1-0:16.7.0"]),
        phases_cw=phases,
        voltages_dv=voltages,
    )


def make(seed: int = 7, **options: object) -> SimulatedEbz:
    return SimulatedEbz(rng=random.Random(seed), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ten_thousand() -> tuple[list[bytes], float]:
    meter = make(power_w=400.0)
    start = time.perf_counter()
    texts = [meter.next_telegram() for _ in range(10_000)]
    return texts, time.perf_counter() - start


# --- form: indistinguishable from the real captures ------------------------------------------


def test_layout_matches_the_ahpohl_capture_line_by_line() -> None:
    real = split_telegrams(capture(AHPOHL))[0]
    simulated = make().next_telegram()
    assert len(real) == len(simulated) == 368
    assert simulated.count(CRLF) == real.count(CRLF) == 15
    assert simulated.replace(CRLF, b"").count(b"\n") == 0
    real_lines, sim_lines = real.split(CRLF), simulated.split(CRLF)
    assert len(sim_lines) == len(real_lines)
    for real_line, sim_line in zip(real_lines, sim_lines, strict=True):
        assert shape(sim_line) == shape(real_line), (real_line, sim_line)
    assert sim_lines[1] == b"" and sim_lines[-2:] == [b"!", b""]


def test_defaults_start_where_the_capture_starts() -> None:
    real = split_telegrams(capture(AHPOHL))[0].split(CRLF)
    simulated = make().next_telegram().split(CRLF)
    for index in (0, 4, 12, 13):  # ident, 1.8.0, 96.5.0, 96.8.0
        assert simulated[index] == real[index]


def test_every_telegram_keeps_the_capture_shape(ten_thousand: tuple[list[bytes], float]) -> None:
    real_shape = [shape(line) for line in split_telegrams(capture(AHPOHL))[0].split(CRLF)]
    hex_seconds = re.compile(rb"0-0:96\.8\.0\*255\([0-9A-F]{8}\)")
    for text in ten_thousand[0][::97]:
        lines = text.split(CRLF)
        assert [shape(line) for line in lines[:-3]] == real_shape[:-3]
        assert hex_seconds.fullmatch(lines[-3])
        assert all(0x20 <= b <= 0x7E for b in text.replace(CRLF, b""))


def test_two_direction_variant_matches_the_rust_fixture() -> None:
    real = capture(RUST_2R)
    meter = make(ident="EBZ5DD32R06ETA_107", export_kwh=1.206, voltages=False)
    simulated = meter.next_telegram()
    assert len(simulated) == len(real) == 329
    for real_line, sim_line in zip(real.split(CRLF), simulated.split(CRLF), strict=True):
        assert shape(sim_line) == shape(real_line), (real_line, sim_line)


def dta(seed: int = 7, **options: object) -> SimulatedEbz:
    """The philippoo66 capture's meter: 2R06DTA, tariff registers, its counters."""
    return make(
        seed,
        ident="EBZ5DD32R06DTA_107",
        energy_kwh=2.66313813,
        export_kwh=2.152,
        tariffs=True,
        **options,
    )


def test_tariff_variant_matches_the_philippoo66_capture_line_by_line() -> None:
    real = split_telegrams(capture(DTA))[0]
    simulated = dta().next_telegram()
    real_lines, sim_lines = real.split(CRLF), simulated.split(CRLF)
    assert len(sim_lines) == len(real_lines) == 19
    for real_line, sim_line in zip(real_lines, sim_lines, strict=True):
        assert shape(sim_line) == shape(real_line), (real_line, sim_line)


def _tariffs(text: bytes, direction: bytes = b"1.8") -> tuple[int, int, int]:
    """(total in 1e-8 kWh, tariff 1 and 2 in Wh) as displayed."""
    values = {code: value for code, value in _LINE.findall(text)}
    total = _centi(values[b"1-0:" + direction + b".0"])
    t1, t2 = (_centi(values[b"1-0:%b.%d" % (direction, n)]) for n in (1, 2))
    return total, t1, t2


def test_tariff_registers_add_up_to_their_total_and_only_the_running_one_moves() -> None:
    meter = dta(power_w=3000.0, pv_w=2500.0, export_tariffs=True)
    seen = []
    for i in range(4000):
        if i == 2000:
            meter.set_tariff(2)
        seen.append(meter.next_telegram())
    moved = {1: set(), 2: set()}
    for i, (older, newer) in enumerate(itertools.pairwise(seen)):
        for direction in (b"1.8", b"2.8"):
            total, t1, t2 = _tariffs(newer, direction)
            # Two truncated registers add up to the truncated total, or one digit less.
            assert total // 10**5 - (t1 + t2) in (0, 1), (direction, newer)
            _, o1, o2 = _tariffs(older, direction)
            assert t1 >= o1 and t2 >= o2
            if (t1, t2) != (o1, o2):
                moved[1 if i < 1999 else 2].add((t1 != o1, t2 != o2))
    assert moved == {1: {(True, False)}, 2: {(False, True)}}
    assert meter.tariff_units("2.8") == _tariffs(seen[-1], b"2.8")[1:]


def test_a_property_number_replaces_the_id_in_0_0_0_only() -> None:
    text = make(property_number="123456").next_telegram()
    assert b"1-0:0.0.0*255(123456)\r\n1-0:96.1.0*255(1EBZ0100000001)" in text
    with pytest.raises(ValueError, match="export tariffs"):
        make(tariffs=True, export_tariffs=True)


def test_export_power_is_signed_with_the_same_digit_width() -> None:
    meter = make(ident="EBZ5DD32R06ETA_107", export_kwh=1.206, voltages=False, pv_w=2000.0)
    text = next(t for t in (meter.next_telegram() for _ in range(3000)) if meter.power_cw < 0)
    assert re.search(rb"\r\n1-0:16\.7\.0\*255\(-\d{6}\.\d{2}\*W\)\r\n", text)


def test_reduced_layout_has_whole_kwh_and_no_power() -> None:
    meter = make(export_kwh=46.9)
    meter.next_telegram()
    meter.set_layout(reduced=True)
    lines = meter.next_telegram().split(CRLF)
    assert lines[4] == b"1-0:1.8.0*255(005267*kWh)"
    assert lines[5] == b"1-0:2.8.0*255(000046*kWh)"
    assert [line[:14] for line in lines[6:8]] == [b"1-0:96.5.0*255", b"0-0:96.8.0*255"]
    assert lines[8:] == [b"!", b""]
    assert applicable_corruptions(b"\r\n".join(lines)) == tuple(
        k for k in CORRUPTIONS if k != "power_digit"
    )


def test_layout_and_identity_changes_take_effect() -> None:
    meter = make()
    first = parse(meter.next_telegram())
    meter.set_layout(voltages=False)
    meter.meter_id = "1EBZ0100000002"
    text = meter.next_telegram()
    assert b"32.7.0" not in text and text.count(b"(1EBZ0100000002)") == 2
    assert parse(text).seconds == first.seconds + 1


# --- physics, as recomputed on the captures (meters.md §6) ----------------------------------


def assert_physics(readings: list[Reading]) -> None:
    for older, newer in itertools.pairwise(readings):
        assert newer.power_cw == sum(newer.phases_cw)
        assert newer.seconds == older.seconds + 1
        assert newer.energy >= older.energy
        exported = 0 if newer.export is None else newer.export - older.export  # type: ignore[operator]
        assert exported >= 0
        # 1e-8 kWh over 1 s is 0.036 W: one display unit, plus 0.01 W of rounding.
        energy_cw = (newer.energy - older.energy - exported) * 3.6
        assert abs(energy_cw - newer.power_cw) <= 3.6 + 1.0, (older, newer)


def test_the_real_capture_obeys_the_checked_physics() -> None:
    assert_physics([parse(text) for text in split_telegrams(capture(AHPOHL))])


def test_physics_hold_over_ten_thousand_telegrams(ten_thousand: tuple[list[bytes], float]) -> None:
    readings = [parse(text) for text in ten_thousand[0]]
    assert_physics(readings)
    assert all(0 <= r.power_cw <= 4_140_000 for r in readings)
    assert all(2250 <= v <= 2400 for r in readings for v in r.voltages_dv)
    assert max(r.power_cw for r in readings) > 100_000  # an appliance switched on at some point


def test_two_direction_physics_with_export() -> None:
    meter = make(3, export_kwh=1.206, voltages=False, pv_w=500.0)
    readings = [parse(meter.next_telegram()) for _ in range(3000)]
    assert_physics(readings)
    assert min(r.power_cw for r in readings) < 0 < max(r.power_cw for r in readings)
    assert readings[-1].export > readings[0].export  # type: ignore[operator]


def test_total_power_never_exceeds_the_60_a_limit() -> None:
    meter = make(power_w=40_000.0)
    for _ in range(500):
        meter.next_telegram()
        assert 0 <= meter.power_cw <= 4_140_000


def test_skip_loses_seconds_but_not_energy() -> None:
    meter = make()
    before = parse(meter.next_telegram())
    meter.skip(4)
    after = parse(meter.next_telegram())
    assert after.seconds == before.seconds + 5
    assert 4 * 5_000 < after.energy - before.energy < 5 * 5_000 * 2


def test_state_accessors_match_the_telegram() -> None:
    meter = make(export_kwh=12.5)
    reading = parse(meter.next_telegram())
    assert (meter.seconds, meter.energy_units, meter.export_units) == (
        reading.seconds,
        reading.energy,
        reading.export,
    )
    assert (meter.power_cw, meter.phases_cw, meter.voltages_dv) == (
        reading.power_cw,
        reading.phases_cw,
        reading.voltages_dv,
    )


def test_a_seed_reproduces_the_stream() -> None:
    def stream(seed: int) -> list[tuple[bytes, bytes, str | None]]:
        return list(corrupted_stream(make(seed), 200, 0.2, random.Random(seed)))

    assert stream(11) == stream(11)
    assert stream(11) != stream(12)


def test_generating_ten_thousand_is_fast(ten_thousand: tuple[list[bytes], float]) -> None:
    assert ten_thousand[1] < 2.0


# --- corruption ------------------------------------------------------------------------------


@pytest.fixture
def wire() -> bytes:
    return encode_7e1(make(export_kwh=3.5).next_telegram())


def lines_of(data: bytes) -> list[bytes]:
    return decode_7e1(data).split(CRLF)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_changes_the_bytes(wire: bytes, kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(50):
        assert corrupt(wire, kind, rng) != wire


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_names_the_line_it_hit(wire: bytes, kind: str) -> None:
    """Where the damage is a changed or lost byte, the line named is the one that holds it."""
    rng = random.Random(kind)
    text = decode_7e1(wire)
    for _ in range(100):
        damaged, line = corrupt_line(wire, kind, rng)
        if kind == "truncate":
            assert line == line_of(text, len(damaged) - 1)  # the line cut short
            continue
        first = next(i for i, (a, b) in enumerate(zip(wire, damaged, strict=False)) if a != b)
        if kind != "repeat_line":  # a repeated line differs first where the next one starts
            assert line == line_of(text, first), (kind, first, line)


def test_line_of_names_every_part_of_a_telegram(wire: bytes) -> None:
    text = decode_7e1(wire)
    assert line_of(text, 0) == line_of(text, text.index(b"\r\n")) == "ident"
    blank = text.index(b"\r\n\r\n") + 2
    assert line_of(text, blank) == line_of(text, blank + 1) == "blank"
    assert line_of(text, text.index(b"1.8.0")) == "1.8.0"
    assert line_of(text, text.index(b"*kWh)") + 6) == "1.8.0"  # its LF
    assert line_of(text, text.index(b"0-0:96.8.0")) == "96.8.0"
    assert line_of(text, len(text) - 3) == line_of(text, len(text) - 1) == "end"


def _changed(wire: bytes, damaged: bytes) -> tuple[int, int, int]:
    diffs = [i for i, (a, b) in enumerate(zip(damaged, wire, strict=True)) if a != b]
    assert len(diffs) == 1
    i = diffs[0]
    assert PARITY_ERROR not in decode_7e1(damaged)  # invisible to the parity check
    return i, wire[i] & 0x7F, damaged[i] & 0x7F


@pytest.mark.parametrize(
    ("kind", "alphabet"),
    [
        ("digit", b"0123456789"),
        ("hex", b"0123456789ABCDEF"),
        ("letter", bytes(range(65, 91)) + bytes(range(97, 123))),
        ("unit", b"kWhV" + bytes(range(65, 91)) + bytes(range(97, 123))),
        ("char", bytes(range(0x20, 0x7F))),
    ],
)
def test_character_changes_keep_parity_and_the_character_class(
    wire: bytes, kind: str, alphabet: bytes
) -> None:
    rng = random.Random(kind)
    text = decode_7e1(wire)
    lines = set()
    for _ in range(600):
        damaged, line = corrupt_line(wire, kind, rng)
        _, old, new = _changed(wire, damaged)
        assert old != new and new in alphabet
        if kind in ("digit", "letter"):
            assert chr(old).isdigit() == chr(new).isdigit()
            assert chr(old).isupper() == chr(new).isupper()
        lines.add(line)
    digits_in = {line_of(text, i) for i, c in enumerate(text) if chr(c).isdigit()}
    expected = {
        "digit": digits_in,
        "hex": {"96.5.0", "96.8.0"},
        "unit": {"1.8.0", "2.8.0", "16.7.0", "36.7.0", "56.7.0", "76.7.0"}
        | {"32.7.0", "52.7.0", "72.7.0"},
    }
    if kind in expected:
        assert lines == expected[kind]
    if kind == "letter":
        assert {"ident", "0.0.0", "96.1.0", "1.8.0", "16.7.0", "96.5.0"} <= lines


def test_bit_flip_breaks_parity_of_exactly_one_byte(wire: bytes) -> None:
    rng = random.Random(1)
    for _ in range(50):
        damaged = corrupt(wire, "bit_flip", rng)
        assert len(damaged) == len(wire)
        assert decode_7e1(damaged).count(PARITY_ERROR) == 1
        assert sum(a != b for a, b in zip(damaged, wire, strict=True)) == 1


def test_lost_byte_deletes_one_byte_after_the_slash(wire: bytes) -> None:
    rng = random.Random(2)
    for _ in range(50):
        damaged = corrupt(wire, "lost_byte", rng)
        assert len(damaged) == len(wire) - 1 and damaged[:1] == wire[:1]
        assert any(wire[:i] + wire[i + 1 :] == damaged for i in range(1, len(wire)))


def test_truncate_cuts_strictly_inside(wire: bytes) -> None:
    rng = random.Random(3)
    for _ in range(50):
        damaged = corrupt(wire, "truncate", rng)
        assert 1 <= len(damaged) < len(wire) and wire.startswith(damaged)


def test_repeat_line_duplicates_one_data_line(wire: bytes) -> None:
    rng = random.Random(4)
    clean = lines_of(wire)
    for _ in range(50):
        damaged_wire = corrupt(wire, "repeat_line", rng)
        assert PARITY_ERROR not in decode_7e1(damaged_wire)
        damaged = lines_of(damaged_wire)
        index = next(i for i, (a, b) in enumerate(zip(clean, damaged, strict=False)) if a != b)
        assert damaged[index - 1] == damaged[index] and b"*255(" in damaged[index]
        assert damaged[:index] + damaged[index + 1 :] == clean


@pytest.mark.parametrize(
    ("kind", "codes"),
    [
        ("energy_digit", (b"1.8.0", b"2.8.0")),
        ("power_digit", (b"16.7.0", b"36.7.0", b"56.7.0", b"76.7.0")),
    ],
)
def test_digit_swap_keeps_parity_and_changes_one_digit(
    wire: bytes, kind: str, codes: tuple[bytes, ...]
) -> None:
    rng = random.Random(5)
    hit_codes = set()
    for _ in range(200):
        damaged = corrupt(wire, kind, rng)
        assert len(damaged) == len(wire)
        assert PARITY_ERROR not in decode_7e1(damaged)  # invisible to the parity check
        diffs = [i for i, (a, b) in enumerate(zip(damaged, wire, strict=True)) if a != b]
        assert len(diffs) == 1
        changed = decode_7e1(damaged)[diffs[0] : diffs[0] + 1]
        assert changed.isdigit()
        line = decode_7e1(damaged)[: diffs[0]].rsplit(CRLF, 1)[1]
        code = line.split(b":")[1].split(b"*")[0]
        assert code in codes
        hit_codes.add(code)
    assert hit_codes == set(codes)


def test_unknown_or_impossible_corruption_is_refused(wire: bytes) -> None:
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(wire, "gamma_ray", random.Random(0))
    reduced = make(reduced=True).next_telegram()
    with pytest.raises(ValueError, match="power_digit"):
        corrupt(encode_7e1(reduced), "power_digit", random.Random(0))


# --- the undetectable class -------------------------------------------------------------------


def _set(text: bytes, code: bytes, value: bytes) -> bytes:
    return re.sub(rb"(:" + re.escape(code) + rb"\*255\()[^*)]*", rb"\g<1>" + value, text)


def test_undetectable_is_only_the_documented_class() -> None:
    meter = dta()
    before, truth, after = (meter.next_telegram() for _ in range(3))
    energy = parse(truth).energy
    last = energy % 10
    up2 = str(energy + 2).zfill(14).encode()
    plus2 = _set(truth, b"1.8.0", up2[:6] + b"." + up2[6:])
    assert undetectable(plus2, truth) == "1.8.0" and last >= 0
    up3 = str(energy + 3).zfill(14).encode()
    assert undetectable(_set(truth, b"1.8.0", up3[:6] + b"." + up3[6:]), truth) is None
    volts = parse(truth).voltages_dv[0]
    near = parse(before).voltages_dv[0] + 19
    far = max(parse(before).voltages_dv[0], parse(after).voltages_dv[0]) + 20
    fmt = lambda dv: f"{dv // 10:03d}.{dv % 10}".encode()  # noqa: E731
    assert undetectable(_set(truth, b"32.7.0", fmt(near)), truth, (before, after)) == "32.7.0"
    assert undetectable(_set(truth, b"32.7.0", fmt(far)), truth, (before, after)) is None
    assert undetectable(_set(truth, b"32.7.0", fmt(volts + 1)), truth) is None  # no neighbour
    t1 = _tariffs(truth)[1]
    tariff = lambda wh: f"{wh // 1000:06d}.{wh % 1000:03d}".encode()  # noqa: E731
    assert undetectable(_set(truth, b"1.8.1", tariff(t1 + 1)), truth) == "1.8.1"
    assert undetectable(_set(truth, b"1.8.1", tariff(t1 + 2)), truth) is None
    assert undetectable(_set(truth, b"16.7.0", b"000000.01"), truth) is None
    two = _set(plus2, b"32.7.0", fmt(near))
    assert undetectable(two, truth, (before, after)) is None  # two lines: never


def test_corrupted_stream_hits_the_given_fraction_with_every_kind() -> None:
    rows = list(corrupted_stream(make(), 600, 0.25, random.Random(9)))
    kinds = [kind for _, _, kind in rows]
    assert sum(kind is not None for kind in kinds) == 150
    assert set(kinds) - {None} == set(CORRUPTIONS)
    for text, wire, kind in rows:
        assert (wire == encode_7e1(text)) == (kind is None)
