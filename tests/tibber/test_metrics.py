"""The metric schedule with made-up times: cadences, per-interval counts, the hello's counts.

MetricSchedule is pure (times, counters and the meter state come in), so every test drives it
the way the uplink does: wake at `next_due`, ask what is due, publish it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import TibberSettings
from agent.state import MeterState
from agent.tibber.metrics import Counters, MetricSchedule
from agent.tibber.payloads import PayloadBuilder, Topics

START = 1000.0  # the monotonic clock when the link was created
WALL = 1_700_000_000.0  # the wall clock at START


def settings(**overrides: Any) -> TibberSettings:
    values: dict[str, Any] = {
        "mqtt_url": "broker.example",
        "uid": "0123456789abcdef0123456789abcdef",
        "bridge_id": "a0b1c2d305000",
        "eui": "fedcba9876543210",
        "ca_cert": Path("ca.pem"),
        "certificate": Path("certificate.pem"),
        "private_key": Path("private.key"),
    }
    return TibberSettings(**{**values, **overrides})


S = settings()
TOPICS = Topics.of(S)


def schedule(**overrides: Any) -> MetricSchedule:
    s = settings(**overrides)
    return MetricSchedule(s, Topics.of(s), PayloadBuilder(s), START)


def one_every_2s(now: float) -> Counters:
    """The agent's counters at `now`: a reading published every 2 s since START."""
    return Counters(published=int((now - START) // 2))


Sent = tuple[float, str, dict[str, Any]]  # seconds since START, topic, payload


def run(
    sched: MetricSchedule,
    until: float,
    counters: Callable[[float], Counters] = one_every_2s,
    meter: MeterState | None = None,
    late: float = 0.0,
) -> list[Sent]:
    """Wake at each `next_due` (plus `late`), publish what is due, until START + `until`."""
    meter = meter or MeterState()
    sent: list[Sent] = []
    now = sched.next_due + late
    while now <= START + until:
        for topic, payload in sched.due(now, WALL + now - START, meter, counters(now)):
            sent.append((now - START, topic, json.loads(payload)))
        now = sched.next_due + late
    return sent


def times(sent: list[Sent], topic: str) -> list[float]:
    return [round(t, 3) for t, top, _ in sent if top == topic]


def pubcnt(doc: dict[str, Any]) -> int:
    return doc["status"]["nodes"][0]["pubcnt"]


def em_sum(doc: dict[str, Any]) -> int:
    return sum(doc["node_status"][f"time_in_em{i}_ms"] for i in range(3))


# --- cadence ----------------------------------------------------------------------------------


def test_bridge_every_120_s_and_node_every_300_s() -> None:
    sent = run(schedule(), until=1200)
    assert times(sent, TOPICS.bridge_metric) == [120.0 * k for k in range(1, 11)]
    assert times(sent, TOPICS.node_metric) == [300.0, 600.0, 900.0, 1200.0]
    # When both fall due together, both go out at that wake-up, the bridge metric first.
    at_600 = [top for t, top, _ in sent if t == 600.0]
    assert at_600 == [TOPICS.bridge_metric, TOPICS.node_metric]


def test_configured_intervals_are_used() -> None:
    sent = run(schedule(bridge_metric_interval=2.0, node_metric_interval=3.0), until=12)
    assert times(sent, TOPICS.bridge_metric) == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert times(sent, TOPICS.node_metric) == [3.0, 6.0, 9.0, 12.0]


def test_nothing_is_due_before_its_time() -> None:
    sched = schedule()
    assert sched.due(START + 119.999, WALL, MeterState(), one_every_2s(START + 119.999)) == []
    assert [t for t, _ in sched.due(START + 120, WALL, MeterState(), Counters(0))] == [
        TOPICS.bridge_metric
    ]


def test_late_wake_ups_do_not_drift() -> None:
    """An owner that always wakes 0.7 s late still sends on the 120 s grid (plus 0.7 s),
    not 120.7, 241.4, 362.1 ... ."""
    sent = run(schedule(), until=1300, late=0.7)
    assert times(sent, TOPICS.bridge_metric) == [120.0 * k + 0.7 for k in range(1, 11)]
    assert times(sent, TOPICS.node_metric) == [300.7, 600.7, 900.7, 1200.7]


def test_no_burst_after_a_long_stall() -> None:
    """After 1000 s without a wake-up (offline: the uplink does not tick), one metric of each
    kind goes out, and the next ones are a full interval later, not the missed ones."""
    sched = schedule()
    now = START + 1000
    first = sched.due(now, WALL + 1000, MeterState(), one_every_2s(now))
    assert [t for t, _ in first] == [TOPICS.bridge_metric, TOPICS.node_metric]
    assert sched.due(now + 0.001, WALL, MeterState(), one_every_2s(now)) == []
    assert sched.next_due == pytest.approx(now + 120)
    later = run(sched, until=1400)
    assert times(later, TOPICS.bridge_metric) == [1120.0, 1240.0, 1360.0]
    assert times(later, TOPICS.node_metric) == [1300.0]


# --- per-interval counts ----------------------------------------------------------------------


def test_each_metric_counts_since_the_previous_metric_of_its_kind() -> None:
    sent = run(schedule(), until=600)
    bridge = [d for _, top, d in sent if top == TOPICS.bridge_metric]
    node = [d for _, top, d in sent if top == TOPICS.node_metric]
    # One reading per 2 s: 60 per 120 s bridge interval, 150 per 300 s node interval; the
    # node metric at 300 s does not reset the bridge metric's count, nor the other way round.
    assert [pubcnt(d) for d in bridge] == [60, 60, 60, 60, 60]
    assert [d["node_status"]["meter_msg_count_sent"] for d in node] == [150, 150]
    assert [d["hub_attachments"]["meter_reading_count_recv"] for d in node] == [150, 150]
    assert [em_sum(d) for d in node] == [300_000, 300_000]


def test_uneven_traffic_is_counted_where_it_happened() -> None:
    """Readings only between 130 s and 170 s: the bridge metric at 240 s has them, those at
    120 s and 360 s have none; the node metric at 300 s has them, the one at 600 s none."""

    def burst(now: float) -> Counters:
        t = now - START
        return Counters(0 if t < 130 else min(20, int((t - 130) // 2)))

    sent = run(schedule(), until=600, counters=burst)
    assert [pubcnt(d) for _, top, d in sent if top == TOPICS.bridge_metric] == [0, 20, 0, 0, 0]
    node = [d for _, top, d in sent if top == TOPICS.node_metric]
    assert [d["node_status"]["meter_msg_count_sent"] for d in node] == [20, 0]


def test_after_a_stall_a_metric_covers_the_whole_time_since_its_previous_one() -> None:
    sched = schedule()
    run(sched, until=300)  # bridge at 120, 240; node at 300
    now = START + 1000  # offline from 300 s to 1000 s
    sent = dict(sched.due(now, WALL + 1000, MeterState(), one_every_2s(now)))
    bridge = json.loads(sent[TOPICS.bridge_metric])
    node = json.loads(sent[TOPICS.node_metric])
    assert pubcnt(bridge) == 500 - 120  # readings since the bridge metric at 240 s
    assert node["node_status"]["meter_msg_count_sent"] == 500 - 150  # since 300 s
    assert em_sum(node) == 700_000


# --- the hello --------------------------------------------------------------------------------


def test_hello_counts_since_the_last_bridge_metric_and_resets_nothing() -> None:
    sched = schedule()
    run(sched, until=120)  # bridge metric at 120 s: 60 readings
    now = START + 150  # a reconnect 30 s later: 15 more readings
    hello = json.loads(sched.hello(now, WALL + 150, MeterState(), one_every_2s(now)))
    assert hello["id"] == 2000
    assert pubcnt({"status": hello["metrics"]}) == 15
    assert hello["metrics"]["uptime"] == 150
    # The next bridge metric still counts from 120 s, hello or not.
    later = run(sched, until=240)
    assert [pubcnt(d) for _, top, d in later if top == TOPICS.bridge_metric] == [60]


def test_hello_before_the_first_metric_counts_since_start() -> None:
    sched = schedule()
    now = START + 7
    hello = json.loads(sched.hello(now, WALL + 7, MeterState(), one_every_2s(now)))
    assert pubcnt({"status": hello["metrics"]}) == 3
    assert sched.next_due == START + 120  # the hello does not move the cadence


# --- next_due ---------------------------------------------------------------------------------


def test_next_due_is_the_earlier_of_the_two() -> None:
    sched = schedule()
    assert sched.next_due == START + 120
    dues = []
    for _ in range(6):
        now = sched.next_due
        sched.due(now, WALL, MeterState(), one_every_2s(now))
        dues.append(sched.next_due - START)
    assert dues == [240.0, 300.0, 360.0, 480.0, 600.0, 720.0]


# --- the meter's last telegram ----------------------------------------------------------------


def test_no_telegram_yet_means_not_available_and_seen_since_start() -> None:
    # 30 s after start: well within the 60 s in which a heard node counts as available.
    sent = run(schedule(bridge_metric_interval=30.0), until=30, meter=MeterState())
    node = sent[0][2]["status"]["nodes"][0]
    assert node["available"] is False and node["seen"] == 30


def test_last_telegram_gives_seen_and_available() -> None:
    meter = MeterState(last_accepted=START + 116.8, voltage=231.44)
    sent = run(schedule(), until=120, meter=meter)
    status = sent[0][2]["status"]
    assert status["nodes"][0]["seen"] == 4  # 3.2 s ago, rounded up
    assert status["nodes"][0]["available"] is True
    assert status["vacrms"] == 231.44
    assert status["uptime"] == 120
    assert sent[0][2]["ts"] == int(WALL + 120)


@pytest.mark.parametrize(("protocol", "mode"), [("ebz", 4), ("sml", 3), ("", 7)])
def test_the_node_metric_says_which_protocol_the_meter_speaks(protocol: str, mode: int) -> None:
    """meter_mode follows what the reader reads (3 SML, 4 as captured for the eBZ text port),
    whatever the harvested template says; a reader not started yet leaves the template's."""
    s = settings(node_metric_interval=3.0, node_metrics_template={"node_status": {"meter_mode": 7}})
    sched = MetricSchedule(s, Topics.of(s), PayloadBuilder(s, None, s.node_metrics_template), START)
    sent = run(sched, until=4, meter=MeterState(protocol=protocol))
    nodes = [p for _, topic, p in sent if topic == TOPICS.node_metric]
    assert nodes and {n["node_status"]["meter_mode"] for n in nodes} == {mode}


def test_several_nodes_one_bridge_metric_listing_each_and_a_node_metric_each() -> None:
    """Two meters on one bridge: the bridge metric lists both nodes (id 1 and 2, each with
    its own count and how long since it was heard); each node's metric goes to its own
    topic with its own count and meter_mode."""
    from agent.tibber.metrics import NodeView

    s = settings(bridge_metric_interval=10.0, node_metric_interval=10.0)
    sched = MetricSchedule(s, Topics.of(s), PayloadBuilder(s), START)
    now = START + 10
    house = MeterState(protocol="ebz", last_accepted=now - 1.5)
    heat = MeterState(protocol="sml", last_accepted=None)
    nodes = [
        NodeView("fedcba9876543210", "t/house/metric", house, Counters(5)),
        NodeView("fedcba9876543211", "t/heat/metric", heat, Counters(0)),
    ]
    sent = {t: json.loads(p) for t, p in sched.due(now, WALL + 10, house, Counters(5), nodes)}
    listed = sent[TOPICS.bridge_metric]["status"]["nodes"]
    assert [(n["id"], n["eui"], n["pubcnt"], n["seen"], n["available"]) for n in listed] == [
        (1, "fedcba9876543210", 5, 2, True),
        (2, "fedcba9876543211", 0, 10, False),
    ]
    assert sent["t/house/metric"]["node_status"]["meter_mode"] == 4
    assert sent["t/house/metric"]["node_status"]["meter_msg_count_sent"] == 5
    assert sent["t/heat/metric"]["node_status"]["meter_mode"] == 3
    assert sent["t/heat/metric"]["node_status"]["meter_msg_count_sent"] == 0
    # The next interval counts from here, per node.
    nodes = [NodeView(n.eui, n.topic, n.meter, Counters(n.counters.published + 3)) for n in nodes]
    again = {t: json.loads(p) for t, p in sched.due(now + 10, WALL + 20, house, Counters(8), nodes)}
    assert [n["pubcnt"] for n in again[TOPICS.bridge_metric]["status"]["nodes"]] == [3, 3]
    assert again["t/heat/metric"]["node_status"]["meter_msg_count_sent"] == 3
