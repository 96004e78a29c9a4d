"""A framed D0 / IEC 62056-21 text telegram, parsed: the generic OBIS text grammar.

What it accepts (meters.md §3, §8.1, §8.3; the captures in ../shared/telegrams):

* the ident line: `/`, three maker letters, the baud character (0-9, A-I), any number of
  `\\W` enhanced-id sequences as text (`/ACE0\\3k260V01.19`, `/ISK5\\2M550T-1012`), then 1-32
  printable characters, spaces included (`/ESY5Q3DA1004 V3.04`), never `/` or `!`;
* push telegrams: the ident line, one empty line, data lines, `!`; STX/ETX frames: the
  ident line, at most one empty line (the ZPA GH305 sends one: tibber-bridge.md §4.2),
  STX, data lines, `!` CR LF, ETX, BCC (framing.py);
* data lines: an optional `A-B:`, a code of two or three groups, each 1-3 digits or one
  letter (`1.8.0`, `C.1.0`, `F.F`, `0.9.1`, `32.7`), an optional `*F` (`*255` is the current
  value, `*96` a historic one, no `*F` the same as `*255`), then 1-8 value groups
  `(value*unit)` or `(value)`: a value is 0-32 printable characters other than `( ) * / !`
  (spaces included, as the L+G E350's `0.0(        18438636)`), a unit 1-16 letters or
  digits (`kWh`, `m3`);
* numbers: an optional `-`, 1-12 digits, 0-8 decimals (the eBZ's 1.8.0 has 8, EasyMeter's 7).

Several values per line are kept in the layout and the raw frame; `values` holds the first
one of each line (the meters in the captures send one). `values` is keyed by C.D.E (or C.D)
for current values and `C.D.E*F` for historic ones (`1.8.0*96`), so a historic register
never stands in for the current one; a second line with the same key but another `A-B:` is
keyed `A-B:C.D.E`. A repeated label is damage (a line sent twice).

The layout is the ident (with a CR LF appended where an empty line comes between it and
STX: outside the BCC, so a frame that lost it is another layout), then per line "label
shape unit": the label as sent, the shape of each value (number widths `8.7`, any other
value with its digits as 9: `M99`), the units.
One meter configuration always sends one layout; the parser interns it, so the outlets get
the same tuple object for as long as it stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar

from ..parity import PARITY_ERROR
from .framing import STX, D0Frame


class Reason(StrEnum):
    """Why a D0 frame was not published. The values appear in logs and STATUS."""

    CUT_SHORT = "frame cut short"
    PARITY = "parity error"
    BCC = "BCC mismatch"
    CHARSET = "bad character"
    STRUCTURE = "bad structure"
    IDENT = "bad ident line"
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
    CHANGED = "value changed and the next telegram did not confirm it"
    UNCONFIRMED = "not confirmed by the next telegram"


class D0Error(ValueError):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


_CRLF = b"\r\n"
_TAIL = b"\r\n!\r\n"
_PRINTABLE = bytes(range(0x20, 0x7F))
_IDENT = re.compile(rb"/[A-Za-z]{3}[0-9A-I](?:\\[0-9A-Z@])*[\x20\x22-\x2e\x30-\x7e]{1,32}")
_LINE = re.compile(
    rb"(?:(\d{1,3})-(\d{1,3}):)?"
    rb"(\d{1,3}|[A-Z])\.(\d{1,3}|[A-Z])(?:\.(\d{1,3}|[A-Z]))?"
    rb"(?:\*(\d{1,3}))?"
    rb"((?:\([^()*/!]{0,32}(?:\*[A-Za-z0-9]{1,16})?\)){1,8})"
)
_GROUP = re.compile(r"\(([^()*]*)(?:\*([^()]*))?\)")
_NUMBER = re.compile(r"-?(\d{1,12})(?:\.(\d{1,8}))?")
_DIGIT = re.compile(r"[0-9]")
_HEX8 = re.compile(r"[0-9A-F]{8}")
_HEX = re.compile(r"[0-9A-F]+")

# Lines that name the meter: part of its identity, compared only with their own adopted
# values (EasyMeter Q3DB's 0.0.0 and 96.1.255 are different numbers).
ID_CODES = ("96.1.0", "0.0.0", "C.1.0", "96.1.255", "0.0", "C.1")
SECONDS = "96.8.0"  # the eBZ's seconds index: 8 hex digits, no unit
VOLTAGES = ("32.7.0", "52.7.0", "72.7.0", "32.7", "52.7", "72.7")
_ENERGY_KWH = {"kWh": Decimal(1), "Wh": Decimal("0.001")}
_POWER_W = {"W": Decimal(1), "kW": Decimal(1000)}


@dataclass(frozen=True, slots=True)
class D0Telegram:
    """An accepted or checked D0 telegram (agent/meter/reading.Reading)."""

    protocol: ClassVar[str] = "d0"
    raw: bytes  # as framed: 7-bit, from `/` through `!\r\n` (push) or the BCC (STX/ETX)
    ident: str  # "/ESY5Q3DA1004 V3.04"
    values: dict[str, str]  # "1.8.0" -> "00032549.5061662" (first value of each line)
    layout: tuple[str, ...]  # ident, then "label shape unit" per line; interned
    meter_id: str  # 96.1.0, else 0.0.0, C.1.0, 96.1.255, 0.0, C.1 (spaces stripped); or ""
    ids: tuple[str, ...]  # every id line's value, in ID_CODES order: the identity
    volts: dict[str, int]  # voltages in tenths of a volt
    bcc: bool  # a verified BCC vouches for every byte after STX
    seconds: int | None  # 0-0:96.8.0 where the meter sends one (eBZ)
    energy: dict[str, Decimal]  # current active energy registers (x.8.y) in kWh
    power: dict[str, Decimal]  # x.7.y powers in W, signed

    @property
    def maker(self) -> str:
        """The three maker letters, upper case (the third's case is a timing flag)."""
        return self.ident[1:4].upper()

    @property
    def key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What stays the same from one telegram to the next: the layout and the ids."""
        return self.layout, self.ids


class D0Parser:
    """Parses frames; interns layouts so an unchanged layout is one object."""

    def __init__(self, max_layouts: int = 8) -> None:
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._max = max_layouts

    def parse(self, frame: D0Frame) -> D0Telegram:
        """Parse a complete frame or raise D0Error with the reason. The BCC is the
        framer's business: the caller passes a frame whose BCC verified, or a push one."""
        t = parse(frame.raw, frame.stx, frame.stx and frame.bcc_ok)
        layout = self._layouts.get(t.layout)
        if layout is None:
            if len(self._layouts) >= self._max:
                self._layouts.pop(next(iter(self._layouts)))
            layout = self._layouts[t.layout] = t.layout
        return _with_layout(t, layout)


def _with_layout(t: D0Telegram, layout: tuple[str, ...]) -> D0Telegram:
    if t.layout is layout:
        return t
    object.__setattr__(t, "layout", layout)  # the equal, interned tuple (t is new, unshared)
    return t


def data_lines(raw: bytes, stx: bool) -> tuple[bytes, bool, list[bytes]]:
    """(ident line, whether an empty line precedes STX, data lines) of a frame, or D0Error
    for a wrong structure."""
    if PARITY_ERROR in raw:
        raise D0Error(Reason.PARITY, f"{raw.count(PARITY_ERROR)} byte(s)")
    head = raw.find(_CRLF)
    if head < 0:
        raise D0Error(Reason.STRUCTURE, "no line end after the ident")
    ident = raw[:head]
    blank = False
    if stx:
        at = head + 2
        blank = raw[at : at + 2] == _CRLF
        at += 2 if blank else 0
        if raw[at : at + 1] != bytes([STX]) or raw[-2:-1] != b"\x03":
            raise D0Error(
                Reason.STRUCTURE, "STX must follow the ident line or one empty line, ETX the end"
            )
        body = raw[at + 1 : -2]
        lead = b"\r\n"  # so the first data line is found like the others
    else:
        if raw[head + 2 : head + 4] != _CRLF:
            raise D0Error(Reason.STRUCTURE, "no empty line after the ident")
        body = raw[head + 4 :]
        lead = b"\r\n"
    if ident.translate(None, _PRINTABLE) or body.translate(None, _PRINTABLE + _CRLF):
        raise D0Error(Reason.CHARSET)
    body = lead + body
    if not body.endswith(_TAIL) or len(body) <= len(_TAIL):
        raise D0Error(Reason.STRUCTURE, "no CR LF ! CR LF at the end")
    return ident, blank, body[2 : -len(_TAIL)].split(_CRLF)


def parse(raw: bytes, stx: bool, bcc: bool) -> D0Telegram:
    """Parse one frame's text (no interning: tools and tests)."""
    ident_b, blank, lines = data_lines(raw, stx)
    if not _IDENT.fullmatch(ident_b):
        raise D0Error(Reason.IDENT, ident_b[:40].decode("ascii", "replace"))
    ident = ident_b.decode("ascii")
    values: dict[str, str] = {}
    labels: set[str] = set()
    entries: list[str] = [ident + "\r\n" if blank else ident]
    energy: dict[str, Decimal] = {}
    power: dict[str, Decimal] = {}
    volts: dict[str, int] = {}
    seconds = None
    for line in lines:
        m = _LINE.fullmatch(line)
        if m is None:
            raise D0Error(Reason.GRAMMAR, line[:40].decode("ascii", "replace"))
        a, b, c, d, e, f = (g.decode("ascii") if g is not None else None for g in m.groups()[:6])
        groups = m[7].decode("ascii")
        code = ".".join(_group(g) for g in (c, d, e) if g is not None)
        label = (f"{a}-{b}:" if a is not None else "") + code + (f"*{f}" if f else "")
        if label in labels:
            raise D0Error(Reason.DUPLICATE, label)
        labels.add(label)
        current = f is None or int(f) == 255
        key = code if current else f"{code}*{int(f)}"
        if key in values:
            key = f"{a}-{b}:{key}"
        pairs = _GROUP.findall(groups)
        value, unit = pairs[0]
        values[key] = value
        shapes = "|".join(_shape(v) for v, _ in pairs)
        entries.append(f"{label} {shapes} {'|'.join(u for _, u in pairs) or None}")
        if key == SECONDS and not unit and _HEX8.fullmatch(value):
            seconds = int(value, 16)
        elif current and d in ("7", "8") and c is not None and c.isdigit():
            _quantity(key, d, value, unit, energy, power, volts)
    ids = tuple(values[k].strip() for k in ID_CODES if k in values)
    meter_id = next((i for i in ids if i), "")
    return D0Telegram(
        raw=raw,
        ident=ident,
        values=values,
        layout=tuple(entries),
        meter_id=meter_id,
        ids=ids,
        volts=volts,
        bcc=bcc,
        seconds=seconds,
        energy=energy,
        power=power,
    )


def _group(g: str) -> str:
    return str(int(g)) if g.isdigit() else g


def _shape(value: str) -> str:
    m = _NUMBER.fullmatch(value)
    if m is not None:
        return f"{len(m[1])}.{len(m[2] or '')}"
    if _HEX.fullmatch(value):
        return f"x{len(value)}"  # a status word: which digits are letters may change
    return _DIGIT.sub("9", value)


def _quantity(
    key: str,
    d: str,
    value: str,
    unit: str,
    energy: dict[str, Decimal],
    power: dict[str, Decimal],
    volts: dict[str, int],
) -> None:
    """Energy, power and voltage values, checked for their number format."""
    if d == "8" and unit in _ENERGY_KWH:
        if _NUMBER.fullmatch(value) is None or value.startswith("-"):
            raise D0Error(Reason.VALUE, f"{key} must be a positive number")
        energy[key] = Decimal(value) * _ENERGY_KWH[unit]
    elif d == "7" and unit in _POWER_W:
        if _NUMBER.fullmatch(value) is None:
            raise D0Error(Reason.VALUE, f"{key} must be a number")
        power[key] = Decimal(value) * _POWER_W[unit]
    elif d == "7" and unit == "V" and key in VOLTAGES:
        if _NUMBER.fullmatch(value) is None or value.startswith("-"):
            raise D0Error(Reason.VALUE, f"{key} must be a positive number")
        volts[key] = int(Decimal(value) * 10)
