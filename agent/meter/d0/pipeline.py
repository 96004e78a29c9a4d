"""Wire bytes of a D0 text meter to publishable telegrams: parity, framing, the BCC, the
grammar, the checks. Pure, and shaped like the eBZ and SML pipelines
(agent/meter/protocols.MeterPipeline), so the reader, `monitor` and the tests drive all
three the same way.

A frame's fate, in order: cut short (a new `/` before its end) -> rejected; a byte that
failed its parity check -> rejected; an STX/ETX frame whose BCC does not verify ->
rejected; the grammar; then D0Checker: a BCC-verified frame is published at once, a
checksum-less telegram when its successor confirms it.
"""

from __future__ import annotations

from collections import Counter

from ..parity import PARITY_ERROR
from ..pipeline import DECODERS, Result
from ..validation import Outcome, Verdict
from .check import BAUD, D0Checker
from .framing import D0Framer
from .grammar import D0Error, D0Parser, Reason


class D0Pipeline:
    protocol = "d0"
    clocked = False  # judges energy growth by arrival gaps: read each frame as it comes

    def __init__(
        self, parity: str = "even", checker: D0Checker | None = None, baud: int = BAUD
    ) -> None:
        self._decode = DECODERS[parity]
        self.framer = D0Framer()
        self.parser = D0Parser()
        self.checker = checker or D0Checker(baud=baud)
        self._rejected: Counter[str] = Counter()

    def wanted(self) -> int:
        return self.framer.wanted()

    @property
    def rejected(self) -> Counter[str]:
        """Rejections so far, by reason (framing, BCC, grammar and the checks)."""
        return self._rejected + Counter({str(k): v for k, v in self.checker.stats.rejected.items()})

    def feed(self, wire: bytes, now: float = 0.0) -> list[Result]:
        """`now`: monotonic time the bytes arrived; a meter without a seconds index is held
        to the energy a connection can draw in the time between its telegrams."""
        results: list[Result] = []
        for frame in self.framer.feed(self._decode(wire)):
            if frame.cut:
                results.append(self._reject(frame.raw, Reason.CUT_SHORT))
            elif PARITY_ERROR in frame.raw:
                results.append(self._reject(frame.raw, Reason.PARITY))
            elif frame.stx and not frame.bcc_ok:
                results.append(self._reject(frame.raw, Reason.BCC))
            else:
                try:
                    telegram = self.parser.parse(frame)
                except D0Error as e:
                    results.append(self._reject(frame.raw, e.reason))
                    continue
                results.append(Result(frame.raw, telegram, self.checker.check(telegram, now)))
        return results

    def _reject(self, raw: bytes, reason: Reason) -> Result:
        self._rejected[reason] += 1
        return Result(raw, None, Verdict(Outcome.REJECTED, reason=reason))  # type: ignore[arg-type]

    def resync(self) -> None:
        """The port was reopened: a partial frame is lost, held telegrams too (their
        successors are gone); the reference stays."""
        self.framer.reset()
        self.checker.reset()
