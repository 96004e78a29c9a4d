"""tibber-agent [-c CONFIG] run | check [--offline] [--timeout S] | monitor | demo
| import-bridge"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__, logs
from .config import (
    DEFAULT_PATH,
    EX_CONFIG,
    ConfigError,
    MeterSettings,
    TibberSettings,
    check_files,
    load,
    parse_port,
)
from .meter.parity import encode_7e1
from .meter.pipeline import Result
from .meter.reader import MeterReader
from .meter.reading import Reading
from .meter.validation import Outcome
from .schedule import RateLimit
from .state import MeterState
from .tibber.metrics import Counters, MetricSchedule
from .tibber.payloads import PayloadBuilder, Topics, reading_message

log = logging.getLogger("agent")

# check --timeout's default, DNS to CONNACK: the bound tibber.probe.DEFAULT_TIMEOUT also
# has. Not imported from there: that would load the probe on every start of the service.
CHECK_TIMEOUT = 10.0


class _HelpFormatter(argparse.HelpFormatter):
    """argparse builds a formatter for every option it is given, and the stock one asks
    shutil for the terminal's width: importing shutil (and zlib, bz2 and lzma with it) on
    every start of the service, which never prints help. The width is found as shutil
    finds it."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    """The subcommands' parsers are of this class too (add_subparsers' default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
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
    chk = sub.add_parser(
        "check",
        help="validate the config, certificate, key and port, then connect to Tibber once "
        "(publishing nothing); exit 0, 69 (unreachable), 77 (rejected) or 78 (config)",
    )
    chk.add_argument(
        "--offline", action="store_true", help="do not connect: the config and files only"
    )
    chk.add_argument(
        "--timeout",
        type=_seconds_argument,
        default=CHECK_TIMEOUT,
        metavar="SECONDS",
        help="for the whole connection attempt: DNS, TCP, TLS, CONNACK "
        f"(default {CHECK_TIMEOUT:g})",
    )
    mon = sub.add_parser("monitor", help="print each telegram's values and verdict; sends nothing")
    mon.add_argument(
        "--port", type=_port_argument, help="the IR head (default: [meter] port of the config)"
    )
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
    _add_import_bridge(sub)
    args = parser.parse_args(argv)

    # The demo prints what would be sent, and check one line per finding (its connection
    # test reports the outcome itself): the links' own state lines would only interleave.
    quiet = {"demo": logging.WARNING, "check": logging.CRITICAL}
    logs.setup(quiet.get(args.command, logging.INFO))
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "check":
            return _check(args.config, args.offline, args.timeout)
        if args.command == "monitor":
            return _monitor(args.config, args.port, Output(sys.stdout))
        if args.command == "import-bridge":
            from .bridge import command

            return command.run(command.Options.of(args), args.config)
        return _demo(args.telegrams, args.interval, args.corrupt, args.seed, Output(sys.stdout))
    except ConfigError as e:
        print(f"tibber-agent: {args.config}: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 0


def _add_import_bridge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser(
        "import-bridge",
        help="read the bridge's certificate, key and ids from its web interface; shows them, "
        "writes the PEM files and [tibber] only with --write",
        description="Reads the MQTT params, the node's eui and the node metrics from the Tibber "
        "bridge's local web interface (or from saved files), checks them as the agent would, "
        "shows what it found, and with --write puts the PEM files, the templates and the "
        "[tibber] section next to the config (-c). Exit 0; 65 unusable values; 66 unreadable "
        "file; 69 bridge unreachable; 73 cannot write; 77 password refused; 78 config unreadable.",
    )
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--host", help="the bridge's address (10.133.70.1 on its own Wi-Fi)")
    source.add_argument(
        "--from-file", type=Path, metavar="PARAMS_JSON", help="a params.json saved from a browser"
    )
    imp.add_argument(
        "--password",
        default="",
        help="the QR code on the bridge (XXXX-XXXX); left out: $TIBBER_BRIDGE_PASSWORD, or asked "
        "for on a terminal (keeps it out of the process list)",
    )
    imp.add_argument("--nodes-file", type=Path, metavar="JSON", help="a saved /nodes.json")
    imp.add_argument(
        "--metrics-file", type=Path, metavar="JSON", help="a saved /metrics.json?node_id=1"
    )
    imp.add_argument("--status-file", type=Path, metavar="JSON", help="a saved /status.json")
    imp.add_argument(
        "--bridge-metrics-file",
        type=Path,
        metavar="JSON",
        help="a captured TJH01 metric or hello: the bridge template, and the bridge id",
    )
    imp.add_argument("--bridge-id", default="", help="CONSOLE -> version -> Device Id")
    imp.add_argument("--eui", default="", help="the Pulse IR's eui (NODES tab)")
    imp.add_argument(
        "--private-key", type=Path, metavar="FILE", help="the key, saved by hand if it is hidden"
    )
    imp.add_argument(
        "--group",
        default="tibber-agent",
        help="group that may read the key and config (default tibber-agent, if it exists)",
    )
    imp.add_argument(
        "--timeout",
        type=_seconds_argument,
        default=10.0,
        metavar="SECONDS",
        help="for each request to the bridge (default 10)",
    )
    imp.add_argument("--write", action="store_true", help="write the files (default: only show)")


def _seconds_argument(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be seconds between 0 and 3600, got {value!r}")
    return seconds


def _port_argument(value: str) -> str:
    try:
        return parse_port(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------- output
# A reader that closes the output early (`tibber-agent demo | head`, a pager that quits) ends
# the command as it ends cat or grep: quietly, with the status a shell reports for a tool
# killed by SIGPIPE (128 + 13 = 141); 0 would claim the whole output was delivered. SIGPIPE
# itself stays ignored (Python's default): restoring it would let any socket kill the process.
EX_OUTPUT_CLOSED = 128 + signal.SIGPIPE


class Output:
    """Standard output for the printing commands. A closed pipe does not raise from wherever
    the write happened (for `monitor` that is the meter thread): it sets `closed`, which the
    command's loop watches."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed = threading.Event()

    def line(self, text: str) -> None:
        if self.closed.is_set():
            return
        try:
            print(text, file=self._stream, flush=True)
        except BrokenPipeError:
            # The interpreter flushes stdout once more at exit; with the descriptor on
            # /dev/null that flush succeeds instead of printing a traceback (Python's docs).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            self.closed.set()


# ---------------------------------------------------------------------- run
def _run(path: Path) -> int:
    from .supervisor import Agent
    from .systemd import Notifier

    settings = load(path)
    assert settings.tibber is not None
    check_files(settings.tibber, settings.mirror)
    return Agent(settings, Notifier()).run()


# ---------------------------------------------------------------------- check
def _check(path: Path, offline: bool, timeout: float) -> int:
    """The config and the files, then (unless offline) one connection to Tibber's broker.
    A missing IR head does not stop the connection test: its verdict is worth having first."""
    from .credentials import check_tls

    problems: list[str] = []
    tibber: TibberSettings | None = None
    try:
        settings = load(path)
        assert settings.tibber is not None
        check_files(settings.tibber, settings.mirror)
        problems += check_tls(settings.tibber)
        if not problems:
            tibber = settings.tibber
        for meter in settings.meters:
            section = f"meter:{meter.name}" if meter.name else "meter"
            port = meter.port
            if "://" not in port and not os.path.exists(port):
                problems.append(
                    f"[{section}] port: {port} does not exist (is the IR head plugged in?)"
                )
    except ConfigError as e:
        problems.append(str(e))
    for p in problems:
        print(f"tibber-agent: {path}: {p}", file=sys.stderr)
    if not problems:
        print(
            f"{path}: ok" + (" (the connection to Tibber not tried: --offline)" if offline else "")
        )
        for meter in settings.meters:
            section = f"meter:{meter.name}" if meter.name else "meter"
            print(f"  [{section}] {meter.port}, protocol {meter.protocol}, node {meter.eui}")
        print(
            "  note: Tibber reportedly shows data only for meters it supports for your account "
            "(a Logarex stream was accepted but never shown); with a meter other than an eBZ "
            "DD3, ask Tibber whether the Pulse supports it"
        )
    if offline or tibber is None:
        return EX_CONFIG if problems else 0
    result = _check_connection(tibber, timeout)
    return EX_CONFIG if problems else result


def _check_connection(t: TibberSettings, timeout: float) -> int:
    from .tibber.probe import probe, running_agents

    print(
        f"connecting to {t.mqtt_url}:{t.mqtt_port} as {t.mqtt_client_id} (--offline skips "
        "this): whoever uses this id, the Tibber bridge or a running agent, is thrown off "
        "the broker for a moment",
        flush=True,
    )
    for other in running_agents():
        print(
            f"tibber-agent: warning: an agent is running here ({other}): if it uses this id, "
            "it is thrown off the broker for a moment and reconnects by itself",
            file=sys.stderr,
        )
    result = probe(t, timeout)
    if result.status == 0:
        print(result.line)
    else:
        print(f"tibber-agent: {result.line}", file=sys.stderr)
    return result.status


# ---------------------------------------------------------------------- monitor
def _monitor(path: Path, port: str | None, out: Output) -> int:
    meter = MeterSettings()
    if path.exists() or path != DEFAULT_PATH:
        meter = load(path, need_tibber=False).meter
    if port:
        meter = dataclasses.replace(meter, port=port)
    found: list[object] = [None]

    def show(r: Result) -> None:
        finding = getattr(reader.pipeline, "finding", None)
        if finding is not None and finding is not found[0]:
            out.line(f"found {finding.what}: reading it as protocol {finding.protocol}")
        found[0] = finding
        _print_result(r, out)

    reader = MeterReader(meter, MeterState(), [], on_result=show)
    out.line(
        f"monitoring {meter.port}, protocol {meter.protocol} at {meter.baudrate} baud "
        "(Ctrl-C to stop); nothing is published"
    )
    reader.start()
    try:
        # Only the main thread gets Ctrl-C; the reader does the work.
        while reader.alive and not out.closed.wait(1.0):
            pass
    finally:
        reader.stop()
    return EX_OUTPUT_CLOSED if out.closed.is_set() else 0


# What `monitor` shows of each reading, where the meter sends it: energy in and out, total
# power (16.7.0 on eBZ and SML meters, 1.7.0 on EasyMeters), L1's voltage, the seconds index.
MONITORED = ("1.8.0", "2.8.0", "16.7.0", "1.7.0", "32.7.0", "96.8.0")


def _print_result(r: Result, out: Output) -> None:
    v = r.verdict
    t = r.telegram
    when = time.strftime("%H:%M:%S")
    if t is None:
        out.line(f"{when} rejected: {v.reason} ({len(r.raw)} bytes)")
        return
    vals = t.values
    shown = "  ".join(f"{code}={vals[code]}" for code in MONITORED if code in vals)
    verdict = v.outcome.value + (f": {v.reason}" if v.reason else "")
    if v.adopted:
        verdict += f" (adopted {v.adopted})"
    out.line(f"{when} {verdict:<10} {shown}")


# ---------------------------------------------------------------------- demo
DEMO_IDS = {
    "uid": "0123456789abcdef0123456789abcdef",
    "bridge_id": "0a1b2c3d4e5f6",
    "eui": "0a1b2c3d4e5f6071",
}


class DemoPrinter:
    """Prints each message the Tibber uplink would publish, with its rules (hello first,
    obis_stream rate limit, metric cadences and counts)."""

    def __init__(self, settings: TibberSettings, meter: MeterState, out: Output) -> None:
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
        if topic == self.topics.sml:  # binary: shown as hex, 32 bytes a line
            text = "\n".join(payload[i : i + 32].hex(" ") for i in range(0, len(payload), 32))
        else:
            text = payload.decode("ascii", "replace").replace("\r\n", "\n")
        self.out.line(f"--> {topic}\n{text.rstrip()}")

    def counters(self) -> Counters:
        return Counters(self.published)

    def hello(self) -> None:
        hello = self.metrics.hello(time.monotonic(), time.time(), self.meter, self.counters())
        self.emit(self.topics.event, hello)

    def telegrams(self, batch: Sequence[tuple[Reading, float]]) -> None:
        for t, _ in batch[-1:] if self.settings.obis_interval > 0 else batch:
            if self.rate.take(time.monotonic()):
                self.published += 1
                self.emit(*reading_message(self.topics, t))

    def tick(self) -> None:
        due = self.metrics.due(time.monotonic(), time.time(), self.meter, self.counters())
        for topic, payload in due:
            self.emit(topic, payload)


def _demo(count: int, interval: float, corrupt_rate: float, seed: int | None, out: Output) -> int:
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
    printer = DemoPrinter(settings, state, out)
    reader = MeterReader(
        MeterSettings(port="simulated eBZ DD3"),
        state,
        [printer],
        on_result=lambda r: _print_rejection(r, out),
    )
    meter = SimulatedEbz(rng=rng)
    out.line(
        "demo: a simulated eBZ DD3 and what the agent would publish to Tibber "
        "(no network; Ctrl-C to stop)"
    )
    printer.hello()
    sent = 0
    next_at = time.monotonic()
    while (not count or sent < count) and not out.closed.is_set():
        text = meter.next_telegram()
        wire = encode_7e1(text)
        if rng.random() < corrupt_rate:
            wire = corrupt(wire, rng.choice(applicable_corruptions(text)), rng)
        reader.feed(wire)
        printer.tick()
        sent += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return EX_OUTPUT_CLOSED if out.closed.is_set() else 0


def _print_rejection(r: Result, out: Output) -> None:
    v = r.verdict
    if v.outcome is Outcome.REJECTED:
        out.line(f"(telegram rejected: {v.reason}; not sent)")
    elif v.outcome is Outcome.HELD:
        out.line("(telegram held until the next one confirms it)")
