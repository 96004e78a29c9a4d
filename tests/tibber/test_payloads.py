"""What goes to Tibber: obis_stream bytes, topics, the bridge's JSON shapes (tibber-bridge.md)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from agent.config import TibberSettings, load
from agent.meter.simulator import SimulatedEbz
from agent.tibber.payloads import (
    HostInfo,
    PayloadBuilder,
    Snapshot,
    Topics,
    obis_stream,
    radio_packets,
)
from tests.harness.paths import read_capture, shared_file, split_telegrams

UID = "0123456789abcdef0123456789abcdef"
# Made-up ids of the captured shapes (13 and 16 hex digits); no real device's.
BRIDGE_ID = "a0b1c2d305000"
EUI = "fedcba9876543210"
RULE = "$aws/rules/ingest_tibber_bridge_data/"
BASE = f"{RULE}tibber-bridge/{UID}/publish"

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
EBZ_CAPTURES = (
    AHPOHL,
    "ebz_dd3_2r06eta_rust-test-fixture.txt",
    "ebz_dd3_2r06eta_iobroker-smartmeter-issue192_2telegrams.crlf-reconstructed.txt",
    "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt",
)

# Key order of the captured payloads, tibber-bridge.md §5.1-5.3.
HELLO_KEYS = ["$type", "id", "class", "name", "args", "metrics"]
BRIDGE_METRIC_KEYS = ["$type", "device_id", "ts", "status"]
STATUS_KEYS = [
    "$type", "ssid", "rssi", "bssid", "channel", "mqttcon", "wificon", "id", "uptime",
    "efr_uptime", "vcc", "vacrms", "heap", "coredump_available", "model", "nodes", "ota",
    "hub_ota_status", "manifest_state", "manifest_version", "manifest_group", "netflags", "ip",
    "gateway", "dns0", "dns1", "dns2", "dns3", "dns4", "dns5", "dns6", "dns7", "dns8", "mac",
    "ap_mac",
]  # fmt: skip
NODE_KEYS = [
    "$type", "id", "eui", "model", "version", "rssi", "seen", "available", "pubcnt",
    "ota_state", "ota_status", "manifest_version", "up2date",
]  # fmt: skip
OTA_KEYS = ["model", "manifest_version", "current_version", "state"]
OTA_MODELS = [
    "tibber-pulse-ir-hub-esp32",
    "tibber-pulse-ir-hub-css",
    "tibber-pulse-ir-hub-js",
    "tibber-pulse-ir-hub-efr32-fg23",
    "tibber-pulse-ir-hub-efr32-fg1",
]
NODE_METRIC_KEYS = ["$type", "node_status", "hub_attachments"]
NODE_STATUS_KEYS = [
    "product_id", "bootloader_version", "meter_mode", "node_battery_voltage",
    "node_temperature", "node_avg_rssi", "node_avg_lqi", "radio_tx_power", "node_uptime_ms",
    "meter_msg_count_sent", "meter_pkg_count_sent", "time_in_em0_ms", "time_in_em1_ms",
    "time_in_em2_ms", "acmp_rx_autolevel_300", "acmp_rx_autolevel_9600",
]  # fmt: skip
HUB_ATTACHMENT_KEYS = ["meter_pkg_count_recv", "meter_reading_count_recv", "node_version"]

STATUS_TYPES: dict[str, type | tuple[type, ...]] = {
    "$type": str, "ssid": str, "rssi": int, "bssid": str, "channel": int, "mqttcon": int,
    "wificon": int, "id": str, "uptime": int, "efr_uptime": int, "vcc": float,
    "vacrms": float, "heap": int, "coredump_available": bool, "model": str, "nodes": list,
    "ota": list, "hub_ota_status": str, "manifest_state": str, "manifest_version": str,
    "manifest_group": str, "netflags": int, "ip": str, "gateway": str, "mac": str,
    "ap_mac": str, **{f"dns{i}": str for i in range(9)},
}  # fmt: skip
NODE_TYPES: dict[str, type] = {
    "$type": str, "id": int, "eui": str, "model": str, "version": str, "rssi": float,
    "seen": int, "available": bool, "pubcnt": int, "ota_state": str, "ota_status": str,
    "manifest_version": str, "up2date": bool,
}  # fmt: skip
NODE_STATUS_TYPES: dict[str, type] = {
    "product_id": int, "bootloader_version": int, "meter_mode": int,
    "node_battery_voltage": float, "node_temperature": float, "node_avg_rssi": float,
    "node_avg_lqi": float, "radio_tx_power": int, "node_uptime_ms": int,
    "meter_msg_count_sent": int, "meter_pkg_count_sent": int, "time_in_em0_ms": int,
    "time_in_em1_ms": int, "time_in_em2_ms": int, "acmp_rx_autolevel_300": int,
    "acmp_rx_autolevel_9600": int,
}  # fmt: skip


def settings(**overrides: Any) -> TibberSettings:
    values: dict[str, Any] = {
        "mqtt_url": "broker.example",
        "uid": UID,
        "bridge_id": BRIDGE_ID,
        "eui": EUI,
        "ca_cert": Path("ca.pem"),
        "certificate": Path("certificate.pem"),
        "private_key": Path("private.key"),
    }
    return TibberSettings(**{**values, **overrides})


def snap(**overrides: Any) -> Snapshot:
    values: dict[str, Any] = {
        "ts": 1692217927.8,
        "uptime": 10982.6,
        "interval": 120.0,
        "telegrams_published": 59,
        "since_last_telegram": 1.2,
        "voltage": 232.3,
        "host": HostInfo(ip="192.168.1.23", gateway="192.168.1.1", dns=("192.168.1.1",)),
    }
    return Snapshot(**{**values, **overrides})


def doc(payload: bytes) -> dict[str, Any]:
    assert payload == payload.strip() and b"\n" not in payload
    return json.loads(payload)


def assert_typed(obj: dict[str, Any], types: dict[str, Any]) -> None:
    for key, expected in types.items():
        value = obj[key]
        assert isinstance(value, expected), (key, value)
        if expected is int or expected is float:
            assert not isinstance(value, bool), key


# --- obis_stream ---------------------------------------------------------------------------------


def expected_obis_stream(raw: bytes) -> bytes:
    lines = raw.split(b"\r\n")
    assert lines[1] == b"" and lines[-2:] == [b"!", b""]
    return b"\r\n".join([lines[0], *lines[2:]])


def assert_obis_stream(raw: bytes) -> None:
    payload = obis_stream(raw)
    assert payload == expected_obis_stream(raw)
    assert len(payload) == len(raw) - 2
    assert payload.endswith(b"\r\n!\r\n") and b"\r\n\r\n" not in payload
    assert payload.count(b"\r\n") == raw.count(b"\r\n") - 1
    assert payload.replace(b"\r\n", b"").count(b"\n") == 0  # CR LF kept, no bare LF


def test_the_bz06eta_telegram_becomes_366_bytes() -> None:
    raw = split_telegrams(read_capture(AHPOHL))[0]
    assert len(raw) == 368
    payload = obis_stream(raw)
    assert len(payload) == 366
    first_line = raw.split(b"\r\n")[2]  # 1-0:0.0.0*255(<the meter's id>)
    assert first_line.startswith(b"1-0:0.0.0*255(")
    assert payload.startswith(b"/EBZ5DD3BZ06ETA_107\r\n" + first_line + b"\r\n")
    assert payload.endswith(b"0-0:96.8.0*255(02792C83)\r\n!\r\n")


@pytest.mark.parametrize("name", EBZ_CAPTURES)
def test_obis_stream_is_byte_exact_for_every_capture(name: str) -> None:
    telegrams = split_telegrams(read_capture(name))
    assert telegrams
    for raw in telegrams:
        assert_obis_stream(raw)


def test_obis_stream_for_simulated_layouts() -> None:
    for options in ({}, {"export_kwh": 3.0, "pv_w": 900.0}, {"reduced": True}):
        meter = SimulatedEbz(rng=random.Random(2), **options)  # type: ignore[arg-type]
        for _ in range(50):
            assert_obis_stream(meter.next_telegram())


def test_obis_stream_removes_only_the_blank_line_after_the_ident() -> None:
    raw = b"/EBZ5DD3BZ06ETA_107\r\n\r\n1-0:96.5.0*255(001C0104)\r\n\r\n!\r\n"
    assert obis_stream(raw) == b"/EBZ5DD3BZ06ETA_107\r\n1-0:96.5.0*255(001C0104)\r\n\r\n!\r\n"


# --- topics --------------------------------------------------------------------------------------


def test_topics_under_the_default_base() -> None:
    t = Topics.of(settings())
    assert t.event == f"{BASE}/TJH01/{BRIDGE_ID}/event"
    assert t.bridge_metric == f"{BASE}/TJH01/{BRIDGE_ID}/metric"
    assert t.node_metric == f"{BASE}/TFD01/{EUI}/metric"
    assert t.obis_stream == f"{BASE}/TFD01/{EUI}/obis_stream"
    assert t.receive == f"tibber-bridge/{UID}/receive"


def test_a_reading_goes_where_its_protocol_goes() -> None:
    """OBIS text on obis_stream without the blank line after the ident; an SML transport
    frame, binary and whole, on the configured suffix (sml unless set)."""
    from types import SimpleNamespace

    from agent.tibber.payloads import reading_message

    text = b"/EBZ5DD3BZ06ETA_107\r\n\r\n1-0:0.0.0*255(1EBZ0100000001)\r\n!\r\n"
    ebz = SimpleNamespace(protocol="ebz", raw=text, bcc=False)
    frame = bytes.fromhex("1b1b1b1b010101017605") + b"\x1b" * 8 + bytes.fromhex("1b1b1b1b1a00abcd")
    sml = SimpleNamespace(protocol="sml", raw=frame, bcc=False)
    iec_raw = b"/ZPA5GH305\r\n\r\n\x021-0:1.8.0*255(000001.000*kWh)\r\n!\r\n\x03i"
    iec = SimpleNamespace(protocol="d0", raw=iec_raw, bcc=True)
    push = SimpleNamespace(protocol="d0", raw=b"/ESY5Q3DA1004 V3.04\r\n\r\n!\r\n", bcc=False)
    t = Topics.of(settings())
    assert t.sml == f"{BASE}/TFD01/{EUI}/sml"
    assert reading_message(t, ebz) == (t.obis_stream, text.replace(b"\r\n\r\n", b"\r\n", 1))
    assert reading_message(t, sml) == (t.sml, frame)
    assert reading_message(t, iec) == (f"{BASE}/TFD01/{EUI}/iec", iec_raw)  # whole
    assert reading_message(t, push) == (t.obis_stream, b"/ESY5Q3DA1004 V3.04\r\n!\r\n")
    upper = Topics.of(settings(sml_suffix="SML"))
    assert reading_message(upper, sml) == (f"{BASE}/TFD01/{EUI}/SML", frame)


def test_mqtt_topic_without_the_aws_prefix_gets_the_rule_prefix() -> None:
    t = Topics.of(settings(mqtt_topic=f"tibber-bridge/{UID}/publish"))
    assert t.obis_stream == f"{BASE}/TFD01/{EUI}/obis_stream"
    other = Topics.of(settings(mqtt_topic="tibber-bridge/other/publish"))
    assert other.event == f"{RULE}tibber-bridge/other/publish/TJH01/{BRIDGE_ID}/event"
    assert other.receive == f"tibber-bridge/{UID}/receive"


def test_mqtt_topic_with_the_aws_prefix_is_used_verbatim() -> None:
    base = "$aws/rules/some_other_rule/tibber-bridge/xyz/publish"
    t = Topics.of(settings(mqtt_topic=base))
    assert t.event == f"{base}/TJH01/{BRIDGE_ID}/event"
    assert t.node_metric == f"{base}/TFD01/{EUI}/metric"


# --- hello, bridge metric ------------------------------------------------------------------------


def assert_status_shape(status: dict[str, Any]) -> None:
    assert list(status) == STATUS_KEYS
    assert_typed(status, STATUS_TYPES)
    assert status["$type"] == "metrics" and status["model"] == "TJH01"
    assert status["id"] == BRIDGE_ID
    assert len(status["nodes"]) == 1
    node = status["nodes"][0]
    assert list(node) == NODE_KEYS
    assert_typed(node, NODE_TYPES)
    assert (node["$type"], node["id"], node["eui"], node["model"]) == ("node", 1, EUI, "TFD01")
    assert node["version"] == node["manifest_version"]
    assert [list(o) for o in status["ota"]] == [OTA_KEYS] * 5
    assert [o["model"] for o in status["ota"]] == OTA_MODELS


def test_hello_shape_and_constants() -> None:
    hello = doc(PayloadBuilder(settings()).hello(snap()))
    assert list(hello) == HELLO_KEYS
    assert hello["$type"] == "event" and hello["id"] == 2000
    assert hello["class"] == "esp32_hub_event"
    assert hello["name"] == "HUB_EVENT_MQTT_SUBSCRIBE_EVENT"
    assert hello["args"] == {"greet": "May the force be with you!"}
    assert_status_shape(hello["metrics"])
    assert (hello["metrics"]["mqttcon"], hello["metrics"]["wificon"]) == (1, 2)


def test_bridge_metric_shape_and_live_values() -> None:
    metric = doc(PayloadBuilder(settings()).bridge_metric(snap()))
    assert list(metric) == BRIDGE_METRIC_KEYS
    assert metric["$type"] == "status" and metric["device_id"] == BRIDGE_ID
    assert metric["ts"] == 1692217927 and isinstance(metric["ts"], int)
    status = metric["status"]
    assert_status_shape(status)
    assert (status["mqttcon"], status["wificon"]) == (0, 0)
    assert status["uptime"] == 10982 and status["efr_uptime"] == 10980
    assert status["vacrms"] == 232.3  # the meter's 32.7.0
    node = status["nodes"][0]
    assert node["pubcnt"] == 59  # obis_stream messages in this interval
    assert node["seen"] == 2 and node["available"] is True
    assert status["ip"] == "192.168.1.23" and status["gateway"] == "192.168.1.1"
    assert [status[f"dns{i}"] for i in range(9)] == ["192.168.1.1"] + ["0.0.0.0"] * 8
    assert status["mac"] == "a0:b1:c2:d3:5:0"  # bytes not zero-padded, as the bridge shows
    assert status["ap_mac"] == "a0:b1:c2:d3:5:1"
    assert 1000 < len(json.dumps(metric)) < 2500  # about 1.5 KB


def test_bridge_metric_without_meter_or_network_values() -> None:
    s = snap(voltage=None, since_last_telegram=None, host=HostInfo(), telegrams_published=0)
    status = doc(PayloadBuilder(settings()).bridge_metric(s))["status"]
    assert_status_shape(status)
    assert status["vacrms"] == 230.0
    assert status["nodes"][0]["available"] is False
    assert status["nodes"][0]["seen"] == status["uptime"]
    assert status["ip"] == status["gateway"] == "0.0.0.0"
    assert status["nodes"][0]["pubcnt"] == 0


def test_stale_meter_is_not_available() -> None:
    status = doc(PayloadBuilder(settings()).bridge_metric(snap(since_last_telegram=75.1)))["status"]
    assert status["nodes"][0]["seen"] == 76 and status["nodes"][0]["available"] is False


def test_host_values_replace_the_modelled_ones() -> None:
    host = HostInfo(
        ip="10.0.0.7",
        ssid="home",
        bssid="a0b1c2d3e4f5",
        rssi=-71,
        channel=11,
        dns=tuple(f"10.0.0.{i}" for i in range(12)),
    )
    status = doc(PayloadBuilder(settings()).bridge_metric(snap(host=host)))["status"]
    assert (status["ssid"], status["bssid"], status["rssi"], status["channel"]) == (
        "home",
        "a0b1c2d3e4f5",
        -71,
        11,
    )
    assert [status[f"dns{i}"] for i in range(9)] == [f"10.0.0.{i}" for i in range(9)]


def test_hello_carries_the_bridge_metrics_status() -> None:
    """One builder for both (fields.md §1): for the same moment, the hello's `metrics` is the
    metric's `status` except for the connection pair, so the two can never drift apart."""
    host = HostInfo(ip="10.0.0.7", gateway="10.0.0.1", ssid="home", rssi=-70, channel=11)
    s = snap(host=host, voltage=228.61, since_last_telegram=3.4, telegrams_published=41)
    builder = PayloadBuilder(settings(), captured_bridge(), captured_node())
    hello = doc(builder.hello(s))["metrics"]
    status = doc(builder.bridge_metric(s))["status"]
    assert (hello.pop("mqttcon"), hello.pop("wificon")) == (1, 2)
    assert (status.pop("mqttcon"), status.pop("wificon")) == (0, 0)
    assert hello == status


