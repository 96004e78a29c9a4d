"""config.ini: every key's error names `[section] key`; defaults; paths; credential files."""

from __future__ import annotations

import json
import os
import pkgutil
import re
import shutil
from pathlib import Path

import pytest
import serial
import serial.urlhandler

from agent.config import PORT_URLS, REFUSED_SCHEMES, ConfigError, check_files, load
from agent.tibber.payloads import BRIDGE_CONSTANTS, NODE_CONSTANTS
from tests.harness.certs import Pki
from tests.harness.paths import REPO_ROOT, shared_file

UID = "0123456789abcdef0123456789ABCDEF"
BRIDGE_ID = "0f1e2d3c4b5a6"
EUI = "0f1e2d3c4b5a6978"

VALID: dict[str, dict[str, str]] = {
    "meter": {
        "port": "/dev/ttyUSB0",
        "protocol": "auto",
        "baudrate": "9600",
        "parity": "even",
        "interval": "10",
        "stale_after": "10",
    },
    "tibber": {
        "mqtt_url": "a1zhmn1192zl1a.iot.eu-west-1.amazonaws.com",
        "mqtt_port": "8883",
        "alpn": "auto",
        "ca_cert": "ca.pem",
        "certificate": "certificate.pem",
        "private_key": "private.key",
        "uid": UID,
        "bridge_id": BRIDGE_ID,
        "eui": EUI,
        "client_id": "",
        "mqtt_topic": "",
        "keepalive": "60",
        "sml_suffix": "sml",
        "obis_interval": "2",
        "bridge_metric_interval": "120",
        "node_metric_interval": "300",
        "bridge_metrics_template": "",
        "node_metrics_template": "",
    },
    "mirror": {
        "enabled": "false",
        "host": "localhost",
        "port": "1883",
        "topic": "/ebz/raw",
        "username": "",
        "password": "",
        "ca_cert": "",
        "home_assistant": "false",
        "discovery_prefix": "homeassistant",
    },
    "led": {"enabled": "true", "gpio": "17", "active_high": "true"},
}


def write(
    directory: Path,
    changes: dict[tuple[str, str], str | None] | None = None,
    extra: str = "",
) -> Path:
    """A complete valid config with `changes` applied (None removes the key)."""
    sections = {s: dict(keys) for s, keys in VALID.items()}
    for (section, key), value in (changes or {}).items():
        if value is None:
            sections[section].pop(key, None)
        else:
            sections[section][key] = value
    text = "".join(
        f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) + "\n"
        for s, keys in sections.items()
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.ini"
    path.write_text(text + extra, encoding="utf-8")
    return path


def load_error(path: Path, *, need_tibber: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, need_tibber=need_tibber)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


# --- a valid file --------------------------------------------------------------------------------


def test_a_complete_config_loads_with_typed_values(tmp_path: Path) -> None:
    s = load(write(tmp_path))
    assert s.meter.port == "/dev/ttyUSB0" and s.meter.baudrate == 9600
    assert s.meter.stale_after == 10.0
    t = s.tibber
    assert t is not None
    assert (t.uid, t.bridge_id, t.eui) == (UID, BRIDGE_ID, EUI)
    assert t.mqtt_port == 8883 and t.keepalive == 60 and t.alpn == "auto"
    assert t.mqtt_client_id == BRIDGE_ID  # client id defaults to the bridge id
    assert t.obis_interval == 2.0
    assert (t.bridge_metric_interval, t.node_metric_interval) == (120.0, 300.0)
    assert s.mirror.enabled is False and s.mirror.topic == "/ebz/raw"
    assert s.mirror.home_assistant is False and s.mirror.discovery_prefix == "homeassistant"
    assert s.led.enabled is True and s.led.gpio == 17 and s.led.active_high is True


def test_fractional_intervals_and_zero_obis_interval(tmp_path: Path) -> None:
    s = load(
        write(
            tmp_path,
            {
                ("meter", "stale_after"): "2.5",
                ("tibber", "obis_interval"): "0",
                ("tibber", "bridge_metric_interval"): "90.5",
                ("tibber", "node_metric_interval"): "299.75",
            },
        )
    )
    assert s.meter.stale_after == 2.5
    assert s.tibber is not None
    assert s.tibber.obis_interval == 0.0
    assert s.tibber.bridge_metric_interval == 90.5
    assert s.tibber.node_metric_interval == 299.75
    assert load(write(tmp_path, {("tibber", "obis_interval"): "1.5"})).tibber.obis_interval == 1.5  # type: ignore[union-attr]


def test_alpn_is_auto_none_or_one_protocol_name(tmp_path: Path) -> None:
    for value in ("auto", "none", "x-amzn-mqtt-ca", "mqtt", "x" * 255):
        t = load(write(tmp_path, {("tibber", "alpn"): value})).tibber
        assert t is not None and t.alpn == value


