"""IEC 62056-21 mode C, the master's side (agent/meter/modec.py): the session against the
real captures' bytes and scripted meters (echoes, silence, garbled identifications, rates
above max_baud, modes A and B, endless readouts), the interval kept and never stuck; and
the pty meter of tests/harness/modec_meter.py against a plain pyserial reader."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from agent.meter.d0.framing import D0Framer
from agent.meter.d0.grammar import Reason
from agent.meter.d0.pipeline import D0Pipeline
from agent.meter.modec import (
    ACK_DELAY,
    IDENT_TIMEOUT,
    QUIET_AFTER_FAILURE,
    READOUT_GAP_TIMEOUT,
    READOUT_START_TIMEOUT,
    Action,
    ModeCSession,
    State,
    readout_timeout,
)
from agent.meter.parity import decode_7e1
from tests.harness.meter import PtyMeter, encode_7e1
from tests.harness.modec_meter import ModeCMeter, bcc
from tests.meter.d0.helpers import ACE3000, MT174, capture

REQUEST = encode_7e1(b"/?!\r\n")


def ack(z: str) -> bytes:
    return encode_7e1(b"\x060" + z.encode() + b"0\r\n")


def readout(lines: bytes) -> bytes:
    body = b"\x02" + lines + b"!\r\n\x03"
    return body + bytes([bcc(body[1:])])


LINES = b"1-0:1.8.0*255(0000502.853*kWh)\r\n"


def identified(ident: bytes, max_baud: int = 9600, at: float = 0.5) -> ModeCSession:
    """A session that asked at 0.0 and got `ident` at `at`."""
    s = ModeCSession(interval=10.0, start=0.0, max_baud=max_baud)
    assert s.due(0.0) == [Action(write=REQUEST, baud=300)]
    assert s.received(encode_7e1(ident), at) == encode_7e1(ident)
    return s


# ---------------------------------------------------------------------- the captures
def test_iskra_mt174_capture_one_exchange_with_the_switch_to_9600() -> None:
    data = encode_7e1(capture(MT174))
    ident_end = data.index(encode_7e1(b"\r\n")) + 2
    s = ModeCSession(interval=10.0, start=100.0)
    assert s.state is State.IDLE and s.next_wake(50.0) == 100.0
    assert s.due(99.9) == []
    assert s.due(100.0) == [Action(write=REQUEST, baud=300)]
    assert s.state == "waiting for identification"
    assert s.next_wake(100.0) == pytest.approx(100.0 + IDENT_TIMEOUT)
    passed = s.received(data[:5], 100.4) + s.received(data[5:ident_end], 100.9)
    assert passed == data[:ident_end] and s.ident == "ISk5MT174-0002" and s.mode == "C"
    # The ACK after the least reaction time, then the switch once it left at 300 Bd: 'ISk'
    # has a lower-case third letter, so the meter may answer 20 ms after it: switch at 10 ms.
    assert s.next_wake(100.9) == pytest.approx(100.9 + ACK_DELAY)
    assert s.due(100.9 + ACK_DELAY - 0.01) == []
    assert s.due(101.15) == [Action(write=ack("5"))]
    assert s.state is State.SWITCHING and s.baud == 300
    assert s.next_wake(101.15) == pytest.approx(101.15 + 0.2 + 0.01)
    assert s.due(101.36) == [Action(baud=9600)] and s.baud == 9600
    passed += s.received(data[ident_end:60], 101.5) + s.received(data[60:], 101.6)
    assert s.state is State.IDLE and s.stats.readouts == 1
    assert s.due(101.6) == [Action(baud=300)] and s.baud == 300
    assert s.next_wake(101.6) == 110.0
    # What the pipeline gets is the capture, byte for byte: one frame whose BCC verifies.
    assert passed == data
    (frame,) = D0Framer().feed(decode_7e1(passed))
    assert frame.raw == capture(MT174) and frame.bcc_ok


def test_ace3000_capture_junk_and_echo_dropped_its_stale_bcc_rejected_by_the_pipeline() -> None:
    raw = capture(ACE3000)
    data = encode_7e1(raw)
    ident_end = raw.index(b"\r\n", raw.index(b"/ACE")) + 2
    s = ModeCSession(interval=30.0, start=0.0)
    s.due(0.0)
    # 5 x 0x7F of noise and the echo of our request before the identification.
    passed = s.received(data[:ident_end], 0.9)
    assert passed == data[raw.index(b"/ACE") : ident_end]
    assert s.stats.echoes == 1 and s.stats.dropped_bytes == 5 + 5
    assert s.ident == "ACE0\\3k260V01.19"
    # Baud character '0': acknowledged at 300 Bd, no switch.
    assert s.due(0.9 + ACK_DELAY) == [Action(write=ack("0"))]
    assert s.state is State.READOUT and s.baud == 300
    passed += s.received(data[ident_end:], 2.0)
    # The readout ends at ETX and the BCC byte 'F'; the 0x7F after it is not passed on.
    assert s.state is State.IDLE and s.stats.readouts == 1
    assert passed == data[raw.index(b"/ACE") : -1]
    assert s.due(2.0) == []  # still at 300 Bd: nothing to switch back
    results = D0Pipeline().feed(passed, 2.0)
    assert [r.verdict.reason for r in results] == [Reason.BCC]


# ---------------------------------------------------------------------- echoes
@pytest.mark.parametrize("max_baud", [9600, 300])
def test_an_echoing_head_never_puts_our_ack_into_the_frame(max_baud: int) -> None:
    ident = b"/ISK5MT174-0001\r\n"  # upper case: the meter takes at least 200 ms
    z = "5" if max_baud == 9600 else "0"
    s = ModeCSession(interval=10.0, start=0.0, max_baud=max_baud)
    s.due(0.0)
    passed = s.received(REQUEST, 0.05)  # the head hears our request
    passed += s.received(encode_7e1(ident), 0.8)
    assert s.due(0.8 + ACK_DELAY) == [Action(write=ack(z))]
    echo = ack(z)
    passed += s.received(echo[:3], 1.1) + s.received(echo[3:], 1.2)  # ... and our ACK
    if max_baud == 9600:  # heard while switching; at 300 Bd while awaiting the readout
        assert s.next_wake(1.2) == pytest.approx(1.05 + 0.2 + 0.1)
        assert s.due(1.35) == [Action(baud=9600)]
    assert s.state is State.READOUT
    body = encode_7e1(readout(LINES))
    passed += s.received(b"\x00\xff" + body, 1.6)  # and a byte or two garbled by the switch
    assert passed == encode_7e1(ident) + body
    assert s.stats.echoes == 1 and s.stats.readouts == 1
    (result,) = D0Pipeline().feed(passed, 1.6)
    assert result.verdict.reason is None  # framed and parsed: held as the first reference
    # Fed unfiltered, the echoed ACK between the ident line and STX spoils the frame.
    unfiltered = encode_7e1(ident) + echo + body
    (spoilt,) = D0Pipeline().feed(unfiltered, 1.6)
    assert spoilt.verdict.reason is not None


# ---------------------------------------------------------------------- timeouts
def test_no_identification_gives_up_after_t1_and_asks_again_at_the_next_interval() -> None:
    s = ModeCSession(interval=10.0, start=0.0)
    s.due(0.0)
    assert s.next_wake(0.1) == pytest.approx(IDENT_TIMEOUT) == pytest.approx(3.0)
    assert s.due(IDENT_TIMEOUT - 0.01) == [] and s.state is State.WAIT_IDENT
    assert s.due(IDENT_TIMEOUT) == [] and s.state is State.IDLE
    assert s.stats.no_identification == 1 and s.baud == 300
    assert s.next_wake(IDENT_TIMEOUT) == 10.0
    assert s.due(10.0) == [Action(write=REQUEST, baud=300)]
    assert s.stats.requests == 2


def test_no_readout_after_the_ack_gives_up_and_goes_back_to_300_baud() -> None:
    s = identified(b"/ISK5MT174-0001\r\n")
    s.due(0.5 + ACK_DELAY)
    s.due(2.0)
    assert s.baud == 9600 and s.state is State.READOUT
    acked = 0.5 + ACK_DELAY
    assert s.next_wake(2.0) == pytest.approx(acked + READOUT_START_TIMEOUT)
    assert s.due(acked + READOUT_START_TIMEOUT) == [Action(baud=300)]
    assert s.state is State.IDLE and s.stats.readout_timeouts == 1
    assert s.next_wake(5.0) == 10.0


def test_a_readout_that_stops_midway_ends_after_the_gap_timeout() -> None:
    s = identified(b"/ISK5MT174-0001\r\n")
    s.due(1.0)
    s.due(1.5)
    body = encode_7e1(readout(LINES))
    s.received(body[:20], 2.0)
    assert s.next_wake(2.0) == pytest.approx(2.0 + READOUT_GAP_TIMEOUT) == pytest.approx(4.0)
    assert s.due(3.9) == []
    assert s.due(4.0) == [Action(baud=300)] and s.stats.readout_timeouts == 1
    # The rest arriving late is dropped, not passed on as a readout.
    assert s.received(body[20:], 4.1) == b"" and s.stats.readouts == 0


def test_a_readout_without_an_end_is_cut_off_after_the_longest_frame_time() -> None:
    s = identified(b"/ISK5MT174-0001\r\n")
    s.due(1.0)
    s.due(1.5)
    now, start = 2.0, 2.0
    s.received(encode_7e1(b"\x02"), now)
    limit = start + readout_timeout(9600)
    assert limit - start == pytest.approx(READOUT_START_TIMEOUT + 8192 * 10 / 9600)
    while s.state is State.READOUT and now < limit + 60:
        now += 0.5
        s.received(encode_7e1(b"1-0:1.8.0*255(0000502.853*kWh)\r\n"), now)  # never an ETX
        s.due(now)
    assert limit <= now < limit + 0.5 and s.stats.readout_timeouts == 1


# ---------------------------------------------------------------------- identifications
@pytest.mark.parametrize(
    "wire",
    [
        bytes(encode_7e1(b"/ISK5MT174-0001\r\n")[:4])
        + bytes([encode_7e1(b"5")[0] ^ 0x80])
        + encode_7e1(b"MT174-0001\r\n"),  # a parity error in the baud character
        encode_7e1(b"/IS5MT174-0001\r\n"),  # a maker code of two letters
        encode_7e1(b"/ISK5\r\n"),  # no identification after the baud character
        encode_7e1(b"/ISK5MT174-0001\n"),  # no CR
        encode_7e1(b"/ISK5MT174-0001-0002-0003-04\r\n"),  # longer than 25 characters
        encode_7e1(b"/ISK5MT174-0001-0002-0003-0004-5555"),  # and still no end
    ],
    ids=["parity", "maker", "no-id", "no-cr", "long", "endless"],
)
def test_a_garbled_identification_is_never_acknowledged(wire: bytes) -> None:
    s = ModeCSession(interval=10.0, start=0.0)
    s.due(0.0)
    assert s.received(wire, 0.8) == b""
    assert s.stats.garbled == 1 and s.stats.identified == 0 and s.state is State.IDLE
    # Nothing is written until the next interval, which comes as usual.
    assert all(not a.write for t in (1.0, 2.0, 5.0, 9.9) for a in s.due(t))
    assert s.due(10.0) == [Action(write=REQUEST, baud=300)]


def test_after_a_failed_exchange_the_meter_gets_quiet_time_before_the_next_request() -> None:
    # A meter that sent a garbled identification may wait up to 1.5 s for our ACK: a
    # request inside that time would meet a meter that is not listening for one.
    s = ModeCSession(interval=2.0, start=0.0)
    s.due(0.0)
    s.received(encode_7e1(b"/ISK5\r\n"), 1.0)
    assert s.stats.garbled == 1
    assert s.next_wake(1.0) == 4.0 and s.stats.missed_slots == 1
    assert s.due(2.0) == [] and s.due(4.0) == [Action(write=REQUEST, baud=300)]


@pytest.mark.parametrize(
    ("z", "max_baud", "chosen"),
    [("6", 9600, "5"), ("5", 2400, "3"), ("4", 9600, "4"), ("6", 19200, "6"), ("5", 300, "0")],
)
def test_the_rate_offered_is_capped_at_max_baud(z: str, max_baud: int, chosen: str) -> None:
    s = identified(b"/LGZ" + z.encode() + b"ZMF100AC.M27\r\n", max_baud=max_baud)
    assert s.due(0.5 + ACK_DELAY) == [Action(write=ack(chosen))]
    rate = 300 << int(chosen)
    actions = s.due(2.0)
    assert actions == ([] if rate == 300 else [Action(baud=rate)]) and s.baud == rate
    assert s.state is State.READOUT


@pytest.mark.parametrize("z", ["7", "8", "9", "G", "H", "I", "F"])
def test_a_reserved_rate_or_a_mode_b_rate_above_max_baud_is_refused(z: str) -> None:
    s = ModeCSession(interval=10.0, start=0.0, max_baud=9600)
    s.due(0.0)
    assert s.received(encode_7e1(b"/ABC" + z.encode() + b"METER\r\n"), 0.8) == b""
    assert s.stats.refused == 1 and s.state is State.IDLE
    assert all(not a.write for t in (1.0, 2.0, 5.0) for a in s.due(t))


def test_mode_b_follows_the_meter_to_its_rate_without_acknowledging() -> None:
    ident = encode_7e1(b"/ABCEMETER\r\n")  # 'E': mode B, 9600 Bd
    s = identified(ident[:0] + b"/ABCEMETER\r\n")
    assert s.mode == "B" and s.due(0.5) == [Action(baud=9600)]
    body = encode_7e1(readout(LINES))
    assert s.received(body, 1.0) == body and s.stats.readouts == 1
    assert s.due(1.0) == [Action(baud=300)]


def test_mode_a_reads_at_300_baud_without_acknowledging() -> None:
    s = identified(b"/ABCXMETER\r\n")
    assert s.mode == "A" and s.due(0.5) == [] and s.baud == 300
    body = encode_7e1(readout(LINES))
    assert s.received(body, 3.0) == body and s.stats.readouts == 1
    assert s.due(3.0) == []


def test_an_ack_that_comes_too_late_for_the_meter_is_not_sent() -> None:
    s = identified(b"/ISK5MT174-0001\r\n")
    assert s.due(0.5 + 1.6) == []  # the reader was away for 1.6 s: the meter stopped waiting
    assert s.state is State.IDLE and s.stats.readout_timeouts == 1


# ---------------------------------------------------------------------- the schedule
class ScriptedMeter:
    """Answers the session's writes like a mode C meter, `delay` seconds per message."""

    def __init__(self, rng: random.Random, lines: bytes = LINES) -> None:
        self.rng = rng
        self.lines = lines
        self.pending: list[tuple[float, bytes]] = []

    def heard(self, write: bytes, now: float) -> None:
        if write == REQUEST:
            self.pending.append((now + self.rng.uniform(0.3, 1.2), b"/ISK5MT174-0001\r\n"))
        elif write.startswith(encode_7e1(b"\x06")):
            self.pending.append((now + self.rng.uniform(0.4, 1.6), readout(self.lines)))

    def due(self, now: float) -> bytes:
        out = b"".join(encode_7e1(m) for t, m in self.pending if t <= now)
        self.pending = [(t, m) for t, m in self.pending if t > now]
        return out

    def next(self) -> float:
        return min((t for t, _ in self.pending), default=float("inf"))


