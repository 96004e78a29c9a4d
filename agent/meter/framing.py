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
    def frames(self) -> int:
        """Telegrams framed so far."""
        return self.stats.telegrams

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
        Each byte is looked at a bounded number of times, however many telegrams one read
        brings (a reader that fell behind may get many at once).
        """
        telegrams: list[bytes] = []
        buf = self._buf
        pos = 0
        n = len(data)
        while pos < n:
            if not buf:
                start = data.find(b"/", pos)
                if start < 0:
                    self.stats.dropped_bytes += n - pos
                    break
                self.stats.dropped_bytes += start - pos
                buf.append(START)
                pos = start + 1
                continue
            # Inside a telegram: find its end (the mark may straddle this read and the
            # last) and a premature restart.
            end = self._straddling_end(data, pos)
            end_at = pos if end >= 0 else data.find(END, pos)
            if end < 0 and end_at >= 0:
                end = end_at + len(END)
            restart = data.find(b"/", pos)
            if restart >= 0 and (end < 0 or restart < end_at):
                # `/` never occurs inside eBZ data: the telegram so far lost its end. It is
                # passed on all the same (it fails parsing): its intact lines can still
                # vouch for a neighbour (telegram.salvage).
                self.stats.restarted += 1
                buf += data[pos:restart]
                telegrams.append(bytes(buf))
                buf.clear()
                pos = restart
                continue
            if end >= 0:
                buf += data[pos:end]
                pos = end
                telegram = bytes(buf)
                buf.clear()
                if len(telegram) <= self._max:
                    telegrams.append(telegram)
                    self.stats.telegrams += 1
                    self.last_length = len(telegram)
                else:
                    self.stats.oversized += 1
                    self.stats.dropped_bytes += len(telegram)
                continue
            buf += data[pos:]
            pos = n
            if len(buf) > self._max:
                self.stats.oversized += 1
                self.stats.dropped_bytes += len(buf)
                buf.clear()
        return telegrams

    def _straddling_end(self, data: bytes, pos: int) -> int:
        """Where in `data` an end mark begun in the last read ends, or -1."""
        buf = self._buf
        if buf.endswith(b"!\r") and data.startswith(b"\n", pos):
            return pos + 1
        if buf.endswith(b"!") and data.startswith(b"\r\n", pos):
            return pos + 2
        return -1