def test_empty_values_take_the_defaults(tmp_path: Path) -> None:
    changes: dict[tuple[str, str], str | None] = {
        (s, k): "" for s, keys in VALID.items() for k in keys if (s, k) not in _REQUIRED
    }
    s = load(write(tmp_path, changes))
    assert s.meter.port == "/dev/ttyUSB0" and s.meter.baudrate == 9600
    assert s.tibber is not None and s.tibber.mqtt_port == 8883 and s.tibber.obis_interval == 2.0
    assert s.tibber.ca_cert == tmp_path / "ca.pem"
    assert s.mirror.host == "localhost" and s.mirror.port == 1883 and s.mirror.ca_cert is None
    assert s.led.gpio == 17


def test_the_rate_is_hunted_only_with_auto_and_no_rate_given(tmp_path: Path) -> None:
    assert load(write(tmp_path, {("meter", "baudrate"): None})).meter.hunt_baud is True
    assert load(write(tmp_path, {("meter", "baudrate"): ""})).meter.hunt_baud is True
    assert load(write(tmp_path, {})).meter.hunt_baud is False  # 9600 given
    changes = {("meter", "baudrate"): "", ("meter", "protocol"): "ebz"}
    assert load(write(tmp_path, changes)).meter.hunt_baud is False


def test_protocol_parity_and_sml_suffix(tmp_path: Path) -> None:
    """Defaults: the protocol found from the stream, a text meter's parity bit checked; the
    values as given, any case."""
    s = load(write(tmp_path, {}))
    assert (s.meter.protocol, s.meter.parity) == ("auto", "even")
    assert s.tibber is not None and s.tibber.sml_suffix == "sml"
    changes = {("meter", "protocol"): "SML", ("meter", "parity"): "None"}
    changes[("tibber", "sml_suffix")] = "SML"
    s = load(write(tmp_path, changes))
    assert (s.meter.protocol, s.meter.parity) == ("sml", "none")
    assert s.tibber is not None and s.tibber.sml_suffix == "SML"
    message = load_error(write(tmp_path, {("meter", "protocol"): "dsmr"}))
    assert message == "[meter] protocol: must be one of auto, ebz, d0, sml, iec, got 'dsmr'"


def test_home_assistant_on_the_mirror(tmp_path: Path) -> None:
    changes = {("mirror", "enabled"): "true", ("mirror", "home_assistant"): "true"}
    s = load(write(tmp_path, changes))
    assert s.mirror.home_assistant is True and s.mirror.discovery_prefix == "homeassistant"
    changes[("mirror", "discovery_prefix")] = "ha/discovery"
    assert load(write(tmp_path, changes)).mirror.discovery_prefix == "ha/discovery"
    message = load_error(write(tmp_path, {("mirror", "home_assistant"): "true"}))
    assert message == (
        "[mirror] home_assistant: needs enabled = true (it publishes to the mirror's broker)"
    )


