"""``smart.perturbed_precision``: where the regularized step's passes run under a training autocast (SPEC §5).

Under ``bf16-mixed``/``16-mixed`` a small δ can lie below what the compute dtype resolves at the perturbed point:
x + δ then rounds back to x and R_s measures rounding, not δ. :func:`resolution` compares the radius with the
dtype's spacing at the median |x| of the perturbed tensor; ``auto`` runs the regularized passes in fp32 unless the
radius is at least twice that spacing, ``fp32`` and ``autocast`` force one way. Pure functions; no Lightning.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_smart.perturbation import expand_mask, token_rms


class Resolution(NamedTuple):
    """The radius ε (× the median token RMS if relative) and the compute dtype's spacing at the median |x|."""

    radius: float
    spacing: float
    magnitude: float
    dtype: torch.dtype


def resolution(x: Tensor, mask: Tensor | None, epsilon: float, epsilon_scale: str) -> Resolution:
    """The radius of the ε-ball at ``x`` and the spacing of the dtype ``x`` is computed in (autocast's if on).

    Example:
        >>> import torch
        >>> found = resolution(torch.ones(1, 2, 4), None, 1e-5, "absolute")
        >>> found.radius, found.spacing, found.dtype
        (1e-05, 1.1920928955078125e-07, torch.float32)
    """
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    real = expand_mask(mask, x).reshape(x.shape[:2]) > 0 if x.ndim >= 2 else torch.ones_like(x, dtype=torch.bool)
    magnitude = x.detach().float().abs()[real].median().item()
    spacing = 2.0 ** math.floor(math.log2(magnitude)) * torch.finfo(dtype).eps if magnitude > 0 else 0.0
    unit = token_rms(x)[real].median().item() if epsilon_scale == "relative" else 1.0
    return Resolution(epsilon * unit, spacing, magnitude, dtype)


def runs_in_fp32(policy: str, found: Resolution) -> bool:
    """Whether the regularized passes leave the training autocast: ``fp32`` always, ``auto`` where the radius is
    under twice the spacing, ``autocast`` never."""
    return policy == "fp32" or (policy == "auto" and found.radius < 2 * found.spacing)


def unresolved_warning(epsilon: float, epsilon_scale: str, found: Resolution) -> str | None:
    """The warning for a radius under half the spacing (δ rounded away in the perturbed forward), or ``None``."""
    if found.radius >= found.spacing / 2:
        return None
    return (
        f"smart.epsilon={epsilon:g} ({epsilon_scale}; radius {found.radius:.2e}) is below what {found.dtype} resolves"
        f" at the perturbed point (spacing {found.spacing:.2e} at median |x| = {found.magnitude:.3g}): the perturbed"
        f" forward rounds δ away and R_s measures dropout alone. Remedy: smart.perturbed_precision=auto (fp32 passes),"
        f" smart.epsilon_scale=relative with smart.epsilon ≥ {2 * torch.finfo(found.dtype).eps:.1e}, or train in"
        " 32-bit precision."
    )


__all__ = ["Resolution", "resolution", "runs_in_fp32", "unresolved_warning"]
