"""tibber-agent [-c CONFIG] run | check | monitor | demo"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import __version__, logs
from .config import (
    DEFAULT_PATH,
    EX_CONFIG,
    ConfigError,
    MeterSettings,
    TibberSettings,
    check_files,
    load,
)
from .meter.parity import encode_7e1
from .meter.pipeline import Result
from .meter.reader import MeterReader
from .meter.telegram import Telegram
from .meter.validation import Outcome
from .schedule import RateLimit
from .state import MeterState
from .tibber.metrics import Counters, MetricSchedule
from .tibber.payloads import PayloadBuilder, Topics, obis_stream

log = logging.getLogger("agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tibber-agent",
        description="Reads an eBZ DD3 meter's IR head and publishes to Tibber as a Pulse bridge.",
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_PATH,
        help=f"config file (default {DEFAULT_PATH})",
    )
    parser.add_argument("--version", action="version", version=f"tibber-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the agent (the systemd service)")
    sub.add_parser("check", help="validate the config, certificate, key and port; exit 0 or 78")
    mon = sub.add_parser("monitor", help="print each telegram's values and verdict; sends nothing")
    mon.add_argument("--port", help="the IR head (default: [meter] port of the config)")
    demo = sub.add_parser("demo", help="the whole pipeline against a simulated eBZ DD3; no network")
    demo.add_argument("--telegrams", type=int, default=0, help="stop after N telegrams (0 = never)")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between telegrams")
    demo.add_argument(
        "--corrupt",
        type=float,
        default=0.05,
        help="fraction of telegrams damaged in transit (default 0.05)",
    )
    demo.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    # The demo prints what would be sent; the agent's own state lines would only interleave.
    logs.setup(logging.WARNING if args.command == "demo" else logging.INFO)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "check":
            return _check(args.config)
        if args.command == "monitor":
            return _monitor(args.config, args.port)
        return _demo(args.telegrams, args.interval, args.corrupt, args.seed)
    except ConfigError as e:
        print(f"tibber-agent: {args.config}: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------- run
def _run(path: Path) -> int:
    from .supervisor import Agent
    from .systemd import Notifier

    settings = load(path)
    assert settings.tibber is not None
    check_files(settings.tibber, settings.mirror)
    return Agent(settings, Notifier()).run()


# ---------------------------------------------------------------------- check
def _check(path: Path) -> int:
    problems: list[str] = []
    try:
        settings = load(path)
        assert settings.tibber is not None
        check_files(settings.tibber, settings.mirror)
        problems += _check_tls(settings.tibber)
        port = settings.meter.port
        if "://" not in port and not os.path.exists(port):
            problems.append(f"[meter] port: {port} does not exist (is the IR head plugged in?)")
    except ConfigError as e:
        problems.append(str(e))
    for p in problems:
        print(f"tibber-agent: {path}: {p}", file=sys.stderr)
    if problems:
        return EX_CONFIG
    print(f"{path}: ok")
    return 0


def _check_tls(t: TibberSettings) -> list[str]:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(t.ca_cert))
    except (ssl.SSLError, OSError) as e:
        return [f"[tibber] ca_cert: {t.ca_cert} is not a usable CA certificate ({_reason(e)})"]
    try:
        ctx.load_cert_chain(certfile=str(t.certificate), keyfile=str(t.private_key))
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            return [f"[tibber] private_key: {t.private_key} does not belong to {t.certificate}"]
        return [f"[tibber] certificate: {t.certificate} or its key cannot be loaded ({_reason(e)})"]
    except OSError as e:
        return [f"[tibber] certificate: cannot read {e.filename}: {e.strerror}"]
    return []


def _reason(e: BaseException) -> str:
    return getattr(e, "reason", None) or str(e).splitlines()[0]


# ---------------------------------------------------------------------- monitor
def _monitor(path: Path, port: str | None) -> int:
    meter = MeterSettings()
    if path.exists() or path != DEFAULT_PATH:
        meter = load(path, need_tibber=False).meter
    if port:
        meter = MeterSettings(port=port, baudrate=meter.baudrate, stale_after=meter.stale_after)
    reader = MeterReader(meter, MeterState(), [], on_result=lambda r: _print_result(r, sys.stdout))
    print(f"monitoring {meter.port} (Ctrl-C to stop); nothing is published", flush=True)
    reader.start()
    try:
        while reader.alive:
            time.sleep(1.0)  # only the main thread gets Ctrl-C; the reader does the work
    finally:
        reader.stop()
    return 0


def _print_result(r: Result, out: TextIO) -> None:
    v = r.verdict
    t = r.telegram
    when = time.strftime("%H:%M:%S")
    if t is None:
        print(f"{when} rejected: {v.reason} ({len(r.raw)} bytes)", file=out, flush=True)
        return
    vals = t.values
    shown = "  ".join(
        f"{code}={vals[code]}"
        for code in ("1.8.0", "2.8.0", "16.7.0", "32.7.0", "96.8.0")
        if code in vals
    )
    verdict = v.outcome.value + (f": {v.reason}" if v.reason else "")
    if v.adopted:
        verdict += f" (adopted {v.adopted})"
    print(f"{when} {verdict:<10} {shown}", file=out, flush=True)


# ---------------------------------------------------------------------- demo
DEMO_IDS = {
    "uid": "0123456789abcdef0123456789abcdef",
    "bridge_id": "0a1b2c3d4e5f6",
    "eui": "0a1b2c3d4e5f6071",
}


class DemoPrinter:
    """Prints each message the Tibber uplink would publish, with its rules (hello first,
    obis_stream rate limit, metric cadences and counts)."""

    def __init__(self, settings: TibberSettings, meter: MeterState, out: TextIO) -> None:
        self.settings = settings
        self.topics = Topics.of(settings)
        self.meter = meter
        self.out = out
        self.rate = RateLimit(settings.obis_interval)
        self.metrics = MetricSchedule(
            settings, self.topics, PayloadBuilder(settings), time.monotonic()
        )
        self.published = 0

    def emit(self, topic: str, payload: bytes) -> None:
        text = payload.decode("ascii", "replace").replace("\r\n", "\n")
        print(f"--> {topic}\n{text.rstrip()}", file=self.out, flush=True)

    def counters(self) -> Counters:
        return Counters(self.meter.telegrams_read, self.published)

    def hello(self) -> None:
        hello = self.metrics.hello(time.monotonic(), time.time(), self.meter, self.counters())
        self.emit(self.topics.event, hello)

    def telegrams(self, batch: Sequence[tuple[Telegram, float]]) -> None:
        for t, _ in batch[-1:] if self.settings.obis_interval > 0 else batch:
            if self.rate.take(time.monotonic()):
                self.published += 1
                self.emit(self.topics.obis_stream, obis_stream(t.raw))

    def tick(self) -> None:
        due = self.metrics.due(time.monotonic(), time.time(), self.meter, self.counters())
        for topic, payload in due:
            self.emit(topic, payload)


def _demo(count: int, interval: float, corrupt_rate: float, seed: int | None) -> int:
    from .meter.simulator import SimulatedEbz, applicable_corruptions, corrupt

    rng = random.Random(seed)
    settings = TibberSettings(
        mqtt_url="demo.invalid",
        ca_cert=Path("-"),
        certificate=Path("-"),
        private_key=Path("-"),
        **DEMO_IDS,
    )
    state = MeterState()
    printer = DemoPrinter(settings, state, sys.stdout)
    reader = MeterReader(
        MeterSettings(port="simulated eBZ DD3"),
        state,
        [printer],
        on_result=lambda r: _print_rejection(r, sys.stdout),
    )
    meter = SimulatedEbz(rng=rng)
    print(
        "demo: a simulated eBZ DD3 and what the agent would publish to Tibber "
        "(no network; Ctrl-C to stop)",
        flush=True,
    )
    printer.hello()
    sent = 0
    next_at = time.monotonic()
    while not count or sent < count:
        text = meter.next_telegram()
        wire = encode_7e1(text)
        if rng.random() < corrupt_rate:
            wire = corrupt(wire, rng.choice(applicable_corruptions(text)), rng)
        reader.feed(wire)
        printer.tick()
        sent += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return 0


def _print_rejection(r: Result, out: TextIO) -> None:
    v = r.verdict
    if v.outcome is Outcome.REJECTED:
        print(f"(telegram rejected: {v.reason}; not sent)", file=out, flush=True)
    elif v.outcome is Outcome.HELD:
        print("(telegram held until the next one confirms it)", file=out, flush=True)
