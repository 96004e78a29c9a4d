"""The baseline's sender: raw telegrams from a local broker -> Tibber, polled.

A reconstruction, written for this benchmark from issue 10's one-line description of the
pipeline the agent replaces ("a sender that polls its MQTT loops every 0.1 s and publishes
the latest telegram every 2 s"); no code of that sender was seen or copied. Two paho clients
and no network threads: one subscribed to the reader's topic on the local broker, one
connected to the TLS broker with the bridge's client certificate. The main loop sleeps
0.1 s, then lets each client do its network work without waiting (`loop(timeout=0)`), and
every 2 s publishes the latest telegram that arrived since the last publish, QoS 1.

So that the benchmark compares the two pipelines' costs and not their messages, the payload
is built with the agent's own code: the telegram parsed by agent.meter.telegram.parse (one
that does not parse is dropped) and shaped by agent.tibber.payloads.obis_stream, on the
topic the agent publishes readings to.

    python -m bench.baseline_sender --local-port N --local-topic T --remote-port M \\
        --ca ca.pem --cert certificate.pem --key private.key --client-id ID --topic OBIS_TOPIC
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt

from agent.meter.telegram import TelegramError, parse
from agent.tibber.payloads import QOS_OBIS, obis_stream

POLL_S = 0.1
PUBLISH_EVERY_S = 2.0


class Latest:
    """The newest telegram the local broker delivered, until it is taken."""

    def __init__(self) -> None:
        self.raw: bytes | None = None

    def on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.raw = bytes(msg.payload)

    def take(self) -> bytes | None:
        raw, self.raw = self.raw, None
        return raw


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_sender", description=__doc__)
    parser.add_argument("--local-host", default="127.0.0.1")
    parser.add_argument("--local-port", type=int, default=1883)
    parser.add_argument("--local-topic", required=True, help="the reader's raw telegrams")
    parser.add_argument("--remote-host", default="127.0.0.1", help="Tibber's broker")
    parser.add_argument("--remote-port", type=int, default=8883)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-id", required=True, help="the bridge id")
    parser.add_argument("--topic", required=True, help="the obis_stream topic")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)

    latest = Latest()
    local = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline-sender")
    local.on_message = latest.on_message
    local.connect(args.local_host, args.local_port, keepalive=60)
    local.subscribe(args.local_topic, qos=0)

    remote = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id)
    remote.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key)  # verifies the host
    remote.connect(args.remote_host, args.remote_port, keepalive=60)

    next_publish = time.monotonic() + PUBLISH_EVERY_S
    try:
        while True:
            for name, client in (("local", local), ("remote", remote)):
                rc = client.loop(timeout=0)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    print(
                        f"baseline sender: {name} broker: {mqtt.error_string(rc)}", file=sys.stderr
                    )
                    return 1
            if time.monotonic() >= next_publish:
                next_publish += PUBLISH_EVERY_S
                raw = latest.take()
                if raw is not None:
                    try:
                        payload = obis_stream(parse(raw).raw)
                    except TelegramError:
                        pass  # not a telegram: nothing to send
                    else:
                        remote.publish(args.topic, payload, qos=QOS_OBIS)
            time.sleep(POLL_S)
    finally:
        local.disconnect()
        remote.disconnect()


if __name__ == "__main__":
    sys.exit(main())
