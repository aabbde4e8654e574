"""``smart.perturbed_precision``: where the regularized step's passes run under a training autocast.

Under ``bf16-mixed``/``16-mixed`` a small δ can lie below what the compute dtype resolves at the perturbed point:
x + δ then rounds back to x and R_s measures rounding, not δ. :func:`resolution` compares the radius with the
dtype's spacing at the median ``|x|`` of the perturbed tensor; ``auto`` runs the regularized passes in fp32 unless the
radius is at least twice that spacing, ``fp32`` and ``autocast`` force one way. :class:`PrecisionPolicy` applies
the choice for the mixin (decided once per compute dtype); the rest are pure functions. No Lightning.

A model that computes in half precision without autocast (half-precision weights, or FSDP2's
``MixedPrecisionPolicy``, which casts each unit's weights and inputs) has no fp32 pass to fall back to: there ``fp32``
is refused, and a radius it cannot resolve is warned about with the remedies that can act.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_smart.config import ConfigError
from lightning_smart.perturbation import captured, expand_mask, replayed, rng_snapshot, token_rms


class Resolution(NamedTuple):
    """The radius ε (× the median token RMS if relative) and the compute dtype's spacing at the median ``|x|``."""

    radius: float
    spacing: float
    magnitude: float
    dtype: torch.dtype
    autocast: bool = True
    """Whether ``dtype`` is a training autocast's, else the tensor's own (half-precision weights, or FSDP2's
    ``MixedPrecisionPolicy`` casting them)."""


def resolution(x: Tensor, mask: Tensor | None, epsilon: float, epsilon_scale: str) -> Resolution:
    """The radius of the ε-ball at ``x`` and the spacing of the dtype ``x`` is computed in (autocast's if on).

    Example:
        >>> import torch
        >>> found = resolution(torch.ones(1, 2, 4), None, 1e-5, "absolute")
        >>> found.radius, found.spacing, found.dtype
        (1e-05, 1.1920928955078125e-07, torch.float32)
    """
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
    real = expand_mask(mask, x).reshape(x.shape[:2]) > 0 if x.ndim >= 2 else torch.ones_like(x, dtype=torch.bool)
    magnitude = x.detach().float().abs()[real].median().item()
    spacing = 2.0 ** math.floor(math.log2(magnitude)) * torch.finfo(dtype).eps if magnitude > 0 else 0.0
    unit = token_rms(x)[real].median().item() if epsilon_scale == "relative" else 1.0
    return Resolution(epsilon * unit, spacing, magnitude, dtype, autocast)


def runs_in_fp32(policy: str, found: Resolution) -> bool:
    """Whether the regularized passes leave the training autocast: ``fp32`` always, ``auto`` where the radius is
    under twice the spacing, ``autocast`` never."""
    return policy == "fp32" or (policy == "auto" and found.radius < 2 * found.spacing)


def unresolved_warning(epsilon: float, epsilon_scale: str, found: Resolution) -> str | None:
    """The warning for a radius under half the spacing (δ rounded away in the perturbed forward), or ``None``."""
    if found.radius >= found.spacing / 2:
        return None
    floor = f"smart.epsilon_scale=relative with smart.epsilon ≥ {2 * torch.finfo(found.dtype).eps:.1e}"
    remedy = (f"Remedy: smart.perturbed_precision=auto (fp32 passes), {floor}, or train in 32-bit precision."
              if found.autocast else
              f"The model computes in {found.dtype} without autocast (half-precision weights, or FSDP2's"
              " MixedPrecisionPolicy), so no pass can run in fp32. Remedy: float32 weights with"
              f" trainer.precision=bf16-mixed (autocast; fully_shard without mp_policy), or {floor}.")
    return (
        f"smart.epsilon={epsilon:g} ({epsilon_scale}; radius {found.radius:.2e}) is below what {found.dtype} resolves"
        f" at the perturbed point (spacing {found.spacing:.2e} at median |x| = {found.magnitude:.3g}): the perturbed"
        f" forward rounds δ away and R_s measures dropout alone. {remedy}"
    )


