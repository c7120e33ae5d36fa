"""JSON and HTML text that keeps file names which are not UTF-8 (surrogateescape strings) intact and valid."""

from __future__ import annotations

import json
import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(obj, **kw) -> str:
    """json.dumps (ensure_ascii=False unless given) whose text is always valid UTF-8 JSON.

    A file name that is not UTF-8 reaches Python as a str with lone surrogates (os.fsdecode's surrogateescape,
    b'caf\\xe9' -> 'caf\\udce9'); those are written as \\udcXX escapes, so json.loads gives the same str back and
    os.fsencode of it gives the original bytes.
    """
    kw.setdefault("ensure_ascii", False)
    return _LONE_SURROGATE.sub(_escape, json.dumps(obj, **kw))


def printable(text: str) -> str:
    """`text` with the bytes of a name that is not UTF-8 shown as \\xNN (for HTML, titles and console lines)."""
    return _LONE_SURROGATE.sub(_show_byte, text)


def _show_byte(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else f"\\u{code:04x}"