def drive(s: ModeCSession, meter: ScriptedMeter, until: float) -> list[float]:
    """The reader's loop on a simulated clock; returns when the requests were written."""
    now, requests = 0.0, []
    while now < until:
        for action in s.due(now):
            if action.write == REQUEST:
                assert s.state is State.WAIT_IDENT
                requests.append(now)
            meter.heard(action.write, now)
        now = min(s.next_wake(now), meter.next())
        s.received(meter.due(now), now)
    return requests


def test_the_interval_is_kept_exchange_after_exchange() -> None:
    s = ModeCSession(interval=10.0, start=0.0)
    requests = drive(s, ScriptedMeter(random.Random(1)), until=600.0)
    assert requests == [10.0 * k for k in range(60)]
    assert s.stats.readouts == 60 and s.stats.missed_slots == 0


def test_a_readout_longer_than_the_interval_delays_the_next_request_to_the_next_slot() -> None:
    # A 300 Bd readout of ~1 KB (34 s) with interval 10 s: no request before it ended.
    s = ModeCSession(interval=10.0, start=0.0, max_baud=300)
    s.due(0.0)
    s.received(encode_7e1(b"/ISK0MT174-0001\r\n"), 0.8)
    s.due(0.8 + ACK_DELAY)
    body = encode_7e1(readout(LINES * 31))
    now = 1.5
    for i in range(0, len(body), 10):
        assert s.due(now) == [] and s.state is State.READOUT
        s.received(body[i : i + 10], now)
        now += 10 * 10 / 300
    assert s.state is State.IDLE and s.stats.readouts == 1
    assert 33.0 < now < 40.0 and s.next_wake(now) == 40.0 and s.stats.missed_slots == 3


