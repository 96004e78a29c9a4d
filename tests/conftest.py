"""Fixtures around tests/harness: real mosquitto, real ptys, a real notify socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from tests.harness.broker import PlainBroker, TlsBroker
from tests.harness.certs import Pki, make_pki
from tests.harness.meter import PtyMeter
from tests.harness.notify import NotifySocket
from tests.harness.observer import Observer

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
