"""What the perturbation does next to dropout, measured while training runs; and the warnings it raises.

The probe (:meth:`~lightning_smart.SmartLightningModule.smart_probe`) measures, on one training batch, the output
change from the perturbation alone, ℓs(f(x + δ), f(x)) on the same dropout masks, and from dropout alone, ℓs between
two clean forwards. Their ratio says what R_s regularizes: below about 1%, R_s is dropout consistency (R-Drop);
around 1 and above, the perturbation acts.

At the first step the ratio says little: a freshly initialised head gives every output change a tiny ℓs, and the
ratio moves by orders of magnitude as the head trains (the guide to choosing ε in the docs has the figures).
So the mixin probes at the first regularized step and again at the first regularized step after each validation,
logs every ratio, and warns on a ratio measured after the first step only.

With ``smart.epsilon=auto`` the same measurement chooses the radius: :func:`calibrate` returns the smallest radius of
the grid whose ratio reaches ``smart.target_ratio``, searched from the radius in force (down while the target is
still reached, up while it is not; the ratio grows with the radius), the clean forward and dropout's ℓs shared by
every radius tried. R_s is off until the first calibration, at the first regularized step after the first
validation: at the first step the fresh head's ratio would choose a radius several grid points too large.

:func:`measure` and :func:`calibrate` run the probe through a module's own public SMART methods and return what they
measured; :class:`ProbeSchedule` returns each result with what to warn about; the other functions decide from
numbers and modules. The mixin keeps, logs and warns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_smart import config, precision
from lightning_smart._lightning import attached_trainer
from lightning_smart.perturbation import captured, perturbed, replayed, rng_snapshot

WEAK_RATIO = 0.01
"""A perturbation whose ℓs is under this fraction of dropout's is not measured by R_s (its effect is dropout's)."""


class ProbeResult(NamedTuple):
    """One probe: the optimizer step it was measured at and the two output changes."""

    step: int
    perturbation_kl: float
    dropout_kl: float

    @property
    def ratio(self) -> float:
        """ℓs of the perturbation over ℓs of dropout (``inf`` where dropout changes nothing)."""
        return self.perturbation_kl / self.dropout_kl if self.dropout_kl > 0 else float("inf")


class Probed(NamedTuple):
    """What one regularized step's probing found, for the mixin to keep, log and warn about."""

    result: ProbeResult | None = None
    warnings: tuple[str, ...] = ()


class ProbeSchedule:
    """When the mixin probes (with ``smart.probe``): at its first regularized step, and at the first regularized
    step after each validation inside ``fit``. It returns each result and what to warn about: one warning
    (:func:`weak_perturbation_warning`) the first time a probe after step 0 finds the perturbation weak, and at the
    first regularized step, where a half-precision model (no autocast) cannot resolve ε, that one.
    """

    def __init__(self) -> None:
        self.first_done = False
        self.due = False
        self.warned = False

    def at_regularized_step(self, module: Any, batch: Any, batch_idx: int, x: torch.Tensor, step: int) -> Probed:
        """Called by the step (λs > 0) with the clean perturbed tensor ``x``; probes when due."""
        if self.first_done:
            return self.run(module, batch, batch_idx, step) if self.due else Probed()
        self.first_done = True
        cfg, epsilon = module.smart, module.smart_epsilon
        unresolved = None
        if not torch.is_autocast_enabled(x.device.type):
            found = precision.resolution(x, module.smart_padding_mask(batch), epsilon, cfg.epsilon_scale)
            unresolved = precision.unresolved_warning(epsilon, cfg.epsilon_scale, found)
        # With epsilon=auto the calibrations probe, at each radius they try.
        probed = self.run(module, batch, batch_idx, step) if cfg.probe and not cfg.auto else Probed()
        if unresolved:
            probed = probed._replace(warnings=(unresolved, *probed.warnings))
        return probed

    def run(self, module: Any, batch: Any, batch_idx: int, step: int) -> Probed:
        """The probe on this training batch at the current weights (:meth:`smart_probe`), on a forked RNG: its
        dropout draws leave the training's stream (and a resume) as they were."""
        self.due = False
        device: torch.device = module.device
        with replayed(rng_snapshot(device), device):
            measured = module.smart_probe(batch, batch_idx)
        result = ProbeResult(step, measured["perturbation_kl"], measured["dropout_kl"])
        weak = None if self.warned else weak_perturbation_warning(result, module.smart_epsilon,
                                                                  module.smart.epsilon_scale)
        self.warned = self.warned or weak is not None
        return Probed(result, (weak,) if weak else ())

    def after_validation(self, module: Any) -> None:
        """After a validation inside ``fit`` (not the sanity check), the next regularized step probes again."""
        if module.smart.probe and not module.smart.auto and inside_fit(module):
            self.due = True


def inside_fit(module: Any) -> bool:
    """Whether ``module`` is being fitted and not sanity-checked: a validation there is one of the run's own."""
    trainer = attached_trainer(module)
    return trainer is not None and trainer.state.fn == "fit" and not trainer.sanity_checking


