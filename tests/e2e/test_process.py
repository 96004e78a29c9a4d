"""The agent as a process: exit codes, signals, sd_notify, the demo and the monitor."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.harness.agent import TOPIC_OBIS
from tests.harness.certs import mismatched_key
from tests.harness.paths import REPO_ROOT

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_config_error_exits_78_naming_the_key(agent_config):
    agent_config.tibber["uid"] = "not-hex"
    path = agent_config.write()
    for command in ("run", "check"):
        r = cli("-c", str(path), command)
        assert r.returncode == 78, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "[tibber] uid: must be 32 hex digits" in lines[0], lines


def test_missing_config_exits_78(tmp_path):
    r = cli("-c", str(tmp_path / "nope.ini"), "run")
    assert r.returncode == 78 and "does not exist" in r.stderr


def test_check_accepts_a_good_config(agent_config, pty_meter):
    path = agent_config.write()
    r = cli("-c", str(path), "check")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{path}: ok", lines
    assert lines[-1].startswith("Tibber connected: "), lines  # tests/test_check_online.py


@pytest.mark.parametrize("damage", ["key_mismatch", "key_world_readable", "port_missing"])
def test_check_names_what_is_wrong(agent_config, pty_meter, tmp_path, damage):
    path = agent_config.write()
    key = agent_config.directory / "private.key"
    if damage == "key_mismatch":
        key.write_bytes(mismatched_key(tmp_path).read_bytes())
        want = "[tibber] private_key:"
    elif damage == "key_world_readable":
        key.chmod(0o644)
        want = "[tibber] private_key:"
    else:
        pty_meter.unplug()
        want = "[meter] port:"
    r = cli("-c", str(path), "check")
    assert r.returncode == 78
    assert want in r.stderr, r.stderr
    assert "PRIVATE KEY" not in r.stderr + r.stdout  # key material is never printed


def test_sd_notify_ready_status_watchdog_stopping(
    start_agent, notify_socket, observer, tls_broker, pushing_meter
):
    t0 = time.monotonic()
    agent = start_agent(env=notify_socket.env(watchdog_usec=1_000_000))
    ready = notify_socket.wait_for("READY", "1", timeout=5)
    assert ready.pid == agent.pid  # NotifyAccess=main
    ready_after = ready.t - t0
    assert "STATUS" in ready.fields
    observer.wait_for(TOPIC_OBIS, timeout=10)
    status = notify_socket.wait_for("STATUS", timeout=5)
    assert "meter" in status.fields["STATUS"]
    pings = notify_socket.wait_count(4, "WATCHDOG", "1", timeout=5)
    gaps = [b.t - a.t for a, b in itertools.pairwise(pings)]
    assert all(0.35 < g < 0.65 for g in gaps), gaps  # half of WATCHDOG_USEC
    pushing_meter.unplug()
    lost = notify_socket.wait_for("STATUS", timeout=8)
    deadline = time.monotonic() + 8
    while "port missing" not in lost.fields.get("STATUS", "") and time.monotonic() < deadline:
        time.sleep(0.05)
        lost = [n for n in notify_socket.all() if "STATUS" in n.fields][-1]
    assert "meter port missing" in lost.fields["STATUS"], lost
    agent.signal(signal.SIGTERM)
    assert agent.wait(5) == 0
    assert notify_socket.wait_for("STOPPING", "1", timeout=1)
    tls_broker.wait_for_log(r"Received DISCONNECT from 0a1b2c3d4e5f6")
    assert ready_after < 1.0, ready_after  # the 300 ms budget is measured in tests/perf


# SIGTERM with a publish in flight (broker frozen, PUBACK outstanding): exit 0 within 5 s
# and a clean goodbye is fault 11a, tests/faults/test_link_faults.py.


def test_demo_runs_without_hardware_config_or_network(tmp_path):
    r = cli("demo", "--telegrams", "6", "--interval", "0.02", "--seed", "3", "--corrupt", "0")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("--> $aws/rules/") >= 2
    assert "/TJH01/" in out and "/event" in out.split("obis_stream")[0]  # hello first
    assert "/obis_stream\n/EBZ5DD3BZ06ETA_107\n1-0:0.0.0*255(" in out


def test_demo_ctrl_c_exits_0():
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--corrupt", "0"],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.8)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert b"obis_stream" in out


def monitor_lines(path, count: int) -> tuple[list[str], int]:
    """The first `count` lines `monitor` prints, and its exit status after Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(path), "monitor"],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(count)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=5)
    return lines, proc.returncode


def test_monitor_prints_values_and_verdicts(agent_config, pushing_meter):
    lines, code = monitor_lines(agent_config.write(), 5)
    assert code == 0
    assert lines[0].startswith("monitoring ") and "protocol auto at 9600 baud" in lines[0]
    assert lines[1] == "found OBIS text /EBZ5DD3BZ06ETA_107 (7E1): reading it as protocol ebz\n"
    assert "held" in lines[2] and "1.8.0=005267.0" in lines[2]
    assert "accepted" in lines[3] and "96.8.0=" in lines[3]


def test_monitor_names_an_sml_meter_and_shows_its_values(agent_config, pty_meter):
    """An SML meter: monitor says what it found and shows the decoded values of each frame
    (energy in kWh from the frame's Wh and scaler, power in W)."""
    import random

    from agent.meter.sml.simulate import SimulatedSml

    meter = SimulatedSml(rng=random.Random(9), export_kwh=None)
    pty_meter.start_pushing(meter.next_frame, period=0.5)
    lines, code = monitor_lines(agent_config.write(), 3)
    assert code == 0
    assert lines[1] == "found SML 1.04 (8N1): reading it as protocol sml\n"
    assert "accepted" in lines[2] and "1.8.0=4500.9" in lines[2] and "16.7.0=" in lines[2]
