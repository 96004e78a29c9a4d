"""Set keys of one section of an ini file in place. Pure: text in, text out.

configparser would lose every comment of the user's config.ini on a round trip, and the
shipped file documents each key in comments. So the file is edited line by line: a key's
line (and its continuation lines) is replaced where it stands, a missing key goes after the
section's last key, a missing section goes at the end; every other line stays as it was.
Lines are recognised as configparser (and so the agent) reads them: a header is `[name]` on
a line of its own, a key line is `key = value` or `key: value` (the key's case ignored), a
continuation line is indented deeper than its key, `#` and `;` start a comment line.
"""

from __future__ import annotations

import configparser
import re

_HEADER = re.compile(r"\[(?P<name>.+)\]")  # configparser.RawConfigParser._SECT_TMPL
_OPTION = re.compile(r"(?P<key>.*?)\s*[=:]")
_COMMENT_PREFIXES = ("#", ";")


class IniError(ValueError):
    """The text is not an ini file the agent could read: one line."""


def check(text: str, source: str) -> configparser.ConfigParser:
    """Parse as the agent does (config.load). Raises IniError with configparser's first line."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise IniError(str(e).splitlines()[0]) from None
    return parser


def set_keys(text: str, section: str, values: dict[str, str]) -> str:
    """`text` with `values` set in `section`; nothing else changes."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    current: str | None = None
    seen: set[str] = set()
    last_key_at: int | None = None  # index in `out` after the section's last key line
    header_at: int | None = None
    skip_deeper_than: int | None = None  # dropping the continuation of a replaced key

    for line in lines:
        body = line.rstrip("\r\n")
        stripped = body.strip()
        indent = len(body) - len(body.lstrip())
        if skip_deeper_than is not None:
            is_value = stripped and not stripped.startswith(_COMMENT_PREFIXES)
            if is_value and indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if not stripped or stripped.startswith(_COMMENT_PREFIXES):
            out.append(line)
            continue
        header = _HEADER.match(stripped)
        if header:
            current = header.group("name")
            out.append(line)
            if current == section:
                header_at = last_key_at = len(out)
            continue
        if current == section:
            option = _OPTION.match(stripped)
            key = option.group("key").strip().lower() if option else ""
            if key in values and key not in seen:
                seen.add(key)
                out.append(_line(key, values[key], newline))
                skip_deeper_than = indent
                last_key_at = len(out)
                continue
            if option:
                last_key_at = len(out) + 1
        out.append(line)

    missing = [k for k in values if k not in seen]
    if not missing:
        return "".join(out)
    added = [_line(k, values[k], newline) for k in missing]
    if header_at is None:
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += newline
        if out and out[-1].strip():
            out.append(newline)
        return "".join([*out, f"[{section}]{newline}", *added])
    assert last_key_at is not None
    if not out[last_key_at - 1].endswith(("\n", "\r")):
        out[last_key_at - 1] += newline
    return "".join(out[:last_key_at] + added + out[last_key_at:])


def _line(key: str, value: str, newline: str) -> str:
    return f"{key} = {value}".rstrip() + newline
