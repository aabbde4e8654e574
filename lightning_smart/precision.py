"""``smart.perturbed_precision``: where the regularized step's passes run under a training autocast.

Under ``bf16-mixed``/``16-mixed`` a small δ can lie below what the compute dtype resolves at the perturbed point:
x + δ then rounds back to x and R_s measures rounding, not δ. :func:`resolution` compares the radius with the
dtype's spacing at the median ``|x|`` of the perturbed tensor; ``auto`` runs the regularized passes in fp32 unless the
radius is at least twice that spacing, ``fp32`` and ``autocast`` force one way.

fp32 is not always full fp32: with ``torch.set_float32_matmul_precision('high' | 'medium')`` (or a backend's own
switch, ``torch.backends.cuda.matmul.fp32_precision``) float32 matrix products round their inputs to TF32 (10 mantissa
bits) or bf16 (7), and the first one after the perturbed tensor rounds δ away as autocast would. So the decision also
reads the float32 matmul precision in force (:func:`matmul_precision`), and passes whose radius only full fp32
resolves run their matrix products at full precision, the switches restored after (:func:`full_precision_matmuls`).

:class:`PrecisionPolicy` applies the choice for the mixin (decided once per compute dtype and matmul precision); the
rest are pure functions. No Lightning.

A model that computes in half precision without autocast (half-precision weights, or FSDP2's
``MixedPrecisionPolicy``, which casts each unit's weights and inputs) has no fp32 pass to fall back to: there ``fp32``
is refused, and a radius it cannot resolve is warned about with the remedies that can act.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_smart.config import ConfigError
from lightning_smart.perturbation import captured, expand_mask, replayed, rng_snapshot, token_rms

MATMUL_EPS = {"ieee": torch.finfo(torch.float32).eps, "tf32": 2.0**-10, "bf16": torch.finfo(torch.bfloat16).eps}
"""The machine epsilon of a float32 matrix product's internal precision: full fp32, TF32 (10 mantissa bits) or bf16
(7)."""


def matmul_precision(device_type: str) -> str:
    """The internal precision of float32 matrix products on ``device_type`` now: ``"ieee"`` (full fp32), ``"tf32"``
    or ``"bf16"``, as ``torch.set_float32_matmul_precision`` or the backend's own switches set it (CUDA: cuBLAS; CPU:
    oneDNN). Another device type: ``"ieee"``.

    It reads the setting, not the hardware: a CPU without TF32 or bf16 matrix units computes ``"tf32"`` in full fp32.

    Example:
        >>> import torch
        >>> torch.set_float32_matmul_precision("medium")
        >>> matmul_precision("cpu"), matmul_precision("cuda")
        ('bf16', 'tf32')
        >>> torch.set_float32_matmul_precision("highest")
        >>> matmul_precision("cpu")
        'ieee'
    """
    backends = torch.backends
    if not hasattr(backends, "fp32_precision"):  # torch < 2.9: the legacy switches only
        if device_type == "cuda":
            return "tf32" if backends.cuda.matmul.allow_tf32 else "ieee"
        return "bf16" if device_type == "cpu" and torch.get_float32_matmul_precision() == "medium" else "ieee"
    # The operation's switch, else its backend's, else the generic one ("none": not set), as torch resolves them.
    levels = {"cuda": (backends.cuda.matmul, backends.cudnn),
              "cpu": (backends.mkldnn.matmul, backends.mkldnn)}  # type: ignore[attr-defined]
    if device_type not in levels:
        return "ieee"
    found = [level.fp32_precision for level in levels[device_type]] + [backends.fp32_precision]
    precision = next((p for p in found if p != "none"), "ieee")
    return "ieee" if device_type == "cuda" and precision == "bf16" else precision  # cuBLAS has no bf16 mode


@contextmanager
def full_precision_matmuls(device_type: str) -> Iterator[None]:
    """Float32 matrix products on ``device_type`` at full precision inside; every switch as it was after.

    Where the legacy setting (``torch.get_float32_matmul_precision()``) agrees with the per-backend ones, both are
    set and restored together, so code that reads either sees one consistent setting; where torch refuses to read
    it (the two APIs were mixed), the per-backend switches alone.
    """
    if matmul_precision(device_type) == "ieee":
        yield
        return
    backends = torch.backends
    per_backend = hasattr(backends, "fp32_precision")  # torch ≥ 2.9
    switches = (backends.cuda.matmul, backends.mkldnn.matmul) if per_backend else ()  # type: ignore[attr-defined]
    saved = [switch.fp32_precision for switch in switches]
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # torch ≥ 2.9 when the legacy and per-backend switches disagree
        legacy = None
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
    for switch in switches:
        switch.fp32_precision = "ieee"
    try:
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for switch, value in zip(switches, saved, strict=True):
            switch.fp32_precision = value


def spacing_at(magnitude: float, eps: float) -> float:
    """The spacing of a format with machine epsilon ``eps`` at ``magnitude`` (0 at 0)."""
    return 2.0 ** math.floor(math.log2(magnitude)) * eps if magnitude > 0 else 0.0


class Resolution(NamedTuple):
    """The radius ε (× the median token RMS if relative) and the compute dtype's spacing at the median ``|x|``."""

    radius: float
    spacing: float
    magnitude: float
    dtype: torch.dtype
    autocast: bool = True
    """Whether ``dtype`` is a training autocast's, else the tensor's own (half-precision weights, or FSDP2's
    ``MixedPrecisionPolicy`` casting them)."""
    matmul: str = "ieee"
    """The internal precision of float32 matrix products in force (:func:`matmul_precision`)."""

    @property
    def matmul_spacing(self) -> float:
        """The spacing at the median ``|x|`` of what float32 matrix products compute in."""
        return spacing_at(self.magnitude, MATMUL_EPS[self.matmul])

    @property
    def reduced_matmuls(self) -> bool:
        """Whether the passes as training runs them compute in float32 with TF32 or bf16 matrix products."""
        return not self.autocast and self.dtype == torch.float32 and self.matmul != "ieee"


