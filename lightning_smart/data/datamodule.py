"""``TextDataModule``: labelled text, tokenized by the model's tokenizer, padded per batch, split by a fixed seed."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from lightning_smart.data.assets import DataError, minilm_path
from lightning_smart.data.sources import (
    FILE_SOURCES,
    SNIPPETS,
    SOURCES,
    TREC_CLASSES,
    Columns,
    Examples,
    load_file,
    load_hub,
    load_snippets,
    load_trec,
)
from lightning_smart.data.splits import split_indices

Features = list[dict[str, Any]]


class EpochShuffle(StatefulDistributedSampler):
    """The training order: a shuffle seeded by the run's seed and the epoch, one shard per process.

    Its state (the epoch, and how many indices this epoch has handed out) travels in Lightning's checkpoint through
    :class:`~torchdata.stateful_dataloader.StatefulDataLoader`: a run resumed from a checkpoint taken mid-epoch goes
    on with the next batch of the same order. The epoch is part of the state because Lightning draws the resumed
    epoch's first batch before it calls ``set_epoch``.
    """

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A finished epoch resumes as the next one from its start, as an uninterrupted run goes on.
        finished = state_dict["yielded"] >= self.num_samples
        super().load_state_dict({"yielded": 0 if finished else state_dict["yielded"]})
        self.set_epoch(state_dict["epoch"] + finished)


@dataclass
class Splits:
    """The checked examples, split: training, validation, and each test set by name."""

    train: Examples
    val: Examples
    test: dict[str, Examples]


class TextDataModule(pl.LightningDataModule):
    """Text classification or regression data for :class:`~lightning_smart.tasks.SequenceTask`.

    Each batch is padded to its own longest sequence (``DataCollatorWithPadding``), never to ``max_length``, on the
    tokenizer's ``padding_side``; a tokenizer without a padding token (a decoder's) pads with its end-of-sequence one.
    Splits are drawn once with ``split_seed``; ``train_size`` caps the training set for low-resource runs.

    Args:
        source: ``movies``, ``tweets``, ``amazon``, ``nyt`` (sentiment snippets), ``trec`` (6 question
            classes), ``csv`` or ``jsonl`` (a local file), or ``hub`` (a Hugging Face dataset, needs ``datasets``).
        tokenizer: name or folder for ``AutoTokenizer``; ``None`` is the shipped all-MiniLM-L6-v2.
        num_labels: number of classes; 1 for regression (the snippets' rating instead of its sign).
        path: the file (``csv``/``jsonl``), or the dataset (``hub``): its name, or a folder saved by
            ``save_to_disk``. Splits without labels (every label −1, as GLUE's test splits) are left out, and
            named in :attr:`stats` (``unlabeled_splits_left_out``, in ``summary.json``'s ``data``).
        val_path: a separate validation file; ``None`` carves ``val_size`` out of ``path``.
        test_path: a separate test file; ``None`` carves ``test_size`` out of ``path``.
        text_column: the text's column in files and Hub datasets.
        text_pair_column: the second text of sentence-pair tasks, or ``None``.
        label_column: the label's column.
        label_names: class names in index order, for files whose labels are names.
        hub_subset: the Hub dataset's configuration (e.g. ``sst2`` of ``glue``).
        hub_val_split: the Hub split used for validation; ``None`` carves ``val_size`` out of ``train``.
        hub_test_split: the Hub split used for testing; ``None`` carves ``test_size`` out of ``train``.
        max_length: longer inputs are truncated to this many tokens.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        val_size: validation split, a fraction (< 1) or a count (≥ 1).
        test_size: test split, a fraction or a count; 0 for none.
        split_seed: the seed of the split and of every subsample.
        train_size: keep this many training examples (a seeded random subset); ``None`` keeps all.
        ood: out-of-domain test sets, from ``tweets``, ``amazon``, ``nyt``, ``movies`` (sentiment tasks only).
        ood_size: keep this many examples of each out-of-domain set; ``None`` keeps all.
        num_workers: DataLoader worker processes.

    Example::

        data = TextDataModule("movies", train_size=500, ood=["tweets"])
        data.setup()
        batch = next(iter(data.train_dataloader()))  # input_ids, attention_mask, token_type_ids, labels
    """

    def __init__(
        self,
        source: str = "movies",
        tokenizer: str | None = None,
        num_labels: int = 2,
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        label_names: Sequence[str] | None = None,
        hub_subset: str | None = None,
        hub_val_split: str | None = "validation",
        hub_test_split: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 0,
        train_size: int | None = None,
        ood: Sequence[str] = (),
        ood_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.columns = Columns(text_column, label_column, text_pair_column, num_labels,
                               list(label_names) if label_names is not None else None)
        self.ood = list(ood)
        self._check()
        self.stats: dict[str, Any] = {}
        self._splits: Splits | None = None
        self._features: dict[str, Features] = {}
        self._test_features: dict[str, Features] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None

    # -- the config ---------------------------------------------------------------------------

    @property
    def args(self) -> AttributeDict:
        """The constructor's arguments, as ``save_hyperparameters`` recorded them (and checkpoints keep them)."""
        return cast(AttributeDict, self.hparams)

    kind = "sequence"
    """What the examples are: ``sequence`` (one label per text), ``sft`` or ``tokens``
    (:mod:`lightning_smart.data.tokens`); the app picks the task by it."""
    sources: tuple[str, ...] = SOURCES

    def _check_sizes(self, *optional: str) -> None:
        """The sizes and counts every kind of data has; ``optional`` ones may also be ``None``."""
        hp = self.args
        positive = {"max_length": hp.max_length, "batch_size": hp.batch_size, "eval_batch_size": hp.eval_batch_size,
                    "train_size": hp.train_size, "ood_size": hp.ood_size, "num_labels": hp.num_labels}
        for key, value in positive.items():
            if value is None and key in ("train_size", "ood_size", *optional):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"data.{key}={value!r} is not allowed: an integer ≥ 1")
        if not isinstance(hp.num_workers, int) or isinstance(hp.num_workers, bool) or hp.num_workers < 0:
            raise DataError(f"data.num_workers={hp.num_workers!r} is not allowed: an integer ≥ 0 (0: no workers)")
        if hp.source not in self.sources:
            raise DataError(f"data.source={hp.source!r} is not allowed for {type(self).__name__}: one of"
                            f" {', '.join(self.sources)}")
        if hp.source in (*FILE_SOURCES, "hub") and not hp.path:
            what = "the dataset's name" if hp.source == "hub" else "the file"
            raise DataError(f"data.path is required for data.source={hp.source}: {what}")

    def _check(self) -> None:
        hp = self.args
        self._check_sizes()
        if hp.source in SNIPPETS and hp.num_labels not in (1, 2):
            raise DataError(f"data.num_labels={hp.num_labels} is not allowed for data.source={hp.source}: 2 (the"
                            " rating's sign) or 1 (the rating, regression)")
        if hp.source == "trec" and hp.num_labels != len(TREC_CLASSES):
            raise DataError(f"data.num_labels={hp.num_labels} is not allowed for data.source=trec: 6 (coarse classes)")
        if hp.label_names is not None and len(hp.label_names) != hp.num_labels:
            raise DataError(f"data.label_names has {len(hp.label_names)} names but data.num_labels={hp.num_labels}")
        unknown = [name for name in self.ood if name not in SNIPPETS]
        if unknown:
            raise DataError(f"data.ood={self.ood} is not allowed: {unknown} unknown; choose from {', '.join(SNIPPETS)}")
        if self.ood and hp.num_labels not in (1, 2):
            raise DataError(f"data.ood={self.ood} needs a sentiment task: data.num_labels 2 (sign) or 1 (rating),"
                            f" not {hp.num_labels}")
        if len(set(self.test_names)) < len(self.test_names):
            raise DataError(f"data.ood={self.ood} repeats a test set of {self.test_names}: name each set once")

    @property
    def dataset_name(self) -> str:
        """The main data set's name: the source, the file's stem or the Hub dataset's."""
        hp = self.args
        if hp.source in FILE_SOURCES:
            return Path(hp.path).stem
        return str(hp.path).rstrip("/").split("/")[-1] if hp.source == "hub" else str(hp.source)

    @property
    def test_names(self) -> list[str]:
        """Names of the test dataloaders, in order: the main test split (if any), then the ``ood`` sets."""
        hp = self.args
        given = hp.test_path if hp.source in FILE_SOURCES else hp.hub_test_split if hp.source == "hub" else None
        has_test = given is not None or hp.test_size > 0
        return ([self.dataset_name] if has_test else []) + self.ood

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            name = self.args.tokenizer or minilm_path()
            try:
                tokenizer = AutoTokenizer.from_pretrained(name)
            except (OSError, ValueError) as err:
                raise DataError(f"data.tokenizer={name!r} (by default model.name_or_path) could not be loaded: {err}"
                                ) from None
            if tokenizer.pad_token is None:  # decoder-only models (GPT-2, Llama) ship none: pad with end-of-text
                if tokenizer.eos_token is None:
                    raise DataError(f"data.tokenizer={name!r} has neither a padding nor an end-of-sequence token:"
                                    " batches cannot be padded; give it a pad_token")
                tokenizer.pad_token = tokenizer.eos_token
                rank_zero_info(f"data.tokenizer={name!r} has no padding token: padding with its end-of-sequence"
                               f" token {tokenizer.eos_token!r}, on the {tokenizer.padding_side}")
            self._tokenizer = tokenizer
        return self._tokenizer

    # -- the examples -------------------------------------------------------------------------

    def load(self) -> Splits:
        """Read, check and split the data, without tokenizing it."""
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    def _read(self) -> tuple[Examples, dict[str, Examples], dict[str, int]]:
        """The main examples, the separately given splits (``val``, ``test``), and what each source dropped."""
        hp = self.args
        given: dict[str, Examples] = {}
        dropped: dict[str, int] = {}
        if hp.source in SNIPPETS:
            main, dropped[hp.source] = load_snippets(hp.source, hp.num_labels)
        elif hp.source == "trec":
            main = load_trec()
        elif hp.source in FILE_SOURCES:
            main = load_file(hp.path, hp.source, self.columns)
            for split, key in (("val", "val_path"), ("test", "test_path")):
                if hp[key]:
                    given[split] = load_file(hp[key], hp.source, self.columns, key=f"data.{key}")
        else:
            main, given = self._load_hub()
        return main, given, dropped

    def _load(self) -> Splits:
        hp = self.args
        main, given, dropped = self._read()
        train, val, test = split_indices(len(main), 0 if "val" in given else hp.val_size,
                                         0 if "test" in given else hp.test_size, hp.split_seed)
        self.stats["train_available"] = len(train)
        if hp.train_size is not None:
            if hp.train_size > len(train):
                rank_zero_warn(f"data.train_size={hp.train_size} exceeds the {len(train)} training examples: using all")
            train = train[:hp.train_size]
        splits = Splits(main.select(train), given.get("val", main.select(val)), {})
        if not len(splits.val):
            raise DataError(f"data.val_size={hp.val_size} leaves no validation examples of {self.dataset_name}")
        if self.test_names[:1] == [self.dataset_name]:
            splits.test[self.dataset_name] = given.get("test", main.select(test))
        for domain in self.ood:
            examples, dropped[domain] = load_snippets(domain, hp.num_labels)
            keep = len(examples) if hp.ood_size is None else min(hp.ood_size, len(examples))
            splits.test[domain] = examples.select(sorted(random.Random(hp.split_seed).sample(range(len(examples)),
                                                                                              keep)))
        self.stats |= {"train": len(splits.train), "val": len(splits.val),
                       "test": {name: len(examples) for name, examples in splits.test.items()}}
        # the failed-run rule's floor: what always predicting the commonest class scores
        if self.kind == "sequence" and hp.num_labels > 1:
            counts = Counter(splits.val.labels)
            self.stats["val_majority"] = round(max(counts.values()) / len(splits.val), 6)
        if hp.num_labels == 2 and dropped:
            self.stats["dropped_zero_rating"] = dropped
        rank_zero_info(f"data {self.dataset_name}: " + ", ".join(f"{key} {value}" for key, value in self.stats.items()))
        return splits

    def _load_hub(self) -> tuple[Examples, dict[str, Examples]]:
        hp = self.args
        loaded, unlabeled = load_hub(hp.path, hp.hub_subset, self.columns)
        if unlabeled:
            self.stats["unlabeled_splits_left_out"] = unlabeled
        wanted = {"train": ("data.path", "train"), "val": ("data.hub_val_split", hp.hub_val_split),
                  "test": ("data.hub_test_split", hp.hub_test_split)}
        for key, split in wanted.values():
            if split in unlabeled:
                raise DataError(f"{key}: split {split!r} of hub dataset {hp.path!r} has no labels (every label is -1,"
                                f" as GLUE's test splits): choose a labelled one of {sorted(loaded)}, or null to carve"
                                " it out of train")
            if split is not None and split not in loaded:
                raise DataError(f"{key}: hub dataset {hp.path!r} has no split {split!r}; its splits: {sorted(loaded)}")
        given = {name: loaded[split] for name, (_, split) in wanted.items() if name != "train" and split is not None}
        return loaded["train"], given

    # -- Lightning ----------------------------------------------------------------------------

    def _encode(self, examples: Examples, by_length: bool = True) -> Features:
        encoded = self.tokenizer(examples.texts, examples.pairs, truncation=True, max_length=self.args.max_length)
        features = [{**{k: v[i] for k, v in encoded.items()}, "labels": examples.labels[i]}
                    for i in range(len(examples))]
        if by_length:  # evaluation batches of similar lengths pad less; metrics do not depend on the order
            features.sort(key=lambda f: len(f["input_ids"]))
        return features

    def setup(self, stage: str | None = None) -> None:
        if self._features:
            return
        splits = self.load()
        self._features = {"train": self._encode(splits.train, by_length=False), "val": self._encode(splits.val)}
        self._test_features = {name: self._encode(examples) for name, examples in splits.test.items()}

    def _loader(self, features: Features, train: bool = False) -> DataLoader:
        hp = self.args
        if not train:
            return DataLoader(features, batch_size=hp.eval_batch_size,  # type: ignore[arg-type]
                              collate_fn=self._collator(), num_workers=hp.num_workers,
                              persistent_workers=hp.num_workers > 0)
        # Seeded by the run's seed (seed_everything), so the order needs no global random state; the loader's own
        # generator seeds its workers without drawing from the global one either, which a resume restores.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        trainer = self.trainer
        sampler = EpochShuffle(features, num_replicas=trainer.world_size if trainer else 1,  # type: ignore[arg-type]
                               rank=trainer.global_rank if trainer else 0, shuffle=True, seed=seed)
        return StatefulDataLoader(
            features,  # type: ignore[arg-type]
            batch_size=hp.batch_size,
            sampler=sampler,
            collate_fn=self._collator(),
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def _collator(self) -> Any:
        """Pads each batch to its longest sequence, on the tokenizer's side."""
        return DataCollatorWithPadding(self.tokenizer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._features["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._features["val"])

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self._test_features[name]) for name in self.test_names]
