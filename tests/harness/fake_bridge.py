"""A fake Tibber Pulse bridge web interface on 127.0.0.1, built from the documented shapes.

Shapes and facts from ../shared/protocol/tibber-bridge.md (§2 PARAMS with their numbers and
types, §8 the endpoints, §5.3 the node metrics document) and the Homevolt fork's documented
`params.json` / `nodes.json` / `status.json` / `node_metrics.json` (ECU). Every id in here is
made up; the PEMs are the test PKI's (trustme), never a real bridge's.

HTTP Basic `admin:<password>` on every endpoint, as the bridge (MARQ-R, LP-I1); an unknown
path is a 404. The server runs in one thread owned by the context manager, which stops it.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .agent import BRIDGE_ID, EUI, UID
from .certs import Pki

PASSWORD = "AB12-CD34"  # the QR code's form, XXXX-XXXX; made up
BROKER_HOST = "a0bcdefghij0kl-ats.iot.eu-west-1.amazonaws.com"  # made up, AWS's form
WIFI_PSK = "made-up-wifi-password-77"  # param `psk`: must never show up anywhere
TOPIC = f"tibber-bridge/{UID}/publish"
TOPIC_SUB = f"tibber-bridge/{UID}/receive"

# tibber-bridge.md §5.3 (EGY-J's document; the same as GET /metrics.json?node_id=1).
LEGACY_NODE_METRICS: dict[str, Any] = {
    "$type": "node_status",
    "node_status": {
        "product_id": 49344,
        "bootloader_version": 17563650,
        "meter_mode": 4,
        "node_battery_voltage": 3.435,
        "node_temperature": 28.166,
        "node_avg_rssi": -43.557,
        "node_avg_lqi": 193.705,
        "radio_tx_power": 0,
        "node_uptime_ms": 2435139570,
        "meter_msg_count_sent": 99,
        "meter_pkg_count_sent": 133,
        "time_in_em0_ms": 4351,
        "time_in_em1_ms": 33,
        "time_in_em2_ms": 295767,
        "acmp_rx_autolevel_300": 146,
        "acmp_rx_autolevel_9600": 139,
    },
    "hub_attachments": {
        "meter_pkg_count_recv": 133,
        "meter_reading_count_recv": 99,
        "node_version": "1001-b6715572",
    },
}


def newer_node_metrics() -> dict[str, Any]:
    """Node fw 1172-e5b13c4f (MARQ-I60): three counters more, acmp_rx_autolevel_300 gone."""
    doc = copy.deepcopy(LEGACY_NODE_METRICS)
    del doc["node_status"]["acmp_rx_autolevel_300"]
    doc["node_status"]["invalid_meter_readings_count"] = 0
    doc["hub_attachments"]["meter_corrupt_reading_count_recv"] = 0
    doc["hub_attachments"]["compression_error_readings_count"] = 0
    doc["hub_attachments"]["node_version"] = "1172-e5b13c4f"
    return doc


# The "modern" node/ir/hub shape of /node_metrics.json (SNIS, ECU), abridged.
MODERN_NODE_METRICS: dict[str, Any] = {
    "node": {
        "node_id": 1,
        "bootloader_version": 17563650,
        "battery_voltage": 3.41,
        "temperature": 21.5,
        "avg_rssi": -52.1,
        "avg_lqi": 201,
        "radio_tx_power": 0,
        "node_uptime": 2043675213,
        "meter_msg_count_sent": 61,
        "meter_mode": 4,
    },
    "hub": {"meter_msg_count_received": 61, "meter_corrupt_reading_count_received": 0},
    "packet_delivery_rate": 100,
}

# GET /status.json?timeout=0 (BOT, ECU): firmware, Wi-Fi, MQTT state; no bridge id.
STATUS: dict[str, Any] = {
    "up_time": 177125900,
    "pairing_status": 0,
    "firmware": {"esp": "1357-05c0c2f6", "efr": "584-9be5169b"},
    "wifi_status": {
        "wifi_mode": "sta",
        "ip": "192.0.2.10",
        "ssid": "made-up-ssid",
        "bssid": "0a1b2c3d4e5f",
        "rssi": -64,
        "connected": True,
    },
    "mqtt_status": {"connected": True, "subscribed": True, "last_error": {}},
}

# A captured TJH01 metric (§5.2, abridged) with made-up values.
TJH01_METRIC: dict[str, Any] = {
    "$type": "status",
    "device_id": BRIDGE_ID,
    "ts": 1692217927,
    "status": {
        "$type": "metrics",
        "ssid": "made-up-ssid",
        "rssi": -73,
        "bssid": "0a1b2c3d4e5f",
        "channel": 6,
        "id": BRIDGE_ID,
        "vcc": 3.49,
        "heap": 124808,
        "coredump_available": True,
        "model": "TJH01",
        "hub_ota_status": "up2date",
        "manifest_state": "synced",
        "manifest_version": "2306.4",
        "manifest_group": "",
        "netflags": 25,
        "mac": "a:1b:2c:3d:4e:5f",
        "ap_mac": "a:1b:2c:3d:4e:60",
    },
}


def nodes(eui: str = EUI, node_id: int = 1) -> list[dict[str, Any]]:
    """GET /nodes.json (BOT info.go, ECU, MARQ-C): the Pulse IR node."""
    return [
        {
            "node_id": node_id,
            "product_id": 49344,
            "product_model": "TFD01",
            "eui": eui,
            "version": "1001-b6715572",
            "average_rssi": -59,
            "last_seen_ms": 2517,
            "last_data_ms": 2520,
            "available": True,
            "paired": True,
        }
    ]


def crlf(text: str) -> str:
    """How the bridge stores a PEM: \\r\\n line ends (tibber-bridge.md §2)."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


