"""Simulated D0 text meters, and the damage an optical link does to their telegrams.

Pure: no I/O, no clock; all randomness from the caller's `random.Random`, so a seed
reproduces a stream byte for byte. Meter ids are invented, never a real meter's.

* SimulatedEasyMeter: an EasyMeter-Q3D-like push meter (no checksum), the layout of the
  Q3DA1004 capture: 0.0.0, 1.8.0 with 8 + 7 digits of kWh, 21/41/61.7.0 and 1.7.0 in W with
  2 decimals whose sum is exact (as in both EasyMeter captures), the status 96.5.5 and
  96.1.255; optionally the COM-1 gateway's trailer (two lines and 33 x 0xFF) after `!`.
* SimulatedZpa: a ZPA-like meter pushing STX/ETX frames with a BCC, an empty line between
  the ident line and STX as the bridge's GH305 capture shows (tibber-bridge.md §4.2; the
  data lines are invented, the capture elides them): energy with tariffs, powers whose
  total is *not* the phases' sum (issue 8: the GH305's differs by several watts), voltages
  and a clock line (0.9.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..parity import encode_7e1
from .framing import ETX, STX, bcc

# 1.8.0's last digit is 1e-7 kWh = 0.36 W*s = 360 mJ; one second at one 0.01 W step is 10 mJ.
MJ_PER_ESY_DIGIT = 360
MJ_PER_CENTIWATT_SECOND = 10
MJ_PER_WH = 3_600_000
GATEWAY_TRAILER = b"  25818685\r\n" + b"\xff" * 33 + b"\r\n"  # as the Q3DB capture shows


class _Load:
    """Three phases of a household: a slow random walk in centiwatts."""

    def __init__(self, rng: random.Random, mean_w: float) -> None:
        self._rng = rng
        self.phases = [int(mean_w * 100 / 3)] * 3

    def step(self) -> list[int]:
        self.phases = [
            max(0, min(2_300_000, p + self._rng.randint(-3000, 3000))) for p in self.phases
        ]
        return self.phases


class SimulatedEasyMeter:
    def __init__(
        self,
        rng: random.Random,
        meter_id: str = "9900000001",
        kwh: float = 12345.0,
        mean_w: float = 1500.0,
        period_s: int = 2,
        gateway: bool = False,
    ) -> None:
        self._rng = rng
        self.meter_id = meter_id
        self.period_s = period_s
        self.gateway = gateway
        self._mj = int(kwh * 1000 * MJ_PER_WH) + rng.randrange(MJ_PER_ESY_DIGIT)
        self._load = _Load(rng, mean_w)
        self.status = "80"

    def next_telegram(self) -> bytes:
        """The next telegram's text (7-bit), one period after the last."""
        phases = self._load.step()
        self._mj += sum(phases) * MJ_PER_CENTIWATT_SECOND * self.period_s
        digits = self._mj // MJ_PER_ESY_DIGIT
        lines = [
            "/ESY5Q3DA1004 V3.04",
            "",
            f"1-0:0.0.0*255({self.meter_id})",
            f"1-0:1.8.0*255({digits // 10**7:08d}.{digits % 10**7:07d}*kWh)",
            *(
                f"1-0:{c}*255({_watts(p)}*W)"
                for c, p in zip(("21.7.0", "41.7.0", "61.7.0"), phases, strict=True)
            ),
            f"1-0:1.7.0*255({_watts(sum(phases))}*W)",
            f"1-0:96.5.5*255({self.status})",
            f"0-0:96.1.255*255(1ESY{self.meter_id})",
            "!",
        ]
        return "\r\n".join(lines).encode("ascii") + b"\r\n"

    def wire(self, text: bytes) -> bytes:
        """Text as a 7E1 head reads it at 8N1, with the gateway's trailer if configured."""
        return encode_7e1(text) + (GATEWAY_TRAILER if self.gateway else b"")


