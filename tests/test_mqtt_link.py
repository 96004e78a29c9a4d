"""What each way of failing looks like to the link, against real mosquitto on loopback.

In-process (the classification is the link's own logic), but every failure is real: the
broker's TLS alerts, a proxy that closes or resets the connection at each stage of the
handshake (tests/harness/proxy.py), and programming errors injected through the link's own
hooks or a settings object with a wrong type. Nothing stands in for paho or the sockets.

Measured here with mosquitto 2.0.11, OpenSSL 3.0, paho-mqtt 2.2 (TLS 1.3 unless capped):
- a client certificate the broker does not trust, or an expired one: under TLS 1.2 the
  handshake itself fails with the broker's alert; under TLS 1.3 paho's connect() returns and
  the first read gets the alert (TLSV1_ALERT_UNKNOWN_CA, SSLV3_ALERT_CERTIFICATE_EXPIRED);
  never a bare EOF;
- a connection closed or reset during the handshake: connect() raises SSLEOFError or
  ConnectionResetError; closed or reset after it (before CONNACK): the read returns EOF.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import agent.mqtt
from agent.config import MirrorSettings, TibberSettings
from agent.mirror import Mirror
from agent.mqtt import ATTEMPT_BOUND, MAX_LOOP_WAIT, NETWORK_RETRY_CAP, MqttLink
from agent.schedule import Backoff
from agent.state import LinkState, MeterState, Problem
from agent.supervisor import STUCK_AFTER
from agent.tibber.uplink import TibberUplink
from tests.harness.agent import BRIDGE_ID, EUI, UID
from tests.harness.broker import HOST, PlainBroker, TlsBroker
from tests.harness.certs import Pki, expired_client, foreign_ca, foreign_client
from tests.harness.proxy import CuttingProxy


# ------------------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class Change:
    t: float
    state: LinkState
    problem: Problem | None


class Changes:
    """Every state change a link reports (its on_change), with the state it changed to."""

    def __init__(self) -> None:
        self.link: MqttLink | None = None
        self._cond = threading.Condition()
        self.seen: list[Change] = []

    def __call__(self) -> None:
        link = self.link
        assert link is not None
        with self._cond:
            self.seen.append(Change(time.monotonic(), link.state, link.problem))
            self._cond.notify_all()

    def wait(self, match: Callable[[Change], bool], timeout: float) -> Change:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for c in self.seen:
                    if match(c):
                        return c
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such change within {timeout} s; seen: {self.seen}")
                self._cond.wait(left)

    def problems(self, before: float = float("inf")) -> list[Problem]:
        with self._cond:
            return [c.problem for c in self.seen if c.problem is not None and c.t < before]


def tibber_settings(pki: Pki, port: int, **kw: object) -> TibberSettings:
    return TibberSettings(
        mqtt_url=HOST,
        mqtt_port=port,
        uid=UID,
        bridge_id=BRIDGE_ID,
        eui=EUI,
        ca_cert=pki.ca,
        certificate=pki.client_crt,
        private_key=pki.client_key,
        **kw,  # type: ignore[arg-type]
    )


class Tls12Uplink(TibberUplink):
    """The uplink with TLS 1.2 as its highest version (mosquitto's tls_version only sets a
    minimum), so the broker's verdict on the client certificate comes inside the handshake."""

    def tls_context(self) -> ssl.SSLContext:
        ctx = super().tls_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx


Start = Callable[..., tuple[MqttLink, Changes]]


