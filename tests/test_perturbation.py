"""The ascent step, the projection and the noise against float64 re-derivations (step 3 of ``docs/algorithm.md``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_smart import ascent_step, project, sample_noise
from lightning_smart.perturbation import captured, perturbed

B, T, D = 4, 6, 5


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    delta = 1e-5 * torch.randn(B, T, D, generator=g) * mask[..., None]
    grad = torch.randn(B, T, D, generator=g) * torch.logspace(-3, 1, B)[:, None, None]
    return delta, grad, mask


def reference_paper_step(delta, grad, mask, eta, eps, norm):
    """Step 3, rule 'paper', in float64, one example at a time."""
    out = torch.zeros_like(delta, dtype=torch.float64)
    for i in range(delta.shape[0]):
        real = mask[i].bool()
        d, g = delta[i][real].double(), grad[i][real].double()
        length = g.abs().max() if norm == "inf" else g.norm()
        step = d + eta * g / (length + 1e-12)
        if norm == "inf":
            step = step.clamp(-eps, eps)
        elif step.norm() > eps:
            step = step * eps / step.norm()
        out[i][real] = step
    return out


@pytest.mark.parametrize("norm", ["inf", "l2"])
@pytest.mark.parametrize(("eta", "eps"), [(1e-3, 1e-5), (1e-6, 1e-5), (0.5, 0.1)])
def test_paper_step_matches_float64_and_stays_in_the_ball(norm: str, eta: float, eps: float) -> None:
    delta, grad, mask = _inputs()
    out = ascent_step(delta, grad, mask, eta=eta, epsilon=eps, rule="paper", norm=norm)
    expected = reference_paper_step(delta, grad, mask, eta, eps, norm)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6 * eps)
    flat = out.double().reshape(B, -1)
    if norm == "inf":
        assert (flat.abs().amax(-1) <= eps).all()
    else:
        assert (flat.norm(dim=-1) <= eps + 1e-12).all()
    assert (out[mask == 0] == 0).all()


def test_mtdnn_step_matches_float64() -> None:
    delta, grad, mask = _inputs(1)
    eta = 1e-3
    out = ascent_step(delta, grad, mask, eta=eta, epsilon=1e-5, rule="mtdnn", norm="inf")
    step = delta.double() + eta * grad.double() * mask[..., None].double()
    expected = step / (step.abs().amax(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-9)
    assert out.abs().amax() > 0.99  # ≈1 per coordinate: about 1e5 times the paper's ε


def test_zero_gradient_gives_a_finite_step() -> None:
    delta, _, mask = _inputs()
    out = ascent_step(delta, torch.zeros_like(delta), mask, eta=1e-3, epsilon=1e-5, rule="paper", norm="l2")
    torch.testing.assert_close(out, project(delta, 1e-5, "l2"))


def test_noise_is_seeded_masked_and_has_standard_deviation_sigma() -> None:
    like = torch.empty(64, 32, 16)
    mask = torch.ones(64, 32)
    mask[:, 24:] = 0
    a, b = sample_noise(like, mask, 0.5, seed=3), sample_noise(like, mask, 0.5, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, sample_noise(like, mask, 0.5, seed=4))
    assert (a[:, 24:] == 0).all() and a.dtype == torch.float32
    assert abs(a[:, :24].std().item() - 0.5) < 0.01
    assert (sample_noise(like, mask, 0.0, seed=3) == 0).all()


def test_hook_adds_delta_only_inside_the_block() -> None:
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 4, 3)
    delta = torch.full((2, 4, 3), 0.25)
    with perturbed(layer, delta), captured(layer) as record:
        out = layer(x)
    torch.testing.assert_close(out, layer(x) + 0.25)
    torch.testing.assert_close(record.output, out)
    scale = torch.full((2, 4, 1), 2.0)
    clean = layer(x)
    with perturbed(layer, delta, scale):
        torch.testing.assert_close(layer(x), clean + 0.5)
    assert not layer._forward_hooks
