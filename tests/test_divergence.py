"""ℓs against a float64 re-derivation of the paper's formulas, values and gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_smart import (
    bernoulli_symmetric_kl,
    divergence,
    outputs,
    squared_error,
    symmetric_divergence,
    symmetric_kl,
)
from lightning_smart.divergence import SymmetricKL
from lightning_smart.outputs import IGNORE_INDEX, position_weights


def reference_symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    p, q = p.double(), q.double()
    log_p, log_q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (kl_pq + kl_qp).mean()


def reference_bernoulli_symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) + KL(Q‖P) of Bernoulli(σ(p)) and Bernoulli(σ(q)) per label from their definition, in float64."""
    a, b = torch.sigmoid(p.double()), torch.sigmoid(q.double())
    kl_pq = a * torch.log(a / b) + (1 - a) * torch.log((1 - a) / (1 - b))
    kl_qp = b * torch.log(b / a) + (1 - b) * torch.log((1 - b) / (1 - a))
    return (kl_pq + kl_qp).reshape(p.shape[0], -1).sum(-1).mean()


@pytest.mark.parametrize("shape", [(1, 2), (8, 3), (32, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_symmetric_kl_matches_float64(shape: tuple[int, int], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    p = (3 * torch.randn(shape, generator=g)).to(dtype).requires_grad_()
    q = (3 * torch.randn(shape, generator=g)).to(dtype).requires_grad_()
    value = symmetric_kl(p, q)
    assert value.dtype == torch.float32
    p64, q64 = p.detach().double().requires_grad_(), q.detach().double().requires_grad_()
    expected = reference_symmetric_kl(p64, q64)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-7)
    value.backward()
    expected.backward()
    torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-6)
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-6)


def test_symmetric_kl_is_zero_on_equal_inputs_and_symmetric() -> None:
    p, q = torch.randn(4, 5), torch.randn(4, 5)
    assert symmetric_kl(p, p).item() == 0.0
    torch.testing.assert_close(symmetric_kl(p, q), symmetric_kl(q, p))


def test_symmetric_kl_stays_finite_for_large_logits() -> None:
    p = torch.tensor([[1e4, -1e4, 0.0], [3e4, 3e4, -5e4]], requires_grad=True)
    q = torch.tensor([[-1e4, 1e4, 0.0], [3e4 + 1.0, 3e4, -5e4]])
    value = symmetric_kl(p, q)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(p.grad).all()
    # Row 1: P and Q are point masses on different classes, KL(P‖Q) + KL(Q‖P) = 2·2e4; row 2: softmax of a shift.
    row2 = reference_symmetric_kl(p[1:].detach(), q[1:])
    torch.testing.assert_close(value.double(), (4e4 + row2) / 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(8,), (8, 1)])
def test_squared_error_matches_float64(shape: tuple[int, ...]) -> None:
    p = torch.randn(shape, requires_grad=True)
    q = torch.randn(shape, requires_grad=True)
    value = squared_error(p, q)
    p64, q64 = p.detach().double().requires_grad_(), q.detach().double().requires_grad_()
    expected = ((p64 - q64) ** 2).mean()
    # float32 arithmetic against float64: a few units in the last place of a float32 mean.
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    value.backward()
    expected.backward()
    torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-6, atol=1e-7)


def test_symmetric_divergence_picks_the_output_kind() -> None:
    logits, other = torch.randn(4, 3), torch.randn(4, 3)
    assert symmetric_divergence(logits, other) == symmetric_kl(logits, other)
    reg, other_reg = torch.randn(4, 1), torch.randn(4, 1)
    assert symmetric_divergence(reg, other_reg) == squared_error(reg, other_reg)


