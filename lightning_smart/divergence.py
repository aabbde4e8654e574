r"""ℓs, the symmetric divergence between two model outputs (SPEC §2).

Pure functions of two output tensors; no Lightning, no model. Both arguments keep their graphs:
R_s needs gradients through the perturbed and the clean output alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


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
    ``[B, C]`` logits, ``[B, T]`` for per-token ``[B, T, C]`` (whose mean over counted positions is ℓs).

    Computed in float32 (float64 for float64 logits) by :class:`SymmetricKL`, which keeps nothing of the
    softmax for backward: a vocabulary-sized output costs no ``[B, T, V]`` tensor beyond the logits themselves.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"ℓs compares outputs of one shape, not {tuple(p_logits.shape)} and {tuple(q_logits.shape)}")
    if p_logits.ndim == 1:
        return SymmetricKL.apply(p_logits.unsqueeze(0), q_logits.unsqueeze(0)).squeeze(0)
    return SymmetricKL.apply(p_logits, q_logits)


CHUNK_ELEMENTS = 1 << 20
"""Logits per chunk of :class:`SymmetricKL` (4 MiB in float32): the largest temporary it allocates is a few chunks."""


def _chunks(x: Tensor) -> Iterator[tuple[Any, ...]]:
    """Indices of blocks of whole rows of ``x`` (``[..., C]``, at least 2-D), each a view of ≈ CHUNK_ELEMENTS,
    never a copy: a causal LM's shifted logits ``z[:, :-1]`` are read in place."""
    rows = max(1, CHUNK_ELEMENTS // max(1, x.shape[-1]))
    for outer in itertools.product(*(range(n) for n in x.shape[:-2])):
        for start in range(0, x.shape[-2], rows):
            yield (*outer, slice(start, start + rows))


class SymmetricKL(torch.autograd.Function):
    r"""Per-row symmetric KL of two logit tensors ``[..., C]`` that saves only the two logits for backward.

    Autograd through ``log_softmax``, ``exp`` and the products would keep several float32 tensors of the logits'
    size; this recomputes the softmax in backward, chunk by chunk, from the closed form (P = softmax(p),
    Q = softmax(q), A = log P − log Q):

    .. math::
        rac{\partial \ell}{\partial p} = P \odot (A - \langle P, A
angle) + (P - Q),\qquad
        rac{\partial \ell}{\partial q} = -Q \odot (A - \langle Q, A
angle) - (P - Q)

    Once differentiable (the step never differentiates ℓs twice).
    """

    @staticmethod
    def forward(ctx: Any, p: Tensor, q: Tensor) -> Tensor:
        dtype = torch.promote_types(p.dtype, torch.float32)
        out = torch.empty(p.shape[:-1], dtype=dtype, device=p.device)
        for index in _chunks(p):
            log_p = F.log_softmax(p[index].to(dtype), dim=-1)
            log_q = F.log_softmax(q[index].to(dtype), dim=-1)
            out[index] = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)
        ctx.save_for_backward(p, q)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        p, q = ctx.saved_tensors
        want_p, want_q = ctx.needs_input_grad
        grad_p = torch.empty(p.shape, dtype=p.dtype, device=p.device) if want_p else None
        grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device) if want_q else None
        for index in _chunks(p):
            g = grad[index].unsqueeze(-1)
            log_p = F.log_softmax(p[index].to(g.dtype), dim=-1)
            log_q = F.log_softmax(q[index].to(g.dtype), dim=-1)
            prob_p, prob_q, log_ratio = log_p.exp(), log_q.exp(), log_p - log_q
            diff = prob_p - prob_q
            if grad_p is not None:
                centred = log_ratio - (prob_p * log_ratio).sum(-1, keepdim=True)
                grad_p[index] = g * (prob_p * centred + diff)
            if grad_q is not None:
                centred = log_ratio - (prob_q * log_ratio).sum(-1, keepdim=True)
                grad_q[index] = -g * (prob_q * centred + diff)
        return grad_p, grad_q


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


__all__ = ["SymmetricKL", "bernoulli_symmetric_kl", "is_regression", "squared_error", "symmetric_divergence",
           "symmetric_kl", "symmetric_kl_per_row"]
