"""The kinds of output the mixin interprets, and the task loss and ℓs of each (SPEC §2, §3).

A model's outputs are one of: ``single_label`` logits ``[B, C]`` (softmax classes), ``multi_label`` logits
``[B, C]`` (independent Bernoulli labels; also a one-logit binary classifier), or ``regression`` outputs
``[B]``/``[B, 1]``. The model's config decides where it describes the outputs (its ``num_labels`` is their
width): ``problem_type`` and ``num_labels`` as transformers reads them. Without such a config, the shape decides.
Pure functions; no Lightning.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from lightning_smart.divergence import bernoulli_symmetric_kl, is_regression, squared_error, symmetric_kl

OutputKind = Literal["single_label", "multi_label", "regression"]


def output_kind(outputs: Tensor, config: Any = None) -> OutputKind:
    """The kind of ``outputs``: from ``config`` (a transformers config) where its ``num_labels`` is their width,
    else from their shape (one output per example is regression, more are softmax logits).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> output_kind(torch.zeros(4, 3)), output_kind(torch.zeros(4))
        ('single_label', 'regression')
        >>> output_kind(torch.zeros(4, 3), SimpleNamespace(num_labels=3, problem_type="multi_label_classification"))
        'multi_label'
    """
    num_labels = getattr(config, "num_labels", None)
    if num_labels != (1 if outputs.ndim == 1 else outputs.shape[-1]):
        return "regression" if is_regression(outputs) else "single_label"
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification" or (problem == "single_label_classification" and num_labels == 1):
        return "multi_label"
    if problem == "regression" or (problem is None and num_labels == 1):
        return "regression"
    return "single_label"


def task_loss(outputs: Tensor, labels: Tensor, kind: OutputKind) -> Tensor:
    """L: cross-entropy for single-label logits, binary cross-entropy with logits (mean over labels and examples)
    for multi-label ones, mean squared error for regression outputs; in float32."""
    if kind == "regression":
        return F.mse_loss(outputs.reshape(-1).float(), labels.reshape(-1).float())
    if kind == "multi_label":
        return F.binary_cross_entropy_with_logits(outputs.float(), labels.float().reshape(outputs.shape))
    return F.cross_entropy(outputs.float(), labels)


def divergence(p: Tensor, q: Tensor, kind: OutputKind) -> Tensor:
    """ℓs(p, q), batch mean: the symmetric KL of the softmax distributions, the Bernoulli symmetric KL per label,
    or the squared error, by ``kind``."""
    if kind == "regression":
        return squared_error(p, q)
    if kind == "multi_label":
        return bernoulli_symmetric_kl(p, q)
    return symmetric_kl(p, q)


__all__ = ["OutputKind", "divergence", "output_kind", "task_loss"]
