"""The status LED: a few patterns a person can tell apart at a glance (README table).

The patterns are pure data (`PATTERNS`); `StatusLed` plays them on a gpiozero LED from one
owned thread that sleeps until the next edge, so a steady pattern costs no wakeups.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from .config import LedSettings
from .state import Pattern

log = logging.getLogger(__name__)

# One cycle of each pattern as (lit, seconds) steps, repeated; a single step = steady.
PATTERNS: dict[Pattern, tuple[tuple[bool, float], ...]] = {
    Pattern.OK: ((True, 0.0),),  # steady on; dark for FLICKER per telegram sent
    Pattern.NO_METER: ((True, 1.0), (False, 1.0)),  # slow blink
    Pattern.NO_CLOUD: ((True, 0.15), (False, 0.2), (True, 0.15), (False, 1.5)),  # double flash
    Pattern.NEEDS_USER: ((True, 0.25), (False, 0.25)),  # fast blink
    Pattern.OFF: ((False, 0.0),),
}
FLICKER = 0.08


class StatusLed:
    def __init__(self, settings: LedSettings, *, dev: Path = Path("/dev")) -> None:
        self._settings = settings
        self._dev = dev
        self._led = None
        self._pattern = Pattern.OFF
        self._flicker = False
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._settings.enabled:
            self._thread = threading.Thread(target=self._run, name="led", daemon=True)
            self._thread.start()

    def show(self, pattern: Pattern) -> None:
        with self._wake:
            if pattern is not self._pattern:
                self._pattern = pattern
                self._wake.notify()

    def flicker(self) -> None:
        """A telegram went out: a short dark blip, in the OK pattern only."""
        if self._thread is None or self._pattern is not Pattern.OK:
            return
        with self._wake:
            self._flicker = True
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        # gpiozero is imported and the pin opened here, off the start-up path (READY=1).
        led = self._led = _open_led(self._settings, self._dev)
        if led is None:
            return
        try:
            self._play_patterns(led)
        finally:
            led.off()
            led.close()

    def _play_patterns(self, led) -> None:
        with self._wake:
            while not self._stop:
                pattern = self._pattern
                steps = PATTERNS[pattern]
                if len(steps) == 1:
                    _set(led, steps[0][0])
                    self._wake.wait_for(
                        lambda p=pattern: self._stop or self._flicker or self._pattern is not p
                    )
                    if self._flicker and self._pattern is pattern and not self._stop:
                        self._flicker = False
                        _set(led, False)
                        self._wake.wait(FLICKER)
                    continue
                self._play(led, pattern, steps)

    def _play(self, led, pattern: Pattern, steps: Sequence[tuple[bool, float]]) -> None:
        """One cycle; returns early when the pattern changes."""
        for lit, seconds in steps:
            _set(led, lit)
            if self._wake.wait_for(lambda: self._stop or self._pattern is not pattern, seconds):
                return


def _set(led, lit: bool) -> None:
    if bool(led.value) != lit:
        led.value = lit


def _open_led(settings: LedSettings, dev: Path):
    """A gpiozero LED, or None with one warning (not a Pi, no permission, no GPIO)."""
    if "GPIOZERO_PIN_FACTORY" not in os.environ and not _has_gpio(dev):
        # Without a GPIO device gpiozero would import and try each of its pin factories in
        # turn before failing: about 3.5 MB of resident memory kept for nothing (issue 10).
        log.warning(
            "led: disabled, GPIO%d not usable here (no %s/gpiochip* or %s/gpiomem*: not a Pi?)",
            settings.gpio,
            dev,
            dev,
        )
        return None
    try:
        from gpiozero import LED

        return LED(settings.gpio, active_high=settings.active_high, initial_value=False)
    except Exception as e:  # gpiozero raises many kinds (BadPinFactory, PinInvalidPin, ...)
        log.warning("led: disabled, GPIO%d not usable here (%s)", settings.gpio, e)
        return None


def _has_gpio(dev: Path) -> bool:
    """A device some pin factory drives: gpiochip (lgpio, Bookworm) or gpiomem (RPi.GPIO)."""
    return any(dev.glob("gpiochip*")) or any(dev.glob("gpiomem*"))
