"""Decides which telegrams may be published. Pure: telegrams in, verdicts out.

The eBZ sends no checksum, but its values are redundant, and that redundancy is the
checksum we use:

* 16.7.0 is exactly the sum of the phase powers 36.7.0 + 56.7.0 + 76.7.0, signs included;
* the seconds index 96.8.0 grows by one per telegram;
* 1.8.0 (and 2.8.0) never fall, and from one second to the next they grow by exactly the
  energy that 16.7.0 reports: the meter computes both from one accumulator, so they agree
  to one display digit (10 uWh = 0.036 W over a second; see meters.md §6);
* tariff registers (1.8.1, 1.8.2, ...; 2.8.x) add up to their total truncated to whole Wh,
  only the running tariff's hidden remainder moves, so what they leave of the total stays
  in a window one tariff digit wide (_Spread);
* the layout (ident, OBIS codes, widths, units) and both id lines stay the same.

Each telegram is compared with the last accepted one (the *reference*). Only a telegram
exactly one meter second after it can be checked tightly: if that check fails, the
telegram is rejected. After a gap (a lost or rejected telegram, or at start) a telegram is
*held* and published only once a neighbour confirms it: its successor one second later,
or, across one lost second, the reference two seconds before together with what the lost
second's damaged telegram still proves (its power, if its power lines add up; its energy,
if its lines were intact: see telegram.salvage). What such a witness proves is never
published itself. An unusual step that a real meter can make waits for its successor in
the same way: a new status word, a voltage 2 V or more from the second before, a tariff
register's first step after start or a tariff switch. A different layout or meter id is
adopted only after it repeats, self-consistently, for ADOPT_AFTER telegrams (PIN entry,
power cut, new meter); a run of OVERRULE_AFTER that contradicts the reference replaces
it, so the agent never stays stuck.

Every line, what checks it, and what damage to it no check can see (the README has the
same table; tests/meter/test_corruption.py measures it per line):

=====================  ==================================================  =========================
line                   checked by                                          undetectable
=====================  ==================================================  =========================
ident, blank line,     framing, grammar, the layout: ident, OBIS codes,    nothing
OBIS codes, units,     their order, widths, decimals and units must stay
widths, '!'            the same (a new layout: ADOPT_AFTER telegrams)
0.0.0, 96.1.0          both values are part of the identity; a pair that   nothing
                       differs (a property number in 0.0.0) is adopted
                       only after ADOPT_AFTER telegrams, also at start
1.8.0, 2.8.0           never fall; no faster than 69 kW over any gap; one  last digit off by 1-2
                       second on, grow by exactly the energy of 16.7.0;    (10-20 uWh): the meter's
                       the other direction's register stands still         own truncation
1.8.x, 2.8.x tariffs   never fall; add up to the total truncated; grow     last digit off by 1
                       together no faster than it; the remainder's         (1 Wh) in the second the
                       window; a first step waits for the successor        register steps
16.7.0, 36/56/76.7.0   the signed sum; 16.7.0 against the energy growth    nothing
32/52/72.7.0           150-280 V; a step of 2 V or more waits for the      a value < 2 V from a
                       successor, which must confirm the new level         neighbouring second's
96.5.0                 any change waits for the successor                  nothing
96.8.0                 grows; +1 per second where checked tightly          nothing
=====================  ==================================================  =========================

"Nothing" means no single damage the tests inject gets through (a changed, lost or
repeated byte or line, a cut, any digit, letter, hex digit or unit character changed with
its parity intact). Outside that model: the same damage in two consecutive telegrams (the
same byte changed the same way), which two independent link errors do not produce.
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
# The mains wanders by up to ~1.1 V from one second to the next (the largest step in the
# ahpohl capture's 7 consecutive telegrams; the simulator's walk stays well below). A step
# of 2 V or more that the next second does not confirm is a damaged digit, so such a step
# waits for its successor. Below it, a wrong tenths or ones digit is indistinguishable
# from the wander: documented as undetectable (module docstring).
UNUSUAL_VOLTAGE_STEP_DV = 20  # tenths of a volt
VOLTAGE_RANGE_DV = (1500, 2800)
# A new layout or meter id must repeat this often, each telegram confirming the one before.
ADOPT_AFTER = 3
# The reference itself may be wrong only if damage survived every check twice in a row;
# a consistent run this long that contradicts it wins, so the agent never stays stuck.
OVERRULE_AFTER = 10


# What may legitimately change from one second to the next beyond the tight checks: the
# status word, and the voltage by 2 V or more. Such a telegram waits for its successor's
# confirmation instead of being rejected.
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
        # Per direction with tariff registers (by its total's code): what the published
        # telegrams' tariff registers left of their total (see _Spread).
        self._spreads: dict[str, _Spread] = {}

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
        if ref is None and len(set(t.ids)) > 1:
            # 0.0.0 and 96.1.0 differ (a property number in 0.0.0, seen on one meter): a
            # damaged id digit looks the same at first, so such a pair must repeat like a
            # new meter before it becomes the identity.
            return self._challenge(t, Reason.IDENTITY, self._adopt_after)
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
                return self._settle(() if anchor is ref else (anchor,), t)
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
                return self._settle((), t)
        # Plausible, but nothing checks it tightly yet (after a gap; after a status or
        # voltage step; or it contradicts a candidate, one of the two being damaged):
        # publish once the next second confirms it.
        self._hold(t)
        return Verdict(Outcome.HELD)

    def _settle(self, confirmed: tuple[Telegram, ...], t: Telegram) -> Verdict:
        """t passed its tight checks (and confirmed a held telegram, if any). It goes out
        now unless its tariff registers step in a way only its successor can vouch for."""
        published = self._accept(*confirmed) if confirmed else ()
        if self._tariffs_usual(t):
            return Verdict(Outcome.ACCEPTED, publish=published + self._accept(t))
        self._hold(t)
        return Verdict(Outcome.HELD, publish=published, reason=Reason.TARIFF)

    def _hold(self, t: Telegram) -> None:
        self._candidates.append(t)
        self._drop_candidates(t.seconds)

    def _tariffs_usual(self, t: Telegram) -> bool:
        """Whether t's tariff registers fit what the published telegrams showed (_Spread)."""
        for s in t.tariffs:
            if not 0 <= s.left < len(s.registers) * s.scale:
                return False
            spread = self._spreads.get(s.total)
            if spread is None:
                continue
            if max(spread.high, s.left) - min(spread.low, s.left) > s.scale:
                return False
            if s.registers != spread.registers and not spread.stepped:
                return False
        return True

    def _observe(self, t: Telegram) -> None:
        """Widen each direction's spread by a published telegram (or learn it anew)."""
        if not t.tariffs and not self._spreads:
            return
        for s in t.tariffs:
            spread = self._spreads.get(s.total)
            if spread is None or max(spread.high, s.left) - min(spread.low, s.left) > s.scale:
                # First sight, or the window moved (a tariff switch; or a meter that does
                # not keep its tariffs as the captures suggest): learn it again.
                self._spreads[s.total] = _Spread(s.left, s.left, s.registers)
                continue
            spread.low, spread.high = min(spread.low, s.left), max(spread.high, s.left)
            spread.stepped = spread.stepped or s.registers != spread.registers
            spread.registers = s.registers
        for total in self._spreads.keys() - {s.total for s in t.tariffs}:
            del self._spreads[total]

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
        # Held telegrams that arrived before the newest one published can no longer be
        # confirmed (one that claims a later second than it is damaged), nor can any for
        # a second already published.
        arrived = [i for i, c in enumerate(self._candidates) if c is ref]
        later = self._candidates[arrived[0] + 1 :] if arrived else []
        keep = [c for c in later if c.seconds is not None and c.seconds > now]
        published = sum(1 for c in self._candidates if any(c is x for x in telegrams))
        self.stats.rejected[Reason.UNCONFIRMED] += len(self._candidates) - len(keep) - published
        self._candidates = keep
        self._witnesses = {s: w for s, w in self._witnesses.items() if s > now}
        self._challenger = None
        self._run = 0
        self.stats.accepted += len(telegrams)
        for t in telegrams:
            self._observe(t)
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
            self._spreads.clear()
            return Verdict(
                Outcome.ACCEPTED, publish=self._accept(t), adopted=_describe(old, t, reason)
            )
        self.stats.rejected[reason] += 1
        return Verdict(Outcome.REJECTED, reason=reason)


