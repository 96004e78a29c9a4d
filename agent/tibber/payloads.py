"""What the Pulse bridge publishes, built from the agent's state. Pure: no clock, no I/O.

Shapes and constants follow captures of a real bridge (firmware-notes/fields.md lists
which field is real and which is modelled, and why). Key order follows the captures too:
JSON objects are unordered, but a reader comparing with a capture should see the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import TibberSettings
from ..meter.reading import Reading
from .templates import BRIDGE_FIELDS, NODE_FIELDS

# QoS 1 everywhere (AWS IoT takes 0 and 1). The known-working sender used 0 for readings;
# 1 costs one small PUBACK per reading and tells the agent within seconds that a link has
# stalled, so it stops feeding readings that would arrive late (uplink.ACK_STALL).
QOS_OBIS = 1
QOS_EVENT = 1
BLANK_AFTER_IDENT = b"\r\n\r\n"


def obis_stream(raw: bytes) -> bytes:
    """The telegram as the Pulse forwards it: the empty line after the ident removed."""
    return raw.replace(BLANK_AFTER_IDENT, b"\r\n", 1)


def reading_message(topics: Topics, reading: Reading) -> tuple[str, bytes]:
    """Where and how the bridge forwards one reading: OBIS text on obis_stream without the
    blank line; an SML transport frame on sml, binary and whole (tibber-bridge.md §4.3:
    reported); text framed with STX/ETX and a verified BCC on iec, whole."""
    if reading.protocol == "sml":
        return topics.sml, reading.raw
    if reading.bcc:
        # STX/ETX text whose block check verified: the bridge keeps blank line, STX, ETX
        # and BCC (tibber-bridge.md §4.2, a ZPA GH305; the MQTT topic inferred).
        return topics.iec, reading.raw
    return topics.obis_stream, obis_stream(reading.raw)


# The node's meter_mode (its param 27; MARQ-C's enum: 1 IEC 62056-21, 2 Logarex, 3 SML 1.04):
# 3 is what SML meters' nodes report, 4 what the one eBZ text capture shows (EGY-J); other
# makers' OBIS text is IEC 62056-21 (D0 push is its mode D): 1, inferred, no capture shows it.
METER_MODES = {"ebz": 4, "d0": 1, "iec": 1, "sml": 3}


@dataclass(frozen=True)
class Topics:
    event: str
    bridge_metric: str
    node_metric: str
    obis_stream: str
    sml: str
    iec: str
    receive: str

    @classmethod
    def of(cls, s: TibberSettings) -> Topics:
        base = s.publish_base
        return cls(
            event=f"{base}/TJH01/{s.bridge_id}/event",
            bridge_metric=f"{base}/TJH01/{s.bridge_id}/metric",
            node_metric=f"{base}/TFD01/{s.eui}/metric",
            obis_stream=f"{base}/TFD01/{s.eui}/obis_stream",
            sml=f"{base}/TFD01/{s.eui}/{s.sml_suffix}",
            iec=f"{base}/TFD01/{s.eui}/iec",
            receive=s.receive_topic,
        )


@dataclass(frozen=True)
class HostInfo:
    """What the Pi can tell about its network; None where it cannot (modelled instead)."""

    ip: str | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    ssid: str | None = None
    bssid: str | None = None
    rssi: int | None = None
    channel: int | None = None
    soc_temperature: float | None = None


@dataclass(frozen=True)
class NodeSnapshot:
    """One node in the bridge's `nodes` list."""

    eui: str
    since_last_telegram: float | None  # seconds; None = none yet
    published: int  # readings sent in the interval


@dataclass(frozen=True)
class Snapshot:
    """The agent's state at the moment a metric or hello is built."""

    ts: float  # Unix time
    uptime: float  # seconds since the agent started
    interval: float  # seconds since the previous metric of this kind (its counters' span)
    telegrams_published: int  # obis_stream messages in the interval
    since_last_telegram: float | None  # seconds; None = none yet
    voltage: float | None  # the meter's 32.7.0 in volts
    host: HostInfo = field(default_factory=HostInfo)
    meter_mode: int | None = None  # the protocol read (METER_MODES); None: the template's
    nodes: tuple[NodeSnapshot, ...] = ()  # the bridge's nodes; () = one, of the fields above


