"""PEM values as the bridge stores them: complete blocks, LF line ends, hidden values named.

The bridge keeps `ca_cert`, `certificate` and `private_key` as PEM text with CRLF line ends
(tibber-bridge.md §2, confirmed). A value can reach us cut short (a size limit, a copy from a
page), masked or empty (newer firmware may hide `private_key`: unknown, §8.1). Each of these
is named here without ever repeating the value: it may be a private key.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_END = re.compile(r"-----END ([A-Z0-9 ]+)-----")
# RFC 7468 allows header lines (Proc-Type:, DEK-Info:) only in the legacy encrypted format.
_HEADER = re.compile(r"[A-Za-z-]+:.*")

CERTIFICATE_LABELS = ("CERTIFICATE",)
KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")


class PemError(ValueError):
    """What is wrong with a value, worded to follow its name: "private_key <problem>"."""


@dataclass(frozen=True)
class Pem:
    text: str  # LF line ends, one trailing newline
    labels: tuple[str, ...]  # one per block, in order


def normalize(value: str) -> str:
    """CRLF (and a lone CR) to LF; trailing NULs of a fixed-size field and outer blank space
    dropped; one final newline. ssl reads either line end; LF is what every tool expects."""
    text = value.replace("\r\n", "\n").replace("\r", "\n").strip("\0").strip()
    return text + "\n" if text else ""


def describe_hidden(value: str | None) -> str | None:
    """How a value that is no PEM at all looks, or None if it looks like (part of) a PEM."""
    if value is None:
        return "is not in the bridge's list (hidden)"
    text = value.strip("\0").strip()
    if not text:
        return "is empty (hidden)"
    if "-----BEGIN " in text:
        return None
    if len(set(text)) == 1:
        return f"is masked ({len(text)} times {text[0]!r}, no PEM block)"
    return f"is not PEM text ({len(text)} characters without a -----BEGIN line)"


def parse(value: str, labels: tuple[str, ...]) -> Pem:
    """The value as a checked PEM: at least one block, each with its END line and a body that
    decodes, each label one of `labels`. Raises PemError naming the first problem."""
    hidden = describe_hidden(value)
    if hidden is not None:
        raise PemError(hidden)
    text = normalize(value)
    found: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        begin = _BEGIN.fullmatch(lines[i].strip())
        if begin is None:
            i += 1  # text outside the blocks (e.g. "Bag Attributes") is ignored, as by ssl
            continue
        label = begin.group(1)
        body: list[str] = []
        i += 1
        while i < len(lines) and _END.fullmatch(lines[i].strip()) is None:
            if _BEGIN.fullmatch(lines[i].strip()):
                break
            body.append(lines[i].strip())
            i += 1
        if i >= len(lines) or _END.fullmatch(lines[i].strip()) is None:
            raise PemError(
                f"is cut short: its BEGIN {label} block has no END line "
                f"({len(text)} bytes; copy the whole value)"
            )
        end = _END.fullmatch(lines[i].strip())
        assert end is not None
        if end.group(1) != label:
            raise PemError(f"is damaged: BEGIN {label} ends with END {end.group(1)}")
        _check_body(label, body)
        found.append(label)
        i += 1
    if not found:
        raise PemError("has a -----BEGIN line but no complete PEM block")
    for label in found:
        if label not in labels:
            want = " or ".join(labels)
            raise PemError(f"holds a {label} block where a {want} belongs (values swapped?)")
    return Pem(text=text, labels=tuple(found))


def _check_body(label: str, body: list[str]) -> None:
    if any(_HEADER.fullmatch(line) for line in body) or "ENCRYPTED" in label:
        raise PemError(f"is an encrypted {label}: the agent has no passphrase for it")
    data = "".join(body)
    if not data:
        raise PemError(f"is damaged: its {label} block is empty")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise PemError(f"is damaged: the {label} block is not valid base64") from None
