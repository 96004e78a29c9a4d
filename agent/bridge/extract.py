"""The values the agent needs, taken from the bridge's documents. Pure: no I/O.

Where each value comes from, and how sure that is (tibber-bridge.md §1, §2, §8):
- PARAMS (`GET /params.json`, a list of `{param_id, name, size, type, value: [...]}`; picked by
  name): `ca_cert`, `certificate`, `private_key`, `mqtt_url` (older notes: `mqtt_host`),
  `mqtt_port`, `mqtt_topic` (holds `tibber-bridge/<uid>/`), `mqtt_topic_sub`, `mqtt_client_id`.
- `eui`: `GET /nodes.json`, the node whose `product_model` is `TFD01` (confirmed).
- `bridge_id`: no documented local endpoint serves it. `/status.json` (BOT, ECU) holds
  firmware, Wi-Fi and MQTT state but no device id; the console's `version` shows it as
  "Device Id" (EGY-R). `mqtt_client_id` has its length and is taken as the bridge id
  (inferred, §2); a captured TJH01 document's `device_id` / `status.id` is the bridge id
  (confirmed, EGY-J); `--bridge-id` wins over both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..config import RULE_PREFIX
from ..tibber import templates
from . import pem

PEM_PARAMS = {
    "ca_cert": pem.CERTIFICATE_LABELS,
    "certificate": pem.CERTIFICATE_LABELS,
    "private_key": pem.KEY_LABELS,
}
_UID_IN_TOPIC = re.compile(r"(?:^|/)tibber-bridge/([0-9A-Fa-f]{32})(?=/|$)")
_BRIDGE_ID = re.compile(r"[0-9A-Fa-f]{12,13}")
NODE_MODEL = "TFD01"

# How to get a value by hand when the bridge's documents do not give it (harvesting.md §3).
_MANUAL = "the manual route: firmware-notes/harvesting.md §3"
BY_HAND = {
    "ca_cert": f"copy it from the PARAMS page (the console's param_list cuts long values short); "
    f"{_MANUAL}",
    "certificate": f"copy it from the PARAMS page; {_MANUAL}",
    "private_key": "copy it from the PARAMS page into a file and pass --private-key FILE "
    "(whether current firmware shows it anywhere is unknown: tibber-bridge.md §10 item 2)",
    "mqtt_url": f"read mqtt_url on the PARAMS page; {_MANUAL}",
    "uid": f"the 32 hex digits after tibber-bridge/ in mqtt_topic on the PARAMS page; {_MANUAL}",
    "bridge_id": 'CONSOLE tab, type `version`: the line "Device Id"; pass it with --bridge-id ID',
    "eui": "NODES tab: the Pulse IR's eui (16 hex digits); pass it with --eui EUI",
}


class DocumentError(ValueError):
    """A document is not what the bridge serves (not JSON, another shape): one line."""


@dataclass(frozen=True)
class Document:
    """A document as received: where from (a URL path or a file), and its bytes."""

    source: str
    body: bytes

    def json(self) -> Any:
        try:
            return templates.parse(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DocumentError(f"{self.source} is not JSON ({first})") from None


@dataclass(frozen=True)
class Documents:
    params: Document
    nodes: Document | None = None
    node_metrics: Document | None = None
    status: Document | None = None
    bridge_metrics: Document | None = None  # a captured TJH01 metric or hello


@dataclass(frozen=True)
class Overrides:
    """Values the user typed or saved by hand; each wins over the bridge's."""

    bridge_id: str = ""
    eui: str = ""
    private_key: tuple[str, str] | None = None  # (where from, the text)


@dataclass(frozen=True)
class Finding:
    """One line of what was found. `value` is never a private key."""

    name: str
    value: str
    source: str


@dataclass(frozen=True)
class Problem:
    name: str
    message: str


@dataclass
class Harvest:
    tibber: dict[str, str] = field(default_factory=dict)  # [tibber] key -> value
    pems: dict[str, pem.Pem] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    node_template: Document | None = None
    bridge_template: Document | None = None

    def found(self, name: str, value: str, source: str) -> None:
        self.findings.append(Finding(name, value, source))

    def problem(self, name: str, message: str) -> None:
        self.problems.append(Problem(name, message))


