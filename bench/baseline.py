"""The pipeline the agent replaces, measured the way the agent is (issue 10's baseline).

A reader process publishes raw telegrams to a local plain mosquitto; a sender process polls
its two MQTT clients every 0.1 s and sends the latest telegram to the TLS broker every 2 s
(bench/baseline_reader.py, bench/baseline_sender.py: reconstructions from the issue's
description). run_baseline() starts the three, feeds the pty parity-encoded eBZ telegrams at
1 per second paced like the 9600-baud line, and measures over a window:

* latency from each telegram's last byte to the kernel timestamp of the sender's segment
  reaching the TLS broker (bench/latency.py), as tests/perf measures the agent. The sender
  sends what arrived last when its own 2 s clock says so, so a reading's latency is mostly
  the time from its telegram to the sender's next tick: fixed by the phase between the two
  clocks, which is arbitrary and, for one start, the same for every reading (one 60 s run
  at 1.000 s per telegram gave 690 ms for all 31 readings, within 47 ms). So that the mean
  is the mean over all phases and not one start's accident, the window's telegrams come
  every 1 s + 1 s / `seconds`: their phase against the sender's clock slides through one
  whole second over the window (1.7 % fewer telegrams at 60 s, which if anything lowers
  the baseline's CPU);
* CPU share and wakeups of the sender and the local broker together (what the agent's one
  process replaces besides reading: issue 10's ratio), and of the reader apart.

The local broker logs what a stock mosquitto logs (errors, warnings, notices, connections),
not the harness's per-packet debug lines, which would bill the baseline for the test's own
logging.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.latency import latencies_ms, published_readings
from bench.probes import Usage, nearest_rank
from bench.scenario import PERIOD_S, PacedLine
from tests.harness.agent import BRIDGE_ID, TOPIC_OBIS
from tests.harness.broker import HOST, PlainBroker, TlsBroker
from tests.harness.certs import Pki
from tests.harness.meter import PtyMeter
from tests.harness.observer import Observer
from tests.harness.sniffer import TcpSniffer

REPO_ROOT = Path(__file__).resolve().parents[1]  # the baseline runs from the checkout
RAW_TOPIC = "meter/raw"
TAIL = 2  # telegrams after the window (>= one 2 s sender period), so its last ones fare as any
MAX_WARMUP = 10  # telegrams sent before giving up on the first reading reaching the broker
STOP_GRACE_S = 5.0
STOCK_LOGGING = (
    "log_type none",  # resets the harness's "log_type all"; then mosquitto's defaults
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
)


class BaselineError(RuntimeError):
    pass


@dataclass(frozen=True)
class BaselineResult:
    seconds: float  # the measured window
    telegrams: int  # sent in the window
    period_s: float  # between the window's telegrams (sweep_phase: a little over 1 s)
    published: int  # of those, readings the TLS broker delivered
    latency_ms: tuple[float, ...]  # one per published reading whose segment was seen
    mean_ms: float
    p50_ms: float
    p99_ms: float
    cpu_share: float  # sender + local broker, of one core
    wakeups_per_s: float  # sender + local broker, context switches of all threads
    sender_cpu_share: float  # the sender alone (the broker's is the difference)
    sender_wakeups_per_s: float
    reader_cpu_share: float
    reader_wakeups_per_s: float

    def summary(self) -> str:
        return (
            f"baseline: {self.telegrams} telegrams, one per {self.period_s:.3f} s, over "
            f"{self.seconds:.0f} s, "
            f"{self.published} published, latency mean {self.mean_ms:.0f} ms "
            f"p50 {self.p50_ms:.0f} ms p99 {self.p99_ms:.0f} ms (n={len(self.latency_ms)}); "
            f"sender+broker {self.cpu_share * 100:.3f} % CPU, {self.wakeups_per_s:.1f} "
            f"wakeups/s (sender {self.sender_cpu_share * 100:.3f} %, "
            f"{self.sender_wakeups_per_s:.1f}/s); reader {self.reader_cpu_share * 100:.3f} % CPU, "
            f"{self.reader_wakeups_per_s:.1f} wakeups/s"
        )


class _Process:
    """`python -m MODULE ...` from the checkout, its output in a log file."""

    def __init__(self, workdir: Path, module: str, args: list[str]) -> None:
        self.name = module.rsplit(".", 1)[-1]
        self.log_path = workdir / f"{self.name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                cwd=str(REPO_ROOT),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        """Raise if the process has ended: the baseline is no longer running."""
        if self.proc.poll() is not None:
            log = self.log_path.read_text(errors="replace")[-2000:]
            raise BaselineError(f"{self.name} exited with {self.proc.returncode}:\n{log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_GRACE_S)


def run_baseline(
    workdir: Path,
    pki: Pki,
    tls_broker: TlsBroker,
    meter: PtyMeter,
    seconds: float,
    *,
    client_id: str = BRIDGE_ID,
    topic: str = TOPIC_OBIS,
    seed: int = 5,
    sweep_phase: bool = True,
) -> BaselineResult:
    """Run the baseline pipeline against `tls_broker` (the Tibber stand-in, with `pki`'s
    client certificate and the agent's bridge id and obis_stream topic by default) and the
    plugged pty `meter` for a warm-up and then `seconds` of measurement. `sweep_phase`
    (the default) slides the telegrams' phase against the sender's clock over the window
    (module docstring); without it every telegram comes 1.000 s after the last."""
    if seconds <= 0:
        raise ValueError(f"run_baseline: seconds must be positive, not {seconds}")
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[_Process] = []
    local = PlainBroker(workdir / "broker-local", extra_config=STOCK_LOGGING)
    observer = Observer(tls_broker, (topic,))
    sniffer: TcpSniffer | None = None
    try:
        local.start()
        observer.start()
        sender = _Process(
            workdir,
            "bench.baseline_sender",
            [
                *("--local-port", str(local.port), "--local-topic", RAW_TOPIC),
                *("--remote-host", HOST, "--remote-port", str(tls_broker.port)),
                *("--ca", str(pki.ca), "--cert", str(pki.client_crt)),
                *("--key", str(pki.client_key), "--client-id", client_id, "--topic", topic),
            ],
        )
        started.append(sender)
        reader = _Process(
            workdir,
            "bench.baseline_reader",
            [
                *("--port", str(meter.link), "--host", HOST),
                *("--mqtt-port", str(local.port), "--topic", RAW_TOPIC),
            ],
        )
        started.append(reader)
        if not meter.wait_opened(10):
            reader.check()
            raise BaselineError(f"the baseline reader did not open {meter.link} within 10 s")

        # The same paced line the agent is measured with: its last-byte times are taken as
        # the last bytes go out (wall clock, the scale of the kernel's timestamps).
        line = PacedLine(meter, seed, PERIOD_S)

        # Warm-up: until the first reading has gone all the way, so the window measures a
        # running pipeline (both clients connected and subscribed), not its start.
        for _ in range(MAX_WARMUP):
            line.push()
            for process in started:
                process.check()
            if published_readings(observer.messages, topic):
                break
        else:
            raise BaselineError(
                f"no reading reached the TLS broker after {MAX_WARMUP} telegrams "
                f"(sender log: {sender.log_path})"
            )

        sniffer = TcpSniffer(tls_broker.port, tls_broker.client_port(client_id))
        assert local.pid is not None  # started above
        pipeline, sender_alone = Usage(sender.pid, local.pid), Usage(sender.pid)
        reader_alone = Usage(reader.pid)
        for usage in (pipeline, sender_alone, reader_alone):
            usage.start()
        window: list[bytes] = []
        if sweep_phase:
            line.period = PERIOD_S + PERIOD_S / seconds
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            window.append(line.push())
        for usage in (pipeline, sender_alone, reader_alone):
            usage.stop()
        for process in started:
            process.check()
        # The meter goes on, so the window's last telegrams are superseded or sent at the
        # sender's next tick as any other (with the line silent, the last one would wait
        # for a second tick); these are not measured.
        for _ in range(TAIL):
            line.push()
        time.sleep(0.5)  # the last publish reaches the observer
    finally:
        if sniffer is not None:
            sniffer.close()
        for process in reversed(started):
            process.stop()
        observer.stop()
        local.stop()

    published = published_readings(observer.messages, topic)
    in_window = [key for key in window if key in published]
    lat = latencies_ms(window, line.sent_at, published, sniffer.segments())
    nan = float("nan")
    return BaselineResult(
        seconds=pipeline.seconds,
        telegrams=len(window),
        period_s=line.period,
        published=len(in_window),
        latency_ms=tuple(lat),
        mean_ms=statistics.fmean(lat) if lat else nan,
        p50_ms=nearest_rank(lat, 0.5) if lat else nan,
        p99_ms=nearest_rank(lat, 0.99) if lat else nan,
        cpu_share=pipeline.share,
        wakeups_per_s=pipeline.wakeups_per_s,
        sender_cpu_share=sender_alone.share,
        sender_wakeups_per_s=sender_alone.wakeups_per_s,
        reader_cpu_share=reader_alone.share,
        reader_wakeups_per_s=reader_alone.wakeups_per_s,
    )
