"""The generic OBIS text grammar on every text capture: exactly the values they carry, the
eBZ's under the eBZ's own parser too, and the forms the captures show (idents with spaces
and enhanced-id sequences, letter and two-group codes, historic registers, several values
per line, units or none)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agent.meter.d0.framing import ETX, STX, D0Frame, bcc
from agent.meter.d0.grammar import D0Error, D0Parser, Reason, parse
from agent.meter.telegram import parse as parse_ebz
from tests.harness.paths import split_telegrams
from tests.meter.d0.helpers import ACE3000, E350, EBZ_TEXT, MT174, Q3DA, Q3DB, capture, frames


def only(name: str):
    got, _ = frames(capture(name))
    assert len(got) == 1
    return got[0]


def test_easymeter_q3da1004() -> None:
    t = D0Parser().parse(only(Q3DA))
    assert t.ident == "/ESY5Q3DA1004 V3.04" and t.maker == "ESY" and not t.bcc
    assert t.values == {
        "0.0.0": "1336001560",
        "1.8.0": "00032549.5061662",
        "21.7.0": "000557.29",
        "41.7.0": "000521.62",
        "61.7.0": "000609.30",
        "1.7.0": "001688.21",
        "96.5.5": "80",
        "96.1.255": "1ESY1336001560",
    }
    assert t.energy == {"1.8.0": Decimal("32549.5061662")}
    assert t.power["1.7.0"] == Decimal("1688.21")
    assert t.meter_id == "1336001560" and t.ids == ("1336001560", "1ESY1336001560")
    assert t.seconds is None and t.volts == {}
    assert t.layout == (
        "/ESY5Q3DA1004 V3.04",
        "1-0:0.0.0*255 10.0 None",
        "1-0:1.8.0*255 8.7 kWh",
        "1-0:21.7.0*255 6.2 W",
        "1-0:41.7.0*255 6.2 W",
        "1-0:61.7.0*255 6.2 W",
        "1-0:1.7.0*255 6.2 W",
        "1-0:96.5.5*255 2.0 None",
        "0-0:96.1.255*255 9ESY9999999999 None",
    )


def test_the_easymeter_phase_sum_is_exact_on_both_captures() -> None:
    """The evidence for check.PHASE_SUMS["ESY"]: 1.7.0 = 21.7.0 + 41.7.0 + 61.7.0 exactly."""
    for name in (Q3DA, Q3DB):
        p = parse(only(name).raw, False, False).power
        assert p["1.7.0"] == p["21.7.0"] + p["41.7.0"] + p["61.7.0"]


def test_easymeter_q3db1024_has_two_directions_and_ids_that_differ() -> None:
    t = parse(only(Q3DB).raw, False, False)
    assert t.energy == {"1.8.0": Decimal("52185.7825309"), "2.8.0": Decimal("19949.3221493")}
    # 0.0.0 and 96.1.255 are different numbers on this meter: never compared with each other.
    assert t.ids == ("0272031312565", "1ESY1313002565") and t.meter_id == "0272031312565"


def test_iskra_mt174_readout() -> None:
    frame = only(MT174)
    t = D0Parser().parse(frame)
    assert t.bcc and t.ident == "/ISk5MT174-0002" and t.maker == "ISK"
    assert t.values == {
        "0.9.2": "0220127",
        "0.9.1": "105644",
        "1.8.0": "0000502.853",
        "2.8.0": "0098697.318",
    }
    assert t.energy == {"1.8.0": Decimal("502.853"), "2.8.0": Decimal("98697.318")}
    assert t.meter_id == "" and t.ids == ()


def test_landis_gyr_e350_content_with_letter_and_two_group_codes() -> None:
    """The capture's content, its line ends restored (the fixture's LF LF are CR LF turned
    into LF by the tty, inferred) and an ETX + BCC appended (computed here: the fixture ends
    at '!'). Only the content is tested; the real bytes are in test_framing."""
    data = capture(E350).replace(b"\n\n", b"\r\n") + b"\r\n" + bytes([ETX])
    body = data[data.index(STX) + 1 :]
    t = D0Parser().parse(D0Frame(data + bytes([bcc(body)]), stx=True))
    assert t.ident == "/LGZ4ZMF100AC.M27"
    assert t.values["F.F"] == "00"
    assert t.values["0.0"] == "        18438636"  # spaces inside a value
    assert t.values["C.1.1"] == "        "
    assert t.values["C.7.0"] == "0004" and t.values["0.2.0"] == "M27"
    assert t.meter_id == "18438636" and t.ids == ("18438636", "18438636")  # C.1.0, 0.0
    assert t.energy == {
        "1.8.1": Decimal("0.000"),
        "1.8.2": Decimal("219.251"),
        "2.8.1": Decimal("0.000"),
        "2.8.2": Decimal("0.000"),
        "1.8.0": Decimal("219.252"),
        "2.8.0": Decimal("0.000"),
        "15.8.0": Decimal("219.252"),
    }
    assert t.volts == {"32.7": 2330, "52.7": 2330, "72.7": 2340}
    assert t.power == {"16.7": Decimal("1660")}  # 1.66 kW
    assert "82.8.1" not in t.energy  # no unit: not an energy register
    assert t.layout[1:3] == ("F.F 2.0 None", "0.0         99999999 None")


def test_the_ace3000_garbage_fails_the_grammar_too() -> None:
    """Its BCC already fails (test_framing); were the BCC not checked, the garbage before
    '!' would still be refused."""
    with pytest.raises(D0Error) as e:
        parse(only(ACE3000).raw, True, False)
    assert e.value.reason is Reason.CHARSET


@pytest.mark.parametrize("name", EBZ_TEXT)
def test_ebz_text_captures_parse_to_the_ebz_parsers_values(name: str) -> None:
    telegrams = split_telegrams(capture(name))
    assert telegrams
    for raw in telegrams:
        t = D0Parser().parse(D0Frame(raw, stx=False))
        ebz = parse_ebz(raw)
        assert t.values == ebz.values and t.ident == ebz.ident and t.volts == ebz.volts
        assert t.seconds == ebz.seconds and t.ids == ebz.ids[::-1]  # 96.1.0 first here
        assert t.meter_id == ebz.meter_id
        assert {k: v * 100 for k, v in t.power.items()} == ebz.power
        assert {k: Decimal(v.units).scaleb(-v.decimals) for k, v in ebz.energy.items()} == t.energy


def test_idents() -> None:
    dsmr_iskra = capture("dsmr_v50_iskra_am550_2mbus_crc56DD_dsmr_parser-fixture.txt")
    idents = [
        dsmr_iskra.split(b"\r\n")[0],  # /ISK5\2M550T-1012: the text \2
        b"/ACE0\\3k260V01.19",
        b"/ESY5Q3DA1004 V3.04",
        b"/LGZ4ZMF100AC.M27",
    ]
    assert idents[0] == b"/ISK5\\2M550T-1012"
    for ident in idents:
        assert parse(ident + b"\r\n\r\n1.8.0(1*kWh)\r\n!\r\n", False, False).ident == ident.decode()
    for bad in (b"/?!", b"/AB5X", b"/ABCxX", b"/ABC5", b"/ABC5" + b"X" * 33, b"/ABC5a/b"):
        with pytest.raises(D0Error) as e:
            parse(bad + b"\r\n\r\n1.8.0(1*kWh)\r\n!\r\n", False, False)
        assert e.value.reason is Reason.IDENT


def test_historic_registers_several_values_and_keys() -> None:
    raw = (
        b"/ABC5X\r\n\r\n"
        b"1-0:1.8.0*255(000100.5*kWh)\r\n"
        b"1-0:1.8.0*96(000090.0*kWh)\r\n"
        b"1-0:1.8.0*01(000080.0*kWh)\r\n"
        b"1.6.0(02.345*kW)(2301011200)\r\n"
        b"0-0:1.8.0(000001.0*kWh)\r\n"
        b"1-0:16.7.0(-000123.456789*W)\r\n"
        b"!\r\n"
    )
    t = parse(raw, False, False)
    assert t.values == {
        "1.8.0": "000100.5",
        "1.8.0*96": "000090.0",
        "1.8.0*1": "000080.0",
        "1.6.0": "02.345",
        "0-0:1.8.0": "000001.0",
        "16.7.0": "-000123.456789",
    }
    # A historic register is no current one; another A-B's current one is, under its label.
    assert t.energy == {"1.8.0": Decimal("100.5"), "0-0:1.8.0": Decimal("1.0")}
    assert t.power == {"16.7.0": Decimal("-123.456789")}
    assert t.layout[4] == "1.6.0 2.3|10.0 kW|"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"1-0:1.8.0*255(000100.5*kWh)\r\n1-0:1.8.0*255(000100.5*kWh)", Reason.DUPLICATE),
        (b"1-0:1.8.0*255(-00100.5*kWh)", Reason.VALUE),
        (b"1-0:1.8.0*255(0001x0.5*kWh)", Reason.VALUE),
        (b"1-0:16.7.0*255(12.3.4*W)", Reason.VALUE),
        (b"1-0:1.8.0*255(000100.123456789*kWh)", Reason.VALUE),  # 9 decimals
        (b"1-0:1.8.0*255(000100.5*kWh", Reason.GRAMMAR),
        (b"1-0:1.8.0*255(00/100.5*kWh)", Reason.GRAMMAR),
        (b"1-0:1.8*0*255(000100.5*kWh)", Reason.GRAMMAR),
        (b"1-0:1.8.0*255(000100.5*kWh)\x01", Reason.CHARSET),
        (b"1-0:1.8.0*255(000100.5*kWh)\xff", Reason.PARITY),
    ],
)
def test_bad_lines(line: bytes, reason: Reason) -> None:
    with pytest.raises(D0Error) as e:
        parse(b"/ABC5X\r\n\r\n" + line + b"\r\n!\r\n", False, False)
    assert e.value.reason is reason


@pytest.mark.parametrize(
    "raw",
    [
        b"/ABC5X\r\n1.8.0(1*kWh)\r\n!\r\n",  # no empty line after the ident
        b"/ABC5X\r\n\r\n1.8.0(1*kWh)\r\n!",  # no CR LF after '!'
        b"/ABC5X\r\n\r\n1.8.0(1*kWh)!\r\n",  # no CR LF before '!'
        b"/ABC5X\r\n\r\n!\r\n",  # no data line
        b"/ABC5X",
    ],
)
def test_bad_structure(raw: bytes) -> None:
    with pytest.raises(D0Error) as e:
        parse(raw, False, False)
    assert e.value.reason is Reason.STRUCTURE


def test_one_layout_object_while_it_stays() -> None:
    parser = D0Parser()
    a = parser.parse(only(Q3DA))
    b = parser.parse(D0Frame(only(Q3DA).raw.replace(b"001688.21", b"001688.22"), stx=False))
    assert a.layout is b.layout


def _gh305(blank_lines: int, stx: bool = True) -> bytes:
    """The ZPA GH305's frame shape as the bridge forwards it (tibber-bridge.md §4.2:
    `/ZPA5GH305.v2-21.00-G\\r\\n\\r\\n\\x021-0:C.1.0*255(1ZPA…)\\r\\n…!\\r\\n\\x03` + BCC); the
    id is invented, the lines after C.1.0 too (the capture elides them)."""
    body = b"1-0:C.1.0*255(1ZPA0099000004)\r\n1-0:1.8.0*255(004321.123*kWh)\r\n!\r\n\x03"
    head = b"/ZPA5GH305.v2-21.00-G\r\n" + b"\r\n" * blank_lines
    return head + bytes([STX]) + body + bytes([bcc(body)]) if stx else head + body[:-1]


def test_the_zpa_gh305_blank_line_before_stx() -> None:
    """One blank line between the ident line and STX is the GH305's shape; it is part of the
    layout (outside the BCC, like the ident line), so a frame that lost it is another
    layout."""
    t = parse(_gh305(1), True, True)
    assert t.ident == "/ZPA5GH305.v2-21.00-G" and t.meter_id == "1ZPA0099000004"
    assert t.energy == {"1.8.0": Decimal("4321.123")}
    without = parse(_gh305(0), True, True)
    assert without.values == t.values and without.ident == t.ident
    assert without.layout != t.layout and without.layout[1:] == t.layout[1:]


@pytest.mark.parametrize(
    "raw",
    [
        _gh305(2),  # a repeated blank line
        _gh305(1).replace(b"\r\n\r\n\x02", b"\r\n \r\n\x02"),  # a blank line that is not empty
        _gh305(1).replace(b"\r\n\r\n\x02", b"\r\n\n\x02"),  # its CR lost
        _gh305(1).replace(b"\r\n\r\n\x02", b"\r\n\r\x02"),  # its LF lost
    ],
)
def test_anything_else_between_the_ident_and_stx_is_refused(raw: bytes) -> None:
    with pytest.raises(D0Error) as e:
        parse(raw, True, True)
    assert e.value.reason is Reason.STRUCTURE
