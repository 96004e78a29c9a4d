"""One pipeline per protocol a meter may speak, behind one shape the reader drives.

A pipeline turns wire bytes into results (pure); the reader (the edge) reads the port,
paces its reads by the pipeline's framer and hands accepted readings to the outlets.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from ..config import MeterSettings
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
    if settings.protocol == "sml":
        from .sml.pipeline import SmlPipeline  # an eBZ agent never loads the SML code

        return SmlPipeline()
    return Pipeline(parity=settings.parity)
