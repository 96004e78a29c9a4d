"""The local mirror: every accepted telegram's raw bytes to a local broker, fire and forget;
optionally its decoded values for Home Assistant, with MQTT discovery.

It never slows the Tibber path: it publishes from the meter thread only when its own
connection is up and draining, and drops the message otherwise. Raw telegrams and Home
Assistant states go out QoS 0; the few retained messages (discovery documents, availability)
QoS 1.

Home Assistant (agent/homeassistant.py has the documents): the availability topic is the
connection's last will (`offline`, retained), set before connecting; `online` follows every
CONNACK, `offline` a clean stop. The meter thread announces the sensors of the layout it
publishes before the first state of each connection and again whenever the adopted layout or
meter changes, so a state never names a sensor Home Assistant has not been told about. States
are rate-limited by obis_interval, like obis_stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .config import MirrorSettings
from .homeassistant import OFFLINE, ONLINE, Announcement, Discovery
from .meter.reading import Reading
from .mqtt import MqttLink
from .schedule import RateLimit
from .state import LinkState, Problem

if TYPE_CHECKING:
    import ssl

    import paho.mqtt.client as mqtt


class Mirror(MqttLink):
    name = "mirror"

    def __init__(
        self,
        settings: MirrorSettings,
        client_id: str,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        *,
        node: str = "",
        interval: float = 0.0,
        meters: Sequence[str] = (),
    ) -> None:
        """node: the agent's own id in the Home Assistant topics (the bridge id);
        interval: least time between two Home Assistant states ([tibber] obis_interval);
        meters: the NAMEs of [meter:NAME] sections, each its own raw topic (topic/NAME) and
        Home Assistant device; none for the single [meter]."""
        super().__init__(settings.host, settings.port, client_id, 60, on_change, clock=clock)
        self.settings = settings
        self.published = 0
        agent = node or client_id
        self.discovery = (
            Discovery(settings.discovery_prefix, agent, interval)
            if settings.home_assistant
            else None
        )
        self.states_published = 0
        self.nodes = (
            [MirrorNode(self, settings.topic, self.discovery, interval)]
            if not meters
            else [
                MirrorNode(
                    self,
                    f"{settings.topic}/{name}",
                    Discovery(settings.discovery_prefix, f"{agent}/{name}", interval, agent)
                    if settings.home_assistant
                    else None,
                    interval,
                )
                for name in meters
            ]
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if self.settings.ca_cert is None:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.settings.ca_cert))

    def classify(self, error: BaseException | str) -> Problem:
        import ssl

        if isinstance(error, ssl.SSLCertVerificationError):
            why = error.verify_message or str(error)
            ca = self.settings.ca_cert
            return Problem(
                LinkState.REJECTED, f"ca_cert {ca} does not trust the broker's certificate ({why})"
            )
        cut = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
        if isinstance(error, ssl.SSLError) and not isinstance(error, cut):
            return Problem(LinkState.REJECTED, f"TLS failed: {error.reason or error}")
        return super().classify(error)

    def configure(self, client: mqtt.Client) -> None:
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password or None)
        if self.discovery is not None:
            # The broker publishes it when the connection dies without a DISCONNECT.
            client.will_set(self.discovery.topics.availability, OFFLINE, qos=1, retain=True)

    def on_session(self, client: mqtt.Client) -> None:
        if self.discovery is not None:
            client.publish(self.discovery.topics.availability, ONLINE, qos=1, retain=True)

    def stop(self, timeout: float = 2.0) -> None:
        # A clean DISCONNECT makes the broker discard the will: say it ourselves (queued
        # before the DISCONNECT, so written before it).
        if self.discovery is not None:
            self.publish(self.discovery.topics.availability, OFFLINE, qos=1, retain=True)
        super().stop(timeout)

    # ------------------------------------------------------------- from the meter thread
    def telegrams(self, batch: Sequence[tuple[Reading, float]]) -> None:
        """The first (or only) meter's readings; MirrorNode.telegrams for the others."""
        self.nodes[0].telegrams(batch)


class MirrorNode:
    """One meter on the mirror: its raw topic, its Home Assistant device and rate limit.
    Meter thread only (that meter's reader hands it readings)."""

    def __init__(
        self, mirror: Mirror, topic: str, discovery: Discovery | None, interval: float
    ) -> None:
        self.mirror = mirror
        self.topic = topic
        self.discovery = discovery
        self._rate = RateLimit(interval)
        # The announcement of the layout and meter last seen, and the one last published
        # with the connection (MqttLink.connects) it was published on.
        self._layout: tuple[str, ...] | None = None
        self._meter_id = ""
        self._current: Announcement | None = None
        self._announced: Announcement | None = None
        self._announced_on = 0

    def telegrams(self, batch: Sequence[tuple[Reading, float]]) -> None:
        mirror = self.mirror
        for t, _ in batch:
            if mirror.publish(self.topic, t.raw, qos=0):
                mirror.published += 1
        if self.discovery is not None:
            # Rate-limited: of a confirmed pair only the newer one is worth sending.
            for t, _ in batch[-1:] if self._rate.interval > 0 else batch:
                self._send_state(t)

    def _send_state(self, t: Reading) -> None:
        mirror = self.mirror
        now = mirror._clock()
        if not mirror.connected or not self._rate.due(now):
            return
        announcement = self._announcement(t)
        if not self._announce(announcement):
            return
        if mirror.publish(announcement.topics.state, announcement.state(t.values), qos=0):
            self._rate.take(now)
            mirror.states_published += 1

    def _announcement(self, t: Reading) -> Announcement:
        """The announcement of t's layout and meter (the same object while they stay: a
        parsed layout is one tuple object per layout, so the check is cheap)."""
        current = self._current
        if current is None or t.layout is not self._layout or t.meter_id != self._meter_id:
            if current is None or t.layout != self._layout or t.meter_id != self._meter_id:
                assert self.discovery is not None
                current = self._current = self.discovery.announcement(t)
            self._layout, self._meter_id = t.layout, t.meter_id
        return current

    def _announce(self, announcement: Announcement) -> bool:
        """Discovery documents (retained) for this connection, and removals of the sensors
        the previous layout had and this one has not. False if any could not be queued: the
        state waits, the next reading tries again."""
        session = self.mirror.connects
        if announcement is self._announced and session == self._announced_on:
            return True
        previous = self._announced
        messages = previous.removals(announcement) if previous is not None else []
        for topic, document in messages + announcement.configs():
            if not self.mirror.publish(topic, document, qos=1, retain=True):
                return False
        self._announced, self._announced_on = announcement, session
        return True