# ---------------------------------------------------------------------------- params
def param_values(doc: Document) -> dict[str, str | None]:
    """name -> the value as text (None: listed without a usable value)."""
    data = doc.json()
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise DocumentError(
            f"{doc.source} is not the bridge's parameter list "
            "(a JSON list of {param_id, name, value: [...]} objects)"
        )
    values: dict[str, str | None] = {}
    for p in data:
        name = p.get("name")
        if isinstance(name, str) and name not in values:
            values[name] = _text(p.get("value"))
    if not values:
        raise DocumentError(f"{doc.source} lists no named parameters")
    return values


def _text(value: Any) -> str | None:
    """A param's `value` as text. The list form is the one documented (`[true]`, ECU);
    a value split over several strings is joined (inferred)."""
    if isinstance(value, list):
        if not value:
            return ""
        if len(value) == 1:
            return _text(value[0])
        if all(isinstance(v, str) for v in value):
            return "".join(value)
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value).strip("\0")
    return None


# ---------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class Node:
    eui: str
    node_id: int
    source: str


def pulse_node(doc: Document) -> Node:
    """The Pulse IR node of /nodes.json. Raises DocumentError naming what is there instead."""
    data = doc.json()
    # A list per ECU and MARQ-C; BOT also reads a single object.
    nodes = data if isinstance(data, list) else [data]
    nodes = [n for n in nodes if isinstance(n, dict) and isinstance(n.get("eui"), str)]
    ir = [n for n in nodes if n.get("product_model") == NODE_MODEL]
    if not ir and len(nodes) == 1 and "product_model" not in nodes[0]:
        ir = nodes  # one node, model not stated
    if len(ir) == 1:
        node_id = ir[0].get("node_id")
        node_id = node_id if isinstance(node_id, int) and not isinstance(node_id, bool) else 1
        return Node(ir[0]["eui"], node_id, f"{doc.source}, node {node_id} ({NODE_MODEL})")
    if not ir:
        models = sorted({str(n.get("product_model", "?")) for n in nodes}) or ["none"]
        raise DocumentError(
            f"{doc.source} lists no {NODE_MODEL} node (models: {', '.join(models)}); "
            "is the Pulse IR paired with this bridge?"
        )
    euis = ", ".join(n["eui"] for n in ir)
    raise DocumentError(f"{doc.source} lists {len(ir)} {NODE_MODEL} nodes ({euis}): pick one")


# ---------------------------------------------------------------------------- all of it
def harvest(docs: Documents, overrides: Overrides) -> Harvest:
    """Every value, finding and problem. Raises DocumentError for a params document that is
    not the bridge's list (nothing else can be read then)."""
    h = Harvest()
    params = param_values(docs.params)
    src = docs.params.source
    _pems(h, params, src, overrides)
    _broker(h, params, src)
    _uid_and_topic(h, params, src)
    _ids(h, params, src, docs, overrides)
    _eui(h, docs, overrides)
    _node_template(h, docs.node_metrics)
    _bridge_template(h, docs.bridge_metrics, docs.status)
    if "webserver_force_enable" not in params:
        # Hidden from PARAMS from ESP fw 1390-6c2b710b (MARQ-I36, BOT); harmless here: the
        # web server answered, so it is on (or the bridge is in AP mode).
        h.notes.append(
            "webserver_force_enable (param 39) is not listed: newer firmware hides it; "
            "the console still takes `param_get 39` (tibber-bridge.md §8)"
        )
    return h


def _pems(h: Harvest, params: dict[str, str | None], src: str, o: Overrides) -> None:
    crlf = False
    for name, labels in PEM_PARAMS.items():
        if name == "private_key" and o.private_key is not None:
            origin, value = o.private_key
        else:
            origin, value = f"{src} {name}", params.get(name)
        try:
            if value is None and name in params:
                raise pem.PemError("is listed without a usable value (hidden)")
            if value is None:
                raise pem.PemError(pem.describe_hidden(None) or "")
            block = pem.parse(value, labels)
        except pem.PemError as e:
            h.problem(name, f"{name}: {origin} {e}; by hand: {BY_HAND[name]}")
            continue
        h.pems[name] = block
        shown = "present, not shown" if name == "private_key" else _blocks(block)
        h.found(name, shown, origin)
        crlf = crlf or "\r" in value
    if crlf:
        h.notes.append("the PEMs have CRLF line ends, as the bridge stores them: written with LF")


def _blocks(block: pem.Pem) -> str:
    n = len(block.labels)
    return f"{n} {block.labels[0]} block" + ("s" if n > 1 else "")


