"""The IR read head as a pty behind a stable symlink, like udev's /dev/serial/by-id link."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["BYTE_TIME_S", "PtyMeter", "encode_7e1"]

# 9600 baud, 7E1: start + 7 data + parity + stop = 10 bits per character.
BYTE_TIME_S = 10 / 9600
CHUNK = 16


def encode_7e1(text: bytes) -> bytes:
    """What an 8N1 reader sees from a 7E1 sender: bit 7 carries the even-parity bit.

    Written independently of the agent's decoder on purpose.
    """
    out = bytearray(len(text))
    for i, ch in enumerate(text):
        if ch > 0x7F:
            raise ValueError(f"byte {ch:#04x} at offset {i} is not 7-bit")
        parity = 0
        for bit in range(7):
            parity ^= (ch >> bit) & 1
        out[i] = ch | (parity << 7)  # odd number of ones -> set bit 7 to make it even
    return bytes(out)


class PtyMeter:
    """A fresh pty per plug(); the agent opens `link`, the test drives the master side.

    A pty cannot be reopened with CS7/PARENB (EINVAL from Debian's glibc), hence one per plug.
    """

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        self._lock = threading.Lock()  # guards _master against close-while-writing
        self._master: int | None = None
        self._slave_name: str | None = None
        self._generation = 0  # bumps on every unplug, so a paced write never spills into a new pty
        self.dropped = 0  # bytes the pty refused (buffer full: nobody reading, like a real line)
        self.pushed = 0  # telegrams fully written by the pusher
        self.skipped = 0  # pusher ticks that sent nothing (None from source, or unplugged)
        self.push_error: BaseException | None = None
        self._push_thread: threading.Thread | None = None
        self._push_stop = threading.Event()

    # -- plug / unplug -----------------------------------------------------------------------
    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_name(self) -> str | None:
        return self._slave_name

    def plug(self) -> str:
        """Put a fresh raw pty behind the link (atomically); returns /dev/pts/N."""
        if self.plugged:
            raise RuntimeError("already plugged; unplug() first")
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line buffering, no CR/LF translation
            name = os.ttyname(slave)
        finally:
            os.close(slave)
        # Non-blocking so a full buffer (agent not reading) drops bytes instead of hanging us.
        os.set_blocking(master, False)
        tmp = self.link.with_name(self.link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)
        os.replace(tmp, self.link)  # the link never dangles half-made
        with self._lock:
            self._master, self._slave_name = master, name
        return name

    def unplug(self) -> None:
        """Remove the link and close the master: a blocked read in the agent fails at once."""
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        with self._lock:
            master, self._master, self._slave_name = self._master, None, None
            self._generation += 1
            if master is not None:
                os.close(master)

    def replug(self) -> str:
        self.unplug()
        return self.plug()

    def wait_opened(self, timeout: float = 5.0) -> bool:
        """True once someone holds the slave open (the master reports POLLHUP until then)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                master = self._master
                if master is not None:
                    p = select.poll()
                    p.register(master, select.POLLIN)
                    if not any(ev & select.POLLHUP for _, ev in p.poll(0)):
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # -- data --------------------------------------------------------------------------------
    def write(self, data: bytes, paced: bool = True) -> int:
        """Write raw wire bytes; paced = real 9600 baud timing. Returns bytes accepted.

        Stops early (short count) if unplugged meanwhile; never writes into a later pty.
        """
        with self._lock:
            if self._master is None:
                raise RuntimeError("meter unplugged")
            gen = self._generation
        written = 0
        step = CHUNK if paced else max(len(data), 1)
        for off in range(0, len(data), step):
            chunk = data[off : off + step]
            with self._lock:
                if self._master is None or self._generation != gen:
                    return written
                try:
                    n = os.write(self._master, chunk)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    n = 0
                self.dropped += len(chunk) - n
                written += n
            if paced:
                time.sleep(len(chunk) * BYTE_TIME_S)
        return written

    def write_all(self, data: bytes, timeout: float = 30.0) -> None:
        """Write everything as fast as the reader takes it: wait for room, never drop.

        The pty holds only a few KB; poll(POLLOUT) on the master says when the reader has
        made room. Raises TimeoutError if the reader takes nothing for `timeout` seconds.
        """
        with self._lock:
            master = self._master
            if master is None:
                raise RuntimeError("meter unplugged")
        room = select.poll()
        room.register(master, select.POLLOUT)
        view = memoryview(data)
        while view:
            with self._lock:
                if self._master != master:
                    raise RuntimeError("meter unplugged during write_all")
                try:
                    n = os.write(master, view[:4096])
                except BlockingIOError:
                    n = 0
            view = view[n:]
            if view and not n and not room.poll(timeout * 1000):
                raise TimeoutError(f"the reader took nothing for {timeout} s")

    def send_telegram(self, text: bytes, paced: bool = True) -> int:
        """Send 7-bit telegram text as a 7E1 meter puts it on the wire (parity in bit 7)."""
        return self.write(encode_7e1(text), paced=paced)

    def drain(self) -> bytes:
        """Whatever the agent wrote to the head (normally nothing: the TX line is unused)."""
        out = bytearray()
        with self._lock:
            if self._master is None:
                return b""
            while True:
                try:
                    chunk = os.read(self._master, 4096)
                except (BlockingIOError, OSError):  # EAGAIN: empty; EIO: slave closed
                    break
                if not chunk:
                    break
                out += chunk
        return bytes(out)

    # -- background pusher: one telegram per period, like the meter's 1 s push ----------------
    def start_pushing(
        self,
        source: Callable[[], bytes | None],
        period: float = 1.0,
        paced: bool = True,
    ) -> None:
        """source() returns wire bytes (already 7E1-encoded) or None to skip this tick.

        source() is called on every tick even while unplugged (the meter keeps counting);
        its bytes are then discarded. An exception in source() stops the pusher and is
        re-raised by stop_pushing().
        """
        if self._push_thread is not None:
            raise RuntimeError("already pushing")
        self._push_stop.clear()
        self.push_error = None
        self._push_thread = threading.Thread(
            target=self._push_loop, args=(source, period, paced), name="pty-meter", daemon=True
        )
        self._push_thread.start()

    def _push_loop(self, source: Callable[[], bytes | None], period: float, paced: bool) -> None:
        next_t = time.monotonic()
        while not self._push_stop.is_set():
            try:
                data = source()
            except BaseException as e:
                self.push_error = e
                return
            if data is None or not self.plugged:
                self.skipped += 1
            else:
                try:
                    if self.write(data, paced=paced) == len(data):
                        self.pushed += 1
                except RuntimeError:  # unplugged between the check and the write
                    self.skipped += 1
            # Fixed monotonic schedule; after a stall skip missed ticks instead of bursting.
            next_t += period
            now = time.monotonic()
            if next_t < now:
                next_t = now + period - ((now - next_t) % period)
            self._push_stop.wait(next_t - now)

    def stop_pushing(self, timeout: float = 5.0) -> None:
        thread, self._push_thread = self._push_thread, None
        if thread is None:
            return
        self._push_stop.set()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("pty meter pusher did not stop")
        if self.push_error is not None:
            err, self.push_error = self.push_error, None
            raise err

    # -- context manager ---------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.stop_pushing()
        finally:
            self.unplug()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PtyMeter {self.link} -> {self._slave_name}>"
