"""Home Assistant MQTT discovery for the local mirror: which sensors a meter's layout carries,
their discovery documents, and one state message per reading. Pure: no I/O, no clock.

The schema is Home Assistant's own documentation (home-assistant.io repository, read for this
module: `source/_integrations/mqtt.markdown` "MQTT Discovery", "Discovery messages and
availability", "Using Availability topics"; `sensor.mqtt.markdown`; `sensor.markdown` "Device
class"; developers.home-assistant.io/blog/2021/08/16/state_class_total):
- one discovery document per sensor on `<prefix>/sensor/<object_id>/config`, with `object_id`
  the `unique_id` and no `node_id` ("best practice for entities with a unique_id");
- the documents retained, so Home Assistant finds them whenever it (re)starts ("Using retained
  config messages"); an empty retained document removes a sensor;
- a `device` mapping (identifiers, name, manufacturer, model, sw_version, serial_number) so the
  sensors appear as one device; an `origin` mapping, which the documentation recommends;
- units the device classes accept: energy in kWh, power in W, voltage in V;
  `state_class: total_increasing` for the energy registers ("a decreasing value is interpreted
  as the start of a new meter cycle or the replacement of the meter": validation publishes
  a lower register only when it adopts a new meter or a run of OVERRULE_AFTER telegrams
  overrules its reference, which is what that reading means), `measurement` for power and
  voltage;
- `availability_topic` with the default payloads `online` / `offline`;
- several sensors reading one state topic, each with its own `value_template` (the
  documentation's "Sensors" example with a common JSON state payload).

One JSON state message per reading, not one topic per value: one publish instead of up to
nine, so one wakeup of the network thread, one packet and one broker delivery per reading on
the Pi, and Home Assistant receives the values of one meter second together.

Numbers go out exactly as metered: the telegram's decimal text with its leading zeros removed
is already a JSON number (`005267.03049619` -> `5267.03049619`). Converting through a float
or scaling an integer count can print artefacts (3699.65305306 becomes 3699.6530530600003).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from . import __version__
from .meter.reading import Reading

TOPIC_ROOT = "tibber-agent"
ONLINE = b"online"
OFFLINE = b"offline"
# A reading not refreshed for this long turns unavailable in Home Assistant (an IR head that
# fell off), at least this long whatever obis_interval says; or three intervals.
EXPIRE_FLOOR = 60
EXPIRE_INTERVALS = 3
_MANUFACTURERS = {"EBZ": "eBZ"}


@dataclass(frozen=True, slots=True)
class Sensor:
    code: str  # OBIS C.D.E, as in Reading.values
    key: str  # the field in the state message; the end of the unique id
    name: str
    device_class: str
    state_class: str
    unit: str  # the unit the telegram must carry, and Home Assistant's
    precision: int  # suggested_display_precision

    @property
    def template(self) -> str:
        return "{{ value_json." + self.key + " }}"


ENERGY, POWER, VOLTAGE = "energy", "power", "voltage"
TOTAL_INCREASING, MEASUREMENT = "total_increasing", "measurement"

# Everything an eBZ DD3 may carry that Home Assistant has a device class for; a layout's
# sensors are the ones its telegrams carry, in this order. The tariff registers of DT types
# (1.8.1, 1.8.2 ...) are left out: the totals are what the energy dashboard takes.
SENSORS: tuple[Sensor, ...] = (
    Sensor("1.8.0", "energy_import", "Energy import", ENERGY, TOTAL_INCREASING, "kWh", 3),
    Sensor("2.8.0", "energy_export", "Energy export", ENERGY, TOTAL_INCREASING, "kWh", 3),
    Sensor("16.7.0", "power", "Power", POWER, MEASUREMENT, "W", 0),
    Sensor("36.7.0", "power_l1", "Power L1", POWER, MEASUREMENT, "W", 0),
    Sensor("56.7.0", "power_l2", "Power L2", POWER, MEASUREMENT, "W", 0),
    Sensor("76.7.0", "power_l3", "Power L3", POWER, MEASUREMENT, "W", 0),
    Sensor("32.7.0", "voltage_l1", "Voltage L1", VOLTAGE, MEASUREMENT, "V", 1),
    Sensor("52.7.0", "voltage_l2", "Voltage L2", VOLTAGE, MEASUREMENT, "V", 1),
    Sensor("72.7.0", "voltage_l3", "Voltage L3", VOLTAGE, MEASUREMENT, "V", 1),
)


def json_number(text: str) -> str:
    """A meter's decimal value (`-?\\d+(\\.\\d+)?`, as the parser admits it) as a JSON
    number with the same digits: leading zeros removed, trailing ones kept."""
    sign = "-" if text[0] == "-" else ""
    digits = (text[1:] if sign else text).lstrip("0")
    if not digits or digits[0] == ".":
        digits = "0" + digits
    if sign and not digits.strip("0."):
        sign = ""  # a negative zero is zero
    return sign + digits


@dataclass(frozen=True)
class Topics:
    discovery_prefix: str  # Home Assistant's, "homeassistant" unless the user changed it
    node: str  # this meter's node: the bridge id, or "<bridge id>/<NAME>" of a [meter:NAME]
    agent: str = ""  # the agent (its bridge id) where node is one of several: availability

    @property
    def base(self) -> str:
        return f"{TOPIC_ROOT}/{self.node}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def availability(self) -> str:
        """Known before the meter is: it is the last will, set before connecting; one for
        the agent, whatever its meters."""
        return f"{TOPIC_ROOT}/{self.agent or self.node}/availability"

    def config(self, unique_id: str) -> str:
        return f"{self.discovery_prefix}/sensor/{unique_id}/config"


@dataclass(frozen=True)
class Announcement:
    """The sensors one adopted layout of one meter carries, their discovery documents, and
    the state message of a reading. Built once per layout; `state()` is the hot path."""

    topics: Topics
    device: dict[str, object]
    sensors: tuple[Sensor, ...]
    unique_stem: str  # unique ids are <stem>_<sensor key>
    expire_after: int
    _fields: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = tuple((f'"{s.key}":', s.code) for s in self.sensors)
        object.__setattr__(self, "_fields", fields)

    def unique_id(self, sensor: Sensor) -> str:
        return f"{self.unique_stem}_{sensor.key}"

    def config_topics(self) -> tuple[str, ...]:
        return tuple(self.topics.config(self.unique_id(s)) for s in self.sensors)

    def configs(self) -> list[tuple[str, bytes]]:
        """(topic, discovery document) per sensor, to be published retained."""
        return [
            (self.topics.config(self.unique_id(s)), self._document(s).encode("utf-8"))
            for s in self.sensors
        ]

    def removals(self, successor: Announcement) -> list[tuple[str, bytes]]:
        """Empty retained documents for the sensors `successor` no longer has (a PIN
        removed, another meter): Home Assistant deletes them, the broker forgets them."""
        kept = set(successor.config_topics())
        return [(topic, b"") for topic in self.config_topics() if topic not in kept]

    def state(self, values: dict[str, str]) -> bytes:
        """One reading's values as one JSON object, e.g. {"energy_import":5267.03049619,...}."""
        parts = [key + json_number(values[code]) for key, code in self._fields]
        return ("{" + ",".join(parts) + "}").encode("ascii")

    def _document(self, s: Sensor) -> str:
        return json.dumps(
            {
                "name": s.name,
                "unique_id": self.unique_id(s),
                "state_topic": self.topics.state,
                "value_template": s.template,
                "availability_topic": self.topics.availability,
                "device_class": s.device_class,
                "state_class": s.state_class,
                "unit_of_measurement": s.unit,
                "suggested_display_precision": s.precision,
                "expire_after": self.expire_after,
                "device": self.device,
                "origin": {"name": TOPIC_ROOT, "sw_version": __version__},
            },
            separators=(",", ":"),
        )


