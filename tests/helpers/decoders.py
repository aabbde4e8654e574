"""A real BPE tokenizer trained on the shipped movie snippets, and tiny random decoder models saved with it.

The tokenizer has an end-of-sequence token and no padding token, as GPT-2's and Llama's have.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lightning_smart.data.sources import load_snippets


def bpe_tokenizer(padding_side: str) -> PreTrainedTokenizerFast:
    texts = load_snippets("movies", 2)[0].texts
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>",
                                   padding_side=padding_side, model_input_names=["input_ids", "attention_mask"])


def save_causal_lm(kind: str, folder: Path) -> Path:
    """A tiny random ``kind`` (llama, gpt2) causal LM and the BPE tokenizer (Llama's pads left, GPT-2's right)."""
    tokenizer = bpe_tokenizer("left" if kind == "llama" else "right")
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None,
            bos_token_id=None, eos_token_id=1))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                           pad_token_id=None, bos_token_id=1, eos_token_id=1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
