"""The project's own SML meter, and the damage an optical link does to its frames.

Pure: no I/O, no clock; all randomness from the caller's `random.Random`, so a seed
reproduces a stream byte for byte. The frames follow the real eBZ SML captures
(meters.md §8.4): OPEN.Res, GetList.Res, CLOSE.Res with correct message CRCs; energy in Wh
with scaler -5 (reduced: whole kWh, scaler +3, no power); power in W with scaler -2 as a
signed integer; the seconds index as actSensorTime. The server id is invented (eBZ-shaped,
`09 01 "EBZ" ...`), never a real meter's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .decode import CLOSE_RESPONSE, GET_LIST_RESPONSE, OPEN_RESPONSE
from .transport import ESCAPE, START, CrcVariant, crc_bytes, crc_x25

SERVER_ID = bytes.fromhex("090145425a0100000001")
UNIT_WH, UNIT_W = 30, 27
# The meter integrates in mJ: one 1.8.0 digit (10 uWh) is 36 mJ, one second at one power
# digit (0.01 W) is 10 mJ, so both stay exact.
MJ_PER_DIGIT = 36
MJ_PER_CENTIWATT_SECOND = 10
MJ_PER_KWH = 3_600_000_000
# EasyMeter sends a 48-byte public key as an octet string (Q3A capture); this stand-in
# holds 1B bytes so that the frame carries a 1B1B1B1B word on the grid: the escape path.
ESCAPE_VALUE = b"\x1b" * 8 + b"\x42" * 8


class _EndOfMessage:
    pass


EOM = _EndOfMessage()


@dataclass(frozen=True, slots=True)
class Raw:
    """An element already encoded."""

    tlv: bytes


Item = bytes | int | list["Item"] | _EndOfMessage | Raw | None


@dataclass(frozen=True, slots=True)
class Signed:
    """An integer sent as a signed SML integer of `size` bytes."""

    value: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class Unsigned:
    value: int
    size: int


def tl(kind: int, length: int) -> bytes:
    """A type-length field: one byte, or more with the continuation bit."""
    if length < 16:
        return bytes([kind | length])
    nibbles = []
    while length:
        nibbles.append(length & 0x0F)
        length >>= 4
    nibbles.reverse()
    head = [0x80 | kind | nibbles[0]] + [0x80 | n for n in nibbles[1:-1]] + [nibbles[-1]]
    return bytes(head)


def encode(item: Item | Signed | Unsigned) -> bytes:
    """One element as SML TLV. A plain int is sent unsigned in the fewest of 1, 2, 4, 8
    bytes; a plain bytes as an octet string; None as "not set" (01)."""
    if item is None:
        return b"\x01"
    if isinstance(item, Raw):
        return item.tlv
    if isinstance(item, _EndOfMessage):
        return b"\x00"
    if isinstance(item, Signed):
        return tl(0x50, item.size + 1) + item.value.to_bytes(item.size, "big", signed=True)
    if isinstance(item, Unsigned):
        return tl(0x60, item.size + 1) + item.value.to_bytes(item.size, "big")
    if isinstance(item, bool):
        return b"\x42" + bytes([item])
    if isinstance(item, int):
        size = next(s for s in (1, 2, 4, 8) if item < 1 << (8 * s))
        return encode(Unsigned(item, size))
    if isinstance(item, bytes):
        # The length counts the TL bytes too, so it decides how many TL bytes it takes.
        head = next(h for n in (1, 2, 3, 4) if len(h := tl(0x00, len(item) + n)) == n)
        return head + item
    if isinstance(item, list):
        return tl(0x70, len(item)) + b"".join(map(encode, item))
    raise TypeError(f"cannot encode {item!r}")


def message(transaction: bytes, group: int, tag: int, body: list[Item]) -> bytes:
    """An SML message with its CRC: X-25 over the message up to the CRC, low byte first
    (verified on every message of the captures but the anonymised eBZ sample's)."""
    head = tl(0x70, 6) + b"".join(map(encode, [transaction, group, 0, [Unsigned(tag, 2), body]]))
    crc = crc_x25(head)
    return head + b"\x63" + crc.to_bytes(2, "little") + b"\x00"


def transport(file: bytes, variant: CrcVariant = CrcVariant.X25) -> bytes:
    """The file in a transport frame: escapes on the grid, fill, end escape, CRC."""
    fill = -len(file) % 4
    padded = file + bytes(fill)
    words = [padded[i : i + 4] for i in range(0, len(padded), 4)]
    body = b"".join(w + w if w == ESCAPE else w for w in words)
    covered = START + body + ESCAPE + bytes([0x1A, fill])
    return covered + crc_bytes(variant, covered)


class SimulatedSml:
    """A two-way (or import-only) SML meter pushing one frame per meter second."""

    def __init__(
        self,
        *,
        rng: random.Random,
        server_id: bytes = SERVER_ID,
        seconds: int = 3_064_820,
        energy_kwh: float = 4500.9189911,
        export_kwh: float | None = 21.98,
        power_w: float = 350.0,
        crc: CrcVariant = CrcVariant.X25,
        reduced: bool = False,
        escape_value: bool = False,
        clock_step: int = 1,
    ) -> None:
        """clock_step: the time field sent moves in steps of that many seconds (a clock
        coarser than the frame rate; a huge step: a time that never moves)."""
        self._rng = rng
        self.server_id = server_id
        self.seconds = seconds
        self.clock_step = clock_step
        self._first_second = seconds
        self.crc = crc
        self.reduced = reduced
        self.escape_value = escape_value
        self._import_mj = round(energy_kwh * MJ_PER_KWH)
        self._export_mj = None if export_kwh is None else round(export_kwh * MJ_PER_KWH)
        self._mean_cw = round(power_w * 100)
        self.power_cw = self._mean_cw  # 16.7.0 of the latest frame, in 0.01 W
        self._transaction = rng.randrange(1 << 24)
        self.last_file = b""  # the SML file of the last frame built, before escaping

    @property
    def import_digits(self) -> int:
        """1.8.0 in its own digits (10 uWh; reduced: kWh, truncated like the meter)."""
        return self._digits(self._import_mj)

    @property
    def export_digits(self) -> int | None:
        return None if self._export_mj is None else self._digits(self._export_mj)

    @property
    def sent_seconds(self) -> int:
        """The time field of the frame: the meter's seconds, down to its clock's step."""
        return self.seconds - (self.seconds - self._first_second) % self.clock_step

    def set_power(self, power_w: float) -> None:
        """Move the mean load (negative: feeding in, on a two-way meter)."""
        self._mean_cw = round(power_w * 100)

    def next_frame(self) -> bytes:
        """One meter second on: its transport frame."""
        self._tick()
        return self.frame()

    def frame(self) -> bytes:
        """The current second's frame (a new transaction id each time)."""
        self.last_file = self.file()
        return transport(self.last_file, self.crc)

    def file(self) -> bytes:
        self._transaction += 1
        t = self._transaction
        ids = [(t << 8 | i).to_bytes(4, "big") for i in range(3)]
        open_res = [None, None, ids[0], self.server_id, None, None]
        get_list = [None, self.server_id, None, [1, Unsigned(self.sent_seconds, 4)]]
        get_list += [self._entries(), None, None]
        return (
            message(ids[0], 0, OPEN_RESPONSE, open_res)
            + message(ids[1], 0, GET_LIST_RESPONSE, get_list)
            + message(ids[2], 0, CLOSE_RESPONSE, [None])
        )

    def _tick(self) -> None:
        self.seconds += 1
        step = self._rng.randint(-500, 500)
        self.power_cw += step + (self._mean_cw - self.power_cw) // 8
        if self._export_mj is None:
            self.power_cw = max(0, self.power_cw)
        if self.power_cw >= 0:
            self._import_mj += self.power_cw * MJ_PER_CENTIWATT_SECOND
        elif self._export_mj is not None:
            self._export_mj -= self.power_cw * MJ_PER_CENTIWATT_SECOND

    def _digits(self, mj: int) -> int:
        return mj // MJ_PER_KWH if self.reduced else mj // MJ_PER_DIGIT

    def _entries(self) -> list[Item]:
        scaler = Signed(3 if self.reduced else -5, 1)
        entries: list[Item] = [
            _entry(bytes.fromhex("8181c78203ff"), b"EBZ"),
            _entry(bytes.fromhex("0100000009ff"), self.server_id),
            _entry(bytes.fromhex("0100010800ff"), Unsigned(self.import_digits, 8), scaler, UNIT_WH),
        ]
        if self._export_mj is not None:
            digits = self._digits(self._export_mj)
            entries.append(
                _entry(bytes.fromhex("0100020800ff"), Unsigned(digits, 8), scaler, UNIT_WH)
            )
        if not self.reduced:
            cw = self.power_cw
            phases = [cw // 3, cw // 3, cw - 2 * (cw // 3)]
            for c, value in zip((0x10, 0x24, 0x38, 0x4C), [cw, *phases], strict=True):
                name = bytes([1, 0, c, 7, 0, 0xFF])
                entries.append(_entry(name, Signed(value, 4), Signed(-2, 1), UNIT_W))
        if self.escape_value:
            entries.append(_entry(bytes.fromhex("8181c78205ff"), ESCAPE_VALUE))
        return entries


def _entry(
    name: bytes, value: Item | Signed | Unsigned, scaler: Signed | None = None, unit: int = 0
) -> Item:
    """objName, status, valTime, unit, scaler, value, valueSignature (pre-encoded)."""
    encoded = (
        tl(0x70, 7)
        + encode(name)
        + encode(None)
        + encode(None)
        + (encode(unit) if unit or scaler is not None else encode(None))
        + (encode(scaler) if scaler is not None else encode(None))
        + encode(value)
        + encode(None)
    )
    return Raw(encoded)


# --- damage -------------------------------------------------------------------------------


def flip_bits(frame: bytes, rng: random.Random, count: int = 1) -> bytes:
    """`count` distinct bits flipped anywhere in the frame (1-3: CRC-16 detects all)."""
    out = bytearray(frame)
    for bit in rng.sample(range(len(frame) * 8), count):
        out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def burst(frame: bytes, rng: random.Random, span: int = 16) -> bytes:
    """A burst: bits flipped within `span` consecutive bits, the first and last of them
    always (CRC-16 detects every burst up to 16 bits)."""
    start = rng.randrange(len(frame) * 8 - span + 1)
    bits = {start, start + span - 1} | {b for b in range(start, start + span) if rng.random() < 0.5}
    out = bytearray(frame)
    for bit in bits:
        out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def lose_bytes(frame: bytes, rng: random.Random, count: int = 1) -> bytes:
    """`count` bytes lost from one place (a USB or UART overrun)."""
    at = rng.randrange(len(frame) - count + 1)
    return frame[:at] + frame[at + count :]


def insert_bytes(frame: bytes, rng: random.Random, count: int = 1) -> bytes:
    """`count` bytes of noise inserted inside the frame (a glitch read as a character)."""
    at = rng.randrange(1, len(frame))
    return frame[:at] + rng.randbytes(count) + frame[at:]


def truncate(frame: bytes, rng: random.Random) -> bytes:
    """The frame cut off anywhere (the next frame's start follows: it is cut short)."""
    return frame[: rng.randrange(1, len(frame))]


def escape_damage(frame: bytes, rng: random.Random) -> bytes:
    """One bit flipped inside an escape sequence (start, doubled data escape or end)."""
    spots = [i for i in range(0, len(frame) - 3, 4) if frame[i : i + 4] == ESCAPE]
    at = rng.choice(spots) + rng.randrange(8)
    out = bytearray(frame)
    out[min(at, len(frame) - 1)] ^= 1 << rng.randrange(8)
    return bytes(out)


DAMAGE: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit": lambda f, r: flip_bits(f, r, 1),
    "two_bits": lambda f, r: flip_bits(f, r, 2),
    "three_bits": lambda f, r: flip_bits(f, r, 3),
    "burst": lambda f, r: burst(f, r, r.randint(2, 16)),
    "lost_byte": lambda f, r: lose_bytes(f, r, 1),
    "lost_bytes": lambda f, r: lose_bytes(f, r, r.randint(2, 12)),
    "lost_word": lambda f, r: lose_bytes(f, r, 4),
    "inserted": lambda f, r: insert_bytes(f, r, r.randint(1, 4)),
    "truncate": truncate,
    "escape": escape_damage,
}


@dataclass(frozen=True, slots=True)
class Stream:
    """A simulated wire stream: its bytes, and what went into it."""

    wire: bytes
    sent: tuple[bytes, ...]  # every frame the meter built, undamaged, in order
    intact: tuple[bytes, ...]  # the frames that reached the wire undamaged, in order
    damaged: int  # frames that reached the wire damaged


def damaged_stream(
    meter: SimulatedSml,
    rng: random.Random,
    frames: int,
    rate: float = 0.3,
    kinds: Sequence[str] = tuple(DAMAGE),
    garbage: float = 0.05,
) -> Stream:
    """`frames` frames, each damaged with probability `rate` by one kind of DAMAGE, with
    random noise between frames now and then (as a dump's partial first frame)."""
    parts: list[bytes] = []
    sent: list[bytes] = []
    intact: list[bytes] = []
    damaged = 0
    for _ in range(frames):
        frame = meter.next_frame()
        sent.append(frame)
        if rng.random() < garbage:
            parts.append(rng.randbytes(rng.randint(1, 40)))
        if rng.random() < rate:
            parts.append(DAMAGE[rng.choice(list(kinds))](frame, rng))
            damaged += 1
        else:
            parts.append(frame)
            intact.append(frame)
    return Stream(b"".join(parts), tuple(sent), tuple(intact), damaged)
