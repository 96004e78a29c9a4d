"""The SML decoder: the real captures' values exactly as documented, a real TLV walk (not a
pattern search), and nothing but SmlError for anything malformed."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from agent.meter.sml.check import SmlChecker
from agent.meter.sml.decode import (
    GET_LIST_RESPONSE,
    MAX_DEPTH,
    SmlError,
    SmlReading,
    SmlValue,
    decode,
    obis_key,
    parse_element,
)
from agent.meter.sml.pipeline import SmlFrameReading, SmlPipeline
from agent.meter.sml.simulate import (
    SERVER_ID,
    Raw,
    Signed,
    SimulatedSml,
    Unsigned,
    encode,
    message,
    tl,
    transport,
)
from agent.meter.sml.transport import Reason, SmlFrame, SmlFramer
from agent.meter.validation import Outcome
from tests.meter.sml.test_transport import DZG, EBZ_BZ06, EBZ_FULL, EBZ_SMZ1, Q3A, capture


def readings(name: str) -> list[SmlReading]:
    out = SmlFramer().feed(capture(name))
    return [decode(o.file) for o in out if isinstance(o, SmlFrame)]


def values(r: SmlReading) -> dict[str, str]:
    return {k.partition(":")[2].partition("*")[0]: v.text() for k, v in r.values.items()}


def test_the_full_resolution_ebz_frame() -> None:
    (r,) = readings(EBZ_FULL)
    assert r.server_id == bytes(10)  # zeroed by its publisher
    assert r.seconds == 3_064_820  # actSensorTime secIndex
    energy = r.values["1-0:1.8.0*255"]
    # Wh with scaler -5 (10 uWh), unit 30; status 0x010180 (meters.md §11, question 4)
    assert (energy.raw, energy.scaler, energy.unit) == (45009189911, -5, 30)
    assert energy.status == 0x010180
    assert energy.decimal() == Decimal("450091.89911")
    power = r.values["1-0:16.7.0*255"]
    assert (power.scaler, power.unit) == (-2, 27)
    assert values(r) == {
        "199.130.3": "45425a",  # "EBZ"
        "0.0.9": "00000000000000000000",
        "1.8.0": "450091.89911",
        "1.8.1": "449074.89911",
        "1.8.2": "1017.00000",
        "2.8.0": "2198.00000",
        "16.7.0": "352.89",
        "36.7.0": "82.26",
        "56.7.0": "27.06",
        "76.7.0": "243.57",
    }
    phases = sum(r.values[f"1-0:{c}.7.0*255"].decimal() for c in (36, 56, 76))
    assert phases == power.decimal()


def test_the_reduced_ebz_frames_count_whole_kwh_and_carry_no_power() -> None:
    rs = readings(EBZ_SMZ1)
    assert [r.seconds for r in rs] == [104569093, 104569094, 104569095, 104569096]
    for r in rs:
        assert r.server_id.hex() == "090145425a010002ec3b"
        assert r.values["1-0:1.8.0*255"].scaler == 3  # Wh x 1000: whole kWh
        assert values(r)["1.8.0"] == "13024000" and values(r)["2.8.0"] == "1000"
        assert "16.7.0" not in values(r)
    rs = readings(EBZ_BZ06)
    assert [values(r)["1.8.0"] for r in rs] == ["4469000", "4469000"]
    assert [r.seconds for r in rs] == [44780538, 44780539]
    assert not {"2.8.0", "16.7.0"} & set(values(rs[0]))


def test_the_dzg_generator_meter_sends_negative_power_in_two_bytes() -> None:
    rs = readings(DZG)
    assert [values(r)["16.7.0"] for r in rs] == ["-105.50", "-106.78", "-104.38"]
    assert [r.seconds for r in rs] == [9513016, 9513017, 9513018]
    assert [values(r)["2.8.0"] for r in rs] == ["1500321.3", "1500321.4", "1500321.4"]
    # Encoded as a 2-byte signed integer (53 xx xx) right before its signature.
    frame = capture(DZG)[:252]
    raw = rs[0].values["1-0:16.7.0*255"].raw
    assert isinstance(raw, int) and b"\x53" + raw.to_bytes(2, "big", signed=True) in frame


def test_the_easymeter_frames_that_survived_the_byte_loss() -> None:
    rs = readings(Q3A)
    # Two frames lost in between (the 499 and 490 B ones): the seconds index says so.
    assert [r.seconds for r in rs] == [16310127, 16310128, 16310131, 16310132]
    first = values(rs[0])
    assert first["1.8.0"] == "2941646.1614" and first["2.8.0"] == "110073.1603"
    assert (first["16.7.0"], first["32.7.0"], first["52.7.0"]) == ("810.26", "232.5", "230.7")
    assert rs[0].values["1-0:32.7.0*255"].unit == 35  # V
    # A 48-byte octet string (its public key) needs a two-byte type-length field.
    assert len(rs[0].values["129-129:199.130.5*255"].raw) == 48


def test_a_value_holding_the_bytes_of_a_list_entry_is_not_taken_for_one() -> None:
    """SmlLib issue #8: a byte-pattern search for `77 07 01` found an entry inside a value."""
    fake = bytes.fromhex("77070100010800ff") + bytes.fromhex("0101621e52ff690000000000000001")
    meter = SimulatedSml(rng=random.Random(1))
    meter.next_frame()
    # The manufacturer entry's octets "EBZ" become the fake; message CRCs are not checked.
    assert meter.last_file.count(b"\x04EBZ") == 1
    r = decode(meter.last_file.replace(b"\x04EBZ", encode(fake)))
    assert r.values["129-129:199.130.3*255"].raw == fake
    assert values(r)["1.8.0"] == values(decode(meter.last_file))["1.8.0"]
    assert len(r.values) == len(decode(meter.last_file).values)


