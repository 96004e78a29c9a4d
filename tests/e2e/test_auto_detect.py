"""protocol = auto (the default) end to end: the agent finds what the head delivers, says
so in its log, and finds anew when the head is moved to a meter of another kind."""

from __future__ import annotations

import json
import random

from agent.meter.simulator import SimulatedEbz
from agent.meter.sml.simulate import SimulatedSml
from tests.harness.agent import BASE, EUI, TOPIC_OBIS
from tests.harness.meter import encode_7e1

TOPIC_SML = f"{BASE}/TFD01/{EUI}/sml"
TOPIC_NODE = f"{BASE}/TFD01/{EUI}/metric"


def test_a_head_moved_from_an_ebz_to_an_sml_meter(agent_config, start_agent, observer, pty_meter):
    """An eBZ text meter first: found as 7E1 text, published on obis_stream. The head is
    moved to an SML meter: nothing valid for stale_after (2 s), the port is reopened, the
    stream is looked at anew, and the SML frames go out on sml, with meter_mode 3 in the
    node metric from then on."""
    assert "protocol" not in agent_config.meter  # the default
    agent_config.meter["stale_after"] = "2"
    agent_config.tibber.update(obis_interval="0", node_metric_interval="1")
    ebz = SimulatedEbz(rng=random.Random(1))
    sml = SimulatedSml(rng=random.Random(2))
    meter = {"now": "ebz"}

    def next_wire() -> bytes:
        return encode_7e1(ebz.next_telegram()) if meter["now"] == "ebz" else sml.next_frame()

    agent = start_agent()
    pty_meter.start_pushing(next_wire, period=1.0)
    observer.wait_count(2, TOPIC_OBIS, timeout=10)
    agent.wait_for_log(
        "meter: found OBIS text /EBZ5DD3BZ06ETA_107 (7E1); reading it as protocol ebz"
    )
    before = json.loads(observer.wait_for(TOPIC_NODE, timeout=5).payload)
    assert before["node_status"]["meter_mode"] == 4
    meter["now"] = "sml"
    first = observer.wait_for(TOPIC_SML, timeout=15)
    agent.wait_for_log("meter: found SML 1.04 (8N1); reading it as protocol sml")
    assert first.payload.startswith(b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01")
    after = observer.wait_for(lambda m: m.topic == TOPIC_NODE and m.t > first.t, timeout=5)
    assert json.loads(after.payload)["node_status"]["meter_mode"] == 3
    # Nothing of the SML meter ever went out as text, nor text as SML.
    assert all(m.payload.startswith(b"/EBZ") for m in observer.messages if m.topic == TOPIC_OBIS)


def test_a_300_baud_meter_is_found_when_no_rate_is_given(
    agent_config, start_agent, observer, pty_meter
):
    """No baudrate in the config: at 9600 the meter's bytes are noise (the pty meter reads
    the agent's port speed and sends sense only at 300 Bd, as a real line would); after a
    stale reopen the agent tries 300, finds the eBZ text and publishes it."""
    import os
    import termios

    from tests.harness.modec_meter import _SPEEDS

    def agent_speed() -> int | None:
        name = pty_meter.slave_name
        if name is None:
            return None
        fd = os.open(name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            return _SPEEDS.get(termios.tcgetattr(fd)[5])
        finally:
            os.close(fd)

    ebz = SimulatedEbz(rng=random.Random(5))
    noise = random.Random(6)

    def next_wire() -> bytes:
        text = encode_7e1(ebz.next_telegram())
        return text if agent_speed() == 300 else noise.randbytes(len(text) // 32)

    agent_config.meter["stale_after"] = "2"
    agent_config.tibber["obis_interval"] = "0"
    agent = start_agent()
    pty_meter.start_pushing(next_wire, period=1.0)
    got = observer.wait_count(2, TOPIC_OBIS, timeout=20)
    assert all(m.payload.startswith(b"/EBZ5DD3BZ06ETA_107\r\n") for m in got)
    log = agent.log_text()
    assert "meter: nothing found so far; trying 300 baud" in log, log[-2000:]
    assert "meter: found OBIS text /EBZ5DD3BZ06ETA_107 (7E1)" in log
