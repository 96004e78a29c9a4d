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
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from agent.config import MeterSettings
from agent.meter.pipeline import Result
from agent.meter.reader import MeterReader
from agent.meter.simulator import SimulatedEbz
from agent.meter.telegram import Telegram
from agent.meter.validation import Outcome
from agent.schedule import RateLimit
from agent.state import MeterHealth, MeterState
from tests.harness.meter import BYTE_TIME_S, PtyMeter, encode_7e1

SECONDS = re.compile(rb"96\.8\.0\*255\(([0-9A-F]{8})\)")


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


# ------------------------------------------------------------------ reading what is taken
class EverySecondOne:
    """An outlet like Tibber's node with obis_interval 2: takes a reading every 2 s, and
    says from when (next_due), so the reader may sleep past the telegram in between."""

    def __init__(self) -> None:
        self.rate = RateLimit(2.0)
        self.taken: list[tuple[float, int, int]] = []  # (when, seconds index, batch size)

    def next_due(self) -> float:
        return self.rate.next_due()

    def telegrams(self, batch: Sequence[tuple[Telegram, float]]) -> None:
        now = time.monotonic()
        if self.rate.take(now):
            self.taken.append((now, batch[-1][0].seconds or 0, len(batch)))


def _voluntary_switches(native_id: int) -> int:
    with open(f"/proc/{os.getpid()}/task/{native_id}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt"))


@pytest.mark.parametrize("protocol", ["ebz", "d0"])
def test_a_telegram_no_outlet_takes_is_read_with_the_next_one(
    pty_meter: PtyMeter, protocol: str
) -> None:
    """With Tibber taking one reading per 2 s, the eBZ's reader wakes for the telegram it
    takes and reads the one before with it (pacing.py): every telegram is still framed and
    validated, in order, and the one taken is the newest, read as its last byte arrives.
    A meter without its own clock (d0: its checks use arrival gaps) is read as it comes."""
    meter = SimulatedEbz(rng=random.Random(3))
    results: list[Result] = []
    outlet = EverySecondOne()
    state = MeterState()
    settings = MeterSettings(port=str(pty_meter.link), protocol=protocol, stale_after=10.0)
    reader = MeterReader(settings, state, [outlet], on_result=results.append)
    reader.start()
    last_byte: dict[int, float] = {}

    def send() -> None:
        text = meter.next_telegram()
        wire = encode_7e1(text)
        pty_meter.write(wire[:-16])
        time.sleep(16 * BYTE_TIME_S)
        pty_meter.write(wire[-16:], paced=False)
        last_byte[int(SECONDS.search(text)[1], 16)] = time.monotonic()

    try:
        assert pty_meter.wait_opened(5)
        tick = time.monotonic()
        for _ in range(6):  # the reader learns the meter's pace
            send()
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        assert reader._thread is not None and reader._thread.native_id is not None
        tid = reader._thread.native_id
        read0, taken0, switches0 = len(results), len(outlet.taken), _voluntary_switches(tid)
        sent = 16
        for _ in range(sent):
            send()
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        time.sleep(0.3)
        switches = _voluntary_switches(tid) - switches0
        window = results[read0:]
        taken = outlet.taken[taken0:]
    finally:
        reader.stop()
    # Every telegram framed and judged, in order, none rejected.
    seconds = [r.telegram.seconds for r in window if r.telegram is not None]
    assert len(window) >= sent - 1 and seconds == sorted(seconds), seconds
    assert all(r.verdict.outcome is not Outcome.REJECTED for r in window), window
    # One reading taken per 2 s, each as its last byte arrived (not a period later).
    assert sent // 2 - 1 <= len(taken) <= sent // 2 + 1, taken
    # (The generic text pipeline holds each telegram until its successor vouches for it.)
    confirmed_by = 0 if protocol == "ebz" else 1
    late = [when - last_byte[s + confirmed_by] for when, s, _ in taken]
    assert max(late) < 0.1, late
    if protocol == "ebz":
        # The taken telegram came with the one before it; a wakeup to each read or nap.
        assert sum(size == 2 for _, _, size in taken) >= len(taken) - 2, taken
        assert reader._pacing.skipped >= len(taken) - 2
        assert switches <= sent + 3, switches  # about one per telegram-second
    else:
        assert reader._pacing.skipped == 0
        assert all(size == 1 for _, _, size in taken), taken
        assert switches >= 2 * sent - 3, switches  # every telegram read: two wakeups each
