"""Faults on the Tibber link (issue 4: 1-5, 11, 12), injected with real parts.

The agent runs as a subprocess against real mosquitto on 127.0.0.1 and a pty IR head fed by
the simulator. What is observed comes from outside the agent: what the broker receives and
delivers (its log, an MQTT observer), what the agent tells systemd (STATUS on a notify
socket), its log, and how often it opens its CA file (inotify): the agent builds a fresh TLS
context from the files on every connection attempt, so each open of ca.pem is one attempt,
whether or not it ever reaches the network.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.meter.simulator import SimulatedEbz
from agent.state import Pattern
from tests.harness.agent import (
    BRIDGE_ID,
    TOPIC_BRIDGE_METRIC,
    TOPIC_EVENT,
    TOPIC_OBIS,
    AgentConfig,
    AgentProcess,
)
from tests.harness.broker import HOST, TlsBroker, parse_received_publish
from tests.harness.certs import Pki, expired_client, foreign_ca, foreign_client, mismatched_key
from tests.harness.meter import BYTE_TIME_S, PtyMeter, encode_7e1
from tests.harness.notify import (
    Notification,
    NotifySocket,
    led_of,
    status_of,
    statuses,
    wait_status,
)
from tests.harness.observer import Message
from tests.harness.paths import libfaketime

from .conftest import scaled

LIBFAKETIME = libfaketime()  # /usr/lib/<multiarch>/faketime/: x86_64 here, arm on a Pi
MAX_AGE = 2.5  # issue 4, fault 2: no reading older than this is delivered after a reconnect
# The smallest TLS record that can carry MQTT's 2-byte DISCONNECT: 5 bytes of header, the
# packet, a 16-byte AEAD tag.
DISCONNECT_RECORD = 5 + 2 + 16


# ------------------------------------------------------------------------------ helpers
class FileOpens:
    """Records when a file in `directory` named `name` is opened (inotify IN_OPEN)."""

    IN_OPEN = 0x20
    _EVENT = struct.Struct("iIII")

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name.encode()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, str(directory).encode(), self.IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            now = time.monotonic()
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            off = 0
            while off + self._EVENT.size <= len(data):
                _wd, mask, _cookie, length = self._EVENT.unpack_from(data, off)
                name = data[off + self._EVENT.size : off + self._EVENT.size + length]
                off += self._EVENT.size + length
                if mask & self.IN_OPEN and name.rstrip(b"\0") == self.name:
                    with self._lock:
                        self._times.append(now)

    def times(self, after: float = float("-inf"), before: float = float("inf")) -> list[float]:
        with self._lock:
            return [t for t in self._times if after <= t < before]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)


class Feed:
    """The simulated meter pushing through the pty; remembers when each meter second (96.8.0)
    was completely on the wire, so each delivered reading's age can be measured."""

    def __init__(self, pty: PtyMeter, seed: int = 7) -> None:
        self.sim = SimulatedEbz(rng=random.Random(seed))
        self.sent: dict[int, float] = {}
        pty.start_pushing(self._next, period=1.0)

    def _next(self) -> bytes:
        wire = encode_7e1(self.sim.next_telegram())
        # Set before the first byte goes out, so no reading can arrive before its entry.
        self.sent[self.sim.seconds] = time.monotonic() + len(wire) * BYTE_TIME_S
        return wire

    def age(self, m: Message) -> float:
        """Delivery time minus the moment the meter finished sending that reading (estimated
        from the baud rate to about 0.02 s, so a reading relayed at once shows about 0)."""
        return max(0.0, m.t - self.sent[meter_second(m.payload)])


def meter_second(payload: bytes) -> int:
    found = re.search(rb"96\.8\.0\*255\(([0-9A-F]{8})\)", payload)
    assert found, payload[:200]
    return int(found[1], 16)


_CONNECTED = re.compile(r"New client connected from \S+ as (\S+) \(.*?u'([^']*)'\)")


def agent_sessions(log: str, username: str) -> list[list[str]]:
    """From the broker's log: per connection of the bridge id with this certificate identity,
    the topics of the PUBLISHes the broker received on it, in order."""
    sessions: list[list[str]] = []
    current: list[str] | None = None
    for line in log.splitlines():
        if m := _CONNECTED.search(line):
            if m[1] == BRIDGE_ID:
                current = [] if m[2] == username else None
                if current is not None:
                    sessions.append(current)
        elif (
            (p := parse_received_publish(line)) and p.client_id == BRIDGE_ID and current is not None
        ):
            current.append(p.topic)
    return sessions


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Like an admin copying a file into place; inotify sees the temp name, not `path`."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_config(
    tmp_path: Path, name: str, port: int, pki: Pki, meter: Path, **tibber: str
) -> AgentConfig:
    cfg = AgentConfig(tmp_path / name, str(meter), port, pki)
    cfg.tibber.update(tibber)
    cfg.write()
    return cfg


