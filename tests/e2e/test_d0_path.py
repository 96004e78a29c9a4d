"""Other makers' OBIS text end to end (protocol auto, the default): an EasyMeter-like push
meter on obis_stream, a ZPA-like meter with STX/ETX and a block check on iec."""

from __future__ import annotations

import json
import random
import time

from agent.meter.d0.simulate import Sent, SimulatedEasyMeter, SimulatedZpa, damaged_stream
from tests.harness.agent import BASE, BRIDGE_ID, EUI, TOPIC_OBIS

TOPIC_IEC = f"{BASE}/TFD01/{EUI}/iec"
TOPIC_NODE = f"{BASE}/TFD01/{EUI}/metric"


def test_an_easymeter_push_meter_reaches_obis_stream(
    agent_config, start_agent, observer, pty_meter
):
    """Found as another maker's text and read by the D0 pipeline; each telegram goes out as
    the meter sent it (blank line after the ident removed, as for the eBZ), the node metric
    says meter_mode 1 (IEC 62056-21)."""
    meter = SimulatedEasyMeter(rng=random.Random(1))
    sent: set[bytes] = set()

    def next_wire() -> bytes:
        text = meter.next_telegram()
        sent.add(text.replace(b"\r\n\r\n", b"\r\n", 1))
        return meter.wire(text)

    agent_config.tibber.update(obis_interval="0", node_metric_interval="1")
    agent = start_agent()
    pty_meter.start_pushing(next_wire, period=1.0)
    got = observer.wait_count(3, TOPIC_OBIS, timeout=15)
    agent.wait_for_log(
        "meter: found OBIS text /ESY5Q3DA1004 V3.04 (7E1); reading it as protocol d0"
    )
    assert all(m.payload in sent for m in got), got[0].payload
    node = observer.wait_for(lambda m: m.topic == TOPIC_NODE and m.t > got[0].t, timeout=5)
    assert json.loads(node.payload)["node_status"]["meter_mode"] == 1


def test_block_checked_frames_go_to_iec_at_once_and_damage_never(
    agent_config, start_agent, observer, tls_broker, pty_meter
):
    """150 frames of a ZPA-like meter (STX/ETX, BCC), 30 % damaged (bit flips, changed
    digits and characters with the BCC left stale, lost bytes, truncation, a repeated
    line), about 5 ms apart: Tibber gets on iec exactly the frames that arrived intact,
    whole (STX, ETX and BCC included), in order, QoS 1. Only the very first waits for a
    second (its ident line, before STX, has no BCC: agent/meter/d0/check.py); every later
    verified frame goes out without waiting for its successor."""
    rng = random.Random(6)
    meter = SimulatedZpa(rng=rng)
    clean = [meter.next_telegram() for _ in range(3)]
    stream = [Sent(c, meter.wire(c), "") for c in clean]
    stream += damaged_stream(meter, rng, 147, rate=0.3)
    intact = [s.clean for s in stream if not s.damage]
    assert len(intact) >= 90 and len(stream) - len(intact) >= 30
    agent_config.tibber["obis_interval"] = "0"
    start_agent()
    assert pty_meter.wait_opened(10)
    observer.wait_for(f"{BASE}/TJH01/{BRIDGE_ID}/event", timeout=10)
    pty_meter.write_all(stream[0].wire + stream[1].wire)
    assert [m.payload for m in observer.wait_count(2, TOPIC_IEC, timeout=5)] == clean[:2]
    t0 = time.monotonic()
    pty_meter.write_all(stream[2].wire)
    third = observer.wait_count(3, TOPIC_IEC, timeout=5)[2]
    assert third.payload == clean[2] and third.t - t0 < 1.0  # not held for a successor
    for s in stream[3:]:
        pty_meter.write_all(s.wire)
        time.sleep(0.005)
    observer.wait_count(len(intact), TOPIC_IEC, timeout=10)
    time.sleep(0.5)
    got = [m.payload for m in observer.messages if m.topic == TOPIC_IEC]
    assert got == intact
    assert got[0].startswith(b"/ZPA5SIM305.v100\r\n\r\n\x02") and got[0][-2] == 0x03  # §4.2
    sent = [p for p in tls_broker.received_publishes(BRIDGE_ID) if p.topic == TOPIC_IEC]
    assert {(p.qos, p.retain) for p in sent} == {(1, False)}
