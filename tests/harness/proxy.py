"""A TCP proxy on 127.0.0.1 in front of a broker that breaks the first connections on purpose.

Each accepted connection takes the next planned fault; once the plan is used up the proxy
forwards bytes both ways untouched, like a network that has recovered. The faults are what a
flaky path does to a TLS connection (and what a broker that will not talk to us does):

- `fin`: the ClientHello is read, then the connection closed (FIN) before any answer.
- `rst`: the connection is accepted, then reset (RST) before any byte.
- `cut_fin`, `cut_rst`: the handshake starts (the broker's first bytes are relayed), then the
  connection is closed or reset in the middle of it.
- `tls_fin`, `tls_notify`, `tls_rst`: the proxy itself completes the TLS handshake with the
  broker's certificate (verifying the client's, as the broker does), reads the CONNECT, and
  closes without a CONNACK: a bare TCP close, a TLS close_notify, or a reset.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .broker import HOST
from .tcpserver import IO_TIMEOUT, LoopbackServer

__all__ = ["FAULTS", "CuttingProxy"]

FAULTS = ("fin", "rst", "cut_fin", "cut_rst", "tls_fin", "tls_notify", "tls_rst")


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class CuttingProxy(LoopbackServer):
    name = "proxy"

    def __init__(
        self,
        upstream_port: int,
        plan: Iterable[str] = (),
        *,
        ca: Path | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self._plan: list[str] = []
        self._tls: ssl.SSLContext | None = None
        if certfile is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(certfile), str(keyfile))
            if ca is not None:
                ctx.load_verify_locations(cafile=str(ca))
                ctx.verify_mode = ssl.CERT_REQUIRED
            self._tls = ctx
        self._lock = threading.Lock()
        self.replan(plan)
        self.log: list[tuple[float, str]] = []  # (monotonic time, what happened)
        super().__init__()

    # ------------------------------------------------------------- what happened
    def _note(self, what: str) -> None:
        with self._lock:
            self.log.append((time.monotonic(), what))

    def events(self, what: str) -> list[float]:
        with self._lock:
            return [t for t, w in self.log if w == what]

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._plan)

    def replan(self, plan: Iterable[str]) -> None:
        """Faults for the next connections from now on (empty: forward from now on)."""
        faults = list(plan)
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
        with self._lock:
            self._plan = faults

    # ------------------------------------------------------------- connections
    def _connection(self, client: socket.socket):
        with self._lock:
            fault = self._plan.pop(0) if self._plan else "forward"
        self._note(f"accepted {fault}")
        return lambda: self._serve(client, fault)

    def _serve(self, client: socket.socket, fault: str) -> None:
        try:
            if fault == "fin":
                client.settimeout(IO_TIMEOUT)
                client.recv(65536)  # read first: closing with unread data would send RST
                client.close()
            elif fault == "rst":
                _reset(client)
            elif fault.startswith("cut_"):
                self._cut(client, reset=fault == "cut_rst")
            elif fault.startswith("tls_"):
                self._refuse_after_handshake(client, fault)
            else:
                self._forward(client)
        except OSError as e:
            self._note(f"{fault}: {type(e).__name__}: {e}")
            client.close()
        self._note(f"done {fault}")

    def _cut(self, client: socket.socket, reset: bool) -> None:
        """Relay the ClientHello and the broker's first bytes, then end the connection."""
        with socket.create_connection((HOST, self.upstream_port), IO_TIMEOUT) as upstream:
            client.settimeout(IO_TIMEOUT)
            upstream.settimeout(IO_TIMEOUT)
            hello = client.recv(65536)
            upstream.sendall(hello)
            first = upstream.recv(65536)
            # Half of the broker's first flight: the client is inside the handshake.
            client.sendall(first[: max(1, len(first) // 2)])
            time.sleep(0.05)
        if reset:
            _reset(client)
        else:
            client.close()

    def _refuse_after_handshake(self, client: socket.socket, fault: str) -> None:
        assert self._tls is not None, "tls_* faults need certfile/keyfile"
        client.settimeout(IO_TIMEOUT)
        tls = self._tls.wrap_socket(client, server_side=True)
        self._note(f"handshake {fault}")
        tls.recv(65536)  # the CONNECT: what the broker would answer with CONNACK
        if fault == "tls_notify":
            with contextlib.suppress(OSError):
                tls.unwrap().close()
            return
        raw = socket.socket(fileno=tls.detach())
        if fault == "tls_rst":
            _reset(raw)
        else:
            raw.close()

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection((HOST, self.upstream_port), IO_TIMEOUT)
        pairs = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        for s in pairs:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        return
                    dst = pairs[src]
                    dst.setblocking(True)
                    dst.sendall(data)
                    dst.setblocking(False)
        except OSError:
            return
        finally:
            sel.close()
            for s in pairs:
                s.close()
