"""Read TOML with tomllib (tomli before Python 3.11) and write it with a small serializer that old parsers accept."""

from __future__ import annotations

import datetime
import math
import os
import re
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib as _toml_reader
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    try:
        import tomli as _toml_reader  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml_reader = None

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class TomlError(ValueError):
    """A TOML file could not be read, or a value cannot be written as TOML."""


def loads(text: str) -> dict:
    """Parse TOML text into plain dicts and lists.

    Args:
        text: the document.
    Raises:
        TomlError: on a syntax error (the message names line and column), or when no parser is installed.
    """
    if _toml_reader is None:
        raise TomlError("reading TOML on Python 3.10 needs the 'tomli' package: pip install tomli")
    try:
        return _toml_reader.loads(text)
    except _toml_reader.TOMLDecodeError as exc:
        raise TomlError(str(exc)) from None


def load(path: str | os.PathLike) -> dict:
    """Parse a UTF-8 TOML file (a leading byte-order mark is tolerated)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    return loads(text)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    return text if any(c in text for c in ".eEn") else text + ".0"


def value_to_toml(value: Any) -> str:
    """One TOML value: string, bool, int, float, date/time, inline array or inline table.

    Raises:
        TomlError: for None or any other type (TOML has no null).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, os.PathLike):
        return _string(os.fspath(value))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_to_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))} = {value_to_toml(v)}" for k, v in value.items()) + " }"
    if value is None:
        raise TomlError("TOML has no null value; leave the key out instead")
    raise TomlError(f"cannot write a {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit(lines: list[str], path: list[str], table: dict) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    for key, value in scalars:
        if value is None:
            continue  # a missing key means "use the default" to every TOML consumer
        lines.append(f"{_key(str(key))} = {value_to_toml(value)}")
    for key, value in tables:
        name = ".".join(_key(str(p)) for p in path + [key])
        lines.extend(["", f"[{name}]"])
        _emit(lines, path + [key], value)
    for key, items in arrays:
        name = ".".join(_key(str(p)) for p in path + [key])
        for item in items:
            lines.extend(["", f"[[{name}]]"])
            _emit(lines, path + [key], item)


def dumps(data: dict, header: str | None = None) -> str:
    """Serialize nested dicts/lists as TOML: scalars first, then [tables], then [[arrays of tables]].

    Args:
        data: the document; None values are left out.
        header: optional comment text put on top (each line gets '# ').
    """
    lines: list[str] = []
    if header:
        lines.extend("# " + line if line else "#" for line in header.splitlines())
    _emit(lines, [], data)
    while lines and lines[0] == "":
        lines.pop(0)
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"
