"""IEC 62056-21 mode C, the master's side: ask the meter for a readout, switch the rate.

A pull meter sends nothing until asked. At each interval the session asks (meters.md §8.3)::

    agent, 300 Bd 7E1:   / ? ! CR LF                       request
    meter, 300 Bd:       / X X X Z ident CR LF             identification, Z = baud character
    agent, 300 Bd:       ACK 0 Z' 0 CR LF                  Z' = Z capped at max_baud
    both switch to Z'; meter:  STX data lines ! CR LF ETX BCC

Pure: no I/O, no thread, no clock of its own; the reader (the edge) passes the time in and
does what due() says. What the meter sends goes through received(), which returns the bytes
the D0 pipeline should frame: the identification line and the readout from STX through the
BCC, nothing else, so echoes of our own messages (a half-duplex head hears itself, as the
ACE3000 capture shows), junk before the answer and bytes that arrived at the wrong rate
around the switch never reach the framer (an echoed ACK between the ident line and STX
would spoil a good frame). The BCC itself is verified by the pipeline, not here.

The identification's fifth character says how the meter goes on (IEC 62056-21 §6.3.14):
'0'..'6' mode C (300..19200 Bd after our acknowledgement; '7'..'9' reserved: refused);
'A'..'F' mode B (the meter switches to 600..19200 Bd on its own, no acknowledgement: we
follow at once, or refuse a rate above max_baud; 'G'..'I' reserved: refused); any other
printable character mode A (the readout follows at 300 Bd, no acknowledgement).

Timing (IEC 62056-21 §6.3, the standard's text was not at hand here: values as commonly
cited, meters.md §11.5): a meter answers tr = 200..1500 ms after a message ends (from 20 ms
when the third letter of its maker code is lower case, e.g. Iskra's "ISk"); characters of
one message are at most ta = 1500 ms apart.

Every state but IDLE has a deadline, so the session always comes back to a request at the
next interval: it can never be stuck waiting.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .d0.framing import MAX_FRAME
from .parity import encode_7e1
from .pipeline import DECODERS

STX, ETX, ACK = 0x02, 0x03, 0x06
CR_LF = b"\r\n"
REQUEST = b"/?!\r\n"
START_BAUD = 300  # every exchange starts at 300 Bd (modes A, B and C)
BITS_PER_CHAR = 10  # 7E1: start, 7 data, parity, stop

MODE_C_RATES = {ord(c): 300 << i for i, c in enumerate("0123456")}  # '6' = 19200
MODE_B_RATES = {ord(c): 600 << i for i, c in enumerate("ABCDEF")}  # 'F' = 19200
RESERVED = frozenset(b"789GHI")

TR_MIN = 0.2  # the meter's least reaction time (s) ...
TR_MIN_FAST = 0.02  # ... when its maker code's third letter is lower case
TR_MAX = 1.5  # its longest reaction time; also ta, the longest gap inside a message
# USB adapters deliver bytes in packets and the reader may sit in a read for a moment:
# every wait for the meter gets this much on top of what the standard allows it.
SLACK = 0.5
# Longest identification: '/' + maker (3) + Z + 16 characters + '\W' + CR LF = 25.
IDENT_MAX = 25
# We acknowledge after the standard's least reaction time (the meter's receiver is surely
# ready again), far inside the 1.5 s it waits for us.
ACK_DELAY = 0.25
# After a failed exchange (no answer, garbled, refused, cut) the meter may still wait for a
# message of ours for up to tr/ta max: the next request comes no sooner than this.
QUIET_AFTER_FAILURE = TR_MAX


def char_time(baud: int) -> float:
    return BITS_PER_CHAR / baud


# T1: the request's 5 characters leave the wire, the meter takes up to tr max to answer and
# the longest identification takes 25 characters at 300 Bd: 0.167 + 1.5 + 0.833 = 2.5 s.
IDENT_TIMEOUT = (len(REQUEST) + IDENT_MAX) * char_time(START_BAUD) + TR_MAX + SLACK
# T2, first part: from the acknowledgement (or the identification in modes A and B) to the
# readout's first byte: our ACK leaves the wire (0.2 s) and the meter takes up to tr max.
READOUT_START_TIMEOUT = 6 * char_time(START_BAUD) + TR_MAX + SLACK
# T2, second part: no gap inside the readout longer than ta max.
READOUT_GAP_TIMEOUT = TR_MAX + SLACK


def readout_timeout(baud: int) -> float:
    """T2, last part: the whole readout ends within what the framer takes at most
    (MAX_FRAME characters at the rate) after its start: endless babble cannot hold us."""
    return READOUT_START_TIMEOUT + MAX_FRAME * char_time(baud)


@dataclass(frozen=True, slots=True)
class Action:
    """What the reader does now, in this order: set the port's rate (if `baud`), then
    write `write` (wire bytes, already 7E1-encoded if the port's parity is software)."""

    write: bytes = b""
    baud: int | None = None


class State(enum.StrEnum):
    IDLE = "idle until the next request"
    WAIT_IDENT = "waiting for identification"
    IDENTIFIED = "identified, about to acknowledge"
    SWITCHING = "acknowledged, switching the rate"
    READOUT = "receiving the readout"


@dataclass
class ModeCStats:
    requests: int = 0  # requests written
    identified: int = 0  # well-formed identifications accepted
    readouts: int = 0  # readouts that ended (ETX and the BCC byte; verified elsewhere)
    no_identification: int = 0  # T1 passed without one
    readout_timeouts: int = 0  # T2 passed: no readout, a gap, or no end
    garbled: int = 0  # identifications that were damaged or malformed
    refused: int = 0  # identifications with a reserved rate, or a mode B rate > max_baud
    echoes: int = 0  # our own request heard back before the answer
    missed_slots: int = 0  # intervals skipped because an exchange was still running
    dropped_bytes: int = 0  # bytes not passed on: echoes, junk, bytes outside an exchange


class ModeCSession:
    """The master side of mode C readouts, one every `interval` seconds from `start`."""

    def __init__(
        self, interval: float, start: float, max_baud: int = 9600, parity: str = "even"
    ) -> None:
        if not interval > 0:
            raise ValueError(f"mode C interval must be positive seconds, got {interval!r}")
        if max_baud not in MODE_C_RATES.values():
            rates = ", ".join(str(r) for r in MODE_C_RATES.values())
            raise ValueError(f"mode C max_baud must be one of {rates}, got {max_baud!r}")
        if parity not in DECODERS:
            raise ValueError(f"parity must be one of {', '.join(DECODERS)}, got {parity!r}")
        self.interval = interval
        self.max_baud = max_baud
        self._decode = DECODERS[parity]
        # "even": the port is 8N1 and parity is ours to add; "none": the head does 7E1.
        self._encode = encode_7e1 if parity == "even" else bytes
        self.stats = ModeCStats()
        self.state = State.IDLE
        self.baud = START_BAUD  # the rate the port should be at now
        self.ident = ""  # the last accepted identification, without '/' and CR LF
        self.mode = ""  # its protocol mode: "A", "B" or "C"
        self._next_request = start
        self._pending: list[Action] = []
        self._since = start  # when the current state began
        self._deadline = start  # when the current state gives up (or acts)
        self._rate = START_BAUD  # the rate agreed for the readout
        self._fast = False  # the meter may answer 20 ms after a message
        self._line = bytearray()  # decoded identification line so far, from its '/'
        self._raw_line = bytearray()  # the same bytes as they came off the wire
        self._stx = False  # the readout's STX has come
        self._etx = False  # its ETX has come: one more byte, the BCC, ends it
        self._last_byte = start

    # ------------------------------------------------------------------ driven by the reader
    def due(self, now: float) -> list[Action]:
        """What to do at `now`: call it when next_wake() comes, and after received()."""
        if self.state is State.IDLE:
            if now >= self._next_request:
                self._request(now)
                self._pending.append(Action(write=self._encode(REQUEST), baud=START_BAUD))
        elif now >= self._wake_at():
            self._step(now)
        actions, self._pending = self._pending, []
        return actions

    def _step(self, now: float) -> None:
        """The current state's time has come: act, or give up."""
        if self.state is State.WAIT_IDENT:
            self.stats.no_identification += 1
            self._fail(now)
        elif self.state is State.IDENTIFIED and now - self._since > TR_MAX:
            # The reader came back too late: the meter has stopped waiting for our ACK.
            self.stats.readout_timeouts += 1
            self._fail(now)
        elif self.state is State.IDENTIFIED:
            self._pending.append(Action(write=self._encode(self._ack())))
            self._acknowledged(now)
        elif self.state is State.SWITCHING:
            acked_at = self._since
            self.baud = self._rate
            self._pending.append(Action(baud=self._rate))
            self._enter(State.READOUT, now, acked_at + READOUT_START_TIMEOUT - now)
        else:
            self.stats.readout_timeouts += 1
            self._fail(now)

    def received(self, data: bytes, now: float) -> bytes:
        """Bytes the meter sent (wire bytes, as read); returns those the D0 pipeline should
        frame (wire bytes too): the identification line and the readout, nothing else."""
        text = self._decode(data)
        passed = bytearray()
        pos = 0
        while pos < len(text):
            state = self.state
            if state is State.WAIT_IDENT:
                pos = self._ident_bytes(data, text, pos, now, passed)
            elif state is State.READOUT:
                pos = self._readout_bytes(data, text, pos, now, passed)
            else:  # between exchanges, or our ACK (and its echo) on the wire
                self.stats.dropped_bytes += len(text) - pos
                break
        return bytes(passed)

    def next_wake(self, now: float) -> float:
        """The latest time the reader must call due() again (never earlier than `now`)."""
        if self._pending:
            return now
        return max(now, self._wake_at())

    def _wake_at(self) -> float:
        if self.state is State.IDLE:
            return self._next_request
        if self.state is State.READOUT and self._stx:
            return min(
                self._last_byte + READOUT_GAP_TIMEOUT, self._since + readout_timeout(self._rate)
            )
        return self._deadline

    def wanted(self, pipeline_wanted: int) -> int:
        """How many bytes a read should wait for (a tty wakes the reader only once that many
        have come): one until the readout has started, since an identification must be acted
        on at once (the meter waits at most 1.5 s for our ACK), the pipeline's wish after."""
        if self.state is State.READOUT and self._stx:
            return pipeline_wanted
        return 1

    def port_reopened(self, now: float) -> None:
        """The reader opened the port anew (a replug): whatever was running is lost; the
        port is set to 300 Bd and the schedule goes on."""
        if self.state is not State.IDLE:
            self._fail(now)
        self.baud = START_BAUD
        self._pending = [Action(baud=START_BAUD)]

    # ------------------------------------------------------------------ the identification
    def _ident_bytes(self, raw: bytes, text: bytes, pos: int, now: float, passed: bytearray) -> int:
        line = self._line
        if not line:
            start = text.find(b"/", pos)
            if start < 0:
                self.stats.dropped_bytes += len(text) - pos
                return len(text)
            self.stats.dropped_bytes += start - pos  # noise before the answer (0x7F on ACE3000)
            pos = start
        end = text.find(b"\n", pos)
        stop = len(text) if end < 0 else end + 1
        line += text[pos:stop]
        self._raw_line += raw[pos:stop]
        if end < 0:
            if len(line) > IDENT_MAX:
                self._garbled(now)
            return stop
        if line.startswith(b"/?"):  # our own request, echoed by the head (a maker is letters)
            self.stats.echoes += 1
            self.stats.dropped_bytes += len(line)
            self._line.clear()
            self._raw_line.clear()
            return stop
        raw_line = bytes(self._raw_line)
        if self._identify(bytes(line), now):
            passed += raw_line
        return stop

    def _identify(self, line: bytes, now: float) -> bool:
        if not _well_formed(line):
            self._garbled(now)
            return False
        z = line[4]
        if z in RESERVED or (z in MODE_B_RATES and MODE_B_RATES[z] > self.max_baud):
            self.stats.refused += 1
            self._fail(now)
            return False
        self.stats.identified += 1
        self.ident = line[1:-2].decode("ascii")
        self._fast = line[3:4].islower()
        self._line.clear()
        self._raw_line.clear()
        if z in MODE_C_RATES:
            self.mode = "C"
            self._rate = min(MODE_C_RATES[z], self.max_baud)
            self._enter(State.IDENTIFIED, now, ACK_DELAY)
        elif z in MODE_B_RATES:  # the meter switches now, without waiting for us
            self.mode = "B"
            self._rate = MODE_B_RATES[z]
            self.baud = self._rate
            self._pending.append(Action(baud=self._rate))
            self._enter(State.READOUT, now, READOUT_START_TIMEOUT)
        else:  # mode A: the readout follows at 300 Bd
            self.mode = "A"
            self._rate = START_BAUD
            self._enter(State.READOUT, now, READOUT_START_TIMEOUT)
        return True

    def _ack(self) -> bytes:
        z = next(c for c, rate in MODE_C_RATES.items() if rate == self._rate)
        return bytes([ACK, ord("0"), z, ord("0")]) + CR_LF  # normal protocol, data readout

    def _acknowledged(self, now: float) -> None:
        if self._rate == START_BAUD:
            self._enter(State.READOUT, now, READOUT_START_TIMEOUT)
            return
        # Switch once the ACK's last stop bit has left at 300 Bd, well before the meter can
        # answer at the new rate (tr min after the ACK): half of tr min later.
        margin = (TR_MIN_FAST if self._fast else TR_MIN) / 2
        self._enter(State.SWITCHING, now, 6 * char_time(START_BAUD) + margin)

    # ------------------------------------------------------------------ the readout
    def _readout_bytes(
        self, raw: bytes, text: bytes, pos: int, now: float, passed: bytearray
    ) -> int:
        if not self._stx:
            stx = text.find(STX, pos)
            if stx < 0:  # our ACK's echo, bytes garbled by the switch
                self.stats.dropped_bytes += len(text) - pos
                return len(text)
            self.stats.dropped_bytes += stx - pos
            self._stx = True
            self._since = now  # the readout's own time limit runs from its start
            pos = stx
        self._last_byte = now
        if self._etx:  # the BCC, whatever its value, ends the readout
            passed += raw[pos : pos + 1]
            self._ended(now)
            return pos + 1
        etx = text.find(ETX, pos)
        end = len(text) if etx < 0 else etx + 1
        self._etx = etx >= 0
        passed += raw[pos:end]
        return end

    def _ended(self, now: float) -> None:
        self.stats.readouts += 1
        self._back_to_idle(now, now)

    # ------------------------------------------------------------------ bookkeeping
    def _request(self, now: float) -> None:
        self.stats.requests += 1
        self.baud = START_BAUD
        self._line.clear()
        self._raw_line.clear()
        self._enter(State.WAIT_IDENT, now, IDENT_TIMEOUT)
        self._next_request += self.interval
        self._skip_to(now)

    def _skip_to(self, t: float) -> None:
        """The next request goes at the first slot at or after t; the slots before it are
        missed (an exchange or the reader ran over them)."""
        if self._next_request < t:
            missed = math.ceil((t - self._next_request) / self.interval)
            self._next_request += missed * self.interval
            self.stats.missed_slots += missed

    def _enter(self, state: State, now: float, timeout: float) -> None:
        self.state = state
        self._since = now
        self._deadline = now + timeout
        self._stx = self._etx = False
        self._last_byte = now

    def _garbled(self, now: float) -> None:
        self.stats.garbled += 1
        self.stats.dropped_bytes += len(self._line)
        self._fail(now)

    def _fail(self, now: float) -> None:
        """The exchange is over without a readout: back to 300 Bd, quiet for a while."""
        self._back_to_idle(now, now + QUIET_AFTER_FAILURE)

    def _back_to_idle(self, now: float, not_before: float) -> None:
        self._line.clear()
        self._raw_line.clear()
        self._enter(State.IDLE, now, 0.0)
        self._skip_to(not_before)
        if self.baud != START_BAUD:
            self.baud = START_BAUD
            self._pending.append(Action(baud=START_BAUD))  # due() hands it out


def _well_formed(line: bytes) -> bool:
    """'/' + 3-letter maker code + a printable baud character + 1..16 printable characters
    (an optional '\\W' enhanced-id pair first) + CR LF; nothing damaged (PARITY_ERROR is
    0xFF, never printable)."""
    if len(line) < 7 or len(line) > IDENT_MAX or not line.endswith(CR_LF):
        return False
    maker, z, rest = line[1:4], line[4], line[5:-2]
    if not maker.isalpha():
        return False
    if not 0x20 < z < 0x7F or z in b"/!":
        return False
    if rest.startswith(b"\\"):
        rest = rest[2:]
    return 1 <= len(rest) <= 16 and all(0x20 <= c < 0x7F and c not in b"/!" for c in rest)
