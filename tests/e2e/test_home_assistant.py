"""Home Assistant on the local broker, with the agent as a process and a real mosquitto.

What Home Assistant would see: the retained discovery documents and availability (a
subscriber that connects later, as Home Assistant after a restart, gets them), the states,
and `offline` when the agent dies or stops. QoS and retain as the agent sent them are read
from the broker's log: a subscriber cannot see them (its QoS is capped by its subscription,
and MQTT 3.1.1 clears the retain flag on live delivery).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import signal
import time
from decimal import Decimal

from agent.homeassistant import SENSORS
from agent.meter.simulator import SimulatedEbz
from agent.meter.telegram import parse
from tests.harness.agent import BRIDGE_ID, TOPIC_OBIS
from tests.harness.meter import encode_7e1
from tests.harness.observer import Message

AGENT = f"tibber-agent-{BRIDGE_ID}"
STATE = f"tibber-agent/{BRIDGE_ID}/state"
AVAILABILITY = f"tibber-agent/{BRIDGE_ID}/availability"
CONFIGS = "homeassistant/sensor/+/config"
BZ_SENSORS = 8  # the simulated BZ on the MSB port: import, 4 powers, 3 voltages
CODE_OF = {s.key: s.code for s in SENSORS}


def with_home_assistant(agent_config, plain_broker, obis_interval: str = "0") -> None:
    agent_config.mirror.update(
        enabled="true", host="127.0.0.1", port=str(plain_broker.port), home_assistant="true"
    )
    agent_config.tibber["obis_interval"] = obis_interval


def state_values(m: Message) -> dict[str, Decimal]:
    return json.loads(m.payload, parse_float=Decimal, parse_int=Decimal)


def metered(obis_stream: bytes) -> dict[str, Decimal]:
    """The values of the sensors a telegram Tibber received carries, by state key."""
    t = parse(obis_stream.replace(b"\r\n", b"\r\n\r\n", 1))  # the blank line put back
    return {key: Decimal(t.values[code]) for key, code in CODE_OF.items() if code in t.values}


def meter_second(payload: bytes) -> int:
    """The meter's own seconds index (96.8.0) of a telegram: its clock, not the network's."""
    m = re.search(rb"96\.8\.0\*255\(([0-9A-F]{8})\)", payload)
    assert m, payload[:120]
    return int(m[1], 16)


def sent_by_agent(plain_broker, topic_prefix: str = "", since: int = 0):
    return [
        p
        for p in plain_broker.received_publishes(AGENT, since=since)
        if p.topic.startswith(topic_prefix)
    ]


def wait_for_publishes(plain_broker, topic_prefix: str, n: int, since: int = 0, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(found := sent_by_agent(plain_broker, topic_prefix, since)) < n:
        assert time.monotonic() < deadline, plain_broker.log_text()[since:][-3000:]
        time.sleep(0.05)
    return found


def test_states_are_the_values_tibber_gets_and_only_of_accepted_telegrams(
    agent_config, start_agent, observer, mirror_observer, plain_broker, pty_meter
):
    """obis_interval 0: every accepted telegram goes to Tibber and to Home Assistant. Every
    state equals the values of the telegram Tibber got in the same second; telegrams damaged
    on the wire in ways validation sees (an energy digit, a phase power) reach neither."""
    with_home_assistant(agent_config, plain_broker)
    meter = SimulatedEbz(rng=random.Random(9))
    damaged: list[tuple[str, Decimal]] = []  # (state key, the damaged line's value)

    def next_wire() -> bytes:
        text = meter.next_telegram()
        n = meter.seconds % 5
        if n in (2, 4):  # two in five: a digit of 1.8.0's hundreds of kWh, or of L2's tens of W
            key, code = ("energy_import", b"1.8.0") if n == 2 else ("power_l2", b"56.7.0")
            start = text.index(b"1-0:" + code + b"*255(") + len(code) + 9
            value = bytearray(text[start : text.index(b"*", start)])
            value[3] = ord("0") + (value[3] - ord("0") + 1) % 10
            text = text.replace(text[start : start + len(value)], bytes(value), 1)
            damaged.append((key, Decimal(value.decode())))
        return encode_7e1(text)

    pty_meter.start_pushing(next_wire, period=1.0)
    start_agent()
    states = mirror_observer.wait_count(6, STATE, timeout=20)
    time.sleep(1.0)  # Tibber's copy of the last one
    pty_meter.stop_pushing()

    # Discovery: the will and every document retained QoS 1, before the first state.
    will = re.search(
        r"Will message specified \(\d+ bytes\) \((r\d), (q\d)\)\.\n\S+: \t(.*)\n",
        plain_broker.log_text(),
    )
    assert will is not None and will.groups() == ("r1", "q1", AVAILABILITY)
    sent = sent_by_agent(plain_broker)
    first_state = next(i for i, p in enumerate(sent) if p.topic == STATE)
    configs = [p for p in sent[:first_state] if p.topic.startswith("homeassistant/sensor/")]
    assert len(configs) == BZ_SENSORS
    assert {(p.qos, p.retain) for p in configs} == {(1, True)}
    online = [p for p in sent if p.topic == AVAILABILITY]
    assert [(p.qos, p.retain, p.size) for p in online] == [(1, True, len(b"online"))]
    assert {(p.qos, p.retain) for p in sent if p.topic == STATE} == {(0, False)}

    # Each state: the values of the telegram Tibber got, within the same second.
    tibber = [m for m in observer.messages if m.topic == TOPIC_OBIS]
    by_energy = {metered(m.payload)["energy_import"]: m for m in tibber}
    for state in states:
        values = state_values(state)
        twin = by_energy[values["energy_import"]]
        assert values == metered(twin.payload)
        assert abs(twin.t - state.t) < 1.0
    # Nothing of a damaged telegram reaches either.
    assert len(damaged) >= 3
    seen = {(k, v) for s in states for k, v in state_values(s).items()}
    assert not set(damaged) & seen
    assert not set(damaged) & {(k, v) for m in tibber for k, v in metered(m.payload).items()}


def test_states_are_rate_limited_like_obis_stream(
    agent_config, start_agent, observer, mirror_observer, plain_broker, pushing_meter
):
    """obis_interval 2 at one telegram a second: a state of every second telegram, never
    every one nor every third. The gaps are counted in the meter's seconds (each state's
    raw twin on the mirror carries its 96.8.0), so a slow delivery cannot bend them."""
    with_home_assistant(agent_config, plain_broker, obis_interval="2")
    start_agent()
    mirror_observer.wait_for(STATE, timeout=10)
    t0 = time.monotonic()
    time.sleep(8.5)
    states = [m for m in mirror_observer.messages if m.topic == STATE and m.t >= t0]
    tibber = [m for m in observer.messages if m.topic == TOPIC_OBIS and m.t >= t0]
    raw = [m for m in mirror_observer.messages if m.topic == "/ebz/raw"]
    assert len([m for m in raw if m.t >= t0]) >= 8  # raw telegrams are not limited
    assert 3 <= len(states) <= 5 and abs(len(states) - len(tibber)) <= 1, (states, tibber)
    second_of = {Decimal(parse(m.payload).values["1.8.0"]): meter_second(m.payload) for m in raw}
    seconds = [second_of[state_values(s)["energy_import"]] for s in states]
    assert [b - a for a, b in itertools.pairwise(seconds)] == [2] * (len(seconds) - 1), seconds
    tibber_seconds = [meter_second(m.payload) for m in tibber]
    assert [b - a for a, b in itertools.pairwise(tibber_seconds)] == [2] * (len(tibber) - 1)


def test_offline_by_the_last_will_when_the_agent_is_killed(
    agent_config, start_agent, mirror_observer, plain_broker, pushing_meter, observer_factory
):
    """SIGKILL: no DISCONNECT, so the broker publishes the will. Home Assistant starting
    afterwards still sees the sensors, unavailable."""
    with_home_assistant(agent_config, plain_broker)
    agent = start_agent()
    mirror_observer.wait_for(STATE, timeout=10)
    assert [m.payload for m in mirror_observer.messages if m.topic == AVAILABILITY] == [b"online"]
    mark = plain_broker.log_mark()
    agent.signal(signal.SIGKILL)
    agent.wait(5)
    mirror_observer.wait_for(lambda m: m.topic == AVAILABILITY and m.payload == b"offline", 5)
    # The broker's will, not the agent: the agent sent no availability after the mark (a
    # state it wrote just before the kill may reach the broker's log after the mark).
    sent = sent_by_agent(plain_broker, since=mark)
    assert [p for p in sent if p.topic == AVAILABILITY] == [], sent
    later = observer_factory(plain_broker, ("homeassistant/#", "tibber-agent/#"))
    retained = later.wait_count(BZ_SENSORS + 1, timeout=5)
    assert all(m.retain for m in retained)
    assert [m.payload for m in retained if m.topic == AVAILABILITY] == [b"offline"]
    assert len({m.topic for m in retained if m.topic.endswith("/config")}) == BZ_SENSORS


def test_offline_on_a_clean_stop(
    agent_config, start_agent, mirror_observer, plain_broker, pushing_meter, observer_factory
):
    """SIGTERM: the agent DISCONNECTs (the broker then drops the will), so it says `offline`
    itself, retained, before the DISCONNECT."""
    with_home_assistant(agent_config, plain_broker)
    agent = start_agent()
    mirror_observer.wait_for(STATE, timeout=10)
    mark = plain_broker.log_mark()
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    mirror_observer.wait_for(lambda m: m.topic == AVAILABILITY and m.payload == b"offline", 5)
    farewell = sent_by_agent(plain_broker, AVAILABILITY, since=mark)
    assert [(p.qos, p.retain, p.size) for p in farewell] == [(1, True, len(b"offline"))]
    after = plain_broker.log_text()[mark:]
    assert after.index(f"'{AVAILABILITY}'") < after.index(f"Received DISCONNECT from {AGENT}")
    later = observer_factory(plain_broker, (AVAILABILITY,))
    assert later.wait_for(AVAILABILITY, timeout=5).payload == b"offline"
    assert later.messages[0].retain


def test_the_sensor_set_follows_the_adopted_layout(
    agent_config, start_agent, mirror_observer, plain_broker, pty_meter, simulated_meter
):
    """No PIN: whole kWh, no power, one sensor. The PIN entered: once the new layout is
    adopted, the power and voltage sensors are announced before a state carries them. The
    PIN off again: their documents are emptied (retained), which deletes them in Home
    Assistant and on the broker."""
    with_home_assistant(agent_config, plain_broker)
    simulated_meter.set_layout(reduced=True)
    pty_meter.start_pushing(lambda: encode_7e1(simulated_meter.next_telegram()), period=1.0)
    start_agent()
    first = mirror_observer.wait_for(STATE, timeout=10)
    assert set(state_values(first)) == {"energy_import"}
    assert len(sent_by_agent(plain_broker, "homeassistant/")) == 1

    mark = plain_broker.log_mark()
    simulated_meter.set_layout(reduced=False)
    full = mirror_observer.wait_for(lambda m: m.topic == STATE and b"power" in m.payload, 15)
    assert len(state_values(full)) == BZ_SENSORS
    sent = sent_by_agent(plain_broker, since=mark)
    first_full = next(i for i, p in enumerate(sent) if p.topic == STATE and p.size > 40)
    announced = [p for p in sent[:first_full] if p.topic.startswith("homeassistant/")]
    assert len(announced) == BZ_SENSORS and all(p.retain and p.size > 0 for p in announced)

    mark = plain_broker.log_mark()
    simulated_meter.set_layout(reduced=True)
    mirror_observer.wait_for(
        lambda m: m.topic == STATE and m.t > full.t and b"power" not in m.payload, 15
    )
    emptied = [p for p in sent_by_agent(plain_broker, "homeassistant/", since=mark) if p.size == 0]
    assert len(emptied) == BZ_SENSORS - 1 and all(p.retain and p.qos == 1 for p in emptied)
    assert not any("energy_import" in p.topic for p in emptied)


def test_after_a_broker_restart_everything_is_announced_again(
    agent_config, start_agent, mirror_observer, plain_broker, pushing_meter, observer_factory
):
    """The test broker keeps nothing across a restart (persistence false): what a
    subscriber that connects afterwards gets, as Home Assistant restarting, the agent
    published again on its new connection, before the first state."""
    with_home_assistant(agent_config, plain_broker)
    start_agent()
    mirror_observer.wait_for(STATE, timeout=10)
    mark = plain_broker.log_mark()
    plain_broker.restart()
    wait_for_publishes(plain_broker, STATE, 1, since=mark, timeout=20)
    sent = sent_by_agent(plain_broker, since=mark)
    first_state = next(i for i, p in enumerate(sent) if p.topic == STATE)
    before = [p.topic for p in sent[:first_state]]
    assert before.count(AVAILABILITY) == 1
    assert len([t for t in before if t.startswith("homeassistant/sensor/")]) == BZ_SENSORS
    home_assistant = observer_factory(plain_broker, ("homeassistant/#", "tibber-agent/#"))
    retained = home_assistant.wait_count(BZ_SENSORS + 1, lambda m: m.retain, timeout=5)
    assert [m.payload for m in retained if m.topic == AVAILABILITY] == [b"online"]
    docs = [json.loads(m.payload) for m in retained if m.topic.endswith("/config")]
    assert {d["state_topic"] for d in docs} == {STATE}
    assert home_assistant.wait_for(STATE, timeout=5).retain is False


def test_a_frozen_local_broker_never_slows_tibber(
    agent_config, start_agent, observer, mirror_observer, plain_broker, pushing_meter
):
    """The local broker stops answering (SIGSTOP: the connection stays open, nothing is read
    or acknowledged): states and discovery documents pile up unacknowledged, the mirror drops
    what follows, and Tibber still gets every telegram at the meter's pace: eight within
    12 s, of eight consecutive meter seconds (96.8.0: the meter's clock, which a slow
    delivery cannot bend), none dropped or repeated."""
    with_home_assistant(agent_config, plain_broker)
    start_agent()
    mirror_observer.wait_for(STATE, timeout=10)
    observer.wait_for(TOPIC_OBIS, timeout=5)
    plain_broker.freeze()
    t0 = time.monotonic()
    got = observer.wait_count(8, TOPIC_OBIS, timeout=12, after=t0)
    seconds = [meter_second(m.payload) for m in got]
    assert [b - a for a, b in itertools.pairwise(seconds)] == [1] * (len(seconds) - 1), seconds