@pytest.mark.parametrize("volts", [229.98765, 241.0, 199.5])
def test_vacrms_follows_the_meter_voltage(volts: float) -> None:
    status = doc(PayloadBuilder(settings()).hello(snap(voltage=volts)))["metrics"]
    assert status["vacrms"] == round(volts, 2) and isinstance(status["vacrms"], float)


# --- node metric ---------------------------------------------------------------------------------


def test_node_metric_shape_and_counters() -> None:
    s = snap(interval=300.151, telegrams_published=99, uptime=2435139.57)
    metric = doc(PayloadBuilder(settings()).node_metric(s))
    assert list(metric) == NODE_METRIC_KEYS
    assert metric["$type"] == "node_status"
    status = metric["node_status"]
    assert list(status) == NODE_STATUS_KEYS
    assert_typed(status, NODE_STATUS_TYPES)
    assert list(metric["hub_attachments"]) == HUB_ATTACHMENT_KEYS
    # The EGY-J capture's own counts: 99 readings in 133 radio packets.
    assert status["meter_msg_count_sent"] == 99
    assert status["meter_pkg_count_sent"] == 133
    assert metric["hub_attachments"]["meter_reading_count_recv"] == 99
    assert metric["hub_attachments"]["meter_pkg_count_recv"] == 133
    assert isinstance(metric["hub_attachments"]["node_version"], str)
    assert status["node_uptime_ms"] == 2435139570
    ems = [status[f"time_in_em{i}_ms"] for i in range(3)]
    assert sum(ems) == 300151 and all(e >= 0 for e in ems)
    assert len(json.dumps(metric)) < 1000  # about 0.55 KB


