r"""The perturbation δ (steps 2–3 of ``docs/algorithm.md``): noise, the ascent step, the projection, the forward hook.

Pure tensor code; no Lightning. δ lives in float32 and has the shape of the perturbed tensor x
(``[B, T, D]`` for embeddings); ``mask`` (``[B, T]``, 1 for real tokens) keeps it zero at padding and
restricts every norm to the real tokens. With a ``scale`` (``epsilon_scale=relative``), δ is measured
in units of each token's RMS: the hook adds ``scale * δ``, so every rule and bound below holds for
δ / scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_smart.config import ConfigError

TINY = 1e-12
"""Guards the division by ‖g‖ (an all-zero gradient gives a zero step, not NaN)."""


def expand_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """``mask`` (``[B, T]``) as float32 broadcastable to ``like`` (``[B, T, ...]``); all ones if ``None``."""
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.float32, device=like.device).reshape(
            like.shape[:2] + (1,) * (like.ndim - 2)
        )
    return mask.to(device=like.device, dtype=torch.float32).reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def token_rms(x: Tensor) -> Tensor:
    """Each token's RMS over its last dimension, float32, detached: the unit of ``epsilon_scale=relative``."""
    return x.detach().float().pow(2).mean(-1, keepdim=True).sqrt()


def sample_noise(like: Tensor, mask: Tensor | None, sigma: float, seed: int) -> Tensor:
    """δ0 ~ N(0, σ²) of ``like``'s shape, float32, zero at padding, drawn from a generator seeded by ``seed``.

    A private generator makes the noise a function of the seed alone: a resumed run draws what an
    uninterrupted one would, and the global RNG (dropout) is left as plain fine-tuning leaves it.
    """
    generator = torch.Generator(device=like.device).manual_seed(seed)
    noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=torch.float32)
    return noise.mul_(sigma).mul_(expand_mask(mask, like))


def per_example_norm(t: Tensor, norm: str) -> Tensor:
    r""":math:`\|t_i\|_\infty` or :math:`\|t_i\|_2` of each example over all but the batch dimension.

    The result keeps ``t``'s number of dimensions, so it broadcasts against ``t``.
    """
    flat = t.reshape(t.shape[0], -1)
    out = flat.abs().amax(-1) if norm == "inf" else flat.norm(dim=-1)
    return out.reshape((t.shape[0],) + (1,) * (t.ndim - 1))