def _broker(h: Harvest, params: dict[str, str | None], src: str) -> None:
    if params.get("mqtt_url"):
        raw, origin = params["mqtt_url"] or "", f"{src} mqtt_url"
    elif params.get("mqtt_host"):
        raw, origin = params["mqtt_host"] or "", f"{src} mqtt_host"
    else:
        h.problem(
            "mqtt_url",
            f"mqtt_url: {src} has no mqtt_url or mqtt_host; by hand: {BY_HAND['mqtt_url']}",
        )
        return
    host, port = _host_and_port(raw)
    if host != raw.strip():
        origin += f" (host part of {raw.strip()!r})"
    h.tibber["mqtt_url"] = host
    h.found("mqtt_url", host, origin)

    text = params.get("mqtt_port")
    if text:
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            h.problem("mqtt_port", f"mqtt_port: {src} mqtt_port is {text!r}, not a TCP port")
            return
        h.tibber["mqtt_port"] = text
        h.found("mqtt_port", text, f"{src} mqtt_port")
    elif port:
        h.tibber["mqtt_port"] = port
        h.found("mqtt_port", port, "the port in mqtt_url")
    else:
        h.tibber["mqtt_port"] = "8883"
        h.found("mqtt_port", "8883", "default: the bridge lists no mqtt_port (8883: EGY-R)")


def _host_and_port(raw: str) -> tuple[str, str]:
    """`mqtts://host:8883/` -> (host, "8883"); a bare host stays as it is."""
    rest = raw.strip().split("://", 1)[-1].split("/", 1)[0]
    if rest.count(":") == 1:
        host, port = rest.split(":")
        return host, port if port.isdigit() else ""
    return rest, ""


def _uid_and_topic(h: Harvest, params: dict[str, str | None], src: str) -> None:
    topic = (params.get("mqtt_topic") or "").strip()
    match = _UID_IN_TOPIC.search(topic)
    if match:
        uid, origin = match.group(1), f"{src} mqtt_topic"
    else:
        what = "has no mqtt_topic" if not topic else f"mqtt_topic {topic!r} holds no uid"
        h.problem("uid", f"uid: {src} {what}; by hand: {BY_HAND['uid']}")
        return
    h.tibber["uid"] = uid
    h.found("uid", uid, origin)

    sub = (params.get("mqtt_topic_sub") or "").strip()
    sub_match = _UID_IN_TOPIC.search(sub)
    if sub_match and sub_match.group(1) != uid:
        h.problem(
            "mqtt_topic_sub",
            f"mqtt_topic_sub: {src} mqtt_topic_sub names uid {sub_match.group(1)}, "
            f"not {uid}: the bridge's values disagree; compare them on the PARAMS page",
        )
    elif sub:
        h.notes.append(f"mqtt_topic_sub {sub!r} holds the same uid (checked)")

    # The publish base as the agent builds it (config.TibberSettings.publish_base).
    default = f"{RULE_PREFIX}tibber-bridge/{uid}/publish"
    base = topic.rstrip("/")
    full = base if base.startswith("$aws/") else RULE_PREFIX + base
    if full == default:
        h.tibber["mqtt_topic"] = ""
        h.found("mqtt_topic", "(default)", f"{src} mqtt_topic {topic!r} gives the default base")
    else:
        h.tibber["mqtt_topic"] = base
        h.found("mqtt_topic", base, f"{src} mqtt_topic")
        h.notes.append(
            f"mqtt_topic {topic!r} gives the publish base {full}, not the {default} every "
            "capture shows; used as the bridge holds it (firmware-notes/unverified.md item 1)"
        )


def _ids(
    h: Harvest, params: dict[str, str | None], src: str, docs: Documents, o: Overrides
) -> None:
    client_id = (params.get("mqtt_client_id") or "").strip()
    captured = _captured_bridge_id(docs.bridge_metrics)
    if o.bridge_id:
        bridge_id, origin = o.bridge_id, "--bridge-id"
    elif captured:
        bridge_id, origin = captured
    elif _BRIDGE_ID.fullmatch(client_id):
        bridge_id, origin = client_id, f"{src} mqtt_client_id"
        h.notes.append(
            "bridge_id is taken from mqtt_client_id: the two are equal by inference "
            "(tibber-bridge.md §2); to be sure, compare it with CONSOLE -> `version` -> "
            '"Device Id" and pass --bridge-id ID if they differ'
        )
    else:
        why = "has no mqtt_client_id" if not client_id else "has no bridge id"
        h.problem("bridge_id", f"bridge_id: {src} {why}; by hand: {BY_HAND['bridge_id']}")
        bridge_id, origin = "", ""
    if bridge_id:
        h.tibber["bridge_id"] = bridge_id
        h.found("bridge_id", bridge_id, origin)
        if captured and captured[0] != bridge_id:
            h.notes.append(f"{captured[1]} names {captured[0]}, not {bridge_id}")
    if not client_id:
        h.tibber["client_id"] = ""
        h.notes.append(
            f"{src} lists no mqtt_client_id: the agent connects as the bridge id "
            "(what the Pi sender does, confirmed EGY-PY)"
        )
    elif client_id == bridge_id:
        h.tibber["client_id"] = ""
        h.found("client_id", "(= bridge_id)", f"{src} mqtt_client_id")
    else:
        h.tibber["client_id"] = client_id
        h.found("client_id", client_id, f"{src} mqtt_client_id (differs from the bridge id)")


