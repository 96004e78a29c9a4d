"""Decides which telegrams may be published. Pure: telegrams in, verdicts out.

The eBZ sends no checksum, but its values are redundant, and that redundancy is the
checksum we use:

* 16.7.0 is exactly the sum of the phase powers 36.7.0 + 56.7.0 + 76.7.0;
* the seconds index 96.8.0 grows by one per telegram;
* 1.8.0 (and 2.8.0) never fall, and from one second to the next they grow by exactly the
  energy that 16.7.0 reports: the meter computes both from one accumulator, so they agree
  to one display digit (10 uWh = 0.036 W over a second; see meters.md §6);
* the layout (ident, OBIS codes, widths, units) and the meter id stay the same.

Each telegram is compared with the last accepted one (the *reference*). Only a telegram
exactly one meter second after the reference can be checked tightly; after a gap (a lost
or rejected telegram, or at start) the telegram is *held* and published only once its
successor, one second later, confirms it. A different layout or meter id is adopted only
after it repeats, self-consistently, for several telegrams (PIN entry, power cut, new meter).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from .telegram import (
    POWER_PHASES,
    POWER_TOTAL,
    Reason,
    Telegram,
)

# A household connection: 3 x 100 A x 230 V is 69 kW (the 100 A eBZ); nothing draws more.
MAX_POWER_W = 69_000
# Energy and power agree to one display digit of the register plus the rounding of the
# power to 0.01 W (measured on every consecutive pair of real telegrams: at most 0.61 digit).
AGREEMENT_DIGITS = 1.2
# Mains voltage moves by a volt or two between seconds; a digit error moves it by 10.
MAX_VOLTAGE_STEP_DV = 50  # tenths of a volt
VOLTAGE_RANGE_DV = (1500, 2800)
# A new layout or meter id must repeat this often, each telegram confirming the one before.
ADOPT_AFTER = 3
# The reference itself may be wrong only if damage survived every check twice in a row;
# a consistent run this long that contradicts it wins, so the agent never stays stuck.
OVERRULE_AFTER = 60


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    HELD = "held"  # plausible, awaiting its successor's confirmation
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    publish: tuple[Telegram, ...] = ()  # oldest first; a confirmed held telegram comes first
    reason: Reason | None = None  # why rejected (or why held)
    adopted: str = ""  # set when a new layout/meter id/reference was adopted: say so once


@dataclass
class ValidationStats:
    accepted: int = 0
    rejected: Counter[Reason] = field(default_factory=Counter)


class Validator:
    def __init__(self, adopt_after: int = ADOPT_AFTER, overrule_after: int = OVERRULE_AFTER):
        self._adopt_after = adopt_after
        self._overrule_after = overrule_after
        self.stats = ValidationStats()
        self.reference: Telegram | None = None
        self._held: Telegram | None = None
        self._challenger: Telegram | None = None  # tail of a run that contradicts the reference
        self._run = 0

    def reset(self) -> None:
        """Resync: the stream was interrupted (port reopened).

        The reference stays: it is still the bar that new data must clear (counters only
        grow), and the gap makes the next telegram wait for its successor's confirmation.
        """
        self._drop_held()
        self._challenger = None
        self._run = 0

    def _drop_held(self) -> None:
        if self._held is not None:
            self.stats.rejected[Reason.UNCONFIRMED] += 1
            self._held = None

    def reject(self, reason: Reason) -> Verdict:
        """Count a telegram that failed before validation (parity, grammar)."""
        self.stats.rejected[reason] += 1
        return Verdict(Outcome.REJECTED, reason=reason)

    def check(self, t: Telegram) -> Verdict:
        own = _self_check(t)
        if own is not None:
            return self.reject(own)

        ref = self.reference
        if ref is not None and t.key != ref.key:
            why = Reason.IDENTITY if t.layout == ref.layout else Reason.LAYOUT
            return self._challenge(t, why, self._adopt_after)

        held = self._held
        if held is not None and _confirms(held, t) is None:
            return self._accept(held, t)
        if ref is None:
            self._drop_held()
            self._held = t
            return Verdict(Outcome.HELD)

        loose = _plausible(ref, t)
        if loose is not None:
            return self._challenge(t, loose, self._overrule_after)
        if _confirms(ref, t) is None:
            return self._accept(t)
        # Plausible, but too far from the reference to check tightly (a gap, a status or
        # voltage step): publish once the next second confirms it.
        self._drop_held()
        self._held = t
        return Verdict(Outcome.HELD)

    def _accept(self, *telegrams: Telegram) -> Verdict:
        self.reference = telegrams[-1]
        self._held = None
        self._challenger = None
        self._run = 0
        self.stats.accepted += len(telegrams)
        return Verdict(Outcome.ACCEPTED, publish=telegrams)

    def _challenge(self, t: Telegram, reason: Reason, needed: int) -> Verdict:
        """t contradicts the reference; count how long a self-consistent run of such has been."""
        c = self._challenger
        if c is not None and c.key == t.key and _confirms(c, t) is None:
            self._run += 1
        else:
            self._run = 1
        self._challenger = t
        if self._run >= needed:
            old = self.reference
            verdict = self._accept(t)
            return Verdict(
                Outcome.ACCEPTED, publish=verdict.publish, adopted=_describe(old, t, reason)
            )
        self.stats.rejected[reason] += 1
        return Verdict(Outcome.REJECTED, reason=reason)


def _describe(old: Telegram | None, new: Telegram, reason: Reason) -> str:
    if old is None:
        return "first reference"
    if reason is Reason.IDENTITY:
        return f"new meter id {new.meter_id} (was {old.meter_id})"
    if reason is Reason.LAYOUT:
        lines = len(new.layout) - 1
        return f"new telegram layout {new.ident} with {lines} lines (was {len(old.layout) - 1})"
    return f"meter data overruled the last reference ({reason})"


def _self_check(t: Telegram) -> Reason | None:
    """What one telegram can prove about itself."""
    p = t.power
    total = p.get(POWER_TOTAL)
    if total is not None:
        if abs(total) > MAX_POWER_W * 100:
            return Reason.RANGE
        phases = [p[c] for c in POWER_PHASES if c in p]
        # The sum is exact on every real telegram. The export sign of the phases is not
        # known for sure (meters.md §6), so magnitudes adding up is accepted too.
        if len(phases) == 3 and total != sum(phases) and abs(total) != sum(map(abs, phases)):
            return Reason.POWER_SUM
    lo, hi = VOLTAGE_RANGE_DV
    if any(not lo <= v <= hi for v in t.volts.values()):
        return Reason.RANGE
    return None


def _plausible(ref: Telegram, t: Telegram) -> Reason | None:
    """Loose checks that hold over any gap: time and counters only move forward."""
    dt = _elapsed(ref, t)
    if dt is not None and dt <= 0:
        return Reason.SECONDS
    for code, e in t.energy.items():
        old = ref.energy.get(code)
        if old is None:
            continue
        scale = max(e.decimals, old.decimals)
        grown = e.scaled(scale) - old.scaled(scale)
        if grown < 0:
            return Reason.ENERGY_FELL
        # kWh from W*s: 1 kWh = 3.6e6 W*s.
        if dt is not None and grown * 3_600_000 > (MAX_POWER_W * dt + 3_600_000) * 10**scale:
            return Reason.ENERGY_RATE
    return None


def _confirms(prev: Telegram, t: Telegram) -> Reason | None:
    """Tight checks between two telegrams one meter second apart. None = consistent."""
    if prev.key != t.key:
        return Reason.LAYOUT
    loose = _plausible(prev, t)
    if loose is not None:
        return loose
    if _elapsed(prev, t) != 1:
        return Reason.SECONDS
    if t.status != prev.status:
        return Reason.VALUE
    for code, v in t.volts.items():
        old = prev.volts.get(code)
        if old is not None and abs(v - old) > MAX_VOLTAGE_STEP_DV:
            return Reason.RANGE
    total = t.power.get(POWER_TOTAL)
    imp_new, imp_old = t.energy.get("1.8.0"), prev.energy.get("1.8.0")
    if total is None or imp_new is None or imp_old is None:
        return None
    scale = max(imp_new.decimals, imp_old.decimals)
    net = imp_new.scaled(scale) - imp_old.scaled(scale)
    exp_new, exp_old = t.energy.get("2.8.0"), prev.energy.get("2.8.0")
    if exp_new is not None and exp_old is not None:
        if exp_new.decimals != scale or exp_old.decimals != scale:
            return None  # registers of different resolution: no tight comparison
        net -= exp_new.units - exp_old.units
    # Compare in units of 1e-(scale) kWh over one second: power [0.01 W] * 1 s.
    # 1 unit = 3.6e6 / 10**scale W*s, so expected units = total/100 * 10**scale / 3.6e6.
    expected = total * 10**scale / 360_000_000
    if abs(net - expected) > AGREEMENT_DIGITS + expected_rounding(scale):
        return Reason.ENERGY_POWER
    return None


def expected_rounding(scale: int) -> float:
    """The 0.005 W rounding of the power, in register digits over one second."""
    return 0.5 * 10**scale / 360_000_000


def _elapsed(ref: Telegram, t: Telegram) -> int | None:
    if ref.seconds is None or t.seconds is None:
        return None
    return t.seconds - ref.seconds
