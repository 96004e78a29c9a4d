"""Strict parsing of real and simulated eBZ telegrams; the cached fast path; salvage."""

from __future__ import annotations

import random
import re

import pytest

from agent.meter.parity import PARITY_ERROR, decode_7e1, encode_7e1
from agent.meter.simulator import CORRUPTIONS, SimulatedEbz, corrupt
from agent.meter.telegram import (
    Number,
    Reason,
    Telegram,
    TelegramError,
    TelegramParser,
    parse,
    salvage,
)
from tests.harness.paths import read_capture, split_telegrams

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
SINGLE_2020 = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_single_2020.txt"
RUST_2R = "ebz_dd3_2r06eta_rust-test-fixture.txt"
IOBROKER_2R = "ebz_dd3_2r06eta_iobroker-smartmeter-issue192_2telegrams.crlf-reconstructed.txt"
PHILIPPOO_2R = "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt"
EBZ_TEXT_CAPTURES = (AHPOHL, RUST_2R, IOBROKER_2R, PHILIPPOO_2R)


def ahpohl() -> list[bytes]:
    return split_telegrams(read_capture(AHPOHL))


def capture_telegrams(name: str) -> list[bytes]:
    if name == SINGLE_2020:
        # Cut capture: a stray CR LF before the '/', no CR LF after the '!'.
        return [read_capture(name)[2:] + b"\r\n"]
    return split_telegrams(read_capture(name))


# --- real captures -------------------------------------------------------------------------------


def capture_id(raw: bytes) -> str:
    """The meter id as the capture shows it (a real meter's: read, never typed in here)."""
    found = re.search(rb"96\.1\.0\*255\(([0-9A-Za-z]+)\)", raw)
    assert found, raw[:120]
    return found[1].decode()


def test_the_first_ahpohl_telegram_parses_to_its_values() -> None:
    raw = ahpohl()[0]
    t = parse(raw)
    meter_id = capture_id(raw)
    assert t.ident == "/EBZ5DD3BZ06ETA_107"
    assert t.meter_id == meter_id and len(meter_id) == 14
    assert t.values == {
        "0.0.0": meter_id,
        "96.1.0": meter_id,
        "1.8.0": "005267.03049619",
        "16.7.0": "000179.62",
        "36.7.0": "000080.40",
        "56.7.0": "000089.37",
        "76.7.0": "000009.85",
        "32.7.0": "232.3",
        "52.7.0": "231.3",
        "72.7.0": "232.9",
        "96.5.0": "001C0104",
        "96.8.0": "02792C83",
    }
    assert t.seconds == 0x02792C83 == 41495683
    assert t.energy == {"1.8.0": Number(526703049619, 8)}
    assert t.energy["1.8.0"].scaled(10) == 52670304961900
    assert t.power == {"16.7.0": 17962, "36.7.0": 8040, "56.7.0": 8937, "76.7.0": 985}
    assert t.volts == {"32.7.0": 2323, "52.7.0": 2313, "72.7.0": 2329}
    assert t.status == "001C0104"
    assert t.layout[0] == t.ident and len(t.layout) == 13
    assert "1-0:16.7.0*255 6.2 W" in t.layout
    assert t.raw == ahpohl()[0]


def test_all_seven_ahpohl_telegrams_parse_with_a_rising_seconds_index() -> None:
    parsed = [parse(raw) for raw in ahpohl()]
    assert [t.seconds for t in parsed] == list(range(0x02792C83, 0x02792C8A))
    assert len({t.key for t in parsed}) == 1  # one layout and meter id throughout
    energies = [t.energy["1.8.0"].units for t in parsed]
    assert energies == sorted(energies)
    for t in parsed:
        phases = sum(t.power[c] for c in ("36.7.0", "56.7.0", "76.7.0"))
        assert t.power["16.7.0"] == phases


def test_the_2r_fixture_parses_with_export_register() -> None:
    t = parse(read_capture(RUST_2R))
    assert t.ident == "/EBZ5DD32R06ETA_107"
    assert t.energy == {"1.8.0": Number(271412830185, 8), "2.8.0": Number(120600000, 8)}
    assert t.power["16.7.0"] == 21126
    assert t.volts == {}
    assert t.seconds == 0x02FAB8BF


def test_the_two_tariff_capture_keeps_each_registers_resolution() -> None:
    t = parse(read_capture(PHILIPPOO_2R))
    assert t.energy["1.8.0"] == Number(266313813, 8)
    assert t.energy["1.8.1"] == Number(999, 3)
    assert t.energy["1.8.2"] == Number(1664, 3)
    assert t.energy["2.8.0"] == Number(215200000, 8)
    assert t.energy["1.8.1"].scaled(8) == 99900000


