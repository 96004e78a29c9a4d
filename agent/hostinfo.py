"""What the Pi can say about its network and temperature, for the bridge metrics.

Read from /proc/self/net (the unit's ProcSubset=pid hides /proc/net) and /sys, with no
traffic and no subprocess but one optional `iw` call for the Wi-Fi name, and cached:
metrics go out every few minutes, and nothing here is urgent.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from .tibber.payloads import HostInfo

log = logging.getLogger(__name__)

SIOCGIFADDR = 0x8915


class HostInfoReader:
    def __init__(
        self,
        max_age: float = 60.0,
        root: Path = Path("/"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age
        self._root = root
        self._clock = clock
        self._cached: HostInfo | None = None
        self._at = 0.0

    def __call__(self) -> HostInfo:
        now = self._clock()
        if self._cached is None or now - self._at > self._max_age:
            self._cached = self.read()
            self._at = now
        return self._cached

    def read(self) -> HostInfo:
        iface, gateway = self._default_route()
        wifi = self._wifi(iface) if iface and iface.startswith("wl") else {}
        return HostInfo(
            ip=_iface_ip(iface) if iface else None,
            gateway=gateway,
            dns=self._dns(),
            ssid=wifi.get("ssid"),
            bssid=wifi.get("bssid"),
            rssi=wifi.get("rssi"),
            channel=wifi.get("channel"),
            soc_temperature=self._soc_temperature(),
        )

    def _default_route(self) -> tuple[str | None, str | None]:
        with contextlib.suppress(OSError, ValueError):
            for line in (self._root / "proc/self/net/route").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    gw = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
                    return fields[0], gw
        return None, None

    def _dns(self) -> tuple[str, ...]:
        with contextlib.suppress(OSError):
            text = (self._root / "etc/resolv.conf").read_text()
            return tuple(re.findall(r"^\s*nameserver\s+([0-9.]+)\s*$", text, re.M))
        return ()

    def _soc_temperature(self) -> float | None:
        with contextlib.suppress(OSError, ValueError):
            milli = (self._root / "sys/class/thermal/thermal_zone0/temp").read_text()
            return int(milli) / 1000
        return None

    def _wifi(self, iface: str) -> dict:
        info: dict = {}
        with contextlib.suppress(OSError, ValueError):
            for line in (self._root / "proc/self/net/wireless").read_text().splitlines()[2:]:
                name, _, rest = line.partition(":")
                if name.strip() == iface:
                    info["rssi"] = int(float(rest.split()[2]))
        # Only a Wi-Fi Pi gets here, at most once a minute, in the network thread: shutil
        # and subprocess are loaded then, not on every start of the service.
        import shutil
        import subprocess

        iw = shutil.which("iw")
        if iw:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [iw, "dev", iface, "link"], capture_output=True, text=True, timeout=2
                ).stdout
                if m := re.search(r"Connected to ([0-9a-f:]{17})", out):
                    info["bssid"] = m[1].replace(":", "")
                if m := re.search(r"SSID: (.*)", out):
                    info["ssid"] = m[1].strip()
                if m := re.search(r"signal: (-?\d+)", out):
                    info["rssi"] = int(m[1])
                if m := re.search(r"freq: (\d+)", out):
                    info["channel"] = _channel(int(m[1]))
        return info


def _iface_ip(iface: str) -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    return None


def _channel(freq: int) -> int:
    if freq == 2484:
        return 14
    if 2412 <= freq <= 2472:
        return (freq - 2407) // 5
    return (freq - 5000) // 5
