"""Home Assistant discovery documents and state messages, from real and simulated telegrams.

What Home Assistant would make of them: the sensors a layout carries, their device class,
state class and unit, one device per meter, and state values with the metered digits.
"""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal

import pytest

from agent.homeassistant import SENSORS, Discovery, json_number
from agent.meter.simulator import SimulatedEbz
from agent.meter.telegram import Telegram, parse
from tests.harness.paths import read_capture, split_telegrams

AHPOHL_BZ = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"  # BZ, MSB: voltages
RUST_2R = "ebz_dd3_2r06eta_rust-test-fixture.txt"  # 2R, INFO port: export, no voltages
IOBROKER_2R = "ebz_dd3_2r06eta_iobroker-smartmeter-issue192_2telegrams.crlf-reconstructed.txt"
PHILIPPOO_DTA = "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt"  # tariffs

NODE = "0a1b2c3d4e5f6"
ENERGY = {"energy_import", "energy_export"}
POWER = {"power", "power_l1", "power_l2", "power_l3"}
VOLTAGE = {"voltage_l1", "voltage_l2", "voltage_l3"}
TEMPLATE = re.compile(r"\{\{ value_json\.(\w+) \}\}")


def capture(name: str) -> list[Telegram]:
    return [parse(raw) for raw in split_telegrams(read_capture(name))]


def simulated(**kw: object) -> SimulatedEbz:
    return SimulatedEbz(rng=random.Random(3), **kw)  # type: ignore[arg-type]


def discovery(prefix: str = "homeassistant", interval: float = 2.0) -> Discovery:
    return Discovery(prefix, NODE, interval)


def documents(t: Telegram, d: Discovery | None = None) -> dict[str, dict]:
    return {topic: json.loads(doc) for topic, doc in (d or discovery()).announcement(t).configs()}


def state(t: Telegram, d: Discovery | None = None) -> dict[str, Decimal]:
    """The state message as Home Assistant's JSON parser reads it, numbers kept exact."""
    payload = (d or discovery()).announcement(t).state(t.values)
    return json.loads(payload, parse_float=Decimal, parse_int=Decimal)


def metered(t: Telegram) -> dict[str, Decimal]:
    """The telegram's own values of the sensors it carries, by state key."""
    return {s.key: Decimal(t.values[s.code]) for s in SENSORS if s.code in t.values}


# --- which sensors a layout carries ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        (AHPOHL_BZ, {"energy_import"} | POWER | VOLTAGE),  # a BZ has no 2.8.0
        (RUST_2R, ENERGY | POWER),  # the INFO port has no voltages
        (PHILIPPOO_DTA, ENERGY | POWER | VOLTAGE),  # tariff registers left out
    ],
)
def test_the_sensors_are_what_the_captured_meter_sends(name: str, keys: set[str]) -> None:
    for t in capture(name):
        assert set(state(t)) == keys
        assert state(t) == metered(t)  # every value exactly as metered
        assert {
            doc["unique_id"].rsplit(f"{t.meter_id}_", 1)[1] for doc in documents(t).values()
        } == keys


def test_a_reduced_layout_has_only_the_whole_kwh_register() -> None:
    """Without the PIN the meter sends whole kWh and no power: one sensor."""
    meter = simulated(reduced=True, voltages=False)
    t = parse(meter.next_telegram())
    assert t.values["1.8.0"].isdigit()
    assert state(t) == {"energy_import": Decimal(t.values["1.8.0"])}
    whole_kwh = t.values["1.8.0"].lstrip("0")
    assert (
        discovery().announcement(t).state(t.values) == b'{"energy_import":%s}' % whole_kwh.encode()
    )


def test_a_line_in_another_unit_is_not_announced() -> None:
    """The unit announced must be the one the values are in: a layout whose 16.7.0 is in VA
    (which the parser admits) gets no power sensor."""
    raw = simulated().next_telegram().replace(b"*W)\r\n1-0:36", b"*VA)\r\n1-0:36", 1)
    t = parse(raw)
    assert any(e.startswith("1-0:16.7.0*255 ") and e.endswith(" VA") for e in t.layout)
    assert "power" not in state(t) and "power_l1" in state(t)


# --- numbers exactly as metered ----------------------------------------------------------------


def test_energy_keeps_every_metered_digit() -> None:
    """005267.03049619 kWh (the first ahpohl telegram, and the simulator's default) is
    5267.03049619 in the JSON, not a float's 5267.030496190001; 003699.65305306 (ioBroker
    #192) is where a float product goes wrong (3699.6530530600003)."""
    first = capture(AHPOHL_BZ)[0]
    assert first.values["1.8.0"] == "005267.03049619"
    for t in (first, parse(simulated().next_telegram()), capture(IOBROKER_2R)[0]):
        payload = discovery().announcement(t).state(t.values).decode()
        digits = t.values["1.8.0"].lstrip("0")
        assert f'"energy_import":{digits},' in payload, payload
        # What Home Assistant shows: its JSON parser's float, printed as Python prints it.
        assert repr(json.loads(payload)["energy_import"]) == digits