@pytest.mark.parametrize(
    ("interval", "published"),
    [(300.0, 99), (300.152, 0), (120.0, 60), (0.5, 50), (0.0, 3), (301.079, 5000)],
)
def test_energy_mode_times_sum_to_the_interval(interval: float, published: int) -> None:
    s = snap(interval=interval, telegrams_published=published)
    status = doc(PayloadBuilder(settings()).node_metric(s))["node_status"]
    ems = [status[f"time_in_em{i}_ms"] for i in range(3)]
    assert sum(ems) == round(interval * 1000)
    assert all(isinstance(e, int) and e >= 0 for e in ems)


def test_radio_packets_follow_the_captured_ratio() -> None:
    """Modelled (fields.md §2): 133 packets per 99 readings, to the nearest whole, never fewer
    packets than readings (every capture has at least one packet per reading)."""
    assert [radio_packets(n) for n in (0, 1, 2, 3, 99, 150, 198)] == [0, 1, 3, 4, 133, 202, 266]
    for n in range(5000):
        assert n <= radio_packets(n) and abs(radio_packets(n) - n * 133 / 99) <= 0.5, n


@pytest.mark.parametrize("published", [0, 1, 60, 150])
def test_node_metric_counts_packets_of_the_readings_sent(published: int) -> None:
    """Both packet counters come from the readings published in the interval."""
    metric = doc(PayloadBuilder(settings()).node_metric(snap(telegrams_published=published)))
    ns, hub = metric["node_status"], metric["hub_attachments"]
    assert ns["meter_msg_count_sent"] == hub["meter_reading_count_recv"] == published
    assert ns["meter_pkg_count_sent"] == hub["meter_pkg_count_recv"] == radio_packets(published)


