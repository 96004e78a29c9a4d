"""An in-process paho-mqtt subscriber that records everything a broker delivers to it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt

from .broker import HOST, PlainBroker, TlsBroker

__all__ = ["DEFAULT_TOPICS", "Message", "Observer", "Predicate"]

# '#' never matches topics starting with '$', so AWS rule topics need their literal prefix.
DEFAULT_TOPICS: tuple[str, ...] = ("$aws/rules/#",)

_ids = itertools.count(1)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float  # time.monotonic() at arrival

    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


# A callable on Message, or a topic filter string ('+'/'#' wildcards), or None for "any".
Predicate = Callable[[Message], bool] | str | None


def _as_callable(predicate: Predicate) -> Callable[[Message], bool]:
    if predicate is None:
        return lambda _m: True
    if isinstance(predicate, str):
        sub = predicate
        return lambda m: mqtt.topic_matches_sub(sub, m.topic)
    return predicate


class Observer:
    """Subscribes to `topics` on a TlsBroker (own cert, CN = client id) or a PlainBroker.

    start() returns only after SUBACK, so nothing published afterwards can be missed.
    After broker.restart() call reconnect(): the broker has forgotten the subscription.
    """

    def __init__(
        self,
        broker: TlsBroker | PlainBroker,
        topics: Sequence[str] = DEFAULT_TOPICS,
        *,
        qos: int = 1,
        client_id: str | None = None,
        keepalive: int = 30,
    ) -> None:
        self.broker = broker
        self.topics = tuple(topics)
        self.qos = qos
        # A distinct id per observer, so it never takes over the agent's session.
        self.client_id = client_id or f"observer-{next(_ids)}"
        self.keepalive = keepalive
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._client: mqtt.Client | None = None
        self._subscribed = threading.Event()
        self._sub_error: str | None = None
        self._sub_mid: int | None = None
        self._tls_files: tuple[str, str] | None = None
        self._connected = False
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        if isinstance(broker, TlsBroker):
            crt, key = broker.pki.issue_client(self.client_id)
            self._tls_files = (str(crt), str(key))

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._sub_error = f"CONNACK {rc}"
            self._subscribed.set()
            return
        self._connected = True
        result, mid = client.subscribe([(t, self.qos) for t in self.topics])
        self._sub_mid = mid
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._sub_error = f"subscribe() returned {result}"
            self._subscribed.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected = False  # may fire twice (keepalive + socket error); idempotent

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, mid: int, codes: Any, _p: Any) -> None:
        bad = [str(c) for c in codes if c.is_failure]
        if bad:
            self._sub_error = f"SUBACK refused: {bad} for {self.topics}"
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        m = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic())
        with self._cond:
            self._messages.append(m)
            self._cond.notify_all()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Self:
        if self._client is not None:
            raise RuntimeError("observer already started")
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if self._tls_files is not None:
            assert isinstance(self.broker, TlsBroker)
            c.tls_set(
                ca_certs=str(self.broker.pki.ca),
                certfile=self._tls_files[0],
                keyfile=self._tls_files[1],
            )
        c.connect_timeout = 3.0  # bounds a TLS handshake against a frozen broker
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        self._subscribed.clear()
        self._sub_error = None
        self._connected = False
        # Synchronous connect: a down broker raises ConnectionRefusedError right here.
        c.connect(HOST, self.broker.port, keepalive=self.keepalive)
        self._client = c
        self._halt = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(c, self._halt), name=self.client_id, daemon=True
        )
        self._thread.start()
        if not self._subscribed.wait(timeout) or self._sub_error:
            err = self._sub_error or f"no SUBACK within {timeout} s"
            self.stop()
            raise RuntimeError(f"observer {self.client_id} on {self.broker!r}: {err}")
        return self

    @staticmethod
    def _run(c: mqtt.Client, halt: threading.Event) -> None:
        # Our own loop instead of loop_start(): no auto-reconnect (a test reconnects explicitly,
        # right after the broker is back, so it always beats the agent), and stop() never waits
        # out paho's 1 s reconnect sleep.
        while not halt.is_set():
            if c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                halt.wait(0.05)  # connection gone: idle until stop()/reconnect()

    @property
    def connected(self) -> bool:
        return self._connected

    def stop(self) -> None:
        c, self._client = self._client, None
        if c is None:
            return
        if self._connected:
            c.disconnect()
            deadline = time.monotonic() + 1.0  # let the loop flush DISCONNECT (clean goodbye)
            while self._connected and time.monotonic() < deadline:
                time.sleep(0.005)
        self._halt.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        sock = c.socket()
        if sock is not None:  # goodbye never got out (broker dead or frozen): don't leak the fd
            sock.close()

    def reconnect(self, timeout: float = 10.0, *, clear: bool = False) -> Self:
        """New connection + SUBACK (e.g. after broker.restart()); keeps messages unless clear."""
        self.stop()
        if clear:
            self.clear()
        return self.start(timeout)

    def __enter__(self) -> Self:
        if self._client is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- recorded messages -------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def _matching(self, pred: Callable[[Message], bool], after: float) -> list[Message]:
        return [m for m in self._messages if m.t >= after and pred(m)]

    def wait_count(
        self,
        n: int,
        predicate: Predicate = None,
        timeout: float = 10.0,
        *,
        after: float = float("-inf"),
    ) -> list[Message]:
        """Block until at least n recorded messages (arrived at t >= after) match; return them."""
        pred = _as_callable(predicate)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._matching(pred, after)
                if len(found) >= n:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n".join(f"  {m.topic} {m.payload[:120]!r}" for m in self._messages)
                    raise TimeoutError(
                        f"{self.client_id}: {len(found)}/{n} matching messages after {timeout} s;"
                        f" {len(self._messages)} recorded:\n{seen}"
                    )
                self._cond.wait(remaining)

    def wait_for(
        self,
        predicate: Predicate = None,
        timeout: float = 10.0,
        *,
        after: float = float("-inf"),
    ) -> Message:
        """The first recorded matching message (earlier ones count; use after= or clear())."""
        return self.wait_count(1, predicate, timeout, after=after)[0]

    def __repr__(self) -> str:
        return f"<Observer {self.client_id} {self.topics} on {self.broker!r}>"
