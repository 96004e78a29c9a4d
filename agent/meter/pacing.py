"""When should the reader look at the port? Pure: times are passed in.

Waiting on the port's file descriptor wakes the thread (inside the kernel, even with VMIN)
each time the USB adapter delivers a few bytes: twenty-odd times per telegram, and on a
small CPU every wakeup costs more than parsing does. But a push meter is predictable: it
sends the same number of bytes, at a fixed baud rate, once per period. So the reader
sleeps on a timer until just before a telegram's predicted end and waits on the port only
for its last few bytes: two wakeups per telegram, and the last byte is still seen the
moment it arrives. Whenever a prediction fails, it falls back to waiting on the port.

Fewer still when no outlet would take the next telegram (Tibber takes one every
`obis_interval` seconds): the reader sleeps past it, to just before the end of the first
telegram one would take, and reads both at once. The skipped telegram waits in the
kernel's buffer and is still framed and validated, in order, before the one that follows
it; only meters whose telegrams carry their own clock are read this way (see
MeterPipeline.clocked), since a late read would change nothing their checks rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

NOMINAL_CHAR_TIME = 10 / 9600  # 7E1 at 9600 baud: 10 bits per character
EARLY = 0.015  # wake this long before the predicted end; the rest is read as it arrives
TAIL_BYTES = 16  # fewer than this left: just wait on the port
MIN_PERIOD, MAX_PERIOD = 0.5, 2.5  # what counts as a steady push
# Sleeping past telegrams no outlet takes: the longest nap (well inside the reader's
# SILENT_AFTER, so health does not flap) and the most bytes left in the kernel meanwhile
# (a quarter of n_tty's 4 KiB buffer, so nothing overflows on a slow wakeup).
MAX_SKIP_NAP = 2.5
MAX_SKIPPED_BYTES = 1024


@dataclass(frozen=True)
class Step:
    """What to do next: sleep `nap` seconds and read what came, or wait on the port."""

    nap: float = 0.0


class Pacing:
    def __init__(self, char_time: float = NOMINAL_CHAR_TIME) -> None:
        self.char_time = char_time
        self.period: float | None = None
        self._last_end: float | None = None
        self._next_end: float | None = None  # predicted end of the next telegram
        self._start: tuple[float, int] | None = None  # (time, bytes pending then)
        self._napped = False  # one nap per telegram: its end is then seen arriving
        self._skipping = 0  # telegrams a nap slept past, to be found whole after it
        self._unseen = 0  # of those, found so far since the last end seen arriving
        self.skipped = 0  # telegrams slept past, in all

    @property
    def skipping(self) -> int:
        """Telegrams the current nap sleeps past, not yet found whole."""
        return self._skipping

    def step(self, now: float, pending: int, remaining: int, length: int, due: float = 0.0) -> Step:
        """`pending` bytes of a telegram in hand, `remaining` expected, `length` usual;
        `due`: the earliest time an outlet would take a reading (0: any time)."""
        if self._napped or not length or self.period is None:
            # Only a steady push is predictable (a replay faster than the line, or a
            # meter just plugged in, is read as it comes).
            return Step()
        if pending and remaining > TAIL_BYTES:
            nap = remaining * self.char_time - EARLY
        elif not pending and self._next_end is not None:
            end = self._next_end
            skipping = 0
            # Sleep past telegrams that would end before any outlet takes one.
            while (
                end < due
                and end + self.period - EARLY - now <= MAX_SKIP_NAP
                # waiting at the wake: the skipped telegrams and most of the target
                and (skipping + 2) * length <= MAX_SKIPPED_BYTES
            ):
                end += self.period
                skipping += 1
            nap = end - EARLY - now
            self._next_end = None  # one try; if it missed, wait for the start as usual
            self._skipping = skipping
        else:
            return Step()
        if nap <= 0 or nap > MAX_PERIOD:
            self._skipping = 0
            return Step()
        self._napped = True
        return Step(nap)

    def started(self, now: float, pending: int) -> None:
        """A telegram began in the bytes just read; `pending` of it are in hand."""
        if self._start is None:
            self._start = (now, pending)

    def finished(self, now: float, length: int, *, seen_arriving: bool, frames: int = 1) -> None:
        """The telegram (`frames` of them, in one read) completed at `now`.

        Learn the line's pace and period only from ends seen arriving; an end found
        waiting after a nap says only that the nap was too long: nap less next time,
        unless the nap meant to sleep past it.
        """
        if not seen_arriving and 0 < frames <= self._skipping:
            # Slept past on purpose: the nap's target is still to come.
            self._skipping -= frames
            self._unseen += frames
            return
        start, self._start = self._start, None
        self._napped = False
        self._skipping = 0
        unseen, self._unseen = self._unseen, 0
        if not seen_arriving:
            self.char_time = max(NOMINAL_CHAR_TIME, self.char_time * 0.97)
            self._last_end = self._next_end = None
            self.period = None
            return
        self.skipped += unseen
        if start is not None and length - start[1] >= 64:
            observed = (now - start[0]) / (length - start[1])
            # Nothing arrives faster than the baud rate allows.
            observed = min(max(observed, NOMINAL_CHAR_TIME), NOMINAL_CHAR_TIME * 3)
            self.char_time = 0.7 * self.char_time + 0.3 * observed
        if self._last_end is not None:
            interval = (now - self._last_end) / (1 + unseen)
            if MIN_PERIOD < interval < MAX_PERIOD:
                self.period = (
                    interval if self.period is None else 0.7 * self.period + 0.3 * interval
                )
        self._last_end = now
        self._next_end = now + self.period if self.period is not None else None

    def lost(self) -> None:
        """The stream broke (reopen, garbage): predict nothing until it is steady again."""
        self._start = self._last_end = self._next_end = None
        self.period = None
        self._napped = False
        self._skipping = self._unseen = 0