@functools.lru_cache(maxsize=64)
def _at_most(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number ≤ ``value``: ε rounded to nearest may exceed ε. Once per (ε, dtype), on the host."""
    bound = torch.tensor(value, dtype=dtype)
    if bound.item() > value:
        bound = torch.nextafter(bound, torch.zeros_like(bound))
    return float(bound.item())


def project(delta: Tensor, epsilon: float, norm: str) -> Tensor:
    r"""Π_ε: the nearest point of the ε-ball of each example.

    .. math::
        \Pi^\infty_\epsilon(\delta) = \mathrm{clamp}(\delta, -\epsilon, \epsilon), \qquad
        \Pi^2_\epsilon(\delta_i) = \delta_i \min\!\left(1, \frac{\epsilon}{\|\delta_i\|_2}\right)
    """
    if norm == "inf":
        bound = _at_most(epsilon, delta.dtype)
        return delta.clamp(-bound, bound)
    # The length in float64 and a radius shrunk by 4 ulp keep ‖δ_i‖₂ ≤ ε after rounding the product.
    length = per_example_norm(delta.double(), "l2")
    radius = epsilon * (1 - 4 * torch.finfo(delta.dtype).eps)
    return delta * (radius / length.clamp_min(TINY)).clamp(max=1.0).to(delta.dtype)


def ascent_step(
    delta: Tensor, grad: Tensor, mask: Tensor | None, *, eta: float, epsilon: float, rule: str, norm: str
) -> Tensor:
    r"""One step of the inner maximization (step 3 of ``docs/algorithm.md``).

    ``rule="paper"``: a normalized step then the projection, per example over its real tokens,

    .. math::
        \delta \leftarrow \Pi_\epsilon\left(\delta + \eta\, \frac{g}{\|g\| + 10^{-12}}\right)

    ``rule="mtdnn"``: the public implementations' per-token normalization, no projection,

    .. math::
        \delta_t \leftarrow \frac{\delta_t + \eta g_t}{\|\delta_t + \eta g_t\|_\infty + 10^{-6}}

    Args:
        delta: the current δ (float32).
        grad: g = ∂ℓs/∂δ.
        mask: ``[B, T]`` real-token mask or ``None``.
        eta: η, the step size.
        epsilon: ε, the radius (``rule="paper"`` only).
        rule: ``paper`` or ``mtdnn``.
        norm: ``inf`` or ``l2`` (``rule="paper"`` only).
    """
    m = expand_mask(mask, delta)
    grad = grad.float() * m
    if rule == "mtdnn":
        step = delta + eta * grad
        return step / (step.abs().amax(-1, keepdim=True) + 1e-6) * m
    step = delta + eta * grad / (per_example_norm(grad, norm) + TINY)
    return project(step * m, epsilon, norm)


@contextmanager
def perturbed(module: nn.Module, delta: Tensor, scale: Tensor | None = None) -> Iterator[None]:
    """Within the block, ``module``'s output is ``output + scale * delta``.

    A forward hook, so the model is called exactly as its users call it: nothing is fed back
    through ``inputs_embeds`` (which would apply position embeddings and LayerNorm twice).
    """
    shift = delta if scale is None else delta * scale
    with _adding(module, lambda _: shift):
        yield


@contextmanager
def _adding(module: nn.Module, addend: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, ``module``'s output (or its first element) is ``output + addend(output)``, by a forward hook;
    a half-precision model without autocast keeps its dtype."""

    def hook(_: nn.Module, __: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        out = first + addend(first)
        if first.dtype != out.dtype and not torch.is_autocast_enabled(first.device.type):
            out = out.to(first.dtype)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def input_embeddings(model: Any) -> nn.Module | None:
    """A transformers (or PEFT) model's input embeddings, where NEFTune adds its noise; ``None`` for other models."""
    get = getattr(model, "get_input_embeddings", None)
    return get() if callable(get) else None


def neftune_noise(like: Tensor, mask: Tensor | None, alpha: float, seed: int) -> Tensor:
    """NEFTune's noise for embeddings ``like`` ``[B, T, d]``: U(−1, 1)·α/√(L·d), L each example's real tokens
    (``mask``'s sum; T without a mask), zero at padding; float32, from a generator seeded by ``seed``."""
    generator = torch.Generator(device=like.device).manual_seed(seed)
    noise = torch.rand(like.shape, generator=generator, device=like.device, dtype=torch.float32).mul_(2).sub_(1)
    if mask is None:
        real = torch.full((like.shape[0],), float(like.shape[1]), device=like.device)
    else:
        real = mask.to(like.device).float().sum(-1).clamp_min(1.0)
    scale = alpha / (real * like.shape[-1]).sqrt()
    return noise.mul_(scale.reshape(-1, *([1] * (like.ndim - 1)))).mul_(expand_mask(mask, like))


@contextmanager
def noised(module: nn.Module, mask: Tensor | None, alpha: float, seed: int) -> Iterator[None]:
    """Within the block, ``module``'s output gets :func:`neftune_noise` (drawn at each call, from ``seed``)."""
    with _adding(module, lambda first: neftune_noise(first, mask, alpha, seed)):
        yield


class Capture:
    """The last output of a submodule, recorded by :func:`captured` (its graph kept)."""

    output: Tensor | None = None


@contextmanager
def captured(module: nn.Module) -> Iterator[Capture]:
    """Within the block, record ``module``'s output in the yielded :class:`Capture`."""
    record = Capture()

    def hook(_: nn.Module, __: Any, output: Any) -> None:
        record.output = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


RngSnapshot = tuple[Tensor, Tensor | None]
"""The global CPU generator's state, and the device's CUDA generator state on a GPU."""


def rng_snapshot(device: torch.device) -> RngSnapshot:
    """The random state dropout draws its masks from, on ``device``."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def replayed(snapshot: RngSnapshot | None, device: torch.device) -> Iterator[None]:
    """Within the block, dropout draws the masks it drew at ``snapshot`` (the same masks again: shared dropout);
    afterwards the random state is as before the block. ``None`` draws as usual."""
    if snapshot is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else None):
        torch.set_rng_state(snapshot[0])
        if snapshot[1] is not None:
            torch.cuda.set_rng_state(snapshot[1], device)
        yield


def find_site(owner: nn.Module, path: str) -> nn.Module:
    """The submodule of ``owner`` whose output δ is added to: the dotted ``path`` (``smart.perturb_at``), or for
    ``auto`` the embeddings block of the transformers model in ``owner.model`` (word + position + type embeddings
    after their LayerNorm, the authors' injection point; through a PEFT wrapper too), else its word embeddings.

    Raises:
        ConfigError: ``path`` names no submodule, or ``auto`` finds no embeddings.
    """
    name = type(owner).__name__
    if path != "auto":
        try:
            return owner.get_submodule(path)
        except AttributeError:
            raise ConfigError(
                f"smart.perturb_at={path!r} names no submodule of {name}: give a dotted path"
                " from the LightningModule, e.g. 'model.bert.embeddings' (see named_modules())"
            ) from None
    model = getattr(owner, "model", None)
    inner = model
    for _ in range(4):  # a PEFT wrapper's base_model chain ends at the transformer's own base model
        embeddings = getattr(inner, "embeddings", None)
        if isinstance(embeddings, nn.Module):
            return embeddings
        outer, inner = inner, getattr(inner, "base_model", None)
        if inner is None or inner is outer:
            break
    get_input_embeddings = getattr(model, "get_input_embeddings", None)
    word = get_input_embeddings() if callable(get_input_embeddings) else None
    if isinstance(word, nn.Module):
        return word
    raise ConfigError(
        f"smart.perturb_at='auto' found no embeddings in {name}: 'auto' needs a transformers"
        " model in self.model; set smart.perturb_at to the dotted path of the submodule whose output to"
        " perturb, e.g. 'embed'"
    )