@pytest.fixture
def start_link() -> Iterator[Start]:
    """start_link(make) -> (started link, its Changes); make(on_change) builds the link."""
    links: list[MqttLink] = []

    def start(make: Callable[[Changes], MqttLink]) -> tuple[MqttLink, Changes]:
        changes = Changes()
        link = make(changes)
        changes.link = link
        links.append(link)
        link.start()
        return link, changes

    yield start
    for link in links:
        link.stop(timeout=5.0)


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Exceptions that ended a thread (what the supervisor's excepthook turns into exit 70)."""
    died: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    return died


def is_connected(c: Change) -> bool:
    return c.state is LinkState.CONNECTED


# ------------------------------------------------------------------------------ TLS verdicts
BAD_FILES = {
    # case: (what the problem must say, which files are replaced)
    "foreign_client": "the broker does not trust the client certificate",
    "expired_client": "the broker rejected the client certificate: it has expired",
    "foreign_ca": "does not trust the broker's certificate",
}


@pytest.mark.parametrize("uplink_class", [TibberUplink, Tls12Uplink], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_tls_rejection_is_named_at_the_first_attempt(
    tmp_path: Path,
    pki: Pki,
    tls_broker: TlsBroker,
    start_link: Start,
    case: str,
    uplink_class: type[TibberUplink],
) -> None:
    settings = tibber_settings(pki, tls_broker.port)
    if case == "foreign_client":
        crt, key = foreign_client(tmp_path / "bad")
        settings = replace(settings, certificate=crt, private_key=key)
    elif case == "expired_client":
        crt, key = expired_client(pki)
        settings = replace(settings, certificate=crt, private_key=key)
    else:
        settings = replace(settings, ca_cert=foreign_ca(tmp_path / "bad"))
    link, changes = start_link(lambda ch: uplink_class(settings, MeterState(), on_change=ch))
    first = changes.wait(lambda c: c.problem is not None, timeout=5)
    assert first.state is LinkState.REJECTED, first
    assert first.problem is not None and BAD_FILES[case] in first.problem.text, first
    time.sleep(2.0)  # a second attempt (0.5-1 s later) says the same
    assert {p for p in changes.problems()} == {first.problem}, changes.seen
    assert link.connects == 0


# ------------------------------------------------------------------------------ network cuts
CUTS = {
    "fin": "the broker reads the ClientHello and closes (FIN)",
    "rst": "reset before any byte",
    "cut_fin": "closed in the middle of the handshake",
    "cut_rst": "reset in the middle of the handshake",
    "tls_fin": "closed after the handshake, before CONNACK (TCP FIN)",
    "tls_notify": "closed after the handshake, before CONNACK (TLS close_notify)",
    "tls_rst": "reset after the handshake, before CONNACK",
}


@pytest.mark.parametrize("fault", list(CUTS))
def test_a_connection_cut_before_connack_is_a_network_problem(
    pki: Pki, tls_broker: TlsBroker, start_link: Start, fault: str
) -> None:
    """One attempt cut by the network (CUTS[fault]), then the path works: the problem is
    'connecting' (double flash on the LED, short backoff), never 'rejected', and the link is
    connected within the network retry cap."""
    with CuttingProxy(
        tls_broker.port, [fault], ca=pki.ca, certfile=pki.server_crt, keyfile=pki.server_key
    ) as proxy:
        settings = tibber_settings(pki, proxy.port)
        _, changes = start_link(lambda ch: TibberUplink(settings, MeterState(), on_change=ch))
        connected = changes.wait(is_connected, timeout=NETWORK_RETRY_CAP + 2)
        cut = proxy.events(f"accepted {fault}")
        assert len(cut) == 1, proxy.log
        problems = changes.problems(before=connected.t)
        assert problems, f"the cut went unreported: {changes.seen}"
        assert all(p.state is LinkState.CONNECTING for p in problems), problems
        for p in problems:
            assert "certificate" not in p.text and "reject" not in p.text, p
        assert connected.t - cut[0] <= NETWORK_RETRY_CAP, (connected.t - cut[0], proxy.log)


def test_a_close_after_the_handshake_every_time_becomes_probably_rejected(
    pki: Pki, tls_broker: TlsBroker, start_link: Start
) -> None:
    """AWS IoT closes the connection without a CONNACK when the policy does not allow the
    client (reported; see SILENT_CLOSES_BEFORE_ALARM in agent/mqtt.py): the same as a
    network cut after the handshake, except that it happens every time. Never said at the
    first close; said after several in a row; gone as soon as the broker accepts."""
    with CuttingProxy(
        tls_broker.port,
        ["tls_fin"] * 20,
        ca=pki.ca,
        certfile=pki.server_crt,
        keyfile=pki.server_key,
    ) as proxy:
        settings = tibber_settings(pki, proxy.port)
        link, changes = start_link(lambda ch: TibberUplink(settings, MeterState(), on_change=ch))
        first = changes.wait(lambda c: c.problem is not None, timeout=5)
        assert first.state is LinkState.CONNECTING, first
        rejected = changes.wait(lambda c: c.state is LinkState.REJECTED, timeout=30)
        closes = proxy.events("accepted tls_fin")
        before = [t for t in closes if t < rejected.t]
        assert len(before) == agent.mqtt.SILENT_CLOSES_BEFORE_ALARM, (before, changes.seen)
        assert all(p.state is LinkState.CONNECTING for p in changes.problems(before=rejected.t))
        assert rejected.problem is not None and "probably" in rejected.problem.text
        proxy.replan([])  # the broker accepts from now on
        t_fix = time.monotonic()
        connected = changes.wait(is_connected, timeout=70)
        # Backing off like any rejection: at most one step (<= 16 s after 5 failures).
        assert connected.t - t_fix <= 16.0, connected.t - t_fix
        assert link.problem is None


def test_a_connack_refusal_is_a_rejection_on_the_mirror_too(
    tmp_path: Path, start_link: Start
) -> None:
    """A local broker that refuses the mirror's login answers with a CONNACK 'not
    authorized': the broker's own verdict, not 'unreachable'."""
    with PlainBroker(tmp_path / "strict", extra_config=("allow_anonymous false",)) as broker:
        settings = MirrorSettings(
            enabled=True, host=HOST, port=broker.port, username="user", password="wrong"
        )
        _, changes = start_link(lambda ch: Mirror(settings, "mirror", on_change=ch))
        first = changes.wait(lambda c: c.problem is not None, timeout=5)
        assert first.state is LinkState.REJECTED, first
        assert first.problem is not None and "Not authorized" in first.problem.text, first


def test_a_mirror_ca_that_does_not_trust_its_broker_is_named(
    tmp_path: Path, tls_broker: TlsBroker, start_link: Start
) -> None:
    """[mirror] ca_cert that did not sign the local broker's certificate: the mirror says so
    (a fix for the user), not 'unreachable' (a network problem to wait out)."""
    ca = foreign_ca(tmp_path / "other")
    settings = MirrorSettings(enabled=True, host=HOST, port=tls_broker.port, ca_cert=ca)
    _, changes = start_link(lambda ch: Mirror(settings, "mirror", on_change=ch))
    first = changes.wait(lambda c: c.problem is not None, timeout=5)
    assert first.state is LinkState.REJECTED, first
    assert first.problem is not None
    assert f"ca_cert {ca} does not trust the broker's certificate" in first.problem.text, first


# ------------------------------------------------------------------------------ liveness
class SlowRetryUplink(TibberUplink):
    """The uplink as after a few rejections in the field: the next try 15-30 s away."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._backoff = Backoff(base=30.0, cap=60.0)


def test_a_long_backoff_is_not_a_stuck_thread(
    tmp_path: Path, pki: Pki, tls_broker: TlsBroker, start_link: Start
) -> None:
    """A rejected link waits up to a minute between tries. The supervisor withholds the
    watchdog ping from a thread whose heartbeat is STUCK_AFTER old, so a wait that long
    without one got a rejected (or kicked) agent killed by systemd, and after five such
    restarts the unit stayed failed: a human needed. The wait now stamps the heartbeat."""
    crt, key = foreign_client(tmp_path / "bad")
    settings = replace(tibber_settings(pki, tls_broker.port), certificate=crt, private_key=key)
    link, changes = start_link(lambda ch: SlowRetryUplink(settings, MeterState(), on_change=ch))
    changes.wait(lambda c: c.state is LinkState.REJECTED, timeout=5)
    worst = 0.0
    deadline = time.monotonic() + 14.0  # inside the first wait (>= 15 s)
    while time.monotonic() < deadline:
        now = time.monotonic()
        worst = max(worst, now - link.heartbeat)
        assert not link.stuck(now, STUCK_AFTER), now - link.heartbeat
        time.sleep(0.1)
    assert link.state is LinkState.REJECTED
    assert worst <= MAX_LOOP_WAIT + 1.0, worst


def test_a_connection_attempt_may_block_up_to_its_declared_bound() -> None:
    """A broker that drops SYNs (a firewall; here a listener whose queue is full) holds
    connect() for connect_timeout per address: longer than a heartbeat may be old, so the
    attempt declares how long it may take, and the link is not stuck meanwhile."""
    listener = socket.create_server((HOST, 0), backlog=0)
    fill = []
    for _ in range(3):  # fill the accept queue: later SYNs are dropped
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(listener.getsockname())
        fill.append(c)
    link = Mirror(MirrorSettings(enabled=True, host=HOST, port=listener.getsockname()[1]), "m")
    link.connect_timeout = 6.0
    link.start()
    try:
        deadline = time.monotonic() + 3
        while link.busy_until == 0.0:
            assert time.monotonic() < deadline, "no connection attempt"
            time.sleep(0.01)
        time.sleep(4.0)
        now = time.monotonic()
        assert now - link.heartbeat > 3.0  # blocked in connect() all along
        assert not link.stuck(now, 3.0)  # ...and that is not being stuck
        assert link.busy_until - now >= ATTEMPT_BOUND - 10
    finally:
        link.stop(timeout=10)
        for c in fill:
            c.close()
        listener.close()


# ------------------------------------------------------------------------------ bugs
def test_a_bug_in_the_link_ends_its_thread_instead_of_posing_as_a_rejection(
    pki: Pki,
    tls_broker: TlsBroker,
    plain_broker: PlainBroker,
    start_link: Start,
    thread_deaths: list[threading.ExceptHookArgs],
) -> None:
    """A settings object with a wrong type reaches paho (as a bug in the agent would): the
    link's thread dies with that error (the supervisor then exits 70 and systemd restarts
    the service), and the state never says 'rejected' (which would blink 'needs you')."""
    uplink_settings = replace(tibber_settings(pki, tls_broker.port), keepalive="60")
    uplink, uplink_changes = start_link(
        lambda ch: TibberUplink(uplink_settings, MeterState(), on_change=ch)
    )
    mirror_settings = MirrorSettings(enabled=True, host=HOST, port=plain_broker.port, username=123)  # type: ignore[arg-type]
    mirror, mirror_changes = start_link(lambda ch: Mirror(mirror_settings, "mirror", on_change=ch))
    deadline = time.monotonic() + 5.0
    while (uplink.alive or mirror.alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not uplink.alive and not mirror.alive, (uplink_changes.seen, mirror_changes.seen)
    died = {(a.thread.name if a.thread else "?"): a.exc_type for a in thread_deaths}
    assert died == {"tibber": TypeError, "mirror": AttributeError}, thread_deaths
    for changes in (uplink_changes, mirror_changes):
        assert all(c.state is not LinkState.REJECTED for c in changes.seen), changes.seen


def test_a_bug_in_a_hook_after_connack_ends_the_thread(
    pki: Pki,
    tls_broker: TlsBroker,
    start_link: Start,
    thread_deaths: list[threading.ExceptHookArgs],
) -> None:
    """on_session runs inside paho's CONNACK callback; paho re-raises what it raises."""

    class Broken(TibberUplink):
        def on_session(self, client: object) -> None:
            raise KeyError("a bug in the hello")

    settings = tibber_settings(pki, tls_broker.port)
    link, changes = start_link(lambda ch: Broken(settings, MeterState(), on_change=ch))
    deadline = time.monotonic() + 5.0
    while link.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not link.alive, changes.seen
    assert [a.exc_type for a in thread_deaths] == [KeyError], thread_deaths
    assert all(c.state is not LinkState.REJECTED for c in changes.seen), changes.seen


# ------------------------------------------------------------------------------ publishing
def test_publishing_from_another_thread_while_acks_arrive_never_deadlocks(
    tls_broker: TlsBroker, pki: Pki, start_link: Start
) -> None:
    """The meter thread publishes while the network thread handles PUBACKs. paho calls
    on_publish holding its own message lock, and publish() takes that lock too: a link
    lock held across both, in opposite order, deadlocks the two threads (seen as an agent
    that stops sending for good until the watchdog restarts it). A publisher as fast as it
    can be makes PUBACKs arrive during publish() thousands of times."""
    meter = MeterState()
    link, changes = start_link(
        lambda c: TibberUplink(tibber_settings(pki, tls_broker.port), meter, on_change=c)
    )
    changes.wait(is_connected, timeout=10)
    sent = 0
    done = threading.Event()

    def hammer() -> None:
        nonlocal sent
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            if link.publish("$aws/rules/test/hammer", b"x" * 300, 1):
                sent += 1
        done.set()

    publisher = threading.Thread(target=hammer, name="publisher", daemon=True)
    publisher.start()
    assert done.wait(15), f"the publisher hung after {sent} messages (deadlock)"
    # The link keeps moving: a last message is written and acknowledged.
    before = link.heartbeat
    deadline = time.monotonic() + 5
    while not link.publish("$aws/rules/test/hammer", b"last", 1):
        assert time.monotonic() < deadline, "the link stalled after the burst"
        time.sleep(0.05)
    assert sent > 500, sent
    assert link.heartbeat >= before
