"""The agent's state as a person would describe it, and the one-line STATUS derived from it.

Pure: the workers write plain fields (one writer each), the supervisor reads them and
renders the line that `systemctl status` shows and the pattern the LED blinks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class LinkState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REJECTED = "rejected"  # TLS or CONNACK refusal: needs the user (or the broker) to change
    KICKED = "kicked"  # another client keeps taking over our client id
    STOPPED = "stopped"


@dataclass(frozen=True)
class Problem:
    """Why the last attempt failed, in words a user can act on."""

    state: LinkState
    text: str


class MeterHealth(StrEnum):
    STARTING = "starting"
    OK = "ok"
    NO_DATA = "no data"  # port open, nothing valid arriving
    PORT_MISSING = "port missing"  # cannot open the device
    GARBLED = "garbled"  # data arrives but is rejected (parity, validation)


@dataclass
class MeterState:
    """Written by the meter thread only."""

    health: MeterHealth = MeterHealth.STARTING
    detail: str = ""  # e.g. the open error, or the main rejection reason
    port: str = ""
    protocol: str = ""  # [meter] protocol being read
    telegrams_read: int = 0  # framed telegrams, good or bad
    accepted: int = 0
    rejected: int = 0
    last_accepted: float | None = None  # monotonic
    voltage: float | None = None  # the meter's 32.7.0
    heartbeat: float = 0.0  # the meter thread came back from a read at this time


class Pattern(StrEnum):
    """What the LED shows; one per thing the user must tell apart (README table)."""

    OK = "ok"  # steady on, short flicker per telegram sent
    NO_METER = "no meter data"  # slow blink
    NO_CLOUD = "meter ok, Tibber not connected"  # double flash
    NEEDS_USER = "needs you: certificate or id rejected"  # fast blink
    OFF = "off"


def led_pattern(meter: MeterHealth, tibber: LinkState) -> Pattern:
    if tibber in (LinkState.REJECTED, LinkState.KICKED):
        return Pattern.NEEDS_USER
    if meter is not MeterHealth.OK:
        return Pattern.NO_METER
    if tibber is not LinkState.CONNECTED:
        return Pattern.NO_CLOUD
    return Pattern.OK


def status_line(
    meter: MeterState,
    tibber: LinkState,
    tibber_problem: str,
    published: int,
    mirror: LinkState | None = None,
    meters: Sequence[tuple[str, MeterState]] = (),
) -> str:
    """One human line, e.g. 'meter ok (1234 telegrams, 3 rejected); Tibber connected, 617 sent'.
    With [meter:NAME] sections (`meters`), one 'meter NAME …' part per meter."""
    m = "; ".join(_meter_part(f"meter {name}", s) for name, s in meters) or _meter_part(
        "meter", meter
    )
    if tibber is LinkState.CONNECTED:
        t = f"Tibber connected, {published} sent"
    elif tibber_problem:
        t = f"Tibber {tibber}: {tibber_problem}"
    else:
        t = f"Tibber {tibber}"
    line = f"{m}; {t}"
    if mirror is not None:
        line += f"; mirror {mirror}"
    return line


def _meter_part(label: str, meter: MeterState) -> str:
    m = f"{label} {meter.health}"
    if meter.detail and meter.health is not MeterHealth.OK:
        m += f": {meter.detail}"
    return m + f" ({meter.accepted} telegrams, {meter.rejected} rejected)"