def test_long_type_length_fields_round_trip() -> None:
    for size in (0, 13, 14, 15, 16, 200, 253, 254, 255, 300, 4000):
        data = bytes(range(256)) * 16
        item = data[:size]
        encoded = encode(item)
        value, end = parse_element(encoded, 0)
        assert (value if size else b"") == item and end == len(encoded), size
    for n in (15, 16, 40):
        encoded = encode(list(range(n)))
        value, end = parse_element(encoded, 0)
        assert value == list(range(n)) and end == len(encoded)


def test_integers_of_every_size_and_sign() -> None:
    for size in range(1, 9):
        for v in (0, 1, -1, (1 << (8 * size - 1)) - 1, -(1 << (8 * size - 1))):
            assert parse_element(encode(Signed(v, size)), 0)[0] == v
        top = (1 << (8 * size)) - 1
        assert parse_element(encode(Unsigned(top, size)), 0)[0] == top
    assert parse_element(b"\x42\x01", 0)[0] is True


def test_exact_decimals() -> None:
    assert SmlValue(45009189911, -5).decimal() == Decimal("450091.89911")
    assert SmlValue(13024, 3).text() == "13024000"
    assert SmlValue(-10550, -2).text() == "-105.50"
    assert SmlValue((1 << 64) - 1, -5).text() == "184467440737095.51615"  # no rounding


def _file(entries: list[Raw], server_id: bytes = SERVER_ID, seconds: int | None = 5) -> bytes:
    time = None if seconds is None else [1, Unsigned(seconds, 4)]
    body = [None, server_id, None, time, list(entries), None, None]
    return message(b"\x01", 0, GET_LIST_RESPONSE, body)


TENTHS = Signed(-1, 1)  # the scaler -1 as meters send it: 52 FF


def _entry(
    name: bytes,
    value: int | bytes | Signed | Unsigned,
    val_time: int | None = None,
    unit: int | Signed | Unsigned = 30,
    scaler: int | Signed | Unsigned = TENTHS,
) -> Raw:
    t = encode(None) if val_time is None else encode([1, Unsigned(val_time, 4)])
    tail = encode(unit) + encode(scaler) + encode(value) + encode(None)
    return Raw(tl(0x70, 7) + encode(name) + encode(None) + t + tail)


E180 = bytes.fromhex("0100010800ff")


def test_the_seconds_come_from_a_val_time_when_the_list_has_none() -> None:
    r = decode(_file([_entry(E180, 7, val_time=1234)], seconds=None))
    assert r.seconds == 1234 and values(r) == {"1.8.0": "0.7"}
    assert decode(_file([_entry(E180, 7)], seconds=None)).seconds is None


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        (b"", Reason.TRUNCATED),
        (b"\x00", Reason.STRUCTURE),
        (message(b"\x01", 0, 0x0201, [None]), Reason.NO_VALUES),
        (_file([_entry(E180, 1), _entry(E180, 2)]), Reason.DUPLICATE),
        (_file([_entry(E180[:5], 1)]), Reason.OBIS),
        (_file([_entry(E180, 1)], server_id=None), Reason.STRUCTURE),  # type: ignore[arg-type]
        (_file([_entry(E180, 1)])[:-1], Reason.TRUNCATED),
        (_file([_entry(E180, 1)]) + b"\x77", Reason.STRUCTURE),
        (b"\x76" + b"\x01" * 5 + b"\x01", Reason.STRUCTURE),  # no 00 at the end
        (b"\x76" + b"\x71" * (MAX_DEPTH + 5), Reason.STRUCTURE),
        (b"\x76\x01\x01\x01\x7f", Reason.TRUNCATED),
        (b"\x76\x01\x01\x01\x72\x63\x07\x01\x5a" + bytes(9), Reason.LENGTH),  # 9 bytes
        (b"\x76\x01\x01\x01\x72\x63\x07\x01\x50", Reason.LENGTH),  # an integer of 0 bytes
        (b"\x76\x01\x01\x01\x72\x63\x07\x01\x22\x00", Reason.TYPE),
        (b"\x76\x01\x01\x01\x72\x63\x07\x01\x43\x01\x01", Reason.LENGTH),  # a 2-byte bool
        (b"\x76\x8f\x8f\x8f\x8f\x01" + bytes(8), Reason.LENGTH),
        (b"\x76\x8f\x1f" + bytes(8), Reason.TYPE),  # a continued TL byte with type bits
    ],
)
def test_malformed_files_raise_sml_error_with_the_reason(file: bytes, reason: Reason) -> None:
    with pytest.raises(SmlError) as e:
        decode(file)
    assert e.value.reason is reason, e.value


