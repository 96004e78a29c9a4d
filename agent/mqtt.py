"""One MQTT connection with its own network thread: connect, keep alive, reconnect forever.

Shared by the Tibber uplink and the local mirror. Every connection attempt builds a fresh
paho client, so nothing queued for a dead connection can be replayed on the next one (a
stale reading booked at the wrong time is worse than a lost one: the meter's counters make
a gap lossless) and the TLS files are read anew (a user who fixes a certificate does not
have to restart the agent).

How an attempt failed decides what the user is told, so it is read from evidence, never
guessed: what connect() raised (refused, DNS, timeout, the TLS handshake cut short, the
broker's certificate not trusted, our own files unreadable), the broker's own words (a TLS
alert naming our certificate, a CONNACK refusal), or a connection ended without a word. A
TLS socket keeps the error its last read or write ended with (paho reduces it to a log
line). Only exceptions the network, TLS and the credential files can raise are caught; any
other is a bug, which ends the thread (the supervisor exits 70 and systemd restarts the
agent) instead of posing as a network or certificate problem.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .schedule import Backoff
from .state import LinkState, Problem

if TYPE_CHECKING:
    import ssl

    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


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
# is alive (it would otherwise sleep until the next keepalive ping), and half the
# supervisor's STUCK_AFTER; with a keepalive of 60 s paho's ping is then due by 70 s, inside
# the 1.5 x keepalive AWS IoT allows. Each turn is a wakeup: not more often than needed.
MAX_LOOP_WAIT = 10.0
# The longest a connection attempt may take before its thread counts as stuck: DNS (the
# resolver's own timeouts: 5 s x 2 tries per name server by default), a TCP connect per
# address the broker's name resolves to (connect_timeout each; AWS IoT names resolve to
# several), the TLS handshake. A hang beyond it is one (and the watchdog restarts us).
ATTEMPT_BOUND = 120.0
# A connection ended without a word after the TLS handshake and before the CONNACK is what
# a flaky path does now and then, and what AWS IoT is reported to do when its policy does
# not let this client connect (an AUTHORIZATION_FAILURE on Connect in AWS's log left the
# client without an answer, chakoku.hatenablog.com/entry/2022/04/21/235327; that it does so
# every time is inferred; MQTT 3.1.1 lets a server close the connection instead of
# answering). Only the repetition tells the two apart: this many in a row (no other failure
# in between) say "probably rejected".
SILENT_CLOSES_BEFORE_ALARM = 4


class ClosedBeforeConnack(ConnectionError):
    """The connection ended without an error (TCP FIN, TLS close_notify) before CONNACK."""

    def __str__(self) -> str:
        return "the connection was closed before the broker accepted it"


@functools.cache
def _witnessing_tls_socket() -> type[ssl.SSLSocket]:
    """An SSLSocket class that keeps the error its last read or write ended with.

    paho turns a failed read into "connection lost" and a log line; the error itself (the
    broker's alert naming our certificate, or a reset) is the evidence that tells a
    rejection from a network failure. `SSLContext.sslsocket_class` is the documented hook.
    """
    import ssl

    not_failures = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)

    class WitnessingSocket(ssl.SSLSocket):
        failure: OSError | None = None

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except OSError as e:
                if not isinstance(e, not_failures):
                    self.failure = e
                raise

        def send(self, data: bytes, flags: int = 0) -> int:  # type: ignore[override]
            try:
                return super().send(data, flags)
            except OSError as e:
                if not isinstance(e, not_failures):
                    self.failure = e
                raise

    return WitnessingSocket


class MqttLink:
    """Owns a thread that runs paho's network loop and reconnects with backoff.

    The thread waits on the socket itself (paho's loop_read/loop_write/loop_misc, not
    loop()), and a message published from another thread is written by that thread at once
    when the socket is free: a reading costs the meter thread one TLS write and the network
    thread no wakeup (with loop(), paho wakes it through a socket pair for every message).
    `_io` makes sure only one thread at a time uses the TLS connection.
    """

    name = "mqtt"
    # paho's bound on the TCP connect and, separately, on the TLS handshake of an attempt.
    connect_timeout = 10.0

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
        self._socket: object | None = None  # the client's socket, for its `failure`
        self._connected = False
        self._last_in = 0.0
        self._closing = False
        # (when, paho's MQTTMessageInfo) of each message of the current client until paho
        # marks it published: written (QoS 0) or acknowledged (QoS 1). The lock guards the
        # deque only and is never held while paho runs: paho calls its callbacks holding its
        # own locks, which its publish() takes too, so a lock held across both deadlocks.
        self._pending: deque[tuple[float, mqtt.MQTTMessageInfo]] = deque()
        self._pending_lock = threading.Lock()
        # Held while a thread reads or writes the connection (an OpenSSL connection must not
        # be used by two at once); never waited for outside the network thread.
        self._io = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()  # stop() and a lost socket wake the thread
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread_id: int | None = None
        # A publisher that publishes steadily reads the broker's answers (PUBACKs) itself,
        # when it publishes next: then the network thread does not wake for each of them.
        # It leaves the socket to the publisher for this long after each publish (0: never).
        self.read_by_publisher = 0.0
        self._publisher_reads_until = 0.0
        self.state = LinkState.CONNECTING
        self.problem: Problem | None = None
        self.heartbeat = clock()  # last time the network thread came back from a wait
        self.busy_until = 0.0  # in a connection attempt, which may block until then
        self.connects = 0
        self.connected_since: float | None = None
        # Kick-loop detection: sessions that the broker ended soon after CONNACK while an
        # immediate reconnect succeeded at once (so the broker was fine: someone else
        # logged in with our client id, and the broker dropped the older connection).
        self._short_session_ended = False
        self._failed_since_loss = 0
        self._kick_streak = 0
        self._silent_closes = 0  # attempts in a row closed without a word before CONNACK

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
            # Written from this thread if the connection is free, else by the network thread.
            with contextlib.suppress(OSError):
                client.disconnect()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_state(LinkState.STOPPED, None)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        return self._connected

    def stuck(self, now: float, limit: float) -> bool:
        """The thread is gone, or has not come back from a wait for `limit` seconds while
        not in a connection attempt (which may block until busy_until)."""
        return not self.alive or (now - self.heartbeat > limit and now > self.busy_until)

    @property
    def awaiting_connack(self) -> bool:
        """Connected (TCP, and TLS if any), CONNECT sent, no CONNACK yet."""
        return self._client is not None and not self._connected

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
        if isinstance(error, str) and error.startswith("CONNACK "):
            # The broker's own answer (a wrong password, say): retrying will not change it.
            return Problem(
                LinkState.REJECTED, f"{self.host}:{self.port} refused the connection: {error[8:]}"
            )
        return Problem(LinkState.CONNECTING, f"{self.host}:{self.port} unreachable ({error})")

    def refused_text(self) -> str:
        """What SILENT_CLOSES_BEFORE_ALARM silent closes before CONNACK in a row mean."""
        return (
            f"{self.host}:{self.port} closes the connection before accepting it, every time "
            f"({SILENT_CLOSES_BEFORE_ALARM} in a row): it probably refuses this client"
        )

    # ------------------------------------------------------------- publishing (any thread)
    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> bool:
        """Publish now or drop: never queued for a later connection, never behind a stalled
        one (it would only deliver stale data later, and grow memory). True if queued."""
        now = self._clock()
        client = self._client
        if client is None or not self._connected:
            return False
        if self.read_by_publisher and self._unanswered(now):
            self._read_answers(client)  # the acknowledgements that came meanwhile
        if self._stalled(now):
            return False
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except OSError:
            # paho turns a failed write into a return code; should an OSError escape all
            # the same, the message is dropped like any other: a network error is not the
            # caller's (the meter thread's) to handle.
            return False
        if info.rc != 0:  # MQTT_ERR_SUCCESS
            return False
        with self._pending_lock:
            if client is not self._client:
                return False  # dropped with the client replaced meanwhile
            self._pending.append((now, info))
        if self.read_by_publisher:
            self._publisher_reads_until = now + self.read_by_publisher
        return True

    def _read_answers(self, client: mqtt.Client) -> None:
        """Read what the broker sent since (non-blocking), if no other thread is at it."""
        if not self._io.acquire(blocking=False):
            return
        try:
            if client.socket() is not None:
                # An acknowledgement may let paho send messages it held back (its in-flight
                # limit): queued here, written when this thread lets go.
                client.loop_read()  # a lost connection: see _on_disconnect
        finally:
            self._write_and_let_go(client)

    def _unanswered(self, now: float) -> bool:
        """A message waits long enough for its acknowledgement that, unread, it would count
        as stalled (or many do): read the broker's answers before judging. Until then they
        wait in the kernel, so the answers to two readings are read in one go."""
        with self._pending_lock:
            pending = self._pending
            return bool(pending) and (
                now - pending[0][0] > STALL or len(pending) >= MAX_PENDING // 2
            )

    def _stalled(self, now: float) -> bool:
        """Messages not written (QoS 0) or not acknowledged (QoS 1) for STALL seconds, or
        too many of them: the link is not moving."""
        with self._pending_lock:
            pending = self._pending
            if pending and any(info.is_published() for _, info in pending):
                pending = self._pending = deque(p for p in pending if not p[1].is_published())
            return len(pending) >= MAX_PENDING or (bool(pending) and now - pending[0][0] > STALL)

    # ------------------------------------------------------------- the network thread
    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        while not self._stop.is_set():
            self.heartbeat = self._clock()
            if self._client is None:
                delay = self._backoff.delay()
                if self.state is LinkState.CONNECTING:
                    # Network trouble: keep trying often enough to be back within seconds
                    # of the broker (60 s caps only rejections and kick loops).
                    delay = min(delay, NETWORK_RETRY_CAP)
                if self._pause(delay):
                    break
                self._attempt()
                continue
            now = self._clock()
            wait = min(self.on_tick(now) if self._connected else 1.0, self._keepalive_check(now))
            client = self._client  # None if the keepalive check just gave up on it
            if client is None:
                continue
            rc = self._service(client, max(0.01, min(wait, MAX_LOOP_WAIT)))
            if rc != paho().MQTT_ERR_SUCCESS and self._client is not None and not self._closing:
                self._lost(self._log_error)
        self._shutdown()

    def _service(self, client: mqtt.Client, timeout: float) -> int:
        """Wait up to `timeout` for the broker (or a wake), then read, write and keep alive:
        paho's loop() without its socket pair."""
        sock = client.socket()
        if sock is None:
            return paho().MQTT_ERR_NO_CONN
        # A TLS record already decrypted into the socket's buffer does not make it readable.
        pending = sock.pending() if hasattr(sock, "pending") else 0
        wlist = [sock] if client.want_write() else []
        rlist = [sock, self._wake_r]
        if self._publisher_reads_until > self._clock():
            # The publisher reads the answers (read_by_publisher). Should it stop, this
            # thread watches the socket again from its next turn (within MAX_LOOP_WAIT).
            rlist = [self._wake_r]
        try:
            readable, _, _ = select.select(rlist, wlist, [], 0.0 if pending else timeout)
        except (OSError, ValueError, TypeError):
            return paho().MQTT_ERR_CONN_LOST  # closed under us (by a write that failed)
        self.heartbeat = self._clock()
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 512)
        with self._io:
            if client.socket() is None:
                return paho().MQTT_ERR_CONN_LOST
            if sock in readable or pending:
                rc = client.loop_read()
                if rc or client.socket() is None:
                    return rc or paho().MQTT_ERR_CONN_LOST
            if client.want_write():
                rc = client.loop_write()
                if rc or client.socket() is None:
                    return rc or paho().MQTT_ERR_CONN_LOST
            return client.loop_misc()

    def _write_now(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        """paho's on_socket_register_write, in whichever thread queued a packet: write it
        now if no other thread uses the connection, else the thread that does writes it
        when it lets go. Before CONNACK, the network thread writes everything: it reads
        first, so a TLS 1.3 broker's alert about our certificate is read before our CONNECT
        could make it reset the connection."""
        if self._connected and self._io.acquire(blocking=False):
            self._write_and_let_go(client)

    def _write_and_let_go(self, client: mqtt.Client) -> None:
        """Outside the network thread, with `_io` held: write what is queued and let go.
        Whatever is still queued then (the socket's buffer full, or queued by another thread
        meanwhile, whose write found `_io` taken) is the network thread's to write: it is
        woken. paho calls _write_now no more until all is written (it is "registered")."""
        try:
            if client.socket() is not None and client.want_write():
                client.loop_write()
        finally:
            self._io.release()
        if client.want_write():
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: it is awake already
            os.write(self._wake_w, b"w")

    def _pause(self, seconds: float) -> bool:
        """Wait out a backoff (up to a minute) in slices, stamping the heartbeat after each:
        a long wait is not a stuck thread. True if stopped meanwhile."""
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            if self._stop.wait(min(left, MAX_LOOP_WAIT)):
                return True
            self.heartbeat = self._clock()
        return False

    def _attempt(self) -> None:
        self.heartbeat = self._clock()
        # connect() blocks in DNS, then in a TCP connect per address the name resolves to
        # (connect_timeout each), then in the TLS handshake: bounded, but longer than a
        # heartbeat may be old. The supervisor waits this long before calling it stuck.
        self.busy_until = self.heartbeat + ATTEMPT_BOUND
        try:
            client = self._new_client()
            client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as e:
            # What the network, TLS (ssl.SSLError) and the credential files raise. paho's
            # connect() raises ValueError only for a host, port or keepalive that config.load
            # rules out; anything else is a bug: it ends this thread (see the docstring).
            self._silent_closes = 0
            self._failed_attempt(self.classify(e))
            return
        finally:
            self.heartbeat = self._clock()
            self.busy_until = 0.0
        self._client = client
        self._socket = client.socket()
        self._last_in = self._clock()

    def _new_client(self) -> mqtt.Client:
        mqtt = paho()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.connect_timeout = self.connect_timeout
        ctx = self.tls_context()
        if ctx is not None:
            ctx.sslsocket_class = _witnessing_tls_socket()
            client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_log
        with self._pending_lock:
            self._pending.clear()  # what the last client had pending is gone with it
        client.on_socket_close = self._on_socket_close
        # With this hook set, paho never writes from publish() itself: _write_now does, under
        # the connection's lock.
        client.on_socket_register_write = self._write_now
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
            self._lost("no answer from the broker (half-open connection)", by_broker=False)
            return 0.01
        return limit - silent

    # paho callbacks, all in the network thread -------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._silent_closes = 0
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
        if client is not self._client or self._closing:
            return
        if threading.get_ident() != self._thread_id:
            # A write from the meter thread failed: the network thread finds the socket
            # closed and handles the loss (the failure stays on the socket as evidence).
            self._wake()
            return
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

    def _lost(self, error: str | None, *, by_broker: bool = True) -> None:
        """The connection ended: `error` is paho's log line about it, if any; a TLS socket's
        own record of the failure is better evidence. by_broker=False: we gave up on it."""
        client = self._client
        if client is None:
            return
        failure: BaseException | str | None = getattr(self._socket, "failure", None) or error
        was_connected = self._connected
        since = self.connected_since
        self._drop_client()
        if not (was_connected and since is not None):
            self._failed_attempt(self._unaccepted(failure, by_broker))
            return
        problem = self.classify(failure) if failure else None
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

    def _unaccepted(self, failure: BaseException | str | None, by_broker: bool) -> Problem:
        """The problem with an attempt that connected (TCP, and TLS if any) but ended before
        the broker's CONNACK."""
        problem = self.classify(failure if failure is not None else ClosedBeforeConnack())
        if problem.state is not LinkState.CONNECTING or not by_broker:
            self._silent_closes = 0  # the broker said why (a TLS alert), or we gave up
            return problem
        # Closed or reset without a word: a network problem, unless it keeps happening.
        self._silent_closes += 1
        if self._silent_closes >= SILENT_CLOSES_BEFORE_ALARM:
            return Problem(LinkState.REJECTED, self.refused_text())
        return problem

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._socket = None
        self._connected = False
        self.connected_since = None
        if client is not None:
            with contextlib.suppress(OSError):
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
        with contextlib.suppress(OSError):
            client.disconnect()
            # Let the DISCONNECT reach the broker; paho closes the socket once it is written.
            deadline = self._clock() + 1.0
            while client.socket() is not None and self._clock() < deadline:
                self._service(client, 0.1)
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
