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
exactly one meter second after it can be checked tightly: if that check fails, the
telegram is rejected. After a gap (a lost or rejected telegram, or at start) a telegram is
*held* and published only once a neighbour confirms it: its successor one second later,
or, across one lost second, the reference two seconds before together with what the lost
second's damaged telegram still proves (its power, if its power lines add up; its energy,
if its lines were intact: see telegram.salvage). What such a witness proves is never
published itself. A different layout or meter id is adopted only after it repeats,
self-consistently, for ADOPT_AFTER telegrams (PIN entry, power cut, new meter); a run of
OVERRULE_AFTER that contradicts the reference replaces it, so the agent never stays stuck.

One damage cannot be seen by any of this: an energy register's last digit changed by 1
or 2 (10-20 uWh), within the cross-check's resolution (the meter truncates its own
register by as much). Everything else the tests inject is rejected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum

from .telegram import (
    POWER_PHASES,
    POWER_TOTAL,
    Reason,
    Telegram,
    salvage,
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
OVERRULE_AFTER = 10


# What may legitimately change from one second to the next beyond the tight checks: the
# status word, and the voltage by more than a few volts. Such a telegram waits for its
# successor's confirmation instead of being rejected.
_STEPS = (Reason.VALUE, Reason.RANGE)


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
        # Plausible telegrams not yet confirmed, oldest first (at most two seconds' worth).
        self._candidates: list[Telegram] = []
        # What rejected telegrams still prove about their second, by seconds index: their
        # power if it adds up, and their energy if their lines were intact (see salvage).
        self._witnesses: dict[int, list[Telegram]] = {}
        # The same for the telegram just before, if it lost its seconds (cut short).
        self._orphan: list[Telegram] = []
        self._challenger: Telegram | None = None  # tail of a run that contradicts the reference
        self._run = 0

    @property
    def template(self) -> Telegram | None:
        """The layout a damaged telegram's lines are read against (telegram.salvage)."""
        return self._candidates[-1] if self._candidates else self.reference

    def reset(self) -> None:
        """Resync: the stream was interrupted (port reopened).

        The reference stays: it is still the bar that new data must clear (counters only
        grow), and the gap makes the next telegram wait for its successor's confirmation.
        """
        self._drop_candidates(None)
        self._witnesses.clear()
        self._orphan = []
        self._challenger = None
        self._run = 0

    def reject(self, reason: Reason, witness: Telegram | None = None) -> Verdict:
        """Count a telegram that failed before validation (parity, grammar).

        Its undamaged lines may still vouch for a neighbour (`witness`, see
        telegram.salvage), so a clean telegram between two damaged ones is not lost.
        A witness is never published.
        """
        self.stats.rejected[reason] += 1
        self._orphan = []
        if witness is None:
            return Verdict(Outcome.REJECTED, reason=reason)
        return self._vouch(witness, reason)

    def _vouch(self, witness: Telegram, reason: Reason) -> Verdict:
        """Keep what a rejected telegram proves; release a candidate it confirms."""
        variants = _power_variants(witness)
        if witness.seconds is None:
            self._orphan = variants
            return Verdict(Outcome.REJECTED, reason=reason)
        self._remember(witness.seconds, variants)
        for c in reversed(self._candidates):
            if any(_complete(v, c) and _confirms(c, v) is None for v in variants):
                return Verdict(Outcome.REJECTED, publish=self._accept(c), reason=reason)
        return Verdict(Outcome.REJECTED, reason=reason)

    def check(self, t: Telegram) -> Verdict:
        orphan, self._orphan = self._orphan, []
        own = _self_check(t)
        if own is not None:
            self.stats.rejected[own] += 1
            if own is Reason.POWER_SUM and (self.reference is None or t.key == self.reference.key):
                return self._vouch(t, own)  # one power line is wrong; the rest still tells
            return Verdict(Outcome.REJECTED, reason=own)
        ref = self.reference
        if ref is not None and t.key != ref.key:
            why = Reason.IDENTITY if t.layout == ref.layout else Reason.LAYOUT
            verdict = self._challenge(t, why, self._adopt_after)
            witness = salvage(t.raw, ref) if why is Reason.LAYOUT else None
            if verdict.outcome is Outcome.REJECTED and witness is not None:
                # A lost byte changes one line's width; the other lines still tell.
                released = self._vouch(witness, why)
                self.stats.rejected[why] -= 1  # counted once, by _challenge
                return Verdict(Outcome.REJECTED, publish=released.publish, reason=why)
            return verdict
        if ref is not None:
            loose = _plausible(ref, t)
            if loose is not None:
                if t.seconds is not None:
                    # Its power still tells about its second (not its energy: suspect).
                    self._remember(t.seconds, [_power_only(t)])
                return self._challenge(t, loose, self._overrule_after)

        # Checked tightly against the reference or a candidate one second before, or
        # across a lost second whose power a rejected telegram's lines still tell.
        anchors = [*([ref] if ref is not None else []), *self._candidates]
        for anchor in reversed(anchors):
            why = _confirms(anchor, t)
            if why is None or (why is Reason.SECONDS and self._bridged(anchor, t, orphan)):
                earlier = () if anchor is ref else (anchor,)
                return Verdict(Outcome.ACCEPTED, publish=self._accept(*earlier, t))
            if why is not Reason.SECONDS and why not in _STEPS and anchor is ref:
                # The second right after the reference contradicts it: t is damaged
                # (or, rarely, the reference was: then the next seconds overrule it).
                # Its power adds up, so it still tells the power of its second.
                self.stats.rejected[why] += 1
                self._remember(t.seconds, [_power_only(t)])
                return Verdict(Outcome.REJECTED, reason=why)
        if ref is not None and t.seconds is not None:
            before = self._witnesses.get(t.seconds - 1, [])
            if any(
                _complete(w, t) and _plausible(ref, w) is None and _confirms(w, t) is None
                for w in before
            ):
                return Verdict(Outcome.ACCEPTED, publish=self._accept(t))
        # Plausible, but nothing checks it tightly yet (after a gap; after a status or
        # voltage step; or it contradicts a candidate, one of the two being damaged):
        # publish once the next second confirms it.
        self._candidates.append(t)
        self._drop_candidates(t.seconds)
        return Verdict(Outcome.HELD)

    def _bridged(self, anchor: Telegram, t: Telegram, orphan: list[Telegram]) -> bool:
        """anchor and t are two seconds apart, and a rejected telegram tells the power of
        the second between (an orphan, arriving just before t, can only be that second)."""
        if anchor.seconds is None or t.seconds != anchor.seconds + 2:
            return False
        second = anchor.seconds + 1
        lost = self._witnesses.get(second) or orphan
        lost = lost + [c for c in self._candidates if c.seconds == second]
        for w in lost:
            # With its energy too, hold it to the one-second physics on both sides; else
            # (or if its energy was the damaged line) use its power across both seconds.
            if _complete(w, t) and _confirms(anchor, w) is None and _confirms(w, t) is None:
                return True
            if _bridges(anchor, w, t) is None:
                return True
        return False

    def _remember(self, seconds: int, variants: list[Telegram]) -> None:
        base = self.reference.seconds if self.reference and self.reference.seconds else 0
        if seconds > base:
            self._witnesses[seconds] = variants
            for old in [s for s in self._witnesses if s < seconds - 3]:
                del self._witnesses[old]

    def _drop_candidates(self, newest: int | None) -> None:
        """Forget candidates too old to be confirmed any more (or all, for None)."""
        keep = [
            c
            for c in self._candidates
            if newest is not None and c.seconds is not None and c.seconds >= newest - 2
        ]
        self.stats.rejected[Reason.UNCONFIRMED] += len(self._candidates) - len(keep)
        self._candidates = keep

    def _accept(self, *telegrams: Telegram) -> tuple[Telegram, ...]:
        ref = self.reference = telegrams[-1]
        now = ref.seconds if ref.seconds is not None else 0
        stale = [c for c in self._candidates if c not in telegrams]
        self.stats.rejected[Reason.UNCONFIRMED] += sum(
            1 for c in stale if c.seconds is None or c.seconds <= now
        )
        self._candidates = [c for c in stale if c.seconds is not None and c.seconds > now]
        self._witnesses = {s: w for s, w in self._witnesses.items() if s > now}
        self._challenger = None
        self._run = 0
        self.stats.accepted += len(telegrams)
        return telegrams

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
            self._candidates.clear()
            self._witnesses.clear()
            return Verdict(
                Outcome.ACCEPTED, publish=self._accept(t), adopted=_describe(old, t, reason)
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
        if len(phases) == 3 and not _sum_ok(total, phases):
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
        # Units of 1e-scale kWh to W*s: * 3.6e6 / 10**scale. One display digit of slack.
        if dt is not None and grown * 3_600_000 > MAX_POWER_W * dt * 10**scale + 3_600_000:
            return Reason.ENERGY_RATE
    return None


def _confirms(prev: Telegram, t: Telegram) -> Reason | None:
    """Tight checks between two telegrams one meter second apart. None = consistent."""
    why = _neighbours(prev, t, 1)
    if why is not None:
        return why
    energy = _net_energy(prev, t)
    if energy is None:
        return None
    net, scale, total, imported, exported = energy
    # Units of 1e-scale kWh; 1 unit = 3.6e6 / 10**scale W*s; power in 0.01 W over 1 s.
    expected = total * 10**scale / 360_000_000
    if abs(net - expected) > AGREEMENT_DIGITS + _rounding(scale):
        return Reason.ENERGY_POWER
    # Power on one side for the whole second: the other register cannot have moved. (A
    # wrong digit there would otherwise pass the net check and, adopted as reference,
    # make every honest telegram look like a falling counter.)
    old_total = prev.power.get(POWER_TOTAL, 0)
    if exported is not None and (
        (total > 0 and old_total > 0 and exported != 0)
        or (total < 0 and old_total < 0 and imported != 0)
    ):
        return Reason.ENERGY_POWER
    return None


def _bridges(prev: Telegram, lost: Telegram, t: Telegram) -> Reason | None:
    """Checks across one lost second whose power is known from a rejected telegram: the
    energy of the two seconds must be the lost second's plus t's own."""
    why = _neighbours(prev, t, 2)
    if why is not None:
        return why
    energy = _net_energy(prev, t)
    lost_total = lost.power.get(POWER_TOTAL)
    if energy is None or lost_total is None:
        return Reason.SECONDS
    net, scale, total, imported, exported = energy
    expected = (lost_total + total) * 10**scale / 360_000_000
    # One truncation of the register, as over one second; two roundings of the power.
    if abs(net - expected) > AGREEMENT_DIGITS + 2 * _rounding(scale):
        return Reason.ENERGY_POWER
    signs = {_sign(prev.power.get(POWER_TOTAL, 0)), _sign(lost_total), _sign(total)}
    if exported is not None and (
        (signs == {1} and exported != 0) or (signs == {-1} and imported != 0)
    ):
        return Reason.ENERGY_POWER
    return None


def _power_only(t: Telegram) -> Telegram:
    return replace(t, energy={})


def _complete(w: Telegram, like: Telegram) -> bool:
    """A witness can stand in for a full telegram only with every value the checks use."""
    return (
        w.seconds is not None
        and w.energy.keys() == like.energy.keys()
        and (POWER_TOTAL in w.power) == (POWER_TOTAL in like.power)
    )


def _power_variants(w: Telegram) -> list[Telegram]:
    """The witness, with each total power its lines allow: if the four power lines do not
    add up, one of them is wrong, so either the total or the phases' sum is the truth."""
    total = w.power.get(POWER_TOTAL)
    phases = [w.power[c] for c in POWER_PHASES if c in w.power]
    if len(phases) < 3:
        return [w]  # a damaged phase line was left out: the total is the intact one
    if total is None:
        return [replace(w, power={**w.power, POWER_TOTAL: sum(phases)})]
    if _sum_ok(total, phases):
        return [w]
    return [w, replace(w, power={**w.power, POWER_TOTAL: sum(phases)})]


def _sum_ok(total: int, phases: list[int]) -> bool:
    # The sum is exact on every real telegram. Whether a 2R meter signs its phase powers
    # during export is not known for sure (meters.md §6): unsigned phases adding up to an
    # exported total are accepted too, but not a mix of signs that only adds up without
    # them (that is what a lost '-' looks like).
    if total == sum(phases):
        return True
    return total < 0 and min(phases) >= 0 and -total == sum(phases)


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _neighbours(prev: Telegram, t: Telegram, seconds: int) -> Reason | None:
    """What must hold between two telegrams `seconds` meter seconds apart, energy aside."""
    if prev.key != t.key:
        return Reason.LAYOUT
    loose = _plausible(prev, t)
    if loose is not None:
        return loose
    if _elapsed(prev, t) != seconds:
        return Reason.SECONDS
    if t.status != prev.status:
        return Reason.VALUE
    for code, v in t.volts.items():
        old = prev.volts.get(code)
        if old is not None and abs(v - old) > MAX_VOLTAGE_STEP_DV:
            return Reason.RANGE
    return None


def _net_energy(prev: Telegram, t: Telegram) -> tuple[int, int, int, int, int | None] | None:
    """(import minus export growth, the units' decimals, t's power in 0.01 W, import
    growth, export growth or None) in register units, or None where the registers or the
    power are missing."""
    total = t.power.get(POWER_TOTAL)
    imp_new, imp_old = t.energy.get("1.8.0"), prev.energy.get("1.8.0")
    if total is None or imp_new is None or imp_old is None:
        return None
    scale = max(imp_new.decimals, imp_old.decimals)
    imported = imp_new.scaled(scale) - imp_old.scaled(scale)
    exported = None
    exp_new, exp_old = t.energy.get("2.8.0"), prev.energy.get("2.8.0")
    if exp_new is not None and exp_old is not None:
        if exp_new.decimals != scale or exp_old.decimals != scale:
            return None  # registers of different resolution: no tight comparison
        exported = exp_new.units - exp_old.units
    return imported - (exported or 0), scale, total, imported, exported


def _rounding(scale: int) -> float:
    """The 0.005 W rounding of the power, in register units over one second."""
    return 0.5 * 10**scale / 360_000_000


def _elapsed(ref: Telegram, t: Telegram) -> int | None:
    if ref.seconds is None or t.seconds is None:
        return None
    return t.seconds - ref.seconds
