"""Which metric is due, and what it reports. Pure: times, counters and host info come in.

Shared by the Tibber uplink and the demo, so both keep the same cadences and the same
per-interval counts (the bridge reports what happened since its previous metric).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import TibberSettings
from ..schedule import Every
from ..state import MeterState
from .payloads import METER_MODES, HostInfo, PayloadBuilder, Snapshot, Topics


@dataclass(frozen=True)
class Counters:
    """What the metrics count, read at one moment."""

    published: int  # obis_stream messages sent


class MetricSchedule:
    def __init__(
        self,
        settings: TibberSettings,
        topics: Topics,
        payloads: PayloadBuilder,
        start: float,
        host_info: Callable[[], HostInfo] = HostInfo,
    ) -> None:
        self._topics, self._payloads, self._host_info = topics, payloads, host_info
        self._start = start
        self._bridge = Every(settings.bridge_metric_interval, start)
        self._node = Every(settings.node_metric_interval, start)
        self._at_bridge = self._at_node = Counters(0)

    @property
    def next_due(self) -> float:
        return min(self._bridge.next, self._node.next)

    def due(
        self, now: float, wall: float, meter: MeterState, counters: Counters
    ) -> list[tuple[str, bytes]]:
        """The metrics due at `now`, as (topic, payload); each restarts its interval."""
        out = []
        if self._bridge.due(now):
            snap = self._snapshot(
                now, wall, meter, counters, self._bridge.done(now), self._at_bridge
            )
            self._at_bridge = counters
            out.append((self._topics.bridge_metric, self._payloads.bridge_metric(snap)))
        if self._node.due(now):
            snap = self._snapshot(now, wall, meter, counters, self._node.done(now), self._at_node)
            self._at_node = counters
            out.append((self._topics.node_metric, self._payloads.node_metric(snap)))
        return out

    def hello(self, now: float, wall: float, meter: MeterState, counters: Counters) -> bytes:
        """The hello's metrics count since the last bridge metric."""
        span = now - self._bridge.last
        return self._payloads.hello(
            self._snapshot(now, wall, meter, counters, span, self._at_bridge)
        )

    def _snapshot(
        self,
        now: float,
        wall: float,
        meter: MeterState,
        counters: Counters,
        span: float,
        since: Counters,
    ) -> Snapshot:
        last = meter.last_accepted
        return Snapshot(
            ts=wall,
            uptime=now - self._start,
            interval=span,
            telegrams_published=counters.published - since.published,
            since_last_telegram=None if last is None else now - last,
            voltage=meter.voltage,
            host=self._host_info(),
            meter_mode=METER_MODES.get(meter.protocol),
        )
