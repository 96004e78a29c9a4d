"""A pull meter end to end (protocol = iec: IEC 62056-21 mode C): the agent asks at 300 Bd,
acknowledges the meter's offered rate, switches its port, frames the readout, and Tibber gets
each verified readout whole on iec. The meter on the pty checks the port's rate itself."""

from __future__ import annotations

import json
import re
import time

from tests.harness.agent import BASE, EUI, TOPIC_EVENT
from tests.harness.modec_meter import ModeCMeter, bcc

TOPIC_IEC = f"{BASE}/TFD01/{EUI}/iec"
TOPIC_NODE = f"{BASE}/TFD01/{EUI}/metric"


def test_readouts_are_asked_for_and_reach_tibber(agent_config, start_agent, observer, pty_meter):
    """Every 2 s a request at 300 Bd, the acknowledgement of '5' (9600 Bd), the readout at
    9600 Bd; each readout is published whole (ident line, STX, data, ETX, BCC; the first
    once the second vouches for its ident line), its import register rising; the node
    metric says meter_mode 1."""
    agent_config.meter.update(protocol="iec", interval="2")
    agent_config.tibber.update(obis_interval="0", node_metric_interval="1")
    with ModeCMeter(pty_meter) as meter:
        start_agent()
        observer.wait_for(TOPIC_EVENT, timeout=10)
        got = observer.wait_count(3, TOPIC_IEC, timeout=15)
        assert meter.wrong_baud == 0 and meter.bad_acks == 0, vars(meter)
        assert meter.requests >= 3 and meter.readouts >= 3
    registers = []
    for m in got:
        ident, _, rest = m.payload.partition(b"\r\n\x02")
        assert ident == b"/ISk5MT174-0001" and rest[-2] == 0x03
        assert bcc(rest[:-1]) == rest[-1]  # the BCC as the meter sent it
        registers.append(re.search(rb"1\.8\.0\*255\((\d+\.\d+)\*kWh\)", rest)[1])
    assert registers == sorted(registers) and len(set(registers)) == len(registers)
    node = observer.wait_for(TOPIC_NODE, timeout=5)
    assert json.loads(node.payload)["node_status"]["meter_mode"] == 1


def test_a_readout_with_a_stale_block_check_never_reaches_tibber(
    agent_config, start_agent, observer, pty_meter
):
    """The meter's readouts carry a changed digit and the old BCC: none is published, the
    log names the BCC, and the agent keeps asking (never stuck)."""
    agent_config.meter.update(protocol="iec", interval="2")
    agent_config.tibber["obis_interval"] = "0"
    with ModeCMeter(pty_meter, stale_bcc=True) as meter:
        agent = start_agent()
        observer.wait_for(TOPIC_EVENT, timeout=10)
        deadline = time.monotonic() + 20
        while meter.readouts < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert meter.readouts >= 3 and meter.wrong_baud == 0, vars(meter)
    assert [m for m in observer.messages if m.topic == TOPIC_IEC] == []
    agent.stop()
    assert re.search(r"rejected \d+ telegrams?: .*BCC mismatch", agent.log_text())
