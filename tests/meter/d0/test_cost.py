"""What one D0 telegram costs on one core through the whole pipeline (parity, framing,
grammar, checks), for the EasyMeter capture. Issue 8 asks for the figure; nothing here
asserts wall-clock time (a loaded machine would fail it for no fault of the code)."""

from __future__ import annotations

import time

from agent.meter.d0.pipeline import D0Pipeline
from agent.meter.parity import encode_7e1
from tests.conftest import Figure
from tests.meter.d0.helpers import Q3DA, capture
from tests.meter.d0.test_pipeline import easymeter_successor

TELEGRAMS = 3000


def test_cost_per_easymeter_telegram(figure: Figure) -> None:
    data = capture(Q3DA)
    telegram = data[: data.index(b"!\r\n") + 3]
    trailer = data[len(telegram) :]
    # The real telegram, 1.8.0 counting up as its 1.7.0 power says, with the gateway's
    # trailer: one 7E1 read per telegram, 2 s apart.
    wires = [encode_7e1(easymeter_successor(telegram, i) + trailer) for i in range(TELEGRAMS)]
    best = float("inf")
    for _ in range(3):  # best of three: the least disturbed run on a shared machine
        p = D0Pipeline()
        t0 = time.perf_counter()
        out = [r for i, w in enumerate(wires) for r in p.feed(w, 2.0 * i)]
        best = min(best, time.perf_counter() - t0)
        assert sum(len(r.verdict.publish) for r in out) == TELEGRAMS - 1
        assert sum(p.rejected.values()) == 0
    us = best / TELEGRAMS * 1e6
    measured = (
        f"{us:.0f} us per telegram ({len(telegram)} B + trailer), {1e6 / us:.0f}/s on one core"
    )
    print(f"\nD0 path, EasyMeter Q3DA1004 capture: {measured}")
    figure(
        fault="D0 path cost per telegram",
        injected=f"{TELEGRAMS} EasyMeter Q3DA1004 telegrams (the capture, 1.8.0 counting up) "
        "through parity, framer, grammar and checker, one read each, best of 3 runs",
        measured=measured,
        bound="none: recorded (issue 8 asks for the figure; the meter sends one per 2 s)",
        ok=True,
    )
