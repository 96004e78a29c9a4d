"""Software 7E1: the port is opened at 8N1, so bit 7 of every byte is the even-parity bit.

Linux (n_tty with INPCK clear, as pyserial leaves it) passes 7E1 parity errors through as
ordinary characters, so a plain 7E1 port can never report one. Reading at 8N1 keeps the
parity bit, and this module checks it.
"""

# A byte that failed its parity check decodes to this marker. Every good byte decodes to
# 0x00..0x7F, so the marker can never be mistaken for data.
PARITY_ERROR = 0xFF


def _even(byte: int) -> bool:
    return bin(byte).count("1") % 2 == 0


# 256-byte tables for bytes.translate(): one C-level pass per read, no Python loop per byte.
_DECODE = bytes((b & 0x7F) if _even(b) else PARITY_ERROR for b in range(256))
# A network head that strips the parity bit delivers 7-bit bytes: one with bit 7 set is damage.
_SEVEN_BIT = bytes(b if b < 0x80 else PARITY_ERROR for b in range(256))
_ENCODE = bytes((c | (0 if _even(c) else 0x80)) if c < 0x80 else PARITY_ERROR for c in range(256))


def decode_7e1(wire: bytes) -> bytes:
    """Strip the parity bit of each byte; a byte with bad parity becomes PARITY_ERROR."""
    return wire.translate(_DECODE)


def decode_7bit(wire: bytes) -> bytes:
    """Bytes whose parity bit the head already removed: a byte with bit 7 set becomes
    PARITY_ERROR (no 7-bit character has it), the rest pass unchanged."""
    return wire.translate(_SEVEN_BIT)


def encode_7e1(text: bytes) -> bytes:
    """Add the even-parity bit to 7-bit ASCII, as a 7E1 UART puts it on the wire."""
    if any(c >= 0x80 for c in text):
        raise ValueError("7E1 carries 7-bit characters only")
    return text.translate(_ENCODE)
