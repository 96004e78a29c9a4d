"""The agent as a subprocess, configured against the test's broker and pty meter."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .certs import Pki
from .paths import REPO_ROOT

# Fictional ids in the formats the bridge uses (never a real user's).
UID = "0123456789abcdef0123456789abcdef"
BRIDGE_ID = "0a1b2c3d4e5f6"
EUI = "0a1b2c3d4e5f6071"
BASE = f"$aws/rules/ingest_tibber_bridge_data/tibber-bridge/{UID}/publish"
TOPIC_EVENT = f"{BASE}/TJH01/{BRIDGE_ID}/event"
TOPIC_BRIDGE_METRIC = f"{BASE}/TJH01/{BRIDGE_ID}/metric"
TOPIC_NODE_METRIC = f"{BASE}/TFD01/{EUI}/metric"
TOPIC_OBIS = f"{BASE}/TFD01/{EUI}/obis_stream"


@dataclass
class AgentConfig:
    """The config.ini a test runs the agent with; write() puts it and the credentials in place."""

    directory: Path
    meter_port: str
    broker_port: int
    pki: Pki
    tibber: dict[str, str] = field(default_factory=dict)
    meter: dict[str, str] = field(default_factory=dict)
    mirror: dict[str, str] = field(default_factory=dict)
    led: dict[str, str] = field(default_factory=lambda: {"enabled": "false"})

    @property
    def path(self) -> Path:
        return self.directory / "config.ini"

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        for src, name in (
            (self.pki.ca, "ca.pem"),
            (self.pki.client_crt, "certificate.pem"),
            (self.pki.client_key, "private.key"),
        ):
            dst = self.directory / name
            if not dst.exists():
                shutil.copyfile(src, dst)
                dst.chmod(0o600)
        sections = {
            "meter": {"port": self.meter_port, "stale_after": "10", **self.meter},
            "tibber": {
                "mqtt_url": "localhost",
                "mqtt_port": str(self.broker_port),
                "ca_cert": "ca.pem",
                "certificate": "certificate.pem",
                "private_key": "private.key",
                "uid": UID,
                "bridge_id": BRIDGE_ID,
                "eui": EUI,
                **self.tibber,
            },
            "mirror": self.mirror,
            "led": self.led,
        }
        lines = []
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {v}" for k, v in values.items()]
            lines.append("")
        self.path.write_text("\n".join(lines))
        return self.path


class AgentProcess:
    """`python -m agent -c CONFIG COMMAND` with its stderr in a file."""

    def __init__(self, config: Path, command: str = "run", env: dict[str, str] | None = None):
        self.config = config
        self.command = command
        self.log_path = config.parent / f"agent-{command}.log"
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.env.pop("JOURNAL_STREAM", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """What is run (a subclass may run another entry point with the same handling)."""
        return [sys.executable, "-m", "agent", "-c", str(self.config), self.command]

    def start(self) -> Self:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in the agent's log:\n{self.log_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with_sig = [signal.SIGCONT, signal.SIGTERM]
        for sig in with_sig:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
