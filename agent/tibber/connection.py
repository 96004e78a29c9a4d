"""The connection to Tibber's broker as the bridge: TLS with the bridge's credentials, and
what each way of failing means, in words a user can act on.

Shared by the uplink (which publishes) and `check`'s probe (which publishes nothing), so
both connect with one TLS context and name a failure with one classification.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import TibberSettings
from ..mqtt import SILENT_CLOSES_BEFORE_ALARM, ClosedBeforeConnack, MqttLink
from ..state import LinkState, Problem

if TYPE_CHECKING:
    import ssl

# AWS IoT takes MQTT with an X.509 client certificate on port 443 only from a client that
# offers this ALPN protocol name in its ClientHello; on 8883 no ALPN is needed (AWS IoT
# developer guide, "Device communication protocols": AWS-PROT in firmware-notes).
AWS_MQTT_ALPN = "x-amzn-mqtt-ca"

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


def alpn_protocols(settings: TibberSettings) -> list[str]:
    """What the ClientHello offers: `[tibber] alpn = auto` offers AWS IoT's MQTT protocol
    name on port 443 only, `none` nothing, anything else that one name."""
    if settings.alpn == "auto":
        return [AWS_MQTT_ALPN] if settings.mqtt_port == 443 else []
    if settings.alpn == "none":
        return []
    return [settings.alpn]


def refuse_passphrase() -> str:
    """An encrypted key would make OpenSSL ask for its passphrase on the terminal: never
    block on that (config.check_files names an encrypted key before it gets here)."""
    import ssl

    raise ssl.SSLError("private_key is encrypted; the agent needs it without a passphrase")


def tls_context(settings: TibberSettings) -> ssl.SSLContext:
    """The one TLS context for Tibber's broker: the server and its name always verified
    against ca_cert, the bridge's certificate and key, TLS 1.2 or newer. paho passes the host
    (`mqtt_url`) as server_hostname, so the ClientHello carries it as SNI."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(settings.ca_cert))
    ctx.load_cert_chain(
        certfile=str(settings.certificate),
        keyfile=str(settings.private_key),
        password=refuse_passphrase,
    )
    protocols = alpn_protocols(settings)
    if protocols:
        ctx.set_alpn_protocols(protocols)
    return ctx


class TibberConnection(MqttLink):
    """An MQTT link to Tibber's broker as the bridge: connects, publishes nothing itself."""

    name = "tibber"

    def __init__(
        self,
        settings: TibberSettings,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
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

    def tls_context(self) -> ssl.SSLContext:
        return tls_context(self.settings)

    def kicked_text(self) -> str:
        return (
            f"another device uses this bridge id ({self.client_id}): unplug the Tibber "
            "bridge, or the two will keep throwing each other off"
        )

    def classify(self, error: BaseException | str) -> Problem:
        import ssl

        problem = self._name(error)
        cut = ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
        if isinstance(error, cut) and not isinstance(error, ConnectionRefusedError):
            return Problem(problem.state, problem.text + self._no_alpn_on_443())
        return problem

    def _no_alpn_on_443(self) -> str:
        """Why a broker on 443 may end a connection without a word: what AWS IoT does then
        is not documented (inferred), only that it needs the ALPN name there (AWS-PROT)."""
        if self.port == 443 and not alpn_protocols(self.settings):
            return (
                f" (no ALPN offered: AWS IoT takes MQTT on port 443 only with ALPN "
                f"{AWS_MQTT_ALPN}; set [tibber] alpn = auto)"
            )
        return ""

    def _name(self, error: BaseException | str) -> Problem:
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
            if "mismatch" in why:  # OpenSSL: "Hostname mismatch", "IP address mismatch"
                return Problem(
                    rejected,
                    f"the broker's certificate is not valid for mqtt_url {self.host} ({why})",
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
        if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return Problem(network, f"{where} unreachable ({error.strerror})")
        return Problem(network, f"{where}: {error}")

    def refused_text(self) -> str:
        return (
            "the broker closes the connection right after the TLS handshake, every time "
            f"({SILENT_CLOSES_BEFORE_ALARM} in a row): it probably does not accept this "
            f"certificate or the client id {self.client_id}{self._no_alpn_on_443()}"
        )
