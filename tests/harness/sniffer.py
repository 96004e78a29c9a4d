"""When the kernel carried a client's TCP data to the broker on loopback: an AF_PACKET socket.

A subscriber's receive time adds the broker's and the subscriber's own processing to the
agent's latency; the brief's "last byte -> broker" ends when the agent's packet reaches the
broker's socket. The kernel timestamps every packet on `lo` (SO_TIMESTAMPNS, wall clock)
as it passes; this records the segments one client port sends to the broker's port that
carry data. Needs root (CAP_NET_RAW); loopback only.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = ["Segment", "TcpSniffer"]

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sll_pkttype: lo shows each packet twice; keep the received copy
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")


SO_ATTACH_FILTER = 26


def _attach_filter(sock: socket.socket, dst_port: int) -> None:
    """A classic BPF program (what `tcpdump -dd 'ip and tcp dst port N'` compiles to):
    IPv4, TCP, not a later fragment, destination port N."""
    program = (
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, 8, 0x0800),  # IPv4, else drop
        (0x30, 0, 0, 23),  # ldb [23]: protocol
        (0x15, 0, 6, socket.IPPROTO_TCP),
        (0x28, 0, 0, 20),  # ldh [20]: flags and fragment offset
        (0x45, 4, 0, 0x1FFF),  # a later fragment: drop
        (0xB1, 0, 0, 14),  # x = IP header length
        (0x48, 0, 0, 16),  # ldh [x + 16]: TCP destination port
        (0x15, 0, 1, dst_port),
        (0x06, 0, 0, 0x40000),  # accept
        (0x06, 0, 0, 0),  # drop
    )
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


@dataclass(frozen=True)
class Segment:
    t: float  # kernel timestamp, time.time() scale
    src_port: int
    dst_port: int
    size: int  # TCP payload bytes


class TcpSniffer:
    """Records data-carrying TCP segments on lo from `src_port` (any if 0) to `dst_port`."""

    def __init__(self, dst_port: int, src_port: int = 0) -> None:
        self.dst_port, self.src_port = dst_port, src_port
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # Only this broker's TCP traffic reaches the socket (other tests' loopback traffic
        # would otherwise fill its buffer while this thread parses, and segments be lost).
        _attach_filter(self._sock, dst_port)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self._sock.bind(("lo", 0))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._lock = threading.Lock()
        self._segments: list[Segment] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sniffer", daemon=True)
        self._thread.start()

    def segments(self) -> list[Segment]:
        with self._lock:
            return list(self._segments)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            if not ready:
                continue
            data, ancillary, _, address = self._sock.recvmsg(65536, socket.CMSG_SPACE(16))
            if address[2] == PACKET_OUTGOING:
                continue
            segment = self._parse(data, ancillary)
            if segment is not None:
                with self._lock:
                    self._segments.append(segment)

    def _parse(self, frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> Segment | None:
        # lo frames carry a 14-byte Ethernet header; IPv4 only (the brokers listen on 127.0.0.1).
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            return None
        ip = frame[14:]
        if ip[9] != socket.IPPROTO_TCP:
            return None
        ip_header = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ip_header:]
        src, dst = struct.unpack_from("!HH", tcp, 0)
        if dst != self.dst_port or (self.src_port and src != self.src_port):
            return None
        size = total - ip_header - (tcp[12] >> 4) * 4
        if size <= 0:
            return None
        wanted = (socket.SOL_SOCKET, SO_TIMESTAMPNS)
        stamp = next((d for level, kind, d in ancillary if (level, kind) == wanted), None)
        if stamp is None:
            return None
        sec, nsec = _TIMESPEC.unpack(stamp[: _TIMESPEC.size])
        return Segment(sec + nsec / 1e9, src, dst, size)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