@pytest.mark.parametrize("seed", range(40))
def test_never_stuck_whatever_the_meter_sends(seed: int) -> None:
    """Random bytes at random times (noise, echoes, identifications of every mode, pieces of
    readouts, parity errors): the session is back to IDLE within its longest exchange and
    requests keep coming at the interval's slots."""
    rng = random.Random(seed)
    pieces = [
        REQUEST,
        b"\x7f",
        b"\xff",
        encode_7e1(b"/ISk5MT174-0001\r\n"),
        encode_7e1(b"/ABCEMETER\r\n"),
        encode_7e1(b"/ABCXMETER\r\n"),
        encode_7e1(b"/ABC7METER\r\n"),
        ack("5"),
        encode_7e1(b"\x02"),
        encode_7e1(b"\x03"),
        encode_7e1(LINES),
        encode_7e1(readout(LINES)),
    ]
    interval = rng.choice((1.0, 5.0, 30.0))
    s = ModeCSession(interval=interval, start=0.0, max_baud=rng.choice((300, 9600, 19200)))
    longest = IDENT_TIMEOUT + 2 * ACK_DELAY + READOUT_START_TIMEOUT + readout_timeout(300)
    now, busy_since, requests, last_request = 0.0, None, 0, -interval
    while now < 3600.0:
        for action in s.due(now):
            if action.write == REQUEST:
                assert now >= last_request + interval - 1e-9  # never two in one slot
                requests, last_request = requests + 1, now
        if s.state is State.IDLE:
            busy_since = None
        else:
            busy_since = now if busy_since is None else busy_since
            assert now - busy_since <= longest
        wake = s.next_wake(now)
        assert now <= wake <= now + max(interval, longest)
        now = min(wake, now + rng.expovariate(4.0))
        s.received(b"".join(rng.choice(pieces) for _ in range(rng.randrange(4))), now)
    # At most one slot in a few lost to the exchanges and the quiet after failures.
    slots = 3600.0 / interval
    assert requests >= slots / (1 + (longest + QUIET_AFTER_FAILURE) / interval) - 1