def test_the_iobroker_pair_and_the_cut_2020_capture_parse() -> None:
    first, second = (parse(raw) for raw in capture_telegrams(IOBROKER_2R))
    assert (first.seconds, second.seconds) == (0x010183FE, 0x010183FF)
    assert second.power["16.7.0"] == 100492
    single = parse(capture_telegrams(SINGLE_2020)[0])
    assert single.energy["1.8.0"] == Number(12525688570, 8)
    assert single.seconds == 0x00104443


def test_negative_power_is_signed_centiwatts() -> None:
    # meters.md §4: export shows as (-000458.90*W). Parsing only: these unsigned phases are
    # from an edited sample, and validation requires the sum with signs (firmware-notes B9).
    raw = (
        read_capture(RUST_2R)
        .replace(b"(000211.26*W)", b"(-000458.90*W)")
        .replace(b"(000157.64*W)", b"(000344.88*W)")
        .replace(b"(000015.64*W)", b"(000114.02*W)")
        .replace(b"(000037.98*W)", b"(000000.00*W)")
    )
    t = parse(raw)
    assert t.power == {"16.7.0": -45890, "36.7.0": 34488, "56.7.0": 11402, "76.7.0": 0}
    # The sign is not part of the layout: import and export telegrams are one layout.
    assert t.layout == parse(read_capture(RUST_2R)).layout


@pytest.mark.parametrize("name", [*EBZ_TEXT_CAPTURES, SINGLE_2020])
def test_the_cached_parser_matches_parse_on_every_capture(name: str) -> None:
    raws = capture_telegrams(name)
    parser = TelegramParser()
    for _ in range(2):  # the second round runs entirely on the cached templates
        for raw in raws:
            assert parser.parse(raw) == parse(raw)


# --- the simulator's layouts ---------------------------------------------------------------------


def sim(layout: str, seed: int = 4) -> SimulatedEbz:
    rng = random.Random(seed)
    if layout == "full":
        return SimulatedEbz(rng=rng, power_w=600.0)
    if layout == "2R":
        return SimulatedEbz(
            rng=rng, ident="EBZ5DD32R06ETA_107", export_kwh=1.206, voltages=False, pv_w=900.0
        )
    if layout == "2R-msb":
        return SimulatedEbz(rng=rng, ident="EBZ5DD32R06DTA_107", export_kwh=2.152, pv_w=900.0)
    if layout == "reduced":
        return SimulatedEbz(rng=rng, reduced=True, export_kwh=46.9)
    if layout == "tariffs":  # DTA with tariffs both ways, a property number in 0.0.0
        return SimulatedEbz(
            rng=rng,
            ident="EBZ5DD32R06DTA_107",
            energy_kwh=2.66313813,
            export_kwh=2.152,
            pv_w=900.0,
            tariffs=True,
            export_tariffs=True,
            property_number="123456",
        )
    raise AssertionError(layout)


LAYOUTS = ("full", "2R", "2R-msb", "reduced", "tariffs")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_cached_parser_matches_parse_on_every_simulator_layout(layout: str) -> None:
    meter = sim(layout)
    parser = TelegramParser()
    signs = set()
    for _ in range(1500):
        raw = meter.next_telegram()
        fast, slow = parser.parse(raw), parse(raw)
        assert fast == slow
        assert fast.energy["1.8.0"].units == (
            meter.energy_units // 10**8 if layout == "reduced" else meter.energy_units
        )
        if layout != "reduced":
            assert fast.power["16.7.0"] == meter.power_cw
            signs.add(meter.power_cw < 0)
        if layout == "tariffs":
            assert fast.ids == ("123456", meter.meter_id)
            sums = {s.total: s for s in fast.tariffs}
            assert sums["1.8.0"].registers == meter.tariff_units("1.8")
            assert sums["2.8.0"].registers == meter.tariff_units("2.8")
            assert sums["1.8.0"].left == meter.energy_units - sum(meter.tariff_units()) * 10**5
        else:
            assert fast.ids == (meter.meter_id, meter.meter_id)
    if layout.startswith("2R") or layout == "tariffs":
        assert signs == {True, False}  # both import and export went through the fast path


def test_the_cache_follows_layout_changes() -> None:
    meter = sim("full")
    parser = TelegramParser(cache_size=1)
    for i in range(60):
        meter.set_layout(reduced=i % 3 == 0, voltages=i % 2 == 0)
        raw = meter.next_telegram()
        assert parser.parse(raw) == parse(raw)


