"""A framed D0 telegram, parsed strictly: the grammar is the first line of defence.

The eBZ sends no checksum, so every byte that does not fit the exact shape of an OBIS
telegram is evidence of damage. Parsing also derives the telegram's *layout* (ident, the
OBIS codes in order, the width and unit of each value): one meter configuration always
sends the same layout, so a telegram whose layout differs is either damaged or the meter
was reconfigured (validation tells the two apart).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, NamedTuple

from .parity import PARITY_ERROR


class Reason(StrEnum):
    """Why a telegram was not published. The values appear in logs and STATUS."""

    PARITY = "parity error"
    CHARSET = "bad character"
    STRUCTURE = "bad structure"
    GRAMMAR = "bad OBIS line"
    DUPLICATE = "repeated OBIS code"
    VALUE = "bad value format"
    LAYOUT = "layout changed"
    IDENTITY = "meter id changed"
    POWER_SUM = "phase powers do not add up"
    RANGE = "value out of range"
    SECONDS = "seconds counter did not grow"
    ENERGY_FELL = "energy counter fell"
    ENERGY_RATE = "energy grew faster than any load"
    ENERGY_POWER = "energy growth disagrees with power"
    TARIFF = "tariff registers disagree with their total"
    UNCONFIRMED = "not confirmed by the next telegram"


class TelegramError(ValueError):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


_CRLF = b"\r\n"
_END = b"\r\n!\r\n"
# Printable ASCII; CR and LF are checked by the line split.
_PRINTABLE = bytes(range(0x20, 0x7F)) + _CRLF
_IDENT = re.compile(rb"/[A-Za-z]{3}[0-9][\x21-\x7e]{1,40}")
_LINE = re.compile(
    rb"(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})\*(\d{1,3})"
    rb"\(([0-9A-Za-z.\-]{0,40})(?:\*([A-Za-z]{1,8}))?\)"
)

# Value grammar by OBIS code (C.D.E). Groups: sign, integer digits, decimals.
_NUMBER = re.compile(r"(-?)(\d{1,9})(?:\.(\d{1,8}))?")
_HEX = re.compile(r"[0-9A-F]{1,16}")
_ID = re.compile(r"[0-9A-Za-z]{1,40}")

ENERGY_CODES = ("1.8.0", "2.8.0")  # the totals the cross-checks rely on
POWER_TOTAL = "16.7.0"
POWER_PHASES = ("36.7.0", "56.7.0", "76.7.0")
VOLTAGES = ("32.7.0", "52.7.0", "72.7.0")
SECONDS = "96.8.0"
STATUS = "96.5.0"
METER_IDS = ("0.0.0", "96.1.0")

_INSTANT_UNITS = {"W", "V", "A", "Hz", "var", "VA"}


@dataclass(frozen=True, slots=True)
class Number:
    """A decimal value as an exact integer count of its last digit."""

    units: int  # e.g. 005267.03049619 -> 526703049619
    decimals: int  # -> 8

    def scaled(self, decimals: int) -> int:
        """The same value counted in units of 10**-decimals (decimals >= self.decimals)."""
        return self.units * 10 ** (decimals - self.decimals)


class TariffSum(NamedTuple):
    """One direction's total energy register against its tariff registers (1.8.0 against
    1.8.1 + 1.8.2 ...): what they leave of it, in units of the total's last digit."""

    total: str  # "1.8.0"
    left: int  # the total minus the sum of its tariff registers
    scale: int  # one digit of the tariff registers, in units of the total's last digit
    registers: tuple[int, ...]  # the tariff registers, in units of their last digit


