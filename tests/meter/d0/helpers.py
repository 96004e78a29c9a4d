"""Shared by the D0 tests: captures as stored, fed in reads of random sizes."""

from __future__ import annotations

import random

from agent.meter.d0.framing import D0Frame, D0Framer
from agent.meter.d0.pipeline import D0Pipeline
from agent.meter.pipeline import Result
from tests.harness.paths import read_capture

Q3DA = "easymeter_q3da1004_v304_dsmr_parser-fixture.txt"
Q3DB = "easymeter_q3db1024_v304_via-com1-gateway_dsmr_parser-fixture.raw"
E350 = "landis-gyr_e350_zmf100ac_modeC-readout_vzlogger-test.raw"
ACE3000 = "ace3000_type260_modeC-readout-with-echo-and-garbage_vzlogger-test.raw"
MT174 = "iskra_mt174_modeC-readout_stx-etx-bcc19_python-comment.raw"
EBZ_7 = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt"
EBZ_CUT = "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_single_2020.txt"
EBZ_TEXT = (
    EBZ_7,
    "ebz_dd3_2r06eta_rust-test-fixture.txt",
    "ebz_dd3_2r06eta_iobroker-smartmeter-issue192_2telegrams.crlf-reconstructed.txt",
    "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt",
)


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` split into reads of 1 byte to a few hundred (as a USB head delivers them)."""
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 5, 8, 64, rng.randrange(1, 600)))
        out.append(data[pos : pos + step])
        pos += step
    return out


def frames(data: bytes, rng: random.Random | None = None) -> tuple[list[D0Frame], D0Framer]:
    framer = D0Framer()
    reads = chunks(data, rng) if rng is not None else [data]
    return [f for r in reads for f in framer.feed(r)], framer


def pipeline_results(
    data: bytes, rng: random.Random, now: float = 0.0, pipeline: D0Pipeline | None = None
) -> list[Result]:
    """The stored (7-bit) capture through a pipeline whose head strips the parity bit."""
    p = pipeline if pipeline is not None else D0Pipeline(parity="none")
    return [r for read in chunks(data, rng) for r in p.feed(read, now)]


def capture(name: str) -> bytes:
    return read_capture(name)
