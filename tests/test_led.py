"""The status LED's patterns, as the pin sees them (gpiozero mock pins, real time)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from agent.config import LedSettings
from agent.led import FLICKER, PATTERNS, StatusLed
from agent.state import Pattern
from tests.harness.paths import REPO_ROOT

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


def test_no_pin_factory_disables_the_led_with_one_warning(monkeypatch, caplog, tmp_path):
    """A GPIO device is there but no pin factory can drive it (here: a file named like one,
    no lgpio, not a Pi): gpiozero tries its factories, the LED is disabled with one warning."""
    from gpiozero import Device

    (tmp_path / "gpiochip0").touch()
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    saved = Device.pin_factory
    Device.pin_factory = None
    try:
        with caplog.at_level(logging.WARNING):
            status = StatusLed(LedSettings(enabled=True, gpio=PIN, active_high=True), dev=tmp_path)
            status.start()
            status.show(Pattern.OK)
            status.flicker()
            time.sleep(0.3)
            status.stop()
    finally:
        Device.pin_factory = saved
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "led: disabled" in warnings[0].getMessage()


NO_GPIO = """
import logging, sys, time
from pathlib import Path
from agent.config import LedSettings
from agent.led import StatusLed
from agent.state import Pattern
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
status = StatusLed(LedSettings(enabled=True, gpio=17, active_high=True), dev=Path(sys.argv[1]))
status.start()
status.show(Pattern.OK)
status.flicker()
time.sleep(0.2)
status.stop()
print("gpiozero imported" if "gpiozero" in sys.modules else "gpiozero not imported")
"""


def test_no_gpio_device_disables_the_led_without_loading_gpiozero(tmp_path):
    """Off a Pi (no gpiochip, no gpiomem, no GPIOZERO_PIN_FACTORY) the LED is disabled with
    one warning naming what is missing, and gpiozero is never imported: trying each of its pin
    factories would keep about 3.5 MB resident for nothing (issue 10's memory goal)."""
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", NO_GPIO, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"led: disabled, GPIO17 not usable here (no {tmp_path}/gpiochip* or "
        f"{tmp_path}/gpiomem*: not a Pi?)",
        "gpiozero not imported",
    ], done.stdout + done.stderr