def _outcome(parser_parse, raw: bytes) -> Telegram | Reason:  # type: ignore[no-untyped-def]
    try:
        return parser_parse(raw)
    except TelegramError as e:
        return e.reason


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_warm_cache_rejects_exactly_what_parse_rejects(layout: str) -> None:
    """Damaged telegrams (the link corruptions plus random byte changes) against a parser
    that has cached the layout: same telegram or same reason, never a silent difference."""
    meter = sim(layout)
    rng = random.Random(layout)
    parser = TelegramParser()
    parser.parse(meter.next_telegram())
    kinds = [k for k in CORRUPTIONS if not (layout == "reduced" and k == "power_digit")]
    for i in range(1200):
        clean = meter.next_telegram()
        if i % 2:
            damaged = decode_7e1(corrupt(encode_7e1(clean), kinds[i % len(kinds)], rng))
        else:
            pos = rng.randrange(1, len(clean))
            damaged = clean[:pos] + bytes([rng.randrange(0x20, 0x7F)]) + clean[pos + 1 :]
        assert _outcome(parser.parse, damaged) == _outcome(parse, damaged), damaged
        assert parser.parse(clean) == parse(clean)


# --- each rejection reason from a minimal realistic damage ---------------------------------------


def _damage(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) >= 1, old
    return raw.replace(old, new, 1)


DAMAGES: list[tuple[str, bytes, bytes, Reason]] = [
    (
        "bit error (parity marker)",
        b"(000179",
        bytes([0x28, PARITY_ERROR]) + b"00179",
        Reason.PARITY,
    ),
    ("break byte NUL", b"(000179", b"(\x00" + b"00179", Reason.CHARSET),
    ("DEL byte", b"*kWh", b"*k\x7fh", Reason.CHARSET),
    ("bare LF before the end mark", b")\r\n!\r\n", b")\n!\r\n", Reason.STRUCTURE),
    ("bare LF inside", b"kWh)\r\n", b"kWh)\n", Reason.GRAMMAR),
    ("missing blank line", b"_107\r\n\r\n", b"_107\r\n", Reason.STRUCTURE),
    ("end mark cut", b")\r\n!\r\n", b")\r\n!", Reason.STRUCTURE),
    ("two blank lines", b"_107\r\n\r\n", b"_107\r\n\r\n\r\n", Reason.GRAMMAR),
    ("bad ident", b"/EBZ5DD3", b"/EB5DD3", Reason.GRAMMAR),
    ("lost bracket", b"(000179.62*W)", b"(000179.62*W", Reason.GRAMMAR),
    ("bad character in a value", b"(005267.03", b"(005267.O3", Reason.VALUE),
    ("duplicate code", b"1-0:16.7.0*255", b"1-0:36.7.0*255", Reason.DUPLICATE),
    ("energy unit kW", b"*kWh)", b"*kW)", Reason.VALUE),
    ("power unit Wh", b"62*W)", b"62*Wh)", Reason.VALUE),
    ("power with one decimal", b"(000179.62*W)", b"(0000179.6*W)", Reason.VALUE),
    ("voltage with two decimals", b"(232.3*V)", b"(32.30*V)", Reason.VALUE),
    ("negative energy", b"(005267.", b"(-05267.", Reason.VALUE),
    ("lower-case hex seconds", b"(02792C83)", b"(02792c83)", Reason.VALUE),
    ("unit on the seconds", b"(02792C83)", b"(02792C83*s)", Reason.VALUE),
    ("bad status word", b"(001C0104)", b"(001C01-4)", Reason.VALUE),
    ("bad meter id", b"*255(1EBZ01", b"*255(1EBZ.1", Reason.VALUE),
]


@pytest.mark.parametrize(
    ("old", "new", "reason"), [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES]
)
def test_each_damage_is_rejected_with_its_reason(old: bytes, new: bytes, reason: Reason) -> None:
    raw = ahpohl()[0]
    damaged = _damage(raw, old, new)
    with pytest.raises(TelegramError) as info:
        parse(damaged)
    assert info.value.reason is reason
    # A parser with this layout cached finds the same.
    parser = TelegramParser()
    parser.parse(raw)
    with pytest.raises(TelegramError) as cached:
        parser.parse(damaged)
    assert cached.value.reason is reason


def test_the_same_damages_on_a_simulated_telegram() -> None:
    raw = SimulatedEbz(rng=random.Random(0)).next_telegram()
    ident_raw = parse(raw)
    seconds = ident_raw.values["96.8.0"].encode()
    energy = ident_raw.values["1.8.0"].encode()
    for old, new, reason in [
        (b"\r\n\r\n", b"\r\n", Reason.STRUCTURE),
        (b")\r\n!", b")\n!", Reason.STRUCTURE),
        (b"(" + seconds + b")", b"(" + seconds.lower() + b"x)", Reason.VALUE),
        (b"(" + energy + b"*kWh)", b"(" + energy + b"*Wh)", Reason.VALUE),
        (b"1-0:56.7.0", b"1-0:36.7.0", Reason.DUPLICATE),
    ]:
        with pytest.raises(TelegramError) as info:
            parse(_damage(raw, old, new))
        assert info.value.reason is reason, (old, new)


