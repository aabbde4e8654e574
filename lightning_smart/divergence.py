r"""ℓs, the symmetric divergence between two model outputs (SPEC §2).

Pure functions of two output tensors; no Lightning, no model. Both arguments keep their graphs:
R_s needs gradients through the perturbed and the clean output alike.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def symmetric_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    r"""Symmetric KL divergence between the softmax distributions of two logit tensors, batch mean.

    .. math::
        \ell_s(p, q) = \frac{1}{B}\sum_i \mathrm{KL}(P_i\|Q_i) + \mathrm{KL}(Q_i\|P_i)
                     = \frac{1}{B}\sum_i \sum_c (P_{ic} - Q_{ic})(\log P_{ic} - \log Q_{ic})

    Computed from log-softmax in float32, so large logits stay finite.

    Args:
        p_logits: ``[B, C]`` logits.
        q_logits: ``[B, C]`` logits.

    Example:
        >>> import torch
        >>> symmetric_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
        tensor(0.)
    """
    return symmetric_kl_per_row(p_logits, q_logits).mean()


def symmetric_kl_per_row(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """The symmetric KL of :func:`symmetric_kl` for each row of the last dimension, not averaged: ``[B]`` for
    ``[B, C]`` logits, ``[B, T]`` for per-token ``[B, T, C]`` (whose mean over counted positions is ℓs)."""
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def squared_error(p: Tensor, q: Tensor) -> Tensor:
    r"""Squared error of two regression outputs (``[B]`` or ``[B, 1]``), batch mean.

    .. math::
        \ell_s(p, q) = \frac{1}{B}\sum_i (p_i - q_i)^2

    Example:
        >>> import torch
        >>> squared_error(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    return (p.float().reshape(p.shape[0], -1) - q.float().reshape(q.shape[0], -1)).pow(2).sum(-1).mean()


def bernoulli_symmetric_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    r"""Symmetric KL divergence of per-label Bernoulli distributions, summed over the labels, batch mean.

    ℓs for multi-label and one-logit binary outputs: each logit is a label's own sigmoid, not a softmax class.

    .. math::
        \ell_s(p, q) = \frac{1}{B}\sum_i \sum_l \mathrm{KL}(P_{il}\|Q_{il}) + \mathrm{KL}(Q_{il}\|P_{il})
                     = \frac{1}{B}\sum_i \sum_l \sum_{s \in \{+1, -1\}}
                       (\sigma(s p_{il}) - \sigma(s q_{il}))(\log\sigma(s p_{il}) - \log\sigma(s q_{il}))

    with :math:`P_{il} = \sigma(p_{il})` the probability of label l; equal to
    :math:`\frac{1}{B}\sum_{i,l} (\sigma(p_{il}) - \sigma(q_{il}))(p_{il} - q_{il})`. Computed from log-sigmoid
    in float32, both outcomes apart, so large logits stay finite and a probability near 1 keeps its complement.

    Args:
        p_logits: ``[B, L]`` logits of L labels, or ``[B]``/``[B, 1]`` for one.
        q_logits: logits of the same shape.

    Example:
        >>> import torch
        >>> bernoulli_symmetric_kl(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 2.0]]))
        tensor(0.)
        >>> bernoulli_symmetric_kl(torch.tensor([1.0]), torch.tensor([-1.0]))  # (σ(1) − σ(−1))·2
        tensor(0.9242)
    """
    p, q = p_logits.float().reshape(p_logits.shape[0], -1), q_logits.float().reshape(q_logits.shape[0], -1)
    log_p, log_q = F.logsigmoid(p), F.logsigmoid(q)  # log P(label on)
    log_p_off, log_q_off = F.logsigmoid(-p), F.logsigmoid(-q)  # log P(label off)
    on = (log_p.exp() - log_q.exp()) * (log_p - log_q)
    off = (log_p_off.exp() - log_q_off.exp()) * (log_p_off - log_q_off)
    return (on + off).sum(-1).mean()


def is_regression(outputs: Tensor) -> bool:
    """Whether ``outputs`` are regression outputs (``[B]`` or ``[B, 1]``), as transformers' ``num_labels=1``."""
    return outputs.ndim == 1 or outputs.shape[-1] == 1


def symmetric_divergence(p: Tensor, q: Tensor) -> Tensor:
    """ℓs by the outputs' shape alone: symmetric KL for logits, squared error for one output per example.

    The mixin's ``smart_divergence`` decides from the model's config instead (and knows multi-label outputs).
    """
    return squared_error(p, q) if is_regression(p) else symmetric_kl(p, q)


__all__ = ["bernoulli_symmetric_kl", "is_regression", "squared_error", "symmetric_divergence", "symmetric_kl",
           "symmetric_kl_per_row"]
