"""A pull meter on a pty: answers IEC 62056-21 requests like a mode C meter (meters.md §8.3).

ModeCMeter wraps a PtyMeter (one pty per plug) with a thread that reads what the agent
writes to the head, answers a request `/?!\\r\\n` with an identification (Iskra-like, the
id invented) and a correct acknowledgement `ACK 0 Z 0 CR LF` with a readout
`STX data ! CR LF ETX BCC`, 7E1-encoded and paced at the agreed rate (a pty ignores the
rate; the pacing is ours). Since it cannot hear a wrong rate, it checks the agent's port
speed (the pty slave's termios) where a real meter would be deaf or garbled: a request
must come at 300 Bd, the port must stay at 300 Bd while the ACK is on the wire (0.2 s),
the readout must find it at the agreed rate; otherwise the meter counts `wrong_baud` and
ignores the message / sends the readout as noise.

Knobs for the faults a test needs: not answering, a garbled identification (a parity
error in the baud character), a damaged readout (a digit changed, the BCC left stale),
echoing whatever the agent writes (a half-duplex head hearing itself), the offered baud
character (mode C '0'..'6', mode B 'A'..'F', anything else mode A).

Written independently of agent/meter/modec.py on purpose (its own 7E1, BCC and timing).
"""

from __future__ import annotations

import contextlib
import os
import termios
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from tests.harness.meter import PtyMeter, encode_7e1

__all__ = ["IskraLikeReadout", "ModeCMeter", "bcc"]

ACK = 0x06
MODE_C = {str(i): 300 << i for i in range(7)}  # '0' = 300 ... '6' = 19200
MODE_B = {c: 600 << i for i, c in enumerate("ABCDEF")}
TR_MAX = 1.5  # how long the meter waits for the acknowledgement after its identification
_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
}


def bcc(data: bytes) -> int:
    """XOR of the bytes after STX through ETX."""
    out = 0
    for b in data:
        out ^= b
    return out


class IskraLikeReadout:
    """Data lines in the Iskra MT174 capture's layout (date, time, import, export), the
    import register rising by `wh_per_readout` Wh at each readout."""

    def __init__(self, kwh: float = 502.853, wh_per_readout: int = 1) -> None:
        self._wh = round(kwh * 1000)
        self._step = wh_per_readout
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        self._wh += self._step
        seconds = 10 * 3600 + self.count
        clock = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        return (
            b"1-0:0.9.2*255(0220127)\r\n"
            + f"1-0:0.9.1*255({clock})\r\n".encode()
            + f"1-0:1.8.0*255({self._wh // 1000:07d}.{self._wh % 1000:03d}*kWh)\r\n".encode()
            + b"1-0:2.8.0*255(0098697.318*kWh)\r\n"
        )


