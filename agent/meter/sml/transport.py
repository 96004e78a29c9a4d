"""Bytes in, SML 1.04 transport frames out, each verified by its CRC before anything else.

A frame on the wire (meters.md §8.4)::

    1B1B1B1B 01010101   start escape (version 1)
    <SML file>          a 1B1B1B1B word of data is sent twice
    00 .. 00            NN fill bytes (0-3): the frame length is a multiple of 4
    1B1B1B1B 1A NN C1 C2  end escape, fill count, CRC-16 over everything before C1

Escapes count only on the 4-byte grid from the start escape: there `1B1B1B1B` + `1B1B1B1B`
is one `1B1B1B1B` of data, + `1A` the end, + `01010101` a new start (the frame before was
cut short), anything else a damaged escape. One rule holds everywhere, on the grid or off
it: `1B1B1B1B 01010101` starts a frame. Lost bytes shift the grid (the EasyMeter capture's
499 and 490 B frames), so only a byte-wise search for the start finds the next frame;
data that happened to contain those 8 bytes would cost its frame (never seen; never a
wrong frame, since that frame is dropped, not altered).

The CRC is CRC-16/X-25 sent low byte first on every meter in the captures; some meters
(Holley) send CRC-16/KERMIT, high byte first. Four ways to read two CRC bytes would let a
damaged frame through four times as often (4/65536), so the framer reads one: the variant
it is locked to (X-25 low byte first, the standard's, until a meter proves otherwise). A
frame that fails it but verifies under another variant is not passed; only RELOCK_AFTER
such frames in a row, all under that same variant, move the lock, and the frame that
completes the run is checked against a variant chosen before it arrived. So every frame
passed was checked against one variant fixed in advance: a damaged frame passes with
probability 1/65536 at most, the bound of the CRC itself (firmware-notes/sml.md).

Pure and incremental: any split of the stream into reads gives the same frames, every byte
is looked at a bounded number of times (no rescans, no copies of the rest of a read per
frame), and memory stays below MAX_FRAME plus one read.
"""

from __future__ import annotations

import binascii
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

ESCAPE = b"\x1b\x1b\x1b\x1b"
START = ESCAPE + b"\x01\x01\x01\x01"
END_MARK = 0x1A

# The largest frame in the captures is 504 B (EasyMeter Q3A); libsml, which vzlogger uses
# for every SML meter it reads, holds a frame in an 8096-byte buffer, so no meter in use
# sends more. 8 KiB is 16 times the largest seen and 8.5 s of a 9600 Bd line: a lost end
# costs at most that, and the buffer stays bounded under endless noise.
MAX_FRAME = 8192
# Frames in a row that must verify under another CRC variant (and fail the locked one)
# before the lock moves: see the module docstring. At least 2: the first of them only
# names the variant, so it is never passed.
RELOCK_AFTER = 2
# wanted() never asks for more than this: a read hint, not a promise of a frame's length.
MAX_WANTED = 512


class Reason(StrEnum):
    """Why SML bytes were not published: transport damage, decoding, plausibility.

    One enum for the whole SML path, so one counter serves STATUS and the rejection log.
    """

    CUT_SHORT = "frame cut short by a new start"
    ALIGNMENT = "next start off the 4-byte grid (bytes lost)"
    ESCAPE = "unknown escape sequence"
    TOO_LONG = "frame longer than the limit"
    FILL = "bad fill count or fill bytes"
    CRC = "CRC mismatch"
    CRC_VARIANT = "CRC verifies only under another variant (not yet confirmed)"
    # decode.py
    TRUNCATED = "SML data ends inside an element"
    TYPE = "unexpected SML type"
    LENGTH = "bad SML length"
    STRUCTURE = "bad SML message structure"
    OBIS = "bad OBIS code"
    DUPLICATE = "repeated OBIS code"
    NO_VALUES = "no GetList response"
    # check.py
    IDENTITY = "meter id changed"
    SECONDS = "seconds counter did not grow"
    ENERGY_FELL = "energy counter fell"
    ENERGY_RATE = "energy grew faster than any load"


class CrcVariant(StrEnum):
    """How a meter computes and sends the frame CRC. The value names it in logs."""

    X25 = "x25"  # CRC-16/X-25, low byte first: the SML standard and every eBZ
    X25_MSB = "x25-msb-first"
    KERMIT = "kermit"  # CRC-16/KERMIT, high byte first: Holley (SmlLib's tests)
    KERMIT_LSB = "kermit-lsb-first"


# binascii.crc_hqx is CRC-16/XMODEM-style (poly 0x1021, MSB first, in C). X-25 and KERMIT
# are the same polynomial bit-reflected: feed it bit-reversed bytes, reverse the result.
_REVERSE8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse16(x: int) -> int:
    return (_REVERSE8[x & 0xFF] << 8) | _REVERSE8[x >> 8]


def crc_x25(data: bytes) -> int:
    """CRC-16/X-25: init 0xFFFF, reflected, xorout 0xFFFF; check("123456789") = 0x906E."""
    return _reverse16(binascii.crc_hqx(data.translate(_REVERSE8), 0xFFFF)) ^ 0xFFFF