def test_reads_wait_for_single_bytes_until_the_readout_has_started() -> None:
    # A read sized to the last frame (say 150 bytes) would sit on a 17-byte identification
    # until its timeout, and the meter stops waiting for our ACK 1.5 s after it.
    s = ModeCSession(interval=10.0, start=0.0)
    assert s.wanted(150) == 1
    s.due(0.0)
    assert s.wanted(150) == 1
    s.received(encode_7e1(b"/ISK5MT174-0001\r\n"), 0.5)
    s.due(0.5 + ACK_DELAY)
    s.due(1.5)
    assert s.state is State.READOUT and s.wanted(150) == 1
    s.received(encode_7e1(b"\x021-0:1.8"), 1.7)
    assert s.wanted(150) == 150


def test_a_reopened_port_goes_back_to_300_baud_and_keeps_the_schedule() -> None:
    s = identified(b"/ISK5MT174-0001\r\n")
    s.due(1.0)
    s.due(1.5)
    assert s.baud == 9600
    s.port_reopened(2.0)
    assert s.state is State.IDLE and s.baud == 300
    assert s.due(2.0) == [Action(baud=300)]
    assert s.next_wake(2.0) == 10.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "mode C interval must be positive seconds, got 0"),
        ({"max_baud": 5000}, "mode C max_baud must be one of 300, 600"),
        ({"parity": "odd"}, "parity must be one of even, none, got 'odd'"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"interval": 10.0, "start": 0.0} | kwargs
    with pytest.raises(ValueError, match=message):
        ModeCSession(**args)  # type: ignore[arg-type]


