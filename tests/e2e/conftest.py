"""The agent as a subprocess against a real TLS broker and a pty IR head."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.meter.simulator import SimulatedEbz
from tests.harness.agent import AgentConfig, AgentProcess
from tests.harness.broker import TlsBroker
from tests.harness.certs import Pki
from tests.harness.meter import PtyMeter, encode_7e1

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
