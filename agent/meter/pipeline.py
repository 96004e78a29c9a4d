"""Wire bytes to publishable telegrams: parity, framing, parsing, validation. Pure.

The one object the port adapter feeds, and the one place that says what happened to each
telegram, so the same path serves `run`, `monitor`, `demo` and the tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .framing import Framer
from .parity import decode_7bit, decode_7e1
from .reading import Reading
from .telegram import Reason, TelegramError, TelegramParser, salvage
from .validation import Outcome, Validator, Verdict


@dataclass(frozen=True, slots=True)
class Result:
    """One framed telegram's fate."""

    raw: bytes
    telegram: Reading | None  # None if it did not even parse
    verdict: Verdict


# [meter] parity -> how a byte off the wire becomes a 7-bit character (or PARITY_ERROR).
DECODERS: dict[str, Callable[[bytes], bytes]] = {"even": decode_7e1, "none": decode_7bit}


class Pipeline:
    """The eBZ's OBIS text: 7E1 bytes, no checksum, validated by its values' redundancy."""

    protocol = "ebz"
    # Judges nothing by arrival time (the telegram's seconds index is its clock), so reading
    # a telegram late, together with the next, changes nothing (pacing.py).
    clocked = True

    def __init__(self, validator: Validator | None = None, parity: str = "even") -> None:
        self._decode = DECODERS[parity]
        self.framer = Framer()
        self.parser = TelegramParser()
        self.validator = validator or Validator()

    def wanted(self) -> int:
        return self.framer.wanted()

    @property
    def rejected(self) -> Counter[str]:
        """Rejections so far, by reason."""
        return self.validator.stats.rejected  # type: ignore[return-value]  # Reason is a str

    def feed(self, wire: bytes, now: float = 0.0) -> list[Result]:
        """`now` (monotonic, when the bytes arrived) is for meters without a seconds index;
        the eBZ's own index is its clock."""
        results: list[Result] = []
        for raw in self.framer.feed(self._decode(wire)):
            try:
                telegram = self.parser.parse(raw)
            except TelegramError as e:
                like = self.validator.template
                witness = salvage(raw, like) if like is not None else None
                results.append(Result(raw, None, self.validator.reject(e.reason, witness)))
                continue
            results.append(Result(raw, telegram, self.validator.check(telegram)))
        return results

    def resync(self) -> None:
        """The port was closed and reopened: a partial telegram is lost, confirm anew."""
        self.framer.reset()
        self.validator.reset()


class RejectionLog:
    """Rejections counted per reason, reported at most once per `every` seconds.

    A misaligned head can garble every telegram; one log line per telegram would fill the
    journal. The first rejection after a quiet spell is reported at once, the rest summed up.
    """

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._pending: Counter[Reason] = Counter()
        self._last_report: float | None = None

    def add(self, reason: Reason, now: float) -> str | None:
        self._pending[reason] += 1
        if self._last_report is None or now - self._last_report >= self.every:
            return self.flush(now)
        return None

    def tick(self, now: float) -> str | None:
        """A summary of what is pending, if one is due (so it is not held back forever)."""
        if self._pending and (self._last_report is None or now - self._last_report >= self.every):
            return self.flush(now)
        return None

    def flush(self, now: float) -> str | None:
        if not self._pending:
            return None
        total = sum(self._pending.values())
        parts = ", ".join(f"{n} {reason}" for reason, n in self._pending.most_common())
        self._pending.clear()
        self._last_report = now
        noun = "telegram" if total == 1 else "telegrams"
        return f"rejected {total} {noun}: {parts}"


__all__ = ["Outcome", "Pipeline", "RejectionLog", "Result"]
