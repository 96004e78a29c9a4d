"""The meter thread: keeps the port open, feeds the pipeline, hands accepted telegrams on.

It never needs a human: a missing device is retried, a vanished one reopened (the path is
resolved anew each time, so a /dev/serial/by-id link that comes back works), and a port
that stays open but silent is closed and reopened after `stale_after` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..config import MeterSettings
from ..schedule import Backoff
from ..state import MeterHealth, MeterState
from .pacing import Pacing
from .pipeline import RejectionLog, Result
from .port import PORT_ERRORS, MeterPort, PortClosed, PortLost, expected_read_time
from .protocols import AutoPipeline, MeterPipeline, pipeline_for, session_for
from .reading import Reading
from .validation import Outcome

if TYPE_CHECKING:
    from .modec import ModeCSession  # loaded only for protocol = iec (protocols.session_for)

log = logging.getLogger(__name__)

# Longest single wait for data: the supervisor sees the thread come back at least this
# often, which is how the watchdog knows it is not stuck.
IDLE_READ = 2.0
# Nothing accepted for this long: say so in STATUS and on the LED (reopening waits for
# stale_after).
SILENT_AFTER = 5.0


class Outlet(Protocol):
    """Where accepted telegrams go: the Tibber uplink, the mirror, a printer.

    Usually one telegram at a time; several when a held telegram is confirmed by the next
    one, or when one read brought more than one (oldest first: an outlet that takes one
    reading now and then takes the newest). Each comes with the monotonic time it was read.
    An outlet handles its own trouble (an MQTT link drops what it cannot send); whatever it
    raises is a bug and ends the meter thread.
    """

    def telegrams(self, batch: Sequence[tuple[Reading, float]]) -> None: ...


class Scheduled(Protocol):
    """An outlet that takes a reading only now and then (a rate limit): it says from when.
    An outlet without `next_due` takes every telegram."""

    def next_due(self) -> float: ...  # monotonic; 0.0 or less: the next one


class MeterReader:
    def __init__(
        self,
        settings: MeterSettings,
        state: MeterState,
        outlets: Sequence[Outlet],
        pipeline: MeterPipeline | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_result: Callable[[Result], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "meter",
    ) -> None:
        self.name = name  # its thread's name: "meter", or "meter:NAME" of a [meter:NAME]
        self.settings = settings
        self.state = state
        self.outlets = list(outlets)
        self.pipeline = pipeline or pipeline_for(settings)
        self.rejections = RejectionLog()
        self._on_change = on_change
        self._on_result = on_result
        self._clock = clock
        self._stop = threading.Event()
        self._port: MeterPort | None = None
        self._thread: threading.Thread | None = None
        self._held_at = 0.0
        self._pacing = Pacing()
        self._last_framed = 0.0
        # Readings of telegrams slept past (pacing.py), handed on with the nap's target.
        self._unsent: list[tuple[Reading, float]] = []
        self.state.port = settings.port
        self.state.protocol = self.pipeline.protocol
        self.state.heartbeat = clock()
        # A pull meter (mode C) says nothing until asked: the session says when to ask.
        self.session = session_for(settings, clock())
        # Nothing valid for this long: reopen. A pull meter answers once per interval.
        self._stale_after = settings.stale_after
        if self.session is not None:
            self._stale_after = max(settings.stale_after, 3 * settings.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        port = self._port
        if port is not None:
            port.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        backoff = Backoff(base=0.25, cap=2.0)
        while not self._stop.is_set():
            self.state.heartbeat = self._clock()
            try:
                port = MeterPort(self.settings.port, self._baud())
            except PORT_ERRORS as e:
                self._set_health(MeterHealth.PORT_MISSING, _short(e))
                backoff.failed()
                self._stop.wait(min(backoff.delay(), IDLE_READ))
                continue
            self._port = port
            log.info("%s: reading %s", self.name, self.settings.port)
            if self.session is not None:
                self.session.port_reopened(self._clock())
            if self._baud() != self.settings.baudrate:
                log.info("%s: nothing found so far; trying %d baud", self.name, self._baud())
            accepted_before = self.state.accepted
            stale = False
            try:
                self._read(port)
                stale = True  # it returns when nothing valid came for stale_after
            except PortClosed:
                break
            except PortLost as e:
                # Only the port's own calls raise this. Whatever else escapes _read (an
                # outlet's exception: a bug, since outlets handle their own network errors)
                # ends the thread, and the supervisor the agent (exit 70, systemd restarts
                # it), rather than passing for a lost port.
                self._set_health(MeterHealth.PORT_MISSING, str(e))
                log.warning("%s: %s lost (%s); reopening", self.name, self.settings.port, e)
            finally:
                self._port = None
                port.close()
            # Reopened (lost, or silent for stale_after): the stream restarts mid-telegram.
            self.pipeline.resync()
            self._unsent.clear()
            if stale and isinstance(self.pipeline, AutoPipeline):
                self.pipeline.stale()  # the stream made no sense: what is the meter now?
            self._pacing.lost()
            if self.state.accepted > accepted_before:
                backoff.succeeded()
            backoff.failed()
            if self._stop.wait(backoff.delay()):
                break
        self._flush_rejections()

    def _read(self, port: MeterPort) -> None:
        opened = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            self.state.heartbeat = now
            last_good = max(opened, self.state.last_accepted or opened)
            if now - last_good >= self._stale_after:
                self._set_health(MeterHealth.NO_DATA, f"nothing valid for {now - last_good:.0f} s")
                log.warning(
                    "%s: no valid telegram for %.0f s; reopening %s",
                    self.name,
                    now - last_good,
                    self.settings.port,
                )
                return
            if now - last_good >= SILENT_AFTER:
                if now - self._last_framed < SILENT_AFTER:
                    self._set_health(MeterHealth.GARBLED, self._main_rejection())
                else:
                    self._set_health(MeterHealth.NO_DATA, "no data from the IR head")
            if self.session is not None:
                self._pull(port, self.session, now, last_good)
                continue
            framer = self.pipeline.framer
            wanted = self.pipeline.wanted()
            due = self._due() if self.pipeline.clocked else 0.0
            nap = self._pacing.step(now, framer.pending, wanted, framer.last_length, due).nap
            if nap:
                port.sleep(nap)
                data = port.read_now()
                if not data and not framer.pending:
                    self._pacing.lost()  # the predicted telegram did not come
            elif framer.pending:
                data = port.read(wanted, expected_read_time(min(wanted, 255)))
            else:
                timeout = min(IDLE_READ, max(0.05, self._stale_after - (now - last_good)))
                data = port.read(1, timeout)
            if data:
                was_pending = framer.pending
                done_before = framer.frames
                self.feed(data, may_hold=self._pacing.skipping if nap else 0)
                now = self._clock()
                if framer.frames > done_before:
                    self._pacing.finished(
                        now,
                        framer.last_length,
                        seen_arriving=not nap,
                        frames=framer.frames - done_before,
                    )
                if framer.pending and (not was_pending or framer.frames > done_before):
                    self._pacing.started(now, framer.pending)
            line = self.rejections.tick(self._clock())
            if line:
                log.warning("%s: %s", self.name, line)

    def _due(self) -> float:
        """The earliest time an outlet would take a reading (0.0: the next telegram)."""
        due = float("inf")
        for outlet in self.outlets:
            next_due = getattr(outlet, "next_due", None)
            if next_due is None:
                return 0.0  # takes every telegram
            due = min(due, next_due())
        return due

    def _baud(self) -> int:
        """The rate to open the port at: protocol auto may be trying another one."""
        if isinstance(self.pipeline, AutoPipeline):
            return self.pipeline.baud
        return self.settings.baudrate

    def _pull(self, port: MeterPort, session: ModeCSession, now: float, last_good: float) -> None:
        """One step of a pull meter: do what the session says (the rate, a request, the
        acknowledgement), then wait for the meter at most until the session's next deadline;
        what it sends goes to the session, and what belongs to a readout on to the pipeline."""
        for action in session.due(now):
            if action.baud is not None:
                port.set_baudrate(action.baud)
            if action.write:
                port.write(action.write)
        until = min(session.next_wake(now), last_good + self._stale_after)
        # Single bytes until the readout has begun (a read sized to the last frame would
        # sit on the short identification while the meter waits for the acknowledgement).
        wanted = session.wanted(self.pipeline.wanted())
        data = port.read(wanted, min(IDLE_READ, max(0.0, until - now)))
        if data:
            readout = session.received(data, self._clock())
            if readout:
                self.feed(readout)
        line = self.rejections.tick(self._clock())
        if line:
            log.warning("%s: %s", self.name, line)

    def feed(self, data: bytes, may_hold: int = 0) -> None:
        """Feed bytes through the pipeline and act on each result (also used by `demo`).

        `may_hold`: this many telegrams were slept past (pacing.py). If no more than that
        complete here, their readings wait for the next read, which brings the one the nap
        was for: an outlet that takes a reading now and then sees them together and takes
        the newest, rather than the one before, a second old, because it came first."""
        now = self._clock()
        batch, self._unsent = self._unsent, []
        results = self.pipeline.feed(data, now)
        for result in results:
            self._handle(result, now, batch)
        if 0 < len(results) <= may_hold:
            self._unsent = batch
        elif batch:
            for outlet in self.outlets:
                outlet.telegrams(batch)
        if self.pipeline.protocol != self.state.protocol:
            self._detected()

    def _detected(self) -> None:
        """protocol = auto found (or lost) the meter's protocol: say so once."""
        self.state.protocol = self.pipeline.protocol
        finding = getattr(self.pipeline, "finding", None)
        if finding is not None:
            log.info(
                "%s: found %s; reading it as protocol %s", self.name, finding.what, finding.protocol
            )
        else:
            log.warning(
                "%s: the stream stopped making sense; detecting the protocol anew", self.name
            )

    def _handle(self, result: Result, now: float, batch: list[tuple[Reading, float]]) -> None:
        """Count and judge one result; what it makes publishable joins `batch`."""
        s = self.state
        s.telegrams_read += 1
        self._last_framed = now
        verdict = result.verdict
        if self._on_result is not None:
            self._on_result(result)
        if verdict.adopted:
            log.warning("%s: adopted %s", self.name, verdict.adopted)
        if verdict.publish:
            # A confirmed held telegram goes out with the time it arrived: outlets drop
            # what has grown too old.
            batch += [(t, now if t is result.telegram else self._held_at) for t in verdict.publish]
            s.accepted += len(verdict.publish)
            s.last_accepted = now
            volts = verdict.publish[-1].volts.get("32.7.0")
            s.voltage = volts / 10 if volts is not None else None
        if verdict.outcome is Outcome.REJECTED:
            s.rejected += 1
            assert verdict.reason is not None
            line = self.rejections.add(verdict.reason, now)
            if line:
                log.warning("%s: %s", self.name, line)
        elif verdict.outcome is Outcome.HELD:
            self._held_at = now
        else:
            self._set_health(MeterHealth.OK, "")

    def _main_rejection(self) -> str:
        rejected = self.pipeline.rejected
        if not rejected:
            return "telegrams arrive but none is complete"
        reason, _ = rejected.most_common(1)[0]
        return f"telegrams rejected, mostly: {reason}"

    def _flush_rejections(self) -> None:
        line = self.rejections.flush(self._clock())
        if line:
            log.warning("%s: %s", self.name, line)

    def _set_health(self, health: MeterHealth, detail: str) -> None:
        s = self.state
        if s.health is health and s.detail == detail:
            return
        if health is MeterHealth.OK:
            log.info("%s: ok, telegrams accepted", self.name)
        elif health is not s.health:
            log.warning("%s: %s%s", self.name, health, f" ({detail})" if detail else "")
        s.health, s.detail = health, detail
        self._on_change()


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:160]
