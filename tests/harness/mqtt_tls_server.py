"""A TLS server on loopback that speaks just enough MQTT 3.1.1 to answer a CONNECT, and records
what each client offered: the SNI and ALPN protocols of its ClientHello (read off the wire
before the handshake, exactly as sent), the protocol the handshake settled on, the client
certificate's CN, the CONNECT's protocol level, clean-session flag, keepalive and client id,
and every packet after it.

It stands in for AWS IoT where mosquitto cannot show what a test must see: mosquitto
ignores ALPN and logs no SNI. Like AWS IoT it verifies the client certificate against the
test CA and offers ALPN `x-amzn-mqtt-ca`. `require_alpn` makes it end, after the handshake
and without a word, a connection that did not negotiate that protocol; what AWS IoT itself
does then is not documented (inferred), only that it requires the name on port 443.
`answer="silent"` never sends a CONNACK.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .certs import Pki
from .tcpserver import IO_TIMEOUT, LoopbackServer

__all__ = ["AWS_MQTT_ALPN", "ClientHello", "MqttTlsServer", "Session", "parse_client_hello"]

AWS_MQTT_ALPN = "x-amzn-mqtt-ca"
CONNECT, CONNACK, DISCONNECT = 1, 2, 14  # MQTT control packet types


@dataclass(frozen=True)
class ClientHello:
    server_name: str | None  # the SNI host name; None: no server_name extension
    alpn: tuple[str, ...] | None  # the protocols offered; None: no ALPN extension


@dataclass
class Session:
    """One connection, as the server saw it."""

    hello: ClientHello | None = None
    handshake_error: str = ""
    alpn_selected: str | None = None
    client_cn: str | None = None
    protocol_level: int | None = None  # 4 = MQTT 3.1.1
    clean_session: bool | None = None
    keepalive: int | None = None
    client_id: str | None = None
    ended_without_connack: bool = False  # require_alpn refused it
    packets: list[int] = field(default_factory=list)  # packet types after the CONNECT
    done: threading.Event = field(default_factory=threading.Event, repr=False)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The SNI and ALPN of the TLS ClientHello at the start of `data`; None while it is not
    complete. Raises ValueError for bytes that are not a TLS handshake."""
    body, pos = b"", 0
    while pos + 5 <= len(data):
        if data[pos] != 22:  # ContentType handshake
            raise ValueError(f"not a TLS handshake record: {data[:16]!r}")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(data):
            return None
        body += data[pos + 5 : pos + 5 + length]  # a ClientHello may span records
        pos += 5 + length
        if len(body) >= 4 and len(body) >= 4 + int.from_bytes(body[1:4], "big"):
            if body[0] != 1:  # HandshakeType client_hello
                raise ValueError(f"not a ClientHello: handshake type {body[0]}")
            return _hello_extensions(body[4 : 4 + int.from_bytes(body[1:4], "big")])
    return None


def _hello_extensions(h: bytes) -> ClientHello:
    # RFC 8446 4.1.2: version, random, session id, cipher suites, compression, extensions
    i = 2 + 32
    i += 1 + h[i]
    i += 2 + int.from_bytes(h[i : i + 2], "big")
    i += 1 + h[i]
    end = i + 2 + int.from_bytes(h[i : i + 2], "big")
    i += 2
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None
    while i + 4 <= end:
        kind = int.from_bytes(h[i : i + 2], "big")
        size = int.from_bytes(h[i + 2 : i + 4], "big")
        data = h[i + 4 : i + 4 + size]
        i += 4 + size
        if kind == 0:  # server_name (RFC 6066 3): list length, type 0 host_name, length, name
            server_name = data[5 : 5 + int.from_bytes(data[3:5], "big")].decode("ascii")
        elif kind == 16:  # ALPN (RFC 7301 3.1): list length, then length-prefixed names
            names, j = [], 2
            while j < len(data):
                names.append(data[j + 1 : j + 1 + data[j]].decode("ascii"))
                j += 1 + data[j]
            alpn = tuple(names)
    return ClientHello(server_name, alpn)


