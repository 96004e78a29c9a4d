"""Which protocol does the byte stream speak? Pure: bytes in, a finding (or none yet) out.

The port is always opened at 8N1, so every protocol the agent reads arrives as it is on the
line: an SML frame starts with 1B1B1B1B 01010101; OBIS text from a 7E1 meter arrives with
its even-parity bit as bit 7 (a USB head), or as 7-bit bytes (a head that strips it). A
finding needs a complete, well-formed start of a frame, never a guess from a byte count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .parity import PARITY_ERROR, decode_7bit, decode_7e1

SML_START = b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01"
# An ident line followed (after an optional blank line, and an STX where the meter frames
# its data with STX/ETX) by an OBIS line, as every D0 meter starts a telegram (meters.md §3,
# §8.1, §8.3): "/" + 3 maker letters + a baud character + type.
_TEXT_START = re.compile(rb"/([A-Za-z]{3}[0-9A-Za-z][ -~]{1,60})\r\n(?:\r\n)?\x02?[0-9A-Z]")
# How much of the stream is kept while nothing is found: more than two eBZ telegrams or
# SML frames (a finding needs one start and the line after it).
KEEP = 2048


@dataclass(frozen=True, slots=True)
class Finding:
    protocol: str  # [meter] protocol: "ebz", "d0" or "sml"
    parity: str  # [meter] parity for text: "even" or "none"
    what: str  # for the log, e.g. "SML 1.04 (8N1)", "OBIS text /EBZ5DD3BZ06ETA_107 (7E1)"


def detect(stream: bytes) -> Finding | None:
    """The protocol of `stream` (raw 8N1 bytes), or None while it is not clear."""
    if SML_START in stream:
        return Finding("sml", "even", "SML 1.04 (8N1)")
    for parity, decode, framing in (("even", decode_7e1, "7E1"), ("none", decode_7bit, "7 bit")):
        text = decode(stream)
        m = _TEXT_START.search(text)
        if m is None or PARITY_ERROR in text[m.start() : m.end()]:
            continue
        ident = m[1].decode("ascii")
        # The eBZ's own grammar and checks are the strictest; other makers' text has its own.
        protocol = "ebz" if ident.upper().startswith("EBZ") else "d0"
        return Finding(protocol, parity, f"OBIS text /{ident} ({framing})")
    return None
