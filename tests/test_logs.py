"""Logs: syslog priorities under systemd (journal), timestamps elsewhere; no key material."""

from __future__ import annotations

import logging

import pytest

from agent.logs import JournalFormatter, setup


def test_journal_lines_carry_the_priority_and_no_timestamp():
    f = JournalFormatter("%(message)s")
    for level, prio in (
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (logging.CRITICAL, 2),
    ):
        rec = logging.LogRecord("agent", level, __file__, 1, "meter: ok", None, None)
        assert f.format(rec) == f"<{prio}>meter: ok"


def test_every_line_of_a_multi_line_entry_keeps_its_priority():
    f = JournalFormatter("%(message)s")
    rec = logging.LogRecord("agent", logging.ERROR, __file__, 1, "a\nb", None, None)
    assert f.format(rec) == "<3>a\n<3>b"


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    root.handlers[:], level = saved
    root.setLevel(level)


def test_setup_picks_the_journal_format_under_systemd(monkeypatch, capsys, root_logger):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup()
    logging.getLogger("agent.test").warning("tibber: connection lost")
    assert capsys.readouterr().err == "<4>tibber: connection lost\n"
    monkeypatch.delenv("JOURNAL_STREAM")
    setup()
    logging.getLogger("agent.test").info("meter: ok")
    err = capsys.readouterr().err
    assert err.endswith("INFO    meter: ok\n") and err[:4].isdigit()  # a timestamp first


def test_key_material_never_reaches_the_log(start_agent, agent_config, observer, pushing_meter):
    """A full run, including a TLS failure (a key that does not match): the log never holds
    PEM data, whatever goes wrong."""
    from tests.harness.agent import TOPIC_OBIS
    from tests.harness.certs import mismatched_key

    agent = start_agent()
    observer.wait_for(TOPIC_OBIS, timeout=10)
    key = agent_config.directory / "private.key"
    key.write_bytes(mismatched_key(agent_config.directory).read_bytes())
    agent.stop()
    agent = start_agent()
    agent.wait_for_log("private_key does not belong to certificate", timeout=10)
    text = agent.log_text()
    assert "BEGIN" not in text and "PRIVATE" not in text.upper().replace("PRIVATE_KEY", "")
