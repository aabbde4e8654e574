"""Class labels: names inferred from every split given (as tags are), data.label_names for a chosen order, and the
one-line errors of mixed labels and of a count that contradicts data.num_labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_smart.data import Columns, DataError, TextDataModule
from lightning_smart.data.labels import class_label, class_names
from tests.helpers.app import write_csv


def test_names_are_sorted_over_every_split_and_numbered_alike(tmp_path: Path) -> None:
    """'neutral' appears in the test file only: it is a class all the same, numbered between 'neg' and 'pos'."""
    train = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},{('pos', 'neg')[i % 2]}" for i in range(20)])
    val = write_csv(tmp_path / "val.csv", "text,label", ["v0,neg", "v1,pos"])
    test = write_csv(tmp_path / "test.csv", "text,label", ["s0,neutral", "s1,pos"])
    data = TextDataModule(source="csv", path=str(train), val_path=str(val), test_path=str(test), num_labels=3)
    splits = data.load()
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.stats["label_names"] == ["neg", "neutral", "pos"] and data.stats["label_names_inferred"] is True
    assert splits.val.labels == [0, 2] and splits.test["train"].labels == [1, 2]
    assert sorted(set(splits.train.labels)) == [0, 2]


def test_label_names_choose_the_order_and_are_not_inferred(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},{('pos', 'neg')[i % 2]}" for i in range(20)])
    data = TextDataModule(source="csv", path=str(train), val_size=4, test_size=0, label_names=["pos", "neg"])
    splits = data.load()
    assert data.stats["label_names"] == ["pos", "neg"] and data.stats["label_names_inferred"] is False
    assert all(label == int(text[1:]) % 2 for text, label in zip(splits.train.texts, splits.train.labels, strict=True))


def test_class_indices_have_no_names(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},{i % 2}" for i in range(20)])
    data = TextDataModule(source="csv", path=str(train), val_size=4, test_size=0)
    data.load()
    assert data.label_names is None and "label_names" not in data.stats


def test_indices_and_names_mixed_are_refused_naming_both_rows(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", ["a,0", "b,1", "c,1"])
    val = write_csv(tmp_path / "val.csv", "text,label", ["d,pos"])
    with pytest.raises(DataError) as raised:
        TextDataModule(source="csv", path=str(train), val_path=str(val), test_size=0).load()
    assert str(raised.value) == (f"data.label_column='label' mixes class indices and names: {train} line 2 has '0',"
                                 f" {val} line 2 has 'pos'; write every label as an index or every label as a name"
                                 " (or list the classes in data.label_names)")


def test_a_count_of_names_other_than_num_labels_is_refused(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", ["a,pos", "b,neg", "c,pos"])
    val = write_csv(tmp_path / "val.csv", "text,label", ["d,neutral"])
    with pytest.raises(DataError) as raised:
        TextDataModule(source="csv", path=str(train), val_path=str(val), test_size=0).load()
    assert str(raised.value) == (
        "data.num_labels=2 but the labels in column 'label' (data.label_column) are 3 names, found in data.path,"
        f" data.val_path: 'neg' ({train} line 3), 'neutral' ({val} line 2), 'pos' ({train} line 2): set"
        " data.num_labels=3, or list the classes in data.label_names")


def test_a_single_name_is_no_classification(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", ["a,yes", "b,yes"])
    with pytest.raises(DataError) as raised:
        TextDataModule(source="csv", path=str(train), val_size=1, test_size=0).load()
    assert str(raised.value) == (
        "data.num_labels=2 but the labels in column 'label' (data.label_column) are 1 name, found in data.path:"
        f" 'yes' ({train} line 2): a classification has 2 classes or more, or list the classes in data.label_names")


@pytest.mark.parametrize(("labels", "columns", "expected"), [
    ([("a", "pos"), ("b", "neg")], Columns(), (["neg", "pos"], True)),
    ([("a", 1), ("b", "0"), ("c", 1.0)], Columns(), (None, False)),
    ([("a", "pos"), ("b", "neg")], Columns(label_names=["pos", "neg"]), (["pos", "neg"], False)),
    ([("a", "0.5"), ("b", "-1.25")], Columns(num_labels=1), (None, False)),
])
def test_class_names(labels: list, columns: Columns, expected: tuple) -> None:
    assert class_names(labels, columns, "data.path") == expected


@pytest.mark.parametrize(("value", "columns", "expected"), [
    ("1", Columns(), 1), (1.0, Columns(), 1), ("neg", Columns(label_names=["neg", "pos"]), 0),
    ("-1.5", Columns(num_labels=1), -1.5),
])
def test_class_label(value: object, columns: Columns, expected: float) -> None:
    label = class_label(value, columns, "r.csv line 2")
    assert label == expected and type(label) is type(expected)
