"""What one SML frame costs on one core: transport (framing + CRC), decoding, checking.

Issue 8 asks for the figure; nothing here asserts wall-clock time (a loaded CI machine
would fail it for no fault of the code). The figure goes to docs/reliability.md through
the `figure` fixture and is printed with -s.
"""

from __future__ import annotations

import time

from agent.meter.sml.check import SmlChecker
from agent.meter.sml.decode import SmlReading, decode
from agent.meter.sml.transport import CrcVariant, SmlFrame, SmlFramer, crc_bytes
from tests.conftest import Figure
from tests.meter.sml.test_transport import EBZ_FULL, capture

FRAMES = 3000
# actSensorTime in the eBZ frame: 72 62 01 65 <4 bytes of secIndex>
_SENSOR_TIME = bytes.fromhex("7262016500")


def ebz_stream(count: int) -> list[bytes]:
    """The real 352-byte eBZ frame, its seconds index counting up, its CRC recomputed: a
    meter's stream of frames exactly that shape and size."""
    frame = capture(EBZ_FULL)
    at = frame.index(_SENSOR_TIME) + 4
    first = int.from_bytes(frame[at : at + 4], "big")
    frames = []
    for i in range(count):
        covered = frame[:at] + (first + i).to_bytes(4, "big") + frame[at + 4 : -2]
        frames.append(covered + crc_bytes(CrcVariant.X25, covered))
    return frames


def test_cost_per_frame_of_transport_decode_and_check(figure: Figure) -> None:
    frames = ebz_stream(FRAMES)
    assert all(len(f) == 352 for f in frames)
    best: dict[str, float] = {}
    for _ in range(3):  # best of three: the least disturbed run on a shared machine
        framer, checker = SmlFramer(), SmlChecker()
        t0 = time.perf_counter()
        got: list[SmlFrame] = [o for f in frames for o in framer.feed(f)]  # type: ignore[misc]
        t1 = time.perf_counter()
        readings: list[SmlReading] = [decode(o.file) for o in got]
        t2 = time.perf_counter()
        verdicts = [checker.check(r, o, 0.0) for r, o in zip(readings, got, strict=True)]
        t3 = time.perf_counter()
        assert len(got) == FRAMES and all(v.publish for v in verdicts)
        for stage, seconds in (("transport", t1 - t0), ("decode", t2 - t1), ("check", t3 - t2)):
            best[stage] = min(best.get(stage, float("inf")), seconds)
    us = {stage: seconds / FRAMES * 1e6 for stage, seconds in best.items()}
    total = sum(us.values())
    measured = (
        f"{total:.0f} us per frame ({us['transport']:.0f} transport, {us['decode']:.0f} "
        f"decode, {us['check']:.0f} check), {1e6 / total:.0f} frames/s on one core"
    )
    print(f"\nSML path, eBZ 352-byte frame: {measured}")
    figure(
        fault="SML path cost per frame",
        injected=f"{FRAMES} real-shaped eBZ SML frames (352 B, seconds counting up) through "
        "framer, decoder and checker, one frame per read, best of 3 runs",
        measured=measured,
        bound="none: recorded (issue 8 asks for the figure; the meter sends 1 frame/s)",
        ok=True,
    )
