"""config.ini into typed, frozen settings; every problem named by section and key.

A config error is the one failure a restart cannot fix, so it ends the process with
EX_CONFIG (78), which the unit's RestartPreventExitStatus= turns into a plain `failed`.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .tibber import templates

DEFAULT_PATH = Path("/etc/tibber-agent/config.ini")
EX_CONFIG = 78
RULE_PREFIX = "$aws/rules/ingest_tibber_bridge_data/"


class ConfigError(Exception):
    """One line: where, which key, what is wrong."""

    def __init__(self, section: str, key: str, problem: str) -> None:
        where = f"[{section}] {key}" if key else f"[{section}]"
        super().__init__(f"{where}: {problem}")
        self.section, self.key = section, key


@dataclass(frozen=True)
class MeterSettings:
    port: str = "/dev/ttyUSB0"
    baudrate: int = 9600
    stale_after: float = 10.0
    protocol: str = "auto"  # one of PROTOCOLS
    parity: str = "even"  # one of PARITIES; text protocols only (SML is 8N1)
    interval: float = 10.0  # protocol = iec: seconds from one readout request to the next
    # protocol = auto with no baudrate given: other standard rates are tried in turn when
    # nothing is found at this one (agent/meter/protocols.AutoPipeline.baud)
    hunt_baud: bool = False
    name: str = ""  # NAME of a [meter:NAME] section; "" for the single [meter]
    eui: str = ""  # the node this meter reads for ([meter:NAME] eui, else [tibber] eui)


@dataclass(frozen=True)
class TibberSettings:
    mqtt_url: str
    uid: str
    bridge_id: str
    eui: str
    ca_cert: Path
    certificate: Path
    private_key: Path
    mqtt_port: int = 8883
    alpn: str = "auto"  # see agent/tibber/connection.py alpn_protocols
    client_id: str = ""
    mqtt_topic: str = ""
    keepalive: int = 60
    sml_suffix: str = "sml"  # TFD01/<eui>/<this> (reported: "SML" before 2023-10-30)
    obis_interval: float = 2.0
    bridge_metric_interval: float = 120.0
    node_metric_interval: float = 300.0
    bridge_metrics_template: dict[str, Any] | None = None
    node_metrics_template: dict[str, Any] | None = None

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or self.bridge_id

    @property
    def publish_base(self) -> str:
        if not self.mqtt_topic:
            return f"{RULE_PREFIX}tibber-bridge/{self.uid}/publish"
        if self.mqtt_topic.startswith("$aws/"):
            return self.mqtt_topic
        return RULE_PREFIX + self.mqtt_topic

    @property
    def receive_topic(self) -> str:
        return f"tibber-bridge/{self.uid}/receive"


@dataclass(frozen=True)
class MirrorSettings:
    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    topic: str = "/ebz/raw"
    username: str = ""
    password: str = ""
    ca_cert: Path | None = None
    home_assistant: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class LedSettings:
    enabled: bool = True
    gpio: int = 17
    active_high: bool = True


@dataclass(frozen=True)
class Settings:
    path: Path
    meter: MeterSettings  # the first (or only) meter
    tibber: TibberSettings | None  # None only where no uplink is wanted (monitor)
    mirror: MirrorSettings
    led: LedSettings
    meters: tuple[MeterSettings, ...] = ()  # every meter, in file order (meter first)

    def __post_init__(self) -> None:
        if not self.meters:
            object.__setattr__(self, "meters", (self.meter,))


# ---------------------------------------------------------------- value parsers
# DNS labels of 1-63 characters: the resolver's IDNA step raises a ValueError (not an OSError)
# for an empty or longer one, which would end a network worker instead of being retried.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]")
_HOST_MAX = 253
_TOPIC_CHARS = re.compile(r"[^\s#+]+")


def _hex(digits: str) -> Callable[[str], str]:
    lengths = [int(n) for n in digits.split(",")]
    pattern = re.compile(r"[0-9a-fA-F]+")

    def parse(v: str) -> str:
        if not pattern.fullmatch(v) or len(v) not in lengths:
            want = " or ".join(map(str, lengths))
            raise ValueError(f"must be {want} hex digits, got {v!r} ({len(v)} characters)")
        return v

    return parse


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"must be a whole number, got {v!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {n}")
        return n

    return parse


# The rates every Linux serial driver takes as termios constants. A USB adapter may refuse
# another ("custom") rate only when the port is opened, which would end the meter thread;
# meters use 300 (mode C's start) to 9600 (D0 push) or a little more.
BAUDRATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


# What the meter sends: "ebz" is the eBZ DD3's OBIS text push (D0, 7E1, no checksum, checked
# by the redundancy of its values); "d0" is any other maker's OBIS text (EasyMeter, Logarex,
# ZPA: push, with or without STX/ETX and a block check; agent/meter/d0); "sml" is binary
# SML 1.04 (8N1, CRC per frame), which most modern German meters send, eBZ SML types too;
# "iec" is a pull meter asked for a readout every `interval` (IEC 62056-21 mode C).
# "auto" finds which of them the stream speaks (and the text's parity), logs what it found,
# and looks again when the stream stops making sense (agent/meter/detect.py).
PROTOCOLS = ("auto", "ebz", "d0", "sml", "iec")
# How the bytes of a 7E1 text meter arrive: "even" is a USB head's raw 8N1 view, bit 7 the
# even parity bit, checked per byte; "none" is a network head that strips it and delivers
# 7-bit bytes (a byte with bit 7 set is then damage).
PARITIES = ("even", "none")


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {v!r}")
        return v.lower()

    return parse


def _baudrate(v: str) -> int:
    n = _int(BAUDRATES[0], BAUDRATES[-1])(v)
    if n not in BAUDRATES:
        raise ValueError(f"must be one of {', '.join(map(str, BAUDRATES))}, got {n}")
    return n


def _seconds(lo: float, hi: float, *, zero_ok: bool = False) -> Callable[[str], float]:
    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {v!r}") from None
        if not math.isfinite(x) or not (lo <= x <= hi or (zero_ok and x == 0)):
            low = "0 or " + str(lo) if zero_ok else str(lo)
            raise ValueError(f"must be between {low} and {hi} seconds, got {v}")
        return x

    return parse


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"must be true or false, got {v!r}")


def host_name(v: str) -> str:
    """A host name, an IPv4 address, or an IPv6 address in brackets (`[::1]`), returned
    without them (as socket calls take it). Raises ValueError naming what is wrong."""
    if "://" in v or (":" in v and not v.startswith("[")) or "/" in v:
        raise ValueError(f"must be a bare host name (no scheme, port or path), got {v!r}")
    if not _HOST.fullmatch(v) or len(v) > _HOST_MAX:
        raise ValueError(
            f"is not a valid host name (labels of 1-63 letters, digits or -, "
            f"at most {_HOST_MAX} in all): {v!r}"
        )
    if v.startswith("["):
        try:
            return str(ipaddress.IPv6Address(v[1:-1]))
        except ValueError:
            raise ValueError(f"is not an IPv6 address in brackets: {v!r}") from None
    return v


_host = host_name


# An MQTT topic is at most 65535 bytes (paho raises a ValueError for a longer one). The agent
# adds to [tibber] mqtt_topic: the rule prefix in front, "/TFD01/<eui>/obis_stream" behind.
_MQTT_STRING_MAX = 65535
_TOPIC_ADDED_MAX = len(RULE_PREFIX) + 64
# Home Assistant's discovery topics: "<prefix>/sensor/tibber_agent_<meter id, <= 40>_<key>/config".
_DISCOVERY_ADDED_MAX = 128


def _topic_of(max_bytes: int) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if not _TOPIC_CHARS.fullmatch(v) or v.endswith("/"):
            raise ValueError(
                f"must be an MQTT topic without spaces, + or # and no trailing /: {v!r}"
            )
        size = len(v.encode("utf-8"))
        if size > max_bytes:
            raise ValueError(f"is longer than MQTT allows here ({max_bytes} bytes), got {size}")
        return v

    return parse


def _topic_level(v: str) -> str:
    """One level of a topic the agent builds (e.g. the `sml` in TFD01/<eui>/sml)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", v):
        raise ValueError(f"must be 1-32 letters, digits, _ . or - (one topic level), got {v!r}")
    return v