def test_a_head_that_strips_the_parity_bit_gets_and_sends_7_bit_bytes() -> None:
    s = ModeCSession(interval=10.0, start=0.0, parity="none")
    assert s.due(0.0) == [Action(write=b"/?!\r\n", baud=300)]
    assert s.received(b"/ISK5MT174-0001\r\n", 0.5) == b"/ISK5MT174-0001\r\n"
    assert s.due(0.5 + ACK_DELAY) == [Action(write=b"\x06050\r\n")]


# ---------------------------------------------------------------------- the pty meter
def read_until(port: serial.Serial, end: bytes, timeout: float, extra: int = 0) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += port.read(max(1, port.in_waiting))
        at = bytes(b & 0x7F for b in got).find(end)
        if at >= 0 and len(got) >= at + len(end) + extra:
            break
    return bytes(got)


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def plain_port(pty: PtyMeter) -> serial.Serial:
    return serial.Serial(str(pty.link), 300, timeout=0.05)


@pytest.fixture
def pty_meter(tmp_path: Path):  # type: ignore[no-untyped-def]
    with PtyMeter(tmp_path / "ttyIR") as meter:
        meter.plug()
        yield meter


def test_pty_meter_answers_a_plain_reader_that_switches_rate(pty_meter: PtyMeter) -> None:
    with (
        ModeCMeter(pty_meter) as meter,
        serial.Serial(str(pty_meter.link), 300, timeout=0.05) as port,
    ):
        port.write(REQUEST)
        ident = read_until(port, b"\r\n", 3.0)
        assert bytes(b & 0x7F for b in ident) == b"/ISk5MT174-0001\r\n"
        assert ident == encode_7e1(b"/ISk5MT174-0001\r\n")
        port.write(ack("5"))
        time.sleep(0.2)  # the ACK's time on a 300 Bd wire
        port.baudrate = 9600
        data = bytes(b & 0x7F for b in read_until(port, b"\x03", 3.0, extra=1))
        body = data[data.index(b"\x02") + 1 : -1]
        assert data[-1] == bcc(body) and b"1-0:1.8.0*255(0000502.854*kWh)" in body
        assert (meter.requests, meter.acks, meter.readouts, meter.wrong_baud) == (1, 1, 1, 0)


