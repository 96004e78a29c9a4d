"""Where the repo and the shared captures live (read in place, never copied into the project)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = [
    "REPO_ROOT",
    "SHARED",
    "TELEGRAMS",
    "libfaketime",
    "multiarch",
    "read_capture",
    "split_telegrams",
    "telegram_file",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# A dev checkout and CI's clean clone both have shared/ beside the repo; a user's clone has not.
SHARED = REPO_ROOT.parent / "shared"
TELEGRAMS = SHARED / "telegrams"

_SKIP_REASON = (
    "../shared/telegrams not present (a user's clone has no ../shared); "
    "the simulator tests cover the same paths"
)


def telegram_file(name: str) -> Path:
    """Path of a capture in ../shared/telegrams; skips the test if that folder is absent.

    A missing file inside a present folder is a typo, so that raises instead of skipping.
    """
    if not TELEGRAMS.is_dir():
        pytest.skip(_SKIP_REASON)
    path = TELEGRAMS / name
    if not path.is_file():
        raise FileNotFoundError(f"no capture {name!r} in {TELEGRAMS}")
    return path


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
