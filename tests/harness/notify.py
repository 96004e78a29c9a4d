"""A stand-in for systemd's notify socket: records sd_notify datagrams with the sender's pid."""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from agent.state import LinkState, MeterHealth, Pattern, led_pattern

__all__ = ["Notification", "NotifySocket", "led_of", "status_of", "statuses", "wait_status"]

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    t: float  # time.monotonic() at arrival
    pid: int  # sender pid from SCM_CREDENTIALS (kernel-checked, like NotifyAccess=main)
    fields: dict[str, str]
    raw: str


class NotifySocket:
    """Abstract-namespace AF_UNIX datagram socket (no 107-byte path limit, nothing to clean up)."""

    def __init__(self, prefix: str = "agent-test") -> None:
        self.address = f"@{prefix}-{os.getpid()}-{time.monotonic_ns()}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.settimeout(0.1)  # lets the receiver notice close() promptly
        self._cond = threading.Condition()
        self._items: list[Notification] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._recv_loop, name="notify-socket", daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        """Env additions for the agent. WATCHDOG_PID is left unset: systemd sets it to the main
        pid, which the test does not know before spawning, and unset means "this process"."""
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _recv_loop(self) -> None:
        while not self._closed.is_set():
            try:
                data, anc, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
            except TimeoutError:
                continue
            except OSError:
                return  # socket closed
            pid = -1
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDS.unpack(cdata[: _CREDS.size])[0]
            raw = data.decode("utf-8", errors="replace")
            fields: dict[str, str] = {}
            for line in raw.split("\n"):
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value
            with self._cond:
                self._items.append(Notification(time.monotonic(), pid, fields, raw))
                self._cond.notify_all()

    def all(self) -> list[Notification]:
        with self._cond:
            return list(self._items)

    def wait_count(
        self, n: int, key: str, value: str | None = None, timeout: float = 10.0
    ) -> list[Notification]:
        """Block until n datagrams carry key (with value, if given); return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    x
                    for x in self._items
                    if key in x.fields and (value is None or x.fields[key] == value)
                ]
                if len(found) >= n:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n".join(f"  pid {x.pid}: {x.raw!r}" for x in self._items)
                    want = f"{key}={value}" if value is not None else key
                    raise TimeoutError(
                        f"{len(found)}/{n} notifications with {want} after {timeout} s;"
                        f" received:\n{seen}"
                    )
                self._cond.wait(remaining)

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> Notification:
        return self.wait_count(1, key, value, timeout)[0]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------- STATUS lines
def status_of(n: Notification) -> str:
    return n.fields.get("STATUS", "")


def statuses(sock: NotifySocket, after: float = float("-inf")) -> list[Notification]:
    return [n for n in sock.all() if "STATUS" in n.fields and n.t >= after]


def wait_status(
    sock: NotifySocket,
    needle: str | Callable[[str], bool],
    timeout: float,
    after: float = float("-inf"),
) -> Notification:
    """The first STATUS (arrived at t >= after) that contains needle (or satisfies it)."""
    match = needle if callable(needle) else (lambda s: needle in s)
    deadline = time.monotonic() + timeout
    while True:
        for n in statuses(sock, after):
            if match(status_of(n)):
                return n
        if time.monotonic() >= deadline:
            seen = "\n".join(f"  {n.t:.2f} {status_of(n)}" for n in statuses(sock))
            raise AssertionError(f"no STATUS with {needle!r} within {timeout} s; got:\n{seen}")
        time.sleep(0.02)


def led_of(status: str) -> Pattern:
    """The LED pattern the agent shows with this STATUS (same state, agent.state.led_pattern)."""
    meter = re.match(r"meter (ok|no data|port missing|garbled|starting)", status)
    tibber = re.search(r"; Tibber (\w+)", status)
    assert meter and tibber, status
    return led_pattern(MeterHealth(meter[1]), LinkState(tibber[1]))
