"""Bytes in, D0 / IEC 62056-21 text frames out: push telegrams and STX/ETX frames with a BCC.

Two framings share the `/` start (meters.md §8.1, §8.3)::

    push (EasyMeter Q3D, Logarex, eBZ):  /ident CR LF  CR LF  data lines  ! CR LF
    STX/ETX (mode C readout, ZPA push):  /ident CR LF [CR LF] STX  data lines  ! CR LF  ETX  BCC

(the ZPA GH305 sends the empty line before STX: tibber-bridge.md §4.2; the grammar allows one).

A push telegram carries no checksum; whatever follows its `!\\r\\n` up to the next `/` is
junk (the EasyMeter COM-1 gateway appends two lines and 33 x 0xFF). An STX frame ends one
byte after its ETX: the BCC, any 7-bit value, `/` included; a `/` there is taken for the
next frame's start only if it is not the BCC that verifies (the BCC byte was lost).
The BCC is the XOR of every byte after STX up to and including ETX; a frame is passed on
with `bcc_ok` saying whether it verified (the pipeline rejects it if not). The ident line
lies before STX: the BCC does not cover it (the layout check does, see check.py).

`/?...!\\r\\n` is a request (the echo of our own on a half-duplex head), not a telegram: it
is dropped as noise. A `/` inside a frame means its end was lost (values never contain `/`):
the frame so far is passed on marked `cut`, and the new one starts.

The input is 7-bit (the parity stage runs first); a byte that failed its parity check is
agent.meter.parity.PARITY_ERROR and stays in the frame for the grammar to reject.

Incremental and O(n): any split of the stream into reads gives the same frames; each byte
is searched a bounded number of times (every search stops at the next `/`); the frame in
progress never exceeds MAX_FRAME.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import xor

START = ord("/")
STX, ETX = 0x02, 0x03
END = b"!\r\n"
REQUEST = b"/?"

# The longest frame in the captures is the L+G E350 readout, 419 bytes; a mode C readout
# of a meter with many registers runs to a few KB. 8 KiB is 8.5 s of a 9600 Bd line: a lost
# end costs at most that, and endless noise cannot grow memory past it.
MAX_FRAME = 8192


@dataclass(frozen=True, slots=True)
class D0Frame:
    """One framed telegram, 7-bit, exactly as received from `/` on."""

    raw: bytes  # through `!\r\n` (push), or through the BCC byte (STX/ETX)
    stx: bool  # STX/ETX framing: raw[-1] is the BCC
    cut: bool = False  # ended by a new `/` or the size limit before its end: damaged

    @property
    def bcc_ok(self) -> bool:
        """Whether the BCC verified (False for push telegrams and cut frames: no BCC)."""
        if not self.stx or self.cut:
            return False
        at = self.raw.find(STX)
        return bcc(self.raw[at + 1 : -1]) == self.raw[-1]


def bcc(data: bytes) -> int:
    """XOR of all bytes (IEC 62056-21's block check: pass the bytes after STX through ETX)."""
    return reduce(xor, data, 0)


@dataclass
class D0FramingStats:
    frames: int = 0  # complete frames (a cut one is not counted)
    dropped_bytes: int = 0  # between frames: gateway trailers, noise, a partial first frame
    cut: int = 0  # a `/` (or the size limit) before the end
    requests: int = 0  # request echoes dropped


class D0Framer:
    """Cuts a 7-bit byte stream into D0 frames (the MeterPipeline framer shape)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()  # empty, or the frame in progress from its `/`
        self._stx = False  # the frame in progress has its STX
        self._need_bcc = False  # its ETX arrived; the next byte is the BCC
        self.stats = D0FramingStats()
        self.last_length = 0

    @property
    def frames(self) -> int:
        return self.stats.frames

    @property
    def pending(self) -> int:
        return len(self._buf)

    def wanted(self) -> int:
        """Bytes that would complete the frame in progress, judging by the last one."""
        if self.last_length and self.pending < self.last_length:
            return self.last_length - self.pending
        return 1

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened; its tail will never come)."""
        self.stats.dropped_bytes += len(self._buf)
        self._clear()

    def feed(self, data: bytes) -> list[D0Frame]:
        out: list[D0Frame] = []
        buf = self._buf
        pos, n = 0, len(data)
        while pos < n:
            if not buf:
                start = data.find(b"/", pos)
                if start < 0:
                    self.stats.dropped_bytes += n - pos
                    break
                self.stats.dropped_bytes += start - pos
                buf.append(START)
                pos = start + 1
                continue
            if self._need_bcc:
                byte = data[pos]
                if byte == START and bcc(buf[buf.index(STX) + 1 :]) != START:
                    # The BCC was lost and this `/` starts the next frame (a BCC of `/`
                    # that verifies is taken as the BCC): this one ends damaged.
                    self._emit(out, cut=True)
                    continue
                buf.append(byte)
                pos += 1
                self._emit(out, cut=False)
                continue
            restart = data.find(b"/", pos)
            limit = n if restart < 0 else restart
            if self._stx:
                etx = data.find(ETX, pos, limit)
                if etx >= 0:
                    buf += data[pos : etx + 1]
                    pos = etx + 1
                    self._need_bcc = True
                    continue
            else:
                end = self._end(data, pos, limit)
                stx = data.find(STX, pos, limit if end < 0 else end)
                if stx >= 0:
                    buf += data[pos : stx + 1]
                    pos = stx + 1
                    self._stx = True
                    continue
                if end >= 0:
                    buf += data[pos:end]
                    pos = end
                    self._emit(out, cut=False)
                    continue
            buf += data[pos:limit]
            pos = limit
            if restart >= 0:
                self._emit(out, cut=True)  # its end was lost: pass it on, damaged
            elif len(buf) > self._max:
                self._emit(out, cut=True)
        return out

    def _end(self, data: bytes, pos: int, limit: int) -> int:
        """Where the push end mark `!\\r\\n` ends in data[:limit], straddling the last read
        if need be; -1 if it is not there."""
        buf = self._buf
        if buf.endswith(b"!\r") and data.startswith(b"\n", pos) and pos < limit:
            return pos + 1
        if buf.endswith(b"!") and data.startswith(b"\r\n", pos) and pos + 2 <= limit:
            return pos + 2
        at = data.find(END, pos, limit)
        return at + len(END) if at >= 0 else -1

    def _emit(self, out: list[D0Frame], cut: bool) -> None:
        raw = bytes(self._buf)
        stx = self._stx
        self._clear()
        if raw.startswith(REQUEST):
            self.stats.requests += 1
            self.stats.dropped_bytes += len(raw)
            return
        if cut:
            self.stats.cut += 1
            raw = raw[: self._max]
        else:
            self.stats.frames += 1
            self.last_length = len(raw)
        out.append(D0Frame(raw, stx, cut))

    def _clear(self) -> None:
        self._buf.clear()
        self._stx = False
        self._need_bcc = False
