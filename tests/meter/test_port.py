"""The IR head's port adapter on a real pty: what a read returns and when it wakes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.meter.port import MeterPort
from tests.harness.meter import PtyMeter


@pytest.fixture
def port(pty_meter: PtyMeter, tmp_path: Path):
    p = MeterPort(str(tmp_path / "ttyIR"), 9600)
    yield p
    p.close()


def test_a_read_wakes_once_the_wanted_bytes_are_there(pty_meter: PtyMeter, port: MeterPort):
    pty_meter.write(b"x" * 10, paced=False)
    t0 = time.monotonic()
    assert port.read(20, timeout=0.3) == b"x" * 10  # fewer than wanted: the timeout ends it
    assert time.monotonic() - t0 >= 0.25
    pty_meter.write(b"y" * 20, paced=False)
    t0 = time.monotonic()
    assert port.read(20, timeout=2.0) == b"y" * 20  # as many as wanted: at once
    assert time.monotonic() - t0 < 0.5


def test_what_has_arrived_is_read_whatever_the_read_size_was(pty_meter: PtyMeter, port: MeterPort):
    """After a read sized for 200 bytes (VMIN 200), read_now still takes the 10 there are:
    the port does not reset VMIN for it (one termios call fewer per telegram)."""
    assert port.read(200, timeout=0.05) == b""
    pty_meter.write(b"z" * 10, paced=False)
    time.sleep(0.1)
    assert port.read_now() == b"z" * 10
    assert port.read_now() == b""