def _captured_bridge_id(doc: Document | None) -> tuple[str, str] | None:
    """`device_id` of a TJH01 metric, `status.id` / `metrics.id` of a metric or hello."""
    if doc is None:
        return None
    try:
        data = doc.json()
    except DocumentError:
        return None
    if not isinstance(data, dict):
        return None
    for path in ("device_id", "status.id", "metrics.id", "id"):
        value: Any = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and _BRIDGE_ID.fullmatch(value):
            return value, f"{doc.source} {path}"
    return None


def _eui(h: Harvest, docs: Documents, o: Overrides) -> None:
    node: Node | None = None
    if docs.nodes is not None:
        try:
            node = pulse_node(docs.nodes)
        except DocumentError as e:
            if not o.eui:
                h.problem("eui", f"eui: {e}; by hand: {BY_HAND['eui']}")
                return
            h.notes.append(str(e))
    if o.eui:
        h.tibber["eui"] = o.eui
        h.found("eui", o.eui, "--eui")
        if node is not None and node.eui != o.eui:
            h.notes.append(f"--eui differs from {node.source}: {node.eui}")
    elif node is not None:
        h.tibber["eui"] = node.eui
        h.found("eui", node.eui, node.source)
    else:
        h.problem("eui", f"eui: no nodes list was read; by hand: {BY_HAND['eui']}")


# ---------------------------------------------------------------------------- templates
def _node_template(h: Harvest, doc: Document | None) -> None:
    if doc is None:
        h.notes.append("node_metrics_template: no node metrics document was read; not set")
        return
    reason = _template_problem(doc, templates.check_node)
    if reason is None:
        h.node_template = doc
        h.found("node_metrics_template", "passes the agent's template check", doc.source)
        return
    if "none of the fields" in reason:
        reason += " (the modern node/ir/hub shape? the agent takes the /metrics.json one)"
    h.notes.append(f"node_metrics_template: not set: {doc.source} {reason}")


def _bridge_template(h: Harvest, captured: Document | None, status: Document | None) -> None:
    doc = captured or status
    if doc is None:
        h.notes.append(
            "bridge_metrics_template: not set: no TJH01 document was given "
            "(firmware-notes/fields.md §4.2)"
        )
        return
    reason = _template_problem(doc, templates.check_bridge)
    if reason is None:
        h.bridge_template = doc
        h.found("bridge_metrics_template", "passes the agent's template check", doc.source)
        return
    if doc is status:
        h.notes.append(
            "bridge_metrics_template: not set: no local endpoint is known to serve the "
            "bridge's TJH01 status (tibber-bridge.md §8; firmware-notes/fields.md §4.2), and "
            f"the agent's template check refuses {doc.source}: {reason}"
        )
    else:
        h.notes.append(f"bridge_metrics_template: not set: {doc.source} {reason}")


def _template_problem(doc: Document, check: Any) -> str | None:
    try:
        data = doc.json()
    except DocumentError as e:
        return str(e).removeprefix(doc.source).strip()
    if not isinstance(data, dict):
        return "is not a JSON object"
    try:
        check(data)
    except templates.TemplateError as e:
        if "none of the fields" in str(e):  # the check's list of them is long and no help here
            return "has none of the fields the agent takes from such a document"
        return str(e)
    return None


def describe(docs: Documents) -> str:
    """The documents read, for the first output line."""
    parts = [d.source for d in (docs.params, docs.nodes, docs.node_metrics, docs.status) if d]
    if docs.bridge_metrics:
        parts.append(docs.bridge_metrics.source)
    return ", ".join(parts)
