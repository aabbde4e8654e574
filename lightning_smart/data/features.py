"""What the model takes: the tokenizer, and the token ids and labels of each example (its features)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lightning_smart.data.assets import DataError, minilm_path
from lightning_smart.data.examples import Examples

Features = list[dict[str, Any]]
"""One dict per example: ``input_ids``, ``attention_mask`` (and ``token_type_ids``), ``labels``."""


def load_tokenizer(name: str | None) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` for ``name`` (``None``: the shipped all-MiniLM-L6-v2), able to pad.

    A tokenizer without a padding token (a decoder's: GPT-2, Llama) pads with its end-of-sequence one.

    Args:
        name: ``data.tokenizer``: a Hub name or a local folder.
    """
    name = name or minilm_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise DataError(f"data.tokenizer={name!r} (by default model.name_or_path) could not be loaded: {err}"
                        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DataError(f"data.tokenizer={name!r} has neither a padding nor an end-of-sequence token:"
                            " batches cannot be padded; give it a pad_token")
        tokenizer.pad_token = tokenizer.eos_token
        rank_zero_info(f"data.tokenizer={name!r} has no padding token: padding with its end-of-sequence"
                       f" token {tokenizer.eos_token!r}, on the {tokenizer.padding_side}")
    return tokenizer


def encode_texts(tokenizer: PreTrainedTokenizerBase, examples: Examples, max_length: int) -> Features:
    """The features of texts (and text pairs) with one label each, truncated to ``max_length`` tokens."""
    encoded = tokenizer(examples.texts, examples.pairs, truncation=True, max_length=max_length)
    return [{**{k: v[i] for k, v in encoded.items()}, "labels": examples.labels[i]} for i in range(len(examples))]


def by_length(features: Features) -> Features:
    """Features sorted by length: evaluation batches of similar lengths pad less, and metrics do not depend on the
    order (the sort is stable, so the order is reproducible)."""
    return sorted(features, key=lambda f: len(f["input_ids"]))
