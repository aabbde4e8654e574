"""Class labels as files and data sets write them: class indices, class names, or regression targets.

Labels that are integers (``0``, ``"1"``) are class indices. Labels that are names (``pos``, ``neg``) are numbered in
the order of ``data.label_names`` or, without it, in sorted order of every name found in every split given, as the
tags of token classification are. A column that mixes the two is refused, as is a count of names that contradicts
``data.num_labels``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning_smart.data.assets import DataError
from lightning_smart.data.examples import Columns

Label = tuple[str, Any]
"""A label as read, with where it is (``reviews.csv line 12``)."""


def _is_index(value: Any) -> bool:
    """An integer, or a string or float that holds one."""
    if isinstance(value, str):
        try:
            int(value)
        except ValueError:
            return False
        return True
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_name(value: Any) -> bool:
    """A string that is not a number: ``"pos"``, not ``"0.5"`` or ``""``."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


def class_names(labels: Sequence[Label], columns: Columns, found_in: str) -> tuple[list[str] | None, bool]:
    """The class names, in index order, that number these labels, and whether they were inferred.

    Args:
        labels: every label of every split given, each with where it is.
        columns: the label's column, ``num_labels`` and ``label_names`` (the names to use when given).
        found_in: the splits the labels come from, for error messages (``data.path, data.val_path``).

    Returns:
        ``data.label_names`` when given; the names found, sorted, when the labels are names; ``None`` when they are
        class indices (or regression targets).

    Raises:
        DataError: indices and names mixed in one column, or a count of names other than ``data.num_labels``.

    Example:
        >>> labels = [("a.csv line 2", "pos"), ("a.csv line 3", "neg"), ("b.csv line 2", "pos")]
        >>> class_names(labels, Columns(num_labels=2), "data.path, data.val_path")
        (['neg', 'pos'], True)
        >>> class_names(labels, Columns(num_labels=2, label_names=["pos", "neg"]), "data.path")
        (['pos', 'neg'], False)
    """
    if columns.num_labels == 1:
        return None, False
    if columns.label_names is not None:
        return [str(name) for name in columns.label_names], False
    first: dict[str, str] = {}
    index = next(((where, value) for where, value in labels if _is_index(value)), None)
    for where, value in labels:
        if _is_name(value):
            first.setdefault(value, where)
    if not first:
        return None, False
    if index is not None:
        name, where = next(iter(first.items()))
        raise DataError(f"data.label_column={columns.label!r} mixes class indices and names: {index[0]} has"
                        f" {index[1]!r}, {where} has {name!r}; write every label as an index or every label as a name"
                        " (or list the classes in data.label_names)")
    names = sorted(first)
    if len(names) != columns.num_labels:
        shown = ", ".join(f"{name!r} ({first[name]})" for name in names[:5]) + (", ..." if len(names) > 5 else "")
        fix = f"set data.num_labels={len(names)}" if len(names) > 1 else "a classification has 2 classes or more"
        raise DataError(f"data.num_labels={columns.num_labels} but the labels in column {columns.label!r}"
                        f" (data.label_column) are {len(names)} name{'s' * (len(names) > 1)}, found in {found_in}:"
                        f" {shown}: {fix}, or list the classes in data.label_names")
    return names, True


def class_label(value: Any, columns: Columns, where: str) -> int | float:
    """One label as the model takes it: a class index, or (``num_labels=1``) a finite regression target.

    Args:
        value: the label as read.
        columns: the label's column, ``num_labels`` and the class names (given or inferred), if any.
        where: where the label is, for error messages.

    Example:
        >>> class_label("pos", Columns(label_names=["neg", "pos"]), "a.csv line 2"), class_label("1", Columns(), "")
        (1, 1)
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: no label in column {columns.label!r} (data.label_column)")
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
    if not _is_index(value):
        raise DataError(f"{where}: label {value!r} in column {columns.label!r} is not a class index; name the"
                        " classes with data.label_names, or set data.num_labels=1 for regression")
    index = int(value)
    if not 0 <= index < columns.num_labels:
        raise DataError(f"{where}: label {index} in column {columns.label!r} is outside data.num_labels="
                        f"{columns.num_labels} (allowed: 0..{columns.num_labels - 1}); raise data.num_labels or"
                        " set data.label_names")
    return index