def test_node_uptime_beyond_32_bits() -> None:
    s = snap(uptime=60 * 86400.0)  # two months
    status = doc(PayloadBuilder(settings()).node_metric(s))["node_status"]
    assert status["node_uptime_ms"] == 5_184_000_000 > 2**32


def test_node_temperature_from_the_soc_where_readable() -> None:
    hot = doc(PayloadBuilder(settings()).node_metric(snap(host=HostInfo(soc_temperature=48.3125))))
    assert hot["node_status"]["node_temperature"] == 48.312


# --- constants from a user's captured JSON -------------------------------------------------------


def captured_bridge() -> dict[str, Any]:
    """A TJH01 hello as a user would save it from their own bridge (§5.1 shape)."""
    version = "1400-abcdef01"
    ota = [
        {"model": m, "manifest_version": version, "current_version": version, "state": "up2date"}
        for m in OTA_MODELS
    ]
    return {
        "$type": "event",
        "id": 2000,
        "metrics": {
            "$type": "metrics",
            "rssi": -50,
            "vcc": 3.31,
            "heap": 111111,
            "coredump_available": True,
            "ota": ota,
            "hub_ota_status": "up2date",
            "manifest_state": "synced",
            "manifest_version": "2401.1",
            "manifest_group": "",
            "netflags": 7,
            "mac": "0a:1b:2c:d3:e4:f5",
            "ap_mac": "0a:1b:2c:d3:e4:f6",
        },
    }


