"""The IR head: open, read with timeouts, reopen. The only module that touches the port.

Reads are sized so the kernel wakes the agent about twice per telegram, not once per USB
packet: with VTIME=0, a tty reports itself readable only once VMIN bytes are waiting, so
asking for "the rest of this telegram" (the framer knows its usual length) gives one
wakeup per 255 bytes. A telegram that turns out shorter is collected by the read timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import termios
import threading
import time
from collections.abc import Iterator

import serial

log = logging.getLogger(__name__)

# What a vanishing USB adapter or a swapped pty raises: pyserial wraps most errors, but
# termios.error is not an OSError and a bare OSError escapes from some calls.
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)

VMIN_MAX = 255  # VMIN is a cc_t (unsigned char)
# At most this much per read: several telegrams, so a reader that fell behind catches up
# in a few reads, while the framer's work per read stays small.
MAX_READ = 8192
CHAR_TIME = 10 / 9600  # seconds per character at 9600 baud, 7E1 (10 bits)


class PortClosed(Exception):
    """The port was closed from another thread (shutdown)."""


class PortLost(Exception):
    """The open device failed or went away (unplugged adapter, swapped pty): reopen it.

    The one exception a read raises for the device, so the reader can tell the port's own
    failures from anything else that goes wrong in its thread (an OSError from an outlet is
    not a lost port). Its __cause__ is pyserial's or the OS's error."""


@contextlib.contextmanager
def _device_errors() -> Iterator[None]:
    try:
        yield
    except PORT_ERRORS as e:
        text = str(e) or type(e).__name__
        raise PortLost(text.splitlines()[0][:160]) from e


class MeterPort:
    """One open serial port. Create a new one to reopen (the path may have changed)."""

    def __init__(self, url: str, baudrate: int) -> None:
        # 8N1 on purpose: a 7E1 meter's parity bit arrives as bit 7 (see parity.py).
        self._serial = serial.serial_for_url(
            url,
            baudrate=baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=0,
            write_timeout=2.0,  # a pull meter's request: a stuck adapter is a lost port
            exclusive=True if url.startswith("/") else None,
            do_not_open=True,
        )
        self._serial.open()
        self._fd: int | None = None
        self._vmin = -1
        self._closed = False
        self._closing = threading.Lock()  # close() in the reader vs cancel() at shutdown
        fileno = getattr(self._serial, "fileno", None)
        if fileno is not None:
            # Not a tty (loop://: io.UnsupportedOperation; socket://: termios.error): read
            # through pyserial instead.
            with contextlib.suppress(OSError, termios.error):
                fd = fileno()
                termios.tcgetattr(fd)  # a tty: we can size reads with VMIN
                self._fd = fd
        self._wake = getattr(self._serial, "pipe_abort_read_r", None)

    def read(self, wanted: int, timeout: float) -> bytes:
        """Bytes that arrived, waiting up to `timeout` for `wanted` of them.

        Returns b"" on timeout with nothing received. Raises PortLost when the device is
        gone and PortClosed after close().
        """
        with _device_errors():
            return self._read(wanted, timeout)

    def _read(self, wanted: int, timeout: float) -> bytes:
        fd = self._fd
        if fd is None:
            return self._read_generic(wanted, timeout)
        self._set_vmin(min(max(1, wanted), VMIN_MAX))
        watch = [fd] if self._wake is None else [fd, self._wake]
        ready, _, _ = select.select(watch, [], [], timeout)
        if self._wake is not None and self._wake in ready:
            raise PortClosed
        # The descriptor is non-blocking (pyserial opens it so): a read takes what is there,
        # however little, whatever VMIN says; VMIN only decides when select() wakes us. So
        # VMIN changes only when the size of the reads does: no termios call per telegram.
        data = self._drain(fd)
        if ready and not data:
            # Readable but empty: the device went away (the same test pyserial makes).
            raise serial.SerialException("device reports readiness to read but returned no data")
        return data

    @staticmethod
    def _drain(fd: int) -> bytes:
        """The bytes waiting (a pty hands out 64 per read()), up to MAX_READ: a line that
        keeps delivering while we read must not make one read grow without bound."""
        chunks = []
        size = 0
        while size < MAX_READ:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if len(chunk) < 64:
                break  # less than a pty's portion: nothing more waiting
        return b"".join(chunks)

    def read_now(self) -> bytes:
        """Whatever has arrived, without waiting. PortLost if the device is gone."""
        with _device_errors():
            if self._fd is None:
                return self._serial.read(self._serial.in_waiting)
            return self._drain(self._fd)

    def sleep(self, seconds: float) -> None:
        """Sleep on a timer, not on the port (see pacing.py); PortClosed if cancelled."""
        if self._wake is None:
            time.sleep(seconds)
            return
        with _device_errors():
            ready, _, _ = select.select([self._wake], [], [], seconds)
        if ready:
            raise PortClosed

    def _read_generic(self, wanted: int, timeout: float) -> bytes:
        """URLs without a file descriptor (socket://, rfc2217://): pyserial's own timeout."""
        if self._serial.timeout != timeout:
            # pyserial reconfigures the port on every assignment: for rfc2217 that is a
            # round of option negotiation with the server, so only when it changes.
            self._serial.timeout = timeout
        first = self._serial.read(1)
        if not first:
            return b""
        return first + self._serial.read(self._serial.in_waiting)

    def _set_vmin(self, vmin: int) -> None:
        if vmin == self._vmin or self._fd is None:
            return
        attrs = termios.tcgetattr(self._fd)
        attrs[6][termios.VMIN] = vmin
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(self._fd, termios.TCSANOW, attrs)
        self._vmin = vmin

    def write(self, data: bytes) -> None:
        """Send bytes to the meter (a pull meter's request and acknowledgement: a few bytes,
        which the UART's buffer takes at once). Raises PortLost when the device is gone."""
        with _device_errors():
            self._serial.write(data)

    def set_baudrate(self, baudrate: int) -> None:
        """Switch the line's rate (mode C: 300 baud for the request, the meter's offer for
        the readout). Raises PortLost when the device is gone."""
        with _device_errors():
            if self._serial.baudrate != baudrate:
                self._serial.baudrate = baudrate

    def cancel(self) -> None:
        """Wake a read() blocked in another thread; it raises PortClosed."""
        cancel_read = getattr(self._serial, "cancel_read", None)  # not every URL has one
        with self._closing:
            if self._closed or cancel_read is None:
                return
            with contextlib.suppress(OSError):  # the reader is ending either way
                cancel_read()

    def close(self) -> None:
        with self._closing:
            self._closed = True
            with contextlib.suppress(*PORT_ERRORS):  # a vanished device may fail to close
                self._serial.close()


def expected_read_time(wanted: int) -> float:
    """How long `wanted` characters take on the wire, with a margin for USB latency."""
    return wanted * CHAR_TIME * 1.1 + 0.05
