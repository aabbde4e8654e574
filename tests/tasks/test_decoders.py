"""Decoder-only classifiers through the app: tiny random Llama and GPT-2 models with a real tokenizer of their own.

The tokenizer (a BPE trained on the shipped movie snippets) has an end-of-sequence token and no padding token, as
GPT-2's and Llama's have; Llama's pads on the left, GPT-2's on the right.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedModel,
)

from lightning_smart.tasks.base import parameter_groups
from tests.helpers.app import TINY, smart_train
from tests.helpers.decoders import bpe_tokenizer


def _model(kind: str, vocab: int) -> PreTrainedModel:
    if kind == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, bos_token_id=None, eos_token_id=1))
    return GPT2ForSequenceClassification(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                                    pad_token_id=None, bos_token_id=1, eos_token_id=1))


@pytest.fixture(scope="module", params=[("llama", "left"), ("gpt2", "right")], ids=["llama", "gpt2"])
def decoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    kind, side = request.param
    folder = tmp_path_factory.mktemp(kind)
    tokenizer = bpe_tokenizer(side)
    torch.manual_seed(0)
    model = _model(kind, len(tokenizer))
    assert model.config.pad_token_id is None and tokenizer.pad_token is None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return kind, folder


@pytest.mark.slow
def test_a_decoder_trains_through_the_app_and_its_export_ignores_padding(decoder: tuple[str, Path],
                                                                         tmp_path: Path) -> None:
    kind, folder = decoder
    overrides = [o for o in TINY if not o.startswith("model=")]
    result = smart_train(["model=hub", f"model.name_or_path={folder}", *overrides, "model.lr=1e-3",
                          f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["val"]["acc"] <= 1 and summary["files"]["model"] == "model"

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.padding_side == ("left" if kind == "llama" else "right")
    texts = ["A moving, funny film.", "Dull and far too long: the plot never starts, and nothing happens at all."]
    batch = DataCollatorWithPadding(tokenizer)(tokenizer(texts))
    padded_at = 0 if kind == "llama" else -1
    assert batch["attention_mask"][0, padded_at] == 0  # the short text is padded, on the tokenizer's side
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)  # read at each text's last real token


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_no_weight_decay_on_normalization_layers_and_biases(kind: str) -> None:
    if kind == "bert":
        model: nn.Module = BertForSequenceClassification(BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    else:
        model = _model(kind, 50)
    decay, no_decay = parameter_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    spared = {id(p) for p in no_decay["params"]}
    norms = [m for m in model.modules() if type(m).__name__.endswith("Norm")]
    assert norms and all(id(p) in spared for m in norms for p in m.parameters())
    for name, p in model.named_parameters():
        norm_or_bias = name.endswith("bias") or any(p is q for m in norms for q in m.parameters())
        assert (id(p) in spared) == norm_or_bias, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