def test_the_mirror_and_led_sections_may_be_left_out(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    tibber = "".join(f"{k} = {v}\n" for k, v in VALID["tibber"].items())
    path.write_text(f"[tibber]\n{tibber}")
    s = load(path)
    assert s.meter.port == "/dev/ttyUSB0" and not s.mirror.enabled and s.led.enabled


# --- every key's error ---------------------------------------------------------------------------

BROKEN: list[tuple[str, str, str]] = [
    ("meter", "port", "/dev/tty USB0"),
    ("meter", "port", "foo://x"),
    ("meter", "port", "loop://"),
    ("meter", "port", "socket://host"),
    ("meter", "port", "ttyUSB0"),
    ("meter", "baudrate", "fast"),
    ("meter", "baudrate", "299"),
    ("meter", "baudrate", "115201"),
    ("meter", "baudrate", "9600.0"),
    ("meter", "baudrate", "12345"),
    ("meter", "stale_after", "ten"),
    ("meter", "stale_after", "0.5"),
    ("meter", "stale_after", "3601"),
    ("meter", "stale_after", "nan"),
    ("meter", "stale_after", "inf"),
    ("tibber", "mqtt_url", "mqtts://a1zhmn1192zl1a.iot.eu-west-1.amazonaws.com"),
    ("tibber", "mqtt_url", "a1zhmn1192zl1a.iot.eu-west-1.amazonaws.com:8883"),
    ("tibber", "mqtt_url", "broker.example/mqtt"),
    ("tibber", "mqtt_url", "bad_host!"),
    ("tibber", "mqtt_url", "-leading-dash.example"),
    ("tibber", "mqtt_url", "a..b.example"),  # an empty label: the resolver's ValueError
    ("tibber", "mqtt_url", "a" * 64 + ".example"),  # a label over 63
    ("tibber", "mqtt_url", "a-.example"),
    ("tibber", "mqtt_url", ".".join(["abc"] * 64)),  # 255 characters, over 253
    ("tibber", "mqtt_port", "0"),
    ("tibber", "mqtt_port", "65536"),
    ("tibber", "mqtt_port", "8883x"),
    ("tibber", "alpn", "x-amzn-mqtt-ca, mqtt"),  # one name, not a list
    ("tibber", "alpn", "x amzn"),
    ("meter", "protocol", "dsmr"),  # not (yet) a protocol the agent reads
    ("meter", "protocol", "SML 1.04"),
    ("meter", "parity", "odd"),  # no meter with an IR port uses it
    ("meter", "parity", "7e1"),
    ("meter", "interval", "0.5"),  # a mode C exchange alone takes longer
    ("meter", "interval", "1h"),
    ("tibber", "alpn", "x" * 256),  # RFC 7301: at most 255 bytes
    ("tibber", "uid", UID[:-1]),
    ("tibber", "uid", UID + "0"),
    ("tibber", "uid", "g" + UID[1:]),
    ("tibber", "bridge_id", BRIDGE_ID[:11]),
    ("tibber", "bridge_id", BRIDGE_ID + "0"),
    ("tibber", "bridge_id", "0f1e2d3c4b5az"),
    ("tibber", "eui", EUI[:-1]),
    ("tibber", "eui", EUI + "00"),
    ("tibber", "eui", "0f:1e:2d:3c:4b:5a"),
    ("tibber", "client_id", "has space"),
    ("tibber", "client_id", "x" * 129),
    ("tibber", "mqtt_topic", "tibber-bridge/#"),
    ("tibber", "mqtt_topic", "tibber-bridge/+/publish"),
    ("tibber", "mqtt_topic", "tibber-bridge/uid/publish/"),
    ("tibber", "mqtt_topic", "tibber bridge/publish"),
    ("tibber", "mqtt_topic", "t/" + "a" * 70000),  # over MQTT's 65535 bytes: paho's ValueError
    ("tibber", "mqtt_topic", "t/" + "a" * 65440),  # fits alone, not with what the agent adds
    ("tibber", "keepalive", "0"),
    ("tibber", "keepalive", "1201"),
    ("tibber", "keepalive", "60s"),
    ("tibber", "sml_suffix", "sml/raw"),  # one level: the node's topic ends with it
    ("tibber", "sml_suffix", "#"),
    ("tibber", "sml_suffix", "x" * 33),
    ("tibber", "obis_interval", "0.05"),
    ("tibber", "obis_interval", "-1"),
    ("tibber", "obis_interval", "3601"),
    ("tibber", "obis_interval", "two"),
    ("tibber", "bridge_metric_interval", "0.5"),
    ("tibber", "bridge_metric_interval", "86401"),
    ("tibber", "bridge_metric_interval", "0"),
    ("tibber", "node_metric_interval", "0"),
    ("tibber", "node_metric_interval", "1e6"),
    ("tibber", "node_metric_interval", "5 min"),
    ("tibber", "bridge_metrics_template", "missing.json"),
    ("tibber", "node_metrics_template", "missing.json"),
    ("mirror", "enabled", "maybe"),
    ("mirror", "host", "mqtt://localhost"),
    ("mirror", "host", "localhost:1883"),
    ("mirror", "host", "mqtt..lan"),
    ("mirror", "port", "70000"),
    ("mirror", "port", "-1"),
    ("mirror", "topic", "/ebz/#"),
    ("mirror", "topic", "/ebz/raw/"),
    ("mirror", "topic", "/" + "é" * 32768),  # 65537 bytes of UTF-8
    ("mirror", "password", "secret"),  # without a username
    ("mirror", "home_assistant", "yes please"),
    ("mirror", "home_assistant", "true"),  # without enabled = true: it would do nothing
    ("mirror", "discovery_prefix", "homeassistant/"),
    ("mirror", "discovery_prefix", "home assistant"),
    ("mirror", "discovery_prefix", "ha/#"),
    ("mirror", "discovery_prefix", "h" * 65500),  # fits alone, not with the sensor's topic
    ("led", "enabled", "2"),
    ("led", "gpio", "28"),
    ("led", "gpio", "-1"),
    ("led", "gpio", "GPIO17"),
    ("led", "active_high", "high"),
]
_REQUIRED = {("tibber", k) for k in ("mqtt_url", "uid", "bridge_id", "eui")}


@pytest.mark.parametrize(
    ("section", "key", "value"), BROKEN, ids=[f"{s}.{k}={v[:20]}" for s, k, v in BROKEN]
)
def test_a_broken_key_is_named_in_the_error(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    message = load_error(write(tmp_path, {(section, key): value}))
    assert message.startswith(f"[{section}] {key}: "), message
    assert len(message) > len(f"[{section}] {key}: ") + 5  # and says what is wrong


def test_the_longest_topics_allowed_fit_mqtt(tmp_path: Path) -> None:
    """The longest [tibber] mqtt_topic and [mirror] topic load, and every topic the agent
    publishes to then is within MQTT's 65535 bytes."""
    from agent.tibber.payloads import Topics

    for prefix in ("t/", "$aws/rules/r/t/"):
        # The longest topic that loads, searched between 65400 bytes and MQTT's limit.
        longest = None
        for size in range(65400, 65536):
            try:
                s = load(write(tmp_path, {("tibber", "mqtt_topic"): prefix + "a" * size}))
            except ConfigError:
                break
            longest = s
        else:
            pytest.fail("a topic of 65535 bytes and more loads: MQTT cannot carry it")
        assert longest is not None and longest.tibber is not None
        topics = Topics.of(longest.tibber)
        assert max(len(t.encode()) for t in vars(topics).values()) <= 65535
    mirror = "/" + "a" * 65534
    assert load(write(tmp_path, {("mirror", "topic"): mirror})).mirror.topic == mirror


def test_every_key_has_a_broken_case() -> None:
    """The table above covers the whole schema; the three PEM paths fail in check_files."""
    covered = {(s, k) for s, k, _ in BROKEN} | {
        ("tibber", "ca_cert"),
        ("tibber", "certificate"),
        ("tibber", "private_key"),
        ("mirror", "username"),  # free text; its error is the password's (tested above)
        ("mirror", "ca_cert"),  # a path: resolved, used by the mirror's TLS
    }
    assert covered == {(s, k) for s, keys in VALID.items() for k in keys}


@pytest.mark.parametrize(("section", "key"), sorted(_REQUIRED))
def test_a_missing_required_key_is_named(tmp_path: Path, section: str, key: str) -> None:
    for value in (None, ""):
        message = load_error(write(tmp_path, {(section, key): value}))
        assert message.startswith(f"[{section}] {key}: ") and "required" in message


def test_the_tibber_section_missing_entirely(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[meter]\nport = /dev/ttyUSB1\n")
    assert load_error(path).startswith("[tibber] mqtt_url: ")
    assert load(path, need_tibber=False).meter.port == "/dev/ttyUSB1"


def test_an_unknown_section_is_named(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, extra="[metre]\nport = /dev/ttyUSB0\n"))
    assert message.startswith("[metre]") and "unknown section" in message


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, {("meter", "speed"): "9600"}))
    assert message.startswith("[meter] speed: ") and "unknown key" in message
    # A typo of a known key too.
    message = load_error(write(tmp_path, {("tibber", "mqtt_host"): "broker"}))
    assert message.startswith("[tibber] mqtt_host: ")


