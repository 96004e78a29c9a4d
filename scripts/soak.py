#!/usr/bin/env python3
"""Soak: the agent for an hour at one telegram per second, with a fault every few minutes.

    .venv-test/bin/python scripts/soak.py [--minutes 60] [--fault-every 180] [--report]

Real parts as in the tests (a client-certificate TLS mosquitto, a pty IR head, the agent
as a subprocess whose stderr goes to a pipe, as under journald). Faults cycle through:
broker restart, IR head unplugged and replugged, 64 KB of line noise, broker frozen for
twice the keepalive. The agent's RSS, threads, file descriptors and bytes written are
sampled at least every 30 s and right before each fault. A sample is *settled* when it is
taken after the warm-up (a tenth of the run, at least 5 minutes) and SETTLE_S or more after
the last fault ended, when every after-effect of a fault is over. It checks, and prints
with each check the bound it applies:

- RSS grows less than 1 MB from the first settled sample to the last;
- the thread count is the same in every settled sample, and so is the fd count;
- zero bytes written to storage by the agent after the warm-up (/proc/PID/io);
- no log line in the quiet periods (from SETTLE_S after a fault to the next one): the agent
  logs state changes, never per telegram;
- readings still flowing at the end, and exit 0 on SIGTERM.

A check without the samples it needs (a run too short to settle) is "not checked", and
counts as failed. The exit status is 0 only if every check passed. --report writes the
figures, with the run's circumstances (scripts/provenance.py), to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.meter.simulator import SimulatedEbz  # noqa: E402
from scripts.provenance import (  # noqa: E402
    ProcessWatch,
    cell,
    code_state,
    machine,
    render_circumstances,
)
from scripts.reliability import SOAK_HEADING  # noqa: E402
from tests.harness.agent import TOPIC_OBIS, AgentConfig  # noqa: E402
from tests.harness.broker import TlsBroker  # noqa: E402
from tests.harness.certs import make_pki  # noqa: E402
from tests.harness.meter import PtyMeter, encode_7e1  # noqa: E402
from tests.harness.observer import Observer  # noqa: E402

# After a fault ends: the rejection summary comes at most once a minute, and network
# retries are capped at 8 s, so 90 s later every after-effect of it is over.
SETTLE_S = 90.0
RSS_GROWTH_MB = 1.0
FAULTS = ("broker restart", "head unplugged", "line noise", "broker frozen")


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the start
    rss_kb: int
    threads: int
    fds: int
    write_bytes: int
    settled: bool


@dataclass(frozen=True)
class Check:
    name: str
    measured: str
    bound: str
    ok: bool | None  # None: not checked (no samples for it), which fails the run

    @property
    def verdict(self) -> str:
        return {True: "ok", False: "**not met**", None: "**not checked**"}[self.ok]


def sample(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    field = {
        k: v.split()[0]
        for k, _, v in (line.partition(":") for line in status.splitlines())
        if v.split()
    }
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {
        "rss_kb": int(field["VmRSS"]),
        "threads": int(field["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "write_bytes": int(io["write_bytes"]),
    }


def checks(
    samples: list[Sample],
    warmup: float,
    log_times: list[float],
    quiet: list[tuple[float, float]],
    flowing: bool,
    exit_code: int | None,
) -> list[Check]:
    """The soak's verdicts, each with exactly the bound it applies."""
    settled = [s for s in samples if s.settled]
    steady = [s for s in samples if s.t >= warmup]
    out = []
    n = f"{len(settled)} settled samples"
    if len(settled) >= 2:
        first, last = settled[0], settled[-1]
        growth = (last.rss_kb - first.rss_kb) / 1024
        out.append(
            Check(
                "RSS growth, first to last settled sample",
                f"{growth:+.2f} MB ({first.rss_kb / 1024:.1f} -> {last.rss_kb / 1024:.1f} MB)",
                f"< {RSS_GROWTH_MB:g} MB",
                growth < RSS_GROWTH_MB,
            )
        )
        for name, key in (("threads", "threads"), ("file descriptors", "fds")):
            values = [getattr(s, key) for s in settled]
            seen = sorted(set(values))
            low, high = (f(getattr(s, key) for s in samples) for f in (min, max))
            out.append(
                Check(
                    f"{name} in the settled samples",
                    f"{', '.join(map(str, seen))} ({n}; all samples: "
                    f"{low if low == high else f'{low}-{high}'})",
                    "one value in every settled sample",
                    len(seen) == 1,
                )
            )
    else:
        for name in ("RSS growth", "threads", "file descriptors"):
            out.append(Check(name, f"not checked: {n}", "needs >= 2 settled samples", None))
    if len(steady) >= 2:
        written = steady[-1].write_bytes - steady[0].write_bytes
        out.append(
            Check(
                "bytes written to storage by the agent after the warm-up",
                str(written),
                "0",
                written == 0,
            )
        )
    else:
        out.append(Check("bytes written", "not checked: < 2 samples after the warm-up", "0", None))
    quiet_s = sum(b - a for a, b in quiet)
    in_quiet = sum(1 for t in log_times if any(a <= t < b for a, b in quiet))
    out.append(
        Check(
            "log lines in the quiet periods",
            f"{in_quiet} in {len(quiet)} periods, {quiet_s / 60:.1f} min "
            f"({len(log_times)} lines in the whole run)",
            f"0 (a quiet period: from {SETTLE_S:g} s after a fault ended to the next fault)",
            (in_quiet == 0) if quiet else None,
        )
    )
    out.append(Check("readings flowing at the end", "yes" if flowing else "no", "yes", flowing))
    out.append(
        Check(
            "exit on SIGTERM",
            "no exit within 10 s" if exit_code is None else str(exit_code),
            "0",
            exit_code == 0,
        )
    )
    return out