class Probing(NamedTuple):
    """One batch's shared part of the probe: dropout's ℓs, and the perturbation's ℓs at any radius."""

    dropout_kl: Tensor
    perturbation_kl: Callable[[float | None], Tensor]


@contextmanager
def probing(module: Any, batch: Any, batch_idx: int = 0) -> Iterator[Probing]:
    """The probe's forwards on one batch: the clean forward and a second clean forward on other dropout masks run
    once, on entry; ``perturbation_kl(ε)`` runs the ascent at radius ε (``None``: the radius in force) and the
    perturbed forward on the clean forward's masks. Values are 0-d tensors (a caller under DDP reduces them).

    The random state on entry fixes every mask; each ``perturbation_kl`` leaves it as it was, so the values at a
    radius are those of :func:`measure` at that radius from the same state. The passes run where the module's
    precision policy has them (the mixin decides it before it probes).
    """
    site = module.smart_perturbation_site()
    device: torch.device = module.device
    rng = rng_snapshot(device)
    with module.smart_precision():
        with captured(site) as clean, torch.no_grad():
            z = module.smart_forward(batch)
        assert clean.output is not None
        x = clean.output
        with torch.no_grad():
            other_masks = module.smart_forward(batch)

        def perturbation_kl(epsilon: float | None) -> Tensor:
            delta, scale, _ = module.smart_perturbation(batch, batch_idx, site, x, z, rng, epsilon=epsilon)
            with torch.no_grad(), perturbed(site, delta, scale), replayed(rng, device):
                adv = module.smart_forward(batch)
            return module.smart_divergence(adv, z, batch).detach().float()

        yield Probing(module.smart_divergence(other_masks, z, batch).detach().float(), perturbation_kl)


def measure(module: Any, batch: Any, batch_idx: int = 0) -> dict[str, float]:
    """On one batch, the output change (ℓs) from the perturbation alone and from dropout alone.

    ``module`` is a :class:`~lightning_smart.SmartLightningModule`, measured through the forward training uses
    (its precision and policy, its perturbation site, its ascent, its radius in force): ``perturbation_kl`` is
    ℓs(f(x + δ), f(x)) with the same dropout masks on both sides, ``dropout_kl`` ℓs between two clean forwards that
    differ only in their dropout masks. The caller chooses the random state (the mixin forks it, so training's
    stream is untouched).
    """
    with probing(module, batch, batch_idx) as probe:
        return {"perturbation_kl": float(probe.perturbation_kl(None)), "dropout_kl": float(probe.dropout_kl)}


class Calibration(NamedTuple):
    """One calibration of ``smart.epsilon=auto``: the optimizer step, the radius chosen, whether its ratio reached
    the target, dropout's ℓs and the perturbation's ℓs at each radius tried (in the order tried)."""

    step: int
    epsilon: float
    reached: bool
    dropout_kl: float
    tried: tuple[tuple[float, float], ...]

    def ratio(self, epsilon: float) -> float:
        """The ratio measured at ``epsilon``, one of the radii tried."""
        kl = dict(self.tried)[epsilon]
        return kl / self.dropout_kl if self.dropout_kl > 0 else float("inf")


def search(grid: Sequence[float], start: int, reaches: Callable[[float], bool]) -> tuple[int, bool]:
    """The index of the smallest radius of the increasing ``grid`` that ``reaches`` the target, searched from
    ``grid[start]`` on a ratio that grows with the radius: down while the next smaller one still reaches it, else
    up to the first that does. Where none does: the largest, and ``False``.

    Example:
        >>> grid = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
        >>> search(grid, 3, lambda e: e >= 0.03), search(grid, 0, lambda e: e >= 0.3), search(grid, 3, lambda e: False)
        ((2, True), (4, True), (5, False))
    """
    index = start
    if reaches(grid[index]):
        while index > 0 and reaches(grid[index - 1]):
            index -= 1
        return index, True
    while index + 1 < len(grid):
        index += 1
        if reaches(grid[index]):
            return index, True
    return index, False