def test_a_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.ini")
    assert "does not exist" in message and "nope.ini" in message


def test_a_file_that_is_not_ini(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("port = /dev/ttyUSB0\n")  # no section header
    assert "cannot be parsed" in load_error(path)
    path.write_bytes(b"[meter]\nport = /dev/tty\xff\n")
    assert "cannot be parsed" in load_error(path)
    path.write_text("[meter]\nport = a\nport = b\n")  # a key given twice
    assert "cannot be parsed" in load_error(path)


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    """`-c /etc/tibber-agent` (the folder, not the file) is a config error, not a crash."""
    message = load_error(tmp_path)
    assert str(tmp_path) in message


def test_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.chmod(0)
    if os.geteuid() != 0:
        assert "not readable" in load_error(path)
        return
    # Root reads anything: check as an unprivileged user in a child process.
    shared = Path(shutil.copytree(tmp_path, Path("/tmp") / f"cfg-{os.getpid()}-{id(path)}"))
    try:
        shared.chmod(0o755)
        (shared / "config.ini").chmod(0)
        read, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, report the error text
            try:
                os.close(read)
                os.setgid(65534)
                os.setuid(65534)
                try:
                    load(shared / "config.ini")
                    text = "loaded"
                except ConfigError as e:
                    text = str(e)
                os.write(write_end, text.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read, "rb") as f:
            text = f.read().decode()
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(shared)
    assert text.startswith("[config]") and "not readable" in text, text


# --- paths ---------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    base = tmp_path / "etc" / "tibber-agent"
    (base / "certs").mkdir(parents=True)
    (base / "captured.json").write_text('{"status": {"vcc": 3.31}}')
    (base / "node.json").write_text('{"node_status": {"product_id": 1}}')
    s = load(
        write(
            base,
            {
                ("tibber", "ca_cert"): "certs/ca.pem",
                ("tibber", "certificate"): "/opt/creds/cert.pem",
                ("tibber", "private_key"): "private.key",
                ("tibber", "bridge_metrics_template"): "captured.json",
                ("tibber", "node_metrics_template"): str(base / "node.json"),
                ("mirror", "ca_cert"): "certs/mirror-ca.pem",
            },
        )
    )
    assert s.tibber is not None
    assert s.tibber.ca_cert == base / "certs" / "ca.pem"
    assert s.tibber.certificate == Path("/opt/creds/cert.pem")
    assert s.tibber.private_key == base / "private.key"
    assert s.tibber.bridge_metrics_template == {"status": {"vcc": 3.31}}
    assert s.tibber.node_metrics_template == {"node_status": {"product_id": 1}}
    assert s.mirror.ca_cert == base / "certs" / "mirror-ca.pem"
    # Not against the working directory of whoever starts the agent.
    assert os.getcwd() != str(base)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not JSON"), ("[1, 2]", "JSON object")],
)
def test_a_template_that_is_not_a_json_object(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "t.json").write_text(content)
    for key in ("bridge_metrics_template", "node_metrics_template"):
        message = load_error(write(tmp_path, {("tibber", key): "t.json"}))
        assert message.startswith(f"[tibber] {key}: ") and problem in message