@dataclass(frozen=True, slots=True)
class Telegram:
    protocol: ClassVar[str] = "ebz"
    bcc: ClassVar[bool] = False  # no block check: the eBZ's text has none
    raw: bytes  # as framed: parity-stripped 7-bit ASCII, blank line included
    ident: str  # "/EBZ5DD3BZ06ETA_107"
    values: dict[str, str]  # "1.8.0" -> "005267.03049619" (C.D.E; A-B and F are in the layout)
    layout: tuple[str, ...]  # ident, then one "A-B:C.D.E*F shape unit" entry per line
    meter_id: str  # 96.1.0 (or 0.0.0), "" if absent: for messages
    ids: tuple[str, ...]  # the values of 0.0.0 and 96.1.0 that the telegram has, in that order
    seconds: int | None  # 0-0:96.8.0 seconds index
    energy: dict[str, Number]  # 1.8.x and 2.8.x registers
    power: dict[str, int]  # x.7.0 powers in hundredths of a watt, signed
    volts: dict[str, int]  # voltages in tenths of a volt
    status: str | None  # 96.5.0
    tariffs: tuple[TariffSum, ...] = ()  # per direction with tariff registers (DT types)

    @property
    def key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What must stay the same from one telegram to the next: the layout and both id
        lines. Neither id line is ever compared with anything but its own adopted value, so
        a meter whose 0.0.0 is a property number other than 96.1.0 works (validation)."""
        return self.layout, self.ids


def _shape(kind: str, value: str) -> str:
    if kind == "number":
        m = _NUMBER.fullmatch(value)
        assert m is not None
        return f"{len(m[2])}.{len(m[3] or '')}"
    if kind in ("hex", "id"):
        return f"x{len(value)}"
    # Unknown codes: the exact character classes, so widths are part of the layout.
    return re.sub(r"[0-9]", "9", value)


def _kind(cde: str, unit: str | None) -> str:
    if cde in (SECONDS, STATUS):
        return "hex"
    if cde in METER_IDS:
        return "id"
    if unit is not None and cde.split(".")[1] in ("7", "8"):
        return "number"
    return "other"


@dataclass(frozen=True, slots=True)
class _Field:
    label: str  # "A-B:C.D.E*F"
    cde: str
    kind: str  # number, hex, id, other
    unit: str | None
    shape: str


class TelegramParser:
    """Parses framed telegrams; remembers the regular expression of each layout it has seen.

    A meter sends the same layout every second, so after the first telegram one regular
    expression match checks the whole grammar and yields every value: a few microseconds
    instead of a line-by-line parse.
    """

    def __init__(self, cache_size: int = 4) -> None:
        self._templates: dict[tuple[str, ...], tuple[re.Pattern[bytes], tuple[_Field, ...]]] = {}
        self._cache_size = cache_size

    def parse(self, raw: bytes) -> Telegram:
        """Parse a framed telegram or raise TelegramError with the reason."""
        for layout, (pattern, fields) in self._templates.items():
            m = pattern.fullmatch(raw)
            if m is not None:
                return _build(raw, layout, fields, m.groups())
        telegram, fields = _parse_lines(raw)
        if len(self._templates) >= self._cache_size:
            self._templates.pop(next(iter(self._templates)))
        self._templates[telegram.layout] = (_template(telegram.ident, fields), fields)
        return telegram


def parse(raw: bytes) -> Telegram:
    """Parse one telegram without a template cache (tools and tests)."""
    return _parse_lines(raw)[0]


def _template(ident: str, fields: tuple[_Field, ...]) -> re.Pattern[bytes]:
    parts = [re.escape(ident), r"\r\n\r\n"]
    for f in fields:
        parts.append(re.escape(f.label) + r"\(")
        if f.kind == "number":
            whole, frac = f.shape.split(".")
            sign = "-?" if f.unit != "kWh" else ""
            parts.append(rf"({sign}\d{{{whole}}}" + (rf"\.\d{{{frac}}})" if int(frac) else ")"))
        elif f.kind == "hex":
            parts.append(rf"([0-9A-F]{{{f.shape[1:]}}})")
        elif f.kind == "id":
            parts.append(rf"([0-9A-Za-z]{{{f.shape[1:]}}})")
        else:
            parts.append("(" + re.escape(f.shape).replace("9", r"\d") + ")")
        parts.append((r"\*" + re.escape(f.unit) if f.unit else "") + r"\)\r\n")
    parts.append(r"!\r\n")
    return re.compile("".join(parts).encode("ascii"))


def _parse_lines(raw: bytes) -> tuple[Telegram, tuple[_Field, ...]]:
    if PARITY_ERROR in raw:
        raise TelegramError(Reason.PARITY, f"{raw.count(PARITY_ERROR)} byte(s)")
    if raw.translate(None, _PRINTABLE):
        raise TelegramError(Reason.CHARSET)
    if not raw.endswith(_END):
        raise TelegramError(Reason.STRUCTURE, "no CR LF before the end mark")
    lines = raw[: -len(_END)].split(_CRLF)
    # /ident, the empty line, at least one data line.
    if len(lines) < 3 or lines[1]:
        raise TelegramError(Reason.STRUCTURE, "no empty line after the ident")
    if not _IDENT.fullmatch(lines[0]):
        raise TelegramError(Reason.GRAMMAR, "ident line")
    ident = lines[0].decode("ascii")

    fields: list[_Field] = []
    values: list[str] = []
    seen: set[str] = set()
    for line in lines[2:]:
        m = _LINE.fullmatch(line)
        if m is None:
            raise TelegramError(Reason.GRAMMAR, line[:40].decode("ascii", "replace"))
        # An empty value stays "" (damage for every kind that has a grammar); only an absent
        # unit is None.
        a, b, c, d, e, f, value_b, unit_b = (
            g.decode("ascii") if g is not None else None for g in m.groups()
        )
        cde = f"{int(c)}.{int(d)}.{int(e)}"
        if cde in seen:
            raise TelegramError(Reason.DUPLICATE, cde)
        seen.add(cde)
        kind = _kind(cde, unit_b)
        _check_value(cde, kind, value_b, unit_b)
        fields.append(_Field(f"{a}-{b}:{c}.{d}.{e}*{f}", cde, kind, unit_b, _shape(kind, value_b)))
        values.append(value_b)
    frozen = tuple(fields)
    layout = (ident, *(f"{f.label} {f.shape} {f.unit}" for f in frozen))
    return _build(raw, layout, frozen, values), frozen


def _check_value(cde: str, kind: str, value: str, unit: str | None) -> None:
    if kind == "number":
        num = _NUMBER.fullmatch(value)
        if num is None:
            raise TelegramError(Reason.VALUE, cde)
        is_energy = cde.split(".")[1] == "8"
        if is_energy and (unit != "kWh" or num[1]):
            raise TelegramError(Reason.VALUE, f"{cde} must be positive kWh")
        if not is_energy and unit not in _INSTANT_UNITS:
            raise TelegramError(Reason.VALUE, f"{cde} unit {unit}")
        if unit == "W" and len(num[3] or "") != 2:
            raise TelegramError(Reason.VALUE, f"{cde} needs 2 decimals")
        if unit == "V" and len(num[3] or "") != 1:
            raise TelegramError(Reason.VALUE, f"{cde} needs 1 decimal")
    elif kind == "hex":
        if unit is not None or not _HEX.fullmatch(value):
            raise TelegramError(Reason.VALUE, cde)
    elif kind == "id" and (unit is not None or not _ID.fullmatch(value)):
        raise TelegramError(Reason.VALUE, cde)


def _build(
    raw: bytes, layout: tuple[str, ...], fields: tuple[_Field, ...], values: tuple | list
) -> Telegram:
    by_code: dict[str, str] = {}
    energy: dict[str, Number] = {}
    power: dict[str, int] = {}
    volts: dict[str, int] = {}
    for f, v in zip(fields, values, strict=True):
        value = v if isinstance(v, str) else v.decode("ascii")
        by_code[f.cde] = value
        if f.kind != "number":
            continue
        if f.unit == "kWh":
            whole, _, frac = value.partition(".")
            energy[f.cde] = Number(int(whole + frac), len(frac))
        elif f.unit == "W":
            power[f.cde] = int(value.replace(".", ""))
        elif f.unit == "V":
            volts[f.cde] = int(value.replace(".", ""))
    seconds = by_code.get(SECONDS)
    return Telegram(
        tariffs=tariff_sums(energy),
        raw=raw,
        ident=layout[0],
        values=by_code,
        layout=layout,
        meter_id=by_code.get("96.1.0") or by_code.get("0.0.0") or "",
        ids=_ids(by_code),
        seconds=int(seconds, 16) if seconds is not None else None,
        energy=energy,
        power=power,
        volts=volts,
        status=by_code.get(STATUS),
    )


def tariff_sums(energy: dict[str, Number]) -> tuple[TariffSum, ...]:
    """Each direction's total against its tariff registers, where both are present and the
    tariff registers are no finer than the total."""
    if len(energy) < 2:
        return ()  # one register: nothing to compare (the usual BZ meter)
    sums = []
    for total, parts in _tariff_groups(tuple(energy)):
        whole = energy[total]
        decimals = energy[parts[0]].decimals
        units = []
        for code in parts:
            register = energy[code]
            if register.decimals != decimals:
                break
            units.append(register.units)
        else:
            if decimals <= whole.decimals:
                scale = 10 ** (whole.decimals - decimals)
                left = whole.units - sum(units) * scale
                sums.append(TariffSum(total, left, scale, tuple(units)))
    return tuple(sums)


def _ids(by_code: dict[str, str]) -> tuple[str, ...]:
    first, second = by_code.get(METER_IDS[0]), by_code.get(METER_IDS[1])
    if first is not None and second is not None:
        return first, second
    return (first,) if first is not None else (second,) if second is not None else ()


@functools.lru_cache(maxsize=8)
def _tariff_groups(codes: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(total, its tariff registers) per direction that has both: 1.8.0 with 1.8.1, 1.8.2
    ...; 2.8.0 with 2.8.1 .... Empty for layouts without tariffs."""
    groups = []
    for total in codes:
        c, d, e = total.split(".")
        if d == "8" and e == "0":
            parts = tuple(x for x in codes if x != total and x.startswith(f"{c}.8."))
            if parts:
                groups.append((total, parts))
    return tuple(groups)