def captured_node() -> dict[str, Any]:
    return {
        "$type": "node_status",
        "node_status": {
            "product_id": 49345,
            "bootloader_version": 17563651,
            "meter_mode": 3,
            "node_battery_voltage": 3.401,
            "node_avg_rssi": -43.557,
            "node_avg_lqi": 193.705,
            "radio_tx_power": 1,
            "acmp_rx_autolevel_300": 140,
            "acmp_rx_autolevel_9600": 133,
            "node_uptime_ms": 1,
            "meter_msg_count_sent": 12345,
        },
        "hub_attachments": {"node_version": "1172-e5b13c4f"},
    }


def test_template_constants_come_from_captured_json() -> None:
    builder = PayloadBuilder(settings(), captured_bridge(), captured_node())
    status = doc(builder.bridge_metric(snap()))["status"]
    assert_status_shape(status)
    assert (status["vcc"], status["heap"], status["netflags"]) == (3.31, 111111, 7)
    assert status["coredump_available"] is True
    assert status["manifest_version"] == "2401.1"
    assert status["ota"] == captured_bridge()["metrics"]["ota"]
    assert (status["mac"], status["ap_mac"]) == ("0a:1b:2c:d3:e4:f5", "0a:1b:2c:d3:e4:f6")
    # Live values are never taken from the capture.
    assert status["vacrms"] == 232.3 and status["uptime"] == 10982
    assert status["nodes"][0]["version"] == "1172-e5b13c4f"

    node = doc(builder.node_metric(snap(telegrams_published=7)))
    ns = node["node_status"]
    assert list(ns) == NODE_STATUS_KEYS
    assert (ns["product_id"], ns["bootloader_version"], ns["meter_mode"]) == (49345, 17563651, 3)
    assert (ns["acmp_rx_autolevel_300"], ns["acmp_rx_autolevel_9600"]) == (140, 133)
    assert ns["meter_msg_count_sent"] == 7 and ns["node_uptime_ms"] == 10982600
    assert node["hub_attachments"]["node_version"] == "1172-e5b13c4f"