# --- credential files ----------------------------------------------------------------------------


def creds_config(directory: Path, pki: Pki) -> Path:
    return write(
        directory,
        {
            ("tibber", "ca_cert"): str(pki.ca),
            ("tibber", "certificate"): str(pki.client_crt),
            ("tibber", "private_key"): str(pki.client_key),
        },
    )


def tibber_of(path: Path):  # type: ignore[no-untyped-def]
    t = load(path).tibber
    assert t is not None
    return t


def test_check_files_accepts_real_pem_files_with_a_private_key(tmp_path: Path, pki: Pki) -> None:
    pki.client_key.chmod(0o640)
    check_files(tibber_of(creds_config(tmp_path, pki)))


@pytest.mark.parametrize("key", ["ca_cert", "certificate", "private_key"])
def test_check_files_names_a_missing_file(tmp_path: Path, pki: Pki, key: str) -> None:
    t = tibber_of(
        write(
            tmp_path,
            {
                ("tibber", "ca_cert"): str(pki.ca),
                ("tibber", "certificate"): str(pki.client_crt),
                ("tibber", "private_key"): str(pki.client_key),
                ("tibber", key): "gone.pem",
            },
        )
    )
    with pytest.raises(ConfigError) as info:
        check_files(t)
    assert str(info.value).startswith(f"[tibber] {key}: ") and "does not exist" in str(info.value)


