"""One pipeline per protocol a meter may speak, behind one shape the reader drives.

A pipeline turns wire bytes into results (pure); the reader (the edge) reads the port,
paces its reads by the pipeline's framer and hands accepted readings to the outlets.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from ..config import MeterSettings
from .detect import KEEP, Finding, detect
from .pipeline import Pipeline, Result


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

    def wanted(self) -> int: ...

    def feed(self, wire: bytes, now: float) -> list[Result]: ...

    def resync(self) -> None: ...

    @property
    def rejected(self) -> Counter[str]: ...


def pipeline_for(settings: MeterSettings) -> MeterPipeline:
    if settings.protocol == "auto":
        return AutoPipeline()
    if settings.protocol == "sml":
        from .sml.pipeline import SmlPipeline  # an eBZ agent never loads the SML code

        return SmlPipeline()
    if settings.protocol == "d0":
        from .d0.pipeline import D0Pipeline

        return D0Pipeline(parity=settings.parity, baud=settings.baudrate)
    return Pipeline(parity=settings.parity)


class _Nothing:
    """The framer view while no protocol is known: nothing framed, nothing pending."""

    pending = 0
    last_length = 0
    frames = 0


class AutoPipeline:
    """protocol = auto: the stream is kept (bounded) until detect() names its protocol, then
    it all goes to that protocol's pipeline, so the first frame is not lost. Pure."""

    def __init__(self) -> None:
        self.finding: Finding | None = None
        self._inner: MeterPipeline | None = None
        self._kept = bytearray()
        self._accepted = False  # anything accepted since detection or the last resync
        self._rejected: Counter[str] = Counter()

    @property
    def protocol(self) -> str:
        return self._inner.protocol if self._inner is not None else "auto"

    @property
    def framer(self) -> FramerView:
        return self._inner.framer if self._inner is not None else _Nothing()

    @property
    def rejected(self) -> Counter[str]:
        return self._inner.rejected if self._inner is not None else self._rejected

    def wanted(self) -> int:
        return self._inner.wanted() if self._inner is not None else 1

    def resync(self) -> None:
        """The port was reopened: after a replug, or after stale_after seconds without a
        valid frame. If nothing was accepted since the last time, the stream has stopped
        making sense (a head moved to another meter): detect anew. Otherwise the meter is
        still the one found, and its pipeline keeps what it knows."""
        if self._inner is not None and not self._accepted:
            self._inner, self.finding = None, None
        elif self._inner is not None:
            self._inner.resync()
        self._accepted = False
        self._kept.clear()

    def feed(self, wire: bytes, now: float = 0.0) -> list[Result]:
        if self._inner is None:
            self._kept += wire
            del self._kept[:-KEEP]
            finding = detect(bytes(self._kept))
            if finding is None:
                return []
            self.finding = finding
            settings = MeterSettings(protocol=finding.protocol, parity=finding.parity)
            self._inner = pipeline_for(settings)
            wire, self._kept = bytes(self._kept), bytearray()
        results = self._inner.feed(wire, now)
        if not self._accepted and any(r.verdict.publish for r in results):
            self._accepted = True
        return results
