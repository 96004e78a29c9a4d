"""The order of a session's first packets, read from the broker's own log.

The chosen order (firmware-notes/what-the-bridge-sends.md §3.1) is: CONNACK, the hello, then
SUBSCRIBE, then everything else; the agent does not wait for SUBACK. The broker logs every
packet it receives in arrival order, so its log is where the order is true, on every connect.
"""

from __future__ import annotations

import re

from tests.harness.agent import BRIDGE_ID, TOPIC_EVENT, TOPIC_OBIS, UID

RECEIVE = f"tibber-bridge/{UID}/receive"
CONNECTED = re.compile(rf"New client connected from \S+ as {BRIDGE_ID} ")
PACKET = re.compile(
    rf"Received (?P<kind>PUBLISH|SUBSCRIBE) from {BRIDGE_ID}"
    r"(?: \(d\d, q\d, r\d, m\d+, '(?P<topic>[^']*)')?"
)
SUBSCRIBED = re.compile(rf"^\S+ {BRIDGE_ID} 1 (?P<topic>\S+)$")


def sessions(log: str) -> list[list[tuple[str, str]]]:
    """Per connection of the agent: (kind, topic) of each PUBLISH and SUBSCRIBE it sent."""
    out: list[list[tuple[str, str]]] = []
    for line in log.splitlines():
        if CONNECTED.search(line):
            out.append([])
        elif out and (m := PACKET.search(line)):
            out[-1].append((m["kind"], m["topic"] or ""))
        elif out and (m := SUBSCRIBED.search(line)) and out[-1][-1:] == [("SUBSCRIBE", "")]:
            out[-1][-1] = ("SUBSCRIBE", m["topic"])
    return out


def test_hello_then_subscribe_then_readings_on_every_connect(
    agent_config, start_agent, tls_broker, pushing_meter
):
    agent_config.tibber["obis_interval"] = "0"
    mark = tls_broker.log_mark()  # before the agent starts: its first connect comes after
    start_agent()
    for restart in range(3):
        if restart:
            tls_broker.kill()
            # Before start(): the agent may reconnect the moment the broker listens, before
            # start() returns, and a mark taken after that would miss the connect.
            mark = tls_broker.log_mark()
            tls_broker.start()
        connected = tls_broker.wait_for_log(CONNECTED.pattern, timeout=15, since=mark)
        tls_broker.wait_for_log(
            rf"Received PUBLISH from {BRIDGE_ID} .*'{re.escape(TOPIC_OBIS)}'",
            timeout=10,
            since=connected.end(),
        )
    found = sessions(tls_broker.log_text())
    assert len(found) == 3, found
    for packets in found:
        assert packets[:2] == [("PUBLISH", TOPIC_EVENT), ("SUBSCRIBE", RECEIVE)], packets
        assert ("PUBLISH", TOPIC_OBIS) in packets[2:]
