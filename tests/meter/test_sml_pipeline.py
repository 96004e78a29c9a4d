"""The SML pipeline as the reader drives it: wire bytes in, results out, and the reading the
outlets see (values as decimal text in the units the text meters use)."""

from __future__ import annotations

import random

from agent.meter.sml.decode import SmlReading, SmlValue
from agent.meter.sml.pipeline import SmlFrameReading, SmlPipeline
from agent.meter.sml.simulate import SimulatedSml, flip_bits
from agent.meter.validation import Outcome


def test_values_in_the_units_of_text_meters_and_only_known_units() -> None:
    reading = SmlReading(
        server_id=bytes.fromhex("0a01454d480000000001"),
        seconds=12,
        values={
            "1-0:1.8.0*255": SmlValue(44744359959, -5, 30),  # Wh, 10 uWh digits
            "1-0:16.7.0*255": SmlValue(-29912, -2, 27),  # W, feeding in
            "1-0:32.7.0*255": SmlValue(2315, -1, 35),  # V
            "1-0:96.50.1*1": SmlValue(b"EMH", 0, None),  # octets: no number
            "1-0:0.2.0*0": SmlValue(7, 0, 255),  # a unit the outlets do not know
        },
    )
    r = SmlFrameReading(b"frame", reading, {})
    assert r.protocol == "sml" and r.raw == b"frame" and r.ident == ""
    assert r.meter_id == "0a01454d480000000001"
    assert r.values == {"1.8.0": "447.44359959", "16.7.0": "-299.12", "32.7.0": "231.5"}
    assert r.volts == {"32.7.0": 2315}
    assert r.layout == ("", "1-0:1.8.0*255 sml kWh", "1-0:16.7.0*255 sml W", "1-0:32.7.0*255 sml V")


def test_the_layout_is_one_object_while_it_stays() -> None:
    """Home Assistant's announcement is cached by the layout's identity: one tuple per
    layout, not one per frame."""
    rng = random.Random(1)
    meter = SimulatedSml(rng=rng)
    pipeline = SmlPipeline()
    readings = [r.telegram for _ in range(3) for r in pipeline.feed(meter.next_frame(), 0.0)]
    assert len(readings) == 3
    assert readings[0].layout is readings[1].layout is readings[2].layout


def test_damage_is_counted_by_reason_and_nothing_published() -> None:
    rng = random.Random(5)
    meter = SimulatedSml(rng=rng)
    pipeline = SmlPipeline()
    good = pipeline.feed(meter.next_frame(), 0.0)
    assert [r.verdict.outcome for r in good] == [Outcome.ACCEPTED]
    assert good[0].verdict.publish[0].raw == good[0].raw
    bad = pipeline.feed(flip_bits(meter.next_frame(), rng, 3), 1.0)
    assert [r.verdict.outcome for r in bad] == [Outcome.REJECTED]
    assert bad[0].verdict.publish == () and sum(pipeline.rejected.values()) == 1
    assert [r.verdict.outcome for r in pipeline.feed(meter.next_frame(), 2.0)] == [Outcome.ACCEPTED]


def test_a_reopened_port_loses_the_partial_frame_only() -> None:
    rng = random.Random(6)
    meter = SimulatedSml(rng=rng)
    pipeline = SmlPipeline()
    first = meter.next_frame()
    assert pipeline.feed(first[:100], 0.0) == [] and pipeline.framer.pending == 100
    pipeline.resync()
    assert pipeline.framer.pending == 0
    results = pipeline.feed(meter.next_frame(), 1.0)
    assert [r.verdict.outcome for r in results] == [Outcome.ACCEPTED]
