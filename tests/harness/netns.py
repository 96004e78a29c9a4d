"""A private network namespace: a loopback of its own (up, or left down), and no other
interface. Any port is free in it, 443 included, whatever the machine runs; nothing outside
reaches it, and nothing in it reaches out.

A `sleep` started by `unshare --net` holds the namespace. The test's sockets are created in
it by a short-lived thread that enters it with setns(2) (a network namespace is per thread;
a bound socket stays in the namespace it was created in), and processes run in it through
`nsenter --net`. Needs root (CAP_SYS_ADMIN), as CI has; `Unavailable` says why otherwise.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

__all__ = ["PrivateNetwork", "Unavailable"]

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
T = TypeVar("T")


class Unavailable(RuntimeError):
    """This machine cannot make a network namespace (not root, no unshare/nsenter...)."""


class PrivateNetwork:
    def __init__(self, *, loopback_up: bool = True) -> None:
        self.loopback_up = loopback_up
        self._holder: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        assert self._holder is not None
        return f"/proc/{self._holder.pid}/ns/net"

    def __enter__(self) -> Self:
        if os.geteuid() != 0:
            raise Unavailable("a network namespace needs root here")
        for tool in ("unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} (util-linux) is not installed")
        self._holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "3600"],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5.0
        while True:
            if self._holder.poll() is not None:
                err = (
                    self._holder.stderr.read().decode(errors="replace")
                    if self._holder.stderr
                    else ""
                )
                raise Unavailable(f"unshare --net failed: {err.strip()}")
            try:
                if os.readlink(self.path) != own:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise Unavailable("unshare --net did not make a namespace within 5 s")
            time.sleep(0.01)
        if self.loopback_up:
            self.inside(_loopback_up)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait(5)
            self._holder = None

    def inside(self, work: Callable[[], T]) -> T:
        """Run `work` in a thread that has entered the namespace; its result or exception."""
        result: list[T] = []
        failure: list[BaseException] = []

        def enter_and_work() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                result.append(work())
            except BaseException as e:  # handed to the caller's thread
                failure.append(e)

        t = threading.Thread(target=enter_and_work, name="netns")
        t.start()
        t.join(10)
        if failure:
            raise failure[0]
        if not result:
            raise TimeoutError("work in the network namespace did not finish within 10 s")
        return result[0]

    def listen(self, port: int, host: str = "127.0.0.1") -> socket.socket:
        """A listening socket on host:port inside the namespace."""
        return self.inside(lambda: socket.create_server((host, port)))

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
