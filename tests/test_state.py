"""The one-line STATUS and the LED pattern, for each combination a user must tell apart."""

from __future__ import annotations

import itertools

import pytest

from agent.mqtt import LinkState
from agent.state import MeterHealth, MeterState, Pattern, led_pattern, status_line

NOT_CONNECTED = (LinkState.CONNECTING, LinkState.STOPPED)
NEEDS_USER = (LinkState.REJECTED, LinkState.KICKED)
METER_BAD = (
    MeterHealth.STARTING,
    MeterHealth.NO_DATA,
    MeterHealth.PORT_MISSING,
    MeterHealth.GARBLED,
)


def meter(
    health: MeterHealth, detail: str = "", accepted: int = 1234, rejected: int = 3
) -> MeterState:
    return MeterState(health=health, detail=detail, accepted=accepted, rejected=rejected)


# --- LED -----------------------------------------------------------------------------------------


def test_everything_fine_is_steady() -> None:
    assert led_pattern(MeterHealth.OK, LinkState.CONNECTED) is Pattern.OK


@pytest.mark.parametrize("health", METER_BAD)
def test_no_meter_data_blinks_slowly_whatever_the_cloud(health: MeterHealth) -> None:
    for link in (LinkState.CONNECTED, *NOT_CONNECTED):
        assert led_pattern(health, link) is Pattern.NO_METER


@pytest.mark.parametrize("link", NOT_CONNECTED)
def test_meter_fine_but_no_cloud_double_flashes(link: LinkState) -> None:
    assert led_pattern(MeterHealth.OK, link) is Pattern.NO_CLOUD


@pytest.mark.parametrize("link", NEEDS_USER)
def test_rejected_credentials_or_a_kick_loop_need_the_user_whatever_the_meter(
    link: LinkState,
) -> None:
    for health in MeterHealth:
        assert led_pattern(health, link) is Pattern.NEEDS_USER


def test_every_combination_has_exactly_one_documented_pattern() -> None:
    seen = {led_pattern(h, link) for h, link in itertools.product(MeterHealth, LinkState)}
    assert seen == {Pattern.OK, Pattern.NO_METER, Pattern.NO_CLOUD, Pattern.NEEDS_USER}


# --- STATUS line ---------------------------------------------------------------------------------


def test_all_well() -> None:
    line = status_line(meter(MeterHealth.OK), LinkState.CONNECTED, "", published=617)
    assert line == "meter ok (1234 telegrams, 3 rejected); Tibber connected, 617 sent"


def test_all_well_with_the_mirror() -> None:
    line = status_line(
        meter(MeterHealth.OK), LinkState.CONNECTED, "", published=617, mirror=LinkState.CONNECTED
    )
    assert (
        line
        == "meter ok (1234 telegrams, 3 rejected); Tibber connected, 617 sent; mirror connected"
    )


def test_the_detail_of_an_ok_meter_is_not_shown() -> None:
    line = status_line(meter(MeterHealth.OK, "stale detail"), LinkState.CONNECTED, "", 1)
    assert "stale detail" not in line


@pytest.mark.parametrize(
    ("health", "detail", "text"),
    [
        (MeterHealth.STARTING, "", "meter starting (0 telegrams, 0 rejected)"),
        (
            MeterHealth.PORT_MISSING,
            "/dev/ttyUSB0: No such file or directory",
            "meter port missing: /dev/ttyUSB0: No such file or directory (0 telegrams, 0 rejected)",
        ),
        (
            MeterHealth.NO_DATA,
            "nothing for 12 s",
            "meter no data: nothing for 12 s (0 telegrams, 0 rejected)",
        ),
        (
            MeterHealth.GARBLED,
            "parity error",
            "meter garbled: parity error (0 telegrams, 0 rejected)",
        ),
    ],
)
def test_meter_problems_say_what_and_why(health: MeterHealth, detail: str, text: str) -> None:
    line = status_line(meter(health, detail, 0, 0), LinkState.CONNECTING, "", published=0)
    assert line == f"{text}; Tibber connecting"


@pytest.mark.parametrize(
    ("link", "problem", "text"),
    [
        (LinkState.CONNECTING, "", "Tibber connecting"),
        (LinkState.CONNECTING, "broker unreachable", "Tibber connecting: broker unreachable"),
        (LinkState.REJECTED, "certificate rejected", "Tibber rejected: certificate rejected"),
        (
            LinkState.KICKED,
            "another client uses this id",
            "Tibber kicked: another client uses this id",
        ),
        (LinkState.STOPPED, "", "Tibber stopped"),
        (LinkState.CONNECTED, "ignored when connected", "Tibber connected, 5 sent"),
    ],
)
def test_tibber_states_with_and_without_a_problem(link: LinkState, problem: str, text: str) -> None:
    line = status_line(meter(MeterHealth.OK, accepted=9, rejected=0), link, problem, published=5)
    assert line == f"meter ok (9 telegrams, 0 rejected); {text}"


@pytest.mark.parametrize("mirror", list(LinkState))
def test_mirror_state_is_appended_only_when_enabled(mirror: LinkState) -> None:
    base = status_line(meter(MeterHealth.OK), LinkState.CONNECTED, "", 1)
    assert "mirror" not in base
    assert status_line(meter(MeterHealth.OK), LinkState.CONNECTED, "", 1, mirror) == (
        f"{base}; mirror {mirror}"
    )


def test_every_combination_is_one_line() -> None:
    for health, link in itertools.product(MeterHealth, LinkState):
        line = status_line(meter(health, "detail"), link, "problem", 3, LinkState.CONNECTING)
        assert "\n" not in line
        assert line.startswith(f"meter {health}")
        assert f"Tibber {link}" in line


def test_status_names_each_of_several_meters() -> None:
    house = MeterState(health=MeterHealth.OK, accepted=10, rejected=1)
    heat = MeterState(health=MeterHealth.NO_DATA, detail="no data from the IR head")
    line = status_line(house, LinkState.CONNECTED, "", 7, meters=[("house", house), ("heat", heat)])
    assert line == (
        "meter house ok (10 telegrams, 1 rejected); "
        "meter heat no data: no data from the IR head (0 telegrams, 0 rejected); "
        "Tibber connected, 7 sent"
    )
