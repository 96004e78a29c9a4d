"""One MQTT connection with its own network thread: connect, keep alive, reconnect forever.

Shared by the Tibber uplink and the local mirror. Every connection attempt builds a fresh
paho client, so nothing queued for a dead connection can be replayed on the next one (a
stale reading booked at the wrong time is worse than a lost one: the meter's counters make
a gap lossless) and the TLS files are read anew (a user who fixes a certificate does not
have to restart the agent).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .schedule import Backoff
from .state import LinkState, Problem

if TYPE_CHECKING:
    import ssl

    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


def _queue_only(client: object, userdata: object, sock: object) -> None:
    """paho's on_socket_register_write: nothing to do, its presence is what counts."""


def paho():
    """paho-mqtt, imported on first use in a network thread: it pulls in ssl, http.client
    and email (tens of milliseconds on a Pi), which need not delay READY=1."""
    import paho.mqtt.client

    return paho.mqtt.client


# A session the broker ends this soon after CONNACK, followed by an instant successful
# reconnect, counts towards a kick loop; this many in a row raise the alarm.
SHORT_SESSION = 30.0
STABLE_SESSION = 60.0
KICKS_BEFORE_ALARM = 3
KICKED_BACKOFF_STEP = 6  # Backoff failures: 32 s ceiling with the default base
NETWORK_RETRY_CAP = 8.0
# A message not written or acknowledged for this long, or this many at once, means the
# link is stalled (a frozen broker still accepts TCP data): publish no more into it.
STALL = 3.0
MAX_PENDING = 64
# The network thread comes back at least this often, which is how the supervisor knows it
# is alive (paho's select() would otherwise sleep until the next keepalive ping).
MAX_LOOP_WAIT = 5.0


