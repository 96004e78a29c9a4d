"""An SML file (the payload of a verified transport frame) decoded as the TLV tree it is.

Every element starts with a type-length field: bit 7 says another TL byte follows (its low
nibble extends the length), bits 6-4 give the type (000 octet string, 100 boolean, 101
signed and 110 unsigned integer of 1-8 bytes, 111 list), bits 3-0 the length. For a list
the length counts its elements; otherwise it counts the element's bytes, TL bytes
included, so 0x01 is an empty octet string ("not set") and 0x00 ends a message.

The whole file is walked element by element, never searched for byte patterns: a value
holding `77 07 01` broke SmlLib's shortcut that looks for list entries that way (SmlLib
issue #8, meters.md §8.4). Anything that does not fit the grammar raises SmlError; nothing
else escapes (tests fuzz it with random bytes and every truncation), and what it returns
is bounded (SCALER_RANGE, UNIT_RANGE) so nothing that uses it can overflow or hang.

Message CRCs are not checked: the frame CRC covers every byte of every message, and the
one full-resolution eBZ sample carries message CRCs its anonymiser did not recompute.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .transport import Reason

# Nesting in real files: file > message > body > GetList.Res > valList > entry > value. A
# bound keeps hostile input from exhausting the stack.
MAX_DEPTH = 12
MAX_TL_BYTES = 4  # 16-bit lengths; a frame holds at most MAX_FRAME bytes anyway

OPEN_RESPONSE = 0x0101
CLOSE_RESPONSE = 0x0201
GET_LIST_RESPONSE = 0x0701

# SML_Time choices that count seconds: secIndex (1) and timestamp (2, Unix seconds).
_SECONDS_TIME = (1, 2)

# SML_ListEntry's scaler is an Integer8 and its unit an Unsigned8 (SML 1.04). Held to
# them, every number a reading carries is at most 8 bytes times 10**127, so what computes
# with it (the checker's powers of ten, Decimal in the outlets) stays small and exact.
SCALER_RANGE = range(-128, 128)
UNIT_RANGE = range(256)


class SmlError(ValueError):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


class _End:
    """EndOfSmlMsg (0x00)."""

    def __repr__(self) -> str:
        return "END"


END = _End()

# What one element decodes to: an octet string (None when empty: "not set"), a boolean,
# an integer, a list of elements, or END.
Element = bytes | bool | int | list["Element"] | _End | None


@dataclass(frozen=True, slots=True)
class SmlValue:
    """One list entry's value: raw * 10**scaler in `unit` (DLMS unit code: 30 Wh, 27 W)."""

    raw: int | bytes
    scaler: int = 0
    unit: int | None = None
    status: int | None = None  # the entry's status word, if the meter sends one

    def decimal(self) -> Decimal:
        """The exact value (no float), e.g. raw 44744359959, scaler -5 -> 447443.59959."""
        if isinstance(self.raw, bytes):
            raise SmlError(Reason.TYPE, "an octet string has no number")
        return Decimal(f"{int(self.raw)}E{self.scaler}")  # exact: no context rounding

    def text(self) -> str:
        """The value as decimal text, as many decimals as the scaler gives (octets: hex)."""
        if isinstance(self.raw, bytes):
            return self.raw.hex()
        d = self.decimal()
        return f"{d:f}"


@dataclass(frozen=True, slots=True)
class SmlReading:
    server_id: bytes
    seconds: int | None  # actSensorTime (else an entry's valTime): secIndex or timestamp
    values: dict[str, SmlValue]  # by OBIS code "A-B:C.D.E*F"

    def register(self, code: str) -> SmlValue | None:
        """A value by its OBIS C.D.E ("1.8.0"), whatever its A-B and F groups."""
        for key, value in self.values.items():
            if key.partition(":")[2].partition("*")[0] == code:
                return value
        return None