def test_a_register_by_its_short_code() -> None:
    (r,) = readings(EBZ_FULL)
    power = r.register("16.7.0")
    assert power is not None and power.text() == "352.89"
    assert r.register("1.8.0") is r.values["1-0:1.8.0*255"]
    assert r.register("32.7.0") is None


def test_obis_key() -> None:
    assert obis_key(bytes.fromhex("0100010800ff")) == "1-0:1.8.0*255"
    assert obis_key(bytes.fromhex("8181c78203ff")) == "129-129:199.130.3*255"


def _real_files() -> list[bytes]:
    files = []
    for name in (EBZ_FULL, EBZ_SMZ1, EBZ_BZ06, DZG, Q3A):
        files += [o.file for o in SmlFramer().feed(capture(name)) if isinstance(o, SmlFrame)]
    return files


def test_fuzz_only_sml_error_escapes() -> None:
    """Random bytes, every truncation and bit flips of the real files, and random splices:
    decode either returns a reading or raises SmlError, nothing else (no IndexError,
    RecursionError, TypeError...)."""
    rng = random.Random(8)
    files = _real_files()
    meter = SimulatedSml(rng=rng, escape_value=True)
    files += [(meter.next_frame(), meter.last_file)[1] for _ in range(5)]
    cases: list[bytes] = []
    for f in files:
        cases += [f[:n] for n in range(len(f))]
        cases += [f[n:] for n in range(0, len(f), 7)]
        for _ in range(300):
            b = bytearray(f)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            cases.append(bytes(b))
    for _ in range(3000):
        cases.append(rng.randbytes(rng.randint(0, 400)))
        cases.append(b"\x76" + rng.randbytes(rng.randint(0, 100)))
        cases.append(
            bytes(
                rng.choice(b"\x01\x02\x42\x52\x62\x71\x72\x76\x77\x8f\xf1\x00")
                for _ in range(rng.randint(1, 60))
            )
        )
    decoded = 0
    for case in cases:
        try:
            decode(case)
            decoded += 1
        except SmlError:
            pass
    assert len(cases) > 20000 and decoded > 0


# SML_ListEntry types (SML 1.04): the scaler is an Integer8, the unit an Unsigned8. Stated
# here from the standard, not imported, so the tests hold the decoder to it.
INTEGER8 = range(-128, 128)
UNSIGNED8 = range(256)
E327 = bytes.fromhex("0100200700ff")  # 32.7.0, voltage L1


@pytest.mark.parametrize(
    ("unit", "scaler"),
    [
        (30, Signed(1 << 62, 8)),  # hung the checker: 10 ** (digit - 2**62)
        (30, Signed(2_000_000, 4)),  # 0.8 s of CPU per frame in the checker
        (35, Signed(10**7, 8)),  # volts: decimal.Overflow in the reader's thread
        (30, Signed(128, 2)),
        (30, Signed(-129, 2)),
        (30, Unsigned(128, 1)),  # 62 80: unsigned, so +128, not -128
        (Unsigned(256, 2), Signed(-1, 1)),
        (Signed(-1, 1), Signed(-1, 1)),
        (Unsigned(1 << 40, 8), Signed(-1, 1)),
    ],
)
def test_a_scaler_or_unit_outside_its_sml_type_is_rejected(
    unit: int | Signed | Unsigned, scaler: Signed | Unsigned
) -> None:
    with pytest.raises(SmlError) as e:
        decode(_file([_entry(E180, 7, unit=unit, scaler=scaler)]))
    assert e.value.reason is Reason.TYPE, e.value
    assert "1-0:1.8.0*255" in str(e.value)  # names the entry


