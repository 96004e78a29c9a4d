"""The local mirror: every accepted telegram's raw bytes to a local broker, fire and forget.

It never slows the Tibber path: it publishes QoS 0 from the meter thread only when its own
connection is up and draining, and drops the message otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .config import MirrorSettings
from .meter.telegram import Telegram
from .mqtt import MqttLink
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
    ) -> None:
        super().__init__(settings.host, settings.port, client_id, 60, on_change, clock=clock)
        self.settings = settings
        self.published = 0

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
        if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError):
            return Problem(LinkState.REJECTED, f"TLS failed: {error.reason or error}")
        return super().classify(error)

    def configure(self, client: mqtt.Client) -> None:
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password or None)

    def telegrams(self, batch: Sequence[tuple[Telegram, float]]) -> None:
        for t, _ in batch:
            if self.publish(self.settings.topic, t.raw, qos=0):
                self.published += 1