class MqttLink:
    """Owns a thread that runs paho's network loop and reconnects with backoff."""

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        keepalive: int,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.port, self.client_id, self.keepalive = host, port, client_id, keepalive
        self._on_change = on_change
        self._backoff = backoff or Backoff(base=1.0, cap=60.0)
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._connected = False
        self._last_in = 0.0
        self._closing = False
        # mid -> when published: until written (QoS 0) or acknowledged (QoS 1).
        self._pending: dict[int, float] = {}
        self._pending_lock = threading.Lock()
        self.state = LinkState.CONNECTING
        self.problem: Problem | None = None
        self.heartbeat = clock()  # last time the network thread came back from a wait
        self.connects = 0
        self.connected_since: float | None = None
        # Kick-loop detection: sessions that the broker ended soon after CONNACK while an
        # immediate reconnect succeeded at once (so the broker was fine: someone else
        # logged in with our client id, and the broker dropped the older connection).
        self._short_session_ended = False
        self._failed_since_loss = 0
        self._kick_streak = 0

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Disconnect cleanly (DISCONNECT sent) and end the thread."""
        self._stop.set()
        self._closing = True
        client = self._client
        if client is not None:
            # Written from this thread (paho allows it); closing the socket also wakes the
            # network thread from its select().
            with contextlib.suppress(Exception):
                client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_state(LinkState.STOPPED, None)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        return self._connected

    # ------------------------------------------------------------- hooks for subclasses
    def tls_context(self) -> ssl.SSLContext | None:
        return None

    def configure(self, client: mqtt.Client) -> None:
        """Credentials and the like, before connecting."""

    def on_session(self, client: mqtt.Client) -> None:
        """Called in the network thread right after CONNACK, before anyone else publishes."""

    def on_tick(self, now: float) -> float:
        """Periodic work in the network thread; returns seconds until it wants to run again."""
        return 3600.0

    def kicked_text(self) -> str:
        return f"another client keeps taking over the client id {self.client_id}"

    def classify(self, error: BaseException | str) -> Problem:
        return Problem(LinkState.CONNECTING, f"{self.host}:{self.port} unreachable ({error})")

    # ------------------------------------------------------------- publishing (any thread)
    def publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Publish now or drop: never queued for a later connection, never behind a stalled
        one (it would only deliver stale data later, and grow memory). True if queued."""
        now = self._clock()
        with self._pending_lock:
            client = self._client
            if client is None or not self._connected or self._stalled(now):
                return False
            info = client.publish(topic, payload, qos=qos, retain=False)
            if info.rc != paho().MQTT_ERR_SUCCESS:
                return False
            self._pending[info.mid] = now
            return True

    def _stalled(self, now: float) -> bool:
        """Messages not written (QoS 0) or not acknowledged (QoS 1) for STALL seconds, or
        too many of them: the link is not moving."""
        pending = self._pending
        return len(pending) >= MAX_PENDING or (
            bool(pending) and now - min(pending.values()) > STALL
        )

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho calls this when a QoS 0 message is written, a QoS 1 message acknowledged.
        with self._pending_lock:
            self._pending.pop(mid, None)

    # ------------------------------------------------------------- the network thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = self._clock()
            if self._client is None:
                delay = self._backoff.delay()
                if self.state is LinkState.CONNECTING:
                    # Network trouble: keep trying often enough to be back within seconds
                    # of the broker (60 s caps only rejections and kick loops).
                    delay = min(delay, NETWORK_RETRY_CAP)
                if delay > 0 and self._stop.wait(delay):
                    break
                self._attempt()
                continue
            now = self._clock()
            wait = min(self.on_tick(now) if self._connected else 1.0, self._keepalive_check(now))
            client = self._client  # None if the keepalive check just gave up on it
            if client is None:
                continue
            rc = client.loop(timeout=max(0.01, min(wait, MAX_LOOP_WAIT)))
            if rc != paho().MQTT_ERR_SUCCESS and self._client is not None:
                self._lost(None)
        self._shutdown()

    def _attempt(self) -> None:
        self.heartbeat = self._clock()
        try:
            client = self._new_client()
            client.connect(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            self._failed_attempt(self.classify(e))
            return
        except Exception as e:
            log.error("%s: cannot connect: %s: %s", self.name, type(e).__name__, e)
            self._failed_attempt(Problem(LinkState.REJECTED, f"{type(e).__name__}: {e}"))
            return
        self._client = client
        self._last_in = self._clock()

    def _new_client(self) -> mqtt.Client:
        mqtt = paho()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.connect_timeout = 10.0
        ctx = self.tls_context()
        if ctx is not None:
            client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_log
        client.on_publish = self._on_publish
        with self._pending_lock:
            self._pending = {}  # mids start over with each client
        client.on_socket_close = self._on_socket_close
        # With this hook set, publish() from another thread only queues the packet and wakes
        # the network thread, which alone reads and writes the socket (an SSL connection
        # must not be used by two threads at once).
        client.on_socket_register_write = _queue_only
        self._log_error: str | None = None
        self.configure(client)
        return client

    def _keepalive_check(self, now: float) -> float:
        """paho notices a dead peer only after 2 x keepalive; AWS promises 1.5 x. Any packet
        from the broker (PUBACK, PINGRESP) proves it alive; paho pings after keepalive."""
        if self._client is None:
            return 1.0
        limit = 1.4 * self.keepalive
        silent = now - self._last_in
        if silent >= limit:
            log.warning("%s: no answer from the broker for %.0f s; reconnecting", self.name, silent)
            self._lost("no answer from the broker (half-open connection)")
            return 0.01
        return limit - silent

    # paho callbacks, all in the network thread -------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._drop_client()
            self._failed_attempt(self.classify(f"CONNACK {reason_code}"))
            return
        self.connects += 1
        self.connected_since = self._clock()
        self._last_in = self.connected_since
        if self._short_session_ended and self._failed_since_loss == 0:
            self._kick_streak += 1
        else:
            self._kick_streak = 0
        self._short_session_ended = False
        self._failed_since_loss = 0
        self.on_session(client)  # the hello goes first: nobody else may publish yet
        self._connected = True
        if self._kick_streak >= KICKS_BEFORE_ALARM:
            # Keep backing off: each of our reconnects throws the other device off too.
            self._backoff.failures = max(self._backoff.failures, KICKED_BACKOFF_STEP)
            self._set_state(LinkState.KICKED, Problem(LinkState.KICKED, self.kicked_text()))
        else:
            self._backoff.succeeded()
            self._set_state(LinkState.CONNECTED, None)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        # paho may call this twice for one loss; _lost is idempotent.
        if client is self._client and not self._closing:
            self._lost(self._log_error)

    def _on_log(self, client, userdata, level, buf: str) -> None:
        if buf.startswith("Received"):
            self._last_in = self._clock()
        elif level == paho().MQTT_LOG_ERR:
            self._log_error = buf

    def _on_socket_close(self, client, userdata, sock) -> None:
        if not self._closing:
            # A lost connection: discard what the kernel still holds for it (RST, not FIN),
            # so a broker that wakes up later cannot deliver stale readings.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _failed_attempt(self, problem: Problem) -> None:
        self._failed_since_loss += 1
        self._backoff.failed()
        self._set_state(problem.state, problem)

    def _lost(self, error: str | None) -> None:
        client = self._client
        if client is None:
            return
        was_connected = self._connected
        since = self.connected_since
        self._drop_client()
        problem = self.classify(error) if error else None
        if not (was_connected and since is not None):
            if problem is None or problem.state is LinkState.CONNECTING:
                # Closed after the TLS handshake but before CONNACK. Under TLS 1.3 the
                # broker's alert about our certificate often arrives as a bare EOF instead;
                # keep saying what the last clear answer was, rather than flapping.
                problem = (
                    self.problem
                    if self.state is LinkState.REJECTED
                    else Problem(
                        LinkState.REJECTED,
                        "the broker closed the connection before accepting it "
                        "(is the client certificate accepted?)",
                    )
                )
            self._failed_attempt(problem)
            return
        duration = self._clock() - since
        self._short_session_ended = duration < SHORT_SESSION and problem is None
        if duration >= STABLE_SESSION:
            self._kick_streak = 0
        if self.state is LinkState.KICKED and self._kick_streak:
            return  # said once; the state stays until a session lasts
        log.warning(
            "%s: connection lost after %.0f s%s",
            self.name,
            duration,
            f" ({problem.text})" if problem else "",
        )
        self._set_state(LinkState.CONNECTING, problem, quiet=True)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        self.connected_since = None
        if client is not None:
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()

    def _shutdown(self) -> None:
        client = self._client
        if client is None:
            return
        self._closing = True
        self._connected = False
        with contextlib.suppress(Exception):
            client.disconnect()
            # Let the DISCONNECT reach the broker; loop() returns once the socket closes.
            deadline = self._clock() + 1.0
            while client.socket() is not None and self._clock() < deadline:
                client.loop(timeout=0.1)
        self._client = None

    def _set_state(self, state: LinkState, problem: Problem | None, quiet: bool = False) -> None:
        changed = state is not self.state or problem != self.problem
        if state is LinkState.CONNECTED:
            if self.state is not LinkState.CONNECTED:
                log.info("%s: connected to %s:%d", self.name, self.host, self.port)
        elif problem is not None and problem != self.problem and not quiet:
            level = (
                logging.ERROR
                if state in (LinkState.REJECTED, LinkState.KICKED)
                else (logging.WARNING)
            )
            log.log(level, "%s: %s", self.name, problem.text)
        self.state, self.problem = state, problem
        if changed:
            self._on_change()