RunAgent = Callable[..., AgentProcess]
Figure = Callable[..., None]  # the `figure` fixture of tests/conftest.py


@pytest.fixture
def run_agent() -> Iterator[RunAgent]:
    """run_agent(config, env=None) -> a running `agent run`, stopped at teardown."""
    started: list[AgentProcess] = []

    def start(config: AgentConfig, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(config.path, "run", env).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
        with contextlib.suppress(Exception):
            agent._log.close()  # stop() leaves it open for a process that already ended


@pytest.fixture
def feed(pty_meter: PtyMeter) -> Feed:
    return Feed(pty_meter)


# ------------------------------------------------------------------------------ 1
def test_broker_refused_at_start_connects_soon_after_it_appears(
    tmp_path, pki, pty_meter, feed, notify_socket, run_agent, observer_factory, figure: Figure
):
    """Fault 1a: nothing listens on the broker's port at start (connection refused); the
    broker appears 5 s later. Bound: connected within 10 s of it appearing, and while it is
    away no tight loop (at most 5 attempts in those 5 s: backoff 0, 0.5-1, 1-2, 2-4 s...)."""
    broker = TlsBroker(tmp_path / "broker-late", pki)  # not started: its port refuses
    cfg = make_config(tmp_path, "agent", broker.port, pki, pty_meter.link)
    opens = FileOpens(cfg.directory, "ca.pem")
    try:
        t0 = time.monotonic()
        agent = run_agent(cfg, notify_socket.env())
        wait_status(notify_socket, "refused the connection", timeout=5)
        time.sleep(max(0.0, t0 + 5.0 - time.monotonic()))
        t_up = time.monotonic()
        # check_files() at start-up opens ca.pem once; every further open is an attempt.
        attempts_down = len(opens.times(before=t_up)) - 1
        broker.start()
        assert broker.port == cfg.broker_port
        observer = observer_factory(broker, ("$aws/rules/#",))
        connected = wait_status(notify_socket, "Tibber connected", timeout=15, after=t_up)
        took = connected.t - t_up
        observer.wait_for(TOPIC_OBIS, timeout=10)
        sessions = agent_sessions(broker.log_text(), pki.client_cn)
        ok = attempts_down <= 5 and took <= 10.0
        figure(
            fault="1 broker unreachable at start: connection refused",
            injected="agent started with nothing listening on the broker port; "
            "mosquitto started 5 s later",
            measured=f"{attempts_down} attempts in the 5 s down; "
            f"connected {took:.2f} s after the broker appeared",
            bound="<= 5 attempts in 5 s; connected <= 10 s after it appeared",
            ok=ok,
            attempts=attempts_down,
            connect_s=round(took, 3),
        )
        assert attempts_down >= 1, "no attempt while the broker was away"
        assert attempts_down <= 5, f"{attempts_down} attempts in 5 s: a tight loop"
        assert took <= 10.0, took
        assert sessions and sessions[0][0] == TOPIC_EVENT, sessions
        assert agent.proc.poll() is None
    finally:
        opens.close()
        broker.stop()


def test_dns_failure_is_named_and_the_agent_stays_up(
    tmp_path, pki, pty_meter, feed, notify_socket, run_agent, figure: Figure
):
    """Fault 1b: mqtt_url cannot resolve. STATUS and log say DNS; the agent keeps running and
    keeps retrying with backoff (at most 6 attempts in 8 s)."""
    cfg = make_config(tmp_path, "agent", 8883, pki, pty_meter.link, mqtt_url="no-such-host.invalid")
    opens = FileOpens(cfg.directory, "ca.pem")
    try:
        t0 = time.monotonic()
        agent = run_agent(cfg, notify_socket.env())
        n = wait_status(notify_socket, "(DNS)", timeout=5)
        assert "Tibber connecting: cannot resolve no-such-host.invalid (DNS)" in status_of(n)
        time.sleep(max(0.0, t0 + 8.0 - time.monotonic()))
        alive = agent.proc.poll() is None
        attempts = len(opens.times(before=t0 + 8.0)) - 1
        log = agent.log_text()
        figure(
            fault="1 broker unreachable at start: DNS failure",
            injected="mqtt_url = no-such-host.invalid",
            measured=f"STATUS {status_of(n)!r}; {attempts} attempts in 8 s; "
            f"{'running' if alive else 'exited'}",
            bound="STATUS and log say DNS; still running; <= 6 attempts in 8 s",
            ok=alive and 1 <= attempts <= 6 and "(DNS)" in log,
            attempts=attempts,
        )
        assert alive, log
        assert "cannot resolve no-such-host.invalid (DNS)" in log, log
        assert 1 <= attempts <= 6, attempts
        latest = statuses(notify_socket)[-1]
        assert "(DNS)" in status_of(latest), status_of(latest)
    finally:
        opens.close()


# ------------------------------------------------------------------------------ 2
def test_broker_killed_and_restarted_hello_first_fresh_data_nothing_stale(
    tmp_path, pki, tls_broker, pty_meter, feed, observer, run_agent, figure: Figure
):
    """Fault 2: the broker is SIGKILLed and restarted on the same port, down 1.2 s each time,
    while the meter pushes one telegram a second. Bounds per cycle: the first message on the
    new connection is the hello, a fresh reading arrives within 6 s of the broker's return,
    and no reading delivered after a reconnect is older than 2.5 s (its 96.8.0 mapped to the
    moment the pty finished sending it)."""
    cycles = scaled(10, minimum=4)
    cfg = make_config(tmp_path, "agent", tls_broker.port, pki, pty_meter.link, obis_interval="0")
    agent = run_agent(cfg)
    observer.wait_for(TOPIC_OBIS, timeout=15)
    port = tls_broker.port
    to_fresh: list[float] = []
    ages: list[float] = []
    firsts: list[str] = []
    for _ in range(cycles):
        time.sleep(1.0)  # readings flowing
        mark = tls_broker.log_mark()
        tls_broker.kill()
        time.sleep(1.2)  # a real outage (an instant restart looks like a duplicate client)
        t_up = time.monotonic()
        tls_broker.start()
        assert tls_broker.port == port
        observer.reconnect()
        fresh = observer.wait_for(TOPIC_OBIS, timeout=12, after=t_up)
        to_fresh.append(fresh.t - t_up)
        time.sleep(1.5)  # a few more readings on the new connection
        sessions = agent_sessions(tls_broker.log_text()[mark:], pki.client_cn)
        assert len(sessions) == 1, sessions
        firsts.append(sessions[0][0] if sessions[0] else "")
        ages += [feed.age(m) for m in observer.messages if m.t >= t_up and m.topic == TOPIC_OBIS]
    max_fresh, max_age = max(to_fresh), max(ages)
    hello_first = all(f == TOPIC_EVENT for f in firsts)
    figure(
        fault="2 broker killed and restarted while data flows",
        injected=f"{cycles} x SIGKILL mosquitto, 1.2 s down, restart on the same port; "
        "meter at 1 telegram/s, obis_interval 0",
        measured=f"hello first {sum(f == TOPIC_EVENT for f in firsts)}/{cycles}; "
        f"fresh data <= {max_fresh:.2f} s after the broker's return; "
        f"oldest reading delivered after a reconnect {max_age:.2f} s ({len(ages)} readings)",
        bound="hello first every time; fresh data <= 6 s; no reading older than 2.5 s",
        ok=hello_first and max_fresh <= 6.0 and max_age <= MAX_AGE,
        cycles=cycles,
        max_time_to_fresh_s=round(max_fresh, 3),
        max_age_s=round(max_age, 3),
    )
    assert hello_first, firsts
    assert max_fresh <= 6.0, to_fresh
    assert max_age <= MAX_AGE, sorted(ages)[-5:]
    assert agent.proc.poll() is None


# ------------------------------------------------------------------------------ 3
def test_half_open_broker_detected_within_1_5_keepalive_and_reconnected(
    tmp_path, pki, tls_broker, pty_meter, feed, observer, notify_socket, run_agent, figure
):
    """Fault 3: the broker is frozen (SIGSTOP: TCP stays up, nothing answers) with keepalive 2
    and a reading every second (so paho never pings first and the agent's own check at
    1.4 x keepalive is what notices). Bound: detected within 1.5 x keepalive = 3 s;
    reconnected within 10 s of the thaw, the hello first."""
    keepalive = 2
    cfg = make_config(
        tmp_path,
        "agent",
        tls_broker.port,
        pki,
        pty_meter.link,
        keepalive=str(keepalive),
        obis_interval="0",
    )
    agent = run_agent(cfg, notify_socket.env())
    observer.wait_count(2, TOPIC_OBIS, timeout=15)
    t_freeze = time.monotonic()
    tls_broker.freeze()
    # Whichever notices first (the agent's own check at 1.4 x keepalive, or paho's), STATUS
    # stops saying connected.
    lost = wait_status(
        notify_socket, lambda s: "Tibber connected" not in s, timeout=10, after=t_freeze
    )
    detected = lost.t - t_freeze
    time.sleep(1.0)
    mark = tls_broker.log_mark()
    t_thaw = time.monotonic()
    tls_broker.thaw()
    back: Notification | None = None
    with contextlib.suppress(AssertionError):
        back = wait_status(notify_socket, "Tibber connected", timeout=15, after=t_thaw)
    ages = [0.0]
    sessions: list[list[str]] = []
    if back is not None:
        if not observer.connected:
            observer.reconnect()
        observer.wait_for(TOPIC_OBIS, timeout=10, after=back.t)
        time.sleep(2.0)
        ages = [feed.age(m) for m in observer.messages if m.t >= t_thaw and m.topic == TOPIC_OBIS]
        sessions = agent_sessions(tls_broker.log_text()[mark:], pki.client_cn)
    reconnected = back.t - t_thaw if back is not None else float("inf")
    hello_first = bool(sessions) and sessions[-1][:1] == [TOPIC_EVENT]
    bound = 1.5 * keepalive
    ok = detected <= bound and reconnected <= 10.0 and hello_first
    figure(
        fault="3 half-open connection",
        injected=f"mosquitto SIGSTOPped (keepalive {keepalive} s, a reading a second), "
        "SIGCONT 1 s after detection",
        measured=f"detected after {detected:.2f} s; "
        + (
            f"reconnected {reconnected:.2f} s after the thaw, hello first: {hello_first}"
            if back is not None
            else "not reconnected within 15 s of the thaw"
        ),
        bound=f"detected <= {bound:.1f} s (1.5 x keepalive); reconnected <= 10 s, hello first",
        ok=ok,
        detection_s=round(detected, 3),
        reconnect_s=round(reconnected, 3) if back is not None else None,
        # Not bounded: readings the frozen broker's kernel had accepted before the freeze
        # may be delivered when it wakes; no client can take those back.
        oldest_after_thaw_s=round(max(ages), 3),
    )
    log = agent.log_text()
    assert "no answer from the broker" in log or "connection lost" in log, log
    assert detected <= bound, detected
    assert back is not None, f"not reconnected within 15 s of the thaw; agent log:\n{log}"
    assert reconnected <= 10.0, reconnected
    assert hello_first, sessions


# ------------------------------------------------------------------------------ 4
TLS_CASES = {
    # case: (what STATUS and log must say, words the other cases use that must not appear)
    "foreign_ca": "does not trust the broker's certificate",
    "foreign_client": "the broker does not trust the client certificate",
    "expired_client": "the broker rejected the client certificate: it has expired",
    "mismatched_key": "private_key does not belong to certificate",
}
TLS_WATCH = 20.0  # seconds of rejection observed before the files are fixed


class TlsCase:
    """One agent with one kind of bad credentials against its own broker and pty."""

    def __init__(self, name: str, tmp_path: Path, pki: Pki) -> None:
        self.name = name
        self.want = TLS_CASES[name]
        base = tmp_path / name
        self.broker = TlsBroker(base / "broker", pki).start()
        self.pty = PtyMeter(base / "ttyIR")
        self.pty.plug()
        self.feed = Feed(self.pty)
        self.notify = NotifySocket()
        self.pki = pki
        self.cfg = make_config(base, "agent", self.broker.port, pki, self.pty.link)
        d = self.cfg.directory
        bad = base / "bad"
        if name == "foreign_ca":
            write_atomically(d / "ca.pem", foreign_ca(bad).read_bytes(), 0o644)
        elif name == "foreign_client":
            crt, key = foreign_client(bad)
            write_atomically(d / "certificate.pem", crt.read_bytes(), 0o644)
            write_atomically(d / "private.key", key.read_bytes())
        elif name == "expired_client":
            crt, key = expired_client(pki)
            write_atomically(d / "certificate.pem", crt.read_bytes(), 0o644)
            write_atomically(d / "private.key", key.read_bytes())
        else:
            write_atomically(d / "private.key", mismatched_key(bad).read_bytes())
        self.opens = FileOpens(d, "ca.pem")
        self.agent: AgentProcess | None = None
        self.back: Notification | None = None

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.agent = AgentProcess(self.cfg.path, "run", self.notify.env()).start()

    def fix(self) -> None:
        """Put the right files in place, as the user would; the agent is not restarted."""
        d, pki = self.cfg.directory, self.pki
        self.t_fix = time.monotonic()
        write_atomically(d / "ca.pem", pki.ca.read_bytes(), 0o644)
        write_atomically(d / "certificate.pem", pki.client_crt.read_bytes(), 0o644)
        write_atomically(d / "private.key", pki.client_key.read_bytes())

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            with contextlib.suppress(Exception):
                self.agent._log.close()
        self.opens.close()
        self.notify.close()
        self.pty.close()
        self.broker.stop()


def test_tls_rejections_are_named_backed_off_and_recovered(tmp_path, pki, figure: Figure):
    """Fault 4, the four cases side by side (one broker, pty and agent each). Bounds: the
    agent stays up; after the first 3 attempts at least 2 s between attempts (backoff 2-4,
    4-8, ... s; at most 7 attempts in 20 s); STATUS and LED say which case it is from the
    first attempt until the files are fixed, the log says it once; fixed files are picked up
    without a restart, within one backoff step (<= 35 s here: at most 32 s after 6 failures)."""
    cases = [TlsCase(name, tmp_path, pki) for name in TLS_CASES]
    try:
        for case in cases:
            case.start()
        time.sleep(TLS_WATCH)
        for case in cases:
            case.fix()
        for case in cases:
            with contextlib.suppress(AssertionError):
                case.back = wait_status(
                    case.notify, "Tibber connected", timeout=45, after=case.t_fix
                )
        failures = []
        for case in cases:
            agent = case.agent
            assert agent is not None
            alive = agent.proc.poll() is None
            # check_files() at start-up opens ca.pem once; every further open is an attempt.
            tries = case.opens.times(before=case.t_fix)[1:]
            gaps = [b - a for a, b in itertools.pairwise(tries)]
            late_gaps = gaps[2:]
            rate = len(tries) / TLS_WATCH * 60
            says = [n for n in statuses(case.notify) if n.t < case.t_fix]
            first = next((n for n in says if case.want in status_of(n)), None)
            # Once named, STATUS (and so the LED) keeps naming it until the files are fixed.
            since = [status_of(n) for n in says if first is not None and n.t >= first.t]
            wrong = [s for s in since if case.want not in s or "Tibber rejected" not in s]
            leds = {led_of(s) for s in since}
            log = agent.log_text()
            said = log.count(case.want)
            recovery = case.back.t - case.t_fix if case.back is not None else float("inf")
            others = [w for n, w in TLS_CASES.items() if n != case.name and w in log]
            ok = (
                alive
                and first is not None
                and not wrong
                and leds == {Pattern.NEEDS_USER}
                and said == 1
                and not others
                and len(tries) <= 7
                and all(g >= 2.0 for g in late_gaps)
                and recovery <= 35.0
            )
            figure(
                fault=f"4 TLS rejected: {case.name.replace('_', ' ')}",
                injected={
                    "foreign_ca": "ca_cert from a CA that did not sign the broker's certificate",
                    "foreign_client": "client certificate from a CA the broker does not trust",
                    "expired_client": "client certificate expired yesterday",
                    "mismatched_key": "private_key of another certificate",
                }[case.name]
                + "; fixed after 20 s by writing the right files",
                measured=f"{len(tries)} attempts in {TLS_WATCH:.0f} s "
                f"({rate:.0f}/min; gaps after the 3rd: "
                f"{', '.join(f'{g:.1f}' for g in late_gaps)} s); "
                f"STATUS {status_of(first) if first else None!r}, "
                f"{len(wrong)} later STATUS lines not naming it; logged {said}x; "
                + (
                    f"recovered {recovery:.1f} s after the fix"
                    if case.back is not None
                    else "not recovered within 45 s of the fix"
                ),
                bound="stays up; <= 7 attempts in 20 s and >= 2 s apart after the 3rd; "
                "STATUS and LED name the case until fixed, log once; "
                "recovers <= 35 s after the fix",
                ok=ok,
                attempts=len(tries),
                attempts_per_min=round(rate, 1),
                recovery_s=round(recovery, 2) if case.back is not None else None,
            )
            if not ok:
                failures.append(
                    f"{case.name}: {'running' if alive else 'EXITED'}; attempts at "
                    f"{[round(t - case.t0, 2) for t in tries]} s; recovery {recovery:.1f} s; "
                    f"logged {said}x; other cases named {others}\n"
                    f"  STATUS not naming it after it was named: {wrong}\n"
                    f"  log:\n{log}"
                )
        assert not failures, "\n".join(failures)
    finally:
        for case in cases:
            case.close()


# ------------------------------------------------------------------------------ 5
class OtherBridge:
    """The real bridge still plugged in: same bridge id, a valid certificate from the same CA,
    and it reconnects 1 s after it is thrown off, forever."""

    def __init__(self, broker: TlsBroker, pki: Pki) -> None:
        crt, key = pki.issue_client("tibber-bridge-real")
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=BRIDGE_ID,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.tls_set(ca_certs=str(pki.ca), certfile=str(crt), keyfile=str(key))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.connects = 0
        self.first: float | None = None
        self.client.on_connect = self._on_connect
        self.client.connect_async(HOST, broker.port, keepalive=60)

    def _on_connect(self, client, userdata, flags, rc, properties) -> None:
        if not rc.is_failure:
            self.connects += 1
            if self.first is None:
                self.first = time.monotonic()

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def test_duplicate_client_id_kick_loop_is_named(
    tmp_path, pki, tls_broker, pty_meter, feed, notify_socket, run_agent, figure: Figure
):
    """Fault 5: another client logs in with the bridge id (mosquitto, like AWS IoT, drops the
    older connection) and reconnects 1 s after each kick. Bound: STATUS and log say that
    another device uses this bridge id within 10 s (3 kicks); then the agent backs off (at
    most 2 of its own connects in the next 10 s)."""
    cfg = make_config(tmp_path, "agent", tls_broker.port, pki, pty_meter.link)
    agent = run_agent(cfg, notify_socket.env())
    wait_status(notify_socket, "Tibber connected", timeout=15)
    other = OtherBridge(tls_broker, pki)
    t_dup = time.monotonic()
    other.start()
    try:
        n = wait_status(
            notify_socket, "another device uses this bridge id", timeout=30, after=t_dup
        )
        detected = n.t - t_dup
        assert "Tibber kicked" in status_of(n), status_of(n)
        mark = tls_broker.log_mark()
        time.sleep(10.0)
        own = len(agent_sessions(tls_broker.log_text()[mark:], pki.client_cn))
        log = agent.log_text()
        said = log.count("another device uses this bridge id")
        ok = detected <= 10.0 and own <= 2 and said == 1
        figure(
            fault="5 duplicate client id",
            injected="a second client with the bridge id and a valid certificate, "
            "reconnecting 1 s after each kick",
            measured=f"named after {detected:.2f} s; {own} own connects in the next 10 s; "
            f"logged {said}x",
            bound="named in STATUS and log <= 10 s; <= 2 own connects in the next 10 s; "
            "logged once",
            ok=ok,
            detection_s=round(detected, 3),
        )
        assert detected <= 10.0, detected
        assert said == 1, log
        assert led_of(status_of(n)) is Pattern.NEEDS_USER
        assert own <= 2, own
        assert agent.proc.poll() is None
    finally:
        other.stop()


# ------------------------------------------------------------------------------ 11
def test_sigterm_mid_publish_exits_0_within_5_s(
    tmp_path, pki, tls_broker, pty_meter, feed, observer, notify_socket, run_agent, figure
):
    """Fault 11a: SIGTERM while a reading is in flight. The broker is frozen (SIGSTOP) right
    after a reading went through, so the next one (a reading a second, obis_interval 0) is
    written into a broker that cannot read it: its PUBLISH waits in the broker's socket
    (that socket's unread bytes) and no PUBACK can come. Then SIGTERM.

    Bound: exit 0 within 5 s and STOPPING=1, with a clean goodbye. Clean, with a broker
    that cannot read, means: the agent neither waits for the PUBACK nor hangs on the
    socket; it writes its DISCONNECT after the PUBLISH and closes the connection with a FIN
    (not a reset, which would throw away what the broker has not read). While frozen, the
    kernel shows that much (more unread bytes, the broker's end in CLOSE_WAIT); once thawed,
    the broker's log shows what the bytes were: the PUBLISH (QoS 1, never acknowledged
    while the agent ran), then the DISCONNECT."""
    cfg = make_config(tmp_path, "agent", tls_broker.port, pki, pty_meter.link, obis_interval="0")
    agent = run_agent(cfg, notify_socket.env())
    observer.wait_count(2, TOPIC_OBIS, timeout=15)
    port = tls_broker.client_port(BRIDGE_ID)
    # Right after a reading went through (the broker logs it before it forwards it), so the
    # next reading, a second later, is the one caught in flight.
    observer.wait_for(TOPIC_OBIS, timeout=5, after=time.monotonic())
    mark = tls_broker.log_mark()
    tls_broker.freeze()
    deadline = time.monotonic() + 3.0
    while tls_broker.unread_bytes(port) == 0:
        assert time.monotonic() < deadline, "the agent wrote nothing to the frozen broker in 3 s"
        time.sleep(0.005)
    time.sleep(0.05)  # the whole PUBLISH, not only its first TCP segment
    in_flight_bytes = tls_broker.unread_bytes(port)
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    try:
        rc: int | None = agent.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    stopping = any(n.fields.get("STOPPING") == "1" for n in notify_socket.all())
    goodbye_bytes = tls_broker.unread_bytes(port) - in_flight_bytes
    closed = tls_broker.tcp_state(port)
    tls_broker.thaw()
    # The broker's last word on the connection ("Client <id> disconnected." after a
    # DISCONNECT, "... closed its connection." without one); whatever it read, the figure
    # says it.
    with contextlib.suppress(TimeoutError):
        tls_broker.wait_for_log(rf"Client {BRIDGE_ID} ", timeout=5, since=mark)
    read = [
        packet
        for line in tls_broker.log_text()[mark:].splitlines()
        if (packet := what_the_broker_read(line, BRIDGE_ID))
    ]
    in_flight = tls_broker.received_publishes(BRIDGE_ID, since=mark)
    goodbye = (
        bool(in_flight)
        and read[len(in_flight) : len(in_flight) + 1] == ["DISCONNECT"]
        and goodbye_bytes >= DISCONNECT_RECORD
        and closed == "CLOSE_WAIT"
    )
    ok = rc == 0 and took <= 5.0 and stopping and goodbye
    figure(
        fault="11 SIGTERM mid-publish",
        injected="broker frozen (SIGSTOP) right before a reading; its PUBLISH in flight "
        f"({in_flight_bytes} bytes unread in the broker's socket, no PUBACK possible); SIGTERM",
        measured=f"exit {rc} after {took:.2f} s; STOPPING=1: {stopping}; then "
        f"{goodbye_bytes} more bytes and {closed} (broker frozen); after the thaw the broker "
        f"read: {', '.join(read) or 'nothing'}",
        bound="exit 0 within 5 s, STOPPING=1; the in-flight PUBLISH, then a DISCONNECT, then FIN",
        ok=ok,
        exit_s=round(took, 3),
    )
    assert rc == 0, agent.log_text()
    assert took <= 5.0, took
    assert stopping, notify_socket.all()[-3:]
    assert in_flight and all((p.topic, p.qos) == (TOPIC_OBIS, 1) for p in in_flight), read
    assert goodbye_bytes >= DISCONNECT_RECORD and closed == "CLOSE_WAIT", (goodbye_bytes, closed)
    assert read[len(in_flight) :] == ["DISCONNECT", "disconnected."], read
    assert "Traceback" not in agent.log_text()


def what_the_broker_read(line: str, client_id: str) -> str:
    """A log line about client_id, in short: 'PUBLISH q1 m6', 'DISCONNECT', or what the
    broker says about the connection ('disconnected.', 'closed its connection.')."""
    if (p := parse_received_publish(line)) and p.client_id == client_id:
        return f"PUBLISH q{p.qos} m{p.mid}"
    if f"Received DISCONNECT from {client_id}" in line:
        return "DISCONNECT"
    if f"Client {client_id} " in line:
        return line.split(f"Client {client_id} ", 1)[1]
    return ""


def test_sigkill_then_restart_starts_clean(
    tmp_path, pki, tls_broker, pty_meter, feed, observer, run_agent, figure: Figure
):
    """Fault 11b: SIGKILL while data flows, 3 s dead (the meter keeps pushing into the pty),
    then a new agent. Bound: it connects, the hello is the first message, fresh data flows,
    and no reading older than 2.5 s is delivered (nothing from before the kill)."""
    cfg = make_config(tmp_path, "agent", tls_broker.port, pki, pty_meter.link, obis_interval="0")
    agent = run_agent(cfg)
    observer.wait_count(2, TOPIC_OBIS, timeout=15)
    agent.signal(signal.SIGKILL)
    assert agent.wait(5) == -signal.SIGKILL
    time.sleep(3.0)
    mark = tls_broker.log_mark()
    t_start = time.monotonic()
    again = run_agent(cfg)
    fresh = observer.wait_for(TOPIC_OBIS, timeout=15, after=t_start)
    time.sleep(3.0)
    after = [m for m in observer.messages if m.t >= t_start and m.topic == TOPIC_OBIS]
    ages = [feed.age(m) for m in after]
    sessions = agent_sessions(tls_broker.log_text()[mark:], pki.client_cn)
    took = fresh.t - t_start
    ok = bool(sessions) and sessions[0][:1] == [TOPIC_EVENT] and max(ages) <= MAX_AGE
    figure(
        fault="11 SIGKILL and restart",
        injected="SIGKILL while publishing, 3 s dead with the meter pushing, restart",
        measured=f"first fresh reading {took:.2f} s after the restart; hello first: "
        f"{bool(sessions) and sessions[0][:1] == [TOPIC_EVENT]}; oldest reading "
        f"{max(ages):.2f} s ({len(ages)} readings)",
        bound="hello first; no reading older than 2.5 s",
        ok=ok,
        max_age_s=round(max(ages), 3),
        start_to_data_s=round(took, 3),
    )
    assert len(sessions) == 1 and sessions[0][0] == TOPIC_EVENT, sessions
    assert max(ages) <= MAX_AGE, sorted(ages)[-5:]
    assert again.proc.poll() is None
    assert "Traceback" not in again.log_text()


# ------------------------------------------------------------------------------ 12
def test_wall_clock_jumps_neither_burst_nor_stall(
    tmp_path, pki, tls_broker, pty_meter, feed, observer, run_agent, figure: Figure
):
    """Fault 12: the agent's wall clock (libfaketime, monotonic left alone) jumps 1 h forward,
    then 2 h back (to 1 h behind). Bound: bridge metrics (interval 2 s) keep arriving 1.5-2.5 s
    apart by the observer's monotonic clock across both jumps, and readings keep flowing (no
    gap over 3.5 s at obis_interval 2), while the metrics' `ts` follows the jumps."""
    assert LIBFAKETIME.exists(), f"{LIBFAKETIME} missing: apt-get install faketime"
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_TIMESTAMP_FILE": str(offset),
    }
    cfg = make_config(
        tmp_path, "agent", tls_broker.port, pki, pty_meter.link, bridge_metric_interval="2"
    )
    agent = run_agent(cfg, env)
    # Measured once the cadence has settled: where the first metrics fall depends on when
    # the first connect happened, not on the clock.
    settled = observer.wait_count(3, TOPIC_BRIDGE_METRIC, timeout=20)[2].t
    mark = settled
    for jump in ("+3600", "-3600"):
        observer.wait_count(2, TOPIC_BRIDGE_METRIC, timeout=10, after=mark + 0.001)
        time.sleep(1.0 + random.random())
        write_atomically(offset, f"{jump}\n".encode(), 0o644)
        mark = time.monotonic()
    time.sleep(7.0)
    end = time.monotonic()
    metrics = [
        m for m in observer.messages if m.topic == TOPIC_BRIDGE_METRIC and settled <= m.t < end
    ]
    obis = [m for m in observer.messages if m.topic == TOPIC_OBIS and settled <= m.t < end]
    gaps = [b.t - a.t for a, b in itertools.pairwise(metrics)]
    obis_gaps = [b.t - a.t for a, b in itertools.pairwise(obis)]
    ts = [json.loads(m.payload)["ts"] for m in metrics]
    steps = [b - a for a, b in itertools.pairwise(ts)]
    jumped = any(3000 < s < 4000 for s in steps) and any(-8000 < s < -6000 for s in steps)
    ok = all(1.5 <= g <= 2.5 for g in gaps) and bool(obis_gaps) and max(obis_gaps) <= 3.5 and jumped
    figure(
        fault="12 wall clock jumps",
        injected="libfaketime: wall clock +1 h, then -2 h (to 1 h behind); "
        "monotonic untouched; bridge_metric_interval 2",
        measured=f"{len(metrics)} metrics, {min(gaps):.2f}-{max(gaps):.2f} s apart; "
        f"readings at most {max(obis_gaps, default=0):.2f} s apart; ts steps {steps}",
        bound="metrics 1.5-2.5 s apart; readings <= 3.5 s apart; ts follows the jumps",
        ok=ok,
        min_gap_s=round(min(gaps), 3),
        max_gap_s=round(max(gaps), 3),
    )
    assert jumped, f"the agent's wall clock did not jump: ts steps {steps}"
    assert all(1.5 <= g <= 2.5 for g in gaps), gaps
    assert obis_gaps and max(obis_gaps) <= 3.5, obis_gaps
    assert agent.proc.poll() is None, agent.log_text()
