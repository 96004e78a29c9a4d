"""Real mosquitto processes on 127.0.0.1: a TLS broker (Tibber/AWS IoT stand-in) and a plain one."""

from __future__ import annotations

import getpass
import re
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .certs import Pki

__all__ = [
    "HOST",
    "BrokerError",
    "PlainBroker",
    "ReceivedPublish",
    "TlsBroker",
    "free_port",
    "parse_received_publish",
    "received_publishes",
]

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0


class BrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class ReceivedPublish:
    """One `Received PUBLISH` line of mosquitto's log: the flags as the sender sent them.

    A subscriber cannot see these: the QoS it gets is capped by its own subscription, and
    MQTT 3.1.1 clears the retain flag on live delivery. Only the broker's log shows them.
    """

    client_id: str
    dup: bool
    qos: int
    retain: bool
    mid: int
    topic: str
    size: int  # payload bytes


# e.g. "Received PUBLISH from 0a1b2c3d4e5f6 (d0, q1, r0, m3, '$aws/rules/...', ... (366 bytes))"
_RECEIVED_PUBLISH = re.compile(
    r"Received PUBLISH from (\S+) \(d([01]), q([0-2]), r([01]), m(\d+), '(.*)', "
    r"\.\.\. \((\d+) bytes\)\)$"
)


def parse_received_publish(line: str) -> ReceivedPublish | None:
    m = _RECEIVED_PUBLISH.search(line)
    if m is None:
        return None
    client, dup, qos, retain, mid, topic, size = m.groups()
    return ReceivedPublish(client, dup == "1", int(qos), retain == "1", int(mid), topic, int(size))


def received_publishes(log: str, client_id: str | None = None) -> list[ReceivedPublish]:
    """Every PUBLISH the broker received (from client_id, if given), in log order."""
    found = (parse_received_publish(line) for line in log.splitlines())
    return [p for p in found if p is not None and client_id in (None, p.client_id)]


# include/net/tcp_states.h, as /proc/net/tcp prints them
_TCP_STATES = {"01": "ESTABLISHED", "07": "CLOSE", "08": "CLOSE_WAIT"}


