"""What a machine cannot prove is said at the end of the run, never a quiet skip.

A user's clone has no ../shared beside it, so the tests that read the real captures and
the protocol notes cannot run there. They must end in the run summary's NOT PROVEN ON THIS
MACHINE block (tests/conftest.py), as the README promises, like a system test on a machine
without nspawn. Shown with a copy of this checkout where ../shared is absent, run by pytest
as a user would run it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness.paths import NOT_PROVEN, REPO_ROOT

# One test per way of reaching ../shared: a capture through paths.read_capture, the
# protocol notes through paths.shared_file, and test_simulator's own capture helper.
READERS = [
    "tests/harness/test_harness.py::test_split_capture",
    "tests/tibber/test_payloads.py::test_shapes_match_the_documented_captures",
    "tests/meter/test_simulator.py::test_layout_matches_the_ahpohl_capture_line_by_line",
]


def test_a_clone_without_shared_lists_what_it_could_not_prove(tmp_path: Path) -> None:
    clone = tmp_path / "tibber-agent"  # no tmp_path/shared beside it
    shutil.copytree(
        REPO_ROOT,
        clone,
        ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", ".*_cache", "docs"),
    )
    assert not (tmp_path / "shared").exists()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *READERS],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr  # skipped, nothing failed
    assert f"{len(READERS)} skipped" in out, out
    heading = re.search(r"^!+ NOT PROVEN ON THIS MACHINE !+$", out, re.M)
    assert heading, out
    block = out[heading.end() :]
    for nodeid in READERS:
        line = next((x for x in block.splitlines() if x.startswith(f"{nodeid}: ")), "")
        assert "needs ../shared/" in line and "is not here" in line, (nodeid, block)
        assert NOT_PROVEN not in line, line  # the reason, not the marker twice
    assert f"{len(READERS)} check(s) above did not run here: not a pass" in block, block
