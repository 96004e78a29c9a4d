"""An SML meter end to end: real captures and simulated frames through a pty into the agent,
out to the TLS broker on TFD01/<eui>/sml, byte for byte."""

from __future__ import annotations

import json
import time

from tests.harness.agent import BASE, BRIDGE_ID, EUI, TOPIC_EVENT

TOPIC_SML = f"{BASE}/TFD01/{EUI}/sml"
ESC = b"\x1b\x1b\x1b\x1b"
START = ESC + b"\x01\x01\x01\x01"

# ../shared/telegrams/README.md: the frames each dump holds whose CRC verifies (lengths).
CAPTURES = {
    "ebz_dd3_2r06_sml_full-resolution_libsml-testing.hex": [352],
    "ebz_dd3_2r06dta-smz1_sml_reduced_4frames_libsml-testing.hex": [256] * 4,
    "ebz_dd3_bz06dta-smz1_sml_without-pin_2frames_libsml-testing.hex": [232] * 2,
    "dzg_dvs-7420_sml_negative-power_libsml-testing.hex": [252] * 3,
    "easymeter_q3a_sml_with-byte-loss-crc-errors_libsml-testing.hex": [504] * 4,
}


def crc_x25(data: bytes) -> int:
    """CRC-16/X-25 bit by bit, as meters.md §8.4 defines it: the test's own oracle."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def good_frames(stream: bytes) -> list[bytes]:
    """Every transport frame in `stream` whose end escape sits on the 4-byte grid from its
    start and whose X-25 (low byte first) verifies: what the agent may publish."""
    out = []
    start = stream.find(START)
    while start >= 0:
        at, end = start + 8, None
        while at + 8 <= len(stream):
            if stream[at : at + 4] != ESC:
                at += 4
            elif stream[at + 4 : at + 8] == ESC:
                at += 8  # escaped data
            elif stream[at + 4] == 0x1A:
                end = at + 8
                break
            else:
                break  # a new start or an unknown escape: this frame is cut short
        if end is not None:
            frame = stream[start:end]
            if crc_x25(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
                out.append(frame)
        start = stream.find(START, start + 1)
    return out


def test_damaged_sml_frames_never_reach_tibber(
    agent_config, start_agent, observer, tls_broker, pty_meter
):
    """The project's own SML meter (no ../shared needed): 300 frames, a quarter damaged in
    every way the simulator knows (bit flips, bursts, lost and inserted bytes, truncation, a
    damaged escape) with noise between frames: Tibber gets exactly the frames that reached
    the wire intact, in order, byte for byte, and the node metric says meter_mode 3 (SML)."""
    import random

    from agent.meter.sml.simulate import SimulatedSml, damaged_stream

    rng = random.Random(8)
    stream = damaged_stream(SimulatedSml(rng=rng, escape_value=True), rng, 300, rate=0.25)
    assert stream.damaged >= 50 and len(stream.intact) >= 200
    agent_config.meter["protocol"] = "sml"
    agent_config.tibber.update(obis_interval="0", node_metric_interval="1")
    start_agent()
    observer.wait_for(TOPIC_EVENT, timeout=10)
    assert pty_meter.wait_opened(10)
    # Faster than any meter (a frame every ~5 ms; the checks run on the meter's seconds),
    # slow enough that the uplink's in-flight window is not what is measured: 64 readings
    # unacknowledged count as a stalled link (agent/mqtt.py MAX_PENDING), and what comes
    # then is dropped by design (a reading is sent fresh or not at all).
    for at in range(0, len(stream.wire), 352):
        pty_meter.write_all(stream.wire[at : at + 352])
        time.sleep(0.005)
    observer.wait_count(len(stream.intact), TOPIC_SML, timeout=10)
    time.sleep(0.5)
    got = [m.payload for m in observer.messages if m.topic == TOPIC_SML]
    assert got == list(stream.intact)
    node = observer.wait_for(f"{BASE}/TFD01/{EUI}/metric", timeout=5)
    assert json.loads(node.payload)["node_status"]["meter_mode"] == 3


def test_home_assistant_gets_the_sml_frames_values(
    agent_config, start_agent, observer, mirror_observer, plain_broker, pty_meter
):
    """With Home Assistant on the mirror, an SML meter's energy comes out in kWh (the frame
    carries Wh with a scaler) and its power in W, the very values of the frame Tibber got;
    the device is named after the maker in the server id."""
    import random
    from decimal import Decimal

    from agent.meter.sml.simulate import SimulatedSml

    meter = SimulatedSml(rng=random.Random(2), export_kwh=None)
    agent_config.meter["protocol"] = "sml"
    agent_config.mirror.update(
        enabled="true", host="127.0.0.1", port=str(plain_broker.port), home_assistant="true"
    )
    agent_config.tibber["obis_interval"] = "0"
    agent = start_agent()
    observer.wait_for(TOPIC_EVENT, timeout=10)
    assert pty_meter.wait_opened(10)
    frames = {}
    for _ in range(3):
        frame = meter.next_frame()
        frames[frame] = (meter.import_digits, meter.power_cw)
        pty_meter.write(frame, paced=True)
        time.sleep(0.3)
    state_topic = f"tibber-agent/{BRIDGE_ID}/state"
    try:
        states = mirror_observer.wait_count(3, state_topic, timeout=5)
    except TimeoutError:
        raise AssertionError(agent.log_text()[-3000:]) from None
    sent = [m.payload for m in observer.wait_count(3, TOPIC_SML, timeout=5)]
    assert sent == list(frames)
    for state, frame in zip(states, sent, strict=True):
        digits, power_cw = frames[frame]
        values = json.loads(state.payload, parse_float=Decimal, parse_int=Decimal)
        assert values["energy_import"] == Decimal(digits) / 10**8  # 10 uWh digits in kWh
        assert values["power"] == Decimal(power_cw) / 100
    configs = [m for m in mirror_observer.messages if m.topic.endswith("/config")]
    device = json.loads(configs[0].payload)["device"]
    assert device["manufacturer"] == "eBZ" and device["serial_number"] == "090145425a0100000001"
