"""The fault-injection suite (issue 4): each fault, how it was injected, what was measured.

Every test records its measured figure with `figure(...)`. `scripts/reliability.py` runs the
suite at full scale (FAULT_SCALE) and turns the records into docs/reliability.md; in CI the
counts are scaled down, never the bounds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

# CI runs the suite at scale 1 (minutes); scripts/reliability.py at a larger scale.
SCALE = float(os.environ.get("FAULT_SCALE", "1"))
RESULTS = os.environ.get("FAULT_RESULTS")  # a JSON-lines file the figures are appended to

Figure = Callable[..., None]


def scaled(n: int, minimum: int = 1) -> int:
    """A count for this run: n at scale 1."""
    return max(minimum, round(n * SCALE))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """figure(fault, injected, measured, bound, ok, **details): one row of the report."""

    def record(
        fault: str, injected: str, measured: str, bound: str, ok: bool, **details: object
    ) -> None:
        row = {
            "test": request.node.nodeid,
            "fault": fault,
            "injected": injected,
            "measured": measured,
            "bound": bound,
            "ok": bool(ok),
            "scale": SCALE,
            **details,
        }
        if RESULTS:
            with Path(RESULTS).open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return record
