#!/usr/bin/env python3
"""Soak: the agent for an hour at one telegram per second, with a fault every few minutes.

    python3 scripts/soak.py [--minutes 60] [--fault-every 180] [--report]

Real parts as in the tests (a client-certificate TLS mosquitto, a pty IR head, the agent
as a subprocess whose stderr goes to a pipe, as under journald). Faults cycle through:
broker restart, IR head unplugged and replugged, 64 KB of line noise, broker frozen for
twice the keepalive. After a warm-up (a tenth of the run, at least 5 minutes) it checks:
RSS grows < 1 MB, no thread or file descriptor leak, zero bytes written to storage by
the agent (/proc/PID/io write_bytes), and readings still flowing. --report appends the
figures to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.meter.simulator import SimulatedEbz  # noqa: E402
from tests.harness.agent import TOPIC_OBIS, AgentConfig  # noqa: E402
from tests.harness.broker import TlsBroker  # noqa: E402
from tests.harness.certs import make_pki  # noqa: E402
from tests.harness.meter import PtyMeter, encode_7e1  # noqa: E402
from tests.harness.observer import Observer  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--fault-every", type=float, default=180, help="seconds")
    ap.add_argument("--report", action="store_true", help="append to docs/reliability.md")
    args = ap.parse_args()
    duration = args.minutes * 60
    warmup = max(300.0, duration / 10) if duration >= 600 else duration / 3

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
    tail: deque[str] = deque(maxlen=200)
    lines = [0]

    def drain() -> None:
        assert agent.stderr is not None
        for raw in agent.stderr:
            tail.append(raw.decode(errors="replace").rstrip())
            lines[0] += 1

    threading.Thread(target=drain, daemon=True).start()
    faults = ["broker restart", "head unplugged", "line noise", "broker frozen"]
    samples: list[tuple[float, dict[str, int]]] = []
    t0 = time.monotonic()
    next_fault = t0 + args.fault_every
    n_fault = 0
    try:
        while time.monotonic() - t0 < duration:
            time.sleep(min(30.0, max(0.0, next_fault - time.monotonic())))
            now = time.monotonic()
            if agent.poll() is not None:
                print("the agent exited:", agent.returncode, *tail, sep="\n")
                return 1
            samples.append((now - t0, sample(agent.pid)))
            if now >= next_fault:
                kind = faults[n_fault % len(faults)]
                n_fault += 1
                next_fault += args.fault_every
                print(f"{(now - t0) / 60:5.1f} min  fault: {kind}", flush=True)
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
        flowing = observer.wait_for(TOPIC_OBIS, timeout=15, after=time.monotonic())
    finally:
        agent.terminate()
        code = agent.wait(10)
        observer.stop()
        meter.close()
        broker.stop()

    steady = [s for t, s in samples if t >= warmup]
    first, last = steady[0], steady[-1]
    rss_growth_mb = (last["rss_kb"] - first["rss_kb"]) / 1024
    threads = {s["threads"] for s in steady}
    fds = {s["fds"] for s in steady}
    written = last["write_bytes"] - first["write_bytes"]
    checks = [
        (
            "RSS growth after warm-up",
            f"{rss_growth_mb:+.2f} MB "
            f"({first['rss_kb'] / 1024:.1f} -> {last['rss_kb'] / 1024:.1f} MB)",
            "< 1 MB",
            rss_growth_mb < 1,
        ),
        (
            "threads after warm-up",
            ", ".join(map(str, sorted(threads))),
            "constant",
            len(threads) <= 2,
        ),
        (
            "file descriptors after warm-up",
            ", ".join(map(str, sorted(fds))),
            "no growth",
            max(fds) - min(fds) <= 2,
        ),
        ("bytes written to storage by the agent", str(written), "0", written == 0),
        ("readings flowing at the end", "yes" if flowing else "no", "yes", bool(flowing)),
        ("exit on SIGTERM", str(code), "0", code == 0),
        ("log lines in the run", str(lines[0]), "one per state change", True),
    ]
    print(f"soak: {args.minutes:g} min, {n_fault} faults, warm-up {warmup / 60:.1f} min")
    for name, measured, bound, ok in checks:
        print(f"  {'ok ' if ok else 'NOT'} {name}: {measured} (bound {bound})")
    if args.report:
        out = ROOT / "docs" / "reliability.md"
        text = out.read_text() if out.exists() else "# Reliability\n"
        if "\n## Soak\n" in text:
            text = text[: text.index("\n## Soak\n")]
        text += (
            f"\n## Soak\n\n`python3 scripts/soak.py --minutes {args.minutes:g} --report` on "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC: {args.minutes:g} min at "
            f"1 telegram/s, {n_fault} faults (every {args.fault_every:g} s: "
            f"{', '.join(faults)}), warm-up {warmup / 60:.1f} min.\n\n"
            "| check | measured | bound | |\n|---|---|---|---|\n"
            + "".join(
                f"| {n} | {m} | {b} | {'ok' if ok else '**not met**'} |\n" for n, m, b, ok in checks
            )
        )
        out.write_text(text)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
