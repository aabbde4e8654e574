r"""ℓs, the symmetric divergence between two model outputs.

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


def symmetric_kl_per_row(p_logits: Tensor, q_logits: Tensor, drop_last: bool = False) -> Tensor:
    """The symmetric KL of :func:`symmetric_kl` for each row of the last dimension, not averaged: ``[B]`` for
    ``[B, C]`` logits, ``[B, T]`` for per-token ``[B, T, C]`` (whose mean over counted positions is ℓs);
    ``drop_last`` leaves out the last position (``[B, T − 1]``: a causal LM's last output predicts nothing).

    Computed in float32 (float64 for float64 logits) by :class:`SymmetricKL`, which keeps nothing of the
    softmax for backward: a vocabulary-sized output costs no ``[B, T, V]`` tensor beyond the logits themselves.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"ℓs compares outputs of one shape, not {tuple(p_logits.shape)} and {tuple(q_logits.shape)}")
    if p_logits.ndim == 1:
        return SymmetricKL.apply(p_logits.unsqueeze(0), q_logits.unsqueeze(0), False).squeeze(0)
    return SymmetricKL.apply(p_logits, q_logits, drop_last)


CHUNK_ELEMENTS = 1 << 18
"""Logits per chunk of :class:`SymmetricKL` (1 MiB in float32, so a chunk's temporaries stay in cache): the largest
temporary it allocates is a few chunks."""


def _chunks(x: Tensor, drop_last: bool = False) -> Iterator[tuple[Any, ...]]:
    """Indices of blocks of whole rows of ``x`` (``[..., T, C]``, at least 2-D), each a view of ≈ CHUNK_ELEMENTS,
    never a copy; with ``drop_last``, the rows but the last of each ``T``."""
    rows = max(1, CHUNK_ELEMENTS // max(1, x.shape[-1]))
    end = x.shape[-2] - int(drop_last)
    for outer in itertools.product(*(range(n) for n in x.shape[:-2])):
        for start in range(0, end, rows):
            yield (*outer, slice(start, min(start + rows, end)))


class SymmetricKL(torch.autograd.Function):
    r"""Per-row symmetric KL of two logit tensors ``[..., C]`` that saves only the two logits for backward.

    Autograd through ``log_softmax``, ``exp`` and the products would keep several float32 tensors of the logits'
    size; this recomputes the softmax in backward, chunk by chunk. With P = softmax(p), Q = softmax(q) and
    log P − log Q = d − (a constant per row), d = p − q:

    .. math::
        \frac{\partial \ell}{\partial p} = P \odot (d - \langle P, d\rangle) + (P - Q),\qquad
        \frac{\partial \ell}{\partial q} = -Q \odot (d - \langle Q, d\rangle) - (P - Q).

    With ``drop_last`` the last row of each sequence is left out of the result (``[..., T − 1]``) and gets a zero
    gradient, written in place: slicing ``z[:, :-1]`` first would cost autograd a zero-filled ``[B, T, V]`` and a
    copy for each backward.

    Once differentiable (the step never differentiates ℓs twice).
    """

    @staticmethod
    def forward(ctx: Any, p: Tensor, q: Tensor, drop_last: bool = False) -> Tensor:
        dtype = torch.promote_types(p.dtype, torch.float32)
        shape = (*p.shape[:-2], p.shape[-2] - int(drop_last))
        out = torch.empty(shape, dtype=dtype, device=p.device)
        for index in _chunks(p, drop_last):
            a, b = p[index].to(dtype), q[index].to(dtype)
            # ⟨P − Q, log P − log Q⟩ = ⟨P − Q, p − q⟩ (the log-partition terms meet Σ(P − Q) = 0); ≥ 0 exactly, so
            # a rounding below 0 (logits that differ by a constant) is 0.
            out[index] = ((torch.softmax(a, -1) - torch.softmax(b, -1)) * (a - b)).sum(-1).clamp_min_(0)
        ctx.save_for_backward(p, q)
        ctx.drop_last = drop_last
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        p, q = ctx.saved_tensors
        wanted = [(p, 1.0) if ctx.needs_input_grad[0] else None, (q, -1.0) if ctx.needs_input_grad[1] else None]
        grads = [None if w is None else torch.empty(w[0].shape, dtype=w[0].dtype, device=w[0].device)
                 for w in wanted]
        for index in _chunks(p, ctx.drop_last):
            g = grad[index].unsqueeze(-1)
            a, b = p[index].to(g.dtype), q[index].to(g.dtype)
            prob = (torch.softmax(a, -1), torch.softmax(b, -1))
            d = a - b
            for side, (target, want) in enumerate(zip(grads, wanted, strict=True)):
                if target is None or want is None:
                    continue
                # ∂ℓ/∂p = P ⊙ (d − ⟨P, d⟩ + 1) − Q;  ∂ℓ/∂q = −(Q ⊙ (d − ⟨Q, d⟩ − 1) + P)
                own, other = prob[side], prob[1 - side]
                mean = (own.unsqueeze(-2) @ d.unsqueeze(-1)).squeeze(-1)  # ⟨P, d⟩ per row, no temporary
                block = target[index] if target.dtype == g.dtype else torch.empty_like(d)
                torch.sub(d, mean - want[1], out=block)
                block.mul_(own).sub_(other, alpha=want[1]).mul_(g * want[1])
                if block.data_ptr() != target[index].data_ptr():
                    target[index] = block
        if ctx.drop_last:
            for target in grads:
                if target is not None:
                    target[..., -1, :] = 0
        return grads[0], grads[1], None


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