def resolution(x: Tensor, mask: Tensor | None, epsilon: float, epsilon_scale: str, matmul: str = "ieee") -> Resolution:
    """The radius of the ε-ball at ``x`` and the spacing of the dtype ``x`` is computed in (autocast's if on);
    ``matmul``: the float32 matmul precision in force, kept with them.

    Example:
        >>> import torch
        >>> found = resolution(torch.ones(1, 2, 4), None, 1e-5, "absolute", matmul="tf32")
        >>> found.radius, found.spacing, found.dtype, found.matmul_spacing
        (1e-05, 1.1920928955078125e-07, torch.float32, 0.0009765625)
    """
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
    real = expand_mask(mask, x).reshape(x.shape[:2]) > 0 if x.ndim >= 2 else torch.ones_like(x, dtype=torch.bool)
    magnitude = x.detach().float().abs()[real].median().item()
    unit = token_rms(x)[real].median().item() if epsilon_scale == "relative" else 1.0
    return Resolution(epsilon * unit, spacing_at(magnitude, torch.finfo(dtype).eps), magnitude, dtype, autocast, matmul)


class Decision(NamedTuple):
    """Where the regularized passes run."""

    fp32: bool
    """Out of the training autocast, in float32."""
    full_matmuls: bool
    """With float32 matrix products at full precision, whatever TF32 or bf16 matmul setting is in force."""


def decide(policy: str, found: Resolution) -> Decision:
    """``smart.perturbed_precision``'s decision at ``found``.

    ``fp32``: out of the autocast, with full-precision matrix products, always; ``autocast``: as training runs,
    always. ``auto``: out of the autocast where the radius is under twice the autocast dtype's spacing; then, where the
    passes compute in float32 (out of the autocast, or a float32 model without one), full-precision matrix products
    where the radius is under twice the spacing of the float32 matmul precision in force.

    Example:
        >>> import torch
        >>> paper = resolution(torch.ones(1, 2, 4), None, 1e-5, "absolute", matmul="tf32")  # no autocast
        >>> decide("auto", paper)
        Decision(fp32=False, full_matmuls=True)
        >>> decide("auto", resolution(torch.ones(1, 2, 4), None, 0.01, "relative", matmul="tf32"))
        Decision(fp32=False, full_matmuls=False)
    """
    if policy != "auto":
        return Decision(policy == "fp32", policy == "fp32")
    fp32 = found.autocast and found.radius < 2 * found.spacing
    in_float32 = fp32 or (not found.autocast and found.dtype == torch.float32)
    return Decision(fp32, in_float32 and found.radius < 2 * found.matmul_spacing)


