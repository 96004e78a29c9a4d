"""Bytes in, raw telegrams out.

A D0 push telegram starts with `/` and ends with `!\\r\\n`; the eBZ sends no checksum, so
framing only finds the boundaries and leaves every judgement to validation. The framer is
incremental (it never waits for more than one read) and bounded (endless noise cannot grow
memory).
"""

from __future__ import annotations

from dataclasses import dataclass

START = ord("/")
END = b"!\r\n"

# The eBZ telegram is 329-466 bytes; anything past this is noise or a lost end marker.
MAX_TELEGRAM = 2048


@dataclass
class FramingStats:
    """What the framer threw away, for STATUS and the rate-limited log."""

    telegrams: int = 0
    dropped_bytes: int = 0  # bytes outside any telegram (noise, a partial first telegram)
    restarted: int = 0  # a `/` before the end: the telegram so far was incomplete
    oversized: int = 0  # no end within MAX_TELEGRAM bytes


class Framer:
    """Cuts a byte stream (already parity-decoded) into raw telegrams."""

    def __init__(self, max_telegram: int = MAX_TELEGRAM) -> None:
        self._max = max_telegram
        self._buf = bytearray()  # empty, or starts with `/`
        self.stats = FramingStats()
        self.last_length = 0  # length of the last framed telegram, to size the next read

    @property
    def pending(self) -> int:
        """Bytes of the telegram in progress (0 between telegrams)."""
        return len(self._buf)

    def wanted(self) -> int:
        """How many more bytes would complete the telegram in progress, judging by the last one.

        The port adapter asks the kernel to wake it only once that many bytes are there,
        so a telegram costs two or three wakeups instead of one per USB packet.
        """
        if self.last_length and self.pending < self.last_length:
            return self.last_length - self.pending
        return 1

    def reset(self) -> None:
        """Forget a partial telegram (the port was closed; its tail will never come)."""
        self.stats.dropped_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the telegrams they completed, oldest first.

        A telegram cut short by the next `/` is returned too, without its end mark.
        """
        telegrams: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            if not self._buf:
                start = data.find(b"/", pos)
                if start < 0:
                    self.stats.dropped_bytes += n - pos
                    break
                self.stats.dropped_bytes += start - pos
                self._buf.append(START)
                pos = start + 1
                continue
            # Inside a telegram: look for its end and for a premature restart.
            # The end marker may straddle two reads, so search from 2 bytes back.
            search_from = max(0, len(self._buf) - 2)
            self._buf += data[pos:]
            pos = n
            end = self._buf.find(END, search_from)
            restart = self._buf.find(b"/", max(1, search_from))
            if restart >= 0 and (end < 0 or restart < end):
                # `/` never occurs inside eBZ data: the telegram so far lost its end. It is
                # passed on all the same (it fails parsing): its intact lines can still
                # vouch for a neighbour (telegram.salvage).
                self.stats.restarted += 1
                rest = bytes(self._buf[restart:])
                telegrams.append(bytes(self._buf[:restart]))
                self._buf.clear()
                pos -= len(rest)
                continue
            if end >= 0:
                stop = end + len(END)
                telegram = bytes(self._buf[:stop])
                rest_len = len(self._buf) - stop
                self._buf.clear()
                pos -= rest_len
                if len(telegram) <= self._max:
                    telegrams.append(telegram)
                    self.stats.telegrams += 1
                    self.last_length = len(telegram)
                else:
                    self.stats.oversized += 1
                    self.stats.dropped_bytes += len(telegram)
                continue
            if len(self._buf) > self._max:
                self.stats.oversized += 1
                self.stats.dropped_bytes += len(self._buf)
                self._buf.clear()
        return telegrams