@pytest.mark.parametrize("key", ["ca_cert", "certificate", "private_key"])
def test_check_files_names_a_file_that_is_not_pem(tmp_path: Path, pki: Pki, key: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x30\x82\x01\x0a" + os.urandom(64))  # DER, not PEM
    junk.chmod(0o600)
    t = tibber_of(
        write(
            tmp_path,
            {
                ("tibber", "ca_cert"): str(pki.ca),
                ("tibber", "certificate"): str(pki.client_crt),
                ("tibber", "private_key"): str(pki.client_key),
                ("tibber", key): str(junk),
            },
        )
    )
    with pytest.raises(ConfigError) as info:
        check_files(t)
    assert str(info.value).startswith(f"[tibber] {key}: ") and "not a PEM" in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_check_files_refuses_a_key_open_to_others(tmp_path: Path, pki: Pki, mode: int) -> None:
    pki.client_key.chmod(mode)
    with pytest.raises(ConfigError) as info:
        check_files(tibber_of(creds_config(tmp_path, pki)))
    message = str(info.value)
    assert message.startswith("[tibber] private_key: ")
    assert f"{mode:04o}" in message and "chmod" in message
    assert "PRIVATE KEY" not in message  # key material is never shown


def test_check_files_refuses_an_encrypted_key(tmp_path: Path, pki: Pki) -> None:
    """OpenSSL would ask for the passphrase on a terminal, blocking `check` (and `run`
    started by hand); under systemd it would fail at every attempt. Named at load instead."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    pki.client_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    pki.client_key.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        check_files(tibber_of(creds_config(tmp_path, pki)))
    message = str(info.value)
    assert message.startswith("[tibber] private_key: ") and "encrypted" in message
    assert "PRIVATE KEY" not in message


def test_an_ipv6_broker_is_given_in_brackets_and_taken_without(tmp_path: Path) -> None:
    """paho and the resolver take a bare IPv6 address; `[::1]` was accepted and then failed
    every attempt as 'cannot resolve [::1] (DNS)'. A bare one stays refused (it reads like
    host:port)."""
    s = load(write(tmp_path, {("tibber", "mqtt_url"): "[::1]", ("mirror", "host"): "[fe80::1]"}))
    assert s.tibber is not None and s.tibber.mqtt_url == "::1"
    assert s.mirror.host == "fe80::1"
    for bad in ("[zz::1]", "::1"):
        with pytest.raises(ConfigError, match=r"\[tibber\] mqtt_url: "):
            load(write(tmp_path, {("tibber", "mqtt_url"): bad}))


# --- the annotated config.ini at the repo root ---------------------------------------------------

ANNOTATED = REPO_ROOT / "config.ini"


def test_the_annotated_config_loads_without_tibber() -> None:
    s = load(ANNOTATED, need_tibber=False)
    assert s.tibber is None
    assert s.meter.port == "/dev/ttyUSB0" and s.meter.baudrate == 9600
    assert s.meter.stale_after == 10.0
    assert s.mirror.enabled is False and s.mirror.topic == "/ebz/raw"
    assert s.led.gpio == 17


def test_the_annotated_config_needs_the_tibber_ids() -> None:
    assert load_error(ANNOTATED).startswith("[tibber] mqtt_url: ")


def test_the_annotated_config_with_the_ids_filled_in(tmp_path: Path) -> None:
    text = ANNOTATED.read_text()
    for key, value in [
        ("mqtt_url", "a1zhmn1192zl1a.iot.eu-west-1.amazonaws.com"),
        ("uid", UID),
        ("bridge_id", BRIDGE_ID),
        ("eui", EUI),
    ]:
        text, n = re.subn(rf"(?m)^{key} =$", f"{key} = {value}", text)
        assert n == 1, key
    path = tmp_path / "config.ini"
    path.write_text(text)
    s = load(path)
    t = s.tibber
    assert t is not None
    assert (t.uid, t.bridge_id, t.eui, t.mqtt_port) == (UID, BRIDGE_ID, EUI, 8883)
    assert t.ca_cert == tmp_path / "ca.pem" and t.private_key == tmp_path / "private.key"
    assert t.obis_interval == 2.0 and t.keepalive == 60
    assert t.publish_base == f"$aws/rules/ingest_tibber_bridge_data/tibber-bridge/{UID}/publish"
    assert t.bridge_metrics_template is None and t.node_metrics_template is None


def test_the_annotated_config_documents_every_key() -> None:
    text = ANNOTATED.read_text()
    sections = re.findall(r"(?m)^\[(\w+)\]$", text)
    assert sections == list(VALID)
    keys = set(re.findall(r"(?m)^(\w+) =", text))
    assert keys == {k for section in VALID.values() for k in section}


def test_a_template_is_read_as_given(tmp_path: Path) -> None:
    doc = {"$type": "status", "status": {"vcc": 3.3, "heap": 100000}}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    t = tibber_of(write(tmp_path, {("tibber", "bridge_metrics_template"): "m.json"}))
    assert t.bridge_metrics_template == doc


# --- the port: a device path or a URL the agent can read a meter through -----------------------

GOOD_PORTS = [
    "/dev/ttyUSB0",
    "/dev/serial/by-id/usb-FTDI_FT230X_Basic_UART_D30A1B2C-if00-port0",
    "socket://192.168.1.50:8888",
    "socket://ir-head.local:23",
    "socket://[fe80::1]:2000",
    "SOCKET://ser2net:3333",
    "rfc2217://192.168.1.50:7000",
    "rfc2217://ser2net:7000?poll_modem&timeout=5",
    "rfc2217://ser2net:7000?ign_set_control",
]


@pytest.mark.parametrize("port", GOOD_PORTS)
def test_a_supported_port_loads_and_pyserial_parses_it_alike(tmp_path: Path, port: str) -> None:
    assert load(write(tmp_path, {("meter", "port"): port})).meter.port == port
    if "://" in port:
        # pyserial's own URL parser, the one open() runs (without connecting), agrees.
        host, tcp_port = serial.serial_for_url(port, do_not_open=True).from_url(port)
        assert host and 1 <= tcp_port <= 65535


def test_every_scheme_pyserial_knows_is_taken_or_refused_with_a_reason() -> None:
    """A pyserial upgrade that adds a scheme fails here until someone decides about it."""
    modules = pkgutil.iter_modules(serial.urlhandler.__path__)
    known = {m.name.removeprefix("protocol_") for m in modules if m.name.startswith("protocol_")}
    assert known == set(PORT_URLS) | set(REFUSED_SCHEMES)


# Schemes a user might guess; none is pyserial's.
UNKNOWN_SCHEMES = [
    "foo",
    "http",
    "tcp",
    "telnet",
    "ser2net",
    "serial",
    "file",
    "mqtt",
    "udp",
    "COM3",
]


@pytest.mark.parametrize("scheme", UNKNOWN_SCHEMES)
def test_a_scheme_pyserial_does_not_know_is_a_config_error(tmp_path: Path, scheme: str) -> None:
    url = f"{scheme}://192.168.1.50:8888"
    with pytest.raises(ValueError, match="not known"):  # pyserial's verdict at open
        serial.serial_for_url(url, do_not_open=True)
    message = load_error(write(tmp_path, {("meter", "port"): url}))
    assert message.startswith("[meter] port: ") and repr(scheme.lower()) in message, message


@pytest.mark.parametrize(
    "url",
    [
        "loop://",
        "spy:///dev/ttyUSB0",
        "alt:///dev/ttyUSB0?class=PosixPollSerial",
        "hwgrep://0403:6001",
        "cp2110://0001:0002",
    ],
)
def test_a_pyserial_scheme_that_reads_no_ir_head_is_refused_with_why(
    tmp_path: Path, url: str
) -> None:
    scheme = url.split(":")[0]
    message = load_error(write(tmp_path, {("meter", "port"): url}))
    assert message.startswith(f"[meter] port: {scheme}:// {REFUSED_SCHEMES[scheme]}"), message


MALFORMED_URLS = [
    "socket://host",  # pyserial: TypeError at open
    "socket://:5000",
    "socket://host:",
    "socket://host:0",
    "socket://host:65536",
    "socket://host:99999",
    "socket://host:http",
    "socket://user@host:23",
    "socket://bad_host!:23",
    "socket://a..b:23",
    "socket://[::1:23",
    "socket://host:23/path",
    "socket://host:23#frag",
    "socket://host:23?logging=debug",
    "socket://host:23?timeout=5",
    "rfc2217://host",
    "rfc2217://host:7000?timeout=soon",
    "rfc2217://host:7000?timeout=-1",
    "rfc2217://host:7000?timeout=nan",
    "rfc2217://host:7000?bogus",
    "://host:23",
    "ttyUSB0",
    "dev/ttyUSB0",
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_port_is_a_config_error_at_load(tmp_path: Path, url: str) -> None:
    message = load_error(write(tmp_path, {("meter", "port"): url}))
    assert message.startswith("[meter] port: ") and repr(url) in message, message


def test_a_device_path_that_does_not_exist_loads(tmp_path: Path) -> None:
    """The head may be plugged in later: the agent retries; only `check` warns."""
    path = str(tmp_path / "no-such-tty")
    assert load(write(tmp_path, {("meter", "port"): path})).meter.port == path


# --- templates: the constant fields the agent takes, checked at load ----------------------------

MAC, AP_MAC, BSSID = "a:1b:2c:3d:4e:50", "a:1b:2c:3d:4e:51", "0a1b2c3d4e51"


def test_the_built_in_constants_pass_as_templates(tmp_path: Path) -> None:
    """The agent's own 2023 values, written as the bridge would, are a valid template."""
    bridge = {"status": {**BRIDGE_CONSTANTS, "mac": MAC, "ap_mac": AP_MAC, "bssid": BSSID}}
    node_status = {k: v for k, v in NODE_CONSTANTS.items() if k != "node_version"}
    node = {
        "node_status": node_status,
        "hub_attachments": {"node_version": NODE_CONSTANTS["node_version"]},
    }
    (tmp_path / "b.json").write_text(json.dumps(bridge))
    (tmp_path / "n.json").write_text(json.dumps(node))
    t = tibber_of(
        write(
            tmp_path,
            {
                ("tibber", "bridge_metrics_template"): "b.json",
                ("tibber", "node_metrics_template"): "n.json",
            },
        )
    )
    assert (t.bridge_metrics_template, t.node_metrics_template) == (bridge, node)


def test_the_documented_captures_pass_as_templates(tmp_path: Path) -> None:
    """The three JSON samples of tibber-bridge.md §5, their address placeholders filled in as a
    user's file would have them; with `<mac>` left in, the placeholder is named."""
    path = shared_file("protocol/tibber-bridge.md")
    samples = re.findall(r"```json\n(.*?)\n```", path.read_text(), re.S)
    by_type = {json.loads(text)["$type"]: text for text in samples}
    assert set(by_type) == {"event", "status", "node_status"}
    filled = {
        t: text.replace('"<mac>"', f'"{MAC}"')
        .replace('"<ap_mac>"', f'"{AP_MAC}"')
        .replace('"<bssid>"', f'"{BSSID}"')
        for t, text in by_type.items()
    }
    for kind, key in (
        ("event", "bridge_metrics_template"),
        ("status", "bridge_metrics_template"),
        ("node_status", "node_metrics_template"),
    ):
        (tmp_path / "t.json").write_text(filled[kind])
        t = tibber_of(write(tmp_path, {("tibber", key): "t.json"}))
        assert getattr(t, key) == json.loads(filled[kind])
    (tmp_path / "t.json").write_text(by_type["status"])
    message = load_error(write(tmp_path, {("tibber", "bridge_metrics_template"): "t.json"}))
    assert 'field "status.mac" must be a MAC address' in message and '"<mac>"' in message


def test_nan_in_a_template_is_not_json(tmp_path: Path) -> None:
    """Python reads NaN and Infinity, and json.dumps would send them on: no other reader
    accepts them."""
    for text in ('{"vcc": NaN}', '{"status": {"heap": Infinity}}', '{"ssid": "x", "y": -Infinity}'):
        (tmp_path / "t.json").write_text(text)
        message = load_error(write(tmp_path, {("tibber", "bridge_metrics_template"): "t.json"}))
        assert "is not JSON" in message and "not a JSON number" in message, message


# --- several meters on one bridge ----------------------------------------------------------------
EUI2 = "0f1e2d3c4b5a6979"


def write_meters(tmp_path: Path, meters: str, tibber_eui: bool = False) -> Path:
    """The valid config with its [meter] replaced by `meters` ([meter:NAME] sections)."""
    path = write(tmp_path, {})
    text = path.read_text()
    if not tibber_eui:
        text = text.replace(f"eui = {EUI}\n", "")  # only [tibber] has one yet
    start = text.index("[meter]")
    end = text.index("[", start + 1)
    path.write_text(text[:start] + meters + "\n" + text[end:])
    return path


def test_named_meters_each_with_its_eui(tmp_path: Path) -> None:
    s = load(
        write_meters(
            tmp_path,
            f"[meter:house]\nport = /dev/ttyUSB0\neui = {EUI}\n"
            f"[meter:heatpump]\nport = socket://10.0.0.7:8888\nprotocol = sml\neui = {EUI2}\n",
        )
    )
    assert [(m.name, m.port, m.protocol, m.eui) for m in s.meters] == [
        ("house", "/dev/ttyUSB0", "auto", EUI),
        ("heatpump", "socket://10.0.0.7:8888", "sml", EUI2),
    ]
    assert s.meter is s.meters[0] and s.tibber is not None and s.tibber.eui == EUI


def test_the_single_meter_is_the_node_of_tibber_eui(tmp_path: Path) -> None:
    s = load(write(tmp_path, {}))
    assert [(m.name, m.eui) for m in s.meters] == [("", EUI)] and s.meter is s.meters[0]


@pytest.mark.parametrize(
    ("meters", "tibber_eui", "message"),
    [
        (
            f"[meter]\nport = /dev/ttyUSB1\n[meter:a]\neui = {EUI}\n",
            False,
            "[meter]: use either [meter] or [meter:NAME] sections, not both",
        ),
        (
            f"[meter:a]\neui = {EUI}\n",
            True,
            "[tibber] eui: must be left out with [meter:NAME] sections (each has its eui)",
        ),
        ("[meter:a]\nport = /dev/ttyUSB0\n", False, "[meter:a] eui: is required but empty"),
        (
            f"[meter:a]\neui = {EUI}\n[meter:b]\nport = /dev/ttyUSB1\neui = {EUI.upper()}\n",
            False,
            "[meter:b] eui: is also [meter:a]'s",
        ),
        (
            f"[meter:a]\neui = {EUI}\n[meter:b]\neui = {EUI2}\n",
            False,
            "[meter:b] port: is also [meter:a]'s",
        ),
        (
            f"[meter:a b]\neui = {EUI}\n",
            False,
            "[meter:a b]: NAME must be 1-32 letters, digits, _ or -",
        ),
        (f"[meter:a]\neui = {EUI}\nbaud = 300\n", False, "[meter:a] baud: unknown key"),
        ("[meter:a]\neui = 0f1e\n", False, None),
    ],
    ids=[
        "both",
        "tibber-eui",
        "no-eui",
        "same-eui",
        "same-port",
        "bad-name",
        "bad-key",
        "short-eui",
    ],
)
def test_named_meters_errors_name_section_and_key(
    tmp_path: Path, meters: str, tibber_eui: bool, message: str | None
) -> None:
    got = load_error(write_meters(tmp_path, meters, tibber_eui))
    if message is None:
        assert got.startswith("[meter:a] eui: "), got
    else:
        assert got == message


def test_at_most_eight_meters(tmp_path: Path) -> None:
    sections = "".join(
        f"[meter:m{i}]\nport = /dev/ttyUSB{i}\neui = {EUI[:-1]}{i}\n" for i in range(9)
    )
    assert load_error(write_meters(tmp_path, sections)) == "[meter:m8]: at most 8 meters"