def crc_kermit(data: bytes) -> int:
    """CRC-16/KERMIT: init 0, reflected, xorout 0; check("123456789") = 0x2189."""
    return _reverse16(binascii.crc_hqx(data.translate(_REVERSE8), 0))


def crc_bytes(variant: CrcVariant, covered: bytes) -> bytes:
    """The two CRC bytes a meter of `variant` sends after `covered`."""
    crc = crc_kermit(covered) if variant in (CrcVariant.KERMIT, CrcVariant.KERMIT_LSB) else None
    if crc is None:
        crc = crc_x25(covered)
    lsb_first = variant in (CrcVariant.X25, CrcVariant.KERMIT_LSB)
    return crc.to_bytes(2, "little" if lsb_first else "big")


def _variants_matching(covered: bytes, sent: bytes) -> list[CrcVariant]:
    x25, kermit = crc_x25(covered), crc_kermit(covered)
    little, big = int.from_bytes(sent, "little"), int.from_bytes(sent, "big")
    found = []
    if little == x25:
        found.append(CrcVariant.X25)
    if big == x25:
        found.append(CrcVariant.X25_MSB)
    if big == kermit:
        found.append(CrcVariant.KERMIT)
    if little == kermit:
        found.append(CrcVariant.KERMIT_LSB)
    return found


@dataclass(frozen=True, slots=True)
class SmlFrame:
    """A frame whose CRC verified under the locked variant, and whose fill is right."""

    raw: bytes  # the whole transport frame exactly as received, escapes included
    file: bytes  # the SML file: escapes undone, fill removed
    crc: str  # the CrcVariant it verified under


@dataclass(frozen=True, slots=True)
class SmlDamage:
    """Bytes that began like a frame and failed. Never published; counted and logged."""

    raw: bytes
    reason: Reason


@dataclass
class TransportStats:
    frames: int = 0  # good frames
    damaged: Counter[Reason] = field(default_factory=Counter)
    dropped_bytes: int = 0  # bytes outside any frame (a dump's partial first frame, noise)