def _client_id(v: str) -> str:
    if not re.fullmatch(r"[\x21-\x7e]{1,128}", v):
        raise ValueError(f"must be 1-128 printable characters without spaces, got {v!r}")
    return v


def _alpn(v: str) -> str:
    """auto, none, or one ALPN protocol name (RFC 7301 allows 1-255 bytes)."""
    if v in ("auto", "none") or re.fullmatch(r"[\x21-\x2b\x2d-\x7e]{1,255}", v):
        return v
    raise ValueError(
        f"must be auto, none or one ALPN protocol name (printable, no spaces or commas), got {v!r}"
    )


def _text(v: str) -> str:
    return v


def _mqtt_string(v: str) -> str:
    size = len(v.encode("utf-8"))
    if size > _MQTT_STRING_MAX:
        raise ValueError(f"is longer than MQTT allows ({_MQTT_STRING_MAX} bytes), got {size}")
    return v


# The IR head's port: a device path, or a pyserial URL of a network serial server passing the
# raw bytes (ser2net, a Wi-Fi IR head's TCP bridge). pyserial 3.5 knows more schemes
# (serial/urlhandler/protocol_*.py); those that cannot bring an IR head's data to this agent
# are refused with the reason, so `check` and `run` say so at once instead of the meter thread
# failing at its first open (or retrying a URL that can never open).
PORT_URLS = {"socket": "socket://host:port", "rfc2217": "rfc2217://host:port"}
REFUSED_SCHEMES = {
    "loop": "is pyserial's loopback: no meter behind it",
    "spy": "is a debugging wrapper that writes every byte to a file or stderr "
    "(use `tibber-agent monitor`)",
    "alt": "swaps pyserial's port class; the agent's reads need the native one",
    "hwgrep": "opens whichever port matches first, not exclusively "
    "(use /dev/serial/by-id/... or /dev/ttyIRhead)",
    "cp2110": "needs the hidapi module, which the agent does not install",
}


