"""The baseline's reader: IR head -> raw telegrams on a local MQTT broker.

A reconstruction, written for this benchmark from issue 10's one-line description of the
pipeline the agent replaces ("a separate reader publishing raw telegrams to a local
mosquitto"); no code of that pipeline was seen or copied. It is built the way a simple
script would be, not tuned and not made worse: pyserial at 9600 8N1 with a plain blocking
read loop (a 1 s timeout; each read takes what has arrived, at least one byte), bit 7 (the
7E1 parity bit, as an 8N1 port sees it) stripped, telegrams framed from `/` to `!\\r\\n`,
each published as is, QoS 0, by paho's own network thread (loop_start).

    python -m bench.baseline_reader --port PTY --host 127.0.0.1 --mqtt-port N --topic T
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import paho.mqtt.client as mqtt
import serial

READ_TIMEOUT_S = 1.0
# Nothing in a telegram has bit 7 set once the parity bit is gone.
STRIP_BIT_7 = bytes(b & 0x7F for b in range(256))
START, END = b"/", b"!\r\n"
MAX_BUFFER = 4096  # a telegram is ~370 bytes; line noise must not grow the buffer forever


def take_telegrams(buffer: bytearray) -> list[bytes]:
    """Remove and return every complete `/` ... `!\\r\\n` telegram in buffer; keep the rest
    from the last start on (bytes before a start are noise)."""
    found = []
    while True:
        start = buffer.find(START)
        if start < 0:
            buffer.clear()
            return found
        end = buffer.find(END, start)
        if end < 0:
            del buffer[:start]
            if len(buffer) > MAX_BUFFER:
                buffer.clear()
            return found
        found.append(bytes(buffer[start : end + len(END)]))
        del buffer[: end + len(END)]


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_reader", description=__doc__)
    parser.add_argument("--port", required=True, help="the IR head's serial device")
    parser.add_argument("--host", default="127.0.0.1", help="the local broker")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--topic", required=True, help="where raw telegrams go")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline-reader")
    client.connect(args.host, args.mqtt_port, keepalive=60)
    client.loop_start()
    try:
        with serial.Serial(
            args.port,
            9600,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=READ_TIMEOUT_S,
        ) as port:
            buffer = bytearray()
            while True:
                chunk = port.read(port.in_waiting or 1)
                if not chunk:
                    continue  # the timeout: no data for a second
                buffer += chunk.translate(STRIP_BIT_7)
                for telegram in take_telegrams(buffer):
                    client.publish(args.topic, telegram, qos=0)
    except serial.SerialException as e:
        print(f"baseline reader: {args.port}: {e}", file=sys.stderr)
        return 1
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
