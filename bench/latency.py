"""Latency from a telegram's last byte on the line to its reading reaching the TLS broker.

The clock that ends a sample is the kernel's: the timestamp of the publisher's TCP segment
as it reaches the broker's socket on loopback (tests/harness/sniffer.TcpSniffer). The
segments are TLS records, so which telegram a segment carries is not read from it: each
reading is known by its seconds index (0-0:96.8.0, unique per telegram) in what the broker
delivered to a subscriber, and the segment that carries it is the first data segment after
its telegram's last byte whose size fits one PUBLISH of that reading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from tests.harness.sniffer import Segment

SECONDS = re.compile(rb"96\.8\.0\*255\(([0-9A-F]{8})\)")
# A reading's PUBLISH in one TLS record: the payload, the topic (~110 bytes), MQTT and TLS
# framing. A metric is several times larger, a PINGREQ a few bytes.
_MAX_OVERHEAD = 200


class Delivered(Protocol):
    """What a subscriber got (tests.harness.observer.Message is one)."""

    topic: str
    payload: bytes


def seconds_key(text: bytes) -> bytes | None:
    """The telegram's seconds index (8 hex digits), or None if it carries none."""
    found = SECONDS.search(text)
    return found[1] if found else None


def published_readings(messages: Iterable[Delivered], topic: str) -> dict[bytes, int]:
    """Seconds index -> payload size of every reading delivered on `topic`."""
    out = {}
    for m in messages:
        if m.topic == topic and (key := seconds_key(m.payload)) is not None:
            out[key] = len(m.payload)
    return out


def latencies_ms(
    window: Iterable[bytes],
    sent_at: Mapping[bytes, float],
    published: Mapping[bytes, int],
    segments: Iterable[Segment],
) -> list[float]:
    """ms from each published reading's last byte (`sent_at`, time.time() scale) to the
    first data segment after it no bigger than that reading's PUBLISH. Telegrams of the
    window that were not published (a rate limit's other seconds) have no sample."""
    segments = list(segments)
    out = []
    for key in window:
        size = published.get(key)
        if size is None:
            continue
        t = sent_at[key]
        after = [s.t for s in segments if s.t > t and size < s.size < 2 * size + _MAX_OVERHEAD]
        if after:
            out.append((min(after) - t) * 1000)
    return out
