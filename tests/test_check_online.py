"""`tibber-agent check` proves the credentials: one connection to the broker as the agent
makes it, one line naming the outcome, and an exit status per kind of outcome:
0 connected, 69 unreachable (EX_UNAVAILABLE), 77 rejected (EX_NOPERM), 78 config (EX_CONFIG).

The agent runs as a process (`python -m agent -c … check`) against the real TLS mosquitto
(client certificates, like AWS IoT), with every failure made for real: a name that does not
resolve (RFC 6761: .invalid never does), a port nothing listens on, a frozen broker, a
network namespace whose loopback is down, certificates from a foreign CA, expired or
revoked, a server certificate for another name, a certificate without the CN mosquitto
takes as user name, a proxy that closes after the handshake, and a TLS server that never
sends a CONNACK. What the broker saw is read from its log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent.tibber.probe import running_agents
from tests.conftest import MakeAgent, NotProven
from tests.harness.agent import BRIDGE_ID, EUI, AgentConfig
from tests.harness.broker import TlsBroker, free_port
from tests.harness.certs import Pki, expired_client, foreign_ca, foreign_client, mismatched_key
from tests.harness.mqtt_tls_server import MqttTlsServer
from tests.harness.netns import PrivateNetwork, Unavailable
from tests.harness.paths import REPO_ROOT
from tests.harness.proxy import CuttingProxy

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
ENV.pop("JOURNAL_STREAM", None)
OTHER_AGENT = "tibber-agent: warning: an agent is running here ("
THROWN_OFF = (
    "whoever uses this id, the Tibber bridge or a running agent, is thrown off the broker "
    "for a moment"
)


# `python -m agent` with an audit hook that reports every socket connect the process itself
# makes (sys.addaudithook, "socket.connect"): what `check` connects to is then known from the
# process, not guessed from a broker's log, where any other process on the machine (another
# test's agent retrying a port that was since given to this test's broker) may show up.
AUDITED = (
    "import runpy, sys\n"
    "def hook(event, args):\n"
    "    if event == 'socket.connect':\n"
    "        print('AUDIT connect', repr(args[1]), file=sys.stderr, flush=True)\n"
    "sys.addaudithook(hook)\n"
    "sys.argv[0] = 'agent'\n"
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)\n"
)
AUDIT = "AUDIT connect "


@dataclass(frozen=True)
class Checked:
    code: int
    out: list[str]
    err: list[str]  # without warnings about agents other tests run on this machine
    warnings: list[str]
    seconds: float
    connects: list[str]  # every address the process connected a socket to


# What `check` says about meters other than the eBZ DD3 (issue 8: so a user knows what to ask).
NOTE = (
    "  note: Tibber reportedly shows data only for meters it supports for your account "
    "(a Logarex stream was accepted but never shown); with a meter other than an eBZ "
    "DD3, ask Tibber whether the Pulse supports it"
)


def run_check(
    path: Path, *args: str, wrap: Callable[[list[str]], list[str]] = lambda a: a
) -> Checked:
    argv = wrap([sys.executable, "-c", AUDITED, "-c", str(path), "check", *args])
    t0 = time.monotonic()
    r = subprocess.run(
        argv, capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=30, check=False
    )
    seconds = time.monotonic() - t0
    err = [line for line in r.stderr.splitlines() if not line.startswith(AUDIT)]
    return Checked(
        r.returncode,
        r.stdout.splitlines(),
        [line for line in err if not line.startswith(OTHER_AGENT)],
        [line for line in err if line.startswith(OTHER_AGENT)],
        seconds,
        [line[len(AUDIT) :] for line in r.stderr.splitlines() if line.startswith(AUDIT)],
    )


@pytest.fixture
def config(agent_config: AgentConfig, tmp_path: Path) -> AgentConfig:
    """The agent's config against tls_broker, with a meter port that exists (so the
    connection is all `check` can find wrong)."""
    head = tmp_path / "ttyIR-present"
    head.touch()
    agent_config.meter_port = str(head)
    return agent_config


def new_connections(broker: TlsBroker, since: int) -> list[str]:
    return re.findall(r"New connection from \S+ on port", broker.log_text()[since:])


def assert_no_connect_attempt(r: Checked, broker: TlsBroker) -> None:
    """`check` tried to connect no socket to the broker's port: its own audit hook says so
    (test_check_connects_as_the_bridge_... shows the hook sees the connect it makes)."""
    to_broker = [c for c in r.connects if c.endswith(f", {broker.port})")]
    assert to_broker == [], r.connects


def assert_broker_saw_nothing(broker: TlsBroker, since: int) -> None:
    """Where `check` tries but cannot get through (no route, a black hole), the broker's
    own log is the truth: no connection reached it."""
    time.sleep(0.3)  # the process has ended; the broker logs an accept at once
    assert new_connections(broker, since) == [], broker.log_text()[since:]


# ------------------------------------------------------------------------------ connected
def test_check_connects_as_the_bridge_disconnects_and_publishes_nothing(
    config: AgentConfig, tls_broker: TlsBroker
) -> None:
    path = config.write()
    mark = tls_broker.log_mark()
    r = run_check(path)
    port = tls_broker.port
    assert r.code == 0, r
    assert r.err == [], r
    assert [c for c in r.connects if c.endswith(f", {port})")], r.connects  # the hook sees it
    assert r.out[:4] == [
        f"{path}: ok",
        f"  [meter] {config.meter_port}, protocol auto, node {EUI}",
        NOTE,
        f"connecting to localhost:{port} as {BRIDGE_ID} (--offline skips this): {THROWN_OFF}",
    ], r.out
    assert len(r.out) == 5, r.out
    took = re.fullmatch(
        rf"Tibber connected: localhost:{port} accepted client id {BRIDGE_ID} in (\d+\.\d\d) s "
        r"\(disconnected again; nothing published\)",
        r.out[4],
    )
    assert took, r.out[4]
    assert 0 < float(took[1]) < r.seconds, (took[1], r.seconds)
    # The broker's view: the bridge's id, MQTT 3.1.1 (p2), clean session (c1), the agent's
    # keepalive, the client certificate's CN; then DISCONNECT, and nothing in between.
    tls_broker.wait_for_log(rf"Received DISCONNECT from {BRIDGE_ID}$", timeout=5, since=mark)
    log = tls_broker.log_text()[mark:]
    connected = re.findall(rf"New client connected from \S+ as {BRIDGE_ID} \((.*)\)\.", log)
    assert connected == ["p2, c1, k60, u'tibber-bridge-test'"], log
    assert tls_broker.received_publishes(BRIDGE_ID, since=mark) == [], log
    assert f"Received SUBSCRIBE from {BRIDGE_ID}" not in log, log


def test_check_offline_makes_no_connection(config: AgentConfig, tls_broker: TlsBroker) -> None:
    path = config.write()
    r = run_check(path, "--offline")
    assert r.connects == [], r.connects  # no socket at all
    assert (r.code, r.err) == (0, []), r
    assert r.out == [
        f"{path}: ok (the connection to Tibber not tried: --offline)",
        f"  [meter] {config.meter_port}, protocol auto, node {EUI}",
        NOTE,
    ], r.out
    assert_no_connect_attempt(r, tls_broker)


def test_a_missing_ir_head_does_not_stop_the_connection_test_but_exits_78(
    config: AgentConfig, tls_broker: TlsBroker, tmp_path: Path
) -> None:
    """The credentials' verdict is worth having before the head is plugged in; the exit
    status still says the config is not ready (78)."""
    config.meter_port = str(tmp_path / "not-plugged")
    path = config.write()
    r = run_check(path)
    assert r.code == 78, r
    assert r.err == [
        f"tibber-agent: {path}: [meter] port: {tmp_path / 'not-plugged'} does not exist "
        "(is the IR head plugged in?)"
    ], r
    assert r.out[-1].startswith(f"Tibber connected: localhost:{tls_broker.port} "), r.out


def test_check_throws_a_running_agent_off_for_a_moment_and_says_so(
    config: AgentConfig, tls_broker: TlsBroker, start_agent: MakeAgent
) -> None:
    agent = start_agent("run")
    tls_broker.wait_for_log(rf"New client connected from \S+ as {BRIDGE_ID} ", timeout=10)
    mark = tls_broker.log_mark()
    r = run_check(config.path)
    assert r.code == 0, r
    ours = [w for w in r.warnings if w.startswith(f"{OTHER_AGENT}pid {agent.pid} (")]
    assert len(ours) == 1, r.warnings
    assert ours[0].endswith(
        " run)): if it uses this id, it is thrown off the broker for a moment and reconnects "
        "by itself"
    ), ours
    # The broker keeps the newest connection of a client id: the agent is thrown off by
    # check's CONNECT, and comes back by itself.
    tls_broker.wait_for_log(
        rf"Client {BRIDGE_ID} already connected, closing old connection", timeout=5, since=mark
    )
    deadline = time.monotonic() + 10
    pattern = rf"New client connected from \S+ as {BRIDGE_ID} "
    while len(re.findall(pattern, tls_broker.log_text()[mark:])) < 2:
        assert time.monotonic() < deadline, tls_broker.log_text()[mark:]
        time.sleep(0.05)
    assert agent.proc is not None and agent.proc.poll() is None


def test_running_agents_are_found_by_their_command_line(tmp_path: Path) -> None:
    """The forms an agent runs in (the unit's console script, `python -m agent`), and what
    is not one: `check` itself, other commands, other programs, this process."""
    cmdlines = {
        "101": ["/opt/tibber-agent/bin/python3", "/opt/tibber-agent/bin/tibber-agent", "-c",
                "/etc/tibber-agent/config.ini", "run"],
        "102": ["/usr/bin/python3", "-m", "agent", "-c", "/tmp/x/config.ini", "run"],
        "103": ["/opt/tibber-agent/bin/python3", "/opt/tibber-agent/bin/tibber-agent", "check"],
        "104": ["/usr/bin/python3", "-m", "agent", "monitor"],
        "105": ["/usr/bin/vim", "run"],
        "106": ["/usr/bin/python3", "-m", "agent", "run"],  # this process, say
    }  # fmt: skip
    for pid, argv in cmdlines.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "107").mkdir()  # a process that ended while /proc was read: no cmdline
    (tmp_path / "self").mkdir()
    found = sorted(running_agents(own_pid=106, proc=tmp_path))
    assert found == [
        "pid 101 (/opt/tibber-agent/bin/python3 /opt/tibber-agent/bin/tibber-agent -c "
        "/etc/tibber-agent/config.ini run)",
        "pid 102 (/usr/bin/python3 -m agent -c /tmp/x/config.ini run)",
    ]


# ------------------------------------------------------------------------------ each failure
@dataclass(frozen=True)
class Setup:
    """What a case changed: the config's [tibber] keys, a port to use, check's arguments."""

    tibber: dict[str, str] = dataclasses.field(default_factory=dict)
    args: tuple[str, ...] = ()
    wrap: Callable[[list[str]], list[str]] = lambda a: a


@dataclass(frozen=True)
class Case:
    name: str
    code: int
    line: str  # the exact stderr line; {port}, {path}, {dir} are filled in
    setup: Callable[[Path, Pki, TlsBroker, contextlib.ExitStack, NotProven], Setup]
    broker_sees_nothing: bool = False  # and the broker's log proves it


def _dns(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np: NotProven):
    return Setup({"mqtt_url": "no-such-host.invalid"})


def _refused(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np: NotProven):
    return Setup({"mqtt_port": str(free_port())})


def _frozen(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np: NotProven):
    broker.freeze()  # TCP still accepted by the kernel; the TLS handshake never answered
    stack.callback(broker.thaw)
    return Setup(args=("--timeout", "2"))


def _no_route(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np: NotProven):
    try:
        net = stack.enter_context(PrivateNetwork(loopback_up=False))
    except Unavailable as e:
        np(str(e))
    return Setup(wrap=net.argv)


def _foreign_ca(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    return Setup({"ca_cert": str(foreign_ca(tmp / "bad"))})


def _other_name(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    """A broker whose certificate (from the right CA) is for 127.0.0.1 only."""
    leaf = pki.authority.issue_cert("127.0.0.1")
    crt, key = tmp / "ip-only.crt", tmp / "ip-only.key"
    crt.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    other = stack.enter_context(
        TlsBroker(tmp / "broker-ip-only", dataclasses.replace(pki, server_crt=crt, server_key=key))
    )
    return Setup({"mqtt_port": str(other.port)})


def _client(make: Callable[[Path, Pki], tuple[Path, Path]]):
    def setup(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
        crt, key = make(tmp, pki)
        return Setup({"certificate": str(crt), "private_key": str(key)})

    return setup


def _revoked(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    """The broker's own client certificate, on its CA's revocation list (mosquitto crlfile)."""
    crl = tmp / "revoked.crl"
    crl.write_bytes(_crl(pki.authority, [pki.client_crt]))
    strict = stack.enter_context(
        TlsBroker(tmp / "broker-crl", pki, extra_config=(f"crlfile {crl}",))
    )
    return Setup({"mqtt_port": str(strict.port)})


def _no_cn(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    """A certificate from the right CA without a CN: mosquitto's use_identity_as_username
    has no user name to take, and refuses in its CONNACK."""
    leaf = pki.authority.issue_cert("no-cn.example")
    crt, key = tmp / "no-cn.crt", tmp / "no-cn.key"
    crt.write_bytes(leaf.cert_chain_pems[0].bytes())
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return Setup({"certificate": str(crt), "private_key": str(key)})


def _mismatched_key(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    return Setup({"private_key": str(mismatched_key(tmp / "bad"))})


def _closed(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    proxy = stack.enter_context(
        CuttingProxy(
            broker.port, ["tls_fin"], ca=pki.ca, certfile=pki.server_crt, keyfile=pki.server_key
        )
    )
    return Setup({"mqtt_port": str(proxy.port)})


def _silent(tmp: Path, pki: Pki, broker: TlsBroker, stack: contextlib.ExitStack, np):
    server = stack.enter_context(MqttTlsServer(pki, answer="silent"))
    return Setup({"mqtt_port": str(server.port)}, args=("--timeout", "2"))


def _crl(ca: trustme.CA, revoked: list[Path]) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for path in revoked:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


UNREACHABLE, REJECTED = "tibber-agent: Tibber unreachable: ", "tibber-agent: Tibber rejected: "
CASES = [
    Case("dns", 69, UNREACHABLE + "cannot resolve no-such-host.invalid (DNS)", _dns),
    Case("refused", 69, UNREACHABLE + "localhost:{port} refused the connection", _refused),
    Case(
        "timed out",
        69,
        UNREACHABLE + "localhost:{port} timed out (no connection within 2 s)",
        _frozen,
    ),
    Case(
        "unreachable",
        69,
        UNREACHABLE + "localhost:{port} unreachable (Network is unreachable)",
        _no_route,
        broker_sees_nothing=True,
    ),
    Case(
        "CA mismatch",
        77,
        REJECTED + "ca_cert {dir}/bad/foreign-ca.pem does not trust the broker's certificate "
        "(self-signed certificate in certificate chain)",
        _foreign_ca,
    ),
    Case(
        "name mismatch",
        77,
        REJECTED + "the broker's certificate is not valid for mqtt_url localhost "
        "(Hostname mismatch, certificate is not valid for 'localhost'.)",
        _other_name,
    ),
    Case(
        "client certificate from another CA",
        77,
        REJECTED + "the broker does not trust the client certificate (unknown CA)",
        _client(lambda tmp, pki: foreign_client(tmp / "bad")),
    ),
    Case(
        "client certificate expired",
        77,
        REJECTED + "the broker rejected the client certificate: it has expired",
        _client(lambda tmp, pki: expired_client(pki)),
    ),
    Case(
        "client certificate revoked",
        77,
        REJECTED + "the client certificate has been revoked",
        _revoked,
    ),
    Case(
        "CONNACK refused",
        77,
        REJECTED + "the broker refused the connection: Bad user name or password",
        _no_cn,
    ),
    Case(
        "key does not belong to the certificate",
        78,
        "tibber-agent: {path}: [tibber] private_key: {dir}/bad/mismatched.key does not belong "
        "to {dir}/agent/certificate.pem",
        _mismatched_key,
        broker_sees_nothing=True,
    ),
    Case(
        "closed before CONNACK",
        69,
        UNREACHABLE + "localhost:{port} closed the connection before accepting it: a flaky "
        "path does that now and then; AWS IoT is reported to do it when its policy refuses this "
        "certificate or client id (run check again)",
        _closed,
    ),
    Case(
        "no CONNACK",
        69,
        UNREACHABLE + "localhost:{port} completed the TLS handshake but sent no CONNACK within 2 s",
        _silent,
    ),
]


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_outcome_is_one_line_and_its_exit_status(
    tmp_path: Path,
    pki: Pki,
    tls_broker: TlsBroker,
    config: AgentConfig,
    stack: contextlib.ExitStack,
    not_proven: NotProven,
    case: Case,
) -> None:
    setup = case.setup(tmp_path, pki, tls_broker, stack, not_proven)
    config.tibber.update(setup.tibber)
    path = config.write()
    port = setup.tibber.get("mqtt_port", str(tls_broker.port))
    mark = tls_broker.log_mark()
    r = run_check(path, *setup.args, wrap=setup.wrap)
    want = case.line.format(port=port, path=path, dir=tmp_path)
    assert (r.code, r.err) == (case.code, [want]), r
    assert "PRIVATE KEY" not in "\n".join(r.out + r.err)
    if case.code != 78:  # the config was fine: it said so, then tried
        assert r.out[0] == f"{path}: ok", r.out
    timeout = float(setup.args[1]) if setup.args[:1] == ("--timeout",) else 10.0
    assert r.seconds < timeout + 5, r.seconds  # python's start included
    if "--timeout" in setup.args:
        assert r.seconds >= timeout, r.seconds  # the deadline, not an error, ended it
    if case.broker_sees_nothing:
        assert_broker_saw_nothing(tls_broker, mark)


def test_the_timeout_must_be_seconds(config: AgentConfig) -> None:
    for bad in ("0", "-1", "soon", "nan", "3601"):
        r = run_check(config.write(), "--timeout", bad)
        assert r.code == 2, r  # argparse's usage error
        assert "argument --timeout: must be seconds between 0 and 3600" in r.err[-1], r.err