def _positive_number(v: str) -> bool:
    try:
        x = float(v)
    except ValueError:
        return False
    return math.isfinite(x) and x > 0


# The options pyserial's handlers take, with a test of the value. Not `logging`: pyserial
# would log every read.
_URL_OPTIONS: dict[str, dict[str, Callable[[str], bool]]] = {
    "socket": {},
    "rfc2217": {
        "ign_set_control": lambda v: True,
        "poll_modem": lambda v: True,
        "timeout": _positive_number,
    },
}
_SUPPORTED = "a device path, " + " or ".join(PORT_URLS.values())


def parse_port(v: str) -> str:
    """[meter] port (and `monitor --port`): a device path or a supported URL."""
    if any(c.isspace() for c in v):
        raise ValueError(f"must be a device path or pyserial URL without spaces, got {v!r}")
    if "://" not in v:  # pyserial's own test for a URL
        if not v.startswith("/"):
            raise ValueError(f"must be an absolute device path (/dev/...) or a URL, got {v!r}")
        return v
    scheme = v.split("://", 1)[0].lower()  # pyserial ignores the case too
    if scheme in REFUSED_SCHEMES:
        raise ValueError(f"{scheme}:// {REFUSED_SCHEMES[scheme]}; use {_SUPPORTED}")
    if scheme not in PORT_URLS:
        raise ValueError(f"pyserial knows no scheme {scheme!r} (in {v!r}); use {_SUPPORTED}")
    _network_url(v, scheme)
    return v