@pytest.mark.parametrize("shape", [(8,), (8, 1), (8, 5), (32, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bernoulli_symmetric_kl_matches_float64(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    p = (3 * torch.randn(shape, generator=g)).to(dtype).requires_grad_()
    q = (3 * torch.randn(shape, generator=g)).to(dtype).requires_grad_()
    value = bernoulli_symmetric_kl(p, q)
    assert value.dtype == torch.float32
    p64, q64 = p.detach().double().requires_grad_(), q.detach().double().requires_grad_()
    expected = reference_bernoulli_symmetric_kl(p64, q64)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-7)
    value.backward()
    expected.backward()
    rtol = 1e-2 if dtype != torch.float32 else 1e-5
    torch.testing.assert_close(p.grad.double(), p64.grad, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=rtol, atol=1e-6)


def test_bernoulli_symmetric_kl_is_zero_on_equal_inputs_symmetric_and_sums_over_labels() -> None:
    p, q = torch.randn(4, 5), torch.randn(4, 5)
    assert bernoulli_symmetric_kl(p, p).item() == 0.0
    torch.testing.assert_close(bernoulli_symmetric_kl(p, q), bernoulli_symmetric_kl(q, p))
    per_label = sum(bernoulli_symmetric_kl(p[:, i], q[:, i]) for i in range(5))
    torch.testing.assert_close(bernoulli_symmetric_kl(p, q), per_label)


def test_bernoulli_symmetric_kl_stays_finite_and_exact_for_large_logits() -> None:
    # Closed form per label: (σ(p) − σ(q))·(p − q), with σ(p) − σ(q) = σ(−q) − σ(−p) taken where it does not cancel.
    p = torch.tensor([[1e4, -3e4, 20.0]], requires_grad=True)
    q = torch.tensor([[-1e4, 3e4, 21.0]])
    value = bernoulli_symmetric_kl(p, q)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(p.grad).all()
    torch.testing.assert_close(value.double(), torch.tensor(2e4 + 6e4, dtype=torch.float64), rtol=1e-7, atol=0)
    # Both probabilities round to 1 in float32; the complements keep the divergence (σ(−20) − σ(−21))·1.
    near_one = bernoulli_symmetric_kl(p[:, 2:].detach(), q[:, 2:])
    expected = torch.sigmoid(torch.tensor(-20.0, dtype=torch.float64)) - torch.sigmoid(torch.tensor(-21.0).double())
    assert near_one > 0
    torch.testing.assert_close(near_one.double(), expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("chunk", [7, 1 << 20])  # many chunks (rows split across them) and one
def test_the_memory_saving_symmetric_kl_passes_gradcheck_in_float64(chunk: int, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    monkeypatch.setattr(divergence, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    p = (2 * torch.randn(2, 6, 5, generator=g, dtype=torch.float64)).requires_grad_()
    q = (2 * torch.randn(2, 6, 5, generator=g, dtype=torch.float64)).requires_grad_()
    # as a causal LM's shifted logits reach it: a view that is not contiguous; and with one side a constant
    assert torch.autograd.gradcheck(lambda a, b: SymmetricKL.apply(a[:, :-1], b[:, :-1]), (p, q))
    assert torch.autograd.gradcheck(lambda a, b: SymmetricKL.apply(a, b, True), (p, q))  # the shift done inside
    torch.testing.assert_close(SymmetricKL.apply(p, q, True), SymmetricKL.apply(p[:, :-1], q[:, :-1]), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a: SymmetricKL.apply(a, q.detach()), (p,))
    rows = SymmetricKL.apply(p, q)
    expected = torch.stack([reference_symmetric_kl(p[i, t:t + 1], q[i, t:t + 1]) for i in range(2) for t in range(6)])
    torch.testing.assert_close(rows.reshape(-1), expected, rtol=1e-12, atol=1e-14)


def _saved_tensors(fn: Any, *inputs: torch.Tensor) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)
    return saved


def test_the_vocabulary_sized_divergence_saves_no_softmax_for_backward() -> None:
    """What autograd keeps of ℓs on [B, T, V] logits: every saved tensor of V-sized rows is one of the two logits
    tensors themselves (same storage), none a softmax, log-softmax or product of them."""
    batch, tokens, vocab = 2, 9, 1000
    g = torch.Generator().manual_seed(0)
    p = torch.randn(batch, tokens, vocab, generator=g).requires_grad_()
    q = torch.randn(batch, tokens, vocab, generator=g).requires_grad_()
    labels = torch.randint(vocab, (batch, tokens), generator=g)
    labels[0, :3] = IGNORE_INDEX
    weights = position_weights(labels, None, "causal", p)

    def vocabulary_sized(saved: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t for t in saved if t.shape[-1:] == (vocab,) and t.numel() >= batch * (tokens - 1) * vocab]

    def new_storage(saved: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = {p.untyped_storage().data_ptr(), q.untyped_storage().data_ptr()}
        return [t for t in saved if t.untyped_storage().data_ptr() not in inputs]

    ours = vocabulary_sized(_saved_tensors(lambda a, b: outputs.divergence(a, b, "causal", weights), p, q))
    assert ours and not new_storage(ours)  # the two logits are saved, in place, and nothing else of their size

    def autograd_through_softmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # what the check would catch
        log_a, log_b = torch.log_softmax(a[:, :-1], -1), torch.log_softmax(b[:, :-1], -1)
        return (((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(-1) * weights).sum() / weights.sum()

    assert len(new_storage(vocabulary_sized(_saved_tensors(autograd_through_softmax, p, q)))) >= 4
    value = outputs.divergence(p, q, "causal", weights)
    torch.testing.assert_close(value, autograd_through_softmax(p, q), rtol=1e-5, atol=1e-7)
