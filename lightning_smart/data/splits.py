"""Fixed-seed train/validation/test splits: the seed in the config is the record of the split.

``random.Random(seed).shuffle`` has produced the same order for a given seed and length since Python 3.2, so
a split is reproduced by its seed alone, on any machine.
"""

from __future__ import annotations

import random

from lightning_smart.data.assets import DataError


def split_count(size: float, n: int, key: str) -> int:
    """A split's size: ``size < 1`` is a fraction of ``n``, ``size ≥ 1`` a count.

    Example:
        >>> split_count(0.1, 500, "data.val_size"), split_count(64, 500, "data.val_size")
        (50, 64)
    """
    if size < 0 or (size >= 1 and size != int(size)):
        raise DataError(f"{key}={size!r} is not allowed: a fraction in [0, 1) or a whole count ≥ 1")
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
