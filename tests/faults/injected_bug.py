"""`python -m tests.faults.injected_bug CONFIG BUG`: the agent's `run` with one bug put in.

Everything is the real thing (the config loaded and checked, the supervisor with its threads,
sd_notify, the exit status) except one programming error, injected the way a bug in the
agent would arrive, without replacing any library:

- `keepalive-text`: the Tibber settings carry keepalive "60", a str where an int belongs,
  so paho's connect() raises TypeError in the link's thread;
- `outlet-pipe`: one more outlet after the uplink writes each accepted telegram into a pipe
  whose reading end is closed, so the write raises BrokenPipeError in the meter thread: an
  OSError that has nothing to do with the port.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import logs
from agent.config import check_files, load
from agent.meter.telegram import Telegram
from agent.supervisor import Agent
from agent.systemd import Notifier

BUGS = ("keepalive-text", "outlet-pipe")


class ClosedPipe:
    """An outlet writing into a pipe nobody reads any more (like `tibber-agent demo | head`)."""

    def __init__(self) -> None:
        reading, self._writing = os.pipe()
        os.close(reading)

    def telegrams(self, batch: Sequence[tuple[Telegram, float]]) -> None:
        for t, _ in batch:
            os.write(self._writing, t.raw)


def main(argv: list[str]) -> int:
    config, bug = Path(argv[0]), argv[1]
    if bug not in BUGS:
        raise SystemExit(f"unknown bug {bug!r} (known: {', '.join(BUGS)})")
    logs.setup(logging.INFO)
    settings = load(config)
    assert settings.tibber is not None
    check_files(settings.tibber, settings.mirror)
    if bug == "keepalive-text":
        tibber = dataclasses.replace(settings.tibber, keepalive="60")  # type: ignore[arg-type]
        settings = dataclasses.replace(settings, tibber=tibber)
    agent = Agent(settings, Notifier())
    if bug == "outlet-pipe":
        agent.reader.outlets.append(ClosedPipe())
    return agent.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