def obis_key(name: bytes) -> str:
    """The 6-byte OBIS name as "A-B:C.D.E*F", e.g. 0100010800FF -> "1-0:1.8.0*255"."""
    if len(name) != 6:
        raise SmlError(Reason.OBIS, f"object name of {len(name)} bytes: {name.hex()}")
    a, b, c, d, e, f = name
    return f"{a}-{b}:{c}.{d}.{e}*{f}"


def decode(file: bytes) -> SmlReading:
    """The reading in an SML file: server id, seconds index and values of its GetList.Res."""
    server_id: bytes | None = None
    seconds: int | None = None
    values: dict[str, SmlValue] = {}
    lists = 0
    for message in parse_file(file):
        tag, body = _body(message)
        if tag == GET_LIST_RESPONSE:
            lists += 1
            sid, act_time, entries = _get_list(body)
            if server_id is not None and sid != server_id:
                raise SmlError(Reason.STRUCTURE, "GetList responses of two server ids")
            server_id = sid
            seconds = act_time if act_time is not None else seconds
            for key, value, val_time in entries:
                if key in values:
                    raise SmlError(Reason.DUPLICATE, key)
                values[key] = value
                if seconds is None and val_time is not None:
                    seconds = val_time
    if not lists or server_id is None:
        raise SmlError(Reason.NO_VALUES, "no GetList response in the file")
    return SmlReading(server_id, seconds, values)


def parse_file(file: bytes) -> list[list[Element]]:
    """The file's messages, each a list of six elements ending in END."""
    messages: list[list[Element]] = []
    pos, n = 0, len(file)
    while pos < n:
        if file[pos] != 0x76:
            raise SmlError(Reason.STRUCTURE, f"no message starts at byte {pos}: {file[pos]:02x}")
        message, pos = parse_element(file, pos)
        assert isinstance(message, list)  # 0x76 is a list of six
        if message[5] is not END or any(e is END for e in message[:5]):
            raise SmlError(Reason.STRUCTURE, f"message before byte {pos} not ended by 00")
        messages.append(message)
    if not messages:
        raise SmlError(Reason.TRUNCATED, "empty SML file")
    return messages


def parse_element(data: bytes, pos: int, depth: int = 0) -> tuple[Element, int]:
    """The element at `pos` and the position after it."""
    n = len(data)
    if pos >= n:
        raise SmlError(Reason.TRUNCATED, f"element expected at byte {pos} of {n}")
    tl = data[pos]
    if tl == 0x00:
        return END, pos + 1
    kind = tl & 0x70
    length = tl & 0x0F
    head = 1
    while tl & 0x80:
        if pos + head >= n:
            raise SmlError(Reason.TRUNCATED, f"type-length field at byte {pos}")
        tl = data[pos + head]
        if tl & 0x70:
            raise SmlError(Reason.TYPE, f"continued type-length byte {tl:02x} at {pos + head}")
        length = (length << 4) | (tl & 0x0F)
        head += 1
        if head > MAX_TL_BYTES:
            raise SmlError(Reason.LENGTH, f"type-length field of over {MAX_TL_BYTES} bytes")
    start = pos + head
    if kind == 0x70:
        if depth >= MAX_DEPTH:
            raise SmlError(Reason.STRUCTURE, f"lists nested deeper than {MAX_DEPTH}")
        items: list[Element] = []
        for _ in range(length):
            item, start = parse_element(data, start, depth + 1)
            items.append(item)
        return items, start
    if length < head:
        raise SmlError(Reason.LENGTH, f"length {length} at byte {pos}")
    end = pos + length
    if end > n:
        raise SmlError(Reason.TRUNCATED, f"element of {length} bytes at byte {pos}")
    size = end - start
    if kind == 0x00:
        return (data[start:end] if size else None), end
    if kind == 0x40:
        if size != 1:
            raise SmlError(Reason.LENGTH, f"boolean of {size} bytes at byte {pos}")
        return data[start] != 0, end
    if kind in (0x50, 0x60):
        if not 1 <= size <= 8:
            raise SmlError(Reason.LENGTH, f"integer of {size} bytes at byte {pos}")
        return int.from_bytes(data[start:end], "big", signed=kind == 0x50), end
    raise SmlError(Reason.TYPE, f"type bits {kind >> 4:03b} at byte {pos}")