def _describe(old: Telegram | None, new: Telegram, reason: Reason) -> str:
    if old is None:
        return f"first reference, meter id {'/'.join(new.ids)}"
    if reason is Reason.IDENTITY:
        return f"new meter id {'/'.join(new.ids)} (was {'/'.join(old.ids)})"
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
    for old, new in zip(prev.tariffs, t.tariffs, strict=False):
        # Together the tariff registers grow no faster than their total, to one of their
        # digits (their own truncation): what they leave of it falls by at most that.
        if old.total == new.total and old.scale == new.scale and new.left < old.left - new.scale:
            return Reason.TARIFF
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
    return replace(t, energy={}, tariffs=())


def _complete(w: Telegram, like: Telegram) -> bool:
    """A witness can stand in for a full telegram only with every value the checks use."""
    return (
        w.seconds is not None
        and w.energy.keys() == like.energy.keys()
        and (POWER_TOTAL in w.power) == (POWER_TOTAL in like.power)
        and w.volts.keys() == like.volts.keys()
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
    # Exact, signs included, on every real telegram, among them the two public 2R
    # telegrams with an exporting phase (firmware-notes/unverified.md B9). The one sample
    # with unsigned phases under a negative total was an import telegram whose total its
    # publisher edited, so unsigned phases are not accepted: that is what lost '-' signs
    # look like.
    return total == sum(phases)


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
        if old is not None and abs(v - old) >= UNUSUAL_VOLTAGE_STEP_DV:
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


@dataclass(slots=True)
class _Spread:
    """What the tariff registers of one direction leave of its total, over the published
    telegrams since it was (re)learnt, in units of the total's last digit.

    The meter keeps one accumulator per tariff and shows their sum as the total (both
    captures with tariffs: 0.999 + 1.664 = 2.663 = 1.8.0 2.66313813 truncated; 1.003 +
    7458.781 = 7459.784 = 7459.78471652 truncated). What is left over is the hidden
    remainder of the tariff registers: only the running tariff's remainder moves, so it
    stays inside a window one tariff digit wide. Once a register has stepped (the window's
    low end seen), a wrong last digit of a tariff register lands outside the window unless
    it comes in the one second before the register really steps.
    """

    low: int
    high: int
    registers: tuple[int, ...]  # the tariff registers of the last published telegram
    stepped: bool = False  # a register stepped since the window was (re)learnt
