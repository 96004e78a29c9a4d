"""The Tibber link end to end: the agent process, a client-certificate TLS broker, a pty meter."""

from __future__ import annotations

import itertools
import json
import re
import time

from tests.harness.agent import (
    BASE,
    BRIDGE_ID,
    EUI,
    TOPIC_BRIDGE_METRIC,
    TOPIC_EVENT,
    TOPIC_NODE_METRIC,
    TOPIC_OBIS,
    UID,
)
from tests.harness.broker import ReceivedPublish, TlsBroker
from tests.harness.observer import Observer
from tests.harness.paths import read_capture, split_telegrams

AHPOHL = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"


def from_agent(m) -> bool:
    return m.topic.startswith("$aws/rules/")


def assert_sent_as_the_bridge(
    broker: TlsBroker, observer: Observer, *, since: int = 0
) -> list[ReceivedPublish]:
    """Every message the agent sent (from log offset `since`), as the broker received it:
    from the bridge id, QoS 1, not retained, not a duplicate, and each one delivered to the
    observer with the same topic and payload size, in order.

    The flags come from the broker's log: a subscriber cannot see them (its QoS is capped
    by its own subscription, and MQTT 3.1.1 clears retain on live delivery)."""
    sent = [p for p in broker.received_publishes(since=since) if p.topic.startswith(BASE)]
    assert sent, "the broker received nothing from the agent"
    # The agent may have sent more since the log was read: compare what both have.
    seen = observer.wait_count(len(sent), from_agent, timeout=5)[: len(sent)]
    assert [(p.topic, p.size) for p in sent] == [(m.topic, len(m.payload)) for m in seen]
    wrong = [
        p for p in sent if (p.client_id, p.qos, p.retain, p.dup) != (BRIDGE_ID, 1, False, False)
    ]
    assert wrong == [], (
        f"{len(wrong)} of {len(sent)} not sent as the bridge sends them: {wrong[:3]}"
    )
    return sent


def test_obis_stream_is_byte_exact_from_real_telegrams(
    agent_config, start_agent, tls_broker, observer, pty_meter
):
    """The 7 consecutive captured telegrams, sent at 9600 baud with parity: every one reaches
    the broker as the bridge sends it (blank line after the ident removed), QoS 1, not
    retained. The first waits for the second's confirmation, then both go out in order."""
    telegrams = split_telegrams(read_capture(AHPOHL))
    agent_config.tibber["obis_interval"] = "0"
    start_agent()
    observer.wait_for(TOPIC_EVENT, timeout=10)
    assert pty_meter.wait_opened(10)
    for t in telegrams:
        pty_meter.send_telegram(t)
        time.sleep(0.2)
    got = observer.wait_count(7, TOPIC_OBIS, timeout=10)
    want = [t.replace(b"\r\n\r\n", b"\r\n", 1) for t in telegrams]
    assert [m.payload for m in got] == want
    assert len(want[0]) == 366 and want[0].endswith(b"\r\n!\r\n")
    sent = assert_sent_as_the_bridge(tls_broker, observer)
    assert [p.topic for p in sent] == [TOPIC_EVENT] + [TOPIC_OBIS] * 7


def test_session_as_the_bridge_opens_it(start_agent, tls_broker, observer, pushing_meter):
    """Client id = bridge id, MQTT 3.1.1, clean session, keepalive 60, the client cert's
    identity; the hello comes first; it subscribes to its receive topic."""
    start_agent()
    hello = observer.wait_for(from_agent, timeout=10)
    assert hello.topic == TOPIC_EVENT
    doc = json.loads(hello.payload)
    assert doc["id"] == 2000 and doc["name"] == "HUB_EVENT_MQTT_SUBSCRIBE_EVENT"
    assert doc["metrics"]["id"] == BRIDGE_ID and doc["metrics"]["nodes"][0]["eui"] == EUI
    m = tls_broker.wait_for_log(
        rf"New client connected from 127\.0\.0\.1:\d+ as {BRIDGE_ID} "
        r"\(p2, c1, k60, u'tibber-bridge-test'\)"
    )
    assert m
    tls_broker.wait_for_log(rf"{BRIDGE_ID} 1 tibber-bridge/{UID}/receive")
    observer.wait_for(TOPIC_OBIS, timeout=10)
    assert assert_sent_as_the_bridge(tls_broker, observer)[0].topic == TOPIC_EVENT