def test_negative_power_while_exporting() -> None:
    meter = simulated(export_kwh=1234.5, power_w=200.0, pv_w=3000.0)
    for _ in range(30):
        t = parse(meter.next_telegram())
    assert t.values["16.7.0"].startswith("-")
    assert state(t) == metered(t) and state(t)["power"] < 0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("005267.03049619", "5267.03049619"),
        ("000259.20", "259.20"),  # trailing zeros are the meter's resolution: kept
        ("-000458.90", "-458.90"),
        ("000000.999", "0.999"),
        ("000119", "119"),
        ("000000", "0"),
        ("232.4", "232.4"),
        ("-000000.00", "0.00"),  # no negative zero
    ],
)
def test_json_number(text: str, number: str) -> None:
    assert json_number(text) == number
    assert json.loads(number, parse_float=Decimal, parse_int=Decimal) == Decimal(text)


# --- the discovery documents -------------------------------------------------------------------


def test_each_sensor_has_its_class_unit_and_a_template_that_finds_its_value() -> None:
    t = capture(PHILIPPOO_DTA)[0]  # all nine sensors
    values = state(t)
    docs = documents(t)
    assert len(docs) == 9
    expected = {
        "energy": ("total_increasing", "kWh"),
        "power": ("measurement", "W"),
        "voltage": ("measurement", "V"),
    }
    for topic, doc in docs.items():
        assert topic == f"homeassistant/sensor/{doc['unique_id']}/config"
        assert (doc["state_class"], doc["unit_of_measurement"]) == expected[doc["device_class"]]
        key = TEMPLATE.fullmatch(doc["value_template"])[1]
        assert key in values
        assert doc["device_class"] == key.split("_")[0]
        assert doc["state_topic"] == f"tibber-agent/{NODE}/state"
        assert doc["availability_topic"] == f"tibber-agent/{NODE}/availability"
        assert doc["origin"]["name"] == "tibber-agent"
    assert len({doc["unique_id"] for doc in docs.values()}) == 9
    assert len({doc["name"] for doc in docs.values()}) == 9


def test_one_device_per_meter_named_from_the_ident() -> None:
    for name in (AHPOHL_BZ, RUST_2R, PHILIPPOO_DTA):
        t = capture(name)[0]
        devices = [doc["device"] for doc in documents(t).values()]
        assert all(d == devices[0] for d in devices)
        device = devices[0]
        assert device["manufacturer"] == "eBZ"
        _, maker_baud_type, version = re.fullmatch(r"/(EBZ5)(\w+)_(\d+)", t.ident).groups()
        assert device["model"] == maker_baud_type and device["sw_version"] == version
        assert device["serial_number"] == t.meter_id
        assert any(t.meter_id in i for i in device["identifiers"])


def test_another_discovery_prefix() -> None:
    t = capture(RUST_2R)[0]
    assert all(topic.startswith("ha/sensor/") for topic in documents(t, discovery("ha")))


def test_values_expire_after_three_readings_or_a_minute() -> None:
    t = capture(RUST_2R)[0]
    for interval, expire in ((0, 60), (2, 60), (20, 60), (30.5, 92), (3600, 10800)):
        docs = documents(t, discovery(interval=interval))
        assert {doc["expire_after"] for doc in docs.values()} == {expire}


# --- the sensor set follows the adopted layout -----------------------------------------------


def test_a_pin_entry_adds_the_power_sensors_and_its_removal_deletes_them() -> None:
    meter = simulated(reduced=True)
    d = discovery()
    reduced = d.announcement(parse(meter.next_telegram()))
    meter.set_layout(reduced=False)
    full = d.announcement(parse(meter.next_telegram()))
    assert {s.key for s in reduced.sensors} == {"energy_import"}
    assert {s.key for s in full.sensors} == {"energy_import"} | POWER | VOLTAGE
    assert reduced.removals(full) == []
    removed = full.removals(reduced)
    assert {topic for topic, _ in removed} == set(full.config_topics()) - set(
        reduced.config_topics()
    )
    assert len(removed) == 7 and all(doc == b"" for _, doc in removed)


def test_another_meter_is_another_device() -> None:
    d = discovery()
    old = d.announcement(parse(simulated(meter_id="1EBZ0100000001").next_telegram()))
    new = d.announcement(parse(simulated(meter_id="1EBZ0100000002").next_telegram()))
    assert not set(old.config_topics()) & set(new.config_topics())
    assert len(old.removals(new)) == len(old.sensors)


def test_other_makers_text_without_a_b_or_f_groups_is_announced() -> None:
    """A D0 meter's lines may lack the A-B: and *F groups ("1.8.0(...)"): its sensors are
    announced like an eBZ's, and the state carries their values (found by review: the
    announcement raised IndexError in the meter thread)."""
    from agent.meter.d0.pipeline import D0Pipeline
    from agent.meter.parity import encode_7e1

    def telegram(kwh: float) -> bytes:
        return f"/ZPA5GH305\r\n\r\n1.8.0({kwh:010.3f}*kWh)\r\n16.7.0(000123*W)\r\n!\r\n".encode()

    pipeline = D0Pipeline()
    published = [
        t
        for i in range(4)
        for r in pipeline.feed(encode_7e1(telegram(100 + i * 0.001)), 1.0 + 2 * i)
        for t in r.verdict.publish
    ]
    assert published
    announcement = Discovery("homeassistant", "node", 2.0).announcement(published[-1])
    assert [s.key for s in announcement.sensors] == ["energy_import", "power"]
    last = published[-1]  # the newest telegram waits for its successor
    assert last.values["1.8.0"] == "000100.002"
    assert json.loads(announcement.state(last.values)) == {"energy_import": 100.002, "power": 123}
