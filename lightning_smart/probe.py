"""What the perturbation does next to dropout, measured while training runs; and the warnings it raises.

The probe (:meth:`~lightning_smart.SmartLightningModule.smart_probe`) measures, on one training batch, the output
change from the perturbation alone, ℓs(f(x + δ), f(x)) on the same dropout masks, and from dropout alone, ℓs between
two clean forwards. Their ratio says what R_s regularizes: below about 1%, R_s is dropout consistency (R-Drop);
around 1 and above, the perturbation acts.

At the first step the ratio says little: a freshly initialised head gives every output change a tiny ℓs, and the
ratio moves by orders of magnitude as the head trains (on the 6-layer MiniLM, ε = 0.3 of the token RMS moved the
output by a quarter of what dropout does at the first step of the default run, and ε = 0.1 by 17× (TREC-6) to 173×
(movie sentiment) at plain fine-tuning's final weights: benchmarks/RESULTS.md §1.3).
So the mixin probes at the first regularized step and again at the first regularized step after each validation,
logs every ratio, and warns on a ratio measured after the first step only.

:func:`measure` runs the probe through a module's own SMART methods; the other functions decide from numbers and
modules, and the mixin logs and warns.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from lightning_smart import precision
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


class ProbeSchedule:
    """When the mixin probes (with ``smart.probe``): at its first regularized step, and at the first regularized
    step after each validation inside ``fit``; each result logged and kept in ``module.smart_probes``, and one
    warning (:func:`weak_perturbation_warning`) the first time a probe after step 0 finds the perturbation weak.

    The first regularized step also warns where a half-precision model (no autocast) cannot resolve ε.
    """

    def __init__(self) -> None:
        self.first_done = False
        self.due = False
        self.warned = False

    def at_regularized_step(self, module: Any, batch: Any, batch_idx: int, x: torch.Tensor, step: int) -> None:
        """Called by the step (λs > 0) with the clean perturbed tensor ``x``."""
        if self.first_done:
            if self.due:
                self.run(module, batch, batch_idx, step)
            return
        self.first_done = True
        cfg = module.smart
        if not torch.is_autocast_enabled(x.device.type):
            found = precision.resolution(x, module.smart_padding_mask(batch), cfg.epsilon, cfg.epsilon_scale)
            module._smart_warn(precision.unresolved_warning(cfg.epsilon, cfg.epsilon_scale, found))
        if cfg.probe:
            self.run(module, batch, batch_idx, step)

    def run(self, module: Any, batch: Any, batch_idx: int, step: int) -> None:
        """The probe on this training batch at the current weights, on a forked RNG: its dropout draws leave the
        training's stream (and a resume) as they were."""
        self.due = False
        device: torch.device = module.device
        with replayed(rng_snapshot(device), device):
            measured = module.smart_probe(batch, batch_idx)
        result = ProbeResult(step, measured["perturbation_kl"], measured["dropout_kl"])
        module.smart_probes.append(result)
        module._smart_log({"smart/probe_perturbation_kl": result.perturbation_kl,
                           "smart/probe_dropout_kl": result.dropout_kl, "smart/probe_ratio": result.ratio})
        if not self.warned:
            cfg = module.smart
            self.warned = module._smart_warn(weak_perturbation_warning(result, cfg.epsilon, cfg.epsilon_scale))

    def after_validation(self, module: Any) -> None:
        """After a validation inside ``fit`` (not the sanity check), the next regularized step probes again."""
        trainer = getattr(module, "_trainer", None)
        if module.smart.probe and trainer is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.due = True


def measure(module: Any, batch: Any, batch_idx: int = 0) -> dict[str, float]:
    """On one batch, the output change (ℓs) from the perturbation alone and from dropout alone.

    ``module`` is a :class:`~lightning_smart.SmartLightningModule`, measured through the forward training uses
    (its precision and policy, its perturbation site, its ascent): ``perturbation_kl`` is ℓs(f(x + δ), f(x)) with
    the same dropout masks on both sides, ``dropout_kl`` ℓs between two clean forwards that differ only in their
    dropout masks. The caller chooses the random state (the mixin forks it, so training's stream is untouched).
    """
    site = module.smart_perturbation_site()
    device: torch.device = module.device
    rng = rng_snapshot(device)
    module._smart_choose_precision(batch, site)
    with module.smart_precision():
        with captured(site) as clean, torch.no_grad():
            z = module.smart_forward(batch)
        assert clean.output is not None
        delta, scale, _ = module.smart_perturbation(batch, batch_idx, site, clean.output, z, rng)
        with torch.no_grad():
            with perturbed(site, delta, scale), replayed(rng, device):
                adv = module.smart_forward(batch)
            other_masks = module.smart_forward(batch)
    return {"perturbation_kl": float(module.smart_divergence(adv, z, batch)),
            "dropout_kl": float(module.smart_divergence(other_masks, z, batch))}


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


__all__ = ["WEAK_RATIO", "ProbeResult", "ProbeSchedule", "dropout_off_warning", "measure", "weak_perturbation_warning"]