@dataclass
class Credentials:
    ca: str
    certificate: str
    private_key: str

    @classmethod
    def of(cls, pki: Pki, *, cert: Path | None = None, key: Path | None = None) -> Credentials:
        return cls(
            pki.ca.read_text(),
            (cert or pki.client_crt).read_text(),
            (key or pki.client_key).read_text(),
        )


def params(
    creds: Credentials,
    *,
    host: str = BROKER_HOST,
    port: int = 8883,
    host_name: str = "mqtt_url",
    topic: str = TOPIC,
    topic_sub: str = TOPIC_SUB,
    client_id: str | None = BRIDGE_ID,
    private_key: str | None = "pem",
    with_param_39: bool = True,
) -> list[dict[str, Any]]:
    """GET /params.json: `[{param_id, name, size, type, value: [...]}]` (ECU's shape; the
    bridge's numbers and names from MARQ-NC's param_list, §2). `private_key=None` leaves the
    param out (hidden); any other string than "pem" is served instead of the key."""
    key = crlf(creds.private_key) if private_key == "pem" else private_key
    entries: list[tuple[int, str, str, Any]] = [
        (1, "wifimode", "int", 1),
        (2, "ssid", "string", "made-up-ssid"),
        (3, "psk", "string", WIFI_PSK),
        (5, "ca_cert", "string", crlf(creds.ca)),
        (6, "certificate", "string", crlf(creds.certificate)),
        (7, "private_key", "string", key),
        (8, host_name, "string", host),
        (9, "mqtt_topic", "string", topic),
        (10, "mqtt_topic_sub", "string", topic_sub),
        (11, "mqtt_port", "int", port),
        (12, "mqtt_valid", "bool", True),
        (23, "mqtt_pause", "bool", False),
        (39, "webserver_force_enable", "bool", True),
        (42, "mqtt_client_id", "string", client_id),
    ]
    out = []
    for param_id, name, kind, value in entries:
        if value is None or (param_id == 39 and not with_param_39):
            continue
        size = len(value) if isinstance(value, str) else 4
        out.append(
            {"param_id": param_id, "name": name, "size": size, "type": kind, "value": [value]}
        )
    return out


def routes(
    creds: Credentials,
    *,
    firmware: str = "2023",
    metrics: dict[str, Any] | None = None,
    **param_options: Any,
) -> dict[str, Any]:
    """The documents of one bridge, by firmware generation:
    - "2023": `mqtt_host` (EGY-R's name), /metrics.json in the 2023 shape (EGY-J);
    - "2025": `mqtt_url` (MARQ-NC), param 39 hidden (ESP fw >= 1390, MARQ-I36), the node
      fw 1172 metrics (MARQ-I60);
    - "modern": as 2025, but only /node_metrics.json (SNIS, ECU): /metrics.json is a 404.
    """
    if firmware == "2023":
        param_options.setdefault("host_name", "mqtt_host")
        node_doc = LEGACY_NODE_METRICS
    else:
        param_options.setdefault("with_param_39", False)
        node_doc = newer_node_metrics()
    served: dict[str, Any] = {
        "/params.json": params(creds, **param_options),
        "/nodes.json": nodes(),
        "/status.json?timeout=0": STATUS,
    }
    if firmware == "modern":
        served["/node_metrics.json?node_id=1"] = MODERN_NODE_METRICS
    else:
        served["/metrics.json?node_id=1"] = metrics if metrics is not None else node_doc
    return served


@dataclass
class Request:
    method: str
    path: str
    authorized: bool


@dataclass(frozen=True)
class Redirect:
    """Served at a path: a 302 to `location` (the real bridge never redirects)."""

    location: str


@dataclass
class FakeBridge:
    """`with FakeBridge(routes) as bridge:` serves `routes` (path with query -> JSON-able
    document, raw bytes, or an int HTTP status) at `bridge.host`."""

    served: dict[str, Any]
    password: str = PASSWORD
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: http.server.HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def body(self, path: str) -> bytes:
        """The bytes served at `path`."""
        doc = self.served[path]
        return doc if isinstance(doc, bytes) else json.dumps(doc).encode()

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        bridge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                bridge._answer(self)

            def do_POST(self) -> None:
                bridge._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self._server.timeout = 5
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        token = base64.b64encode(f"admin:{self.password}".encode()).decode()
        authorized = handler.headers.get("Authorization") == f"Basic {token}"
        self.requests.append(Request(handler.command, handler.path, authorized))
        if not authorized:
            self._send(handler, 401, b"", {"WWW-Authenticate": 'Basic realm="tibber"'})
            return
        doc = self.served.get(handler.path) if handler.command == "GET" else 405
        if doc is None:
            self._send(handler, 404, b"not found")
        elif isinstance(doc, int):
            self._send(handler, doc, b"")
        elif isinstance(doc, Redirect):
            self._send(handler, 302, b"", {"Location": doc.location})
        else:
            body = self.body(handler.path)
            self._send(handler, 200, body, {"Content-Type": "application/json"})

    @staticmethod
    def _send(
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