def _body(message: list[Element]) -> tuple[int, Element]:
    body = message[3]
    if not isinstance(body, list) or len(body) != 2:
        raise SmlError(Reason.STRUCTURE, "message body is not a choice of two")
    tag, content = body
    if not _is_int(tag):
        raise SmlError(Reason.TYPE, "message body tag is not a number")
    assert isinstance(tag, int)
    return tag, content


def _get_list(body: Element) -> tuple[bytes, int | None, list[tuple[str, SmlValue, int | None]]]:
    """GetList.Res: clientId, serverId, listName, actSensorTime, valList, listSignature,
    actGatewayTime."""
    if not isinstance(body, list) or len(body) != 7:
        raise SmlError(Reason.STRUCTURE, "GetList response is not a list of seven")
    server_id = body[1]
    if not isinstance(server_id, bytes):
        raise SmlError(Reason.STRUCTURE, "GetList response without a server id")
    entries = body[4]
    if not isinstance(entries, list):
        raise SmlError(Reason.STRUCTURE, "GetList response without a value list")
    return server_id, _seconds(body[3]), [e for e in map(_entry, entries) if e is not None]


def _entry(entry: Element) -> tuple[str, SmlValue, int | None] | None:
    """SML_ListEntry: objName, status, valTime, unit, scaler, value, valueSignature. None
    for an entry without a number or octets to report (its value not set, or a list)."""
    if not isinstance(entry, list) or len(entry) != 7:
        raise SmlError(Reason.STRUCTURE, "list entry is not a list of seven")
    name, status, val_time, unit, scaler, value, _signature = entry
    if not isinstance(name, bytes):
        raise SmlError(Reason.OBIS, "list entry without an object name")
    key = obis_key(name)
    if status is not None and not _is_int(status):
        raise SmlError(Reason.TYPE, f"{key}: status is not a number")
    if unit is not None and not (_is_int(unit) and unit in UNIT_RANGE):
        raise SmlError(Reason.TYPE, f"{key}: unit {unit!r} is not an Unsigned8")
    if scaler is not None and not (_is_int(scaler) and scaler in SCALER_RANGE):
        raise SmlError(Reason.TYPE, f"{key}: scaler {scaler!r} is not an Integer8")
    if isinstance(value, list) or value is None:
        return None
    if value is END:
        raise SmlError(Reason.STRUCTURE, f"{key}: message ends inside a list entry")
    assert isinstance(value, int | bytes)  # bool is an int
    assert status is None or isinstance(status, int)
    assert unit is None or isinstance(unit, int)
    assert scaler is None or isinstance(scaler, int)
    return key, SmlValue(value, scaler or 0, unit, status), _seconds(val_time)


def _seconds(time: Element) -> int | None:
    """SML_Time as seconds: a choice (1 secIndex, 2 timestamp; 3 local timestamp is not a
    counter) or, as some meters send it, a bare number (SmlLib's workaround)."""
    if time is None:
        return None
    if _is_int(time):
        assert isinstance(time, int)
        return time
    if not isinstance(time, list) or len(time) != 2 or not _is_int(time[0]):
        raise SmlError(Reason.STRUCTURE, "a time is not a choice of two")
    tag, value = time
    if tag in _SECONDS_TIME:
        if not _is_int(value):
            raise SmlError(Reason.TYPE, "a seconds time is not a number")
        assert isinstance(value, int)
        return value
    if tag == 3:
        return None
    raise SmlError(Reason.STRUCTURE, f"unknown time choice {tag}")


def _is_int(e: Element) -> bool:
    return isinstance(e, int) and not isinstance(e, bool)
