"""Rows of local files (CSV, TSV, JSON lines), each with where it is, and every way a file can be malformed named.

A file that cannot be read as data stops with one :class:`~lightning_smart.data.DataError` line naming the file, the
line and what is wrong: a byte its encoding cannot decode (and ``data.encoding``), a row with more or fewer fields
than the header, a line that is not JSON or not a JSON object, a file with no rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_smart.data.assets import DataError

Row = tuple[str, Mapping[str, Any]]
"""A row of a file or data set, with where it is (``reviews.csv line 12``) for error messages."""


def decode(path: Path, encoding: str = "utf-8") -> str:
    """The text of ``path``; a byte that ``encoding`` cannot decode, or a NUL character, is named with its line.

    A UTF-8 byte-order mark (as spreadsheet programs write one) is dropped, so it never joins the first column's name.

    Args:
        path: the file.
        encoding: its encoding (``data.encoding``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "reviews.csv"
        >>> _ = path.write_bytes("text,label\\ncafé,1\\n".encode("latin-1"))
        >>> decode(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_smart.data.assets.DataError: ...reviews.csv line 2: byte 0xe9 at offset 14 is not valid utf-8 ...
        >>> decode(path, "latin-1").splitlines()[1]
        'café,1'
    """
    data = path.read_bytes()
    try:
        text = data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        written = ("data.encoding=utf-16 (the file starts with UTF-16's byte-order mark)" if data[:2] in _UTF16
                   else "e.g. data.encoding=latin-1 or cp1252")
        raise DataError(f"{path} line {line}: byte 0x{data[err.start]:02x} at offset {err.start} is not valid"
                        f" {encoding} (data.encoding={encoding}): save the file as UTF-8, or set data.encoding to the"
                        f" encoding it was written in, {written}") from None
    if "\x00" in text:  # valid UTF-8, but no text file holds one: a binary file, or UTF-16 read as UTF-8
        line = text[:text.index("\x00")].count("\n") + 1
        raise DataError(f"{path} line {line} holds a NUL character (0x00): it is not a text file in {encoding}"
                        f" (data.encoding={encoding}); UTF-16 text writes one beside each ASCII letter: if it is"
                        " UTF-16, set data.encoding=utf-16")
    return text


_UTF16 = (b"\xff\xfe", b"\xfe\xff")


def _csv_rows(path: Path, text: str) -> list[Row]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[Row] = []
    try:
        for row in reader:
            where = f"{path} line {reader.line_num}"
            header = reader.fieldnames or []
            # DictReader files the fields beyond the header under None, and gives None to those a row lacks
            extra, missing = row.pop(None, []), sum(value is None for value in row.values())
            fields = len(header) + len(extra) - missing
            if fields != len(header):
                raise DataError(f"{where} has {fields} field{'s' * (fields != 1)} but the header has {len(header)}:"
                                f" quote a text that holds the delimiter {delimiter!r}, as in \"good, really\"")
            rows.append((where, row))
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num} is not a CSV row: {err}") from None
    if not rows and reader.fieldnames:
        raise DataError(f"{path} has a header but no rows")
    return rows


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def _json_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where} is {_JSON_TYPES.get(type(value), type(value).__name__)}, not a JSON object: each"
                        ' row is one object, such as {"text": "...", "label": 1}')
    return value


def _json_rows(path: Path, text: str) -> list[Row]:
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {err.lineno} is not JSON: {err.msg} (column {err.colno})") from None
        return [(f"{path} item {i}", _json_object(item, f"{path} item {i}")) for i, item in enumerate(items, 1)]
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where} is not JSON: {err.msg} (column {err.colno})") from None
        rows.append((where, _json_object(value, where)))
    return rows


def read_rows(path: str, source: str, encoding: str = "utf-8", key: str = "data.path") -> list[Row]:
    """The rows of a CSV (``.tsv``: tab-separated) or JSON-lines file (a JSON array of objects also works).

    Args:
        path: the file.
        source: ``csv`` or ``jsonl``.
        encoding: the file's text encoding (``data.encoding``).
        key: the config key that named the file, for error messages.

    Returns:
        The rows, each with where it is (``<file> line <n>``; ``<file> item <n>`` in a JSON array).

    Raises:
        DataError: no such file, an empty one, a byte the encoding cannot decode, a CSV row whose fields do not match
            the header, a line that is not a JSON object.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}={path!r}: no such file")
    text = decode(file, encoding)
    if not text.strip():
        raise DataError(f"{file} is empty: no rows")
    rows = _csv_rows(file, text) if source == "csv" else _json_rows(file, text)
    if not rows:
        raise DataError(f"{file} has no rows")
    return rows


def field(row: Row, column: str, key: str) -> Any:
    """The value of ``column`` in a row; ``key`` is the setting that names the column (``data.text_column``)."""
    where, values = row
    if column not in values:
        found = ", ".join(map(repr, values)) or "none"
        raise DataError(f"{where} has no column {column!r} ({key}); its columns: {found}")
    return values[column]


def shown(value: Any, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters: an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def text_field(row: Row, column: str, key: str) -> str:
    """A text of a row: a string that is not empty."""
    value = field(row, column, key)
    if not isinstance(value, str):
        raise DataError(f"{row[0]}: the text in column {column!r} ({key}) is {shown(value)}, not a string")
    if not value.strip():
        raise DataError(f"{row[0]}: the text in column {column!r} ({key}) is empty")
    return value
