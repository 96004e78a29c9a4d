"""A system test the machine cannot run is NOT PROVEN ON THIS MACHINE, said loudly at the end
of the run (tests/conftest.py), never a quiet skip: installing and booting the service is
what these tests prove, and a skip reason among the others is easily missed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import record_not_proven


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_machine(why_not=f): f() says why this machine cannot run the test, or None",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("needs_machine"):
            # A keyword: a mark given one callable positionally would decorate it instead.
            why_not: Callable[[], str | None] = mark.kwargs["why_not"]
            reason = why_not()
            if reason:
                record_not_proven(config, item.nodeid, reason)
                item.add_marker(pytest.mark.skip(reason=f"NOT PROVEN ON THIS MACHINE: {reason}"))
                break
