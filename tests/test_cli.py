"""The command line: every wrong template field and port URL is a config error (exit 78, one
line) for `check` and `run`, never a crash; a closed output ends `demo` and `monitor` quietly.

The bulk runs in-process (`agent.cli.main` with capsys); a sample of the same cases runs the
agent as a process, which is where a traceback, exit 1 or exit 70 would show.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.tibber import payloads
from tests.harness.agent import AgentConfig, AgentProcess
from tests.harness.certs import Pki, make_pki
from tests.harness.meter import PtyMeter
from tests.harness.paths import REPO_ROOT

EX_CONFIG = 78
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
ENV.pop("JOURNAL_STREAM", None)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points the root logger at this test's captured stderr; put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


# --- what each template field must be --------------------------------------------------------
# Decided from the captured messages (tibber-bridge.md §5, firmware-notes/fields.md), written
# out here on their own so the test does not take its expectations from the code under test.
WHOLE, NUMBER, BOOL, TEXT, MAC, BSSID, OTA, OBJECT = (
    "whole",
    "number",
    "bool",
    "text",
    "mac",
    "bssid",
    "ota",
    "object",
)
BRIDGE: dict[str, str] = {
    "vcc": NUMBER,  # 3.49
    "heap": WHOLE,  # 124808
    "coredump_available": BOOL,
    "ota": OTA,  # five {model, manifest_version, current_version, state}
    "hub_ota_status": TEXT,
    "manifest_state": TEXT,
    "manifest_version": TEXT,
    "manifest_group": TEXT,  # "" in production
    "netflags": WHOLE,  # 25
    "mac": MAC,  # "a:1b:2c:3d:4e:50"
    "ap_mac": MAC,
    "ssid": TEXT,
    "bssid": BSSID,  # 12 hex digits
    "channel": WHOLE,  # 6
}
NODE: dict[str, str] = {
    "product_id": WHOLE,  # 49344
    "bootloader_version": WHOLE,  # 17563650
    "meter_mode": WHOLE,  # 4
    "node_battery_voltage": NUMBER,  # 3.435
    "node_avg_rssi": NUMBER,  # -43.557
    "node_avg_lqi": NUMBER,  # 193.705
    "radio_tx_power": WHOLE,  # 0
    "acmp_rx_autolevel_300": WHOLE,  # 146
    "acmp_rx_autolevel_9600": WHOLE,  # 139
}
GOOD: dict[str, Any] = {
    WHOLE: 25,
    NUMBER: 3.49,
    BOOL: False,
    TEXT: "up2date",
    MAC: "a:1b:2c:3d:4e:50",
    BSSID: "0a1b2c3d4e51",
    OTA: [
        {
            "model": "tibber-pulse-ir-hub-esp32",
            "manifest_version": "1357-05c0c2f6",
            "current_version": "1357-05c0c2f6",
            "state": "up2date",
        }
    ],
}
# Every JSON type, by name; each kind's wrong ones below.
JSON_VALUES: dict[str, Any] = {
    "string": "big",
    "numeric string": "124000",
    "empty string": "",
    "int": 7,
    "negative int": -64,
    "float": 7.5,
    "integral float": 7.0,
    "true": True,
    "false": False,
    "null": None,
    "list": [1],
    "empty list": [],
    "object": {"a": 1},
    "empty object": {},
}
RIGHT_TYPES = {
    WHOLE: {"int", "negative int"},
    NUMBER: {"int", "negative int", "float", "integral float"},
    BOOL: {"true", "false"},
    TEXT: {"string", "numeric string", "empty string"},
    MAC: set(),  # strings only in the right format, below
    BSSID: {"empty string"},  # as the agent sends it when the Pi is not on Wi-Fi
    OTA: {"empty list"},
    OBJECT: {"object", "empty object"},
}
MALFORMED_STRINGS = {
    MAC: [
        "zz:zz",
        "a4:cf:12:0b:3c",
        "a4:cf:12:0b:3c:5d:01",
        "a4:cf:12:0b:3c:5dd",
        "a4:cf:12:0b:3c:5g",
        "a4-cf-12-0b-3c-5d",
        "a4cf120b3c5d",
        " a4:cf:12:0b:3c:5d",
        "a4:cf:12:0b:3c:",
        "<mac>",
    ],
    BSSID: ["0a1b2c3d4e5", "0a1b2c3d4e5f6", "0a:1b:2c:3d:4e:5f", "0a1b2c3d4e5g", "<bssid>"],
    OTA: [],
}
BAD_OTA = [
    [1],
    ["tibber-pulse-ir-hub-esp32"],
    [None],
    [[]],
    [{}],
    [{k: v for k, v in GOOD[OTA][0].items() if k != "state"}],
    [{**GOOD[OTA][0], "current_version": 1357}],
    [{**GOOD[OTA][0], "model": None}],
    [GOOD[OTA][0], True],
]


def wrong_values(kind: str) -> list[tuple[str, Any]]:
    out = [(name, v) for name, v in JSON_VALUES.items() if name not in RIGHT_TYPES[kind]]
    out += [(f"malformed {s!r}", s) for s in MALFORMED_STRINGS.get(kind, [])]
    if kind == OTA:
        out += [(f"entries {json.dumps(v)[:30]}", v) for v in BAD_OTA]
    return out


@dataclass(frozen=True)
class Case:
    key: str  # bridge_metrics_template or node_metrics_template
    field: str  # the JSON path an error must name
    doc: Any  # the template with `WRONG` where the wrong value goes


WRONG = object()


def _put(doc: Any, value: Any) -> Any:
    if doc is WRONG:
        return value
    if isinstance(doc, dict):
        return {k: _put(v, value) for k, v in doc.items()}
    return doc


def field_cases() -> list[tuple[Case, str]]:
    """Every field the agent takes, wrong, wherever a template may hold it."""
    bridge = {name: GOOD[kind] for name, kind in BRIDGE.items()}
    node = {name: GOOD[kind] for name, kind in NODE.items()}
    cases: list[tuple[Case, str]] = []
    for name, kind in BRIDGE.items():
        for where in ("", "status", "metrics"):  # bare, a TJH01 metric, a hello
            body = {**bridge, name: WRONG}
            doc = {"$type": "event", where: body} if where else body
            path = f"{where}.{name}" if where else name
            cases.append((Case("bridge_metrics_template", path, doc), kind))
    for name, kind in NODE.items():
        for where in ("", "node_status"):
            body = {**node, name: WRONG}
            doc = {"$type": "node_status", where: body} if where else body
            path = f"{where}.{name}" if where else name
            cases.append((Case("node_metrics_template", path, doc), kind))
    attached = {"node_status": node, "hub_attachments": {"node_version": WRONG}}
    cases.append((Case("node_metrics_template", "hub_attachments.node_version", attached), TEXT))
    # The containers themselves.
    for container in ("status", "metrics"):
        doc = {"$type": "status", container: WRONG, "vcc": 3.3}
        cases.append((Case("bridge_metrics_template", container, doc), OBJECT))
    for container in ("node_status", "hub_attachments"):
        doc = {"product_id": 1, container: WRONG}
        cases.append((Case("node_metrics_template", container, doc), OBJECT))
    return cases


FIELD_CASES = field_cases()


def test_the_fuzz_covers_every_field_the_payload_builder_takes() -> None:
    # The payload builder copies exactly the fields templates.py checks (it imports them).
    taken_bridge = set(payloads.BRIDGE_FIELDS)
    taken_node = set(payloads.NODE_FIELDS) | {"node_version"}
    assert set(BRIDGE) == taken_bridge
    assert set(NODE) | {"node_version"} == taken_node
    fields = {c.field.split(".")[-1] for c, _ in FIELD_CASES}
    assert fields >= taken_bridge | taken_node | {"status", "metrics", "node_status"}


# --- in-process: `check` on every case -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def good(tmp_path: Path, pki: Pki) -> AgentConfig:
    """A config `check` passes (credentials in place, the port exists): a failure is the part
    the test broke."""
    tty = tmp_path / "ttyIR"
    tty.touch()
    return AgentConfig(tmp_path / "etc", str(tty), 8883, pki)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.splitlines()


def test_the_good_config_passes_check(good: AgentConfig, capsys: pytest.CaptureFixture[str]):
    for key, doc in (
        ("bridge_metrics_template", {"status": {n: GOOD[k] for n, k in BRIDGE.items()}}),
        (
            "node_metrics_template",
            {
                "node_status": {n: GOOD[k] for n, k in NODE.items()},
                "hub_attachments": {"node_version": "1001-b6715572"},
            },
        ),
    ):
        good.directory.mkdir(parents=True, exist_ok=True)
        (good.directory / f"{key}.json").write_text(json.dumps(doc))
        good.tibber[key] = f"{key}.json"
    code, err = run_main(["-c", str(good.write()), "check", "--offline"], capsys)
    assert (code, err) == (0, [])


@pytest.mark.parametrize(
    ("case", "kind"), FIELD_CASES, ids=[f"{c.key[:6]}:{c.field}" for c, _ in FIELD_CASES]
)
def test_check_names_every_wrong_template_field(
    good: AgentConfig, capsys: pytest.CaptureFixture[str], case: Case, kind: str
) -> None:
    good.directory.mkdir(parents=True, exist_ok=True)
    template = good.directory / "template.json"
    good.tibber[case.key] = "template.json"
    path = good.write()
    failures = []
    for name, value in wrong_values(kind):
        template.write_text(json.dumps(_put(case.doc, value)))
        code, err = run_main(["-c", str(path), "check"], capsys)
        # The field itself, or for `ota` the entry in it: field "ota" or field "ota[0].model".
        want = f'tibber-agent: {path}: [tibber] {case.key}: {template}: field "{case.field}'
        named = len(err) == 1 and err[0].startswith(want) and err[0][len(want)] in '"['
        if code != EX_CONFIG or not named:
            failures.append(f"{name}: exit {code}, stderr {err[:3]}")
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize(
    ("key", "doc", "says"),
    [
        (
            "bridge_metrics_template",
            {"$type": "node_status", "node_status": {"product_id": 1}},
            'field "$type"',
        ),
        ("node_metrics_template", {"$type": "status", "status": {"vcc": 3.49}}, 'field "$type"'),
        ("bridge_metrics_template", {"product_id": 49344}, "has none of the fields"),
        ("node_metrics_template", {}, "has none of the fields"),
        ("bridge_metrics_template", {"status": {}}, "has none of the fields"),
    ],
)
def test_check_names_a_template_of_the_wrong_kind(
    good: AgentConfig, capsys: pytest.CaptureFixture[str], key: str, doc: Any, says: str
) -> None:
    good.directory.mkdir(parents=True, exist_ok=True)
    (good.directory / "t.json").write_text(json.dumps(doc))
    good.tibber[key] = "t.json"
    code, err = run_main(["-c", str(good.write()), "check"], capsys)
    assert code == EX_CONFIG and len(err) == 1, err
    assert f"[tibber] {key}: " in err[0] and says in err[0], err


# pyserial 3.5 has none of these (tests/test_config.py proves it scheme by scheme); the
# schemes it has but an IR head cannot use, and malformed URLs of the two it can, follow.
UNKNOWN_SCHEMES = [
    "foo",
    "http",
    "https",
    "tcp",
    "udp",
    "telnet",
    "ssh",
    "ser2net",
    "serial",
    "tty",
    "file",
    "mqtt",
    "ws",
    "com1",
    "usb",
    "ftdi",
    "esp",
    "tasmota",
    "x-y",
    "socket2",
]
UNUSABLE_URLS = [
    "loop://",
    "spy:///dev/ttyUSB0",
    "alt:///dev/ttyUSB0?class=PosixPollSerial",
    "hwgrep://0403:6001",
    "cp2110://0001:0002",
    "socket://host",
    "socket://host:0",
    "socket://host:65536",
    "socket://host:23/x",
    "socket://host:23?logging=debug",
    "rfc2217://host",
    "rfc2217://host:7000?timeout=x",
    "ttyUSB0",
]
PORT_CASES = [f"{s}://192.168.1.50:8888" for s in UNKNOWN_SCHEMES] + UNUSABLE_URLS


@pytest.mark.parametrize("port", PORT_CASES)
def test_check_names_a_port_the_agent_cannot_open(
    good: AgentConfig, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    good.meter["port"] = port
    path = good.write()
    code, err = run_main(["-c", str(path), "check"], capsys)
    assert code == EX_CONFIG and len(err) == 1, err
    assert err[0].startswith(f"tibber-agent: {path}: [meter] port: "), err
    assert "does not exist" not in err[0]  # the config error, not the missing-device warning


def test_monitor_port_argument_is_checked_like_the_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-c", "/nonexistent.ini", "monitor", "--port", "foo://x"])
    err = capsys.readouterr().err
    assert exited.value.code == 2  # a usage error, as argparse reports them
    assert "argument --port: pyserial knows no scheme 'foo'" in err and "Traceback" not in err


# --- the real process: `run` and `check` end with 78 and one line, never a traceback ----------


@dataclass(frozen=True)
class ProcessCase:
    name: str
    says: str  # what the one line must contain
    port: str | None = None  # [meter] port, else the (existing) test tty
    key: str = "bridge_metrics_template"
    template: str = ""  # the file's text
    sections: tuple[tuple[str, str, str], ...] = ()  # (section, key, value) set besides


def _json(doc: Any) -> str:
    return json.dumps(doc)


NODE_KEY = "node_metrics_template"
PROCESS_CASES = [
    ProcessCase("mac 123", 'field "mac" must be a MAC address', template=_json({"mac": 123})),
    ProcessCase("mac zz:zz", 'field "status.mac"', template=_json({"status": {"mac": "zz:zz"}})),
    ProcessCase("heap big", 'field "metrics.heap"', template=_json({"metrics": {"heap": "big"}})),
    ProcessCase("heap true", 'field "heap" must be a whole number', template=_json({"heap": True})),
    ProcessCase("ota [1]", 'field "ota[0]" must be an object', template=_json({"ota": [1]})),
    ProcessCase("status a list", 'field "status"', template=_json({"status": [1]})),
    ProcessCase(
        "hub_attachments [1]",
        'field "hub_attachments" must be an object',
        key=NODE_KEY,
        template=_json({"hub_attachments": [1]}),
    ),
    ProcessCase(
        "node_version a number",
        'field "hub_attachments.node_version"',
        key=NODE_KEY,
        template=_json({"hub_attachments": {"node_version": 1001}}),
    ),
    ProcessCase(
        "rssi null",
        'field "node_status.node_avg_rssi"',
        key=NODE_KEY,
        template=_json({"node_status": {"node_avg_rssi": None}}),
    ),
    ProcessCase("NaN", "NaN is not a JSON number", template='{"vcc": NaN}'),
    ProcessCase("port foo", "[meter] port: pyserial knows no scheme 'foo'", port="foo://x"),
    ProcessCase("port loop", "[meter] port: loop://", port="loop://"),
    ProcessCase("port no tcp port", "[meter] port: must be socket://host:port", port="socket://h"),
    # Values that reached the resolver or paho and raised a ValueError there (exit 70).
    ProcessCase(
        "host empty label",
        "[tibber] mqtt_url: is not a valid host name",
        sections=(("tibber", "mqtt_url", "broker..example"),),
    ),
    ProcessCase(
        "mirror host label of 64",
        "[mirror] host: is not a valid host name",
        sections=(("mirror", "enabled", "true"), ("mirror", "host", "a" * 64 + ".lan")),
    ),
    ProcessCase(
        "topic too long",
        "[tibber] mqtt_topic: is longer than MQTT allows",
        sections=(("tibber", "mqtt_topic", "t/" + "a" * 70000),),
    ),
]


@pytest.mark.parametrize("case", PROCESS_CASES, ids=[c.name for c in PROCESS_CASES])
def test_run_and_check_exit_78_with_one_line(tmp_path: Path, pki: Pki, case: ProcessCase) -> None:
    tty = tmp_path / "ttyIR"
    tty.touch()
    config = AgentConfig(tmp_path / "etc", case.port or str(tty), 8883, pki)
    if case.template:
        config.directory.mkdir(parents=True)
        (config.directory / "t.json").write_text(case.template)
        config.tibber[case.key] = "t.json"
    for section, key, value in case.sections:
        getattr(config, section)[key] = value
    path = config.write()
    for command in ("check", "run"):
        agent = AgentProcess(path, command).start()
        try:
            code = agent.wait(10)
        finally:
            agent.stop()
        lines = agent.log_text().splitlines()  # stdout and stderr together
        assert code == EX_CONFIG, (command, code, lines[-5:])
        assert len(lines) == 1 and lines[0].startswith(f"tibber-agent: {path}: "), (command, lines)
        assert case.says in lines[0], (command, lines)


def test_run_waits_for_a_device_path_that_is_not_there_yet(tmp_path: Path, pki: Pki) -> None:
    """Not a config error: the head may be plugged in later, and the agent retries."""
    path = AgentConfig(tmp_path / "etc", str(tmp_path / "not-plugged"), 8883, pki).write()
    with AgentProcess(path, "run") as agent:
        agent.wait_for_log("meter: port missing", timeout=10)
        assert agent.proc is not None and agent.proc.poll() is None
        agent.signal(signal.SIGTERM)
        assert agent.wait(5) == 0


# --- a closed output: `demo | head`, `monitor | less` and q -----------------------------------
# The status a shell shows for a tool killed by SIGPIPE (agent/cli.py says why).
EX_OUTPUT_CLOSED = 141


def _close_after(proc: subprocess.Popen[bytes], lines: int) -> tuple[int, bytes]:
    """Read `lines` lines, close the pipe like `head` does, and wait for the process."""
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines):
        assert proc.stdout.readline(), "the output ended early"
    proc.stdout.close()
    try:
        code = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("still running 15 s after its output was closed") from None
    return code, proc.stderr.read()


# Undamaged telegrams: the demo's only stderr would be its rejection summaries.
DEMO = [sys.executable, "-m", "agent", "demo"]


@pytest.mark.parametrize("lines", [0, 1, 5])
def test_demo_into_a_closed_pipe_ends_quietly(lines: int) -> None:
    proc = subprocess.Popen(
        [*DEMO, "--telegrams", "500", "--interval", "0.005", "--corrupt", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=REPO_ROOT,
    )
    code, err = _close_after(proc, lines)
    assert (code, err.decode()) == (EX_OUTPUT_CLOSED, "")


def test_monitor_into_a_closed_pipe_ends_quietly(tmp_path: Path, pushing_meter: PtyMeter) -> None:
    """The meter thread does the printing: the closed pipe must still end the process."""
    path = tmp_path / "monitor.ini"
    path.write_text(f"[meter]\nport = {pushing_meter.link}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(path), "monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=REPO_ROOT,
    )
    t0 = time.monotonic()
    code, err = _close_after(proc, 2)  # "monitoring …" and the first telegram's verdict
    text = err.decode()
    assert code == EX_OUTPUT_CLOSED, text
    assert "Traceback" not in text and "Broken pipe" not in text and "BrokenPipe" not in text
    assert "lost" not in text  # not mistaken for a lost port
    # Ended at the next telegram's line (one per second), not at a timeout.
    assert time.monotonic() - t0 < 5
