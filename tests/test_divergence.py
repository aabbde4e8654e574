"""ℓs against a float64 re-derivation of the paper's formulas, values and gradients."""

from __future__ import annotations

import pytest
import torch

from lightning_smart import squared_error, symmetric_divergence, symmetric_kl


def reference_symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    p, q = p.double(), q.double()
    log_p, log_q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (kl_pq + kl_qp).mean()


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
