"""The one place that wires the agent together and watches it.

It builds the workers from the settings, owns their threads, and runs on the main thread:
it wakes on a state change, a signal, or when the next watchdog ping is due, never on a
polling tick. It pings systemd's watchdog only while every worker shows progress (each
worker stamps a heartbeat whenever a bounded wait returns), so a stuck worker gets the
service restarted, while a silent meter or a dead internet connection, which a restart
cannot fix, only shows in STATUS and on the LED.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import Settings
from .hostinfo import HostInfoReader
from .led import StatusLed
from .meter.reader import MeterReader
from .state import LinkState, MeterHealth, MeterState, Pattern, led_pattern, status_line
from .systemd import Notifier
from .tibber.uplink import TibberUplink

if TYPE_CHECKING:
    from .mirror import Mirror

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Collect start-up's garbage once, then exempt what is left from later collections.

    Python's full collection walks every tracked object: after the imports (paho, ssl, the
    TLS context) that is tens of thousands, milliseconds of work in whichever thread happens
    to allocate next, which may be the meter thread with a reading in hand. What exists once
    both ends have worked lives as long as the process, so it is frozen (gc.freeze): later
    collections walk only what came after it.
    """
    gc.collect()
    gc.freeze()


# A worker whose heartbeat is older than this is stuck. Its waits are bounded by a few
# seconds (meter reads 2 s, MQTT loop and backoff slices 5 s); a link's connection attempt
# may block longer, up to the bound it declares (MqttLink.busy_until).
STUCK_AFTER = 20.0
EX_SOFTWARE = 70  # a worker crashed (sysexits.h)
# Without a watchdog, refresh the counters in STATUS this often.
STATUS_REFRESH = 30.0


class Agent:
    def __init__(
        self,
        settings: Settings,
        notifier: Notifier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.tibber is not None
        self.settings = settings
        self.notifier = notifier
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = False
        self._crashed: str | None = None
        # One reader per meter, each standing in for one node of the bridge; one Tibber
        # connection for all (two with one client id would throw each other off).
        self.meters = [MeterState() for _ in settings.meters]
        self.meter = self.meters[0]
        named = [m.name for m in settings.meters if m.name]
        self.uplink = TibberUplink(
            settings.tibber,
            self.meter,
            host_info=HostInfoReader(),
            on_change=self._changed,
            nodes=[(m.eui, state) for m, state in zip(settings.meters, self.meters, strict=True)],
        )
        self.mirror: Mirror | None = None
        if settings.mirror.enabled:
            from .mirror import Mirror  # and Home Assistant's module: only when enabled

            self.mirror = Mirror(
                settings.mirror,
                f"tibber-agent-{settings.tibber.bridge_id}",
                self._changed,
                node=settings.tibber.bridge_id,
                interval=settings.tibber.obis_interval,
                meters=named,
            )
        self.led = StatusLed(settings.led)
        self.uplink.on_sent = self.led.flicker
        self.readers = [
            MeterReader(
                m,
                state,
                [self.uplink.nodes[i]] + ([self.mirror.nodes[i]] if self.mirror else []),
                on_change=self._changed,
                name=f"meter:{m.name}" if m.name else "meter",
            )
            for i, (m, state) in enumerate(zip(settings.meters, self.meters, strict=True))
        ]
        self.reader = self.readers[0]

    def _changed(self) -> None:
        self._wake.set()

    def request_stop(self, *_: object) -> None:
        self._stopping = True
        self._wake.set()

    def status(self) -> str:
        u = self.uplink
        names = [m.name for m in self.settings.meters]
        return status_line(
            self.meter,
            u.state,
            u.problem.text if u.problem else "",
            u.published,
            self.mirror.state if self.mirror else None,
            meters=list(zip(names, self.meters, strict=True)) if names[0] else (),
        )

    def meter_health(self) -> MeterHealth:
        """For the LED: OK only if every meter is (one dark meter must show)."""
        return next(
            (m.health for m in self.meters if m.health is not MeterHealth.OK), MeterHealth.OK
        )

    def stuck_workers(self, now: float) -> list[str]:
        stuck = []
        for reader, state in zip(self.readers, self.meters, strict=True):
            if not reader.alive or now - state.heartbeat > STUCK_AFTER:
                stuck.append(reader.name)
        for link in (self.uplink, self.mirror):
            if link is not None and link.stuck(now, STUCK_AFTER):
                stuck.append(link.name)
        return stuck

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        log.critical(
            "worker %s crashed: %s: %s",
            name,
            args.exc_type.__name__,
            args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )
        self._crashed = name
        self._wake.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # A worker that dies is a bug; exiting non-zero lets systemd restart the service
        # (Restart=on-failure) rather than run on without it.
        threading.excepthook = self._thread_died
        self.led.start()
        self.led.show(Pattern.NO_METER)
        self.uplink.start()
        if self.mirror:
            self.mirror.start()
        for reader in self.readers:
            reader.start()
        # Ready as soon as the workers run: a Pi may boot without internet or meter.
        self.notifier.ready(self.status())
        log.info("tibber-agent running: %s", self.status())

        interval = self.notifier.watchdog_interval
        next_ping = self._clock()
        reported_stuck: list[str] = []
        settled = False
        while not self._stopping and self._crashed is None:
            now = self._clock()
            if not settled and self._steady():
                settle_heap()
                settled = True
            if interval is not None and now >= next_ping:
                stuck = self.stuck_workers(now)
                if not stuck:
                    self.notifier.watchdog()
                elif stuck != reported_stuck:
                    log.error(
                        "worker(s) not making progress: %s; withholding the watchdog ping",
                        ", ".join(stuck),
                    )
                reported_stuck = stuck
                next_ping = now + interval
                self.notifier.status(self.status())  # counters, now and then
            self.led.show(led_pattern(self.meter_health(), self.uplink.state))
            self.notifier.status(self.status())
            wait = (next_ping - now) if interval is not None else STATUS_REFRESH
            self._wake.wait(max(0.0, wait))
            self._wake.clear()
        code = self.shutdown()
        return EX_SOFTWARE if self._crashed is not None else code

    def _steady(self) -> bool:
        """Both ends have worked once: everything start-up imports and builds exists."""
        return self.meter_health() is MeterHealth.OK and self.uplink.state is LinkState.CONNECTED

    def shutdown(self) -> int:
        self.notifier.stopping()
        log.info("tibber-agent stopping")
        for reader in self.readers:
            reader.stop(timeout=2.0)
        self.uplink.stop(timeout=2.0)
        if self.mirror:
            self.mirror.stop(timeout=1.0)
        self.led.stop()
        return 0


__all__ = ["Agent", "LinkState"]
