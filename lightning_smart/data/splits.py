"""Fixed-seed train/validation/test splits: the seed in the config is the record of the split.

``random.Random(seed).shuffle`` has produced the same order for a given seed and length since Python 3.2, so
a split is reproduced by its seed alone, on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn

from lightning_smart.data.assets import DataError
from lightning_smart.data.examples import Examples

if TYPE_CHECKING:
    from lightning_smart.data.config import TextDataConfig


def check_split_size(size: float, key: str) -> None:
    """Refuse a split size that is neither a fraction in [0, 1) nor a whole count ≥ 1."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0 or (size >= 1 and size != int(size)):
        raise DataError(f"{key}={size!r} is not allowed: a fraction in [0, 1) or a whole count ≥ 1")


def split_count(size: float, n: int, key: str) -> int:
    """A split's size: ``size < 1`` is a fraction of ``n``, ``size ≥ 1`` a count.

    Example:
        >>> split_count(0.1, 500, "data.val_size"), split_count(64, 500, "data.val_size")
        (50, 64)
    """
    check_split_size(size, key)
    return round(size * n) if size < 1 else int(size)


def split_indices(n: int, val_size: float, test_size: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Indices of ``range(n)`` for train, validation and test, drawn with ``seed``.

    Args:
        n: number of examples.
        val_size: the validation split (fraction or count, see :func:`split_count`).
        test_size: the test split (fraction or count).
        seed: the split's seed.

    Returns:
        train (in shuffled order, so its first k form a random subset), validation and test (sorted).

    Example:
        >>> train, val, test = split_indices(10, 0.2, 2, seed=0)
        >>> len(train), len(val), len(test), sorted(train + val + test) == list(range(10))
        (6, 2, 2, True)
    """
    n_val, n_test = split_count(val_size, n, "data.val_size"), split_count(test_size, n, "data.test_size")
    if n_val + n_test >= n:
        raise DataError(f"data.val_size={val_size} and data.test_size={test_size} leave no training examples"
                        f" of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[n_val + n_test:], sorted(order[:n_val]), sorted(order[n_val:n_val + n_test])


def subsample(examples: Examples, size: int | None, seed: int) -> Examples:
    """``size`` examples drawn with ``seed``, in their order (all of them for ``None``)."""
    keep = len(examples) if size is None else min(size, len(examples))
    return examples.select(sorted(random.Random(seed).sample(range(len(examples)), keep)))


@dataclass
class Splits:
    """The checked examples, split: training, validation, and each test set by name."""

    train: Examples
    val: Examples
    test: dict[str, Examples] = field(default_factory=dict)


def split_examples(config: TextDataConfig, main: Examples, given: Mapping[str, Examples],
                   more_tests: Mapping[str, Examples] | None = None) -> tuple[Splits, dict[str, Any]]:
    """Split ``main`` as ``config`` says, keeping the splits given separately (``val``, ``test``) as they are.

    Args:
        config: the sizes, the seed and the test sets' names.
        main: the examples to split.
        given: splits read separately (``data.val_path``, ``data.test_path``, the Hub's splits), by name.
        more_tests: further test sets (out of domain), after the main one.

    Returns:
        The splits, and their sizes: ``train_available`` (before ``data.train_size``), ``train``, ``val``, ``test``.
    """
    train, val, test = split_indices(len(main), 0 if "val" in given else config.val_size,
                                     0 if "test" in given else config.test_size, config.split_seed)
    stats: dict[str, Any] = {"train_available": len(train)}
    if config.train_size is not None:
        if config.train_size > len(train):
            rank_zero_warn(f"data.train_size={config.train_size} exceeds the {len(train)} training examples: using all")
        train = train[:config.train_size]
    splits = Splits(main.select(train), given.get("val", main.select(val)))
    if not len(splits.val):
        raise DataError(f"data.val_size={config.val_size} leaves no validation examples of {config.dataset_name}")
    if config.test_names[:1] == [config.dataset_name]:
        splits.test[config.dataset_name] = given.get("test", main.select(test))
    splits.test |= more_tests or {}
    stats |= {"train": len(splits.train), "val": len(splits.val),
              "test": {name: len(examples) for name, examples in splits.test.items()}}
    return splits, stats