def fp32_impossible_error(dtype: torch.dtype) -> str:
    """The refusal of ``smart.perturbed_precision=fp32`` for a model that computes in half precision without
    autocast: nothing can turn its passes to fp32, and the setting would silently do nothing."""
    return (
        f"smart.perturbed_precision=fp32 cannot act: the model computes in {dtype} without autocast (its weights are"
        f" {dtype}, or FSDP2's MixedPrecisionPolicy casts them), so the perturbed passes cannot run in fp32. Keep the"
        " weights float32 and train with trainer.precision=bf16-mixed (autocast; fully_shard without mp_policy), or"
        " set smart.perturbed_precision=auto"
    )


class PrecisionPolicy:
    """``smart.perturbed_precision`` for one module: under a training autocast, decided at the first regularized
    step of each compute dtype from the radius at the perturbed point (:func:`resolution`, :func:`runs_in_fp32`).

    ``module`` is a :class:`~lightning_smart.SmartLightningModule` (its ``smart``, ``device``, ``smart_forward`` and
    ``smart_padding_mask``).
    """

    def __init__(self) -> None:
        self.decided: tuple[tuple[bool, torch.dtype], bool] | None = None
        """(the autocast it was decided under, whether the passes run in fp32), once decided."""
        self.fp32_checked = False

    def choose(self, module: Any, batch: Any, site: nn.Module) -> str | None:
        """Decide under a new autocast dtype, on a clean forward without gradient that replays the step's dropout
        masks (the RNG training draws from is left as it was); returns the warning to give, if any."""
        device: torch.device = module.device
        if not torch.is_autocast_enabled(device.type):
            self._refuse_fp32_without_autocast(module, batch, site)
            return None
        key = (True, torch.get_autocast_dtype(device.type))
        if self.decided is not None and self.decided[0] == key:
            return None
        with captured(site) as clean, torch.no_grad(), replayed(rng_snapshot(device), device):
            module.smart_forward(batch)
        if clean.output is None:
            return None  # the step itself raises, naming smart.perturb_at
        cfg = module.smart
        radius = min(cfg.radii)  # with smart.epsilon=auto, the smallest radius it may choose
        found = resolution(clean.output, module.smart_padding_mask(batch), radius, cfg.epsilon_scale)
        self.decided = key, runs_in_fp32(cfg.perturbed_precision, found)
        if cfg.perturbed_precision == "autocast":
            return unresolved_warning(radius, cfg.epsilon_scale, found)
        return None

    def _refuse_fp32_without_autocast(self, module: Any, batch: Any, site: nn.Module) -> None:
        """``fp32`` where the model computes in half precision without autocast: refused, once, at the first
        regularized step (one clean forward without gradient, on a forked RNG)."""
        if module.smart.perturbed_precision != "fp32" or self.fp32_checked:
            return
        self.fp32_checked = True
        device: torch.device = module.device
        with captured(site) as clean, torch.no_grad(), replayed(rng_snapshot(device), device):
            module.smart_forward(batch)
        if clean.output is not None and clean.output.dtype in (torch.float16, torch.bfloat16):
            raise ConfigError(fp32_impossible_error(clean.output.dtype))

    def context(self, module: Any) -> AbstractContextManager[Any]:
        """Autocast turned off when the policy (or ``auto``'s decision) is fp32 under a training autocast with
        λs > 0; else as training runs."""
        device_type = module.device.type
        policy = module.smart.perturbed_precision
        fp32 = torch.is_autocast_enabled(device_type) and module.smart.lambda_s > 0 and (
            policy == "fp32" or (policy == "auto" and self.decided is not None and self.decided[1])
        )
        return torch.autocast(device_type, enabled=False) if fp32 else nullcontext()


__all__ = ["PrecisionPolicy", "Resolution", "fp32_impossible_error", "resolution", "runs_in_fp32", "unresolved_warning"]