def free_port() -> int:
    """Let the kernel pick a free port; the tiny reuse race is handled by a retry in start()."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _Broker:
    name = "broker"

    def __init__(self, workdir: Path, *, extra_config: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.extra_config = extra_config
        self.conf_path = workdir / f"{self.name}.conf"
        self.log_path = workdir / f"{self.name}.log"
        self.log_path.touch()
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    # -- subclass hooks --------------------------------------------------------------------
    def _listener_lines(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> int:
        """Raise OSError unless the broker is accepting clients; return the probe's local port."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            # As root mosquitto drops to user 'mosquitto' before reading certs, and pytest's
            # 0700 tmp dirs and 0600 keys would be unreadable: stay the current user.
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "persistence false",
            # stdout is block-buffered; stderr shows lines as they happen.
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            f"listener {self.port} {HOST}",
            *self._listener_lines(),
            *self.extra_config,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            raise BrokerError(f"{self.name} already running (pid {self.pid})")
        for _attempt in range(3):
            mark = len(self.log_text())
            try:
                self._spawn_and_wait(timeout)
                return self
            except BrokerError:
                # A port taken between free_port() and bind: pick another, unless restarting
                # (restart() must keep the port, so it calls _spawn_and_wait directly).
                if "Address already in use" not in self.log_text()[mark:]:
                    raise
                self.port = free_port()
        raise BrokerError(f"{self.name}: no free port after 3 attempts\n{self.log_text()}")

    def _spawn_and_wait(self, timeout: float) -> None:
        self._write_config()
        mark = len(self.log_text()) if self.log_path.exists() else 0
        with self.log_path.open("ab") as logf:  # append: the log spans restarts
            self._proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not hit the broker first
            )
        self._frozen = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise BrokerError(
                    f"{self.name} exited with {rc} during startup:\n{self.log_text()}"
                )
            try:
                probe_port = self._probe()
            except OSError:
                time.sleep(0.01)
                continue
            # The broker logs the probe's connection and its close when it gets to them, which
            # can be after the probe returns: wait for both, or a test's log mark taken next
            # would count the probe as a client of its own (CI saw exactly that). A broker
            # that refuses the probe's certificate (a CRL) logs one line, without the port.
            self.wait_for_log(
                rf"New connection from {re.escape(HOST)}:{probe_port} on port {self.port}\.\n"
                r"(?:.*\n)*?.*Client <unknown> (?:closed its connection|disconnected)"
                rf"|Client connection from {re.escape(HOST)} failed: ",
                timeout=max(deadline - time.monotonic(), 1.0),
                since=mark,
            )
            return
        self.kill()
        raise BrokerError(f"{self.name} not ready after {timeout} s:\n{self.log_text()}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 5 s. Returns the exit code (None if not running)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if self._frozen:
                proc.send_signal(signal.SIGCONT)  # a stopped process never handles SIGTERM
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_GRACE_S)
        self._proc, self._frozen = None, False
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: a crash, no goodbye to clients."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_GRACE_S)
        self._proc, self._frozen = None, False
        return proc.returncode

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open but nothing answers (half-open broker)."""
        if not self.running or self._proc is None:
            raise BrokerError(f"{self.name} not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
        self._frozen = False

    def restart(self, *, kill: bool = False, timeout: float = 10.0) -> Self:
        """Stop (or kill) and start again on the SAME port; subscriptions are gone."""
        if kill:
            self.kill()
        else:
            self.stop()
        self._spawn_and_wait(timeout)
        return self

    # -- log ----------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_mark(self) -> int:
        """Current log length; pass as since= to wait_for_log to ignore older lines."""
        return len(self.log_text())

    def wait_for_log(self, regex: str, timeout: float = 10.0, *, since: int = 0) -> re.Match[str]:
        pattern = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            m = pattern.search(text, since)
            if m:
                return m
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: /{regex}/ not in log after {timeout} s:\n{text[since:]}"
                )
            time.sleep(0.01)

    def received_publishes(
        self, client_id: str | None = None, *, since: int = 0
    ) -> list[ReceivedPublish]:
        """PUBLISHes received (from client_id), from log offset `since` on."""
        return received_publishes(self.log_text()[since:], client_id)

    def pubacks_sent(self, client_id: str, *, since: int = 0) -> list[int]:
        """Message ids the broker acknowledged to client_id (QoS 1 PUBACKs), in order."""
        pattern = re.compile(rf"Sending PUBACK to {re.escape(client_id)} \(m(\d+), ")
        return [int(m[1]) for m in pattern.finditer(self.log_text()[since:])]

    # -- the kernel's view of a client's connection ------------------------------------------
    def client_port(self, client_id: str) -> int:
        """The source port of client_id's latest connection, from the log."""
        found = re.findall(
            rf"New client connected from [\d.]+:(\d+) as {re.escape(client_id)} ",
            self.log_text(),
        )
        if not found:
            raise BrokerError(f"{self.name}: {client_id} never connected")
        return int(found[-1])

    def unread_bytes(self, client_port: int) -> int:
        """Bytes a client sent on its connection that the broker has not read yet (the
        rx_queue of the broker's end in /proc/net/tcp). Non-zero while the broker is frozen
        means something the client wrote, e.g. a PUBLISH, is waiting for it."""
        return self._tcp_entry(client_port)[1]

    def tcp_state(self, client_port: int) -> str:
        """The kernel's state of the broker's end of that connection: ESTABLISHED, or
        CLOSE_WAIT once the client closed it with a FIN (CLOSE after a reset)."""
        return _TCP_STATES.get(self._tcp_entry(client_port)[0], "other")

    def _tcp_entry(self, client_port: int) -> tuple[str, int]:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote, state, queues = line.split()[1:5]
            if state == "06":  # TIME_WAIT: an earlier connection that reused the port
                continue
            ports = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if ports == (self.port, client_port):
                return state, int(queues.split(":")[1], 16)
        raise BrokerError(f"{self.name}: no connection from port {client_port}")

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {HOST}:{self.port} pid={self.pid}>"


class TlsBroker(_Broker):
    """mosquitto requiring a client cert from pki.ca; the cert's CN becomes the username."""

    name = "broker-tls"

    def __init__(self, workdir: Path, pki: Pki, *, extra_config: tuple[str, ...] = ()) -> None:
        self.pki = pki
        super().__init__(workdir, extra_config=extra_config)

    def _listener_lines(self) -> list[str]:
        return [
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_crt}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
        ]

    def client_context(self) -> ssl.SSLContext:
        """An ssl context that trusts the broker and presents the default client cert."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.client_crt), str(self.pki.client_key))
        return ctx

    def _probe(self) -> int:
        # Ready means a full handshake with our client cert works, not just a bound port.
        # ssl.SSLError and socket.timeout are OSErrors, so the start loop retries them.
        ctx = self.client_context()
        with (
            socket.create_connection((HOST, self.port), timeout=1.0) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            return tls.getsockname()[1]


class PlainBroker(_Broker):
    """Anonymous plain-TCP mosquitto (the local mirror)."""

    name = "broker-plain"

    def _listener_lines(self) -> list[str]:
        return ["allow_anonymous true"]  # 2.x refuses anonymous clients without it

    def _probe(self) -> int:
        with socket.create_connection((HOST, self.port), timeout=1.0) as raw:
            return raw.getsockname()[1]
