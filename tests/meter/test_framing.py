"""The framer: byte stream in, telegrams out, whatever the read sizes, noise or cuts."""

from __future__ import annotations

import random
import time

import pytest

from agent.meter.framing import MAX_TELEGRAM, Framer
from agent.meter.parity import decode_7e1, encode_7e1
from agent.meter.simulator import SimulatedEbz
from agent.meter.telegram import TelegramError, parse
from tests.harness.paths import read_capture, split_telegrams

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
SINGLE_2020 = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_single_2020.txt"
RUST_2R = "ebz_dd3_2r06eta_rust-test-fixture.txt"


def frame(data: bytes, chunk: int, framer: Framer | None = None) -> list[bytes]:
    framer = framer or Framer()
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i : i + chunk])
    return out


def sim_stream(n: int, seed: int = 1) -> list[bytes]:
    meter = SimulatedEbz(rng=random.Random(seed))
    return [meter.next_telegram() for _ in range(n)]


def test_the_ahpohl_capture_comes_out_byte_identical_for_every_chunk_size() -> None:
    capture = read_capture(AHPOHL)
    expected = split_telegrams(capture)
    assert len(expected) == 7 and b"".join(expected) == capture
    for chunk in range(1, 401):
        framer = Framer()
        assert frame(capture, chunk, framer) == expected, chunk
        assert framer.pending == 0
        assert framer.stats.telegrams == 7
        assert framer.stats.dropped_bytes == framer.stats.restarted == 0


def test_simulated_stream_comes_out_byte_identical_for_every_chunk_size() -> None:
    telegrams = sim_stream(7)
    stream = b"".join(telegrams)
    for chunk in range(1, 401):
        assert frame(stream, chunk) == telegrams, chunk


def test_the_2r_fixture_frames_whole() -> None:
    capture = read_capture(RUST_2R)
    assert frame(capture, 64) == [capture]


def test_a_cut_capture_yields_nothing_until_its_end_arrives() -> None:
    # Starts with the tail (CR LF) of an earlier telegram, ends at '!' without CR LF.
    capture = read_capture(SINGLE_2020)
    framer = Framer()
    assert framer.feed(capture) == []
    assert framer.stats.dropped_bytes == 2  # the stray CR LF before the '/'
    assert framer.pending == len(capture) - 2
    assert framer.feed(b"\r\n") == [capture[2:] + b"\r\n"]


def test_leading_garbage_is_dropped() -> None:
    telegram = sim_stream(1)[0]
    garbage = bytes([0x00, 0x7F, 0x0D, 0x0A]) + b"1-0:16.7.0*255(000012.34*W)\r\n!\r\n"
    for chunk in (1, 3, 17, 1000):
        framer = Framer()
        assert frame(garbage + telegram, chunk, framer) == [telegram]
        assert framer.stats.dropped_bytes == len(garbage)


def test_junk_between_telegrams_is_dropped() -> None:
    one, two = sim_stream(2)
    junk = b"\x7f" * 33 + b"\r\n"
    assert frame(one + junk + two, 5) == [one, two]


def test_a_slash_mid_telegram_restarts_and_the_fragment_fails_parsing() -> None:
    one, two = sim_stream(2)
    cut = one[:200]  # the link dropped the rest of `one`
    for chunk in (1, 7, 64, 1000):
        framer = Framer()
        out = frame(cut + two, chunk, framer)
        assert out == [cut, two], chunk
        assert framer.stats.restarted == 1
        assert framer.stats.telegrams == 1
    with pytest.raises(TelegramError):
        parse(cut)
    assert parse(two).raw == two


def test_an_end_mark_split_across_reads_is_found() -> None:
    telegram = sim_stream(1)[0]
    for split in range(len(telegram) - 3, len(telegram)):
        framer = Framer()
        assert framer.feed(telegram[:split]) == []
        assert framer.feed(telegram[split:]) == [telegram]


def test_a_telegram_without_end_is_dropped_when_it_outgrows_the_limit() -> None:
    framer = Framer()
    assert framer.feed(b"/EBZ" + b"0" * (MAX_TELEGRAM + 10)) == []
    assert framer.pending == 0
    assert framer.stats.oversized == 1
    telegram = sim_stream(1)[0]
    assert framer.feed(telegram) == [telegram]


