"""SML 1.04 (binary push meters): transport framing with the CRC, TLV decoding, plausibility.

Pure code: bytes in, frames, readings and verdicts out. The reader and the uplink wire it
(agent/meter/protocols.py); firmware-notes/sml.md explains the rules and their evidence.
"""

from .check import SmlChecker, SmlVerdict
from .decode import SmlError, SmlReading, SmlValue, decode
from .transport import CrcVariant, Reason, SmlDamage, SmlFrame, SmlFramer

__all__ = [
    "CrcVariant",
    "Reason",
    "SmlChecker",
    "SmlDamage",
    "SmlError",
    "SmlFrame",
    "SmlFramer",
    "SmlReading",
    "SmlValue",
    "SmlVerdict",
    "decode",
]
