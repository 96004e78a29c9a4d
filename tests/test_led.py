"""The status LED's patterns, as the pin sees them (gpiozero mock pins, real time)."""

from __future__ import annotations

import logging
import time

import pytest

from agent.config import LedSettings
from agent.led import FLICKER, PATTERNS, StatusLed
from agent.state import Pattern

PIN = 17


def states(pin) -> list[bool]:
    return [s.state for s in pin.states]


@pytest.fixture
def led(gpio_mock):
    status = StatusLed(LedSettings(enabled=True, gpio=PIN, active_high=True))
    status.start()
    yield status
    status.stop()


def settle(led: StatusLed, pattern: Pattern, pin) -> None:
    led.show(pattern)
    time.sleep(0.05)
    pin.clear_states()


def test_ok_is_steady_with_a_dark_flicker_per_reading(led, gpio_mock):
    pin = gpio_mock.pin(PIN)
    settle(led, Pattern.OK, pin)
    time.sleep(0.3)
    assert states(pin) == [True]  # steady: no edges, no wakeups
    led.flicker()
    time.sleep(FLICKER + 0.1)
    assert states(pin) == [True, False, True]
    off = pin.states[2].timestamp  # seconds since the previous change
    assert FLICKER - 0.03 < off < FLICKER + 0.05


def test_no_meter_is_a_slow_blink(led, gpio_mock):
    pin = gpio_mock.pin(PIN)
    led.show(Pattern.NO_METER)
    time.sleep(2.5)
    led.show(Pattern.OFF)
    time.sleep(0.05)
    # initial off; on at 0 s, off at 1 s, on at 2 s; off when the pattern changes
    assert states(pin) == [False, True, False, True, False]
    assert all(0.9 < s.timestamp < 1.15 for s in pin.states[2:4])


def test_no_cloud_is_a_double_flash(led, gpio_mock):
    pin = gpio_mock.pin(PIN)
    led.show(Pattern.NO_CLOUD)
    time.sleep(2.1)
    led.show(Pattern.OFF)
    time.sleep(0.05)
    want = [False, True, False, True, False, True]
    assert states(pin)[: len(want)] == want, states(pin)
    gaps = [round(s.timestamp, 2) for s in pin.states[2:5]]
    assert gaps[0] == pytest.approx(0.15, abs=0.05) and gaps[2] == pytest.approx(0.15, abs=0.05)
    assert pin.states[5].timestamp == pytest.approx(1.5, abs=0.1)


def test_needs_user_is_a_fast_blink(led, gpio_mock):
    pin = gpio_mock.pin(PIN)
    led.show(Pattern.NEEDS_USER)
    time.sleep(1.1)
    led.show(Pattern.OFF)
    time.sleep(0.05)
    # on at 0, 0.5, 1.0 s; off at 0.25, 0.75 s and when the pattern changes at 1.1 s
    assert states(pin) == [False, True, False, True, False, True, False]
    assert all(0.2 < s.timestamp < 0.32 for s in pin.states[2:6])


def test_patterns_can_be_told_apart():
    cycles = {p: tuple(steps) for p, steps in PATTERNS.items()}
    assert len(set(cycles.values())) == len(cycles)


def test_off_when_stopped(gpio_mock):
    status = StatusLed(LedSettings(enabled=True, gpio=PIN, active_high=True))
    status.start()
    status.show(Pattern.OK)
    time.sleep(0.1)
    pin = gpio_mock.pin(PIN)
    assert pin.state is True
    status.stop()
    assert pin.state is False


def test_active_low_inverts_the_pin(gpio_mock):
    status = StatusLed(LedSettings(enabled=True, gpio=PIN, active_high=False))
    status.start()
    status.show(Pattern.OK)
    time.sleep(0.1)
    assert gpio_mock.pin(PIN).state is False  # lit = pin low
    status.stop()


def test_no_gpio_disables_the_led_with_one_warning(monkeypatch, caplog):
    """Off a Pi (no pin factory can load) the LED is disabled with one warning, no crash."""
    from gpiozero import Device

    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    saved = Device.pin_factory
    Device.pin_factory = None
    try:
        with caplog.at_level(logging.WARNING):
            status = StatusLed(LedSettings(enabled=True, gpio=PIN, active_high=True))
            status.start()
            status.show(Pattern.OK)
            status.flicker()
            time.sleep(0.3)
            status.stop()
    finally:
        Device.pin_factory = saved
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "led: disabled" in warnings[0].getMessage()