def test_pty_meter_sends_nothing_useful_to_a_reader_that_did_not_switch(
    pty_meter: PtyMeter,
) -> None:
    with (
        ModeCMeter(pty_meter) as meter,
        serial.Serial(str(pty_meter.link), 300, timeout=0.05) as port,
    ):
        port.write(REQUEST)
        read_until(port, b"\r\n", 3.0)
        port.write(ack("5"))
        data = read_until(port, b"\x03", 1.5)
        assert b"\x02" not in data and meter.wrong_baud == 1 and meter.readouts == 0
        # A request at 9600 Bd goes unheard as well.
        port.baudrate = 9600
        port.write(REQUEST)
        assert read_until(port, b"\r\n", 1.0) == b"" and meter.requests == 1
        assert meter.wrong_baud == 2


def test_pty_meter_faults_silent_garbled_echo_stale_bcc(pty_meter: PtyMeter) -> None:
    meter = ModeCMeter(pty_meter, answer=False, echo=True, reaction=0.05)
    with meter, plain_port(pty_meter) as port:
        port.write(REQUEST)
        assert read_until(port, b"\r\n", 1.0) == REQUEST  # the echo, and no answer
        assert wait_for(lambda: meter.requests == 1)
        assert read_until(port, b"\r\n", 0.5) == b"" and meter.identifications == 0
        meter.answer, meter.echo, meter.garble_ident = True, False, True
        port.write(REQUEST)
        ident = read_until(port, b"\r\n", 3.0)
        assert decode_7e1(ident)[4] == 0xFF  # a parity error in the baud character
        time.sleep(1.6)  # no ACK: the meter gives up waiting
        assert meter.abandoned == 1
        meter.garble_ident, meter.stale_bcc = False, True
        port.write(REQUEST)
        read_until(port, b"\r\n", 3.0)
        port.write(ack("5"))
        time.sleep(0.2)
        port.baudrate = 9600
        data = decode_7e1(read_until(port, b"\x03", 3.0, extra=1))
        body = data[data.index(b"\x02") + 1 : -1]
        assert data[-1] != bcc(body)


def test_session_and_pty_meter_through_a_real_port(pty_meter: PtyMeter) -> None:
    """The session drives a pyserial port the way the reader will: three readouts in a
    row from an echoing head, each a frame whose BCC verifies, at the interval."""
    meter = ModeCMeter(pty_meter, echo=True, reaction=0.2)
    framer = D0Framer()
    start = time.monotonic()
    s = ModeCSession(interval=2.0, start=start)
    frames, requests = [], []
    with meter, serial.Serial(str(pty_meter.link), 300, timeout=0) as port:
        while s.stats.readouts + s.stats.readout_timeouts < 3 and time.monotonic() < start + 15:
            now = time.monotonic()
            for action in s.due(now):
                if action.baud is not None:
                    port.baudrate = action.baud
                if action.write:
                    if action.write == REQUEST:
                        requests.append(now - start)
                    port.write(action.write)
            port.timeout = max(0.0, s.next_wake(time.monotonic()) - time.monotonic())
            data = port.read(1)
            data += port.read(port.in_waiting)
            if data:
                frames += framer.feed(decode_7e1(s.received(data, time.monotonic())))
    assert s.stats.readouts == 3 and meter.readouts == 3 and meter.wrong_baud == 0
    assert [f.bcc_ok for f in frames] == [True, True, True] and s.stats.echoes == 3
    assert [round(t, 1) for t in requests] == [0.0, 2.0, 4.0]
