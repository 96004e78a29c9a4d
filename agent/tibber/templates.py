"""What a metrics template may contain: the shape of every field the agent takes from it.

A template is a JSON document saved from the user's own bridge (firmware-notes/fields.md §4).
payloads.py copies its constant fields into every hello and metric, so a field of the wrong
type would either crash the payload builder or go to Tibber as garbage. It is checked here,
once, when the config is loaded: the service never starts with a template it cannot use, and
the payload builder can trust its input.

The expected types follow the captured messages (tibber-bridge.md §5, fields.md): whole
numbers where the bridge prints integers, any JSON number where it prints floats, and a JSON
`true`/`false` is neither. Fields the agent does not take are not looked at.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class TemplateError(ValueError):
    """One line naming the JSON field (as a path from the document's root) and the problem."""


@dataclass(frozen=True)
class Kind:
    """One expected shape: what it is called in an error, and the test."""

    name: str
    test: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


# How the bridge writes a MAC (and how _next_mac in payloads.py parses it): six bytes in
# hex, colon-separated, without zero padding ("a:1b:2c:3d:4e:50"); padded is accepted too.
_MAC = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}")
# The BSSID in the captures is 12 hex digits without colons (tibber-bridge.md §5.2).
_BSSID = re.compile(r"([0-9A-Fa-f]{12})?")

INT = Kind("a whole number", _is_int)
NUMBER = Kind("a number", _is_number)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
TEXT = Kind("a string", lambda v: isinstance(v, str))
MAC = Kind(
    'a MAC address like "a4:cf:12:0b:3c:5d"',
    lambda v: isinstance(v, str) and _MAC.fullmatch(v) is not None,
)
BSSID = Kind(
    '12 hex digits or ""', lambda v: isinstance(v, str) and _BSSID.fullmatch(v) is not None
)
# One entry of `ota`: the five firmware parts of the bridge, passed on as they are.
OTA_ENTRY_FIELDS = ("model", "manifest_version", "current_version", "state")

# The bridge status object (`status` of a TJH01 metric, `metrics` of a hello, or the file
# itself): each field the agent takes, and its shape. `ota` is checked entry by entry.
BRIDGE_FIELDS: dict[str, Kind] = {
    "vcc": NUMBER,
    "heap": INT,
    "coredump_available": BOOL,
    "ota": Kind("a list of objects", lambda v: isinstance(v, list)),
    "hub_ota_status": TEXT,
    "manifest_state": TEXT,
    "manifest_version": TEXT,
    "manifest_group": TEXT,
    "netflags": INT,
    "mac": MAC,
    "ap_mac": MAC,
    "ssid": TEXT,
    "bssid": BSSID,
    "channel": INT,
}
# The node status object (`node_status` of a TFD01 metric or /metrics.json, or the file).
NODE_FIELDS: dict[str, Kind] = {
    "product_id": INT,
    "bootloader_version": INT,
    "meter_mode": INT,
    "node_battery_voltage": NUMBER,
    "node_avg_rssi": NUMBER,
    "node_avg_lqi": NUMBER,
    "radio_tx_power": INT,
    "acmp_rx_autolevel_300": INT,
    "acmp_rx_autolevel_9600": INT,
}
# Beside node_status, at the top of the node document.
NODE_ATTACHMENT_FIELDS: dict[str, Kind] = {"node_version": TEXT}

# A file of the other kind (a node document as the bridge template) is a likely mix-up.
BRIDGE_TYPES = ("event", "status", "metrics")
NODE_TYPES = ("node_status",)


def parse(text: str) -> Any:
    """JSON as RFC 8259 has it: Python's NaN and Infinity extensions are refused, since
    json.dumps would send them on as tokens no other JSON reader accepts."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not a JSON number")

    return json.loads(text, parse_constant=refuse)


def check_bridge(doc: dict[str, Any]) -> None:
    """Raises TemplateError for the first field of the bridge template the agent cannot use."""
    _check_type(doc, BRIDGE_TYPES)
    for name in ("status", "metrics"):
        if name in doc:
            _expect(name, doc[name], Kind("an object", lambda v: isinstance(v, dict)))
    # The same choice as payloads._bridge_constants: a metric's status, a hello's metrics,
    # or the file itself.
    if doc.get("status"):
        status, where = doc["status"], "status."
    elif doc.get("metrics"):
        status, where = doc["metrics"], "metrics."
    else:
        status, where = doc, ""
    _check_fields(status, where, BRIDGE_FIELDS)
    if "ota" in status:
        _check_ota(status["ota"], f"{where}ota")
    _check_not_empty(status, BRIDGE_FIELDS)


def check_node(doc: dict[str, Any]) -> None:
    """Raises TemplateError for the first field of the node template the agent cannot use."""
    _check_type(doc, NODE_TYPES)
    for name in ("node_status", "hub_attachments"):
        if name in doc:
            _expect(name, doc[name], Kind("an object", lambda v: isinstance(v, dict)))
    # The same choice as payloads._node_constants: the document's node_status, or the file.
    status, where = (doc["node_status"], "node_status.") if "node_status" in doc else (doc, "")
    _check_fields(status, where, NODE_FIELDS)
    attachments = doc.get("hub_attachments", {})
    _check_fields(attachments, "hub_attachments.", NODE_ATTACHMENT_FIELDS)
    _check_not_empty({**status, **attachments}, {**NODE_FIELDS, **NODE_ATTACHMENT_FIELDS})


def _check_type(doc: dict[str, Any], allowed: tuple[str, ...]) -> None:
    if "$type" in doc and doc["$type"] not in allowed:
        want = " or ".join(f'"{t}"' for t in allowed)
        raise TemplateError(
            f'field "$type" must be {want} for this template, got {_show(doc["$type"])} '
            "(the bridge and node templates swapped?)"
        )


def _check_fields(obj: dict[str, Any], where: str, fields: dict[str, Kind]) -> None:
    for name, kind in fields.items():
        if name in obj:
            _expect(f"{where}{name}", obj[name], kind)


def _check_ota(ota: list[Any], where: str) -> None:
    for i, entry in enumerate(ota):
        _expect(f"{where}[{i}]", entry, Kind("an object", lambda v: isinstance(v, dict)))
        for name in OTA_ENTRY_FIELDS:
            if name not in entry:
                raise TemplateError(
                    f'field "{where}[{i}].{name}" is missing '
                    f"(each entry has {', '.join(OTA_ENTRY_FIELDS)})"
                )
            _expect(f"{where}[{i}].{name}", entry[name], TEXT)


def _check_not_empty(obj: dict[str, Any], fields: dict[str, Kind]) -> None:
    if not any(name in obj for name in fields):
        raise TemplateError(
            f"has none of the fields the agent takes from it ({', '.join(fields)}); "
            "is it the right file?"
        )


def _expect(field: str, value: Any, kind: Kind) -> None:
    if not kind.test(value):
        raise TemplateError(f'field "{field}" must be {kind.name}, got {_show(value)}')


def _show(value: Any) -> str:
    """The value as it is written in the file, shortened to keep the error one short line."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."