# --- salvage -------------------------------------------------------------------------------------


def test_salvage_returns_the_intact_lines_of_a_damaged_telegram() -> None:
    raws = ahpohl()
    like = parse(raws[0])
    truth = parse(raws[1])
    damaged = raws[1].replace(b"(000079.74*W)", bytes([0x28, 0x30, PARITY_ERROR]) + b"0079.74*W)")
    with pytest.raises(TelegramError):
        parse(damaged)
    w = salvage(damaged, like)
    assert w is not None
    assert w.seconds == truth.seconds
    assert w.energy == truth.energy
    assert w.power == {k: v for k, v in truth.power.items() if k != "36.7.0"}
    assert w.volts == truth.volts
    assert w.layout == like.layout and w.meter_id == like.meter_id


def test_salvage_of_a_repeated_identical_line_keeps_its_value() -> None:
    raws = ahpohl()
    line = b"1-0:1.8.0*255(005267.03054583*kWh)\r\n"
    damaged = raws[1].replace(line, line + line)
    with pytest.raises(TelegramError) as info:
        parse(damaged)
    assert info.value.reason is Reason.DUPLICATE
    w = salvage(damaged, parse(raws[0]))
    assert w is not None and w.energy == parse(raws[1]).energy


def test_salvage_gives_nothing_for_conflicting_duplicates() -> None:
    raws = ahpohl()
    line = b"1-0:1.8.0*255(005267.03054583*kWh)\r\n"
    other = b"1-0:1.8.0*255(005267.03054683*kWh)\r\n"
    assert salvage(raws[1].replace(line, line + other), parse(raws[0])) is None


def test_salvage_of_a_cut_telegram_has_no_seconds() -> None:
    raws = ahpohl()
    cut = raws[1][:200]  # up to the middle of the phase lines
    w = salvage(cut, parse(raws[0]))
    assert w is not None
    assert w.seconds is None
    assert w.energy == parse(raws[1]).energy
    assert set(w.power) <= {"16.7.0", "36.7.0", "56.7.0", "76.7.0"}


def test_salvage_refuses_another_meter_or_ident() -> None:
    raws = ahpohl()
    like = parse(raws[0])
    meter_id = capture_id(raws[1]).encode()
    other_id = raws[1].replace(meter_id, meter_id[:-2] + b"99" if meter_id[-2:] != b"99" else b"00")
    assert salvage(other_id + b"\xff", like) is None
    other_ident = raws[1].replace(b"/EBZ5DD3BZ06ETA_107", b"/EBZ5DD3BZ06ETA_108")
    assert salvage(other_ident, like) is None


def test_salvage_skips_lines_that_parse_but_do_not_fit_the_layout() -> None:
    raws = ahpohl()
    # A lost digit: still a number, but one digit short of the layout's width.
    damaged = raws[1].replace(b"(000178.72*W)", b"(00178.72*W)")
    w = salvage(damaged, parse(raws[0]))
    assert w is not None
    assert "16.7.0" not in w.power
    assert w.energy == parse(raws[1]).energy


def test_no_capture_line_contains_a_slash() -> None:
    """The framer's restart rule relies on it (meters.md §8.1)."""
    for name in EBZ_TEXT_CAPTURES:
        for raw in capture_telegrams(name):
            assert raw.count(b"/") == 1 and raw.startswith(b"/")
            assert re.fullmatch(rb"[\x20-\x7e\r\n]*", raw)


def test_a_value_lost_between_its_brackets_is_a_telegram_error_never_a_crash() -> None:
    """Bytes lost exactly across one value leave "()" or "(*W)": on every line of a real
    telegram that is a rejection with a reason, never another exception (which would end
    the meter thread: exit 70 and a restart loop while the damage lasts)."""
    import re as _re

    from agent.meter.telegram import TelegramError, parse
    from tests.harness.paths import read_capture, split_telegrams

    raw = split_telegrams(read_capture("ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"))[0]
    values = list(_re.finditer(rb"\(([^()*]*)(\*[A-Za-z]+)?\)", raw))
    assert len(values) >= 10
    for m in values:
        damaged = raw[: m.start(1)] + raw[m.end(1) :]  # the value gone, its unit kept
        try:
            parse(damaged)
        except TelegramError:
            continue
        line = damaged[damaged.rfind(b"\n", 0, m.start()) + 1 : m.start()]
        raise AssertionError(f"accepted with an empty value: {line!r}")
