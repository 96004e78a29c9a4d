"""The Tibber link: TLS with the bridge's certificate, hello on every connect, obis_stream
rate-limited and fresh-only, bridge and node metrics on their cadences."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config import TibberSettings
from ..meter.telegram import Telegram
from ..mqtt import SILENT_CLOSES_BEFORE_ALARM, ClosedBeforeConnack, MqttLink
from ..schedule import RateLimit
from ..state import LinkState, MeterState, Problem
from .metrics import Counters, MetricSchedule
from .payloads import QOS_EVENT, QOS_OBIS, HostInfo, PayloadBuilder, Topics, obis_stream

if TYPE_CHECKING:
    import ssl

    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

# A reading older than this is not sent: the payload has no timestamp, so Tibber books it
# at arrival. A held telegram is confirmed 1 s (or, across a lost second, 2 s) later.
MAX_AGE = 2.5

# The broker's TLS alerts about our certificate (the end of OpenSSL's reason, after
# TLSV1_/SSLV3_/TLSV13_): under TLS 1.2 the handshake fails with one, under TLS 1.3 the first
# read after the handshake gets it (measured with mosquitto: tests/test_mqtt_link.py).
_CLIENT_CERT_ALERTS = {
    "CERTIFICATE_EXPIRED": "the broker rejected the client certificate: it has expired",
    "UNKNOWN_CA": "the broker does not trust the client certificate (unknown CA)",
    "BAD_CERTIFICATE": "the broker rejected the client certificate",
    "CERTIFICATE_REQUIRED": "the broker rejected the client certificate",
    "CERTIFICATE_UNKNOWN": "the broker rejected the client certificate",
    "CERTIFICATE_REVOKED": "the client certificate has been revoked",
    "ACCESS_DENIED": "the broker denied access to this certificate",
}


class TibberUplink(MqttLink):
    name = "tibber"

    def __init__(
        self,
        settings: TibberSettings,
        meter: MeterState,
        host_info: Callable[[], HostInfo] = HostInfo,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            settings.mqtt_url,
            settings.mqtt_port,
            settings.mqtt_client_id,
            settings.keepalive,
            on_change=on_change,
            clock=clock,
        )
        self.settings = settings
        self.topics = Topics.of(settings)
        self.payloads = PayloadBuilder(
            settings, settings.bridge_metrics_template, settings.node_metrics_template
        )
        self._meter = meter
        self._wall = wall
        self._rate = RateLimit(settings.obis_interval)
        self.metrics = MetricSchedule(settings, self.topics, self.payloads, clock(), host_info)
        self.on_sent: Callable[[], None] = lambda: None  # the LED's flicker
        self.published = 0
        self.dropped = 0  # accepted telegrams not sent: offline, stale or stalled link
        self.downlink = 0

    # ------------------------------------------------------------- from the meter thread
    def telegrams(self, batch: Sequence[tuple[Telegram, float]]) -> None:
        if self.settings.obis_interval > 0:
            # Rate-limited: of a confirmed pair only the newer one is worth sending.
            batch = batch[-1:]
        for t, arrived in batch:
            self._send(t, arrived)

    def _send(self, t: Telegram, arrived: float) -> None:
        now = self._clock()
        if not self.connected or now - arrived > MAX_AGE:
            self.dropped += 1
            return
        if not self._rate.due(now):
            return
        if not self.publish(self.topics.obis_stream, obis_stream(t.raw), QOS_OBIS):
            self.dropped += 1  # offline or stalled: dropped, never queued for later
            return
        self._rate.take(now)
        self.published += 1
        self.on_sent()

    # ------------------------------------------------------------- network thread hooks
    def tls_context(self) -> ssl.SSLContext:
        import ssl

        s = self.settings
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=str(s.ca_cert))
        ctx.load_cert_chain(certfile=str(s.certificate), keyfile=str(s.private_key))
        if s.mqtt_port == 443:
            ctx.set_alpn_protocols(["x-amzn-mqtt-ca"])  # AWS IoT's MQTT on 443
        return ctx

    def configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message

    def on_session(self, client: mqtt.Client) -> None:
        hello = self.metrics.hello(self._clock(), self._wall(), self._meter, self._counters())
        client.publish(self.topics.event, hello, QOS_EVENT)
        client.subscribe(self.topics.receive, qos=1)

    def on_tick(self, now: float) -> float:
        for topic, payload in self.metrics.due(now, self._wall(), self._meter, self._counters()):
            self.publish(topic, payload, QOS_EVENT)
        return max(0.0, self.metrics.next_due - now)

    def kicked_text(self) -> str:
        return (
            f"another device uses this bridge id ({self.client_id}): unplug the Tibber "
            "bridge, or the two will keep throwing each other off"
        )

    def classify(self, error: BaseException | str) -> Problem:
        import ssl

        rejected, network = LinkState.REJECTED, LinkState.CONNECTING
        where = f"{self.host}:{self.port}"
        if isinstance(error, str):
            if error.startswith("CONNACK "):
                return Problem(rejected, f"the broker refused the connection: {error[8:]}")
            return Problem(network, f"{where}: {error}")
        if isinstance(error, ssl.SSLCertVerificationError):
            why = error.verify_message or str(error)
            if "expired" in why:
                return Problem(
                    rejected, "the broker's certificate has expired (or the clock is wrong)"
                )
            return Problem(
                rejected,
                f"ca_cert {self.settings.ca_cert} does not trust the broker's certificate ({why})",
            )
        if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
            # The connection ended inside the handshake, without an alert: the path, not a
            # verdict on our certificate.
            return Problem(network, f"{where} closed the connection during the TLS handshake")
        if isinstance(error, ssl.SSLError):
            reason = error.reason or str(error)
            if reason == "KEY_VALUES_MISMATCH":
                return Problem(rejected, "private_key does not belong to certificate")
            for alert, message in _CLIENT_CERT_ALERTS.items():
                if reason.endswith(f"ALERT_{alert}"):
                    return Problem(rejected, message)
            return Problem(rejected, f"TLS failed: {reason}")
        if isinstance(error, socket.gaierror):
            return Problem(network, f"cannot resolve {self.host} (DNS)")
        if isinstance(error, ConnectionRefusedError):
            return Problem(network, f"{where} refused the connection")
        if isinstance(error, TimeoutError):
            return Problem(network, f"{where} timed out")
        if isinstance(error, FileNotFoundError | PermissionError):
            return Problem(rejected, f"cannot read {error.filename}: {error.strerror}")
        if isinstance(error, ClosedBeforeConnack):
            return Problem(network, f"{where} closed the connection before accepting it")
        if isinstance(error, ConnectionError):
            return Problem(network, f"{where} reset the connection")
        return Problem(network, f"{where}: {error}")

    def refused_text(self) -> str:
        return (
            "the broker closes the connection right after the TLS handshake, every time "
            f"({SILENT_CLOSES_BEFORE_ALARM} in a row): it probably does not accept this "
            f"certificate or the client id {self.client_id}"
        )

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

    def _counters(self) -> Counters:
        return Counters(self.published)