def test_bounded_memory_under_ten_megabytes_of_noise() -> None:
    rng = random.Random(20240501)
    framer = Framer()
    fed = 0
    noise_total = 10 * 1024 * 1024
    highest = 0
    while fed < noise_total:
        size = min(rng.randint(1, 4096), noise_total - fed)
        noise = rng.randbytes(size)
        if rng.random() < 0.05:
            # Stretches without any '/': the worst case, a start whose end never comes.
            noise = b"/" + noise.replace(b"/", b"x")
        # As through the port: parity-decoded, so most bytes become PARITY_ERROR markers.
        framer.feed(decode_7e1(noise))
        fed += size
        highest = max(highest, framer.pending)
        assert framer.pending <= MAX_TELEGRAM
    assert highest > MAX_TELEGRAM // 2  # the noise did push the buffer towards its bound
    assert framer.stats.oversized > 0
    # The next clean telegram after the noise comes out intact, read in any size.
    clean = sim_stream(2, seed=9)
    out = framer.feed(decode_7e1(encode_7e1(clean[0])))
    assert out[-1] == clean[0]
    assert framer.feed(clean[1]) == [clean[1]]


def test_wanted_asks_for_the_rest_of_a_telegram_as_long_as_the_last() -> None:
    one, two = sim_stream(2)
    framer = Framer()
    assert framer.wanted() == 1  # nothing known yet: any byte will do
    framer.feed(one[:100])
    assert framer.wanted() == 1  # still no telegram seen to size the next one
    assert framer.feed(one[100:]) == [one]
    assert framer.last_length == len(one)
    assert framer.wanted() == len(one)  # between telegrams: a whole one
    framer.feed(two[:150])
    assert framer.wanted() == len(two) - 150
    framer.feed(two[150:-1])
    assert framer.wanted() == 1
    assert framer.feed(two[-1:]) == [two]
    longer = two.replace(b"\r\n!", b"\r\n1-0:0.2.0*255(ver.03)\r\n!")
    framer.feed(longer[: len(two)])  # past the last length, not yet at the end
    assert framer.wanted() == 1


def test_reset_forgets_a_partial_telegram() -> None:
    one, two = sim_stream(2)
    framer = Framer()
    framer.feed(one[:123])
    framer.reset()
    assert framer.pending == 0
    assert framer.stats.dropped_bytes == 123
    # The tail of `one` arrives after the reopen: garbage up to the next '/'.
    assert framer.feed(one[123:] + two) == [two]


def test_noisy_stream_frames_the_same_for_any_split() -> None:
    """Garbage, cut telegrams, restarts and end marks straddling reads: random splits of one
    stream give the same telegrams and the same statistics as whole telegrams fed one by one."""
    rng = random.Random(3)
    parts: list[bytes] = []
    for t in sim_stream(300, seed=4):
        roll = rng.random()
        if roll < 0.1:
            parts.append(t[: rng.randrange(1, len(t))])  # cut short: the next `/` restarts
        elif roll < 0.2:
            parts.append(bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 40))))
        parts.append(t)
    stream = b"".join(parts)
    whole = Framer()
    want = [t for part in parts for t in whole.feed(part)]
    for _ in range(20):
        framer, got, pos = Framer(), [], 0
        while pos < len(stream):
            step = rng.choice((1, 2, 3, rng.randrange(1, 2000)))
            got += framer.feed(stream[pos : pos + step])
            pos += step
        assert got == want
        assert framer.stats == whole.stats


def test_one_large_read_costs_no_more_per_telegram_than_small_ones() -> None:
    """A reader that fell behind gets thousands of telegrams in one read: the framer must not
    copy the rest of the read once per telegram (that was 100x slower per telegram at 1 MB).
    A ratio on one machine, not an absolute time, with 5x of slack."""
    data = b"".join(sim_stream(3000))

    def cost(chunk: int) -> float:
        best = float("inf")
        for _ in range(3):
            framer = Framer()
            t0 = time.perf_counter()
            n = len(frame(data, chunk, framer))
            best = min(best, time.perf_counter() - t0)
            assert n == 3000
        return best

    assert cost(len(data)) < 5 * cost(400)
