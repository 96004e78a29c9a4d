"""The service's start loads only what `run` needs (issue 10: the import footprint).

`tibber-agent run` goes through the command line, the supervisor and everything it wires
before it reads the config; with a config that does not exist it ends there (exit 78),
having imported what every start imports before READY=1. Modules only `check`, `monitor`,
`demo` or a Wi-Fi Pi's metrics use must not be among them. The interpreter runs with -S
so that this environment's site hooks (.pth files) import nothing on the agent's behalf.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys

from tests.harness.paths import REPO_ROOT

# What each is for, and so why a start of the service must not load it.
NOT_AT_START = {
    "agent.tibber.probe": "check's connection test",
    "subprocess": "the `iw` call of a Wi-Fi Pi's metrics",
    "shutil": "argparse's terminal width, `iw`'s lookup (with zlib, bz2, lzma)",
    "bz2": "shutil's archives",
    "lzma": "shutil's archives",
    "agent.bridge": "import-bridge",
    "agent.meter.simulator": "demo",
    "agent.meter.sml": "protocol sml",
    "agent.meter.d0": "protocol d0 and iec",
    "agent.credentials": "check",
    "gpiozero": "the LED thread, once it starts",
    "paho": "the network thread, after READY=1",
    "agent.mirror": "[mirror] enabled",
    "agent.homeassistant": "[mirror] home_assistant",
}

PROBE = """
import json, sys
import agent.cli
code = agent.cli.main(["-c", sys.argv[1], "run"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_run_loads_nothing_that_only_other_commands_need(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *site.getsitepackages()]),
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, str(tmp_path / "missing.ini")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 78, done.stderr  # EX_CONFIG: it got as far as the config
    loaded = set(result["modules"])
    assert "agent.supervisor" in loaded  # the path up to READY was taken
    found = {
        name: why
        for name, why in NOT_AT_START.items()
        if name in loaded or any(m.startswith(name + ".") for m in loaded)
    }
    assert not found, f"loaded by every start of the service, though only for: {found}"
