"""``TextDataModule``: a :class:`TextDataConfig`'s examples, tokenized, batched and shuffled for Lightning.

The module holds state only (the config, the splits once read, the features once tokenized) and hands out the
loaders; reading, naming labels and splitting are the functions of :mod:`lightning_smart.data.sources`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from lightning_smart.data.config import TextDataConfig
from lightning_smart.data.examples import Examples
from lightning_smart.data.features import Features, by_length, encode_texts, load_tokenizer
from lightning_smart.data.sources import load_text
from lightning_smart.data.splits import Splits


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


class TextDataModule(pl.LightningDataModule):
    """Text classification or regression data for :class:`~lightning_smart.tasks.SequenceTask`.

    Each batch is padded to its own longest sequence (``DataCollatorWithPadding``), never to ``max_length``, on the
    tokenizer's ``padding_side``. The training order is :class:`EpochShuffle`'s, seeded by the run's seed.

    Args:
        config: the data config (:class:`~lightning_smart.data.TextDataConfig`: each setting, its default, what is
            allowed).
        settings: the config's settings by name, instead of ``config`` (or, with it, replacing its values).

    Example::

        data = TextDataModule(source="movies", train_size=500, ood=["tweets"])  # TextDataModule(TextDataConfig(...))
        data.setup()
        batch = next(iter(data.train_dataloader()))  # input_ids, attention_mask, token_type_ids, labels
    """

    config_class: ClassVar[type[TextDataConfig]] = TextDataConfig

    def __init__(self, config: TextDataConfig | None = None, **settings: Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__} (or its settings by name,"
                            f" e.g. source='movies'), not {config!r}")
        self.config = self.config_class(**settings) if config is None else replace(config, **settings)
        self.save_hyperparameters(asdict(self.config))  # the settings, as checkpoints keep them
        self.stats: dict[str, Any] = {}
        """What :meth:`load` found: split sizes, what was left out, the class names (``summary.json``'s ``data``)."""
        self.label_names: list[str] | None = self.config.label_names
        """The class names in index order, given or inferred (after :meth:`load`); ``None`` for class indices."""
        self._splits: Splits | None = None
        self._features: dict[str, Features] = {}
        self._test_features: dict[str, Features] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def kind(self) -> str:
        """What the examples are: ``sequence``, ``sft`` or ``tokens``; the app picks the task by it."""
        return self.config.kind

    @property
    def test_names(self) -> list[str]:
        """Names of the test dataloaders, in order: the main test split (if any), then the ``ood`` sets."""
        return self.config.test_names

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def load(self) -> Splits:
        """Read, check and split the data, without tokenizing it (once)."""
        if self._splits is None:
            self._splits, self.stats = self._load()
            self.label_names = self.stats.get("label_names", self.label_names)
            rank_zero_info(f"data {self.config.dataset_name}: "
                           + ", ".join(f"{key} {value}" for key, value in self.stats.items()))
            self._check_tokenizer()
        return self._splits

    def _load(self) -> tuple[Splits, dict[str, Any]]:
        return load_text(self.config)

    def _check_tokenizer(self) -> None:
        """Whatever this kind of data needs of the tokenizer, checked before training."""

    def _encode(self, examples: Examples) -> Features:
        return encode_texts(self.tokenizer, examples, self.config.max_length)

    def _collator(self) -> Any:
        """Pads each batch to its longest sequence, on the tokenizer's side."""
        return DataCollatorWithPadding(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        if self._features:
            return
        splits = self.load()
        self._features = {"train": self._encode(splits.train), "val": by_length(self._encode(splits.val))}
        self._test_features = {name: by_length(self._encode(examples)) for name, examples in splits.test.items()}

    def _loader(self, features: Features, train: bool = False) -> DataLoader:
        config = self.config
        if not train:
            return DataLoader(features, batch_size=config.eval_batch_size,  # type: ignore[arg-type]
                              collate_fn=self._collator(), num_workers=config.num_workers,
                              persistent_workers=config.num_workers > 0)
        # Seeded by the run's seed (seed_everything), so the order needs no global random state; the loader's own
        # generator seeds its workers without drawing from the global one either, which a resume restores.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        trainer = self.trainer
        sampler = EpochShuffle(features, num_replicas=trainer.world_size if trainer else 1,  # type: ignore[arg-type]
                               rank=trainer.global_rank if trainer else 0, shuffle=True, seed=seed)
        return StatefulDataLoader(
            features,  # type: ignore[arg-type]
            batch_size=config.batch_size,
            sampler=sampler,
            collate_fn=self._collator(),
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._features["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._features["val"])

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self._test_features[name]) for name in self.test_names]
