"""The meter thread tells the port's own failures from everything else.

A real pty as the IR head, fed by the simulator once a second (the `pushing_meter` fixture).
An outlet that fails is a real one too: it writes each telegram into a pipe whose reading end
the test closes, so the write raises a genuine BrokenPipeError (as `tibber-agent demo | head`
does), an OSError that has nothing to do with the port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from agent.config import MeterSettings
from agent.meter.pipeline import Result
from agent.meter.reader import MeterReader
from agent.meter.telegram import Telegram
from agent.meter.validation import Outcome
from agent.state import MeterHealth, MeterState
from tests.harness.meter import PtyMeter


class PipeOutlet:
    """Writes each accepted telegram into a pipe; close_reader() makes the next write fail."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self.sent = 0

    def telegrams(self, batch: Sequence[tuple[Telegram, float]]) -> None:
        for t, _ in batch:
            os.write(self._w, t.raw[:64])  # far below the pipe's buffer: never blocks
            self.sent += 1

    def close_reader(self) -> None:
        os.close(self._r)

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    died: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    return died


@pytest.fixture
def outlet() -> Iterator[PipeOutlet]:
    o = PipeOutlet()
    yield o
    o.close()


def reader_for(
    pty: PtyMeter, outlet: PipeOutlet, results: list[Result], healths: list[MeterHealth]
) -> MeterReader:
    """A reader of the pty that records each result and each health it reports."""
    settings = MeterSettings(port=str(pty.link), stale_after=10.0)
    state = MeterState()
    return MeterReader(
        settings,
        state,
        [outlet],
        on_change=lambda: healths.append(state.health),
        on_result=results.append,
    )


def test_an_outlet_error_ends_the_meter_thread_and_is_not_a_lost_port(
    pushing_meter: PtyMeter,
    outlet: PipeOutlet,
    thread_deaths: list[threading.ExceptHookArgs],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bound: the BrokenPipeError ends the meter thread (the supervisor then exits 70); the
    port is not reopened, the meter's health never says 'port missing', and no telegram is
    read after it (no resync: the validator's state is not thrown away and re-learnt)."""
    caplog.set_level(logging.INFO, logger="agent.meter.reader")
    results: list[Result] = []
    healths: list[MeterHealth] = []
    reader = reader_for(pushing_meter, outlet, results, healths)
    reader.start()
    try:
        assert wait_until(lambda: outlet.sent >= 1, timeout=10), results
        outlet.close_reader()
        read_before = len(results)
        t_closed = time.monotonic()
        assert wait_until(lambda: not reader.alive, timeout=10), caplog.text
        died = [(a.thread.name if a.thread else "?", a.exc_type) for a in thread_deaths]
        assert died == [("meter", BrokenPipeError)], died
        assert time.monotonic() - t_closed <= 3.0  # the next accepted telegram, not later
        opened = [r for r in caplog.records if r.getMessage().startswith("meter: reading")]
        assert len(opened) == 1, caplog.text
        assert "reopening" not in caplog.text and "lost" not in caplog.text, caplog.text
        assert MeterHealth.PORT_MISSING not in healths, healths
        assert reader.state.health is MeterHealth.OK
        # The telegram the outlet failed on was the last one read.
        assert len(results) == read_before + 1, results[read_before:]
    finally:
        reader.stop()


def test_a_lost_port_is_still_reopened_and_resynced(
    pushing_meter: PtyMeter,
    outlet: PipeOutlet,
    thread_deaths: list[threading.ExceptHookArgs],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The port's own failure (the head unplugged, a new pty behind the link) still reopens
    it: 'lost ... reopening' in the log, health 'port missing' meanwhile, and the first
    telegram after the reopen is held until the next one confirms it (resync)."""
    caplog.set_level(logging.INFO, logger="agent.meter.reader")
    results: list[Result] = []
    healths: list[MeterHealth] = []
    reader = reader_for(pushing_meter, outlet, results, healths)
    reader.start()
    try:
        assert wait_until(lambda: outlet.sent >= 2, timeout=10), results
        pushing_meter.unplug()
        assert wait_until(lambda: "reopening" in caplog.text, timeout=5), caplog.text
        cut = len(results)
        pushing_meter.plug()
        assert wait_until(lambda: len(results) >= cut + 2, timeout=10), results[cut:]
        assert reader.alive and not thread_deaths, thread_deaths
        assert MeterHealth.PORT_MISSING in healths, healths
        opened = [r for r in caplog.records if r.getMessage().startswith("meter: reading")]
        assert len(opened) >= 2, caplog.text
        after = [r.verdict.outcome for r in results[cut:]]
        assert after[0] is Outcome.HELD, after
        assert Outcome.ACCEPTED in after[1:], after
    finally:
        reader.stop()