def test_hello_first_on_every_connect_and_only_fresh_data_after(
    agent_config, start_agent, tls_broker, observer, pushing_meter
):
    agent_config.tibber["obis_interval"] = "0"
    agent = start_agent()
    observer.wait_for(TOPIC_OBIS, timeout=10)
    for _ in range(3):
        tls_broker.kill()
        time.sleep(1.5)  # a real outage; readings keep coming from the meter meanwhile
        mark = tls_broker.log_mark()
        tls_broker.start()
        observer.reconnect(clear=True)
        first = observer.wait_for(from_agent, timeout=10)
        assert first.topic == TOPIC_EVENT, first.topic
        fresh = observer.wait_for(TOPIC_OBIS, timeout=6)
        # Nothing that waited through the outage: the first reading after the reconnect is
        # from a meter second after the broker came back (the meter pushes one per second).
        assert fresh.t - first.t < 2.6
        # Not replayed from the last session either: the first PUBLISH on it is the hello,
        # and nothing is a resend (dup 0).
        assert assert_sent_as_the_bridge(tls_broker, observer, since=mark)[0].topic == (TOPIC_EVENT)
    assert "tibber: connection lost" in agent.log_text()


def test_bridge_and_node_metrics_on_their_cadence(
    agent_config, start_agent, tls_broker, observer, pushing_meter
):
    agent_config.tibber.update(
        bridge_metric_interval="2", node_metric_interval="3", obis_interval="0"
    )
    start_agent()
    bridge = observer.wait_count(3, TOPIC_BRIDGE_METRIC, timeout=12)
    node = observer.wait_count(2, TOPIC_NODE_METRIC, timeout=12)
    gaps = [b.t - a.t for a, b in itertools.pairwise(bridge)]
    assert all(1.7 < g < 2.4 for g in gaps), gaps
    for m in bridge:
        doc = json.loads(m.payload)
        assert doc["$type"] == "status" and doc["device_id"] == BRIDGE_ID
        assert isinstance(doc["ts"], int) and abs(doc["ts"] - time.time()) < 30
        status = doc["status"]
        assert status["model"] == "TJH01" and status["id"] == BRIDGE_ID
        assert 225 <= status["vacrms"] <= 240  # the simulated meter's 32.7.0
    # pubcnt counts the readings sent within each interval: two per 2 s at a 1 s meter.
    counts = [json.loads(m.payload)["status"]["nodes"][0]["pubcnt"] for m in bridge]
    assert counts[-1] in (1, 2, 3), counts
    for m in node:
        doc = json.loads(m.payload)
        ns = doc["node_status"]
        em = ns["time_in_em0_ms"] + ns["time_in_em1_ms"] + ns["time_in_em2_ms"]
        assert 2700 <= em <= 3300, em
        assert ns["meter_msg_count_sent"] == doc["hub_attachments"]["meter_reading_count_recv"]
        assert 2 <= ns["meter_msg_count_sent"] <= 4
    topics = {p.topic for p in assert_sent_as_the_bridge(tls_broker, observer)}
    assert topics == {TOPIC_EVENT, TOPIC_BRIDGE_METRIC, TOPIC_NODE_METRIC, TOPIC_OBIS}


def test_downlink_is_logged_never_answered(
    start_agent, tls_broker, observer, observer_factory, pushing_meter
):
    agent = start_agent()
    observer.wait_for(TOPIC_EVENT, timeout=10)
    tls_broker.wait_for_log(rf"{BRIDGE_ID} 1 tibber-bridge/{UID}/receive")
    sender = observer_factory(tls_broker, ("unused/#",))
    sender._client.publish(f"tibber-bridge/{UID}/receive", b'{"cmd":"version"}', qos=1)
    agent.wait_for_log("downlink message on tibber-bridge/", timeout=5)
    time.sleep(0.5)
    replies = [
        m
        for m in observer.messages
        if m.topic.startswith("tibber-bridge/") and m.payload != b'{"cmd":"version"}'
    ]
    assert replies == []
    assert_sent_as_the_bridge(tls_broker, observer)


def test_rate_limit_every_second_telegram_at_1s(
    agent_config, start_agent, tls_broker, observer, pushing_meter
):
    """obis_interval 2 with a meter pushing every second: every second telegram, never
    every third (the Pulse sends about every 2 s)."""
    start_agent()
    first = observer.wait_for(TOPIC_OBIS, timeout=10)
    got = observer.wait_count(5, TOPIC_OBIS, timeout=15, after=first.t - 0.01)
    seconds = [int(re.search(rb"96\.8\.0\*255\(([0-9A-F]{8})\)", m.payload)[1], 16) for m in got]
    assert [b - a for a, b in itertools.pairwise(seconds)] == [2, 2, 2, 2]
    assert_sent_as_the_bridge(tls_broker, observer)
