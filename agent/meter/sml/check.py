"""Decides which decoded SML frames may be published. Pure: readings in, verdicts out.

A frame's CRC already vouches for every byte of it (transport.py), so unlike the eBZ text
path nothing waits for a successor: a frame is published as it arrives (issue 8, item 3).
What the CRC cannot vouch for is that the frame is the meter's *latest truth*: a head moved
to another meter, a counter reset, a meter exchanged, or the one damaged frame in 65536 whose
CRC matches by chance. So each frame is still held against the last accepted one (the
reference):

* the same server id; a new one is adopted only after ADOPT_AFTER frames in a row carry
  it, each consistent with the one before (a head moved to another meter);
* the seconds index (actSensorTime, else a valTime) grows. A meter whose time stands
  still (a fixed valTime, or a clock that ticks slower than it sends) is learned: after
  STOPPED_CLOCK_AFTER frames rejected only because their time equals the reference's,
  each consistent by arrival time, its frames are timed by arrival from then on;
* energy registers (1.8.x, 2.8.x) never fall, and grow no faster than MAX_POWER_W over
  the time between the two frames (the meter's seconds where both have them, else the
  arrival times, but never less than the frame's own time on the wire, since a reader
  that fell behind gets frames in bursts), plus one digit of the register.

A run of OVERRULE_AFTER frames, each consistent with the one before, that contradicts the
reference replaces it (a meter exchanged with the same id, a counter reset): the agent
never stays stuck. Power and every other value are covered by the CRC alone. An energy
scaler outside decode's Integer8 is never raised to (TYPE), so the arithmetic stays small.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..validation import ADOPT_AFTER, MAX_POWER_W, OVERRULE_AFTER
from .decode import SCALER_RANGE, SmlReading
from .transport import Reason, SmlFrame

BAUD = 9600
BITS_PER_BYTE = 10  # 8N1: start, 8 data, stop
# Frames rejected only because their time equals the reference's before the time is
# given up for that meter: the evidence asked to overrule a reference.
STOPPED_CLOCK_AFTER = OVERRULE_AFTER


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
        stopped_clock_after: int = STOPPED_CLOCK_AFTER,
    ) -> None:
        self._adopt_after = adopt_after
        self._overrule_after = overrule_after
        self._stopped_clock_after = stopped_clock_after
        self._byte_time = BITS_PER_BYTE / baud
        self._reference: _Seen | None = None
        self._challenger: _Seen | None = None  # tail of a run that contradicts the reference
        self._run = 0
        # A time that stands still: the last frame rejected only for that, how many such
        # since two frames in a row were accepted (a clock that keeps up), and the server
        # id whose time is no longer used.
        self._stopped: _Seen | None = None
        self._stopped_count = 0
        self._accepted_in_a_row = 0
        self._untimed: bytes | None = None
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
        if not _judgeable(reading):
            self.stats.rejected[Reason.TYPE] += 1
            return SmlVerdict(False, Reason.TYPE)
        ref = self._reference
        if ref is None:
            return self._accept(seen, f"first reference, server id {reading.server_id.hex()}")
        if reading.server_id != ref.reading.server_id:
            return self._challenge(seen, Reason.IDENTITY, self._adopt_after)
        timed = reading.server_id != self._untimed
        why = _contradiction(ref, seen, timed)
        if why is None:
            return self._accept(seen)
        if (
            why is Reason.SECONDS
            and reading.seconds == ref.reading.seconds
            and _contradiction(ref, seen, timed=False) is None
        ):
            return self._stopped_clock(seen)
        return self._challenge(seen, why, self._overrule_after)

    def _accept(self, seen: _Seen, adopted: str = "") -> SmlVerdict:
        self._reference = seen
        self._challenger = None
        self._run = 0
        self._accepted_in_a_row += 1
        if self._accepted_in_a_row >= 2:
            self._stopped, self._stopped_count = None, 0
        self.stats.accepted += 1
        return SmlVerdict(True, adopted=adopted)

    def _stopped_clock(self, seen: _Seen) -> SmlVerdict:
        """seen fits the reference by arrival time, but repeats its time. A run of such,
        each consistent with the one before, means the meter's time is no clock."""
        last = self._stopped
        if last is not None and _contradiction(last, seen, timed=False) is None:
            self._stopped_count += 1
        else:
            self._stopped_count = 1
        self._stopped = seen
        self._accepted_in_a_row = 0
        self._challenger, self._run = None, 0  # not part of a run that contradicts
        if self._stopped_count >= self._stopped_clock_after:
            self._untimed = seen.reading.server_id
            self._stopped, self._stopped_count = None, 0
            return self._accept(
                seen,
                f"the seconds field of server id {seen.reading.server_id.hex()} stands at "
                f"{seen.reading.seconds}: frames are timed by arrival",
            )
        self.stats.rejected[Reason.SECONDS] += 1
        return SmlVerdict(False, Reason.SECONDS)

    def _challenge(self, seen: _Seen, reason: Reason, needed: int) -> SmlVerdict:
        """seen contradicts the reference; count how long a self-consistent run of such is."""
        c = self._challenger
        if (
            c is not None
            and c.reading.server_id == seen.reading.server_id
            and self._follows(c, seen)
        ):
            self._run += 1
        else:
            self._run = 1
        self._challenger = seen
        self._accepted_in_a_row = 0
        self._stopped, self._stopped_count = None, 0
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

    def _follows(self, prev: _Seen, new: _Seen) -> bool:
        """new is a possible successor of prev in a run. Where both carry the same time,
        the arrival times judge: a new meter whose time stands still can be adopted."""
        timed = new.reading.server_id != self._untimed
        if timed and prev.reading.seconds == new.reading.seconds:
            timed = False
        return _contradiction(prev, new, timed) is None


def _judgeable(reading: SmlReading) -> bool:
    """Every energy register's scaler within decode's Integer8: the powers of ten below then
    stay under 10**255 whatever a frame holds (decode never returns more; this keeps a
    hand-made reading from hanging the meter thread too)."""
    return all(v.scaler in SCALER_RANGE for k, v in reading.values.items() if _is_energy(k))


def _contradiction(prev: _Seen, new: _Seen, timed: bool = True) -> Reason | None:
    """What makes `new` impossible as the successor of `prev` (same meter), or None.
    timed=False: the meter's time is ignored, the arrival times judge."""
    before, after = prev.reading.seconds, new.reading.seconds
    if timed and before is not None and after is not None:
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
