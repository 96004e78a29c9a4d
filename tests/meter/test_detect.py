"""protocol = auto: what the stream speaks is found from its bytes, nothing of the first
frame is lost, and a stream that stops making sense is looked at anew."""

from __future__ import annotations

import random

import pytest

from agent.meter.d0.simulate import SimulatedZpa
from agent.meter.detect import Finding, detect
from agent.meter.parity import encode_7e1
from agent.meter.pipeline import Pipeline
from agent.meter.protocols import AutoPipeline
from agent.meter.simulator import SimulatedEbz
from agent.meter.sml.pipeline import SmlPipeline
from agent.meter.sml.simulate import SimulatedSml
from tests.harness.paths import read_capture

EASYMETER = "easymeter_q3da1004_v304_dsmr_parser-fixture.txt"


def ebz_text(n: int, seed: int = 1) -> list[bytes]:
    meter = SimulatedEbz(rng=random.Random(seed))
    return [meter.next_telegram() for _ in range(n)]


def sml_frames(n: int, seed: int = 1) -> list[bytes]:
    meter = SimulatedSml(rng=random.Random(seed))
    return [meter.next_frame() for _ in range(n)]


def published(pipeline, wire: bytes, rng: random.Random) -> list[bytes]:
    """Feed `wire` in random read sizes, one meter second of clock per 400 bytes."""
    out, at = [], 0
    while at < len(wire):
        size = rng.randint(1, 700)
        for r in pipeline.feed(wire[at : at + size], at / 400):
            out += [t.raw for t in r.verdict.publish]
        at += size
    return out


def test_what_each_kind_of_stream_is_found_to_be() -> None:
    text = ebz_text(1)[0]
    assert detect(encode_7e1(text)) == Finding("ebz", "even", "OBIS text /EBZ5DD3BZ06ETA_107 (7E1)")
    assert detect(text) == Finding("ebz", "none", "OBIS text /EBZ5DD3BZ06ETA_107 (7 bit)")
    assert detect(b"\x00\xff" + sml_frames(1)[0][:40]) == Finding("sml", "even", "SML 1.04 (8N1)")
    zpa = SimulatedZpa(rng=random.Random(1)).next_telegram()  # STX after the ident line
    assert detect(encode_7e1(zpa)) == Finding("d0", "even", "OBIS text /ZPA5SIM305.v100 (7E1)")


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        bytes(range(256)) * 4,  # noise, e.g. a wrong baud rate
        encode_7e1(b"/EBZ5DD3BZ06ETA_107"),  # an ident alone, not yet a telegram's start
        b"\x1b\x1b\x1b\x1b\x01\x01\x01",  # one byte short of an SML start
    ],
    ids=["nothing", "noise", "ident-only", "short-sml-start"],
)
def test_nothing_is_found_before_a_frame_starts_clearly(stream: bytes) -> None:
    assert detect(stream) is None


def test_another_makers_text_goes_to_the_d0_pipeline() -> None:
    """An EasyMeter's OBIS text is found as text of another maker than eBZ: the generic D0
    pipeline reads it (the eBZ's grammar and checks stay for eBZ idents only)."""
    finding = detect(encode_7e1(read_capture(EASYMETER)))
    assert finding == Finding("d0", "even", "OBIS text /ESY5Q3DA1004 V3.04 (7E1)")
    auto = AutoPipeline()
    auto.feed(encode_7e1(read_capture(EASYMETER)), 0.0)
    assert auto.protocol == "d0"


@pytest.mark.parametrize("seed", range(5))
def test_auto_publishes_what_the_named_protocol_would_from_the_first_byte(seed: int) -> None:
    """The same streams through protocol = auto and through the right pipeline directly:
    the same frames published, the first included (the bytes seen while detecting are
    not lost)."""
    rng = random.Random(seed)
    for wire, direct in (
        (b"".join(encode_7e1(t) for t in ebz_text(8, seed)), Pipeline()),
        (b"".join(ebz_text(8, seed)), Pipeline(parity="none")),
        (b"".join(sml_frames(8, seed)), SmlPipeline()),
    ):
        noise = rng.randbytes(rng.randint(0, 50)).replace(b"\x1b", b"")
        auto = AutoPipeline()
        got = published(auto, noise + wire, random.Random(seed))
        want = published(direct, noise + wire, random.Random(seed))
        assert got == want and len(want) >= 6, (auto.protocol, len(got), len(want))
        assert auto.protocol == direct.protocol


