"""Self-tests of the harness against real parts; the whole file should take a few seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import serial

from tests.harness.broker import HOST, PlainBroker, TlsBroker
from tests.harness.certs import (
    Pki,
    expired_client,
    foreign_ca,
    foreign_client,
    make_pki,
    mismatched_key,
)
from tests.harness.meter import PtyMeter, encode_7e1
from tests.harness.notify import NotifySocket
from tests.harness.observer import Observer
from tests.harness.paths import read_capture, split_telegrams

TELEGRAM = (
    b"/EBZ5DD3BZ06ETA_107\r\n\r\n"
    b"1-0:0.0.0*255(1EBZ0100000001)\r\n"
    b"1-0:1.8.0*255(000123.45678900*kWh)\r\n"
    b"1-0:16.7.0*255(000179.62*W)\r\n"
    b"0-0:96.8.0*255(00000001)\r\n"
    b"!\r\n"
)
AWS_TOPIC = "$aws/rules/ingest_tibber_bridge_data/tibber-bridge/test/publish"


def _tls_client(
    broker: TlsBroker, cid: str, crt: Path, key: Path, ca: Path | None = None
) -> tuple[mqtt.Client, threading.Event]:
    connected = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(ca or broker.pki.ca), certfile=str(crt), keyfile=str(key))
    c.on_connect = lambda *_a: connected.set()
    c.connect_async(HOST, broker.port, keepalive=30)
    c.loop_start()
    return c, connected


def _close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


# -- certs -----------------------------------------------------------------------------------


def test_pki_files(pki: Pki, tmp_path: Path) -> None:
    for p in (pki.ca, pki.server_crt, pki.client_crt):
        assert p.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    for p in (pki.server_key, pki.client_key):
        assert p.stat().st_mode & 0o777 == 0o600
    neg = tmp_path / "neg"
    assert all(p.exists() for p in (*foreign_client(neg), *expired_client(pki)))
    assert foreign_ca(neg).exists() and mismatched_key(neg).stat().st_mode & 0o777 == 0o600


# -- brokers ---------------------------------------------------------------------------------


def test_tls_publish_reaches_observer(tls_broker: TlsBroker, observer: Observer) -> None:
    c, connected = _tls_client(
        tls_broker, "tibber-bridge-test", tls_broker.pki.client_crt, tls_broker.pki.client_key
    )
    try:
        assert connected.wait(5)
        c.publish(AWS_TOPIC, b'{"x":1}', qos=1)
        msg = observer.wait_for("$aws/rules/#", timeout=5)
        assert (msg.topic, msg.payload, msg.qos) == (AWS_TOPIC, b'{"x":1}', 1)
    finally:
        _close(c)
    # The CN is the username; the log is evidence of both client id and CN.
    tls_broker.wait_for_log(r"as tibber-bridge-test \(.*u'tibber-bridge-test'\)", timeout=2)


def test_broker_log_shows_the_flags_a_subscriber_cannot_see(
    tls_broker: TlsBroker, observer: Observer
) -> None:
    """The observer subscribes at QoS 1 and is live: it sees QoS 1 for a QoS 1 publish but
    QoS 0 for a QoS 0 one, and never the retain flag. The broker's log shows them as sent."""
    c, connected = _tls_client(
        tls_broker, "tibber-bridge-test", tls_broker.pki.client_crt, tls_broker.pki.client_key
    )
    try:
        assert connected.wait(5)
        c.publish(AWS_TOPIC + "/a", b"12345", qos=0, retain=True).wait_for_publish(5)
        c.publish(AWS_TOPIC + "/b", b"1234567", qos=1).wait_for_publish(5)
        got = observer.wait_count(2, "$aws/rules/#", timeout=5)
    finally:
        _close(c)
    assert [(m.qos, m.retain) for m in got] == [(0, False), (1, False)]
    sent = tls_broker.received_publishes("tibber-bridge-test")
    assert [(p.topic, p.qos, p.retain, p.dup, p.size) for p in sent] == [
        (AWS_TOPIC + "/a", 0, True, False, 5),
        (AWS_TOPIC + "/b", 1, False, False, 7),
    ]
    assert tls_broker.pubacks_sent("tibber-bridge-test") == [sent[1].mid]


def test_foreign_client_cert_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    mark = tls_broker.log_mark()
    crt, key = foreign_client(tmp_path / "foreign")
    connected = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder")
    c.tls_set(ca_certs=str(tls_broker.pki.ca), certfile=str(crt), keyfile=str(key))
    c.on_connect = lambda *_a: connected.set()
    try:
        # Under TLS 1.3 connect() does not raise; the broker drops us after the handshake.
        c.connect(HOST, tls_broker.port)
        deadline = time.monotonic() + 5
        while "certificate verify failed" not in tls_broker.log_text()[mark:]:
            assert time.monotonic() < deadline, tls_broker.log_text()[mark:]
            c.loop(0.05)
        for _ in range(5):
            c.loop(0.05)
        assert not connected.is_set()
    finally:
        c.disconnect()
    assert "as intruder" not in tls_broker.log_text()


