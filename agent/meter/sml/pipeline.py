"""Wire bytes of an SML meter to publishable readings: framing with the CRC, decoding,
plausibility. Pure, and shaped like the eBZ pipeline (agent/meter/protocols.py), so the
reader, `monitor` and the tests drive both the same way.

A frame whose CRC verified is published at once (issue 8, item 3): unlike the eBZ's text,
no successor has to confirm it; plausibility against the last accepted frame still applies
(SmlChecker).
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from functools import cached_property

from ..pipeline import Result
from ..validation import Outcome, Verdict
from .check import SmlChecker
from .decode import SmlError, SmlReading, SmlValue, decode
from .transport import SmlDamage, SmlFramer

# DLMS unit codes (IEC 62056-62) the outlets know, as the text units of OBIS text meters.
# Energy is shown in kWh as the text meters show it (and Home Assistant's energy sensors
# want); the others as sent.
_WH, _W, _V, _A, _HZ = 30, 27, 35, 33, 44
_UNITS = {_WH: "kWh", _W: "W", _V: "V", _A: "A", _HZ: "Hz"}
_KWH_PER_WH = Decimal("0.001")


class SmlFrameReading:
    """An accepted SML frame as the outlets see it (agent/meter/reading.Reading).

    The frame goes out exactly as received; its values are formatted only when an outlet
    asks (Home Assistant, `monitor`), not for every frame the uplink sends.
    """

    protocol = "sml"
    bcc = False  # (the CRC vouches for it; bcc is the text meters' block check)
    ident = ""  # an SML file names no meter type; the server id says the maker

    def __init__(
        self, raw: bytes, reading: SmlReading, layouts: dict[tuple[str, ...], tuple[str, ...]]
    ):
        self.raw = raw
        self.reading = reading
        self._layouts = layouts

    @property
    def meter_id(self) -> str:
        return self.reading.server_id.hex()

    @cached_property
    def _entries(self) -> list[tuple[str, str, str, str]]:
        """(C.D.E, unit, value text, A-B:C.D.E*F) of every numeric value with a known unit."""
        out = []
        for key, value in self.reading.values.items():
            unit = _UNITS.get(value.unit) if value.unit is not None else None
            if unit is None or isinstance(value.raw, bytes):
                continue
            out.append((key.partition(":")[2].partition("*")[0], unit, _text(value), key))
        return out

    @property
    def values(self) -> dict[str, str]:
        return {code: text for code, _, text, _ in self._entries}

    @property
    def layout(self) -> tuple[str, ...]:
        """ "A-B:C.D.E*F sml unit" per value, as the text meters' layout entries read (the
        shape is "sml"): the same tuple object for as long as the meter sends the same codes
        and units."""
        key = ("", *(f"{obis} sml {unit}" for _, unit, _, obis in self._entries))
        return self._layouts.setdefault(key, key)

    @property
    def volts(self) -> dict[str, int]:
        """Asked by the reader for every frame: only the voltages are formatted."""
        return {
            key.partition(":")[2].partition("*")[0]: int(value.decimal() * 10)
            for key, value in self.reading.values.items()
            if value.unit == _V and not isinstance(value.raw, bytes)
        }


def _text(value: SmlValue) -> str:
    d = value.decimal()
    if value.unit == _WH:
        d *= _KWH_PER_WH
    return f"{d:f}"


class SmlPipeline:
    protocol = "sml"
    clocked = False  # judges energy growth by arrival gaps too

    def __init__(self, checker: SmlChecker | None = None) -> None:
        self.framer = SmlFramer()
        self.checker = checker or SmlChecker()
        self._rejected: Counter[str] = Counter()
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}

    def wanted(self) -> int:
        return self.framer.wanted()

    @property
    def rejected(self) -> Counter[str]:
        return self._rejected

    def feed(self, wire: bytes, now: float = 0.0) -> list[Result]:
        """`now`: monotonic time the bytes arrived; a meter without a seconds index is held
        to the energy a connection can draw in that time."""
        results: list[Result] = []
        for frame in self.framer.feed(wire):
            if isinstance(frame, SmlDamage):
                results.append(self._reject(frame.raw, None, frame.reason))
                continue
            try:
                reading = decode(frame.file)
            except SmlError as e:
                results.append(self._reject(frame.raw, None, e.reason))
                continue
            verdict = self.checker.check(reading, frame, now)
            accepted = SmlFrameReading(frame.raw, reading, self._layouts)
            if verdict.publish:
                results.append(
                    Result(
                        frame.raw,
                        accepted,
                        Verdict(Outcome.ACCEPTED, (accepted,), adopted=verdict.adopted),  # type: ignore[arg-type]
                    )
                )
            else:
                assert verdict.reason is not None
                results.append(self._reject(frame.raw, accepted, verdict.reason))
        return results

    def _reject(self, raw: bytes, reading: SmlFrameReading | None, reason: str) -> Result:
        self._rejected[reason] += 1
        return Result(raw, reading, Verdict(Outcome.REJECTED, reason=reason))  # type: ignore[arg-type]

    def resync(self) -> None:
        """The port was reopened: a partial frame is lost; the reference stays (the meter's
        counters are still what the next frame must be plausible against)."""
        self.framer.reset()
        self.checker.reset()