def test_a_head_moved_to_another_meter_is_detected_anew() -> None:
    """eBZ text first; a replug (resync) keeps its pipeline. Then the head reads an SML
    meter: the text pipeline accepts nothing, the port goes stale and is reopened (stale),
    and from then on the SML frames are published."""
    auto = AutoPipeline()
    rng = random.Random(3)
    assert published(auto, b"".join(encode_7e1(t) for t in ebz_text(4)), rng)
    assert auto.protocol == "ebz"
    auto.resync()  # a replug or a dropped network head: the same meter
    assert auto.protocol == "ebz"
    frames = sml_frames(6)
    assert published(auto, b"".join(frames[:2]), rng) == []  # the text pipeline sees junk
    auto.resync()
    auto.stale()  # stale_after without a valid frame: the reader reopens the port
    assert auto.protocol == "auto"
    assert published(auto, b"".join(frames[2:]), rng) == frames[2:]
    assert auto.protocol == "sml" and auto.finding is not None


def test_an_ebz_layout_the_ebz_grammar_refuses_turns_to_the_generic_text_pipeline() -> None:
    """An eBZ ident whose telegrams the strict eBZ grammar rejects (here: a line with a
    letter code) is read by the generic D0 pipeline after two stale reopens with nothing
    accepted, and the log says why: never stuck on the eBZ pipeline."""
    texts = [
        t.replace(b"\r\n!\r\n", b"\r\n0-0:C.1.0*255(00000001)\r\n!\r\n")
        for t in ebz_text(8, seed=4)
    ]  # a line with a letter code, which the eBZ grammar does not know
    wire = b"".join(encode_7e1(t) for t in texts)
    auto = AutoPipeline()
    rng = random.Random(1)
    protocols, found = [], []
    for _ in range(3):
        got = published(auto, wire, rng)
        protocols.append((auto.protocol, bool(got)))
        found.append(auto.finding.what if auto.finding else "")
        auto.stale()
    assert protocols == [("ebz", False), ("ebz", False), ("d0", True)], protocols
    assert found[2].endswith("(7E1), which ebz read nothing of"), found


def test_a_start_split_across_reads_is_found_one_byte_at_a_time() -> None:
    """Only new bytes (and a start straddling the last read) are looked at: an ident fed
    one byte per read is found all the same, and the first telegram is not lost."""
    texts = ebz_text(4)
    wire = b"".join(encode_7e1(t) for t in texts)
    auto, out = AutoPipeline(), []
    for i in range(len(wire)):
        for r in auto.feed(wire[i : i + 1], i / 400):
            out += [t.raw for t in r.verdict.publish]
    direct = [t.raw for r in Pipeline().feed(wire, 0.0) for t in r.verdict.publish]
    assert out == direct and auto.protocol == "ebz"


def test_a_first_read_larger_than_what_is_kept_loses_nothing() -> None:
    """A port reopened after a while may hand over several KiB at once (the adapter's
    buffer): detection keeps the whole read, so every frame in it is published."""
    from agent.meter.detect import KEEP

    frames = sml_frames(20)
    wire = b"".join(frames)
    assert len(wire) > 2 * KEEP
    auto = AutoPipeline()
    got = [t.raw for r in auto.feed(wire, 0.0) for t in r.verdict.publish]
    assert got == frames


def test_with_no_rate_given_auto_tries_the_next_rate_after_noise() -> None:
    """protocol auto without a baudrate: noise at 9600 through a stale reopen moves on to
    300, where the meter is found; that rate is then home, tried every other time while
    noise lasts, so a noise burst costs a good meter at most one wrong try. Silence moves
    nothing (there is nothing to judge a rate by)."""
    auto = AutoPipeline(9600, hunt=True)
    assert auto.baud == 9600
    auto.stale()  # silent: nothing learnt
    assert auto.baud == 9600
    assert auto.feed(bytes(range(256)), 0.0) == []  # what a 300 Bd meter looks like at 9600
    auto.stale()
    assert auto.baud == 300
    published(auto, b"".join(encode_7e1(t) for t in ebz_text(3)), random.Random(1))
    assert auto.protocol == "ebz"
    auto.stale()
    assert auto.baud == 300  # read well at 300: its home rate now
    tried = []
    for _ in range(6):  # line noise for a while: every other try is the home rate
        auto.feed(bytes(range(256)), 0.0)
        auto.stale()
        tried.append(auto.baud)
    assert tried == [9600, 300, 2400, 300, 4800, 300]
    fixed = AutoPipeline(9600)  # a rate given in the config is never second-guessed
    fixed.feed(bytes(range(256)), 0.0)
    fixed.stale()
    assert fixed.baud == 9600
