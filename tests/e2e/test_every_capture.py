"""Every real capture in ../shared/telegrams through the live path: bytes on a pty as a head
delivers them, the agent with protocol auto (the default), the TLS broker. Per capture:
exactly which frames reach Tibber, on which topic, and why the rest do not."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.test_sml_path import CAPTURES, good_frames
from tests.harness.agent import BASE, BRIDGE_ID, EUI, TOPIC_EVENT
from tests.harness.meter import encode_7e1
from tests.harness.paths import TELEGRAMS, split_telegrams, telegram_file

NODE = f"{BASE}/TFD01/{EUI}/"


def wire(name: str) -> bytes:
    """The bytes a head would deliver: SML as is; text with its 7E1 parity bit (a byte that
    is not 7-bit, e.g. a gateway's 0xFF fill, as it is)."""
    data = telegram_file(name).read_bytes()
    if name.endswith(".hex"):
        return bytes.fromhex(data.decode())
    return b"".join(encode_7e1(bytes([c])) if c < 0x80 else bytes([c]) for c in data)


def text_telegrams(name: str, indexes: range | list[int]) -> list[bytes]:
    """Telegrams of a text capture by position, as obis_stream carries them."""
    found = split_telegrams(telegram_file(name).read_bytes())
    return [found[i].replace(b"\r\n\r\n", b"\r\n", 1) for i in indexes]


def sml(name: str) -> list[bytes]:
    frames = good_frames(wire(name))
    assert [len(f) for f in frames] == CAPTURES[name]  # the oracle agrees with the README
    return frames


# name -> (topic, what Tibber gets, what the log must say about the rest)
EXPECTED: dict[str, tuple[str, object, list[str]]] = {
    # eBZ text: after start each telegram waits for its successor; the last one still waits.
    "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_7telegrams.txt": ("obis_stream", range(7), []),
    "ebz_dd3_2r06eta_iobroker-smartmeter-issue192_2telegrams.crlf-reconstructed.txt": (
        "obis_stream",
        range(2),
        [],
    ),
    # One telegram: held for a successor that never comes; nothing is published.
    "ebz_dd3_2r06eta_rust-test-fixture.txt": ("obis_stream", [], []),
    "ebz_dd3_2r06dta_msb_philippoo66-eBZaehler.crlf-reconstructed.txt": ("obis_stream", [], []),
    # Cut at arbitrary points: no complete telegram.
    "ebz_dd3_bz06eta_msb_ahpohl-smartmeter_single_2020.txt": ("obis_stream", [], []),
    # Decimal numbers in a text file (an 8N1 view with comments): no telegram at all.
    "ebz_dd3_2r06dta_info-reduced_8N1-view_fragments_node-red-contrib-smartmeter-issue41.txt": (
        "obis_stream",
        [],
        [],
    ),
    # Other makers' text: one telegram each, held for its successor.
    "easymeter_q3da1004_v304_dsmr_parser-fixture.txt": ("obis_stream", [], []),
    "easymeter_q3db1024_v304_via-com1-gateway_dsmr_parser-fixture.raw": ("obis_stream", [], []),
    # Mode C readouts pushed as they are: the Iskra's BCC verifies, but a first frame waits
    # for a second (its ident line is outside the BCC); the ACE3000's BCC does not verify.
    "iskra_mt174_modeC-readout_stx-etx-bcc19_python-comment.raw": ("iec", [], []),
    "ace3000_type260_modeC-readout-with-echo-and-garbage_vzlogger-test.raw": (
        "iec",
        [],
        ["BCC mismatch"],
    ),
    # LF LF line ends and no ETX: never a complete frame.
    "landis-gyr_e350_zmf100ac_modeC-readout_vzlogger-test.raw": ("iec", [], []),
    # DSMR P1 (a CRC after '!'): not a protocol the agent reads; nothing is published.
    "dsmr_v42_kaifa_crc6796_dsmr_parser-fixture.txt": ("obis_stream", [], []),
    "dsmr_v50_iskra_am550_2mbus_crc56DD_dsmr_parser-fixture.txt": ("obis_stream", [], []),
    "dsmr_fluvius_v171_crc3AD7_dsmr_parser-fixture.txt": ("obis_stream", [], []),
    "dsmr_unpadded-crc_B9F_heat_dsmr_parser-fixture.txt": ("obis_stream", [], []),
    # SML: every frame whose CRC verifies, at once; the damaged ones named in the log.
    "ebz_dd3_2r06_sml_full-resolution_libsml-testing.hex": ("sml", "crc", []),
    "ebz_dd3_2r06dta-smz1_sml_reduced_4frames_libsml-testing.hex": ("sml", "crc", []),
    "ebz_dd3_bz06dta-smz1_sml_without-pin_2frames_libsml-testing.hex": ("sml", "crc", []),
    "dzg_dvs-7420_sml_negative-power_libsml-testing.hex": ("sml", "crc", []),
    "easymeter_q3a_sml_with-byte-loss-crc-errors_libsml-testing.hex": (
        "sml",
        "crc",
        ["1 CRC mismatch", "2 next start off the 4-byte grid (bytes lost)"],
    ),
}


def test_the_table_covers_every_capture() -> None:
    on_disk = {p.name for p in TELEGRAMS.iterdir()} - {"README.md"} if TELEGRAMS.is_dir() else set()
    if not on_disk:
        telegram_file("README.md")  # NOT PROVEN here: no ../shared
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_capture_through_the_live_path(
    name, agent_config, start_agent, observer, tls_broker, pty_meter
):
    topic, what, said = EXPECTED[name]
    expected = sml(name) if what == "crc" else text_telegrams(name, what)  # type: ignore[arg-type]
    agent_config.tibber["obis_interval"] = "0"
    agent = start_agent()
    observer.wait_for(TOPIC_EVENT, timeout=10)  # readings are never queued for later
    assert pty_meter.wait_opened(10)
    pty_meter.write_all(wire(name))
    if expected:
        observer.wait_count(len(expected), NODE + topic, timeout=10)
    time.sleep(0.5)  # anything else would come now
    got = [(m.topic, m.payload) for m in observer.messages if m.topic.startswith(NODE)]
    assert got == [(NODE + topic, p) for p in expected]
    # QoS and retain as the agent sent them: the broker's log, not a subscriber.
    sent = [p for p in tls_broker.received_publishes(BRIDGE_ID) if p.topic.startswith(NODE)]
    sent = [p for p in sent if not p.topic.endswith("/metric")]
    assert [(p.topic, p.qos, p.retain, p.size) for p in sent] == [
        (NODE + topic, 1, False, len(p)) for p in expected
    ]
    agent.stop()  # the rejections still pending are logged on the way out
    log = agent.log_text()
    for reason in said:
        assert re.search(rf"rejected \d+ \w+: .*{re.escape(reason)}", log), log[-2000:]
