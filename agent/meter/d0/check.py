"""Decides which D0 telegrams may be published. Pure: telegrams in, verdicts out.

Two kinds of telegram, two regimes (issue 8, item 3):

**BCC-verified** (STX/ETX frames: mode C readouts, ZPA). Per-byte parity and the BCC vouch
for every byte after STX, so the frame is published as it arrives, no successor needed;
only the very first frame waits for a second with the same layout, since its ident line
(before STX) has neither a BCC nor a reference to vouch for it.
What the BCC cannot vouch for is that it is the meter's *latest truth*, and the ident line
before STX, so each frame is still held against the last accepted one (the reference):
the same layout and ids, the seconds index grows (where sent), energy registers never fall
and grow no faster than MAX_POWER_W over the time between the two (the meter's seconds
where both have them, else the arrival times, never less than the frame's own time on the
wire: a reader that fell behind gets frames in bursts).

**Checksum-less push text** (EasyMeter Q3D, Logarex; an eBZ read through this path). Only
the grammar, the values' redundancy and the neighbours stand between a flipped digit and
Tibber. Without a seconds index the one-second physics that lets the eBZ path publish a
telegram right after its reference (energy growth = power x 1 s) is not available, and the
step from the reference is only as tight as 69 kW x the arrival gap. So **every** such
telegram is held until its successor confirms it (not only after a gap, as on the eBZ):
the successor must have the same layout and ids, energy registers that did not fall and
grew no faster than 69 kW, voltages within 2 V, and every other value (status words,
historic registers) the same. A telegram between two damaged ones is not lost: a candidate
waits across rejected telegrams for the next clean one (up to MAX_CANDIDATES). Where two
held candidates contradict each other and the new telegram fits both, neither is
published. Latency: one push period (2 s on EasyMeter, reported). On its own, a telegram
must also pass: |power| <= 69 kW, voltages 150-280 V, and the phase sum where the maker's
real telegrams show it exact (PHASE_SUMS; not on the ZPA GH305, meters.md/issue 8).

Adoption: a new layout or id is adopted after ADOPT_AFTER telegrams in a row carry it; a
run of OVERRULE_AFTER that contradicts the reference replaces it. Each telegram of a run
must confirm the one before exactly as a successor confirms a held telegram (layout, ids,
energy, and for checksum-less ones voltages, status and other values), so a run never
vouches for more than the neighbours do elsewhere: when it completes, a checksum-less
run's last but one (confirmed by the last) is published and becomes the reference, and the
last is held for its successor; a BCC frame completing a run is published (its BCC vouches
for the bytes after STX, the one before with the same layout for its ident line).
A phase sum that fails OVERRULE_AFTER times in a row, on telegrams with one key each
consistent with the one before, is dropped for that layout (an exporting meter signing its
phases differently than the captures show), whether or not a reference has that layout;
a value that differs from the reference in VOLATILE_AFTER telegrams in a row (a clock) is
no longer compared; where no reference has the telegram's layout (at the start, during a
new layout's run) from its predecessor instead, and a new layout keeps what its run learnt.
The agent never stays stuck; each of these says so once (`adopted`).

Every line, what checks it, and what damage no check can see. "Damage" is the model of
agent/meter/validation.py: one changed, lost or repeated byte or line, a cut, any digit,
letter or unit character changed with its parity intact.

======================  ======================================  ================================
line                    checked by                              undetectable (bound)
======================  ======================================  ================================
*STX/ETX + BCC frames*
ident line              layout (before STX: not in the BCC)     nothing
every line after STX    parity + BCC: every single damaged      two bytes changed by the same
                        byte; grammar; the layout; ids; energy  bit pattern (their XORs cancel)
                        monotonic and <= 69 kW                  in one frame: two independent
                                                                errors (outside the model); the
                                                                ident and layout checks catch
                                                                it where a width or id changes
*checksum-less push (EasyMeter-like)*
ident, codes, units,    grammar, the layout (ident, codes,      nothing
widths, `!`             order, widths, units)
0.0.0, 96.1.0,          the identity (compared only with the    nothing
96.1.255, C.1.0         adopted values)
1.8.x, 2.8.x energy     monotonic against the reference and     a value that stays between its
                        the successor; <= 69 kW over the gap    intact neighbours: at most the
                                                                energy drawn in the two push
                                                                periods around it (4 s at 69 kW:
                                                                77 Wh; at 2 kW: 2.2 Wh); at
                                                                start, with no reference: up to
                                                                69 kW x the gap (2 s: 38 Wh)
                                                                below the successor
x.7.0 power lines       the phase sum where exact (ESY: 1.7.0   with a sum: nothing. Without
                        = 21+41+61.7.0; EBZ: 16.7.0 =           one (an unknown maker): any
                        36+56+76.7.0); |P| <= 69 kW             value within +-69 kW
32/52/72.7.0 voltages   150-280 V; within 2 V of the successor  a step < 2 V
status, historic *F,    equal in the successor                  nothing (a value that changes
other values                                                    every telegram, a clock, is
                                                                learnt volatile: then any)
other x.7.y (A, Hz...)  nothing beyond the grammar              any value of that width
======================  ======================================  ================================

The checksum-less class is larger than the eBZ's: without the eBZ's seconds index and the
energy/power agreement it implies, the energy register is bounded by its neighbours rather
than by the power, and a meter without a phase sum has no check on its power lines at all.
Outside the single-damage model: two neighbouring telegrams both damaged so that the second
vouches for the first (both 1.8.0 raised alike): a 1.8.0 outside its intact neighbours is
published. Measured (tests/meter/d0/test_pipeline.py, 25 % of telegrams damaged, adjacent
damage allowed): about 1 in 15 000 damaged telegrams. A bound from the power lines (which
the phase sum verifies) would close it, but its tolerance for loads that switch between two
telegrams needs consecutive real EasyMeter telegrams, which no capture has.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from ..validation import (
    ADOPT_AFTER,
    MAX_POWER_W,
    OVERRULE_AFTER,
    UNUSUAL_VOLTAGE_STEP_DV,
    VOLTAGE_RANGE_DV,
    Outcome,
    Verdict,
)
from .grammar import ID_CODES, SECONDS, D0Telegram, Reason

BAUD = 9600
BITS_PER_BYTE = 10  # 7E1: start, 7 data, parity, stop
# Total and phases whose sum the maker's real telegrams show exact, to the last digit:
# EasyMeter Q3DA1004 557.29 + 521.62 + 609.30 = 1688.21, Q3DB1024 747.85 + 737.28 +
# 639.73 = 2124.86; eBZ DD3 every capture (meters.md §6). Not the ZPA GH305 (issue 8: its
# 16.7.0 differs from its phases' sum by several watts).
PHASE_SUMS: dict[str, tuple[str, tuple[str, str, str]]] = {
    "ESY": ("1.7.0", ("21.7.0", "41.7.0", "61.7.0")),
    "EBZ": ("16.7.0", ("36.7.0", "56.7.0", "76.7.0")),
}
# Held telegrams kept waiting for a confirmation: the newest few (two damaged neighbours
# and the clean one between them).
MAX_CANDIDATES = 3
# A value that differs from the reference this many telegrams in a row changes by itself
# (a clock): a damaged value differs in its own telegram only.
VOLATILE_AFTER = 3
_MAX_POWER = Decimal(MAX_POWER_W)
_WS_PER_KWH = Decimal(3_600_000)


@dataclass(frozen=True, slots=True)
class _Seen:
    telegram: D0Telegram
    arrived: float  # monotonic seconds
    wire_time: float  # how long the frame took on the line


@dataclass
class CheckStats:
    accepted: int = 0
    rejected: Counter[Reason] = field(default_factory=Counter)


class D0Checker:
    def __init__(
        self,
        adopt_after: int = ADOPT_AFTER,
        overrule_after: int = OVERRULE_AFTER,
        baud: int = BAUD,
    ) -> None:
        if min(adopt_after, overrule_after) < 2:
            # A run's newest telegram is vouched for only by its successor; the one before
            # it is the first a run can publish.
            raise ValueError("adopt_after and overrule_after must be at least 2")
        self._adopt_after = adopt_after
        self._overrule_after = overrule_after
        self._byte_time = BITS_PER_BYTE / baud
        self._reference: _Seen | None = None
        self._candidates: list[_Seen] = []  # held, oldest first (checksum-less only)
        self._challenger: _Seen | None = None
        self._run = 0
        self._last: _Seen | None = None  # the last telegram that passed its own checks
        self._changes: Counter[str] = Counter()  # per value: differences in a row
        self.volatile: set[str] = set()  # values no longer compared (see VOLATILE_AFTER)
        # The same, learnt from each telegram's predecessor where no reference has its key
        # (at the start, during a new layout's run); the reference's once one has it.
        self._run_changes: Counter[str] = Counter()
        self._run_volatile: set[str] = set()
        self._sum_failures = 0  # phase sum failures in a row ...
        self._sum_failed: _Seen | None = None  # ... the last of them
        self.sum_off: set[tuple[str, ...]] = set()  # layouts whose phase sum was dropped
        self.stats = CheckStats()

    @property
    def reference(self) -> D0Telegram | None:
        return self._reference.telegram if self._reference else None

    def reset(self) -> None:
        """The port was reopened: held telegrams can no longer be confirmed (their
        successors are lost); the reference stays (counters only grow)."""
        self._drop(len(self._candidates))
        self._challenger = None
        self._run = 0
        self._last = None

    def check(self, t: D0Telegram, arrived: float) -> Verdict:
        seen = _Seen(t, arrived, len(t.raw) * self._byte_time)
        own = self._own(t)
        said = ""
        if own is None:
            own, said = self._phase_sum(seen)
        if own is not None:
            return self._reject(own, said)
        adopted = self._learn(seen)
        ref = self._reference
        if ref is not None and t.key != ref.telegram.key:
            why = Reason.IDENTITY if t.layout == ref.telegram.layout else Reason.LAYOUT
            return self._challenge(seen, why, self._adopt_after, adopted)
        if ref is not None:
            why = _contradiction(ref, seen)
            if why is not None:
                return self._challenge(seen, why, self._overrule_after, adopted)
        if t.bcc and ref is not None:
            return self._publish(seen, adopted)
        # Checksum-less; or the first BCC frame, whose ident line (before STX) no BCC and
        # no reference vouches for: it waits for a second frame with the same layout.
        return self._confirm(seen, adopted)

    # -- checksum-less: held until the successor confirms ------------------------------

    def _confirm(self, seen: _Seen, adopted: str) -> Verdict:
        confirmed = [c for c in self._candidates if self._confirms(c, seen) is None]
        if seen.telegram.bcc and confirmed:
            # BCC frames: the first reference is confirmed; this frame is vouched for by
            # its own BCC and that reference.
            self._drop(len(self._candidates) - 1, keep=confirmed[-1])
            self._accept(confirmed[-1])
            first = f"first reference, meter id {seen.telegram.meter_id!r}"
            verdict = self._publish(seen, adopted or first)
            return Verdict(
                Outcome.ACCEPTED,
                (confirmed[-1].telegram, *verdict.publish),
                adopted=verdict.adopted,
            )  # type: ignore[arg-type]
        published: tuple[D0Telegram, ...] = ()
        if confirmed:
            c = confirmed[-1]
            if all(self._confirms(b, c) is None for b in confirmed[:-1]):
                first = self._reference is None
                self._drop(len(self._candidates) - 1, keep=c)
                self._accept(c)
                published = (c.telegram,)
                if first and not adopted:
                    adopted = f"first reference, meter id {c.telegram.meter_id!r}"
        self._candidates.append(seen)
        if len(self._candidates) > MAX_CANDIDATES:
            self._drop(1)
        outcome = Outcome.HELD
        return Verdict(outcome, published, adopted=adopted)  # type: ignore[arg-type]

    def _confirms(self, prev: _Seen, new: _Seen) -> Reason | None:
        """Whether `new` vouches for `prev` (checksum-less neighbours). None = it does."""
        a, b = prev.telegram, new.telegram
        if a.key != b.key:
            return Reason.LAYOUT
        why = _contradiction(prev, new)
        if why is not None or a.bcc:
            return why  # a BCC frame's values need no neighbour
        ref = self._reference
        volatile = self.volatile if ref and ref.telegram.key == a.key else self._run_volatile
        for code, v in b.volts.items():
            old = a.volts.get(code)
            if old is not None and abs(v - old) >= UNUSUAL_VOLTAGE_STEP_DV:
                return Reason.CHANGED
        for code in _compared(a):
            if code not in volatile and a.values[code] != b.values.get(code):
                return Reason.CHANGED
        return None

    def _learn(self, seen: _Seen) -> str:
        """Count, per compared value, how many telegrams in a row differ from the reference
        (where no reference has this telegram's key: from the telegram before); a value
        that keeps changing is a clock, not damage: stop comparing it (said once). A damaged
        value differs in one telegram, so against the reference only VOLATILE_AFTER damaged
        telegrams in a row could mark one (against the predecessor: two neighbours)."""
        ref, last = self._reference, self._last
        self._last = seen
        key = seen.telegram.key
        if ref is not None and ref.telegram.key == key:
            base, changes, volatile = ref, self._changes, self.volatile
        elif last is not None and last.telegram.key == key:
            base, changes, volatile = last, self._run_changes, self._run_volatile
        else:
            return ""
        new = []
        for code in _compared(seen.telegram):
            if code in volatile:
                continue
            if base.telegram.values.get(code) != seen.telegram.values[code]:
                changes[code] += 1
                if changes[code] >= VOLATILE_AFTER:
                    volatile.add(code)
                    new.append(code)
            else:
                changes[code] = 0
        return f"{', '.join(new)} change(s) every telegram: not compared" if new else ""

    # -- what a telegram proves about itself -----------------------------------------

    def _own(self, t: D0Telegram) -> Reason | None:
        if any(abs(p) > _MAX_POWER for p in t.power.values()):
            return Reason.RANGE
        lo, hi = VOLTAGE_RANGE_DV
        if any(not lo <= v <= hi for v in t.volts.values()):
            return Reason.RANGE
        return None

    def _phase_sum(self, seen: _Seen) -> tuple[Reason | None, str]:
        """The phase sum where the maker's captures show it exact; and what to say once
        when it is dropped for a layout."""
        t = seen.telegram
        if t.bcc or t.layout in self.sum_off:
            return None, ""  # the BCC vouches for the power lines
        rule = PHASE_SUMS.get(t.maker)
        if rule is None:
            return None, ""
        total, phases = rule
        p = t.power
        if total not in p or any(c not in p for c in phases):
            return None, ""
        if p[total] == sum((p[c] for c in phases), Decimal(0)):
            self._sum_failures, self._sum_failed = 0, None
            return None, ""
        # Damage breaks the sum once; a meter that never sums (an exporting one that signs
        # its phases otherwise than the captures) breaks it on every telegram. Counted on
        # telegrams in a row with one key, each consistent with the one before, whether or
        # not a reference has that key (at the start, or a new layout, there is none).
        last = self._sum_failed
        if last is not None and last.telegram.key == t.key and _contradiction(last, seen) is None:
            self._sum_failures += 1
        else:
            self._sum_failures = 1
        self._sum_failed = seen
        if self._sum_failures < self._overrule_after:
            return Reason.POWER_SUM, ""
        self.sum_off.add(t.layout)
        self._sum_failures, self._sum_failed = 0, None
        return Reason.POWER_SUM, (
            f"phase sum {total} = {' + '.join(phases)} failed {self._overrule_after} "
            f"telegrams in a row: not checked for layout {t.ident}"
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def _publish(self, seen: _Seen, adopted: str = "") -> Verdict:
        self._drop(len(self._candidates))
        self._accept(seen)
        return Verdict(Outcome.ACCEPTED, (seen.telegram,), adopted=adopted)  # type: ignore[arg-type]

    def _accept(self, seen: _Seen) -> None:
        old = self._reference
        if old is None or old.telegram.key != seen.telegram.key:
            # A first reference, or a new layout or id: what its run learnt is now the
            # reference's (the old key's volatile values do not carry over).
            self._changes, self.volatile = self._run_changes, self._run_volatile
            self._run_changes, self._run_volatile = Counter(), set()
        self._reference = seen
        self._challenger = None
        self._run = 0
        self.stats.accepted += 1

    def _reject(self, reason: Reason, adopted: str = "") -> Verdict:
        self.stats.rejected[reason] += 1
        return Verdict(Outcome.REJECTED, reason=reason, adopted=adopted)  # type: ignore[arg-type]

    def _drop(self, count: int, keep: _Seen | None = None) -> None:
        """Forget the `count` oldest held telegrams (all but `keep`, if given): unconfirmed."""
        if keep is not None:
            dropped = [c for c in self._candidates if c is not keep]
            self._candidates = []
        else:
            dropped, self._candidates = self._candidates[:count], self._candidates[count:]
        self.stats.rejected[Reason.UNCONFIRMED] += len(dropped)

    def _challenge(self, seen: _Seen, reason: Reason, needed: int, learnt: str) -> Verdict:
        """seen contradicts the reference. Count how long a run of such telegrams is, each
        confirmed by the next as a held telegram is by its successor (layout, ids, energy,
        voltages, status and other values); a run of `needed` replaces the reference. Its
        newest telegram has no successor yet: a BCC frame is vouched for by its BCC and,
        for its ident line, by the one before with the same layout, so it is published;
        a checksum-less one is held for its successor like any other, and the one before
        it, which it confirmed, is published and becomes the reference."""
        c = self._challenger
        if c is not None and self._confirms(c, seen) is None:
            self._run += 1
        else:
            self._run = 1
        self._challenger = seen
        if self._run < needed:
            return self._reject(reason, learnt)
        assert c is not None  # needed >= 2
        old = self._reference
        assert old is not None
        if reason is Reason.IDENTITY:
            what = f"new meter id {seen.telegram.meter_id!r} (was {old.telegram.meter_id!r})"
        elif reason is Reason.LAYOUT:
            what = (
                f"new telegram layout {seen.telegram.ident} with "
                f"{len(seen.telegram.layout) - 1} lines (was {len(old.telegram.layout) - 1})"
            )
        else:
            what = f"meter data overruled the last reference ({reason})"
            # Values learnt volatile against the overruled reference are compared again.
            self._changes.clear()
            self.volatile.clear()
            learnt = ""
        what = f"{what}; {learnt}" if learnt else what
        if seen.telegram.bcc:
            return self._publish(seen, what)
        self._drop(len(self._candidates))
        self._accept(c)
        self._candidates.append(seen)
        return Verdict(Outcome.HELD, (c.telegram,), adopted=what)  # type: ignore[arg-type]


def _compared(t: D0Telegram) -> list[str]:
    """Values a checksum-less successor must repeat: all but the quantities that move by
    themselves (energy, instantaneous x.7.y values), the ids (in the key) and seconds."""
    return [
        code
        for code in t.values
        if code not in t.energy
        and code != SECONDS
        and code not in ID_CODES
        and not _instantaneous(code)
    ]


def _instantaneous(code: str) -> bool:
    parts = code.partition(":")[2 if ":" in code else 0].split(".")
    return len(parts) >= 2 and parts[1] == "7" and "*" not in code


def _contradiction(prev: _Seen, new: _Seen) -> Reason | None:
    """What makes `new` impossible as a later telegram of `prev`'s meter, or None."""
    a, b = prev.telegram, new.telegram
    if a.seconds is not None and b.seconds is not None:
        elapsed = Decimal(b.seconds - a.seconds)
        if elapsed <= 0:
            return Reason.SECONDS
    else:
        # A telegram cannot end sooner after the last one than its own bytes take to arrive.
        elapsed = Decimal(max(new.arrived - prev.arrived, new.wire_time))
    for code, e in b.energy.items():
        old = a.energy.get(code)
        if old is None:
            continue
        grown = e - old
        if grown < 0:
            return Reason.ENERGY_FELL
        # One digit of slack: the register's own truncation.
        digit = Decimal(1).scaleb(min(e.as_tuple().exponent, old.as_tuple().exponent))  # type: ignore[arg-type]
        if (grown - digit) * _WS_PER_KWH > _MAX_POWER * elapsed:
            return Reason.ENERGY_RATE
    return None
