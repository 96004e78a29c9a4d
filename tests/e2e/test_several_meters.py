"""Several meters on one bridge: a USB head (pty, eBZ text) and a network head (TCP, SML)
under one agent, each the node of its own eui, one Tibber connection."""

from __future__ import annotations

import json
import random
import re

from agent.meter.simulator import SimulatedEbz
from agent.meter.sml.simulate import SimulatedSml
from tests.e2e.test_network_head import TcpHead
from tests.harness.agent import BASE, BRIDGE_ID, EUI
from tests.harness.broker import HOST
from tests.harness.meter import encode_7e1

HEAT_EUI = "0a1b2c3d4e5f6072"
HOUSE_OBIS = f"{BASE}/TFD01/{EUI}/obis_stream"
HEAT_SML = f"{BASE}/TFD01/{HEAT_EUI}/sml"
BRIDGE_METRIC = f"{BASE}/TJH01/{BRIDGE_ID}/metric"


def named_meters(agent_config, house_port: str, heat_port: str) -> None:
    """The agent's config with [meter:house] and [meter:heat] in place of [meter]."""
    path = agent_config.write()
    text = path.read_text().replace(f"eui = {EUI}\n", "")
    start = text.index("[meter]")
    end = text.index("[", start + 1)
    meters = (
        f"[meter:house]\nport = {house_port}\neui = {EUI}\nstale_after = 10\n\n"
        f"[meter:heat]\nport = {heat_port}\neui = {HEAT_EUI}\nstale_after = 10\n\n"
    )
    path.write_text(text[:start] + meters + text[end:])
    agent_config.write = lambda: path  # start_agent() would write the single [meter] again


def test_a_pty_meter_and_a_tcp_head_under_one_agent(
    agent_config, start_agent, observer, mirror_observer, plain_broker, tls_broker, pty_meter
):
    """Each meter's readings go to its own node's topic, byte for byte as its pipeline
    accepts them; one CONNECT from the bridge id; the bridge metric lists both nodes; each
    node's metric says its own protocol; the mirror puts each meter's raw frames under its
    name."""
    ebz = SimulatedEbz(rng=random.Random(1))
    sml = SimulatedSml(rng=random.Random(2))
    texts: set[bytes] = set()
    frames: set[bytes] = set()

    def next_text() -> bytes:
        text = ebz.next_telegram()
        texts.add(text.replace(b"\r\n\r\n", b"\r\n", 1))
        return encode_7e1(text)

    def next_frame() -> bytes:
        frame = sml.next_frame()
        frames.add(frame)
        return frame

    with TcpHead(next_frame) as head:
        agent_config.tibber.update(
            obis_interval="0", bridge_metric_interval="3", node_metric_interval="3"
        )
        agent_config.mirror.update(enabled="true", host="127.0.0.1", port=str(plain_broker.port))
        named_meters(agent_config, str(pty_meter.link), f"socket://{HOST}:{head.port}")
        agent = start_agent()
        pty_meter.start_pushing(next_text, period=1.0)
        house = observer.wait_count(3, HOUSE_OBIS, timeout=15)
        heat = observer.wait_count(3, HEAT_SML, timeout=15)
        assert all(m.payload in texts for m in house)
        assert all(m.payload in frames for m in heat)
        metric = observer.wait_for(
            lambda m: m.topic == BRIDGE_METRIC and m.t > max(house[0].t, heat[0].t), timeout=8
        )
        nodes = json.loads(metric.payload)["status"]["nodes"]
        assert [(n["id"], n["eui"]) for n in nodes] == [(1, EUI), (2, HEAT_EUI)]
        assert all(n["available"] and n["pubcnt"] > 0 for n in nodes), nodes
        modes = {}
        for eui in (EUI, HEAT_EUI):
            doc = observer.wait_for(f"{BASE}/TFD01/{eui}/metric", timeout=8)
            modes[eui] = json.loads(doc.payload)["node_status"]["meter_mode"]
        assert modes == {EUI: 4, HEAT_EUI: 3}
        raw_house = mirror_observer.wait_for("/ebz/raw/house", timeout=5)
        raw_heat = mirror_observer.wait_for("/ebz/raw/heat", timeout=5)
        assert raw_heat.payload in frames and raw_house.payload.startswith(b"/EBZ5DD3")
        log = agent.log_text()
        assert "meter:house: found OBIS text /EBZ5DD3BZ06ETA_107 (7E1)" in log
        assert "meter:heat: found SML 1.04 (8N1)" in log
    connects = re.findall(rf"New client connected from \S+ as {BRIDGE_ID} ", tls_broker.log_text())
    assert len(connects) == 1, connects
