"""Where the repo and the shared captures live (read in place, never copied into the project)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "NOT_PROVEN",
    "REPO_ROOT",
    "SHARED",
    "TELEGRAMS",
    "libfaketime",
    "multiarch",
    "not_proven_here",
    "read_capture",
    "shared_file",
    "split_telegrams",
    "telegram_file",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# A dev checkout and CI's clean clone both have shared/ beside the repo; a user's clone has not.
SHARED = REPO_ROOT.parent / "shared"
TELEGRAMS = SHARED / "telegrams"

# A skip reason that starts so is listed in the run summary's NOT PROVEN ON THIS MACHINE
# block (tests/conftest.py), not only among the skip reasons.
NOT_PROVEN = "NOT PROVEN ON THIS MACHINE: "


def not_proven_here(reason: str) -> NoReturn:
    """End the test as skipped, never passed, and list it with `reason` in the run summary's
    NOT PROVEN ON THIS MACHINE block: what it checks was not checked here."""
    pytest.skip(NOT_PROVEN + reason)


def shared_file(relative: str) -> Path:
    """A file of ../shared (real captures, protocol notes), read in place. Without its folder
    (a user's clone has no ../shared) the test is NOT PROVEN here, said at the end of the
    run; a file missing from a present folder is a typo, so that raises."""
    path = SHARED / relative
    if not path.parent.is_dir():
        not_proven_here(
            f"needs ../shared/{relative}, and ../shared/{Path(relative).parent} is not here "
            "(a user's clone has no ../shared; CI's and a dev checkout's have)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name!r} in {path.parent}")
    return path


def telegram_file(name: str) -> Path:
    """Path of a capture in ../shared/telegrams (see shared_file)."""
    return shared_file(f"telegrams/{name}")


def read_capture(name: str) -> bytes:
    return telegram_file(name).read_bytes()


# '/' starts a telegram and '!\r\n' ends it; a '/' in between restarts (never in eBZ data).
_TELEGRAM = re.compile(rb"/[^/]*?!\r\n")


def split_telegrams(data: bytes) -> list[bytes]:
    """Complete D0-push telegrams ('/' ... '!\\r\\n') in a capture; fragments are dropped."""
    return _TELEGRAM.findall(data)


def multiarch() -> str:
    """Debian's multiarch triplet for the agent's processes: x86_64-linux-gnu on a PC,
    aarch64-linux-gnu or arm-linux-gnueabihf on a Pi; "" when nothing says.

    The tests start the agent with this interpreter (sys.executable), so a library preloaded
    into it must match the interpreter's own triplet first; dpkg and gcc are asked only when
    the interpreter does not say (a 32-bit userland on a 64-bit kernel is why uname is not).
    """
    triplet = getattr(sys.implementation, "_multiarch", "")
    if triplet:
        return triplet
    for argv in (["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], ["gcc", "-print-multiarch"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return ""


def libfaketime() -> Path:
    """Debian's libfaketime (package faketime) for this machine's architecture."""
    return Path("/usr/lib", multiarch(), "faketime", "libfaketime.so.1")
