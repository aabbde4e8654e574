"""TextDataModule and its sources: the shipped corpora, local files, the Hub, and the errors that name their cause."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from lightning_smart.config import ConfigError
from lightning_smart.data import DataError, TextDataConfig, TextDataModule, split_indices
from lightning_smart.data.sources import load_snippets, load_text, load_trec
from tests.helpers.app import write_csv


def test_movies_binary_drops_zero_ratings_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    examples, dropped = load_snippets("movies", num_labels=2)
    assert dropped == 37  # movie snippets whose mean rating is exactly 0 have no sign
    assert len(examples) == 10_603 - 37  # two repeated texts are kept once
    assert set(examples.labels) == {0, 1}
    assert 0.45 < sum(examples.labels) / len(examples) < 0.55


def test_movies_rating_is_regression() -> None:
    examples, dropped = load_snippets("movies", num_labels=1)
    assert dropped == 0 and len(examples) == 10_603
    assert all(isinstance(r, float) and -4 <= r <= 4 for r in examples.labels)


def test_trec_has_six_classes_and_no_repeated_question() -> None:
    examples = load_trec()
    assert len(examples) == len(set(examples.texts)) == 5_381  # the file repeats most questions
    assert sorted(set(examples.labels)) == list(range(6))


def test_split_is_fixed_by_its_seed_and_disjoint() -> None:
    first, again, other = (split_indices(1000, 0.1, 100, seed) for seed in (0, 0, 1))
    assert first == again and first != other
    train, val, test = first
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))


def _digest(texts: list[str], labels: list[int]) -> str:
    return hashlib.sha256(json.dumps([texts, labels]).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("settings", "digests"), [
    ({"source": "movies", "val_size": 1000, "test_size": 1000},
     ("5243001ac6050720", "166aeef22f356d00", "ed6fe8e55c231f7a")),
    ({"source": "trec", "num_labels": 6, "val_size": 500, "test_size": 500},
     ("29e7e445213da6a2", "04b18104b1572b1c", "680c349a43e5e621")),
], ids=["movies", "trec"])
def test_the_shipped_presets_split_as_the_stored_study_did(settings: dict, digests: tuple[str, ...]) -> None:
    """data=movies and data=trec at split_seed 0: the same examples in the same order, train, val and test."""
    splits, _ = load_text(TextDataConfig(**settings))
    (test,) = splits.test.values()
    found = tuple(_digest(s.texts, s.labels) for s in (splits.train, splits.val, test))
    assert found == digests


@pytest.fixture(scope="module")
def movies() -> TextDataModule:
    data = TextDataModule(source="movies", max_length=32, val_size=64, test_size=48, train_size=100, batch_size=16,
                          ood=["tweets", "nyt"], ood_size=40)
    data.setup()
    return data


def test_movies_splits_caps_and_ood(movies: TextDataModule) -> None:
    assert movies.stats["train"] == 100 and movies.stats["train_available"] == 10_566 - 64 - 48
    assert movies.stats["val"] == 64 and movies.stats["test"] == {"movies": 48, "tweets": 40, "nyt": 40}
    assert movies.stats["dropped_zero_rating"] == {"movies": 37, "tweets": 4, "nyt": 241}
    assert movies.test_names == ["movies", "tweets", "nyt"]
    assert [len(loader.dataset) for loader in movies.test_dataloader()] == [48, 40, 40]
    assert movies.hparams.split_seed == 0  # the split's record, saved with the run's hyperparameters


def test_batches_are_padded_to_their_longest_example(movies: TextDataModule) -> None:
    for batch in movies.val_dataloader():
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == lengths.max() <= 32
        assert batch["labels"].dtype == torch.long
    train = next(iter(movies.train_dataloader()))
    assert set(train) == {"input_ids", "token_type_ids", "attention_mask", "labels"} and len(train["labels"]) == 16


def test_csv_and_jsonl_with_named_labels_and_given_splits(tmp_path: Path) -> None:
    rows = [f"text {i},{'pos' if i % 2 else 'neg'}" for i in range(20)]
    train = write_csv(tmp_path / "train.csv", "review,sentiment", rows)
    val = write_csv(tmp_path / "dev.csv", "review,sentiment", rows[:4])
    data = TextDataModule(source="csv", path=str(train), val_path=str(val), test_size=5, text_column="review",
                          label_column="sentiment", label_names=["neg", "pos"])
    splits = data.load()
    assert (len(splits.train), len(splits.val), len(splits.test["train"])) == (15, 4, 5)
    assert data.test_names == ["train"] and sorted(splits.train.texts + splits.test["train"].texts) == sorted(
        f"text {i}" for i in range(20))
    assert splits.val.labels == [0, 1, 0, 1]

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"a": f"q{i}", "b": f"r{i}", "y": i * 0.5}) for i in range(10)))
    data = TextDataModule(source="jsonl", path=str(jsonl), num_labels=1, text_column="a", text_pair_column="b",
                          label_column="y", val_size=2, test_size=0)
    data.setup()
    assert data.test_names == [] and data.stats["val"] == 2 and data.stats["test"] == {}
    batch = next(iter(data.val_dataloader()))
    assert batch["labels"].dtype == torch.float32 and (batch["token_type_ids"] == 1).any()  # a real text pair


@pytest.mark.parametrize(
    ("kwargs", "content", "named"),
    [
        ({"path": "{dir}/missing.csv"}, None, ["data.path", "missing.csv", "no such file"]),
        ({"text_column": "review"}, "text,label\nfine,1\n", ["'review'", "data.text_column", "data.csv", "'text'"]),
        ({}, "text,label\n", ["data.csv", "no rows"]),
        ({}, "text,label\ngood,1\nbad,7\n", ["data.csv line 3", "7", "data.num_labels=2", "0..1"]),
        ({}, "text,label\ngood,yes\n", ["data.csv line 2", "'yes'", "data.label_names"]),
        ({"num_labels": 1}, "text,label\ngood,high\n", ["'high'", "not a number"]),
        ({"val_size": 0}, "text,label\ngood,1\nbad,0\n", ["data.val_size=0", "no validation"]),
    ],
)
def test_data_errors_name_the_file_column_or_key(tmp_path: Path, kwargs: dict, content: str | None,
                                                 named: list[str]) -> None:
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    kwargs = {"path": str(path), **{k: v.format(dir=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}}
    with pytest.raises(DataError) as error:
        TextDataModule(source="csv", test_size=0, **kwargs).load()
    assert isinstance(error.value, ConfigError)
    for part in named:
        assert part in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"source": "imdb"}, ["data.source='imdb'", "movies", "csv"]),
        ({"source": "trec", "num_labels": 2}, ["data.num_labels=2", "trec", "6"]),
        ({"source": "movies", "num_labels": 3}, ["data.num_labels=3", "1 (the rating"]),
        ({"source": "trec", "num_labels": 6, "ood": ["tweets"]}, ["data.ood", "sentiment"]),
        ({"source": "movies", "ood": ["reddit"]}, ["data.ood", "reddit", "tweets"]),
        ({"source": "movies", "ood": ["movies"]}, ["data.ood", "once"]),
        ({"source": "csv"}, ["data.path is required"]),
        ({"source": "movies", "batch_size": 0}, ["data.batch_size=0"]),
        ({"source": "movies", "train_size": 0}, ["data.train_size=0", "≥ 1"]),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, named: list[str]) -> None:
    with pytest.raises(DataError) as error:
        TextDataModule(**kwargs)
    for part in named:
        assert part in str(error.value)


def test_hub_needs_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r"data\.source=hub needs the datasets package"):
        TextDataModule(source="hub", path="glue", hub_subset="sst2").load()


def _saved_glue_like(folder: Path) -> Path:
    """A real DatasetDict saved to disk, shaped as GLUE's sst2: labelled train and validation, an unlabeled test."""
    datasets = pytest.importorskip("datasets", reason="the hub extra is not installed")
    texts = load_snippets("movies", 2)[0]
    def split(start: int, n: int, labelled: bool = True) -> object:
        rows = range(start, start + n)
        return datasets.Dataset.from_dict({"sentence": [texts.texts[i] for i in rows], "idx": list(rows),
                                           "label": [texts.labels[i] if labelled else -1 for i in rows]})
    datasets.DatasetDict({"train": split(0, 30), "validation": split(30, 6), "test": split(36, 5, False)}
                         ).save_to_disk(folder)
    return folder