class Discovery:
    """Announcements for the telegrams of whichever layout and meter the agent adopted."""

    def __init__(self, discovery_prefix: str, node: str, interval: float, agent: str = "") -> None:
        self.topics = Topics(discovery_prefix, node, agent)
        self.expire_after = max(EXPIRE_FLOOR, math.ceil(EXPIRE_INTERVALS * interval))

    def announcement(self, t: Reading) -> Announcement:
        """What the telegrams of t's layout and meter carry. A sensor is included only if
        its line has the unit Home Assistant expects."""
        units = _units(t.layout)
        sensors = tuple(s for s in SENSORS if units.get(s.code) == s.unit)
        # Unique ids from the meter's id: the same sensors after a reinstall or a new Pi.
        stem = f"{TOPIC_ROOT.replace('-', '_')}_{t.meter_id or self.topics.node.replace('/', '_')}"
        if t.protocol == "sml":
            device = _sml_device(t.meter_id, stem)
        else:
            device = _device(t.ident, t.meter_id, stem)
        return Announcement(self.topics, device, sensors, stem, self.expire_after)


def _units(layout: tuple[str, ...]) -> dict[str, str]:
    """OBIS C.D.E -> unit, from the layout's "[A-B:]C.D.E[*F] shape unit" entries."""
    units = {}
    for entry in layout[1:]:
        label, unit = entry.split(" ", 1)[0], entry.rsplit(" ", 1)[1]
        # A-B: and *F are optional in other makers' text (1.8.0(...), 1-0:1.8.0*255(...)).
        units[label.rpartition(":")[2].partition("*")[0]] = unit
    return units


def _sml_device(meter_id: str, stem: str) -> dict[str, object]:
    """An SML meter names no type; its server id (hex) carries the maker's FLAG code in
    bytes 2-4 after the id's header bytes (e.g. 09 01 45425A: EBZ)."""
    flag = bytes.fromhex(meter_id[4:10]) if len(meter_id) >= 10 else b""
    maker = flag.decode("ascii") if flag.isalpha() and flag.isupper() else "SML"
    manufacturer = _MANUFACTURERS.get(maker, maker)
    device: dict[str, object] = {
        "identifiers": [stem],
        "name": f"{manufacturer} SML meter",
        "manufacturer": manufacturer,
        "model": "SML",
    }
    if meter_id:
        device["serial_number"] = meter_id
    return device


def _device(ident: str, meter_id: str, stem: str) -> dict[str, object]:
    """The device registry entry, from the ident line: `/` + maker (3 letters) + baud
    character + type + `_` + software version, e.g. /EBZ5DD3BZ06ETA_107 (meters.md §1)."""
    maker = ident[1:4]
    model, _, version = ident[5:].partition("_")
    manufacturer = _MANUFACTURERS.get(maker.upper(), maker)
    device: dict[str, object] = {
        "identifiers": [stem],
        "name": f"{manufacturer} {model}",
        "manufacturer": manufacturer,
        "model": model,
    }
    if version:
        device["sw_version"] = version
    if meter_id:
        device["serial_number"] = meter_id
    return device