def calibrate(
    module: Any, batch: Any, batch_idx: int, step: int, start: float | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Calibration:
    """``smart.epsilon=auto``'s radius on one batch at the current weights: the smallest of
    :data:`~lightning_smart.config.RADIUS_GRID` whose ratio (perturbation's ℓs over dropout's, as :func:`measure`
    has them) reaches ``smart.target_ratio``, searched (:func:`search`) from ``start`` (the radius in force; ``None``:
    the middle of the grid). ``reduce`` maps each ℓs to its value over the processes (e.g. the mean over DDP ranks),
    so that every rank takes the same decisions. The caller chooses the random state, as for :func:`measure`.

    Raises:
        ConfigError: dropout changes nothing on this batch: the ratio has no reference.
    """
    cfg = module.smart
    grid = config.RADIUS_GRID
    index = len(grid) // 2 if start is None else grid.index(start)
    combine = reduce or (lambda t: t)
    with probing(module, batch, batch_idx) as probe:
        dropout_kl = float(combine(probe.dropout_kl))
        if dropout_kl <= 0:
            raise config.ConfigError(no_reference_message("two clean forwards on different dropout masks give the"
                                                          " same outputs"))
        tried: dict[float, float] = {}

        def reaches(epsilon: float) -> bool:
            if epsilon not in tried:
                tried[epsilon] = float(combine(probe.perturbation_kl(epsilon)))
            return tried[epsilon] / dropout_kl >= cfg.target_ratio

        chosen, reached = search(grid, index, reaches)
    return Calibration(step, grid[chosen], reached, dropout_kl, tuple(tried.items()))


def unreached_warning(found: Calibration, target: float) -> str | None:
    """The warning for a calibration where no radius of the grid reaches the target, or ``None``.

    Example:
        >>> found = Calibration(50, 1.0, False, 1e-3, ((0.3, 2e-3), (1.0, 4e-3)))
        >>> unreached_warning(found, 10.0)[:60]
        'smart.epsilon=auto at step 50: no radius of the grid reaches'
    """
    if found.reached:
        return None
    ratios = ", ".join(f"{e:g}: {found.ratio(e):.3g}" for e, _ in sorted(found.tried))
    return (
        f"smart.epsilon=auto at step {found.step}: no radius of the grid reaches smart.target_ratio={target:g}"
        f" (ratio of the perturbation's ℓs to dropout's {found.dropout_kl:.2e}: {ratios}); R_s uses the largest,"
        f" {found.epsilon:g}, until the next calibration. Lower smart.target_ratio or give a number."
    )


def no_reference_message(why: str) -> str:
    """The refusal of ``smart.epsilon=auto`` for a model whose dropout gives the ratio no reference."""
    return (
        f"smart.epsilon=auto needs dropout as the ratio's reference, and {why}: give a number instead, e.g."
        " smart.epsilon=0.1 (relative to each token's RMS), or train with dropout"
    )


def no_dropout_error(model: nn.Module) -> str | None:
    """The refusal of ``smart.epsilon=auto`` for a model that trains without dropout, or ``None``.

    Example:
        >>> no_dropout_error(nn.Sequential(nn.Linear(2, 2)))[:45]
        'smart.epsilon=auto needs dropout as the ratio'
        >>> no_dropout_error(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).train()) is None
        True
    """
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if any(m.training for m in dropouts):
        return None
    why = ("its dropout modules are all in eval mode (call .train() on the model where you load it)" if dropouts
           else "the model has no dropout module with p > 0")
    return no_reference_message(why)


def weak_perturbation_warning(result: ProbeResult, epsilon: float, epsilon_scale: str) -> str | None:
    """The warning for a probe whose perturbation barely moves the output, or ``None``.

    Only a probe after the first step can warn: at step 0 the fresh head hides what ε will do.

    Example:
        >>> weak_perturbation_warning(ProbeResult(0, 1e-10, 1e-4), 1e-5, "absolute") is None
        True
        >>> weak_perturbation_warning(ProbeResult(50, 1e-10, 1e-4), 1e-5, "absolute")[:40]
        'SMART probe at step 50: the perturbation'
    """
    if result.step == 0 or result.dropout_kl == 0 or result.ratio >= WEAK_RATIO:
        return None
    return (
        f"SMART probe at step {result.step}: the perturbation (smart.epsilon={epsilon:g}, {epsilon_scale}) changes the"
        f" output by ℓs = {result.perturbation_kl:.2e}, {result.ratio:.1e}× what dropout alone does"
        f" ({result.dropout_kl:.2e}), under {WEAK_RATIO:.0%}: R_s measures dropout consistency, not smoothness."
        " Raise smart.epsilon (e.g. smart=relative_shared, with smart.epsilon ≥ 0.03) or set smart.shared_dropout=true;"
        " the smart/probe_ratio log follows it through training."
    )


def dropout_off_warning(model: nn.Module) -> str | None:
    """The warning for a model that trains with its dropout turned off, or ``None``.

    Dropout modules with ``p > 0`` all in eval mode: the model was left in eval mode, as transformers'
    ``from_pretrained`` returns it and as Lightning then keeps it (it restores each submodule's own mode).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).eval()
        >>> dropout_off_warning(model)[:52]
        'The model trains with dropout off: its 1 dropout mod'
        >>> dropout_off_warning(model.train()) is None
        True
    """
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not dropouts or any(m.training for m in dropouts):
        return None
    return (
        f"The model trains with dropout off: its {len(dropouts)} dropout module(s) with p > 0 are all in eval mode"
        " (transformers' from_pretrained returns eval mode, and Lightning keeps each submodule's mode), so the"
        " model overfits sooner and SMART's consistency terms lose dropout's part. Call .train() on it where you"
        " load it, e.g. self.model = AutoModelForSequenceClassification.from_pretrained(...).train(); if dropout"
        " off is what you want, set its probabilities to 0 instead."
    )


__all__ = [
    "WEAK_RATIO", "Calibration", "ProbeResult", "ProbeSchedule", "Probed", "Probing", "calibrate",
    "dropout_off_warning", "inside_fit", "measure", "no_dropout_error", "no_reference_message", "probing", "search",
    "unreached_warning", "weak_perturbation_warning",
]
