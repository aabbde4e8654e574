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
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1).mean()


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


def is_regression(outputs: Tensor) -> bool:
    """Whether ``outputs`` are regression outputs (``[B]`` or ``[B, 1]``), as transformers' ``num_labels=1``."""
    return outputs.ndim == 1 or outputs.shape[-1] == 1


def symmetric_divergence(p: Tensor, q: Tensor) -> Tensor:
    """ℓs for the output kind: symmetric KL for logits, squared error for regression outputs."""
    return squared_error(p, q) if is_regression(p) else symmetric_kl(p, q)


__all__ = ["is_regression", "squared_error", "symmetric_divergence", "symmetric_kl"]
