"""The kinds of output the mixin interprets, and the task loss and ℓs of each.

One output per example: ``single_label`` logits ``[B, C]`` (softmax classes), ``multi_label`` logits ``[B, C]``
(independent Bernoulli labels; also a one-logit binary classifier), or ``regression`` outputs ``[B]``/``[B, 1]``.
The model's config decides where it describes the outputs (its ``num_labels`` is their width): ``problem_type``
and ``num_labels`` as transformers reads them. Without such a config, the shape decides.

One output per token, ``[B, T, C]``: ``token`` (token classification, a label per token) or ``causal`` (a causal
language model: the output at t predicts the token at t + 1, so it is compared with the label at t + 1, exactly as
the model's own loss shifts). The model's class decides (``...ForTokenClassification``; ``...ForCausalLM`` or
``...LMHeadModel``). The task loss, ℓs and D are means over the positions that count: the padding mask's real
tokens whose label is not −100 (Hugging Face's ignore index). Pure functions; no Lightning.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_smart.config import ConfigError
from lightning_smart.divergence import (
    bernoulli_symmetric_kl,
    is_regression,
    squared_error,
    symmetric_kl,
    symmetric_kl_per_row,
)

OutputKind = Literal["single_label", "multi_label", "regression", "token", "causal"]
TOKEN_KINDS = ("token", "causal")
IGNORE_INDEX = -100
"""Hugging Face's label for a position that does not count (padding, a prompt's tokens in fine-tuning)."""


def _model_class(model: Any) -> str:
    """The transformers class under any PEFT wrappers (``PeftModel.base_model.model``)."""
    for _ in range(4):
        inner = getattr(getattr(model, "base_model", None), "model", None)
        if inner is None or inner is model or type(model).__module__.startswith("transformers"):
            break
        model = inner
    return type(model).__name__


def output_kind(outputs: Tensor, config: Any = None, model: Any = None) -> OutputKind:
    """The kind of ``outputs``: per token (``[B, T, C]``) from ``model``'s class; per example from ``config`` (a
    transformers config) where its ``num_labels`` is their width, else from their shape (one output per example is
    regression, more are softmax logits).

    Raises:
        ConfigError: outputs ``[B, T, C]`` of a model that is neither a token classifier nor a causal LM.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> output_kind(torch.zeros(4, 3)), output_kind(torch.zeros(4))
        ('single_label', 'regression')
        >>> output_kind(torch.zeros(4, 3), SimpleNamespace(num_labels=3, problem_type="multi_label_classification"))
        'multi_label'
    """
    if outputs.ndim == 3:
        name = _model_class(model)
        if name.endswith("ForTokenClassification"):
            return "token"
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal"
        raise ConfigError(
            f"outputs of shape {tuple(outputs.shape)} from {name}: one output per token, but the model is neither a"
            " ...ForTokenClassification nor a ...ForCausalLM, so which positions count and whether they shift is"
            " unknown; override smart_task_loss and smart_divergence (and smart_forward, if the outputs are not"
            " what you train on) in your LightningModule"
        )
    if outputs.ndim > 3:
        raise ConfigError(f"outputs of shape {tuple(outputs.shape)}: the mixin reads [B], [B, C] and [B, T, C];"
                          " override smart_task_loss and smart_divergence in your LightningModule")
    num_labels = getattr(config, "num_labels", None)
    if num_labels != (1 if outputs.ndim == 1 else outputs.shape[-1]):
        return "regression" if is_regression(outputs) else "single_label"
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification" or (problem == "single_label_classification" and num_labels == 1):
        return "multi_label"
    if problem == "regression" or (problem is None and num_labels == 1):
        return "regression"
    return "single_label"


def aligned(outputs: Tensor, kind: OutputKind) -> Tensor:
    """The outputs at the positions compared with labels: a causal LM's last position predicts nothing."""
    return outputs[:, :-1] if kind == "causal" else outputs


def token_labels(labels: Tensor, mask: Tensor | None, kind: OutputKind, outputs: Tensor) -> Tensor:
    """Per-token labels aligned with :func:`aligned` outputs, −100 wherever a position does not count (padding,
    or a label of −100); a causal LM's labels are shifted by one, as its own loss shifts them."""
    if labels.shape != outputs.shape[:2]:
        raise ConfigError(
            f"labels of shape {tuple(labels.shape)} for outputs of shape {tuple(outputs.shape)}: a {kind} model needs"
            " one label per token, [B, T] (−100 where a position does not count); override smart_task_loss and"
            " smart_divergence for other labels"
        )
    if mask is not None:
        labels = labels.masked_fill(mask.to(labels.device) == 0, IGNORE_INDEX)
    return labels[:, 1:] if kind == "causal" else labels


def position_weights(labels: Tensor | None, mask: Tensor | None, kind: OutputKind, outputs: Tensor) -> Tensor:
    """``[B, T']`` float32 weights of the positions that count (T' = T − 1 for a causal LM)."""
    if labels is None:
        labels = torch.zeros(outputs.shape[:2], dtype=torch.long, device=outputs.device)
    return (token_labels(labels, mask, kind, outputs) != IGNORE_INDEX).float()


def task_loss(outputs: Tensor, labels: Tensor, kind: OutputKind, mask: Tensor | None = None) -> Tensor:
    """L: cross-entropy for single-label logits, binary cross-entropy with logits (mean over labels and examples)
    for multi-label ones, mean squared error for regression outputs; per token, the cross-entropy's mean over the
    positions that count (a causal LM's output at t against the label at t + 1); in float32."""
    if kind in TOKEN_KINDS:
        target = token_labels(labels, mask, kind, outputs)
        logits = aligned(outputs, kind)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                               ignore_index=IGNORE_INDEX)
    if kind == "regression":
        return F.mse_loss(outputs.reshape(-1).float(), labels.reshape(-1).float())
    if kind == "multi_label":
        return F.binary_cross_entropy_with_logits(outputs.float(), labels.float().reshape(outputs.shape))
    return F.cross_entropy(outputs.float(), labels)


def divergence(p: Tensor, q: Tensor, kind: OutputKind, weights: Tensor | None = None) -> Tensor:
    """ℓs(p, q): the symmetric KL of the softmax distributions, the Bernoulli symmetric KL per label, or the
    squared error, by ``kind``; the batch mean, or per token the mean over the positions ``weights`` counts
    (:func:`position_weights`; every aligned position where ``None``)."""
    if kind in TOKEN_KINDS:
        per_position = symmetric_kl_per_row(p, q, drop_last=kind == "causal")  # the aligned positions
        if weights is None:
            return per_position.mean()
        return (per_position * weights).sum() / weights.sum().clamp_min(1.0)
    if kind == "regression":
        return squared_error(p, q)
    if kind == "multi_label":
        return bernoulli_symmetric_kl(p, q)
    return symmetric_kl(p, q)


__all__ = [
    "IGNORE_INDEX", "OutputKind", "aligned", "divergence", "output_kind", "position_weights", "task_loss",
    "token_labels",
]
