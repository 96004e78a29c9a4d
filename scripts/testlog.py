"""A pytest plugin (`-p scripts.testlog`) that writes each test's times and outcome as JSON
lines to $TEST_LOG, for scripts/reliability.py: when each test ran (to tell which other
processes ran meanwhile) and how it ended (so a failure or a skip is named in the report,
not only counted)."""

from __future__ import annotations

import json
import os
import time

import pytest


def _write(row: dict[str, object]) -> None:
    path = os.environ.get("TEST_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def pytest_runtest_logstart(nodeid: str) -> None:
    _write({"test": nodeid, "event": "start", "t": time.time()})


def pytest_runtest_logfinish(nodeid: str) -> None:
    _write({"test": nodeid, "event": "finish", "t": time.time()})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:  # a module that does not import: its tests never run
        _write(
            {
                "test": report.nodeid,
                "event": "collect",
                "outcome": "failed",
                "seconds": 0,
                "reason": str(report.longrepr).strip().splitlines()[-1].removeprefix("E").strip(),
            }
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.passed and report.when != "call":
        return
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        reason = crash.message if crash is not None else str(report.longrepr).splitlines()[-1]
    _write(
        {
            "test": report.nodeid,
            "event": report.when,
            "outcome": report.outcome,
            "seconds": round(report.duration, 3),
            "reason": reason.splitlines()[0] if reason else "",
        }
    )
