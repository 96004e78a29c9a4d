"""Which metric is due, and what it reports. Pure: times, counters and host info come in.

Shared by the Tibber uplink and the demo, so both keep the same cadences and the same
per-interval counts (the bridge reports what happened since its previous metric).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..config import TibberSettings
from ..schedule import Every
from ..state import MeterState
from .payloads import METER_MODES, HostInfo, NodeSnapshot, PayloadBuilder, Snapshot, Topics


@dataclass(frozen=True)
class Counters:
    """What the metrics count, read at one moment."""

    published: int  # obis_stream messages sent


@dataclass(frozen=True)
class NodeView:
    """One node (one meter) as the metrics see it, at one moment."""

    eui: str
    topic: str  # its TFD01 metric topic
    meter: MeterState
    counters: Counters


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
        self._eui = settings.eui
        self._start = start
        self._bridge = Every(settings.bridge_metric_interval, start)
        self._node = Every(settings.node_metric_interval, start)
        # What each node had counted at the last metric of each kind, by eui.
        self._at_bridge: dict[str, Counters] = {}
        self._at_node: dict[str, Counters] = {}

    @property
    def next_due(self) -> float:
        return min(self._bridge.next, self._node.next)

    def due(
        self,
        now: float,
        wall: float,
        meter: MeterState,
        counters: Counters,
        nodes: Sequence[NodeView] = (),
    ) -> list[tuple[str, bytes]]:
        """The metrics due at `now`, as (topic, payload); each restarts its interval. `nodes`:
        every meter's node on this bridge (by default the one of `meter` and `counters`)."""
        nodes = nodes or self._single(meter, counters)
        out = []
        if self._bridge.due(now):
            snap = self._bridge_snapshot(now, wall, nodes, self._bridge.done(now))
            self._at_bridge = {n.eui: n.counters for n in nodes}
            out.append((self._topics.bridge_metric, self._payloads.bridge_metric(snap)))
        if self._node.due(now):
            span = self._node.done(now)
            for n in nodes:
                since = self._at_node.get(n.eui, Counters(0))
                snap = self._snapshot(now, wall, n.meter, n.counters, span, since)
                out.append((n.topic, self._payloads.node_metric(snap)))
            self._at_node = {n.eui: n.counters for n in nodes}
        return out

    def hello(
        self,
        now: float,
        wall: float,
        meter: MeterState,
        counters: Counters,
        nodes: Sequence[NodeView] = (),
    ) -> bytes:
        """The hello's metrics count since the last bridge metric."""
        span = now - self._bridge.last
        snap = self._bridge_snapshot(now, wall, nodes or self._single(meter, counters), span)
        return self._payloads.hello(snap)

    def _single(self, meter: MeterState, counters: Counters) -> tuple[NodeView, ...]:
        return (NodeView(self._eui, self._topics.node_metric, meter, counters),)

    def _bridge_snapshot(
        self, now: float, wall: float, nodes: Sequence[NodeView], span: float
    ) -> Snapshot:
        """The bridge's view: the first meter's voltage, every node's own counts."""
        views = []
        for n in nodes:
            since = self._at_bridge.get(n.eui, Counters(0))
            last = n.meter.last_accepted
            seen = None if last is None else now - last
            views.append(NodeSnapshot(n.eui, seen, n.counters.published - since.published))
        first = nodes[0]
        snap = self._snapshot(
            now,
            wall,
            first.meter,
            first.counters,
            span,
            self._at_bridge.get(first.eui, Counters(0)),
        )
        return replace(snap, nodes=tuple(views))

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