def test_restart_same_port_and_reconnect(tls_broker: TlsBroker, observer: Observer) -> None:
    port, pid = tls_broker.port, tls_broker.pid
    tls_broker.restart(kill=True)
    assert tls_broker.port == port and tls_broker.pid != pid
    observer.reconnect()  # subscriptions died with the broker (persistence false)
    c, connected = _tls_client(
        tls_broker, "tibber-bridge-test", tls_broker.pki.client_crt, tls_broker.pki.client_key
    )
    try:
        assert connected.wait(5)
        c.publish("tibber-bridge/x", b"after", qos=1)
        assert observer.wait_for("tibber-bridge/#", timeout=5).payload == b"after"
    finally:
        _close(c)


def test_plain_broker_mirror(plain_broker: PlainBroker, mirror_observer: Observer) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mirror-pub")
    c.connect(HOST, plain_broker.port)
    c.loop_start()
    try:
        c.publish("home/meter/power", b"179", qos=1).wait_for_publish(5)
        assert mirror_observer.wait_for(timeout=5).topic == "home/meter/power"
    finally:
        _close(c)


def test_startup_failure_raises_with_log(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    pki.server_key.write_text("garbage")
    with pytest.raises(RuntimeError, match=r"(?s)exited with.*key"):
        TlsBroker(tmp_path / "b", pki).start()


# -- pty meter -------------------------------------------------------------------------------


def test_encode_7e1_known_bytes() -> None:
    assert encode_7e1(b"/E!\r\n") == bytes([0xAF, 0xC5, 0x21, 0x8D, 0x0A])
    assert all(b.bit_count() % 2 == 0 for b in encode_7e1(bytes(range(128))))
    with pytest.raises(ValueError):
        encode_7e1(b"\x80")


def test_pty_telegram_byte_exact(pty_meter: PtyMeter) -> None:
    with serial.Serial(str(pty_meter.link), 9600, timeout=2) as ser:  # 8N1, as the agent reads
        assert pty_meter.wait_opened(2)
        t0 = time.monotonic()
        pty_meter.send_telegram(TELEGRAM)
        elapsed = time.monotonic() - t0
        assert ser.read(len(TELEGRAM)) == encode_7e1(TELEGRAM)
    assert elapsed >= len(TELEGRAM) / 960 * 0.9  # paced like 9600 baud
    assert pty_meter.drain() == b""


def test_write_all_waits_for_a_slow_reader_and_drops_nothing(pty_meter: PtyMeter) -> None:
    data = bytes(range(128)) * 1024  # 128 KiB, far more than the pty holds
    got = bytearray()
    with serial.Serial(str(pty_meter.link), 9600, timeout=0.05) as ser:
        assert pty_meter.wait_opened(2)

        def slow_reader() -> None:
            while len(got) < len(data):
                got.extend(ser.read(8192))
                time.sleep(0.002)

        reader = threading.Thread(target=slow_reader, daemon=True)
        reader.start()
        pty_meter.write_all(data, timeout=5)
        reader.join(10)
    assert bytes(got) == data and pty_meter.dropped == 0


def test_unplug_wakes_blocked_read(pty_meter: PtyMeter) -> None:
    errors: list[BaseException] = []
    ser = serial.Serial(str(pty_meter.link), 9600, timeout=5)

    def reader() -> None:
        try:
            ser.read(1)
        except serial.SerialException as e:
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert pty_meter.wait_opened(2)
    time.sleep(0.05)  # let the read block
    t0 = time.monotonic()
    pty_meter.unplug()
    t.join(3)
    ser.close()
    assert not t.is_alive() and errors, "read did not wake on unplug"
    assert time.monotonic() - t0 < 1
    assert not pty_meter.link.exists()


def test_pusher_survives_replug(pty_meter: PtyMeter) -> None:
    wire = encode_7e1(TELEGRAM)
    pty_meter.start_pushing(lambda: wire, period=0.1, paced=False)
    with serial.Serial(str(pty_meter.link), 9600, timeout=2) as ser:
        assert ser.read(len(wire) * 2) == wire * 2
    pty_meter.unplug()
    time.sleep(0.25)  # ticks while unplugged are skipped, not an error
    pty_meter.plug()  # fresh pty behind the same link: a plain reopen works
    with serial.Serial(str(pty_meter.link), 9600, timeout=2) as ser:
        ser.reset_input_buffer()
        data = ser.read(len(wire) * 2)
    pty_meter.stop_pushing()
    assert wire in data and pty_meter.skipped >= 1


# -- notify socket ---------------------------------------------------------------------------


def test_notify_ready_from_subprocess(notify_socket: NotifySocket) -> None:
    code = "import sdnotify; sdnotify.SystemdNotifier(debug=True).notify('READY=1\\nSTATUS=ok')"
    env = {**os.environ, **notify_socket.env(watchdog_usec=30_000_000)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    assert proc.wait(10) == 0
    n = notify_socket.wait_for("READY", "1", timeout=5)
    assert n.pid == proc.pid  # SO_PASSCRED: the kernel vouches for the sender
    assert n.fields == {"READY": "1", "STATUS": "ok"}


# -- shared captures -------------------------------------------------------------------------


def test_split_capture() -> None:
    data = read_capture("ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt")
    telegrams = split_telegrams(data)
    assert [len(t) for t in telegrams] == [368] * 7
    assert split_telegrams(b"!\r\n" + data[5:] + b"/EBZ") == telegrams[1:]
