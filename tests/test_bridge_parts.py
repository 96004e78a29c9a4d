"""The pure parts of import-bridge: the [tibber] section edited in place, PEM values checked
(and never repeated), the bridge's parameter list read by name."""

from __future__ import annotations

import configparser

import pytest

from agent.bridge import inifile, pem
from agent.bridge.extract import Document, DocumentError, param_values, pulse_node
from tests.harness.certs import Pki

# ---------------------------------------------------------------------------- inifile
USER_CONFIG = """\
# my meter
[meter]
port = /dev/ttyIRhead

[tibber]
# from the PARAMS page
mqtt_url = old.example
UID: 0123
client_id = first
    continued
; a comment
keepalive = 30

[led]
enabled = false
"""


def test_keys_are_replaced_where_they_stand_and_everything_else_is_kept() -> None:
    new = inifile.set_keys(
        USER_CONFIG, "tibber", {"mqtt_url": "broker.example", "uid": "ab", "client_id": ""}
    )
    assert new == USER_CONFIG.replace(
        "mqtt_url = old.example", "mqtt_url = broker.example"
    ).replace("UID: 0123", "uid = ab").replace("client_id = first\n    continued", "client_id =")


def test_missing_keys_go_after_the_sections_last_key() -> None:
    new = inifile.set_keys(USER_CONFIG, "tibber", {"eui": "0a", "bridge_id": "0b"})
    assert "keepalive = 30\neui = 0a\nbridge_id = 0b\n\n[led]" in new
    assert new.replace("eui = 0a\nbridge_id = 0b\n", "") == USER_CONFIG


def test_a_missing_section_goes_at_the_end() -> None:
    text = "[meter]\nport = /dev/x"  # no final newline
    assert inifile.set_keys(text, "tibber", {"uid": "ab"}) == (
        "[meter]\nport = /dev/x\n\n[tibber]\nuid = ab\n"
    )
    assert inifile.set_keys("", "tibber", {"uid": "ab"}) == "[tibber]\nuid = ab\n"


def test_crlf_files_stay_crlf() -> None:
    text = "[tibber]\r\nuid = 1\r\n"
    assert inifile.set_keys(text, "tibber", {"uid": "2", "eui": "3"}) == (
        "[tibber]\r\nuid = 2\r\neui = 3\r\n"
    )


def test_the_result_reads_back_as_set_in_configparser() -> None:
    values = {"mqtt_url": "b.example", "uid": "ab", "client_id": "", "eui": "0a"}
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string(inifile.set_keys(USER_CONFIG, "tibber", values))
    assert {k: parser["tibber"][k] for k in values} == values
    assert parser["tibber"]["keepalive"] == "30"
    assert parser["meter"]["port"] == "/dev/ttyIRhead"


def test_a_config_the_agent_could_not_read_is_refused() -> None:
    with pytest.raises(inifile.IniError, match="section 'tibber' already exists"):
        inifile.check("[tibber]\n[tibber]\n", "config.ini")


# ---------------------------------------------------------------------------- pem
def test_crlf_pem_is_written_with_lf(pki: Pki) -> None:
    text = pki.client_crt.read_text()
    block = pem.parse(text.replace("\n", "\r\n") + "\0\0", pem.CERTIFICATE_LABELS)
    assert block.text == text.strip() + "\n"
    assert block.labels == ("CERTIFICATE",)


def test_a_chain_is_several_blocks(pki: Pki) -> None:
    two = pki.client_crt.read_text() + pki.ca.read_text()
    assert pem.parse(two, pem.CERTIFICATE_LABELS).labels == ("CERTIFICATE", "CERTIFICATE")


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda t: t[: len(t) // 2], "is cut short: its BEGIN CERTIFICATE block has no END"),
        (lambda t: t.replace("END CERTIFICATE", "END X509 CRL"), "ends with END X509 CRL"),
        (lambda t: t.replace("-----\n", "-----\n!!!!", 1), "is not valid base64"),
        (lambda t: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "block is empty"),
        (lambda t: "-----BEGIN CERT\nAAAA", "has a -----BEGIN line but no complete PEM block"),
    ],
    ids=["truncated", "wrong-end", "bad-base64", "empty-block", "no-block"],
)
def test_damaged_pems_are_named(pki: Pki, mangle: object, problem: str) -> None:
    text = pki.client_crt.read_text()
    with pytest.raises(pem.PemError, match=problem):
        pem.parse(mangle(text), pem.CERTIFICATE_LABELS)  # type: ignore[operator]


