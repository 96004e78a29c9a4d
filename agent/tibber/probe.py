"""`check`'s proof that the credentials work: one connection to Tibber's broker, exactly as
the agent connects (the same TLS context, client id, MQTT 3.1.1, clean session, keepalive),
then DISCONNECT. Nothing is published or subscribed to: the probe is a TibberConnection,
which has no hello, no readings and no subscription.

Connecting with the bridge's client id throws whoever holds that id (the real bridge, a
running agent) off the broker for a moment: the broker keeps only the newest connection.
`running_agents` finds another agent on this machine where /proc shows it; the bridge, an
agent on another machine or in another PID namespace cannot be seen from here.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import TibberSettings
from ..mqtt import ClosedBeforeConnack, paho
from ..state import LinkState, Problem
from .connection import TibberConnection

EX_OK = 0
# sysexits.h: the broker could not be reached or ended the attempt without a verdict
EX_UNAVAILABLE = 69
# sysexits.h: the broker (or our ca_cert about the broker) said no: a credential problem
EX_NOPERM = 77

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProbeResult:
    status: int  # EX_OK, EX_UNAVAILABLE or EX_NOPERM
    line: str  # what happened, one line
    seconds: float  # from the start of the attempt (DNS included) to the outcome


def probe(settings: TibberSettings, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Connect once, wait for the CONNACK (or the first failure), disconnect. Every step is
    bounded by `timeout` in all: a DNS lookup, TCP connect or handshake that hangs is
    abandoned (its daemon thread ends with the process)."""
    paho()  # imported before the clock starts: its import is not the broker's time
    first = _FirstChange()
    conn = TibberConnection(
        settings, on_change=lambda: first.offer((time.monotonic(), conn.state, conn.problem))
    )
    # paho's own connect and handshake timeouts are longer than ours, so the deadline below
    # always decides a hang, and says the same for one at any step.
    conn.connect_timeout = timeout + 1.0
    started = time.monotonic()
    conn.start()
    outcome = first.wait(timeout)
    awaiting_connack = conn.awaiting_connack
    conn.stop(timeout=2.0 if outcome and outcome[1] is LinkState.CONNECTED else 0.2)
    if outcome is None:
        return _timed_out(conn, awaiting_connack, timeout, time.monotonic() - started)
    at, state, problem = outcome
    seconds = at - started
    where = f"{conn.host}:{conn.port}"
    if state is LinkState.CONNECTED:
        return ProbeResult(
            EX_OK,
            f"Tibber connected: {where} accepted client id {conn.client_id} in {seconds:.2f} s "
            "(disconnected again; nothing published)",
            seconds,
        )
    assert problem is not None  # every other first change is a failed attempt
    if problem.state is LinkState.REJECTED:
        return ProbeResult(EX_NOPERM, f"Tibber rejected: {problem.text}", seconds)
    text = problem.text
    if problem == conn.classify(ClosedBeforeConnack()):
        # One attempt cannot tell a flaky path from a refusal (see SILENT_CLOSES_BEFORE_ALARM).
        text += (
            ": a flaky path does that now and then; AWS IoT is reported to do it when its "
            "policy refuses this certificate or client id (run check again)"
        )
    return ProbeResult(EX_UNAVAILABLE, f"Tibber unreachable: {text}", seconds)


Change = tuple[float, LinkState, Problem | None]  # (when, state, problem)


class _FirstChange:
    """The link's first state change, if it came before the deadline: a later one (the
    probe stopping the link, say) is not the outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._closed = False
        self._change: Change | None = None

    def offer(self, change: Change) -> None:
        with self._lock:
            if self._change is None and not self._closed:
                self._change = change
                self._arrived.set()

    def wait(self, timeout: float) -> Change | None:
        self._arrived.wait(timeout)
        with self._lock:
            self._closed = True
            return self._change


def _timed_out(
    conn: TibberConnection, awaiting_connack: bool, timeout: float, seconds: float
) -> ProbeResult:
    if awaiting_connack:
        text = (
            f"{conn.host}:{conn.port} completed the TLS handshake but sent no CONNACK "
            f"within {timeout:g} s"
        )
    else:
        text = f"{conn.classify(TimeoutError()).text} (no connection within {timeout:g} s)"
    return ProbeResult(EX_UNAVAILABLE, f"Tibber unreachable: {text}", seconds)


# ---------------------------------------------------------------------- other agents here
def running_agents(own_pid: int | None = None, proc: Path = Path("/proc")) -> list[str]:
    """Other processes on this machine running the agent (`tibber-agent run`, `python -m
    agent … run`), as 'pid N (command)'. Processes /proc does not show (hidepid, another
    PID namespace) are not found."""
    own = os.getpid() if own_pid is None else own_pid
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if _is_agent_run(argv):
            found.append(f"pid {entry.name} ({' '.join(a for a in argv if a)})")
    return found


def _is_agent_run(argv: list[str]) -> bool:
    args = [a for a in argv if a]
    if "run" not in args[1:]:
        return False
    by_script = any(Path(a).name == "tibber-agent" for a in args[:2])
    by_module = any(a == "-m" and b == "agent" for a, b in itertools.pairwise(args))
    return by_script or by_module