def test_hub_splits_of_a_dataset_saved_to_disk_leave_out_the_unlabeled_test(tmp_path: Path) -> None:
    folder = _saved_glue_like(tmp_path / "sst2")
    data = TextDataModule(source="hub", path=str(folder), text_column="sentence", test_size=0.2)
    splits = data.load()
    assert (len(splits.train), len(splits.val), len(splits.test["sst2"])) == (24, 6, 6)
    assert data.stats["unlabeled_splits_left_out"] == ["test"]
    movies = load_snippets("movies", 2)[0]
    assert sorted(splits.val.texts) == sorted(movies.texts[30:36])  # the saved validation split, as saved
    assert set(splits.train.labels) | set(splits.val.labels) <= {0, 1}
    with pytest.raises(DataError) as raised:
        TextDataModule(source="hub", path=str(folder), text_column="sentence", hub_test_split="test").load()
    assert str(raised.value).startswith(f"data.hub_test_split: split 'test' of hub dataset {str(folder)!r} has no"
                                        " labels (every label is -1")
    with pytest.raises(DataError, match=r"data\.hub_test_split: hub dataset .* has no split 'dev'"):
        TextDataModule(source="hub", path=str(folder), text_column="sentence", hub_test_split="dev").load()


def test_a_single_dataset_saved_to_disk_is_the_train_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the hub extra is not installed")
    rows = {"text": [f"text {i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "one")
    data = TextDataModule(source="hub", path=str(tmp_path / "one"), hub_val_split=None, val_size=4, test_size=4)
    splits = data.load()
    assert (len(splits.train), len(splits.val), len(splits.test["one"])) == (12, 4, 4)
    assert "unlabeled_splits_left_out" not in data.stats


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_that_starts_with_a_byte_order_mark_is_read(tmp_path: Path, suffix: str) -> None:
    """Spreadsheet programs write UTF-8 with a BOM: it must not become part of the first column's name."""
    path = tmp_path / f"bom{suffix}"
    if suffix == ".csv":
        lines = ["text,label", *[f"review {i},{i % 2}" for i in range(20)]]
    else:
        lines = [json.dumps({"text": f"review {i}", "label": i % 2}) for i in range(20)]
    path.write_bytes("\n".join(lines).encode("utf-8-sig"))
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    data = TextDataModule(source=suffix[1:], path=str(path), val_size=4, test_size=0)
    splits = data.load()
    texts = sorted(splits.train.texts + splits.val.texts, key=lambda t: int(t.split()[1]))
    assert texts == [f"review {i}" for i in range(20)]
    assert sorted(splits.train.labels + splits.val.labels) == [0] * 10 + [1] * 10


def test_the_training_order_resumes_from_the_sampler_state() -> None:
    """The sampler's state (epoch, position) puts a fresh sampler at the same place, and a finished epoch resumes as
    the next one from its start."""
    from lightning_smart.data.datamodule import EpochShuffle

    data = list(range(10))
    first = EpochShuffle(data, num_replicas=1, rank=0, seed=3)
    first.set_epoch(1)
    order = iter(first)
    seen = [next(order) for _ in range(4)]
    assert first.state_dict() == {"yielded": 4, "epoch": 1}
    reference = EpochShuffle(data, num_replicas=1, rank=0, seed=3)
    reference.set_epoch(1)
    fresh = EpochShuffle(data, num_replicas=1, rank=0, seed=3)
    fresh.load_state_dict(first.state_dict())
    assert seen + list(fresh) == list(reference)
    done = EpochShuffle(data, num_replicas=1, rank=0, seed=3)
    done.load_state_dict({"yielded": 10, "epoch": 1})
    reference.set_epoch(2)
    assert done.epoch == 2 and list(done) == list(reference)
