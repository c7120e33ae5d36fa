"""Read TOML with tomllib (tomli before Python 3.11); write and edit it with tomlkit, keeping a user's comments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Array, Item, Table

try:  # Python 3.11+
    import tomllib as _toml_reader
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    try:
        import tomli as _toml_reader  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml_reader = None


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


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 TOML file's text (a leading byte-order mark is tolerated)."""
    return Path(path).read_text(encoding="utf-8-sig")


def load(path: str | os.PathLike) -> dict:
    """Parse a UTF-8 TOML file into plain dicts and lists."""
    return loads(read_text(path))


def parse_document(text: str) -> tomlkit.TOMLDocument:
    """An editable document: its comments, order and layout survive edits made through this module.

    Raises:
        TomlError: the text is not valid TOML.
    """
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise TomlError(str(exc)) from None


def new_document(header: str | None = None) -> tomlkit.TOMLDocument:
    """An empty document, optionally starting with a comment (each line of `header` gets '# ')."""
    doc = tomlkit.document()
    for line in (header or "").splitlines():
        doc.add(tomlkit.comment(line) if line else tomlkit.nl())
    return doc


def to_item(value: Any, inline: bool = True) -> Item:
    """One TOML value; dicts become inline tables, lists arrays (None is refused: TOML has no null).

    Raises:
        TomlError: None or a type TOML cannot hold.
    """
    if value is None:
        raise TomlError("TOML has no null value; leave the key out instead")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, item in value.items():
            if item is not None:
                table.append(str(key), to_item(item))
        return table
    if isinstance(value, (list, tuple)):
        array = tomlkit.array()
        array.extend(to_item(v) for v in value)
        return array
    try:
        return tomlkit.item(value)
    except (TypeError, ValueError, TOMLKitError):
        raise TomlError(f"cannot write a {type(value).__name__} as TOML") from None


def set_value(table: Any, key: str, value: Any) -> None:
    """table[key] = value, with dicts written inline (as a key = { ... } line, not a [sub.table])."""
    table[key] = to_item(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, dict) for v in value)


def _fill(container: Any, values: dict, top: bool) -> None:
    """Add `values` to a document or table: scalars first, then [tables] (document level), then [[arrays]]."""
    items = [(str(k), v) for k, v in values.items() if v is not None]
    tables = [(k, v) for k, v in items if top and isinstance(v, dict)]
    arrays = [(k, v) for k, v in items if _is_table_array(v)]
    for key, value in items:
        if (key, value) not in tables and (key, value) not in arrays:
            container.append(key, to_item(value))
    for key, value in tables:
        table = tomlkit.table()
        _fill(table, value, top=False)
        table.trivia.indent = "\n"
        container.append(key, table)
    for key, value in arrays:
        aot = tomlkit.aot()
        for entry in value:
            append_table(aot, entry)
        container.append(key, aot)


def append_table(array: Any, values: dict) -> None:
    """Append `values` to an array of tables as a new [[table]] after a blank line, indented like its last table.

    Lists of dicts inside `values` become nested arrays of tables; an inline array (key = [{...}]) gets an inline
    table instead.
    """
    if isinstance(array, Array):  # the user wrote key = [{...}, ...]
        array.append(to_item(values))
        return
    table = tomlkit.table(is_super_table=False)
    _fill(table, values, top=False)
    last = array[-1] if len(array) else None
    indent = last.trivia.indent.lstrip("\r\n") if isinstance(last, Table) else ""
    table.indent(len(indent))
    table.trivia.indent = "\n" + indent
    array.append(table)


def new_table_array() -> AoT:
    """An empty array of tables, for append_table."""
    return tomlkit.aot()


def dumps(data: dict | tomlkit.TOMLDocument, header: str | None = None) -> str:
    """TOML text of a tomlkit document (as edited), or of plain dicts/lists (None values left out).

    Plain data is laid out scalars first, then [tables], then [[arrays of tables]], with dicts inside tables
    written inline; sd-scripts' own TOML parser (toml 0.10) reads the result.

    Args:
        data: the document.
        header: for plain data, comment text put on top (each line gets '# ').
    """
    if not isinstance(data, tomlkit.TOMLDocument):
        doc = new_document(header)
        _fill(doc, data, top=True)
        data = doc
    text = data.as_string()
    if not header:
        text = text.lstrip("\n")
    return text if text.endswith("\n") else text + "\n"