def salvage(raw: bytes, like: Telegram) -> Telegram | None:
    """The undamaged lines of a rejected telegram, as a witness for its neighbours.

    A bit error, a lost byte or a repeated line damages one line; the others still carry
    the meter's seconds, energy and power. The witness takes `like`'s layout and id, and
    the values of the lines it lacks are left out (seconds None if 96.8.0 is missing, as
    in a telegram cut short). None if the ident or meter id differ or nothing is left.
    """
    found: dict[str, str] = {}
    for line in raw.split(_CRLF):
        m = _LINE.fullmatch(line)
        if m is None:
            continue
        cde = f"{int(m[3])}.{int(m[4])}.{int(m[5])}"
        value = m[7].decode("ascii")
        unit = m[8].decode("ascii") if m[8] else None
        if cde not in like.values or _layout_entry(like, cde) != _entry(m, cde, value, unit):
            continue  # not this layout's line (or a damaged one that still parses)
        if found.setdefault(cde, value) != value:
            return None  # two different values for one code: nothing here is trustworthy
    if not raw.startswith(like.ident.encode("ascii") + _CRLF):
        return None
    if any(
        found.get(code, like.values[code]) != like.values[code]
        for code in METER_IDS
        if code in like.values
    ):
        return None
    energy: dict[str, Number] = {}
    for code in like.energy:
        if code in found:
            whole, _, frac = found[code].partition(".")
            energy[code] = Number(int(whole + frac), len(frac))
    seconds = found.get(SECONDS)
    return Telegram(
        tariffs=tariff_sums(energy),
        raw=raw,
        ident=like.ident,
        values={**like.values, **found},
        layout=like.layout,
        meter_id=like.meter_id,
        ids=like.ids,
        seconds=int(seconds, 16) if seconds is not None else None,
        energy=energy,
        power={code: int(found[code].replace(".", "")) for code in like.power if code in found},
        volts={code: int(found[code].replace(".", "")) for code in like.volts if code in found},
        status=found.get(STATUS),
    )


def _layout_entry(like: Telegram, cde: str) -> str:
    for entry in like.layout[1:]:
        label = entry.split(" ", 1)[0]
        if label.split(":", 1)[1].split("*", 1)[0] == cde:
            return entry
    return ""


def _entry(m: re.Match[bytes], cde: str, value: str, unit: str | None) -> str:
    kind = _kind(cde, unit)
    try:
        _check_value(cde, kind, value, unit)
    except TelegramError:
        return ""
    label = f"{m[1].decode()}-{m[2].decode()}:{m[3].decode()}.{m[4].decode()}.{m[5].decode()}"
    return f"{label}*{m[6].decode()} {_shape(kind, value)} {unit}"
