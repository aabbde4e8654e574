"""Tiny randomly initialised models and token batches, for the method's tests; the shipped assets' folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from lightning_smart import SmartConfig, SmartLightningModule

VOCAB, SEQ = 60, 12


def tiny_bert(
    num_labels: int = 3, dropout: float = 0.0, seed: int = 0, init_range: float = 0.02
) -> BertForSequenceClassification:
    """A 2-layer BERT with hidden size 16, randomly initialised from ``seed``, in train mode."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=SEQ, num_labels=num_labels, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, classifier_dropout=dropout, initializer_range=init_range,
    )
    return BertForSequenceClassification(config).train()


def token_examples(n: int = 24, num_labels: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` examples of random tokens with padding at the end, the label a function of the first token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = ids[:, 0] % num_labels if num_labels > 1 else ids[:, 0].float() / VOCAB
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


def token_loader(n: int = 24, batch_size: int = 8, num_labels: int = 3, seed: int = 1) -> DataLoader:
    return DataLoader(token_examples(n, num_labels, seed), batch_size=batch_size, shuffle=False)


def token_batch(n: int = 8, num_labels: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    return next(iter(token_loader(n, n, num_labels, seed)))


def package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    return pl.Trainer(**(defaults | kwargs))


class GRUClassifier(SmartLightningModule, pl.LightningModule):
    """Embedding + GRU + linear: no transformers, so it names the submodule to perturb."""

    def __init__(self, perturb_at: str = "embed") -> None:
        super().__init__(smart=SmartConfig(perturb_at=perturb_at, epsilon=1e-2, sigma=1e-2, eta=1e-2, probe=False))
        self.embed = nn.Embedding(VOCAB, 16)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def smart_forward(self, batch: dict) -> torch.Tensor:
        out, _ = self.gru(self.embed(batch["input_ids"]))
        return self.head(out[:, 0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-2)


class Snapshots(pl.Callback):
    """The trainable weights after every optimizer step (before the teacher's update reads them)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def _take(self, module: pl.LightningModule) -> None:
        self.weights.append({n: p.detach().double().clone() for n, p in module.named_parameters() if p.requires_grad})

    def on_train_start(self, trainer, module):
        self._take(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._take(module)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2 * SEQ,
                         initializer_range=0.3)
    return LlamaForCausalLM(config).train()


class PlainModule(pl.LightningModule):
    """A tiny BERT fine-tuned plainly: a LightningModule of its own, without the mixin."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_bert(dropout=0.1, seed=3)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits, batch["labels"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)
