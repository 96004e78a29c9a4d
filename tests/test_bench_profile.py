"""bench/profile.py's pure parts: reading -X importtime, grouping it, the Pi estimate and
the doc's text (the measurements themselves run in `python -m bench.profile`)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.profile import (
    BOARDS,
    LED_LAYER,
    MemoryLayer,
    Profile,
    Stage,
    StartUp,
    X86Figures,
    by_package,
    least_of,
    markdown,
    parse_importtime,
    pi_estimate,
    x86_figures,
)

LOG = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:       200 |        300 | encodings
import time:        50 |         50 | runpy
import time:        30 |         30 |   agent.state
import time:       400 |        430 | agent.cli
import time:        70 |         70 |     paho
2026-11-30 20:02:18,602 INFO    tibber-agent running: meter starting; Tibber connecting
import time:        80 |        150 |   paho.mqtt
import time:        10 |         10 |     _ssl
import time:        20 |         30 |   ssl
import time:       900 |       1080 | paho.mqtt.client
2026-11-30 20:02:18,677 INFO    tibber: connected to localhost:48597
import time:         5 |          5 | encodings.idna
"""


def test_importtime_rows_take_the_phase_their_top_level_import_ended_in():
    rows = parse_importtime(LOG)
    phases = {r.module: r.phase for r in rows}
    assert phases == {
        "_io": "interpreter",
        "encodings": "interpreter",
        "runpy": "interpreter",
        "agent.state": "ready",
        "agent.cli": "ready",
        # begun in the network thread before READY=1, ended after it
        "paho": "connected",
        "paho.mqtt": "connected",
        "_ssl": "connected",
        "ssl": "connected",
        "paho.mqtt.client": "connected",
        "encodings.idna": "later",
    }
    paho = next(r for r in rows if r.module == "paho")
    assert (paho.self_us, paho.cumulative_us, paho.level, paho.before_ready) == (70, 70, 2, True)
    assert not next(r for r in rows if r.module == "ssl").before_ready


def test_packages_sum_self_time_with_their_accelerators():
    rows = parse_importtime(LOG)
    assert by_package(rows, "ready") == [("agent.cli", 400, 1), ("agent.state", 30, 1)]
    assert by_package(rows, "connected") == [("paho", 1050, 3), ("ssl", 30, 2)]


def test_several_starts_give_each_module_its_least_time():
    slower = LOG.replace(
        "       400 |        430 | agent.cli", "       900 |        930 | agent.cli"
    )
    faster = LOG.replace(
        "        30 |         30 |   agent.state", "        10 |         10 |   agent.state"
    )
    rows = least_of([parse_importtime(faster), parse_importtime(slower)])
    times = {r.module: (r.self_us, r.cumulative_us) for r in rows}
    assert times["agent.cli"] == (400, 430)
    assert times["agent.state"] == (10, 10)
    assert [r.phase for r in rows] == [r.phase for r in parse_importtime(LOG)]


def test_pi_estimate_scales_cpu_by_clock_and_per_clock_ratio_and_not_memory():
    x86 = X86Figures(warm_us=100, cold_us=400, cpu_share=0.001, ready_ms=50, rss_mb=27)
    zero2, pi1 = pi_estimate(x86, 2600)
    for e, board in ((zero2, BOARDS[0]), (pi1, BOARDS[1])):
        assert e.clock_ratio == pytest.approx(2600 / board.mhz)
        assert e.slowdown == pytest.approx(e.clock_ratio * board.per_clock)
        assert e.warm_us == pytest.approx(100 * e.slowdown)
        assert e.cold_us == pytest.approx(400 * e.slowdown)
        assert e.cpu_share == pytest.approx(0.001 * e.slowdown)
        assert e.ready_ms == pytest.approx(50 * e.slowdown)
        assert e.rss_mb == 27
    # Whitham: 31.5x at 3300 vs 700 MHz; the Foundation: the A53 2.5x at 1200 vs 700 MHz.
    assert pi1.board.per_clock == pytest.approx(31.5 * 700 / 3300)
    assert zero2.board.per_clock == pytest.approx(pi1.board.per_clock / (2.5 * 700 / 1200))
    assert 1 < zero2.slowdown < pi1.slowdown