class SimulatedZpa:
    def __init__(
        self,
        rng: random.Random,
        meter_id: str = "99000002",
        kwh: float = 4321.0,
        mean_w: float = 900.0,
        period_s: int = 1,
    ) -> None:
        self._rng = rng
        self.meter_id = meter_id
        self.period_s = period_s
        self._mj = int(kwh * 1000 * MJ_PER_WH)
        self._tariff_mj = [self._mj // 3, self._mj - self._mj // 3]
        self._load = _Load(rng, mean_w)
        self._clock = 12 * 3600

    def next_telegram(self) -> bytes:
        """The next frame's bytes (7-bit): /ident CR LF CR LF STX data ! CR LF ETX BCC."""
        phases = self._load.step()
        added = sum(phases) * MJ_PER_CENTIWATT_SECOND * self.period_s
        self._mj += added
        self._tariff_mj[1] += added
        self._clock = (self._clock + self.period_s) % 86400
        h, m, s = self._clock // 3600, self._clock // 60 % 60, self._clock % 60
        wh = self._mj // MJ_PER_WH
        total_w = sum(phases) // 100 + self._rng.randint(3, 9)  # not the phases' sum
        lines = [
            f"1-0:0.0.0*255({self.meter_id})",
            f"1-0:1.8.0*255({wh // 1000:06d}.{wh % 1000:03d}*kWh)",
            *(
                f"1-0:1.8.{i}*255({t // MJ_PER_WH // 1000:06d}.{t // MJ_PER_WH % 1000:03d}*kWh)"
                for i, t in enumerate(self._tariff_mj, start=1)
            ),
            f"1-0:16.7.0*255({total_w:06d}*W)",
            *(
                f"1-0:{c}*255({p // 100:06d}*W)"
                for c, p in zip(("36.7.0", "56.7.0", "76.7.0"), phases, strict=True)
            ),
            *(
                f"1-0:{c}*255({self._rng.randint(2280, 2340) / 10:.1f}*V)"
                for c in ("32.7.0", "52.7.0", "72.7.0")
            ),
            f"0-0:0.9.1*255({h:02d}{m:02d}{s:02d})",
            "!",
        ]
        body = ("\r\n".join(lines) + "\r\n").encode("ascii") + bytes([ETX])
        return b"/ZPA5SIM305.v100\r\n\r\n" + bytes([STX]) + body + bytes([bcc(body)])

    def wire(self, text: bytes) -> bytes:
        return encode_7e1(text)


def _watts(centiwatts: int) -> str:
    return f"{centiwatts // 100:06d}.{centiwatts % 100:02d}"


# -- damage, on the 7-bit text (encode_7e1 then gives every changed byte a correct parity bit:
# two bits flipped in one byte, which a parity check cannot see) or on the wire ------------

_DIGITS = b"0123456789"
_PRINTABLE = bytes(range(0x20, 0x7F))


def _body(text: bytes) -> range:
    """Positions a damage may hit: everything from the ident to the end mark."""
    return range(1, len(text) - 1)


def flip_bit(wire: bytes, rng: random.Random) -> bytes:
    """One bit flipped on the line: a parity error."""
    i = rng.randrange(len(wire))
    return wire[:i] + bytes([wire[i] ^ (1 << rng.randrange(8))]) + wire[i + 1 :]


def change_digit(text: bytes, rng: random.Random) -> bytes:
    """One digit replaced by another, parity intact (an STX frame keeps its stale BCC)."""
    at = [i for i in _body(text) if text[i] in _DIGITS and _in_data(text, i)]
    i = rng.choice(at)
    new = rng.choice([d for d in _DIGITS if d != text[i]])
    return text[:i] + bytes([new]) + text[i + 1 :]


def change_char(text: bytes, rng: random.Random) -> bytes:
    """Any printable character replaced by another, parity intact."""
    at = [i for i in _body(text) if text[i] in _PRINTABLE and _in_data(text, i)]
    i = rng.choice(at)
    new = rng.choice([c for c in _PRINTABLE if c != text[i]])
    return text[:i] + bytes([new]) + text[i + 1 :]


def lose_byte(text: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(text))
    return text[:i] + text[i + 1 :]


def truncate(text: bytes, rng: random.Random) -> bytes:
    """The telegram ends early (the head lost the light); the next one follows directly."""
    return text[: rng.randrange(1, len(text) - 1)]


def repeat_line(text: bytes, rng: random.Random) -> bytes:
    lines = text.split(b"\r\n")
    i = rng.randrange(1, len(lines) - 2)
    return b"\r\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])


def _in_data(text: bytes, i: int) -> bool:
    """Not the BCC byte of an STX frame (any value: changing it is lost-BCC damage)."""
    return not (STX in text and i == len(text) - 1)


TEXT_DAMAGE: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "digit": change_digit,
    "char": change_char,
    "lost_byte": lose_byte,
    "truncate": truncate,
    "repeat_line": repeat_line,
}
DAMAGE = (*TEXT_DAMAGE, "bit_flip")


@dataclass(frozen=True, slots=True)
class Sent:
    """One telegram of a stream: what the meter meant, what the line delivered."""

    clean: bytes  # 7-bit text as the meter made it
    wire: bytes  # bytes as the head reads them (8N1 view of 7E1)
    damage: str  # "" if intact


def damaged_stream(
    meter: SimulatedEasyMeter | SimulatedZpa,
    rng: random.Random,
    count: int,
    rate: float,
    kinds: tuple[str, ...] = DAMAGE,
    isolated: bool = False,
) -> Iterator[Sent]:
    """`count` telegrams, each damaged with probability `rate` by one of `kinds`; with
    `isolated`, never two damaged in a row (the single-damage model: two independent link
    errors in neighbouring telegrams are a second-order event)."""
    damaged = False
    for _ in range(count):
        clean = meter.next_telegram()
        if rng.random() >= rate or (isolated and damaged):
            damaged = False
            yield Sent(clean, meter.wire(clean), "")
            continue
        damaged = True
        kind = rng.choice(kinds)
        if kind == "bit_flip":
            yield Sent(clean, flip_bit(meter.wire(clean), rng), kind)
        else:
            yield Sent(clean, meter.wire(TEXT_DAMAGE[kind](clean, rng)), kind)
