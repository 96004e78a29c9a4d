"""Software 7E1: the even-parity bit of every byte read at 8N1 is checked, then stripped."""

from __future__ import annotations

import ast
import random
import re

import pytest

from agent.meter.parity import PARITY_ERROR, decode_7e1, encode_7e1
from agent.meter.simulator import SimulatedEbz
from tests.harness.paths import read_capture, split_telegrams

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
INFO_8N1 = "ebz_dd3_2r06dta_info-reduced_8N1-view_fragments_node-red-contrib-smartmeter-issue41.txt"
ALL_7BIT = bytes(range(128))


def test_known_wire_bytes() -> None:
    # meters.md §7: '/' (five 1 bits) arrives as 0xAF, 'E' as 0xC5; '0' (two 1 bits) as is.
    assert encode_7e1(b"/E0\r\n!") == bytes([0xAF, 0xC5, 0x30, 0x8D, 0x0A, 0x21])


def test_every_7bit_character_round_trips_with_even_parity() -> None:
    wire = encode_7e1(ALL_7BIT)
    assert all(bin(b).count("1") % 2 == 0 for b in wire)
    assert bytes(b & 0x7F for b in wire) == ALL_7BIT
    assert decode_7e1(wire) == ALL_7BIT


def test_encode_refuses_8bit_text() -> None:
    with pytest.raises(ValueError):
        encode_7e1(b"ok\x80")


def test_every_single_bit_flip_of_every_byte_is_caught() -> None:
    wire = encode_7e1(ALL_7BIT)
    for index in range(len(wire)):
        for bit in range(8):
            damaged = bytearray(wire)
            damaged[index] ^= 1 << bit
            decoded = decode_7e1(bytes(damaged))
            assert decoded[index] == PARITY_ERROR, (index, bit)
            assert decoded.count(PARITY_ERROR) == 1
            assert (
                decoded[:index] + decoded[index + 1 :] == ALL_7BIT[:index] + ALL_7BIT[index + 1 :]
            )


def test_every_single_bit_flip_in_a_real_telegram_is_caught() -> None:
    text = split_telegrams(read_capture(AHPOHL))[0]
    wire = encode_7e1(text)
    assert decode_7e1(wire) == text
    for index in range(len(wire)):
        for bit in range(8):
            damaged = bytearray(wire)
            damaged[index] ^= 1 << bit
            assert decode_7e1(bytes(damaged))[index] == PARITY_ERROR


def test_simulator_telegrams_round_trip() -> None:
    meter = SimulatedEbz(rng=random.Random(3), export_kwh=12.0, pv_w=800.0)
    for _ in range(200):
        text = meter.next_telegram()
        assert decode_7e1(encode_7e1(text)) == text
        assert PARITY_ERROR not in text


def test_the_marker_is_never_data() -> None:
    assert PARITY_ERROR > 0x7F
    assert set(decode_7e1(bytes(range(256)))) <= set(ALL_7BIT) | {PARITY_ERROR}
    # Exactly half of all byte values have even parity.
    assert decode_7e1(bytes(range(256))).count(PARITY_ERROR) == 128


def test_real_8n1_capture_of_a_7e1_meter_decodes_cleanly() -> None:
    """coolchip#41: an eBZ INFO port read at 8N1; every byte carries its parity in bit 7."""
    text = read_capture(INFO_8N1).decode("ascii")
    fragments = re.findall(r"fragment\d_raw_8N1_decimal: ([\d,]+)", text)
    masked = re.findall(r"fragment\d_masked_0x7F_repr: (b'.*')", text)
    assert len(fragments) == len(masked) == 3
    for raw_list, repr_text in zip(fragments, masked, strict=True):
        wire = bytes(int(n) for n in raw_list.split(","))
        decoded = decode_7e1(wire)
        assert PARITY_ERROR not in decoded
        assert decoded == ast.literal_eval(repr_text)
        assert encode_7e1(decoded) == wire


def test_a_head_that_strips_the_parity_bit_passes_7bit_bytes_and_marks_the_rest() -> None:
    """[meter] parity = none: 7-bit bytes pass as they are; a byte with bit 7 set cannot be
    7-bit text and becomes the marker (a bit flip into bit 7 is caught, one below is not:
    the head threw the parity away)."""
    from agent.meter.parity import decode_7bit

    assert decode_7bit(ALL_7BIT) == ALL_7BIT
    assert decode_7bit(bytes(range(128, 256))) == bytes([PARITY_ERROR]) * 128


def test_a_7bit_head_feeds_the_same_telegrams_as_a_parity_checked_one() -> None:
    """The same simulated telegrams, once as a USB head delivers them (7E1's parity bit as
    bit 7) and once as a network head that stripped it: the same telegrams accepted; the
    7-bit stream fed to the parity-checking pipeline is rejected (half its bytes fail)."""
    from agent.meter.pipeline import Pipeline

    meter = SimulatedEbz(rng=random.Random(3))
    texts = [meter.next_telegram() for _ in range(6)]

    def accepted(pipeline: Pipeline, wire: bytes) -> list[bytes]:
        return [t.raw for r in pipeline.feed(wire) for t in r.verdict.publish]

    usb = accepted(Pipeline(parity="even"), b"".join(encode_7e1(t) for t in texts))
    network = accepted(Pipeline(parity="none"), b"".join(texts))
    assert usb == network == texts[: len(usb)] and len(usb) >= 4
    assert accepted(Pipeline(parity="even"), b"".join(texts)) == []
