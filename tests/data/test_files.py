"""Malformed files: each stops with one line naming the file, the line and what is wrong (and the setting to change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_smart.data import DataError, TextDataConfig
from lightning_smart.data.files import decode, read_rows
from lightning_smart.data.sources import load_text

NOT_UTF8 = ("save the file as UTF-8, or set data.encoding to the encoding it was written in, e.g. data.encoding=latin-1"
            " or cp1252")

# Each malformed file: its name, its bytes, and the error's exact message ({file} stands for its path).
MALFORMED = {
    "latin-1": ("r.csv", "text,label\ngood,1\ncafé au lait,0\n".encode("latin-1"),
                f"{{file}} line 3: byte 0xe9 at offset 21 is not valid utf-8 (data.encoding=utf-8): {NOT_UTF8}"),
    "random-bytes": ("r.csv", b"text,label\n" + bytes([0x8F, 0x12, 0xFF, 0x41]) * 8,
                     f"{{file}} line 2: byte 0x8f at offset 11 is not valid utf-8 (data.encoding=utf-8): {NOT_UTF8}"),
    "utf-16": ("r.csv", "text,label\ngood,1\n".encode("utf-16"),
               "{file} line 1: byte 0xff at offset 0 is not valid utf-8 (data.encoding=utf-8): save the file as UTF-8,"
               " or set data.encoding to the encoding it was written in, data.encoding=utf-16 (the file starts with"
               " UTF-16's byte-order mark)"),
    "nul": ("r.csv", b"text,label\ngood,1\nb\x00d,0\n",
            "{file} line 3 holds a NUL character (0x00): it is not a text file in utf-8 (data.encoding=utf-8); UTF-16"
            " text writes one beside each ASCII letter: if it is UTF-16, set data.encoding=utf-16"),
    "empty": ("r.csv", b"", "{file} is empty: no rows"),
    "blank-lines": ("r.jsonl", b"\n  \n\n", "{file} is empty: no rows"),
    "header-only": ("r.csv", b"text,label\n", "{file} has a header but no rows"),
    "ragged-long": ("r.csv", b"text,label\ngood,1\ngood, really good,1\n",
                    "{file} line 3 has 3 fields but the header has 2: quote a text that holds the delimiter ',', as in"
                    ' "good, really"'),
    "ragged-short": ("r.tsv", b"text\tlabel\ngood\t1\nbad\n",
                     "{file} line 3 has 1 field but the header has 2: quote a text that holds the delimiter '\\t', as"
                     ' in "good, really"'),
    "not-json": ("r.jsonl", b'{"text": "good", "label": 1}\n{"text": "bad", label: 0}\n',
                 "{file} line 2 is not JSON: Expecting property name enclosed in double quotes (column 17)"),
    "not-an-object": ("r.jsonl", b'{"text": "good", "label": 1}\n["bad", 0]\n',
                      '{file} line 2 is an array, not a JSON object: each row is one object, such as {"text": "...",'
                      ' "label": 1}'),
    "array-item": ("r.jsonl", b'[{"text": "good", "label": 1},\n 5]',
                   '{file} item 2 is a number, not a JSON object: each row is one object, such as {"text": "...",'
                   ' "label": 1}'),
    "array-not-json": ("r.jsonl", b'[{"text": "good", "label": 1},\n {"text": }]',
                       "{file} line 2 is not JSON: Expecting value (column 11)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_is_named_with_its_line_and_fault(case: str, tmp_path: Path) -> None:
    name, content, message = MALFORMED[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as raised:
        read_rows(str(path), "csv" if name.endswith((".csv", ".tsv")) else "jsonl")
    assert str(raised.value) == message.replace("{file}", str(path))


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError) as raised:
        read_rows(str(tmp_path / "dev.csv"), "csv", key="data.val_path")
    assert str(raised.value) == f"data.val_path={str(tmp_path / 'dev.csv')!r}: no such file"


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_data_encoding_reads_a_file_written_in_another_encoding(encoding: str, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes("text,label\ncafé crème,1\nnaïve,0\n".encode(encoding))
    assert decode(path, encoding) == "text,label\ncafé crème,1\nnaïve,0\n"
    rows = read_rows(str(path), "csv", encoding)
    assert [dict(row) for _, row in rows] == [{"text": "café crème", "label": "1"}, {"text": "naïve", "label": "0"}]
    assert [where for where, _ in rows] == [f"{path} line 2", f"{path} line 3"]


@pytest.mark.parametrize("encoding", ["klingon", "base64"])
def test_an_unknown_encoding_is_refused_by_the_config(encoding: str) -> None:
    with pytest.raises(DataError) as raised:
        TextDataConfig(source="csv", path="r.csv", encoding=encoding)
    assert str(raised.value) == (f"data.encoding={encoding!r} is not allowed: a text encoding Python knows, such as"
                                 " utf-8, latin-1, cp1252 or utf-16")


# Rows that read as data but cannot be trained on, with the error's exact message.
BAD_ROWS = {
    "empty-text": ("text,label\ngood,1\n,0\n", {},
                   "{file} line 3: the text in column 'text' (data.text_column) is empty"),
    "blank-text": ("text,label\ngood,1\n   ,0\n", {},
                   "{file} line 3: the text in column 'text' (data.text_column) is empty"),
    "empty-pair": ("q,a,label\nwho,me,1\nwhy,,0\n", {"text_column": "q", "text_pair_column": "a"},
                   "{file} line 3: the text in column 'a' (data.text_pair_column) is empty"),
    "no-label": ("text,label\ngood,1\nbad,\n", {}, "{file} line 3: no label in column 'label' (data.label_column)"),
    "label-out-of-range": ("text,label\ngood,1\nbad,2\n", {},
                           "{file} line 3: label 2 in column 'label' is outside data.num_labels=2 (allowed: 0..1);"
                           " raise data.num_labels or set data.label_names"),
    "fraction-label": ("text,label\ngood,1\nbad,0.5\n", {},
                       "{file} line 3: label '0.5' in column 'label' is not a class index; name the classes with"
                       " data.label_names, or set data.num_labels=1 for regression"),
    "missing-column": ("review,label\ngood,1\n", {},
                       "{file} line 2 has no column 'text' (data.text_column); its columns: 'review', 'label'"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_row_that_cannot_be_trained_on_is_named(case: str, tmp_path: Path) -> None:
    content, settings, message = BAD_ROWS[case]
    path = tmp_path / "r.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as raised:
        load_text(TextDataConfig(source="csv", path=str(path), val_size=1, test_size=0, **settings))
    assert str(raised.value) == message.replace("{file}", str(path))


@pytest.mark.parametrize(("text", "shown"), [(None, "None"), (5, "5"), (["a", "b"], "['a', 'b']")])
def test_a_text_that_is_not_a_string_is_named(text: object, shown: str, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps({"text": text, "label": 0}) + "\n")
    with pytest.raises(DataError) as raised:
        load_text(TextDataConfig(source="jsonl", path=str(path), val_size=1, test_size=0))
    assert str(raised.value) == f"{path} line 2: the text in column 'text' (data.text_column) is {shown}, not a string"
