"""A TCP server on loopback for tests: one thread accepts, one thread serves each connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

from .broker import HOST

IO_TIMEOUT = 5.0


class LoopbackServer:
    """Subclasses implement `_connection(conn)`: called in the accepting thread, it returns
    the function (no arguments) that serves `conn` in a thread of its own."""

    name = "server"

    def __init__(self, listener: socket.socket | None = None) -> None:
        self._listener = listener or socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, name=self.name, daemon=True)

    def _connection(self, conn: socket.socket):  # -> Callable[[], None]
        raise NotImplementedError

    def start(self) -> Self:
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accept_thread.join(IO_TIMEOUT)
        for t in self._threads:
            t.join(IO_TIMEOUT)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._connection(conn), daemon=True)
            self._threads.append(t)
            t.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