def _network_url(v: str, scheme: str) -> None:
    """host:port and known options, split as pyserial will split it at open (urlsplit)."""
    form = PORT_URLS[scheme]
    try:
        parts = urllib.parse.urlsplit(v)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        raise ValueError(f"must be {form}, got {v!r}") from None
    host, _, port = parts.netloc.rpartition(":")
    valid_host = _HOST.fullmatch(host) and len(host) <= _HOST_MAX
    if "@" in parts.netloc or not valid_host or not port.isdigit():
        raise ValueError(f"must be {form}, got {v!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"the TCP port must be between 1 and 65535, got {port} in {v!r}")
    if parts.path or parts.fragment:
        raise ValueError(f"must be {form}[?option&...], nothing after the port, got {v!r}")
    known = _URL_OPTIONS[scheme]
    for option, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if option not in known:
            names = ", ".join(known) or "none"
            raise ValueError(f"unknown option {option!r} in {v!r} (options: {names})")
        if not all(known[option](value) for value in values):
            raise ValueError(f"option {option!r} must be a positive number, in {v!r}")


# Section -> key -> (parser, default or REQUIRED). The annotated config.ini carries the docs.
REQUIRED = object()
_SCHEMA: dict[str, dict[str, tuple[Callable[[str], Any], Any]]] = {
    "meter": {
        "port": (parse_port, "/dev/ttyUSB0"),
        "baudrate": (_baudrate, 9600),
        "stale_after": (_seconds(1, 3600), 10.0),
        "protocol": (_one_of(PROTOCOLS), "auto"),
        "parity": (_one_of(PARITIES), "even"),
        "interval": (_seconds(1, 3600), 10.0),
    },
    "tibber": {
        "mqtt_url": (_host, REQUIRED),
        "mqtt_port": (_int(1, 65535), 8883),
        "alpn": (_alpn, "auto"),
        "ca_cert": (_text, "ca.pem"),
        "certificate": (_text, "certificate.pem"),
        "private_key": (_text, "private.key"),
        "uid": (_hex("32"), REQUIRED),
        "bridge_id": (_hex("12,13"), REQUIRED),
        "eui": (_hex("16"), REQUIRED),
        "client_id": (_client_id, ""),
        "mqtt_topic": (_topic_of(_MQTT_STRING_MAX - _TOPIC_ADDED_MAX), ""),
        "keepalive": (_int(1, 1200), 60),
        "sml_suffix": (_topic_level, "sml"),
        "obis_interval": (_seconds(0.1, 3600, zero_ok=True), 2.0),
        "bridge_metric_interval": (_seconds(1, 86400), 120.0),
        "node_metric_interval": (_seconds(1, 86400), 300.0),
        "bridge_metrics_template": (_text, ""),
        "node_metrics_template": (_text, ""),
    },
    "mirror": {
        "enabled": (_bool, False),
        "host": (_host, "localhost"),
        "port": (_int(1, 65535), 1883),
        "topic": (_topic_of(_MQTT_STRING_MAX), "/ebz/raw"),
        "username": (_mqtt_string, ""),
        "password": (_mqtt_string, ""),
        "ca_cert": (_text, ""),
        "home_assistant": (_bool, False),
        "discovery_prefix": (_topic_of(_MQTT_STRING_MAX - _DISCOVERY_ADDED_MAX), "homeassistant"),
    },
    "led": {
        "enabled": (_bool, True),
        "gpio": (_int(0, 27), 17),
        "active_high": (_bool, True),
    },
}


_NAMED_METER_SCHEMA = {**_SCHEMA["meter"], "eui": (_hex("16"), REQUIRED)}


def load(path: Path, *, need_tibber: bool = True) -> Settings:
    """Read and validate config.ini. Raises ConfigError naming the first problem."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ConfigError("config", "", f"{path} does not exist") from None
    except PermissionError:
        raise ConfigError("config", "", f"{path} is not readable by this user") from None
    except IsADirectoryError:
        raise ConfigError("config", "", f"{path} is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError("config", "", f"cannot read {path}: {e.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0]
        raise ConfigError("config", "", f"{path} cannot be parsed: {first}") from None

    named = [s for s in parser.sections() if s.startswith(NAMED_METER)]
    for section in parser.sections():
        schema = _NAMED_METER_SCHEMA if section in named else _SCHEMA.get(section)
        if schema is None:
            known = ", ".join([*_SCHEMA, f"{NAMED_METER}NAME"])
            raise ConfigError(section, "", f"unknown section (known: {known})")
        for key in parser[section]:
            if key not in schema:
                raise ConfigError(section, key, "unknown key")

    values = {s: _section(parser, s) for s in _SCHEMA}
    base = path.parent
    meters = _named_meters(parser, named) if named else (MeterSettings(**values["meter"]),)
    meters = tuple(
        replace(m, hunt_baud=m.protocol == "auto" and not _given(parser, s, "baudrate"))
        for m, s in zip(meters, named or ["meter"], strict=True)
    )

    tibber: TibberSettings | None = None
    if need_tibber:
        t = values["tibber"]
        if named and t["eui"] is not REQUIRED:
            raise ConfigError(
                "tibber", "eui", "must be left out with [meter:NAME] sections (each has its eui)"
            )
        if named:
            t["eui"] = meters[0].eui  # the first node's, for what names a single node
        for key, (_, default) in _SCHEMA["tibber"].items():
            if default is REQUIRED and t[key] is REQUIRED:
                raise ConfigError("tibber", key, "is required but empty")
        for key in ("ca_cert", "certificate", "private_key"):
            if not t[key]:
                raise ConfigError("tibber", key, "is required but empty")
            t[key] = _resolve(base, t[key])
        for key in ("bridge_metrics_template", "node_metrics_template"):
            t[key] = _template(base, key, t[key]) if t[key] else None
        tibber = TibberSettings(**t)
        if not named:
            meters = (replace(meters[0], eui=tibber.eui),)

    m = values["mirror"]
    m["ca_cert"] = _resolve(base, m["ca_cert"]) if m["ca_cert"] else None
    if m["password"] and not m["username"]:
        raise ConfigError("mirror", "password", "is set but username is empty")
    if m["home_assistant"] and not m["enabled"]:
        raise ConfigError(
            "mirror", "home_assistant", "needs enabled = true (it publishes to the mirror's broker)"
        )
    mirror = MirrorSettings(**m)
    led = LedSettings(**values["led"])
    return Settings(
        path=path, meter=meters[0], tibber=tibber, mirror=mirror, led=led, meters=meters
    )


# Several meters on one bridge: [meter:NAME] sections, each with the [meter] keys and the eui of
# the node it stands in for. They share the bridge's one Tibber connection (two connections
# with one client id would throw each other off).
NAMED_METER = "meter:"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_METERS = 8


def _named_meters(parser: configparser.ConfigParser, named: list[str]) -> tuple[MeterSettings, ...]:
    if parser.has_section("meter"):
        raise ConfigError("meter", "", "use either [meter] or [meter:NAME] sections, not both")
    if len(named) > MAX_METERS:
        raise ConfigError(named[MAX_METERS], "", f"at most {MAX_METERS} meters")
    meters: list[MeterSettings] = []
    for section in named:
        name = section[len(NAMED_METER) :]
        if not _NAME.fullmatch(name):
            raise ConfigError(section, "", "NAME must be 1-32 letters, digits, _ or -")
        values = _section(parser, section, _NAMED_METER_SCHEMA)
        if values["eui"] is REQUIRED:
            raise ConfigError(section, "eui", "is required but empty")
        for other in meters:
            if values["eui"].lower() == other.eui.lower():
                raise ConfigError(section, "eui", f"is also [meter:{other.name}]'s")
            if values["port"] == other.port:
                raise ConfigError(section, "port", f"is also [meter:{other.name}]'s")
        meters.append(MeterSettings(name=name, **values))
    return tuple(meters)


def _given(parser: configparser.ConfigParser, section: str, key: str) -> bool:
    return bool(parser.get(section, key, fallback="").strip())


def _section(
    parser: configparser.ConfigParser,
    section: str,
    schema: dict[str, tuple[Callable[[str], Any], Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw = parser[section] if parser.has_section(section) else {}
    for key, (parse, default) in (schema or _SCHEMA[section]).items():
        text = raw.get(key, "").strip() if raw else ""
        if not text:
            out[key] = default
            continue
        try:
            out[key] = parse(text)
        except ValueError as e:
            raise ConfigError(section, key, str(e)) from None
    return out


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _template(base: Path, key: str, value: str) -> dict[str, Any]:
    path = _resolve(base, value)
    try:
        doc = templates.parse(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError("tibber", key, f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError("tibber", key, f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("tibber", key, f"{path} must hold a JSON object")
    check = templates.check_bridge if key == "bridge_metrics_template" else templates.check_node
    try:
        check(doc)
    except templates.TemplateError as e:
        raise ConfigError("tibber", key, f"{path}: {e}") from None
    return doc


def check_files(tibber: TibberSettings, mirror: MirrorSettings | None = None) -> None:
    """The credential files exist, are readable, and the key is private. Raises ConfigError."""
    for key in ("ca_cert", "certificate", "private_key"):
        _check_pem("tibber", key, getattr(tibber, key))
    if mirror is not None and mirror.enabled and mirror.ca_cert is not None:
        _check_pem("mirror", "ca_cert", mirror.ca_cert)
    mode = os.stat(tibber.private_key).st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(
            "tibber",
            "private_key",
            f"{tibber.private_key} is readable by others (mode {stat.S_IMODE(mode):04o}); "
            "run: chmod 0640",
        )


def _check_pem(section: str, key: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise ConfigError(section, key, f"{path} does not exist") from None
    except PermissionError:
        raise ConfigError(section, key, f"{path} is not readable by this user") from None
    except IsADirectoryError:
        raise ConfigError(section, key, f"{path} is a directory") from None
    if b"-----BEGIN " not in head:
        raise ConfigError(section, key, f"{path} is not a PEM file")
    if key == "private_key" and (b"ENCRYPTED" in head):
        # OpenSSL would ask for the passphrase on a terminal (and block) or fail without one.
        raise ConfigError(
            section, key, f"{path} is encrypted; the agent needs the key without a passphrase"
        )