def readings_flowing(observer: Observer, timeout: float) -> bool:
    """Whether a reading reaches the broker within `timeout` from now. None coming is the
    check's "no", not an error that would end the soak before it reports."""
    try:
        observer.wait_for(TOPIC_OBIS, timeout=timeout, after=time.monotonic())
    except TimeoutError:
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--fault-every", type=float, default=180, help="seconds")
    ap.add_argument("--report", action="store_true", help="write to docs/reliability.md")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = ap.parse_args()
    duration = args.minutes * 60
    warmup = max(300.0, duration / 10) if duration >= 600 else duration / 3

    code_before = code_state(ROOT)
    watch = ProcessWatch(period=5.0).start()
    work = Path(tempfile.mkdtemp(prefix="tibber-soak-"))
    pki = make_pki(work / "pki")
    broker = TlsBroker(work / "broker", pki).start()
    meter = PtyMeter(work / "ttyIR")
    meter.plug()
    sim = SimulatedEbz(rng=random.Random(1))
    meter.start_pushing(lambda: encode_7e1(sim.next_telegram()), period=1.0)
    observer = Observer(broker, ("$aws/rules/#",)).start()
    config = AgentConfig(
        work / "agent", str(work / "ttyIR"), broker.port, pki, tibber={"keepalive": "10"}
    )
    config.write()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": "8:1"}  # journal format
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(config.path), "run"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=200)
    log_times: list[float] = []

    def drain() -> None:  # ends with the agent's stderr
        assert agent.stderr is not None
        for raw in agent.stderr:
            log_times.append(time.monotonic() - t0)
            tail.append(raw.decode(errors="replace").rstrip())

    drainer = threading.Thread(target=drain, name="agent-log", daemon=True)
    drainer.start()
    samples: list[Sample] = []
    quiet: list[tuple[float, float]] = []  # (start, end) s since t0
    next_fault = t0 + args.fault_every
    last_fault_end = 0.0  # s since t0; the start counts as one
    n_fault = 0
    code: int | None = None
    try:
        while time.monotonic() - t0 < duration:
            left = t0 + duration - time.monotonic()
            time.sleep(max(0.0, min(30.0, next_fault - time.monotonic(), left)))
            now = time.monotonic() - t0
            if agent.poll() is not None:
                print("the agent exited:", agent.returncode, *tail, sep="\n")
                return 1
            settled = now >= warmup and now - last_fault_end >= SETTLE_S
            samples.append(Sample(now, **sample(agent.pid), settled=settled))
            if now + t0 >= next_fault:
                quiet_from = max(warmup, last_fault_end + SETTLE_S)
                if now > quiet_from:
                    quiet.append((quiet_from, now))
                kind = FAULTS[n_fault % len(FAULTS)]
                n_fault += 1
                next_fault += args.fault_every
                print(f"{now / 60:5.1f} min  fault: {kind}", flush=True)
                if kind == "broker restart":
                    broker.kill()
                    time.sleep(3)
                    broker.start()
                    observer.reconnect()
                elif kind == "head unplugged":
                    meter.unplug()
                    time.sleep(5)
                    meter.plug()
                elif kind == "line noise":
                    meter.write(random.Random(n_fault).randbytes(64 * 1024), paced=False)
                else:
                    broker.freeze()
                    time.sleep(25)
                    broker.thaw()
                    observer.reconnect()
                last_fault_end = time.monotonic() - t0
        now = time.monotonic() - t0
        quiet_from = max(warmup, last_fault_end + SETTLE_S)
        if now > quiet_from:
            quiet.append((quiet_from, now))
        flowing = readings_flowing(observer, timeout=15.0)
    finally:
        agent.terminate()
        try:
            code = agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)
        drainer.join(timeout=10)
        observer.stop()
        meter.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    activity = watch.stop()
    code_after = code_state(ROOT)

    results = checks(samples, warmup, log_times, quiet, flowing, code)
    settled_n = sum(s.settled for s in samples)
    run = (
        f"{args.minutes:g} min at 1 telegram/s; {n_fault} faults, one every "
        f"{args.fault_every:g} s in turn: {', '.join(FAULTS)}; warm-up {warmup / 60:.1f} min; "
        f"{len(samples)} samples, {settled_n} settled (>= {SETTLE_S:g} s after a fault ended)"
    )
    print(f"soak: {run}")
    for c in results:
        print(f"  {c.verdict.strip('*'):12} {c.name}: {c.measured} (bound {c.bound})")
    passed = all(c.ok for c in results)
    if args.report:
        command = shlex.join(sys.orig_argv)  # as typed, with the interpreter
        table = render_circumstances(
            command,
            code_before,
            code_after,
            machine(sys.executable),
            activity,
            datetime.datetime.now(datetime.UTC),
        )
        section = [
            SOAK_HEADING.strip("\n"),
            "",
            *table,
            f"| run | {cell(run)} |",
            "",
            "| check | measured | bound | |",
            "|---|---|---|---|",
            *(
                f"| {cell(c.name)} | {cell(c.measured)} | {cell(c.bound)} | {c.verdict} |"
                for c in results
            ),
        ]
        text = args.out.read_text() if args.out.exists() else "# Reliability\n"
        if SOAK_HEADING in text:
            text = text[: text.index(SOAK_HEADING)]
        args.out.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n")
        print(f"wrote the soak section of {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
