"""The D0 framer on the real captures and on what a line does to them: any read size, junk
between telegrams, request echoes, STX/ETX with the BCC, cuts, a bounded buffer."""

from __future__ import annotations

import random
import time

import pytest

from agent.meter.d0.framing import ETX, MAX_FRAME, STX, D0Frame, D0Framer, bcc
from tests.meter.d0.helpers import (
    ACE3000,
    E350,
    EBZ_7,
    EBZ_CUT,
    MT174,
    Q3DA,
    Q3DB,
    capture,
    frames,
)

SEEDS = range(25)


@pytest.mark.parametrize("seed", SEEDS)
def test_easymeter_push_telegrams_end_at_the_end_mark_and_the_gateway_trailer_is_junk(
    seed: int,
) -> None:
    for name in (Q3DA, Q3DB):
        data = capture(name)
        end = data.index(b"!\r\n") + 3
        got, framer = frames(data, random.Random(seed))
        assert got == [D0Frame(data[:end], stx=False)]
        # Two gateway lines (and, on the Q3DB, 33 x 0xFF) after '!': dropped, nothing pending.
        assert framer.stats.dropped_bytes == len(data) - end and framer.pending == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_the_ebz_captures_frame_as_the_ebz_framer_does(seed: int) -> None:
    data = capture(EBZ_7)
    got, _ = frames(data, random.Random(seed))
    assert [f.raw for f in got] == [data[i * 368 : (i + 1) * 368] for i in range(7)]
    assert not any(f.stx or f.cut for f in got)
    # The capture cut at both ends gives nothing: a stray CR LF, then a telegram without
    # its CR LF after '!'.
    cut, framer = frames(capture(EBZ_CUT), random.Random(seed))
    assert cut == [] and framer.pending == len(capture(EBZ_CUT)) - 2


@pytest.mark.parametrize("seed", SEEDS)
def test_the_iskra_readout_is_one_stx_frame_whose_bcc_0x19_verifies(seed: int) -> None:
    data = capture(MT174)
    got, framer = frames(data, random.Random(seed))
    assert got == [D0Frame(data, stx=True)] and got[0].bcc_ok
    assert data[-1] == 0x19 == bcc(data[data.index(STX) + 1 : -1])
    assert framer.pending == 0 and framer.last_length == len(data)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_ace3000_readout_loses_its_echo_and_junk_and_its_bcc_fails(seed: int) -> None:
    data = capture(ACE3000)
    got, framer = frames(data, random.Random(seed))
    start = data.index(b"/ACE")
    assert got == [D0Frame(data[start:-1], stx=True)]  # the 0x7F after the BCC is junk
    assert not got[0].bcc_ok
    # meters.md §8.3: the XOR gives 0x4D, the frame carries 0x46.
    assert bcc(data[data.index(STX) + 1 : data.index(ETX) + 1]) == 0x4D and data[-2] == 0x46
    assert framer.stats.requests == 1  # the echo of /?!
    assert framer.stats.dropped_bytes == 5 + len(b"/?!\r\n") + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_the_e350_readout_with_lf_lf_and_no_etx_never_completes(seed: int) -> None:
    """vzlogger's fixture went through a tty with ICRNL (CR became LF) and ends at '!': no
    `!\\r\\n`, no ETX, so nothing is framed; the next `/` would cut it."""
    data = capture(E350)
    got, framer = frames(data, random.Random(seed))
    assert got == [] and framer.pending == len(data)
    assert framer.feed(b"/") == [D0Frame(data, stx=True, cut=True)]


def test_any_split_gives_the_same_frames() -> None:
    stream = capture(Q3DB) + capture(MT174) + capture(EBZ_7) + capture(ACE3000) + capture(Q3DA)
    whole, _ = frames(stream)
    assert len(whole) == 1 + 1 + 7 + 1 + 1
    for size in (1, 2, 3, 7, 100):
        framer = D0Framer()
        assert [
            f for i in range(0, len(stream), size) for f in framer.feed(stream[i : i + size])
        ] == whole


def test_a_bcc_that_is_a_slash_is_the_bcc_and_a_lost_bcc_is_not_a_lost_frame() -> None:
    prefix = b"/ABC5X\r\n" + bytes([STX])
    # A value that makes the BCC '/': the framer must take that '/' as the BCC.
    b = next(
        body
        for c in range(0x41, 0x5B)
        if bcc(body := b"C.1.0(" + bytes([c]) + b")\r\n!\r\n" + bytes([ETX])) == ord("/")
    )
    frame = prefix + b + b"/"
    got = D0Framer().feed(frame + frame)
    assert [f.raw for f in got] == [frame, frame] and all(f.bcc_ok for f in got)
    # A frame whose BCC byte was lost: the next frame's '/' starts the next frame.
    body = b"1.8.0(000001.000*kWh)\r\n!\r\n" + bytes([ETX])
    ok = prefix + body + bytes([bcc(body)])
    got = D0Framer().feed(ok[:-1] + ok)
    assert [(f.raw, f.cut) for f in got] == [(ok[:-1], True), (ok, False)]


def test_a_slash_before_the_end_cuts_the_frame_and_starts_the_next() -> None:
    data = capture(Q3DA)
    end = data.index(b"!\r\n") + 3
    got, _ = frames(data[:50] + data[:end])
    assert [(f.raw, f.cut) for f in got] == [(data[:50], True), (data[:end], False)]


def test_the_buffer_is_bounded_and_noise_costs_linear_time() -> None:
    framer = D0Framer()
    noise = b"/" + b"1" * (3 * MAX_FRAME)
    got = framer.feed(noise)
    assert [len(f.raw) for f in got] == [MAX_FRAME] and got[0].cut and framer.pending == 0
    # 400 KB of starts, or of STX frames without ETX, in one read and byte by byte: each
    # byte is searched a bounded number of times (a quadratic framer takes minutes).
    for junk in (b"/" * 400_000, (b"/A" + bytes([STX]) + b"1" * 30) * 12_000):
        t0 = time.perf_counter()
        D0Framer().feed(junk)
        f = D0Framer()
        for i in range(0, 100_000):
            f.feed(junk[i : i + 1])
        assert time.perf_counter() - t0 < 20
