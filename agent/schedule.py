"""Timing decisions as pure objects: the caller passes the (monotonic) time in.

Nothing here reads a clock or sleeps, so tests drive it with made-up times and the agent
never polls: each owner asks "when is the next thing due?" and sleeps until then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class RateLimit:
    """At most one event per `interval`, judged at the moment each event arrives.

    A meter pushing every 1.0 s and an interval of 2 s must give every second telegram.
    Arrival jitter would make a strict `>= 2.0` skip to every third one (1.998 s < 2 s),
    so an event counts as due a little early: by a tenth of the interval, at most 0.25 s.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._slack = min(0.25, interval / 10)
        self._last: float | None = None

    def due(self, now: float) -> bool:
        return (
            self.interval <= 0
            or self._last is None
            or now - self._last >= self.interval - self._slack
        )

    def next_due(self) -> float:
        """From when the next event counts as due (0.0: already)."""
        if self.interval <= 0 or self._last is None:
            return 0.0
        return self._last + self.interval - self._slack

    def take(self, now: float) -> bool:
        """True (and counted) if an event may go out now."""
        if self.interval <= 0 or self.due(now):
            self._last = now
            return True
        return False


class Every:
    """A fixed cadence that does not drift and does not burst after a stall.

    If the owner was late (a long reconnect), the next time is one interval after *now*,
    not a burst of the missed ones.
    """

    def __init__(self, interval: float, start: float) -> None:
        self.interval = interval
        self.next = start + interval
        self.last = start

    def due(self, now: float) -> bool:
        return now >= self.next

    def done(self, now: float) -> float:
        """Mark it done; return the time since the previous one (the span it covered)."""
        span = now - self.last
        self.last = now
        self.next += self.interval
        if self.next <= now:
            self.next = now + self.interval
        return span


@dataclass
class Backoff:
    """Exponential backoff with full jitter, reset only after a success that lasted.

    `delay()` is the wait before the next attempt. Jitter spreads many agents (and one
    agent's retries) so a broker coming back is not hit in lockstep.
    """

    base: float = 1.0
    cap: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def delay(self) -> float:
        if self.failures == 0:
            return 0.0
        ceiling = min(self.cap, self.base * self.factor ** (self.failures - 1))
        # Half fixed, half random: never hammering, never waiting much longer than needed.
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0
