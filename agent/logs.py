"""Logging to stderr; under systemd, syslog priorities instead of timestamps.

journald reads a `<N>` prefix as the line's priority (sd-daemon(3)), so
`journalctl -u tibber-agent -p warning` shows only trouble, and adds its own timestamps.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # One journal entry per line: continuation lines keep the priority.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # gpiozero warns once per pin library it tries; the agent says in one line that the
    # LED is disabled, and why.
    warnings.filterwarnings("ignore", module=r"gpiozero\.")
