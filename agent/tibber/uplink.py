"""The Tibber uplink: the connection to Tibber's broker (connection.py) plus what the bridge
sends on it: hello on every connect, obis_stream rate-limited and fresh-only, bridge and node
metrics on their cadences."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ..config import TibberSettings
from ..meter.reading import Reading
from ..schedule import RateLimit
from ..state import MeterState
from .connection import TibberConnection
from .metrics import Counters, MetricSchedule, NodeView
from .payloads import QOS_EVENT, QOS_OBIS, HostInfo, PayloadBuilder, Topics, reading_message

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

# A reading older than this is not sent: the payload has no timestamp, so Tibber books it
# at arrival. A held telegram is confirmed 1 s (or, across a lost second, 2 s) later.
MAX_AGE = 2.5


class TibberUplink(TibberConnection):
    def __init__(
        self,
        settings: TibberSettings,
        meter: MeterState,
        host_info: Callable[[], HostInfo] = HostInfo,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nodes: Sequence[tuple[str, MeterState]] = (),
    ) -> None:
        """nodes: (eui, meter state) of every meter on this bridge, in order; by default
        the one node of [tibber] eui, read into `meter`."""
        super().__init__(settings, on_change=on_change, clock=clock)
        self.topics = Topics.of(settings)
        self.payloads = PayloadBuilder(
            settings, settings.bridge_metrics_template, settings.node_metrics_template
        )
        self.nodes = [
            Node(self, eui, state, Topics.of(replace(settings, eui=eui)), settings.obis_interval)
            for eui, state in (nodes or [(settings.eui, meter)])
        ]
        self._wall = wall
        self.metrics = MetricSchedule(settings, self.topics, self.payloads, clock(), host_info)
        self.on_sent: Callable[[], None] = lambda: None  # the LED's flicker
        if settings.obis_interval > 0:
            # Readings go out every obis_interval: the meter thread reads each PUBACK when
            # it publishes next, and the network thread sleeps through them (mqtt.py).
            self.read_by_publisher = settings.obis_interval + 1.0
        self.published = 0
        self.dropped = 0  # accepted telegrams not sent: offline, stale or stalled link
        self.downlink = 0

    # ------------------------------------------------------------- from the meter thread
    def telegrams(self, batch: Sequence[tuple[Reading, float]]) -> None:
        """The first (or only) node's readings; Node.telegrams for the others."""
        self.nodes[0].telegrams(batch)

    def _send(self, node: Node, t: Reading, arrived: float) -> None:
        now = self._clock()
        if not self.connected or now - arrived > MAX_AGE:
            self.dropped += 1
            return
        if not node.rate.due(now):
            return
        if not self.publish(*reading_message(node.topics, t), QOS_OBIS):
            self.dropped += 1  # offline or stalled: dropped, never queued for later
            return
        node.rate.take(now)
        node.published += 1
        self.published += 1
        self.on_sent()

    # ------------------------------------------------------------- network thread hooks
    def configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message

    def on_session(self, client: mqtt.Client) -> None:
        first = self.nodes[0]
        hello = self.metrics.hello(
            self._clock(), self._wall(), first.meter, first.counters(), self._views()
        )
        client.publish(self.topics.event, hello, QOS_EVENT)
        client.subscribe(self.topics.receive, qos=1)

    def on_tick(self, now: float) -> float:
        first = self.nodes[0]
        due = self.metrics.due(now, self._wall(), first.meter, first.counters(), self._views())
        for topic, payload in due:
            self.publish(topic, payload, QOS_EVENT)
        return max(0.0, self.metrics.next_due - now)

    def _views(self) -> list[NodeView]:
        return [NodeView(n.eui, n.topics.node_metric, n.meter, n.counters()) for n in self.nodes]

    # ------------------------------------------------------------- internals
    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        # Tibber has never been seen to send anything here; log it for the record, answer nothing.
        self.downlink += 1
        text = message.payload[:200].decode("utf-8", "replace")
        log.info(
            "tibber: downlink message on %s (%d bytes): %s",
            message.topic,
            len(message.payload),
            text,
        )


class Node:
    """One meter's node on the bridge's connection: its topics, its rate limit, its count.
    The meter's reader hands it readings (it is that reader's outlet)."""

    def __init__(
        self, uplink: TibberUplink, eui: str, meter: MeterState, topics: Topics, interval: float
    ) -> None:
        self.uplink = uplink
        self.eui = eui
        self.meter = meter
        self.topics = topics
        self.rate = RateLimit(interval)
        self.published = 0

    def telegrams(self, batch: Sequence[tuple[Reading, float]]) -> None:
        if self.rate.interval > 0:
            # Rate-limited: of a confirmed pair only the newer one is worth sending.
            batch = batch[-1:]
        for t, arrived in batch:
            self.uplink._send(self, t, arrived)

    def next_due(self) -> float:
        """From when this node would send a reading: the reader need not wake before."""
        return self.rate.next_due()

    def counters(self) -> Counters:
        return Counters(self.published)
