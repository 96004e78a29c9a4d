"""What an accepted frame looks like to the outlets, whatever the meter speaks.

The outlets (the Tibber uplink, the mirror, Home Assistant, `monitor`) never parse a meter's
bytes: the protocol's pipeline does, and hands on a reading that carries the frame exactly as
received and its values as decimal text. A Telegram (eBZ OBIS text) is one; an SmlReading
(binary SML) is another.
"""

from __future__ import annotations

from typing import Protocol


class Reading(Protocol):
    @property
    def protocol(self) -> str:
        """[meter] protocol of the pipeline that accepted it: "ebz" or "sml"."""
        ...

    @property
    def bcc(self) -> bool:
        """Text framed with STX/ETX whose block check verified (it goes whole to iec)."""
        ...

    @property
    def raw(self) -> bytes:
        """The frame as received (text: parity-stripped; SML: the whole transport frame)."""
        ...

    @property
    def ident(self) -> str:
        """The meter type as it names itself, e.g. /EBZ5DD3BZ06ETA_107 ("" if unknown)."""
        ...

    @property
    def values(self) -> dict[str, str]:
        """OBIS C.D.E -> the value as decimal text in the unit of its layout entry."""
        ...

    @property
    def layout(self) -> tuple[str, ...]:
        """ident, then one "A-B:C.D.E*F shape unit" entry per value: the same object for as
        long as the meter's layout stays, so an outlet can cache what it derives from it."""
        ...

    @property
    def meter_id(self) -> str:
        """The meter's id ("" if it sends none)."""
        ...

    @property
    def volts(self) -> dict[str, int]:
        """Voltages in tenths of a volt, by OBIS C.D.E."""
        ...
