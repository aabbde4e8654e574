"""Labelled examples before tokenizing, and which fields of a row hold their parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_info


@dataclass
class Examples:
    """One labelled data set: texts, optional second texts (sentence pairs), labels."""

    texts: list[Any]
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
        label_names: class names in index order, for labels that are names.
    """

    text: str = "text"
    label: str = "label"
    pair: str | None = None
    num_labels: int = 2
    label_names: Sequence[str] | None = None


def first_of_each_text(examples: Examples, name: str) -> Examples:
    """The first occurrence of each text: a repeated text must not land in two splits."""
    first: dict[str, int] = {}
    for i, text in enumerate(examples.texts):
        first.setdefault(text, i)
    if len(first) < len(examples):
        rank_zero_info(f"{name}: kept {len(first)} unique of {len(examples)} texts (dropped repeats)")
    return examples.select(sorted(first.values()))