# Constant fields of a real bridge in 2023 (tibber-bridge.md §5, source EGY-J).
_HUB_VERSION = "1357-05c0c2f6"
_EFR_VERSION = "584-9be5169b"
NODE_VERSION = "1001-b6715572"
BRIDGE_CONSTANTS: dict[str, Any] = {
    "vcc": 3.49,
    "heap": 124000,
    "coredump_available": False,
    "ota": [
        {"model": m, "manifest_version": v, "current_version": v, "state": "up2date"}
        for m, v in (
            ("tibber-pulse-ir-hub-esp32", _HUB_VERSION),
            ("tibber-pulse-ir-hub-css", _HUB_VERSION),
            ("tibber-pulse-ir-hub-js", _HUB_VERSION),
            ("tibber-pulse-ir-hub-efr32-fg23", _EFR_VERSION),
            ("tibber-pulse-ir-hub-efr32-fg1", _EFR_VERSION),
        )
    ],
    "hub_ota_status": "up2date",
    "manifest_state": "synced",
    "manifest_version": "2306.4",
    "manifest_group": "",
    "netflags": 25,
    "ssid": "",
    "bssid": "",
    "rssi": -64,
    "channel": 6,
    "vacrms": 230.0,
}
NODE_CONSTANTS: dict[str, Any] = {
    "product_id": 49344,
    "bootloader_version": 17563650,
    "meter_mode": 4,
    "node_battery_voltage": 3.435,
    "node_temperature": 21.0,
    "node_avg_rssi": -60.0,
    "node_avg_lqi": 190.0,
    "radio_tx_power": 0,
    "acmp_rx_autolevel_300": 146,
    "acmp_rx_autolevel_9600": 139,
    "node_version": NODE_VERSION,
}
# The bridge's EFR radio chip boots a moment after the ESP32 (captures: 2-107 s less).
EFR_UPTIME_LAG = 2
# Energy modes of the node's radio chip per reading (capture: 4351 ms em0, 33 ms em1 for 99).
EM0_MS_PER_READING = 44
EM1_MS = 33
# The node sends each reading to the bridge in one or more radio packets; the node metric
# counts both. The only capture from an eBZ text meter (EGY-J, meter_mode 4) has 133 packets
# for 99 readings. No source gives the radio's packet size, so the model is that ratio.
CAPTURE_PACKETS, CAPTURE_READINGS = 133, 99


def radio_packets(readings: int) -> int:
    """The packets the node would have needed for `readings` messages (nearest whole)."""
    return round(readings * CAPTURE_PACKETS / CAPTURE_READINGS)


