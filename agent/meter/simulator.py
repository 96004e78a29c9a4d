"""A simulated eBZ DD3 (D0 push, 9600 7E1) and the damage an optical link does to its telegrams.

Pure code: no I/O, no threads, no clock. All randomness comes from the caller's
`random.Random`, so a seed reproduces a stream byte for byte. The layout and the physics follow
the byte-exact captures in ../shared/telegrams (see ../shared/protocol/meters.md §3, §4, §6).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from agent.meter.parity import decode_7e1, encode_7e1
from agent.meter.validation import UNUSUAL_VOLTAGE_STEP_DV

# The meter integrates finer than it displays: one 1.8.0 unit is 1e-8 kWh = 36 mJ, and one
# second at the 0.01 W display step of 16.7.0 adds 10 mJ. An accumulator in mJ keeps both exact.
UNITS_PER_KWH = 10**8
MJ_PER_ENERGY_UNIT = 36
MJ_PER_CENTIWATT_SECOND = 10

# 60 A x 230 V per phase; three phases give the 41.4 kW limit of a DD3 ..06.. type.
PHASE_LIMIT_CW = 1_380_000
VOLTAGE_MIN_DV, VOLTAGE_MAX_DV = 2250, 2400
_VOLTAGE_MEAN_DV = 2315
# Every real eBZ sample: voltage on L1-L3, above start-up threshold, identification (§5).
STATUS_RUNNING = "001C0104"
# The displays have fixed widths: 6 integer digits of kWh, 6 + 2 digits of W.
_REGISTER_MODULUS = 10**6 * UNITS_PER_KWH
_POWER_MODULUS = 10**8
# Tariff registers show whole Wh: 6 + 3 digits of kWh (the philippoo66 DTA capture).
MJ_PER_TARIFF_UNIT = MJ_PER_ENERGY_UNIT * 10**5

CORRUPTIONS: tuple[str, ...] = (
    "bit_flip",  # one flipped bit: a parity error
    "lost_byte",
    "truncate",
    "repeat_line",
    "energy_digit",  # the rest keep parity intact (two bits flipped in one byte):
    "power_digit",
    "digit",  # any digit of any line (ident, OBIS codes, values), the line chosen evenly
    "hex",  # a hex digit of the status word or the seconds index, to another hex digit
    "letter",  # a letter of any line (ident, ids, units, hex values), to another letter
    "unit",  # a character of a unit
    "char",  # any character, to any other printable one
)


@dataclass(frozen=True)
class Layout:
    """Which lines the meter sends; it changes with a PIN entry, `Inf` or a power cut (§1.2)."""

    reduced: bool = False  # no PIN: whole kWh, no power lines, no voltages
    voltages: bool = True  # 32/52/72.7.0 come only from the MSB port


@dataclass(frozen=True)
class _Appliance:
    watts: float
    min_seconds: int
    max_seconds: int


# Step changes on top of the base load, each on one phase.
_APPLIANCES = (
    _Appliance(2000.0, 90, 240),  # kettle
    _Appliance(800.0, 120, 300),  # toaster
    _Appliance(2200.0, 600, 1800),  # oven
    _Appliance(110.0, 300, 900),  # fridge compressor
    _Appliance(1900.0, 300, 900),  # washing machine heater
)
_SWITCH_ON_PER_SECOND = 1 / 600


@dataclass
class _Running:
    watts: float
    seconds_left: int
    phase: int


class _Household:
    """Per-phase load: a mean-reverting random walk plus appliances, minus a 3-phase PV inverter."""

    def __init__(self, rng: random.Random, power_w: float, pv_w: float, two_way: bool) -> None:
        self._rng = rng
        self.mean_w = power_w
        self.pv_mean_w = pv_w
        self._base_w = power_w
        self._pv_w = pv_w
        weights = [rng.uniform(0.1, 1.0) for _ in range(3)]
        self._shares = [w / sum(weights) for w in weights]
        self._running: list[_Running] = []
        self._phase_floor_cw = -PHASE_LIMIT_CW if two_way else 0  # BZ types have a backstop

    def step(self) -> tuple[int, int, int]:
        """Advance one second; the three phase powers in centiwatts."""
        rng = self._rng
        self._base_w += 0.02 * (self.mean_w - self._base_w) + rng.gauss(0.0, 0.6)
        self._base_w = min(max(self._base_w, 0.0), 3.0 * PHASE_LIMIT_CW / 100)
        self._step_pv()
        self._step_appliances()
        loads = [self._base_w * share for share in self._shares]
        for appliance in self._running:
            loads[appliance.phase] += appliance.watts * (1.0 + rng.gauss(0.0, 0.002))
        l1, l2, l3 = (self._phase_cw(load + rng.gauss(0.0, 0.15)) for load in loads)
        return l1, l2, l3

    def _phase_cw(self, load_w: float) -> int:
        centiwatts = round(100 * (load_w - self._pv_w / 3))
        return min(max(centiwatts, self._phase_floor_cw), PHASE_LIMIT_CW)

    def _step_pv(self) -> None:
        if self.pv_mean_w <= 0:
            self._pv_w = 0.0
            return
        rng = self._rng
        if rng.random() < 1 / 300:  # a cloud edge
            self._pv_w *= rng.uniform(0.3, 1.6)
        self._pv_w += 0.01 * (self.pv_mean_w - self._pv_w) + rng.gauss(0.0, 2.0)
        self._pv_w = min(max(self._pv_w, 0.0), 3.0 * PHASE_LIMIT_CW / 100)

    def _step_appliances(self) -> None:
        rng = self._rng
        for appliance in self._running:
            appliance.seconds_left -= 1
        self._running = [a for a in self._running if a.seconds_left > 0]
        if rng.random() < _SWITCH_ON_PER_SECOND:
            kind = rng.choice(_APPLIANCES)
            seconds = rng.randint(kind.min_seconds, kind.max_seconds)
            self._running.append(_Running(kind.watts, seconds, rng.randrange(3)))


class SimulatedEbz:
    """An eBZ DD3 pushing one D0 telegram per meter second, as the real MSB/INFO port does.

    `next_telegram()` returns 7-bit ASCII text; callers apply `encode_7e1` for wire bytes.
    """

    def __init__(
        self,
        *,
        rng: random.Random,
        ident: str = "EBZ5DD3BZ06ETA_107",
        meter_id: str = "1EBZ0100000001",
        energy_kwh: float = 5267.03049619,
        export_kwh: float | None = None,
        seconds: int = 0x02792C83,
        voltages: bool = True,
        power_w: float = 180.0,
        pv_w: float = 0.0,
        reduced: bool = False,
        tariffs: bool = False,
        export_tariffs: bool = False,
        property_number: str | None = None,
    ) -> None:
        """`export_kwh` makes a two-direction 2R meter (2.8.0 present); `pv_w` is its feed-in.

        `tariffs` adds the two tariff registers 1.8.1 and 1.8.2 of a DTA type, in Wh, after
        1.8.0 (as in the philippoo66 capture); `export_tariffs` adds 2.8.1 and 2.8.2 (seen in
        no eBZ capture: for the validator's sake). The meter keeps one accumulator per tariff
        and shows their sum as the total. `property_number` replaces 96.1.0 in 0.0.0, as one
        meter does (meters.md §4).
        """
        if pv_w > 0 and export_kwh is None:
            raise ValueError("feed-in needs a two-direction meter: pass export_kwh")
        if export_tariffs and (export_kwh is None or not tariffs):
            raise ValueError("export tariffs need a two-direction meter with tariffs")
        self._rng = rng
        self.ident = ident
        self.meter_id = meter_id
        self.property_number = property_number
        self.status = STATUS_RUNNING
        self.layout = Layout(reduced=reduced, voltages=voltages)
        self._seconds = seconds & 0xFFFFFFFF
        self._import_mj = _start_accumulator(energy_kwh, rng)
        self._export_mj = None if export_kwh is None else _start_accumulator(export_kwh, rng)
        # Per direction, the accumulators of tariff 1 and 2; they add up to the total's.
        self._tariff_mj: dict[str, list[int]] = {}
        if tariffs:
            self._tariff_mj["1.8"] = _split(self._import_mj, rng)
        if export_tariffs and self._export_mj is not None:
            self._tariff_mj["2.8"] = _split(self._export_mj, rng)
        self._tariff = 0  # the running tariff: 0 for 1.8.1/2.8.1, 1 for 1.8.2/2.8.2
        self._household = _Household(rng, power_w, pv_w, two_way=export_kwh is not None)
        self._phases_cw = self._household.step()
        self._voltages_dv = (
            rng.randint(2295, 2330),
            rng.randint(2295, 2330),
            rng.randint(2295, 2330),
        )
        self._emitted = False

    # --- state, for tests and for checking a validator's verdicts -------------------------

    @property
    def seconds(self) -> int:
        """0-0:96.8.0 of the latest telegram (or of the first one, before any)."""
        return self._seconds

    @property
    def energy_units(self) -> int:
        """1.8.0 as displayed, in 1e-8 kWh."""
        return self._import_mj // MJ_PER_ENERGY_UNIT

    @property
    def export_units(self) -> int | None:
        """2.8.0 as displayed, in 1e-8 kWh; None on a one-direction meter."""
        return None if self._export_mj is None else self._export_mj // MJ_PER_ENERGY_UNIT

    @property
    def phases_cw(self) -> tuple[int, int, int]:
        """36/56/76.7.0 in centiwatts."""
        return self._phases_cw

    @property
    def power_cw(self) -> int:
        """16.7.0 in centiwatts: exactly the sum of the phases, negative while exporting."""
        return sum(self._phases_cw)

    @property
    def voltages_dv(self) -> tuple[int, int, int]:
        """32/52/72.7.0 in decivolts."""
        return self._voltages_dv

    @property
    def two_way(self) -> bool:
        return self._export_mj is not None

    @property
    def has_tariffs(self) -> bool:
        return bool(self._tariff_mj)

    def tariff_units(self, direction: str = "1.8") -> tuple[int, int]:
        """The two tariff registers of a direction as displayed, in Wh (1e-3 kWh)."""
        return tuple(mj // MJ_PER_TARIFF_UNIT for mj in self._tariff_mj[direction])  # type: ignore[return-value]

    def set_tariff(self, tariff: int) -> None:
        """Switch the running tariff (1 or 2) from the next second on, as the meter's clock
        or a ripple-control signal does."""
        if tariff not in (1, 2):
            raise ValueError("tariff is 1 or 2")
        self._tariff = tariff - 1

    def set_layout(self, *, reduced: bool | None = None, voltages: bool | None = None) -> None:
        """Change the line set from the next telegram on; counters keep running."""
        if reduced is not None:
            self.layout = replace(self.layout, reduced=reduced)
        if voltages is not None:
            self.layout = replace(self.layout, voltages=voltages)

    def set_mean_power(self, power_w: float, pv_w: float | None = None) -> None:
        """Move the household's mean load (and PV feed-in) the walk reverts to."""
        self._household.mean_w = power_w
        if pv_w is not None:
            if pv_w > 0 and not self.two_way:
                raise ValueError("feed-in needs a two-direction meter")
            self._household.pv_mean_w = pv_w

    # --- time ------------------------------------------------------------------------------

    def next_telegram(self) -> bytes:
        """The telegram one meter second after the previous one (the first shows the start)."""
        self._next_second()
        return self.render()

    def skip(self, n: int) -> None:
        """Let n telegrams go by unseen, as if lost in transit: 96.8.0 then jumps by n + 1."""
        if n < 0:
            raise ValueError("cannot skip backwards")
        for _ in range(n):
            self._next_second()

    def _next_second(self) -> None:
        if self._emitted:
            self._tick()
        self._emitted = True

    def _tick(self) -> None:
        self._seconds = (self._seconds + 1) & 0xFFFFFFFF
        self._phases_cw = self._household.step()
        # 16.7.0 is what the meter integrated over the second just gone.
        added_mj = self.power_cw * MJ_PER_CENTIWATT_SECOND
        if added_mj >= 0:
            self._import_mj += added_mj
            if "1.8" in self._tariff_mj:
                self._tariff_mj["1.8"][self._tariff] += added_mj
        elif self._export_mj is not None:
            self._export_mj -= added_mj
            if "2.8" in self._tariff_mj:
                self._tariff_mj["2.8"][self._tariff] -= added_mj
        l1, l2, l3 = self._voltages_dv
        self._voltages_dv = (self._step_voltage(l1), self._step_voltage(l2), self._step_voltage(l3))

    def _step_voltage(self, decivolts: int) -> int:
        # The captures move a few tenths per second around 231-233 V.
        pull = 0.1 * (_VOLTAGE_MEAN_DV - decivolts)
        stepped = decivolts + round(pull + self._rng.gauss(0.0, 4.0))
        return min(max(stepped, VOLTAGE_MIN_DV), VOLTAGE_MAX_DV)

    # --- rendering ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The current state as a telegram, without advancing time."""
        lines = [
            "/" + self.ident,
            "",
            f"1-0:0.0.0*255({self.property_number or self.meter_id})",
            f"1-0:96.1.0*255({self.meter_id})",
            f"1-0:1.8.0*255({self._energy(self.energy_units)}*kWh)",
            *self._tariff_lines("1.8"),
        ]
        if self.export_units is not None:
            lines.append(f"1-0:2.8.0*255({self._energy(self.export_units)}*kWh)")
            lines += self._tariff_lines("2.8")
        if not self.layout.reduced:
            lines += self._power_lines()
            if self.layout.voltages:
                lines += [
                    f"1-0:{code}*255({_voltage(dv)}*V)"
                    for code, dv in zip(
                        ("32.7.0", "52.7.0", "72.7.0"), self._voltages_dv, strict=True
                    )
                ]
        lines += [
            f"1-0:96.5.0*255({self.status})",
            f"0-0:96.8.0*255({self._seconds:08X})",
            "!",
            "",
        ]
        return "\r\n".join(lines).encode("ascii")

    def _energy(self, units: int) -> str:
        units %= _REGISTER_MODULUS  # the six-digit register rolls over
        kwh, fraction = divmod(units, UNITS_PER_KWH)
        # Without the PIN the meter shows whole kWh, truncated like the finer display.
        return f"{kwh:06d}" if self.layout.reduced else f"{kwh:06d}.{fraction:08d}"

    def _tariff_lines(self, direction: str) -> list[str]:
        if direction not in self._tariff_mj:
            return []
        lines = []
        for n, wh in enumerate(self.tariff_units(direction), start=1):
            kwh, fraction = divmod(wh % (10**6 * 1000), 1000)
            value = f"{kwh:06d}" if self.layout.reduced else f"{kwh:06d}.{fraction:03d}"
            lines.append(f"1-0:{direction}.{n}*255({value}*kWh)")
        return lines

    def _power_lines(self) -> list[str]:
        codes = ("16.7.0", "36.7.0", "56.7.0", "76.7.0")
        values = (self.power_cw, *self._phases_cw)
        return [f"1-0:{code}*255({_power(cw)}*W)" for code, cw in zip(codes, values, strict=True)]


def _start_accumulator(kwh: float, rng: random.Random) -> int:
    # The display truncates, so the hidden remainder is anywhere below one display unit.
    units = round(kwh * UNITS_PER_KWH)
    if units < 0:
        raise ValueError("an energy register cannot be negative")
    return units * MJ_PER_ENERGY_UNIT + rng.randrange(MJ_PER_ENERGY_UNIT)


def _split(accumulator_mj: int, rng: random.Random) -> list[int]:
    """Two tariff accumulators that add up to the total's."""
    first = rng.randrange(accumulator_mj + 1)
    return [first, accumulator_mj - first]


def _power(centiwatts: int) -> str:
    # Export is a leading '-' in front of the same 6 + 2 digits: (-000458.90*W).
    sign = "-" if centiwatts < 0 else ""
    watts, hundredths = divmod(abs(centiwatts) % _POWER_MODULUS, 100)
    return f"{sign}{watts:06d}.{hundredths:02d}"


def _voltage(decivolts: int) -> str:
    volts, tenths = divmod(decivolts, 10)
    return f"{volts:03d}.{tenths}"


# --- corruption on the optical link ---------------------------------------------------------

# decode_7e1 maps byte for byte, so offsets found in the decoded text index the wire bytes.
_DATA_LINE = re.compile(rb"(?m)^\d+-\d+:[^\r\n]*\r\n")
_VALUE = re.compile(rb"(?m)^\d+-\d+:(\d+\.\d+\.\d+)\*\d+\(([^*)\r\n]*)")
_UNIT = re.compile(rb"(?m)^\d+-\d+:\d+\.\d+\.\d+\*\d+\([^*)\r\n]*\*([^)\r\n]*)\)")
_LINE_CODE = re.compile(rb"\d+-\d+:(\d+\.\d+\.\d+)\*")
_ENERGY_CODES = frozenset({b"1.8.0", b"2.8.0"})
_POWER_CODES = frozenset({b"16.7.0", b"36.7.0", b"56.7.0", b"76.7.0"})
_HEX_CODES = frozenset({b"96.5.0", b"96.8.0"})
_DIGITS = b"0123456789"
_HEX = b"0123456789ABCDEF"
_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LOWER = bytes(range(ord("a"), ord("z") + 1))
_PRINTABLE = bytes(range(0x20, 0x7F))


def line_of(text: bytes, index: int) -> str:
    """Which line of a telegram holds byte `index`: its OBIS code (C.D.E), or "ident",
    "blank", "end" ('!'), "after" (past the end). The corruption tests report by it."""
    start = text.rfind(b"\n", 0, index) + 1
    end = text.find(b"\r\n", index)
    line = text[start : end if end >= 0 else len(text)]
    if start == 0:
        return "ident"
    if line.startswith(b"!"):
        return "end"
    m = _LINE_CODE.match(line)
    if m is not None:
        return m[1].decode()
    return "blank" if index < text.find(b"\r\n\r\n") + 4 else "after"


def _bit_flip(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    index = rng.randrange(len(wire))
    damaged = bytearray(wire)
    damaged[index] ^= 1 << rng.randrange(8)  # one flipped bit always breaks even parity
    return bytes(damaged), index


def _lost_byte(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    index = rng.randrange(1, len(wire))  # keep the '/' so the frame still starts
    return wire[:index] + wire[index + 1 :], index


def _truncate(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    cut = rng.randrange(1, len(wire))
    return wire[:cut], cut - 1  # the last byte kept: its line is the one cut short


def _repeat_line(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    lines = list(_DATA_LINE.finditer(decode_7e1(wire)))
    if not lines:
        raise ValueError("repeat_line: telegram has no data line")
    start, end = rng.choice(lines).span()
    return wire[:end] + wire[start:end] + wire[end:], start


def _digit_positions(wire: bytes, codes: frozenset[bytes]) -> list[int]:
    text = decode_7e1(wire)
    return [
        index
        for match in _VALUE.finditer(text)
        if match.group(1) in codes
        for index in range(*match.span(2))
        if 0x30 <= text[index] <= 0x39
    ]


def _replace(wire: bytes, index: int, alphabet: bytes, rng: random.Random) -> tuple[bytes, int]:
    old = wire[index] & 0x7F
    new = rng.choice([c for c in alphabet if c != old])
    # Two bit errors in one byte keep its parity: the check cannot see this one.
    return wire[:index] + encode_7e1(bytes([new])) + wire[index + 1 :], index


def _replace_digit(
    wire: bytes, codes: frozenset[bytes], kind: str, rng: random.Random
) -> tuple[bytes, int]:
    positions = _digit_positions(wire, codes)
    if not positions:
        raise ValueError(f"{kind}: telegram has no such value")
    return _replace(wire, positions[rng.randrange(len(positions))], _DIGITS, rng)


def _by_line(text: bytes, alphabet: bytes) -> list[list[int]]:
    """Positions of the characters in `alphabet`, grouped per line (lines without any left out)."""
    groups: list[list[int]] = []
    start = 0
    while start < len(text):
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end + 1
        hits = [i for i in range(start, end) if text[i] in alphabet]
        if hits:
            groups.append(hits)
        start = end
    return groups


def _any_line(wire: bytes, alphabet: bytes, kind: str, rng: random.Random) -> tuple[bytes, int]:
    """A character of `alphabet`, in a line chosen evenly, to another one of its class."""
    groups = _by_line(decode_7e1(wire), alphabet)
    if not groups:
        raise ValueError(f"{kind}: telegram has no such character")
    index = rng.choice(rng.choice(groups))
    char = wire[index] & 0x7F
    same_class = next(c for c in (_DIGITS, _UPPER, _LOWER) if char in c)
    return _replace(wire, index, same_class, rng)


def _hex_positions(wire: bytes) -> list[int]:
    text = decode_7e1(wire)
    return [
        index
        for match in _VALUE.finditer(text)
        if match.group(1) in _HEX_CODES
        for index in range(*match.span(2))
    ]


def _hex(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    positions = _hex_positions(wire)
    if not positions:
        raise ValueError("hex: telegram has no status word or seconds index")
    return _replace(wire, rng.choice(positions), _HEX, rng)


def _unit_positions(wire: bytes) -> list[int]:
    return [i for m in _UNIT.finditer(decode_7e1(wire)) for i in range(*m.span(1))]


def _unit(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    positions = _unit_positions(wire)
    if not positions:
        raise ValueError("unit: telegram has no unit")
    index = rng.choice(positions)
    return _replace(wire, index, _UPPER if (wire[index] & 0x7F) in _UPPER else _LOWER, rng)


def _char(wire: bytes, rng: random.Random) -> tuple[bytes, int]:
    return _replace(wire, rng.randrange(1, len(wire)), _PRINTABLE, rng)


_CORRUPTORS: dict[str, Callable[[bytes, random.Random], tuple[bytes, int]]] = {
    "bit_flip": _bit_flip,
    "lost_byte": _lost_byte,
    "truncate": _truncate,
    "repeat_line": _repeat_line,
    "energy_digit": lambda wire, rng: _replace_digit(wire, _ENERGY_CODES, "energy_digit", rng),
    "power_digit": lambda wire, rng: _replace_digit(wire, _POWER_CODES, "power_digit", rng),
    "digit": lambda wire, rng: _any_line(wire, _DIGITS, "digit", rng),
    "hex": _hex,
    "letter": lambda wire, rng: _any_line(wire, _UPPER + _LOWER, "letter", rng),
    "unit": _unit,
    "char": _char,
}


def corrupt_line(wire: bytes, kind: str, rng: random.Random) -> tuple[bytes, str]:
    """Damage parity-encoded telegram bytes in one of the CORRUPTIONS ways; always changes
    them. Returns the damaged bytes and the line hit (see line_of)."""
    try:
        damage = _CORRUPTORS[kind]
    except KeyError:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}") from None
    if len(wire) < 2:
        raise ValueError("nothing to corrupt")
    damaged, index = damage(wire, rng)
    return damaged, line_of(decode_7e1(wire), index)


def corrupt(wire: bytes, kind: str, rng: random.Random) -> bytes:
    """Damage parity-encoded telegram bytes in one of the CORRUPTIONS ways; always changes them."""
    return corrupt_line(wire, kind, rng)[0]


def applicable_corruptions(text: bytes) -> tuple[str, ...]:
    """The kinds that can hit this telegram (a reduced telegram has no power digits)."""
    wire = encode_7e1(text)
    possible = {
        "energy_digit": lambda: _digit_positions(wire, _ENERGY_CODES),
        "power_digit": lambda: _digit_positions(wire, _POWER_CODES),
        "hex": lambda: _hex_positions(wire),
        "unit": lambda: _unit_positions(wire),
    }
    return tuple(kind for kind in CORRUPTIONS if kind not in possible or possible[kind]())


def corrupted_stream(
    meter: SimulatedEbz, n: int, rate: float, rng: random.Random
) -> Iterator[tuple[bytes, bytes, str | None]]:
    """n telegrams as (clean text, wire bytes to send, corruption kind or None).

    Exactly round(rate * n) of them are corrupted, at random positions, each with a kind chosen
    uniformly among those that apply to it.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate is a fraction between 0 and 1")
    hit = set(rng.sample(range(n), round(rate * n)))
    for index in range(n):
        text = meter.next_telegram()
        wire = encode_7e1(text)
        if index not in hit:
            yield text, wire, None
            continue
        kind = rng.choice(applicable_corruptions(text))
        yield text, corrupt(wire, kind, rng), kind


# --- what no check can see ----------------------------------------------------------------------

# A total energy register within this many units of its last digit agrees with the power
# as well as the truth does (agent/meter/validation.py, module docstring).
UNDETECTABLE_ENERGY_UNITS = 2
# A tariff register's last digit (1 Wh), in the one second before it really steps.
UNDETECTABLE_TARIFF_UNITS = 1
_VALUE_LINE = re.compile(rb"(\d+-\d+:(\d+\.\d+\.\d+)\*\d+)\(([^*)]*)(\*[^)]*)?\)")
_VOLTAGE_CODES = ("32.7.0", "52.7.0", "72.7.0")


def undetectable(
    published: bytes, truth: bytes, neighbours: tuple[bytes | None, ...] = ()
) -> str | None:
    """The OBIS code of the one line in which `published` differs from `truth` (the clean
    telegram of its second), if that difference is of the class the validator documents as
    undetectable; None otherwise, or if they do not differ.

    The class: a total energy register (1.8.0, 2.8.0) within UNDETECTABLE_ENERGY_UNITS of
    its last digit; a tariff register (1.8.1 ...) within UNDETECTABLE_TARIFF_UNITS; a
    voltage less than UNUSUAL_VOLTAGE_STEP_DV from the same voltage in a clean neighbour
    (the telegrams one second before and after, as given).
    """
    a, b = published.split(b"\r\n"), truth.split(b"\r\n")
    if len(a) != len(b):
        return None
    diffs = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    if len(diffs) != 1:
        return None
    mx, my = _VALUE_LINE.fullmatch(diffs[0][0]), _VALUE_LINE.fullmatch(diffs[0][1])
    if mx is None or my is None or (mx[1], mx[4]) != (my[1], my[4]) or len(mx[3]) != len(my[3]):
        return None
    code = my[2].decode()
    _, d, e = code.split(".")
    if (d != "8" and code not in _VOLTAGE_CODES) or not mx[3].replace(b".", b"").isdigit():
        return None
    value = int(mx[3].replace(b".", b""))
    off = abs(value - int(my[3].replace(b".", b"")))
    if d == "8":
        bound = UNDETECTABLE_ENERGY_UNITS if e == "0" else UNDETECTABLE_TARIFF_UNITS
        return code if off <= bound else None
    if code in _VOLTAGE_CODES:
        near = [
            int(m[3].replace(b".", b""))
            for neighbour in neighbours
            if neighbour is not None
            for m in _VALUE_LINE.finditer(neighbour)
            if m[1] == my[1]
        ]
        if any(abs(value - v) < UNUSUAL_VOLTAGE_STEP_DV for v in near):
            return code
    return None
