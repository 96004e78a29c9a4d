"""Decides which decoded SML frames may be published. Pure: readings in, verdicts out.

A frame's CRC already vouches for every byte of it (transport.py), so unlike the eBZ text
path nothing waits for a successor: a frame is published as it arrives (issue 8, item 3).
What the CRC cannot vouch for is that the frame is the meter's *latest truth*: a head moved
to another meter, a counter reset, a meter exchanged, or the one damaged frame in 65536 whose
CRC matches by chance. So each frame is still held against the last accepted one (the
reference):

* the same server id; a new one is adopted only after ADOPT_AFTER frames in a row carry
  it, each consistent with the one before (a head moved to another meter);
* the seconds index (actSensorTime, else a valTime) grows;
* energy registers (1.8.x, 2.8.x) never fall, and grow no faster than MAX_POWER_W over
  the time between the two frames (the meter's seconds where both have them, else the
  arrival times, but never less than the frame's own time on the wire, since a reader
  that fell behind gets frames in bursts), plus one digit of the register.

A run of OVERRULE_AFTER frames, each consistent with the one before, that contradicts the
reference replaces it (a meter exchanged with the same id, a counter reset): the agent
never stays stuck. Power and every other value are covered by the CRC alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..validation import ADOPT_AFTER, MAX_POWER_W, OVERRULE_AFTER
from .decode import SmlReading
from .transport import Reason, SmlFrame

BAUD = 9600
BITS_PER_BYTE = 10  # 8N1: start, 8 data, stop


@dataclass(frozen=True, slots=True)
class SmlVerdict:
    publish: bool
    reason: Reason | None = None  # why rejected
    adopted: str = ""  # set when a new reference was adopted: say so once in the log


@dataclass(frozen=True, slots=True)
class _Seen:
    reading: SmlReading
    arrived: float  # monotonic seconds
    wire_time: float  # how long the frame took on the line


@dataclass
class CheckStats:
    accepted: int = 0
    rejected: Counter[Reason] = field(default_factory=Counter)


class SmlChecker:
    def __init__(
        self,
        adopt_after: int = ADOPT_AFTER,
        overrule_after: int = OVERRULE_AFTER,
        baud: int = BAUD,
    ) -> None:
        self._adopt_after = adopt_after
        self._overrule_after = overrule_after
        self._byte_time = BITS_PER_BYTE / baud
        self._reference: _Seen | None = None
        self._challenger: _Seen | None = None  # tail of a run that contradicts the reference
        self._run = 0
        self.stats = CheckStats()

    @property
    def reference(self) -> SmlReading | None:
        return self._reference.reading if self._reference else None

    def reset(self) -> None:
        """The port was reopened. The reference stays (counters only grow); a run that
        contradicted it must start again, since frames were lost in between."""
        self._challenger = None
        self._run = 0

    def check(self, reading: SmlReading, frame: SmlFrame, arrived: float) -> SmlVerdict:
        seen = _Seen(reading, arrived, len(frame.raw) * self._byte_time)
        ref = self._reference
        if ref is None:
            return self._accept(seen, f"first reference, server id {reading.server_id.hex()}")
        if reading.server_id != ref.reading.server_id:
            return self._challenge(seen, Reason.IDENTITY, self._adopt_after)
        why = _contradiction(ref, seen)
        if why is not None:
            return self._challenge(seen, why, self._overrule_after)
        return self._accept(seen)

    def _accept(self, seen: _Seen, adopted: str = "") -> SmlVerdict:
        self._reference = seen
        self._challenger = None
        self._run = 0
        self.stats.accepted += 1
        return SmlVerdict(True, adopted=adopted)

    def _challenge(self, seen: _Seen, reason: Reason, needed: int) -> SmlVerdict:
        """seen contradicts the reference; count how long a self-consistent run of such is."""
        c = self._challenger
        if (
            c is not None
            and c.reading.server_id == seen.reading.server_id
            and _contradiction(c, seen) is None
        ):
            self._run += 1
        else:
            self._run = 1
        self._challenger = seen
        if self._run >= needed:
            old = self._reference
            assert old is not None  # a challenge needs a reference
            if reason is Reason.IDENTITY:
                what = (
                    f"new server id {seen.reading.server_id.hex()} "
                    f"(was {old.reading.server_id.hex()})"
                )
            else:
                what = f"meter data overruled the last reference ({reason})"
            return self._accept(seen, what)
        self.stats.rejected[reason] += 1
        return SmlVerdict(False, reason)


def _contradiction(prev: _Seen, new: _Seen) -> Reason | None:
    """What makes `new` impossible as the successor of `prev` (same meter), or None."""
    before, after = prev.reading.seconds, new.reading.seconds
    if before is not None and after is not None:
        elapsed: float = after - before
        if elapsed <= 0:
            return Reason.SECONDS
    else:
        # A frame cannot end sooner after the last one than its own bytes take to arrive.
        elapsed = max(new.arrived - prev.arrived, new.wire_time)
    for key, value in new.reading.values.items():
        if not _is_energy(key):
            continue
        old = prev.reading.values.get(key)
        if old is None or not isinstance(old.raw, int) or not isinstance(value.raw, int):
            continue
        # Compare at the coarser resolution (after a PIN entry or a power cut the meter may
        # switch between whole kWh and 10 uWh): both truncated to it, as the meter does.
        digit = max(old.scaler, value.scaler)  # the coarser digit is 10**digit Wh
        grown = value.raw // 10 ** (digit - value.scaler) - old.raw // 10 ** (digit - old.scaler)
        if grown < 0:
            return Reason.ENERGY_FELL
        # grown digits minus one of slack (the register's own truncation), in Wh*3600 (W*s)
        # against the most a household connection can draw in `elapsed` seconds.
        if digit >= 0:
            if (grown - 1) * 10**digit * 3600 > MAX_POWER_W * elapsed:
                return Reason.ENERGY_RATE
        elif (grown - 1) * 3600 > MAX_POWER_W * elapsed * 10**-digit:
            return Reason.ENERGY_RATE
    return None


def _is_energy(key: str) -> bool:
    """Active energy registers: 1.8.x (import) and 2.8.x (export), any tariff."""
    cde = key.partition(":")[2]
    return cde.startswith(("1.8.", "2.8."))