class PayloadBuilder:
    """Builds hello, bridge metric and node metric JSON from snapshots."""

    def __init__(
        self,
        settings: TibberSettings,
        bridge_template: dict[str, Any] | None = None,
        node_template: dict[str, Any] | None = None,
    ) -> None:
        self._s = settings
        self._bridge = {**BRIDGE_CONSTANTS, **_bridge_constants(bridge_template)}
        self._node = {**NODE_CONSTANTS, **_node_constants(node_template)}
        self._mac = self._bridge.get("mac") or _mac_from_bridge_id(settings.bridge_id)
        self._ap_mac = self._bridge.get("ap_mac") or _next_mac(self._mac)

    def hello(self, snap: Snapshot) -> bytes:
        doc = {
            "$type": "event",
            "id": 2000,
            "class": "esp32_hub_event",
            "name": "HUB_EVENT_MQTT_SUBSCRIBE_EVENT",
            "args": {"greet": "May the force be with you!"},
            # In the capture the hello carries 1/2 and the periodic metric 0/0.
            "metrics": self._status(snap, mqttcon=1, wificon=2),
        }
        return _dump(doc)

    def bridge_metric(self, snap: Snapshot) -> bytes:
        doc = {
            "$type": "status",
            "device_id": self._s.bridge_id,
            "ts": int(snap.ts),
            "status": self._status(snap, mqttcon=0, wificon=0),
        }
        return _dump(doc)

    def node_metric(self, snap: Snapshot) -> bytes:
        c = self._node
        interval_ms = max(0, round(snap.interval * 1000))
        packets = radio_packets(snap.telegrams_published)
        em0 = min(interval_ms, EM0_MS_PER_READING * snap.telegrams_published)
        em1 = min(interval_ms - em0, EM1_MS)
        temperature = snap.host.soc_temperature
        doc = {
            "$type": "node_status",
            "node_status": {
                "product_id": c["product_id"],
                "bootloader_version": c["bootloader_version"],
                "meter_mode": c["meter_mode"] if snap.meter_mode is None else snap.meter_mode,
                "node_battery_voltage": c["node_battery_voltage"],
                "node_temperature": round(
                    temperature if temperature is not None else c["node_temperature"], 3
                ),
                "node_avg_rssi": c["node_avg_rssi"],
                "node_avg_lqi": c["node_avg_lqi"],
                "radio_tx_power": c["radio_tx_power"],
                "node_uptime_ms": int(snap.uptime * 1000),
                "meter_msg_count_sent": snap.telegrams_published,
                "meter_pkg_count_sent": packets,
                "time_in_em0_ms": em0,
                "time_in_em1_ms": em1,
                "time_in_em2_ms": interval_ms - em0 - em1,
                "acmp_rx_autolevel_300": c["acmp_rx_autolevel_300"],
                "acmp_rx_autolevel_9600": c["acmp_rx_autolevel_9600"],
            },
            "hub_attachments": {
                # Every capture shows the bridge receiving what the node sent.
                "meter_pkg_count_recv": packets,
                "meter_reading_count_recv": snap.telegrams_published,
                "node_version": c["node_version"],
            },
        }
        return _dump(doc)

    def _node_entry(self, node_id: int, n: NodeSnapshot, uptime: int) -> dict[str, Any]:
        seen = n.since_last_telegram
        return {
            "$type": "node",
            "id": node_id,
            "eui": n.eui,
            "model": "TFD01",
            "version": self._node["node_version"],
            "rssi": float(self._node["node_avg_rssi"]),
            # Seconds since the node was last heard; the bridge rounds up.
            "seen": math.ceil(seen) if seen is not None else uptime,
            "available": seen is not None and seen < 60,
            "pubcnt": n.published,
            "ota_state": "idle",
            "ota_status": "up2date",
            "manifest_version": self._node["node_version"],
            "up2date": True,
        }

    def _status(self, snap: Snapshot, *, mqttcon: int, wificon: int) -> dict[str, Any]:
        c, h = self._bridge, snap.host
        uptime = int(snap.uptime)
        nodes = snap.nodes or (
            NodeSnapshot(self._s.eui, snap.since_last_telegram, snap.telegrams_published),
        )
        dns = list(h.dns[:9]) + ["0.0.0.0"] * (9 - len(h.dns[:9]))
        return {
            "$type": "metrics",
            "ssid": h.ssid if h.ssid is not None else c["ssid"],
            "rssi": h.rssi if h.rssi is not None else c["rssi"],
            "bssid": h.bssid if h.bssid is not None else c["bssid"],
            "channel": h.channel if h.channel is not None else c["channel"],
            "mqttcon": mqttcon,
            "wificon": wificon,
            "id": self._s.bridge_id,
            "uptime": uptime,
            "efr_uptime": max(0, uptime - EFR_UPTIME_LAG),
            "vcc": c["vcc"],
            "vacrms": round(snap.voltage if snap.voltage is not None else c["vacrms"], 2),
            "heap": c["heap"],
            "coredump_available": c["coredump_available"],
            "model": "TJH01",
            "nodes": [self._node_entry(i, n, uptime) for i, n in enumerate(nodes, start=1)],
            "ota": c["ota"],
            "hub_ota_status": c["hub_ota_status"],
            "manifest_state": c["manifest_state"],
            "manifest_version": c["manifest_version"],
            "manifest_group": c["manifest_group"],
            "netflags": c["netflags"],
            "ip": h.ip or "0.0.0.0",
            "gateway": h.gateway or "0.0.0.0",
            **{f"dns{i}": d for i, d in enumerate(dns)},
            "mac": self._mac,
            "ap_mac": self._ap_mac,
        }


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _bridge_constants(doc: dict[str, Any] | None) -> dict[str, Any]:
    """Constant fields from a captured hello, TJH01 metric or bare metrics object."""
    if not doc:
        return {}
    status = doc.get("status") or doc.get("metrics") or doc
    if not isinstance(status, dict):
        return {}
    out = {k: status[k] for k in BRIDGE_FIELDS if k in status}
    return out


def _node_constants(doc: dict[str, Any] | None) -> dict[str, Any]:
    """Constant fields from a captured TFD01 metric (the bridge's /metrics.json?node_id=1)."""
    if not doc:
        return {}
    status = doc.get("node_status", doc)
    out = {k: status[k] for k in NODE_FIELDS if isinstance(status, dict) and k in status}
    version = (doc.get("hub_attachments") or {}).get("node_version")
    if isinstance(version, str):
        out["node_version"] = version
    return out


def _mac_from_bridge_id(bridge_id: str) -> str:
    """The bridge id is MAC-derived (Espressif prefixes, inferred); show it like the bridge
    does, bytes without zero padding."""
    digits = bridge_id[:12].ljust(12, "0")
    return ":".join(f"{int(digits[i : i + 2], 16):x}" for i in range(0, 12, 2))


def _next_mac(mac: str) -> str:
    """ESP32 soft-AP MAC = station MAC + 1 (Espressif's scheme)."""
    parts = [int(p, 16) for p in mac.split(":")]
    value = int.from_bytes(bytes(parts), "big") + 1
    return ":".join(f"{b:x}" for b in value.to_bytes(6, "big")[-6:])