def unresolved_warning(epsilon: float, epsilon_scale: str, found: Resolution) -> str | None:
    """The warning for a radius under half the spacing of what the passes compute in as training runs them (δ
    rounded away in the perturbed forward), or ``None``: the autocast dtype, the half-precision model's, or float32
    with TF32 or bf16 matrix products."""
    spacing = found.matmul_spacing if found.reduced_matmuls else found.spacing
    if found.radius >= spacing / 2:
        return None
    eps = MATMUL_EPS[found.matmul] if found.reduced_matmuls else torch.finfo(found.dtype).eps
    floor = f"smart.epsilon_scale=relative with smart.epsilon ≥ {2 * eps:.1e}"
    what = f"{found.dtype} with {found.matmul.upper()} matrix products" if found.reduced_matmuls else str(found.dtype)
    if found.reduced_matmuls:
        remedy = ("Remedy: smart.perturbed_precision=auto (full-precision matrix products in the regularized passes),"
                  f" torch.set_float32_matmul_precision('highest'), or {floor}.")
    elif found.autocast:
        remedy = f"Remedy: smart.perturbed_precision=auto (fp32 passes), {floor}, or train in 32-bit precision."
    else:
        remedy = (f"The model computes in {found.dtype} without autocast (half-precision weights, or FSDP2's"
                  " MixedPrecisionPolicy), so no pass can run in fp32. Remedy: float32 weights with"
                  f" trainer.precision=bf16-mixed (autocast; fully_shard without mp_policy), or {floor}.")
    return (
        f"smart.epsilon={epsilon:g} ({epsilon_scale}; radius {found.radius:.2e}) is below what {what} resolves"
        f" at the perturbed point (spacing {spacing:.2e} at median |x| = {found.magnitude:.3g}): the perturbed"
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
    """``smart.perturbed_precision`` for one module: decided at the first regularized step of each training autocast
    dtype and float32 matmul precision, from the radius at the perturbed point (:func:`resolution`,
    :func:`decide`); without autocast only where float32 matrix products are TF32 or bf16.

    ``module`` is a :class:`~lightning_smart.SmartLightningModule` (its ``smart``, ``device``, ``smart_forward`` and
    ``smart_padding_mask``).
    """

    def __init__(self) -> None:
        self.decided: tuple[tuple[torch.dtype | None, str], Decision] | None = None
        """((the autocast dtype, ``None`` without, the float32 matmul precision) it was decided under, the decision),
        once decided."""
        self.fp32_checked = False
        self.backward_full = False
        """Whether the step's backward takes full-precision matrix products: set by the mixin at each step."""

    def choose(self, module: Any, batch: Any, site: nn.Module) -> str | None:
        """Decide under a new autocast dtype or matmul precision, on a clean forward without gradient that replays
        the step's dropout masks (the RNG training draws from is left as it was); returns the warning to give, if
        any."""
        device: torch.device = module.device
        autocast = torch.is_autocast_enabled(device.type)
        matmul = matmul_precision(device.type)
        if not autocast:
            self._refuse_fp32_without_autocast(module, batch, site)
            if matmul == "ieee":
                return None  # full fp32, or a half-precision model (the probe warns where it cannot resolve ε)
        key = (torch.get_autocast_dtype(device.type) if autocast else None, matmul)
        if self.decided is not None and self.decided[0] == key:
            return None
        with captured(site) as clean, torch.no_grad(), replayed(rng_snapshot(device), device):
            module.smart_forward(batch)
        if clean.output is None:
            return None  # the step itself raises, naming smart.perturb_at
        cfg = module.smart
        radius = min(cfg.radii)  # with smart.epsilon=auto, the smallest radius it may choose
        found = resolution(clean.output, module.smart_padding_mask(batch), radius, cfg.epsilon_scale, matmul)
        self.decided = key, decide(cfg.perturbed_precision, found)
        if cfg.perturbed_precision == "autocast" and (autocast or found.dtype == torch.float32):
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

    def in_force(self, module: Any) -> Decision:
        """The decision the regularized passes run under: the policy's, or ``auto``'s once decided; with λs = 0, as
        training runs."""
        policy = module.smart.perturbed_precision
        if module.smart.lambda_s <= 0 or policy == "autocast" or (policy == "auto" and self.decided is None):
            return Decision(False, False)
        return Decision(True, True) if policy == "fp32" else self.decided[1]  # type: ignore[index]

    @contextmanager
    def context(self, module: Any) -> Iterator[None]:
        """The regularized passes' precision (:meth:`in_force`): autocast turned off, float32 matrix products at full
        precision (restored after), or as training runs."""
        device_type = module.device.type
        decision = self.in_force(module)
        with ExitStack() as stack:
            if decision.fp32 and torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
            if decision.full_matmuls:
                stack.enter_context(full_precision_matmuls(device_type))
            yield

    def backward_context(self, module: Any) -> AbstractContextManager[Any]:
        """Full-precision float32 matrix products for the backward of a step whose regularized passes took them
        (:attr:`backward_full`): R_s's weight gradient is the difference of the backward passes through the perturbed
        and the clean forward, O(δ) apart, which TF32 or bf16 products would round away as they would in the forward."""
        return full_precision_matmuls(module.device.type) if self.backward_full else nullcontext()


__all__ = ["MATMUL_EPS", "Decision", "PrecisionPolicy", "Resolution", "decide", "fp32_impossible_error",
           "full_precision_matmuls", "matmul_precision", "resolution", "spacing_at", "unresolved_warning"]
