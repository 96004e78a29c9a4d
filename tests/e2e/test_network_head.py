"""A network IR head (a Wi-Fi head's TCP serial bridge, ser2net in raw mode): port =
socket://host:port, its bytes through the same pipeline as a USB head's, reconnected like a
USB head when the connection drops or the head is away for a while."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable

from agent.meter.simulator import SimulatedEbz
from tests.harness.agent import TOPIC_OBIS
from tests.harness.broker import HOST
from tests.harness.tcpserver import LoopbackServer


class TcpHead(LoopbackServer):
    """Sends `next_bytes()` to every connected client once per `period` seconds."""

    name = "tcp-head"

    def __init__(self, next_bytes: Callable[[], bytes], period: float = 1.0, port: int = 0):
        super().__init__(socket.create_server((HOST, port)))
        self._next = next_bytes
        self._period = period
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._pusher = threading.Thread(target=self._push, daemon=True)

    def start(self) -> TcpHead:
        super().start()
        self._pusher.start()
        return self

    def _connection(self, conn: socket.socket):
        with self._lock:
            self._clients.append(conn)
            self.accepted += 1
        return lambda: None

    def _push(self) -> None:
        while not self._stop.wait(self._period):
            data = self._next()
            with self._lock:
                for conn in list(self._clients):
                    try:
                        conn.sendall(data)
                    except OSError:
                        self._clients.remove(conn)

    def drop_clients(self) -> None:
        """The head's Wi-Fi blips: every connection is closed (the agent sees EOF)."""
        with self._lock:
            for conn in self._clients:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._clients.clear()

    def stop(self) -> None:
        self.drop_clients()
        super().stop()
        self._pusher.join(5)


def test_a_network_head_delivering_7bit_text_is_read_and_reconnected(
    agent_config, start_agent, observer
):
    """A head that strips the parity bit sends the eBZ's text as 7-bit bytes over TCP:
    protocol auto finds it ("7 bit"), Tibber gets each telegram (blank line removed). The
    head drops the connection: the agent reconnects and readings flow again within 10 s.
    The head is away for 3 s (connection refused), then back on the same port: again."""
    meter = SimulatedEbz(rng=random.Random(4))
    sent: dict[bytes, bytes] = {}

    def next_text() -> bytes:
        text = meter.next_telegram()
        sent[text.replace(b"\r\n\r\n", b"\r\n", 1)] = text
        return text

    head = TcpHead(next_text).start()
    try:
        agent_config.meter["port"] = f"socket://{HOST}:{head.port}"
        agent_config.tibber["obis_interval"] = "0"
        agent = start_agent()
        got = observer.wait_count(3, TOPIC_OBIS, timeout=15)
        agent.wait_for_log("meter: found OBIS text /EBZ5DD3BZ06ETA_107 (7 bit)")
        assert all(m.payload in sent for m in got)

        head.drop_clients()
        t0 = time.monotonic()
        back = observer.wait_count(2, TOPIC_OBIS, timeout=10, after=t0 + 0.5)
        assert head.accepted >= 2 and all(m.payload in sent for m in back)

        port = head.port
        head.stop()
        time.sleep(3)
        head = TcpHead(next_text, port=port).start()
        t1 = time.monotonic()
        again = observer.wait_count(2, TOPIC_OBIS, timeout=15, after=t1)
        assert all(m.payload in sent for m in again)
        assert again[0].t - t1 < 12, again[0].t - t1
    finally:
        head.stop()