def test_a_key_where_a_certificate_belongs_is_named_without_showing_it(pki: Pki) -> None:
    key = pki.client_key.read_text()
    with pytest.raises(pem.PemError) as e:
        pem.parse(key, pem.CERTIFICATE_LABELS)
    assert "PRIVATE KEY block where a CERTIFICATE belongs" in str(e.value)
    body = [line for line in key.splitlines() if not line.startswith("-----")]
    assert not any(line in str(e.value) for line in body)


def test_an_encrypted_key_is_refused() -> None:
    label = "ENCRYPTED PRIVATE " + "KEY"  # put together here: no key-like block in the source
    text = f"-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n"
    with pytest.raises(pem.PemError, match="is an encrypted ENCRYPTED PRIVATE KEY"):
        pem.parse(text, (*pem.KEY_LABELS, "ENCRYPTED PRIVATE KEY"))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "is not in the bridge's list (hidden)"),
        ("", "is empty (hidden)"),
        ("\0\0\0", "is empty (hidden)"),
        ("••••••", "is masked (6 times '•', no PEM block)"),
        ("secret-ish text", "is not PEM text (15 characters without a -----BEGIN line)"),
    ],
)
def test_hidden_values_are_described_not_repeated(value: str | None, shown: str) -> None:
    assert pem.describe_hidden(value) == shown


# ---------------------------------------------------------------------------- documents
def test_params_are_picked_by_name_from_their_value_lists() -> None:
    doc = Document(
        "/params.json",
        b'[{"param_id":11,"name":"mqtt_port","type":"int","value":[8883]},'
        b'{"param_id":12,"name":"mqtt_valid","type":"bool","value":[true]},'
        b'{"param_id":42,"name":"mqtt_client_id","value":["0a1b2c3d4e5f6\\u0000"]},'
        b'{"param_id":9,"name":"mqtt_topic","value":["tibber-bridge/","x/publish"]},'
        b'{"param_id":7,"name":"private_key","value":[]}]',
    )
    assert param_values(doc) == {
        "mqtt_port": "8883",
        "mqtt_valid": "true",
        "mqtt_client_id": "0a1b2c3d4e5f6",
        "mqtt_topic": "tibber-bridge/x/publish",
        "private_key": "",
    }


@pytest.mark.parametrize(
    "body",
    [b"<html></html>", b'{"name": "x"}', b"[1, 2]", b"[]"],
    ids=["html", "object", "numbers", "empty"],
)
def test_a_document_that_is_not_the_params_list_is_named(body: bytes) -> None:
    with pytest.raises(DocumentError, match=r"^params\.json "):
        param_values(Document("params.json", body))


def test_the_pulse_node_is_the_tfd01() -> None:
    doc = Document(
        "/nodes.json",
        b'[{"node_id":2,"product_model":"TBF01","eui":"aaaaaaaaaaaaaaaa"},'
        b'{"node_id":3,"product_model":"TFD01","eui":"0a1b2c3d4e5f6071"}]',
    )
    node = pulse_node(doc)
    assert (node.eui, node.node_id) == ("0a1b2c3d4e5f6071", 3)
    one = pulse_node(Document("/nodes.json", b'{"node_id":1,"eui":"0a1b2c3d4e5f6071"}'))
    assert (one.eui, one.node_id) == ("0a1b2c3d4e5f6071", 1)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'[{"product_model":"TBF01","eui":"aa"}]', r"lists no TFD01 node \(models: TBF01\)"),
        (
            b'[{"product_model":"TFD01","eui":"aa"},{"product_model":"TFD01","eui":"bb"}]',
            r"lists 2 TFD01 nodes \(aa, bb\): pick one",
        ),
    ],
)
def test_no_or_several_pulse_nodes_are_named(body: bytes, problem: str) -> None:
    with pytest.raises(DocumentError, match=problem):
        pulse_node(Document("/nodes.json", body))