class SmlFramer:
    """Cuts a byte stream into SML transport frames and verifies each one."""

    def __init__(self, crc: CrcVariant | None = None, max_frame: int = MAX_FRAME) -> None:
        """`crc`: a variant fixed by configuration (never relocked); None = the standard's
        X-25 until the meter proves another (RELOCK_AFTER frames)."""
        self._max = max_frame
        self._fixed = crc is not None
        self.crc = crc or CrcVariant.X25  # the locked variant
        self._rival: CrcVariant | None = None  # another variant the last frames verified under
        self._rival_run = 0
        self._buf = bytearray()  # unconsumed stream bytes
        self._start = -1  # offset of the frame in progress in _buf, -1 while hunting a start
        self._scan = 0  # next offset of _buf to search for an escape (never searched twice)
        self._escaped: list[int] = []  # offsets of the doubled escape words of the frame
        self._owned = 0  # bytes at the front of _buf already reported with a frame
        self.stats = TransportStats()
        self.last_length = 0  # length of the last complete frame, good or bad
        self._ended = 0  # frames that reached an end (good or bad), for pacing

    @property
    def pending(self) -> int:
        """Bytes of the frame in progress (0 while hunting a start)."""
        return len(self._buf) - self._start if self._start >= 0 else 0

    @property
    def frames(self) -> int:
        """Frames that ended so far, good or damaged (the reader paces its reads by them)."""
        return self._ended

    def wanted(self) -> int:
        """A read size hint: the bytes still missing to a frame as long as the last one."""
        if not self.last_length:
            return 1
        return max(1, min(MAX_WANTED, self.last_length - self.pending))

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened: its tail will never come)."""
        if self._start >= 0:
            self.stats.dropped_bytes += len(self._buf) - self._start
        self._buf.clear()
        self._start = -1
        self._scan = 0
        self._owned = 0
        self._escaped.clear()

    def feed(self, data: bytes) -> list[SmlFrame | SmlDamage]:
        """Add bytes; return the frames and damage they completed, oldest first."""
        out: list[SmlFrame | SmlDamage] = []
        buf = self._buf
        buf += data
        while True:
            if self._start < 0:
                at = buf.find(START, self._scan)
                if at < 0:
                    # Keep what may be the beginning of a start escape split by the read.
                    drop = max(self._scan, len(buf) - (len(START) - 1))
                    self._drop(drop)
                    break
                self._drop(at)
                self._begin()
                continue
            if not self._step(out):
                break
        return out

    def _begin(self) -> None:
        """A frame starts at the front of the buffer."""
        self._start = 0
        self._scan = len(START)
        self._escaped.clear()

    def _hunt(self, at: int, owned: int) -> None:
        """Look for the next start from `at` on, byte-wise; the bytes before `owned` (at
        or after `at`) belong to a frame already reported."""
        del self._buf[:at]
        self._owned = owned - at
        self._start = -1
        self._scan = 0
        self._escaped.clear()

    def _drop(self, at: int) -> None:
        """Bytes before `at` belong to no frame."""
        self.stats.dropped_bytes += max(0, at - self._owned)
        self._owned = max(0, self._owned - at)
        del self._buf[:at]
        self._scan = 0

    def _step(self, out: list[SmlFrame | SmlDamage]) -> bool:
        """Move the frame in progress on by one escape; False when more bytes are needed.

        An escape is judged only once the bytes that give it its meaning are all within
        MAX_FRAME of the start; so whatever the reads, the same bytes give the same result.
        """
        buf, start = self._buf, self._start
        limit = start + self._max  # nothing of the frame may lie beyond this
        k = buf.find(ESCAPE, self._scan)
        if k < 0:
            self._scan = max(self._scan, len(buf) - 3)
            if len(buf) > limit:
                self._too_long(out)
                return True
            return False
        if k + 8 > limit:
            self._too_long(out)
            return True
        if k + 8 > len(buf):
            self._scan = k
            return False  # the escape's meaning is in bytes not yet here
        word = bytes(buf[k + 4 : k + 8])
        if word == START[4:]:
            # A new start: on the grid the frame was cut short; off it, bytes were lost.
            on_grid = (k - start) % 4 == 0
            self._damage(
                out, bytes(buf[start:k]), Reason.CUT_SHORT if on_grid else Reason.ALIGNMENT
            )
            del buf[:k]
            self._begin()
            return True
        if (k - start) % 4:
            self._scan = k + 1  # data that happens to hold 1B1B1B1B off the grid
            return True
        if word == ESCAPE:
            # One 1B1B1B1B of data, unless the second word begins a start: then the frame
            # ended in a lone escape (cut short) and the next frame starts there.
            if k + 12 > limit:
                self._too_long(out)
                return True
            if k + 12 > len(buf):
                self._scan = k
                return False
            if buf[k + 8 : k + 12] == START[4:]:
                self._damage(out, bytes(buf[start : k + 4]), Reason.CUT_SHORT)
                del buf[: k + 4]
                self._begin()
                return True
            self._escaped.append(k - start)
            # A start may begin inside the second word only if what follows it is 1B too
            # (a frame cut within an escape pair): search again from there.
            self._scan = k + 5
            return True
        if word[0] == END_MARK:
            frame, escaped = bytes(buf[start : k + 8]), self._escaped.copy()
            # A frame cut after its 1A gives its fill and CRC bytes to the next start:
            # look for that start from just after the 1A.
            self._hunt(k + 5, owned=k + 8)
            self._end(out, frame, escaped)
            return True
        self._damage(out, bytes(buf[start : k + 8]), Reason.ESCAPE)
        self._hunt(k + 1, owned=k + 8)  # resynchronise byte-wise at the next start
        return True

    def _too_long(self, out: list[SmlFrame | SmlDamage]) -> None:
        # No end within the limit. A start wholly inside it would have cut the frame, so
        # the next start can begin at the earliest where one would straddle the limit.
        cut = self._start + self._max - (len(START) - 1)
        self._damage(out, bytes(self._buf[self._start : cut]), Reason.TOO_LONG)
        self._hunt(cut, owned=cut)

    def _damage(self, out: list[SmlFrame | SmlDamage], raw: bytes, reason: Reason) -> None:
        self.stats.damaged[reason] += 1
        self._ended += 1
        self.last_length = len(raw)
        out.append(SmlDamage(raw, reason))

    def _end(self, out: list[SmlFrame | SmlDamage], frame: bytes, escaped: list[int]) -> None:
        """A frame reached its end escape on the grid: CRC first, then the fill."""
        variants = _variants_matching(frame[:-2], frame[-2:])
        if self.crc not in variants and not self._relocked(variants):
            self._damage(out, frame, Reason.CRC_VARIANT if self._rival else Reason.CRC)
            return
        self._rival, self._rival_run = None, 0
        fill = frame[-3]
        body_end = len(frame) - 8 - fill
        if fill > 3 or body_end < len(START) or any(frame[body_end : len(frame) - 8]):
            self._damage(out, frame, Reason.FILL)
            return
        self.stats.frames += 1
        self._ended += 1
        self.last_length = len(frame)
        out.append(SmlFrame(frame, _unescape(frame, escaped, body_end), str(self.crc)))

    def _relocked(self, variants: list[CrcVariant]) -> bool:
        """A frame failed the locked variant. If it verifies under the variant the frames
        just before it verified under, and completes a run of RELOCK_AFTER, that variant
        becomes the lock: it was chosen before this frame arrived, so this frame had one
        chance in 65536 to match it by accident, as under any lock."""
        if self._fixed or not variants:
            self._rival, self._rival_run = None, 0
            return False
        rival = self._rival
        if rival is None or rival not in variants:
            self._rival, self._rival_run = variants[0], 1
            return False
        self._rival_run += 1
        if self._rival_run < RELOCK_AFTER:
            return False
        self.crc = rival
        return True


def _unescape(frame: bytes, escaped: list[int], body_end: int) -> bytes:
    """The SML file: between the start escape and the fill, each doubled escape once."""
    parts = []
    at = len(START)
    for k in escaped:
        parts.append(frame[at : k + 4])
        at = k + 8
    parts.append(frame[at:body_end])
    return b"".join(parts)