class MqttTlsServer(LoopbackServer):
    name = "tls-mqtt"

    def __init__(
        self,
        pki: Pki,
        *,
        listener: socket.socket | None = None,
        alpn: Sequence[str] = (AWS_MQTT_ALPN,),
        require_alpn: str | None = None,
        answer: Literal["accept", "silent"] = "accept",
    ) -> None:
        """`listener`: a bound, listening socket to serve (e.g. port 443 in a private
        network namespace); else one on a free port of 127.0.0.1."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.server_crt), str(pki.server_key))
        ctx.load_verify_locations(cafile=str(pki.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED  # like AWS IoT: a client certificate or nothing
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        self._ctx = ctx
        self.require_alpn = require_alpn
        self.answer = answer
        self.sessions: list[Session] = []
        self._lock = threading.Lock()
        super().__init__(listener)

    def wait_for_session(self, timeout: float = IO_TIMEOUT) -> Session:
        """The first session, once it has ended (the client closed, or the server gave up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                first = self.sessions[0] if self.sessions else None
            if first is not None and first.done.wait(max(0.0, deadline - time.monotonic())):
                return first
            time.sleep(0.01)
        raise AssertionError(f"no finished session within {timeout} s: {self.sessions}")

    # ------------------------------------------------------------- connections
    def _connection(self, conn: socket.socket):
        session = Session()
        with self._lock:
            self.sessions.append(session)
        return lambda: self._serve(conn, session)

    def _serve(self, conn: socket.socket, s: Session) -> None:
        try:
            conn.settimeout(IO_TIMEOUT)
            s.hello = self._peek_hello(conn)
            try:
                tls = self._ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                s.handshake_error = f"{type(e).__name__}: {e}"
                return
            with tls:
                s.alpn_selected = tls.selected_alpn_protocol()
                subject = dict(x[0] for x in (tls.getpeercert() or {}).get("subject", ()))
                s.client_cn = subject.get("commonName")
                kind, body = _read_packet(tls)
                if kind == CONNECT:
                    self._read_connect(body, s)
                if self.require_alpn and s.alpn_selected != self.require_alpn:
                    s.ended_without_connack = True
                    return  # the CONNECT read: the close is a FIN, not a reset
                if kind == CONNECT and self.answer == "accept":
                    tls.sendall(bytes([CONNACK << 4, 2, 0, 0]))  # session present 0, accepted
                while True:
                    kind, _ = _read_packet(tls)
                    s.packets.append(kind)
        except (OSError, EOFError, ValueError):
            return  # the client closed, or went silent for IO_TIMEOUT
        finally:
            conn.close()
            s.done.set()

    @staticmethod
    def _peek_hello(conn: socket.socket) -> ClientHello | None:
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            data = conn.recv(65536, socket.MSG_PEEK)
            if not data:
                return None
            hello = parse_client_hello(data)
            if hello is not None:
                return hello
            time.sleep(0.005)
        return None

    @staticmethod
    def _read_connect(body: bytes, s: Session) -> None:
        # MQTT 3.1.1 3.1: protocol name, level, connect flags, keepalive; payload: client id
        name_len = int.from_bytes(body[0:2], "big")
        i = 2 + name_len
        s.protocol_level = body[i]
        s.clean_session = bool(body[i + 1] & 0x02)
        s.keepalive = int.from_bytes(body[i + 2 : i + 4], "big")
        id_len = int.from_bytes(body[i + 4 : i + 6], "big")
        s.client_id = body[i + 6 : i + 6 + id_len].decode("utf-8")


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def _read_packet(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """(packet type, body) of the next MQTT packet."""
    first = _recv_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:  # MQTT 3.1.1 2.2.3: remaining length, 7 bits per byte
        byte = _recv_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, _recv_exact(sock, length) if length else b""
