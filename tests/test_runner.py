"""The README's test command runs the tests on Debian's own Python, in a venv of its own.

`sudo bash tests/run.sh` builds .venv-test/ with /usr/bin/python3 (Debian refuses `pip install`
into its Python, PEP 668) and starts pytest from it with TIBBER_TEST_RUNNER=run.sh. This test
looks at the interpreter that is running it. `.ci/run` sets TIBBER_TEST_REQUIRE_RUNNER=run.sh,
so in CI the check cannot turn into a skip.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import agent
from tests.harness.paths import REPO_ROOT, libfaketime, multiarch

DEBIAN_PYTHON = Path("/usr/bin/python3")
RUNNER = os.environ.get("TIBBER_TEST_RUNNER", "")
REQUIRED = os.environ.get("TIBBER_TEST_REQUIRE_RUNNER", "")


def test_ci_runs_the_readme_command() -> None:
    """.ci/run demands the runner; a pytest started some other way must not pass for it."""
    if REQUIRED and RUNNER != REQUIRED:
        pytest.fail(f"TIBBER_TEST_REQUIRE_RUNNER={REQUIRED} but pytest runs under {RUNNER!r}")


@pytest.mark.skipif(
    RUNNER != "run.sh" and not REQUIRED,
    reason="pytest was not started by tests/run.sh (the README command; .ci/run starts it so)",
)
def test_run_sh_runs_pytest_in_a_venv_of_debians_python() -> None:
    venv = REPO_ROOT / ".venv-test"
    assert Path(sys.prefix) == venv, f"pytest runs in {sys.prefix}, not in {venv}"
    assert sys.prefix != sys.base_prefix, "not a venv"
    # The venv's interpreter is Debian's binary itself (a symlink to it), the same version.
    assert Path(sys.executable).resolve() == DEBIAN_PYTHON.resolve(), sys.executable
    assert sys.base_prefix == "/usr", sys.base_prefix
    assert platform.python_version() == _debian_python_version()
    # The agent under test is the checkout's (editable install), not a copy.
    assert Path(agent.__file__).resolve().is_relative_to(REPO_ROOT), agent.__file__
    # ... and Debian's Python would have refused `pip install` (PEP 668), which is why.
    marker = Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
    assert marker.is_file(), f"{marker} missing"


def _debian_python_version() -> str:
    return subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()


# ---------------------------------------------------------------- faketime on a Pi
def test_libfaketime_is_this_machines() -> None:
    """The fault suite preloads libfaketime into the agent: the file apt installed for this
    machine's architecture (`dpkg -L libfaketime` lists it), found without naming x86_64."""
    path = libfaketime()
    assert path.is_file(), f"{path} missing (apt-get install faketime)"
    listed = subprocess.run(
        ["dpkg", "-L", "libfaketime"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.split()
    assert str(path) in listed, f"{path} is not libfaketime's file here: {listed}"


@pytest.mark.parametrize("triplet", ["aarch64-linux-gnu", "arm-linux-gnueabihf"])
def test_libfaketime_on_a_pi(monkeypatch: pytest.MonkeyPatch, triplet: str) -> None:
    """On a Pi (64-bit, or a 32-bit userland) the interpreter's triplet names the directory."""
    monkeypatch.setattr(sys.implementation, "_multiarch", triplet, raising=False)
    assert libfaketime() == Path(f"/usr/lib/{triplet}/faketime/libfaketime.so.1")


def test_libfaketime_without_the_interpreters_triplet(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that does not say asks dpkg-architecture or gcc, and agrees with them."""
    native = multiarch()
    monkeypatch.delattr(sys.implementation, "_multiarch", raising=False)
    fallback = multiarch()
    if not fallback:
        pytest.skip("neither dpkg-architecture (dpkg-dev) nor gcc here to ask")
    assert fallback == native