def test_the_extremes_of_a_scaler_and_a_unit_decode() -> None:
    for scaler in (-128, 127):
        for unit in (0, 255):
            r = decode(_file([_entry(E180, 7, unit=unit, scaler=Signed(scaler, 1))]))
            value = r.values["1-0:1.8.0*255"]
            assert (value.scaler, value.unit) == (scaler, unit)
            assert value.decimal() == Decimal(f"7E{scaler}")


def test_a_scaler_out_of_range_after_a_reference_is_rejected_by_the_pipeline() -> None:
    """The reviewer's case: a valid-CRC DZG frame whose 1.8.0 scaler is 2**62, after a good
    frame. It must be rejected (TYPE) at once, not hang or crash the meter thread."""
    files = [o.file for o in SmlFramer().feed(capture(DZG)) if isinstance(o, SmlFrame)]
    name = files[1].index(bytes.fromhex("0100010800ff"))
    at = files[1].index(bytes.fromhex("52ff"), name)  # its scaler, -1
    bad = files[1][:at] + encode(Signed(1 << 62, 8)) + files[1][at + 2 :]
    with pytest.raises(SmlError):  # fail fast here rather than hang below
        decode(bad)
    pipeline = SmlPipeline()
    results = pipeline.feed(transport(files[0]) + transport(bad) + transport(files[2]), 1.0)
    assert [r.verdict.outcome for r in results] == [
        Outcome.ACCEPTED,
        Outcome.REJECTED,
        Outcome.ACCEPTED,
    ]
    assert results[1].verdict.reason is Reason.TYPE


def _consume(reading: SmlReading, raw: bytes, checker: SmlChecker, arrived: float) -> None:
    """Everything the agent does with a decoded reading: check it, and on acceptance read
    what the outlets and the reader read (values, layout, voltages)."""
    verdict = checker.check(reading, SmlFrame(raw, b"", "x25"), arrived)
    shown = SmlFrameReading(raw, reading, {})
    _ = (verdict, shown.values, shown.layout, shown.volts, shown.meter_id)
    _ = [v.text() for v in reading.values.values()]


def test_fuzz_what_uses_a_decoded_reading_sees_nothing_but_sml_error() -> None:
    """Entries with random integers of every width and sign as scaler, unit and value, for
    energy (Wh), voltage (V) and power (W) codes: decode returns a reading only within the
    SML types, and the checker and the outlets' formatting take any such reading, after a
    good reference and as the first one, without raising."""
    rng = random.Random(15)
    edges = [0, 1, -1, 127, 128, -128, -129, 255, 256, 2_000_000, 10**7, 1 << 62, -(1 << 63)]

    def integer() -> Signed | Unsigned:
        pick = rng.random()
        if pick < 0.8:  # mostly near and inside the SML types, so that many files decode
            v = rng.choice(edges) if pick < 0.1 else rng.randint(-135, 135)
        else:
            v = rng.randint(-(1 << 63), (1 << 64) - 1)
        if v < 0 or rng.random() < 0.5:
            v = max(min(v, (1 << 63) - 1), -(1 << 63))
            size = next(s for s in range(1, 9) if -(1 << (8 * s - 1)) <= v < 1 << (8 * s - 1))
            return Signed(v, rng.randint(size, 8))
        size = next(s for s in range(1, 9) if v < 1 << (8 * s))
        return Unsigned(v, rng.randint(size, 8))

    good = decode(_file([_entry(E180, 10**9), _entry(E327, 2301)], seconds=5))
    decoded = rejected = 0
    for i in range(3000):
        entries = [
            _entry(
                name, integer(), unit=integer() if rng.random() < 0.3 else unit, scaler=integer()
            )
            for name, unit in ((E180, 30), (E327, 35), (bytes.fromhex("0100100700ff"), 27))
        ]
        file = _file(entries, seconds=rng.choice([5, 6, 1 << 31]))
        try:
            reading = decode(file)
        except SmlError as e:
            assert e.reason is Reason.TYPE, e
            rejected += 1
            continue
        decoded += 1
        for value in reading.values.values():  # before any arithmetic: a regression fails here
            assert value.scaler in INTEGER8 and (value.unit is None or value.unit in UNSIGNED8)
        after_good = SmlChecker()
        _consume(good, b"", after_good, 0.0)
        _consume(reading, file, after_good, 1.0 + i)
        first = SmlChecker()
        _consume(reading, file, first, 0.0)
        _consume(good, b"", first, 1.0)
    assert decoded > 300 and rejected > 300, (decoded, rejected)
