"""The simulated eBZ DD3 against the real captures, its physics, and the link corruptions."""

from __future__ import annotations

import itertools
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.meter.parity import PARITY_ERROR, decode_7e1, encode_7e1
from agent.meter.simulator import (
    CORRUPTIONS,
    SimulatedEbz,
    applicable_corruptions,
    corrupt,
    corrupted_stream,
)

TELEGRAMS = Path(__file__).resolve().parents[2].parent / "shared" / "telegrams"
AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
RUST_2R = "ebz_dd3_2r06eta_rust-test-fixture.txt"
CRLF = b"\r\n"
_LINE = re.compile(rb"(\d+-\d+:\d+\.\d+\.\d+)\*255\(([^)]*)\)")


def capture(name: str) -> bytes:
    path = TELEGRAMS / name
    if not path.is_file():
        pytest.skip("../shared/telegrams not present (a user's clone has no ../shared)")
    return path.read_bytes()


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
    assert applicable_corruptions(b"\r\n".join(lines)) == CORRUPTIONS[:-1]


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


def test_corrupted_stream_hits_the_given_fraction_with_every_kind() -> None:
    rows = list(corrupted_stream(make(), 600, 0.25, random.Random(9)))
    kinds = [kind for _, _, kind in rows]
    assert sum(kind is not None for kind in kinds) == 150
    assert set(kinds) - {None} == set(CORRUPTIONS)
    for text, wire, kind in rows:
        assert (wire == encode_7e1(text)) == (kind is None)
