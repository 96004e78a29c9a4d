"""One pipeline per protocol a meter may speak, behind one shape the reader drives.

A pipeline turns wire bytes into results (pure); the reader (the edge) reads the port,
paces its reads by the pipeline's framer and hands accepted readings to the outlets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from ..config import MeterSettings
from .detect import KEEP, Finding, detect
from .pipeline import Pipeline, Result

if TYPE_CHECKING:
    from .modec import ModeCSession


class FramerView(Protocol):
    """What the reader's pacing needs to know about the frame being received."""

    @property
    def pending(self) -> int: ...  # bytes of an unfinished frame in hand

    @property
    def last_length(self) -> int: ...  # length of the last complete frame (0: none yet)

    @property
    def frames(self) -> int: ...  # complete frames so far, good or bad


class MeterPipeline(Protocol):
    protocol: str
    framer: FramerView
    # True if the pipeline judges nothing by when bytes arrived (the eBZ: its telegrams carry
    # the meter's seconds): then the reader may read a telegram late, with the next one.
    clocked: bool

    def wanted(self) -> int: ...

    def feed(self, wire: bytes, now: float) -> list[Result]: ...

    def resync(self) -> None: ...

    @property
    def rejected(self) -> Counter[str]: ...


def pipeline_for(settings: MeterSettings) -> MeterPipeline:
    if settings.protocol == "auto":
        return AutoPipeline(settings.baudrate, hunt=settings.hunt_baud)
    if settings.protocol == "sml":
        from .sml.pipeline import SmlPipeline  # an eBZ agent never loads the SML code

        return SmlPipeline()
    if settings.protocol in ("d0", "iec"):
        from .d0.pipeline import D0Pipeline  # mode C readouts are STX/ETX D0 frames

        return D0Pipeline(parity=settings.parity, baud=settings.baudrate)
    return Pipeline(parity=settings.parity)


def session_for(settings: MeterSettings, now: float) -> ModeCSession | None:
    """A pull meter's session (protocol = iec: IEC 62056-21 mode C); None for push meters."""
    if settings.protocol != "iec":
        return None
    from .modec import ModeCSession

    return ModeCSession(
        settings.interval, start=now, max_baud=settings.baudrate, parity=settings.parity
    )


class _Nothing:
    """The framer view while no protocol is known: nothing framed, nothing pending."""

    pending = 0
    last_length = 0
    frames = 0


# Bytes of the kept stream looked at again with each read: enough for a start that straddles
# two reads (an ident line of up to 64 characters and what follows it).
OVERLAP = 96
# An eBZ ident whose telegrams the eBZ grammar accepted nothing of through this many
# stale reopens is read by the generic text pipeline instead (a layout the strict eBZ
# grammar does not know), and the other way round: the agent never stays stuck on one.
EBZ_GIVES_UP_AFTER = 2


# What protocol = auto tries when nothing is found at the configured rate, most common first:
# 9600 (eBZ, SML, most push meters), 300 (older D0 meters), then the rest.
HUNTED_RATES = (9600, 300, 2400, 4800, 19200, 1200, 600, 38400, 57600, 115200)


class AutoPipeline:
    """protocol = auto: the stream is kept (bounded) until detect() names its protocol, then
    it all goes to that protocol's pipeline, so the first frame is not lost. Pure."""

    def __init__(self, baudrate: int = 9600, hunt: bool = False) -> None:
        self.baudrate = baudrate
        # With `hunt`, every stale reopen that saw only noise tries another rate (a 300 Bd
        # meter, a head set up for 2400 ...), every other time the home rate: the one last
        # read well (at first the configured one), so a burst of line noise on a good meter
        # costs at most one wrong try.
        self._hunt = hunt
        self._home = baudrate
        self._tries = 0
        self._noise = False  # bytes arrived at this rate and none made sense yet
        self.finding: Finding | None = None
        self._inner: MeterPipeline | None = None
        self._kept = bytearray()
        self._accepted = False  # anything accepted since the protocol was found
        self._fruitless = 0  # stale reopens in a row with nothing accepted (eBZ idents)
        self._rejected: Counter[str] = Counter()

    @property
    def protocol(self) -> str:
        return self._inner.protocol if self._inner is not None else "auto"

    @property
    def clocked(self) -> bool:
        return self._inner is not None and self._inner.clocked

    @property
    def baud(self) -> int:
        """The rate to open the port at now."""
        if not self._hunt or self._tries % 2 == 0:
            return self._home
        others = [r for r in HUNTED_RATES if r != self._home]
        return others[(self._tries // 2) % len(others)]

    @property
    def framer(self) -> FramerView:
        return self._inner.framer if self._inner is not None else _Nothing()

    @property
    def rejected(self) -> Counter[str]:
        return self._inner.rejected if self._inner is not None else self._rejected

    def wanted(self) -> int:
        return self._inner.wanted() if self._inner is not None else 1

    def resync(self) -> None:
        """The port was reopened (a replug, a dropped network head): the meter is still the
        one found, and its pipeline keeps what it knows."""
        if self._inner is not None:
            self._inner.resync()
        self._kept.clear()

    def stale(self) -> None:
        """Nothing valid came for stale_after seconds (the reader reopened the port): the
        meter may not be what it was (a head moved to another one). Detect anew."""
        if self._inner is None:
            if self._noise:  # bytes came, and nothing made sense at this rate: the next
                self._tries += 1
        elif not self._accepted:
            self._fruitless += 1
        else:
            self._fruitless = 0
        self._inner, self.finding, self._accepted = None, None, False
        self._noise = False
        self._kept.clear()

    def feed(self, wire: bytes, now: float = 0.0) -> list[Result]:
        if self._inner is None:
            self._kept += wire
            # Only what is new (and a start straddling the previous read) is looked at.
            finding = detect(bytes(self._kept[-(len(wire) + OVERLAP) :]))
            if finding is None:
                del self._kept[:-KEEP]  # bounded; the read just done is never cut
                self._noise = True
                return []
            if finding.protocol == "ebz" and (self._fruitless // EBZ_GIVES_UP_AFTER) % 2:
                # Turns about: eBZ, generic text, eBZ ... while neither accepts anything.
                finding = replace(
                    finding, protocol="d0", what=f"{finding.what}, which ebz read nothing of"
                )
            self.finding = finding
            settings = MeterSettings(
                protocol=finding.protocol, parity=finding.parity, baudrate=self.baud
            )
            self._inner = pipeline_for(settings)
            wire, self._kept = bytes(self._kept), bytearray()
        results = self._inner.feed(wire, now)
        if not self._accepted and any(r.verdict.publish for r in results):
            self._accepted = True
            self._fruitless = 0
            self._home, self._tries = self.baud, 0  # read well here: the home rate now
        return results