def test_templates_named_in_the_config_reach_the_payloads(tmp_path: Path) -> None:
    (tmp_path / "bridge.json").write_text(json.dumps({"status": captured_bridge()["metrics"]}))
    (tmp_path / "node.json").write_text(json.dumps(captured_node()))
    (tmp_path / "config.ini").write_text(
        "[tibber]\n"
        f"mqtt_url = broker.example\nuid = {UID}\nbridge_id = {BRIDGE_ID}\neui = {EUI}\n"
        "bridge_metrics_template = bridge.json\nnode_metrics_template = node.json\n"
    )
    t = load(tmp_path / "config.ini").tibber
    assert t is not None
    builder = PayloadBuilder(t, t.bridge_metrics_template, t.node_metrics_template)
    assert doc(builder.hello(snap()))["metrics"]["heap"] == 111111
    assert doc(builder.node_metric(snap()))["node_status"]["product_id"] == 49345


# --- against the documented samples themselves ---------------------------------------------------


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return (
        "number"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else type(value).__name__
    )


def test_shapes_match_the_documented_captures() -> None:
    path = shared_file("protocol/tibber-bridge.md")
    samples = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", path.read_text(), re.S)]
    by_type = {s["$type"]: s for s in samples}
    builder = PayloadBuilder(settings())
    assert _shape(doc(builder.hello(snap()))) == _shape(by_type["event"])
    assert _shape(doc(builder.bridge_metric(snap()))) == _shape(by_type["status"])
    assert _shape(doc(builder.node_metric(snap()))) == _shape(by_type["node_status"])
