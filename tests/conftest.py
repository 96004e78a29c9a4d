"""Fixtures around tests/harness: real mosquitto, real ptys, a real notify socket."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from agent.meter.simulator import SimulatedEbz
from tests.harness.agent import AgentConfig, AgentProcess
from tests.harness.broker import PlainBroker, TlsBroker
from tests.harness.certs import Pki, make_pki
from tests.harness.meter import PtyMeter, encode_7e1
from tests.harness.notify import NotifySocket
from tests.harness.observer import Observer
from tests.harness.paths import NOT_PROVEN

ObserverFactory = Callable[..., Observer]


@pytest.fixture(autouse=True, scope="session")
def _gpio_mock_env() -> Iterator[None]:
    # Off-Pi gpiozero has no pin factory; subprocess agents inherit this too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPIOZERO_PIN_FACTORY", "mock")
        yield


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[TlsBroker]:
    with TlsBroker(tmp_path / "broker-tls", pki) as broker:
        yield broker


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[PlainBroker]:
    with PlainBroker(tmp_path / "broker-plain") as broker:
        yield broker


@pytest.fixture
def observer_factory() -> Iterator[ObserverFactory]:
    """make(broker, topics=..., **kw) -> started Observer; all are stopped at teardown."""
    made: list[Observer] = []

    def make(
        broker: TlsBroker | PlainBroker, topics: Sequence[str] = ("$aws/rules/#",), **kw: Any
    ) -> Observer:
        obs = Observer(broker, topics, **kw)
        made.append(obs)
        return obs.start()

    yield make
    for obs in made:
        obs.stop()


@pytest.fixture
def observer(tls_broker: TlsBroker, observer_factory: ObserverFactory) -> Observer:
    """On the TLS broker; after tls_broker.restart() call observer.reconnect()."""
    return observer_factory(tls_broker, ("$aws/rules/#", "tibber-bridge/#"))


@pytest.fixture
def mirror_observer(plain_broker: PlainBroker, observer_factory: ObserverFactory) -> Observer:
    return observer_factory(plain_broker, ("#",))


@pytest.fixture
def pty_meter(tmp_path: Path) -> Iterator[PtyMeter]:
    """Plugged in at tmp_path/'ttyIR'; unplugged (and its pusher stopped) at teardown."""
    with PtyMeter(tmp_path / "ttyIR") as meter:
        meter.plug()
        yield meter


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    with NotifySocket() as sock:
        yield sock


@pytest.fixture
def gpio_mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    """A fresh gpiozero MockFactory per test (else LED(17) raises GPIOPinInUse next time)."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    saved = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = saved


# ---------------------------------------------------------------- the agent as a process
MakeAgent = Callable[..., AgentProcess]


@pytest.fixture
def agent_config(tmp_path: Path, tls_broker: TlsBroker, pki: Pki) -> AgentConfig:
    return AgentConfig(tmp_path / "agent", str(tmp_path / "ttyIR"), tls_broker.port, pki)


@pytest.fixture
def start_agent(agent_config: AgentConfig) -> Iterator[MakeAgent]:
    """start_agent(command="run", env=None) -> a running agent, stopped at teardown."""
    started: list[AgentProcess] = []

    def start(command: str = "run", env: dict[str, str] | None = None) -> AgentProcess:
        agent_config.write()
        agent = AgentProcess(agent_config.path, command, env).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture
def simulated_meter() -> SimulatedEbz:
    return SimulatedEbz(rng=random.Random(7))


@pytest.fixture
def pushing_meter(pty_meter: PtyMeter, simulated_meter: SimulatedEbz) -> PtyMeter:
    """The pty sends one simulated telegram per second, paced like 9600 baud."""
    pty_meter.start_pushing(lambda: encode_7e1(simulated_meter.next_telegram()), period=1.0)
    return pty_meter


# ---------------------------------------------------------------- measured figures
Figure = Callable[..., None]


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """figure(fault, injected, measured, bound, ok, **details): one row of
    docs/reliability.md, appended to $FAULT_RESULTS (JSON lines) when that is set.

    `note="..."` among the details is printed under the report's Notes: an explanation of
    the figure, worded as one; any number in it must be one this test measured (format it
    in), since scripts/reliability.py prints it as is."""

    def record(
        fault: str, injected: str, measured: str, bound: str, ok: bool, **details: object
    ) -> None:
        results = os.environ.get("FAULT_RESULTS")
        if not results:
            return
        row = {
            "test": request.node.nodeid,
            "fault": fault,
            "injected": injected,
            "measured": measured,
            "bound": bound,
            "ok": bool(ok),
            "scale": float(os.environ.get("FAULT_SCALE", "1")),
            **details,
        }
        with Path(results).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    return record


# ---------------------------------------------------------------- what a machine cannot prove
NotProven = Callable[[str], NoReturn]
_NOT_PROVEN = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture
def not_proven(request: pytest.FixtureRequest) -> NotProven:
    """not_proven(reason): this machine cannot prove what the test is about (no driver, no
    device cgroup...). Ends the test as skipped, never passed, and lists it in the run
    summary's NOT PROVEN ON THIS MACHINE block, which a one-line skip reason is not."""

    def record(reason: str) -> NoReturn:
        record_not_proven(request.config, request.node.nodeid, reason)
        pytest.skip(NOT_PROVEN + reason)

    return record


def record_not_proven(config: pytest.Config, nodeid: str, reason: str) -> None:
    """For the summary block; the caller makes sure the test does not pass (e.g. at
    collection, where a fixture cannot run yet: add a skip marker with the same reason)."""
    found = config.stash.setdefault(_NOT_PROVEN, [])
    if (nodeid, reason) not in found:
        found.append((nodeid, reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Every skip whose reason starts with NOT_PROVEN (tests/harness/paths.py), however it
    was raised (paths.not_proven_here, a skip marker, pytest.skip), goes into the block."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if reason.startswith(NOT_PROVEN):
            record_not_proven(item.config, item.nodeid, reason.removeprefix(NOT_PROVEN))


# ---------------------------------------------------------------- budgets known not to be met
_NOT_MET = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture
def budget_not_met(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """budget_not_met(text): a figure of the brief's budget that this agent is known not to
    meet yet (the issue that will meet it is named in the text). Recorded for the run
    summary's BUDGET NOT MET block; the test goes on and still fails on anything else. Not
    a pass in disguise: the block is printed at the end of every run until the figure is
    met and the call removed."""

    def record(text: str) -> None:
        request.config.stash.setdefault(_NOT_MET, []).append((request.node.nodeid, text))

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    not_met = config.stash.get(_NOT_MET, [])
    if not_met:
        terminalreporter.section("BUDGET NOT MET", sep="!", red=True, bold=True)
        for nodeid, text in not_met:
            terminalreporter.line(f"{nodeid}: {text}", red=True, bold=True)
    unproven = config.stash.get(_NOT_PROVEN, [])
    if not unproven:
        return
    terminalreporter.section("NOT PROVEN ON THIS MACHINE", sep="!", red=True, bold=True)
    for nodeid, reason in unproven:
        terminalreporter.line(f"{nodeid}: {reason}", red=True, bold=True)
    terminalreporter.line(
        f"{len(unproven)} check(s) above did not run here: not a pass. Run them where the "
        "machine can (e.g. a Raspberry Pi with the IR head's USB driver, a checkout with "
        "../shared beside it).",
        red=True,
        bold=True,
    )