class ModeCMeter:
    def __init__(
        self,
        pty: PtyMeter,
        ident: bytes = b"ISk5MT174-0001",
        lines: Callable[[], bytes] | None = None,
        reaction: float = 0.3,
        answer: bool = True,
        garble_ident: bool = False,
        stale_bcc: bool = False,
        echo: bool = False,
        paced: bool = True,
    ) -> None:
        self.pty = pty
        self.ident = ident  # without '/' and CR LF; ident[3:4] is the offered baud character
        self.lines = lines or IskraLikeReadout()
        self.reaction = reaction  # seconds between a message's end and the answer (tr)
        self.answer = answer
        self.garble_ident = garble_ident
        self.stale_bcc = stale_bcc
        self.echo = echo
        self.paced = paced
        self.requests = 0  # requests heard (at 300 Bd)
        self.identifications = 0
        self.acks = 0  # well-formed acknowledgements naming a rate we offer
        self.bad_acks = 0  # malformed, or a rate above the offered one
        self.readouts = 0  # readouts sent at a rate the agent's port was set to
        self.abandoned = 0  # identifications that got no acknowledgement within TR_MAX
        self.wrong_baud = 0  # the agent's port was not at the rate the exchange needed
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread ------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already answering")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="modec-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("mode C meter thread did not stop")
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def agent_baud(self) -> int | None:
        """The rate the agent's port is set to now (None: unplugged or not readable)."""
        name = self.pty.slave_name
        if name is None:
            return None
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            return _SPEEDS.get(termios.tcgetattr(fd)[5])
        except termios.error:
            return None
        finally:
            os.close(fd)

    def _run(self) -> None:
        heard = bytearray()
        awaiting_ack_until = 0.0
        try:
            while not self._stop.is_set():
                wire = self.pty.drain() if self.pty.plugged else b""
                if not wire:
                    if awaiting_ack_until and time.monotonic() > awaiting_ack_until:
                        self.abandoned += 1
                        awaiting_ack_until = 0.0
                    self._stop.wait(0.002)
                    continue
                if self.echo:
                    self._write(wire)
                heard += bytes(b & 0x7F for b in wire)
                while b"\n" in heard:
                    end = heard.index(b"\n") + 1
                    message, heard = bytes(heard[:end]), heard[end:]
                    awaiting_ack_until = self._message(message, awaiting_ack_until)
        except BaseException as e:  # re-raised by stop()
            self.error = e

    def _message(self, message: bytes, awaiting_ack_until: float) -> float:
        """Answer one message; returns until when an acknowledgement is awaited (0: none)."""
        slash = message.rfind(b"/?")
        if slash >= 0 and message.endswith(b"!\r\n"):
            return self._request()
        ack = message.rfind(bytes([ACK]))
        if ack >= 0 and awaiting_ack_until:
            self._acknowledged(message[ack:])
        return 0.0

    def _request(self) -> float:
        if self.agent_baud() != 300:
            self.wrong_baud += 1  # a meter listening at 300 Bd hears noise
            return 0.0
        self.requests += 1
        if not self.answer:
            return 0.0
        self._stop.wait(self.reaction)
        wire = bytearray(encode_7e1(b"/" + self.ident + b"\r\n"))
        if self.garble_ident:
            wire[4] ^= 0x80  # the baud character's parity bit: a parity error
        self._send(bytes(wire), 300)
        self.identifications += 1
        offered = chr(self.ident[3])
        if offered in MODE_C:
            return time.monotonic() + TR_MAX
        # Modes A and B: no acknowledgement; the readout follows (B at its own rate).
        rate = MODE_B.get(offered, 300)
        self._stop.wait(self.reaction)
        self._readout(rate)
        return 0.0

    def _acknowledged(self, ack: bytes) -> None:
        offered = MODE_C[chr(self.ident[3])]
        chosen = MODE_C.get(chr(ack[2])) if len(ack) == 6 else None
        if ack[1:2] != b"0" or ack[3:] != b"0\r\n" or chosen is None or chosen > offered:
            self.bad_acks += 1
            return
        # The ACK arrived at once on the pty; on a wire its 6 characters take 0.2 s at
        # 300 Bd, and a port switched before its last one left garbles it.
        on_wire = 6 * 10 / 300
        self._stop.wait(on_wire - 0.05)
        if self.agent_baud() != 300:
            self.wrong_baud += 1
            return
        self.acks += 1
        # The meter answers its reaction time after the ACK, at the chosen rate.
        self._stop.wait(0.05 + self.reaction)
        self._readout(chosen)

    def _readout(self, rate: int) -> None:
        body = b"\x02" + self.lines() + b"!\r\n\x03"
        check = bcc(body[1:])
        if self.stale_bcc:
            at = body.index(b"*kWh") - 1  # the import register's last digit
            digit = body[at] - ord("0")
            body = body[:at] + str((digit + 1) % 10).encode() + body[at + 1 :]
        wire = encode_7e1(body + bytes([check]))
        if self.agent_baud() != rate:
            self.wrong_baud += 1
            wire = bytes(len(wire))  # what a port at another rate makes of it: nothing useful
        else:
            self.readouts += 1
        self._send(wire, rate)

    def _send(self, wire: bytes, rate: int) -> None:
        if not self.paced:
            self._write(wire)
            return
        chunk = max(1, rate // 960)  # about one write per 10 ms of line time
        for off in range(0, len(wire), chunk):
            if off:  # the previous chunk's time on the line; none after the last one
                time.sleep(chunk * 10 / rate)
            if self._stop.is_set():
                return
            self._write(wire[off : off + chunk])

    def _write(self, wire: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # unplugged meanwhile: the bytes are lost
            self.pty.write(wire, paced=False)