def _profile() -> Profile:
    imports = tuple(parse_importtime(LOG))
    return Profile(
        when="2026-11-30 20:10 UTC",
        machine="Linux, 2 cores",
        cpu_model="x86",
        cpu_mhz=2600,
        python="3.11.7",
        commit="abc1234",
        tree_changed=False,
        startup=StartUp(
            ready_ms=(80.0, 78.0),
            ready_uncached_ms=(97.0,),
            ready_isolated_ms=(71.0, 69.0),
            first_ready_ms=350.0,
            bare_interpreter_ms=60.0,
            bare_isolated_ms=16.0,
            rss_ready_mb=18.0,
            rss_connected_mb=27.3,
            rss_bare_mb=13.0,
            imports=imports,
            checkout_has_bytecode=False,
        ),
        memory=(MemoryLayer("the interpreter (-S)", 10.5), MemoryLayer("+ paho", 24.5)),
        stages=(Stage("parsing", 9.0, 120.0, 170.0), Stage("publish", 60.0, 300.0, 500.0)),
        pipeline_warm_us=25.0,
        publish_network_thread_us=80.0,
        publish_dropped=0,
        metrics_us=55.0,
        metrics_cold_us=300.0,
        bridge_metric_interval=120.0,
        node_metric_interval=300.0,
        steady_path_cold_us=420.0,
        steady_path_publishing_us=590.0,
        steady_path_quiet_us=250.0,
        steady_path_max_us=640.0,
        steady_telegrams=12,
        steady_published=6,
        log_records=0,
        handshake_ms={"RSA-2048": 1.8},
        trimmed_ms=4.5,
        trimmed_mb=1.2,
    )


def test_markdown_states_the_measured_figures_and_calls_the_pi_an_estimate():
    text = markdown(_profile(), cpu_share=0.0012)
    assert "READY=1 takes 78 ms" in text  # the best start
    assert "takes 69 ms" in text  # the best start without site hooks
    assert "| agent.cli | 0.4 ms | 1 |" in text
    assert "| paho | 1.1 ms | 3 |" in text
    assert "0.1 ms of its imports had ended before READY=1" in text  # paho's 70 us
    assert "| + paho | 24.5 MB | +14.0 MB |" in text
    assert "| all stages | 69 µs | 420 µs | |" in text
    assert "0 log records" in text
    assert "agent.tibber.probe, subprocess, shutil" in text
    assert "they add 4.5 ms and 1.2 MB" in text
    assert "estimated (not measured)" in text
    zero2 = pi_estimate(X86Figures(69, 420, 0.0012, 69, 27.3), 2600)[0]
    assert f"{zero2.slowdown:.0f}x" in text
    assert f"about {zero2.cpu_share * 100:.1f} % on the Raspberry Pi Zero 2 W" in text


def test_a_pis_memory_includes_the_led_layer_this_machine_does_not_load():
    """Off a Pi the agent never imports gpiozero, so the benchmark's RSS lacks it; the Pi
    estimate adds what the LED's layer measured, and the text says how much."""
    with_led = _profile()
    with_led = dataclasses.replace(
        with_led,
        memory=(*with_led.memory, MemoryLayer(LED_LAYER, 28.0)),
    )
    assert x86_figures(_profile()).rss_mb == pytest.approx(27.3)
    assert x86_figures(with_led).rss_mb == pytest.approx(27.3 + 3.5)
    text = markdown(with_led)
    assert "on a Pi its layer above adds 3.5 MB" in text
    assert "| ≈ 31 MB |" in text  # 27.3 + 3.5, not scaled
