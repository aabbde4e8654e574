"""Every SMART hyperparameter, its default and its allowed range: one home for each symbol.

The dataclasses are validated at construction, so a bad value fails before any training with an
error that names the key and the allowed range. Hydra registers the same classes in its
ConfigStore (``lightning_smart.app.schema``), so the YAML presets under ``conf/`` set values only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RULES = ("paper", "mtdnn")
NORMS = ("inf", "l2")
EPSILON_SCALES = ("absolute", "relative")
PERTURBED_PRECISIONS = ("auto", "fp32", "autocast")
RADIUS_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""The relative radii (× each token's RMS) that ``smart.epsilon=auto`` chooses from."""


class ConfigError(ValueError):
    """A hyperparameter outside its allowed range; the message names the key."""


def _check(group: str, key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{group}.{key}={value!r} is not allowed: {key} must be {allowed}")


def _number(group: str, key: str, value: Any) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _check(group, key, value, is_number, "a finite number")


def _fraction(group: str, key: str, value: Any) -> None:
    _number(group, key, value)
    _check(group, key, value, 0 <= value <= 1, "a fraction of the run's optimizer steps in [0, 1]")


@dataclass
class SmartConfig:
    """The smoothness-inducing adversarial regularizer (steps 2–4 of ``docs/algorithm.md``).

    Args:
        lambda_s: λs, weight of the adversarial term R_s; 0 turns it off (≥ 0).
        epsilon: ε, radius of the ball the perturbation is projected onto (> 0); or ``auto`` (with
            ``epsilon_scale=relative`` and ``rule=paper``): the smallest radius of :data:`RADIUS_GRID` whose probe
            ratio reaches ``target_ratio``, calibrated on a training batch after each validation inside ``fit``
            (:func:`lightning_smart.probe.calibrate`); R_s is off until the first calibration.
        sigma: σ, standard deviation of the initial Gaussian noise (≥ 0).
        eta: η, step size of the normalized ascent (> 0).
        ascent_steps: K, number of ascent steps (≥ 0; 0 with σ > 0 is R3F, with σ = 0 R-Drop).
        rule: ``paper`` (normalized step, then projection onto the ε-ball) or ``mtdnn`` (the public
            implementations' per-token ℓ∞ normalization, no projection).
        norm: ``inf`` or ``l2``: the ball and the gradient normalization of ``rule=paper``.
        epsilon_scale: ``absolute``, or ``relative``: ε, σ and η are multiples of each token's RMS of
            the perturbed tensor, so one value means the same relative perturbation in any model.
        shared_dropout: the perturbed forwards replay the clean forward's dropout masks, so R_s
            measures the perturbation alone.
        perturbed_precision: under mixed precision, where the regularized step's passes run (the clean output
            R_s compares against, the ascent, the perturbed forward, the teacher's): ``auto`` under the training
            autocast when the compute dtype resolves the radius (ε, times the token scale if relative) at the
            perturbed point (at least twice its spacing at the median ``|x|``), else in fp32; ``fp32`` and
            ``autocast`` force one way. Plain steps always run as training runs them.
        perturb_at: dotted path of the submodule whose output is perturbed; ``auto`` picks a
            transformers model's embeddings block in ``self.model``.
        noise_seed: seed of the σ-noise, combined with the step; ``None`` uses ``torch.initial_seed()``.
        probe: measure the output change from the perturbation and from dropout at the first regularized step
            and after each validation (:mod:`lightning_smart.probe`); warn where it is under 1% after step 0.
        rampup: fraction of the run's optimizer steps over which λs rises from 0 by Mean Teacher's sigmoid
            ramp-up, w(t) = exp(−5 (1 − t / (rampup·T))²); 0 (default) is no ramp (0 to 1).
        every_n_steps: k, lazy regularization (StyleGAN2): R_s and D only on every k-th optimizer step, with
            weights λs·k and μ·k; the other steps are plain steps; 1 (default) is every step (≥ 1).
        neftune_alpha: α of NEFTune (Jain et al., 2023): the task forward of every training step sees uniform
            noise U(−1, 1)·α/√(L·d) on the input embeddings (L an example's real tokens, d the width); never at
            evaluation. 0 (default) is off; > 0 needs ``lambda_s = 0`` (the ``neftune`` preset: α = 5).
        target_ratio: with ``epsilon=auto``, the ratio of the perturbation's ℓs to dropout's that the chosen radius
            reaches (> 0; default 10).
    """

    lambda_s: float = 1.0
    epsilon: Any = 1e-5  # a number or "auto": OmegaConf's Union[float, str] would refuse an integer such as 1
    sigma: float = 1e-5
    eta: float = 1e-3
    ascent_steps: int = 1
    rule: str = "paper"
    norm: str = "inf"
    epsilon_scale: str = "absolute"
    shared_dropout: bool = False
    perturbed_precision: str = "auto"
    perturb_at: str = "auto"
    noise_seed: int | None = None
    probe: bool = True
    rampup: float = 0.0
    every_n_steps: int = 1
    neftune_alpha: float = 0.0
    target_ratio: float = 10.0

    def __post_init__(self) -> None:
        g = "smart"
        for key in ("lambda_s", "sigma", "eta", "target_ratio"):
            _number(g, key, getattr(self, key))
        _check(g, "lambda_s", self.lambda_s, self.lambda_s >= 0, "≥ 0")
        if isinstance(self.epsilon, str):
            _check(g, "epsilon", self.epsilon, self.auto, "a number > 0 or 'auto'")
        else:
            _number(g, "epsilon", self.epsilon)
            _check(g, "epsilon", self.epsilon, self.epsilon > 0, "> 0")
        _check(g, "target_ratio", self.target_ratio, self.target_ratio > 0, "> 0")
        _check(g, "sigma", self.sigma, self.sigma >= 0, "≥ 0")
        _check(g, "eta", self.eta, self.eta > 0, "> 0")
        k = self.ascent_steps
        _check(g, "ascent_steps", k, isinstance(k, int) and not isinstance(k, bool) and k >= 0, "an integer ≥ 0")
        _check(g, "rule", self.rule, self.rule in RULES, f"one of {', '.join(RULES)}")
        _check(g, "norm", self.norm, self.norm in NORMS, f"one of {', '.join(NORMS)}")
        _check(g, "epsilon_scale", self.epsilon_scale, self.epsilon_scale in EPSILON_SCALES,
               f"one of {', '.join(EPSILON_SCALES)}")
        _check(g, "perturbed_precision", self.perturbed_precision, self.perturbed_precision in PERTURBED_PRECISIONS,
               f"one of {', '.join(PERTURBED_PRECISIONS)}")
        _check(g, "perturb_at", self.perturb_at, isinstance(self.perturb_at, str) and self.perturb_at != "",
               "'auto' or a dotted submodule path")
        for key in ("shared_dropout", "probe"):
            _check(g, key, getattr(self, key), isinstance(getattr(self, key), bool), "true or false")
        _fraction(g, "rampup", self.rampup)
        k = self.every_n_steps
        _check(g, "every_n_steps", k, isinstance(k, int) and not isinstance(k, bool) and k >= 1, "an integer ≥ 1")
        _number(g, "neftune_alpha", self.neftune_alpha)
        _check(g, "neftune_alpha", self.neftune_alpha, self.neftune_alpha >= 0, "≥ 0 (0: no NEFTune noise)")
        if self.neftune_alpha > 0 and self.lambda_s > 0:
            raise ConfigError(
                f"smart.neftune_alpha={self.neftune_alpha:g} with smart.lambda_s={self.lambda_s:g}: NEFTune's noise on"
                " the task forward would also move the clean output that R_s compares with; choose one, smart=neftune"
                " (λs = 0, the teacher allowed) or smart.neftune_alpha=0"
            )
        if self.auto:
            self._check_auto()

    def _check_auto(self) -> None:
        """``epsilon=auto`` needs a radius relative to the token RMS that bounds an ascent."""
        if self.epsilon_scale != "relative":
            raise ConfigError(
                "smart.epsilon=auto with smart.epsilon_scale=absolute: auto chooses among radii relative to each"
                " token's RMS; set smart.epsilon_scale=relative or give a number"
            )
        if self.rule != "paper":
            raise ConfigError(
                f"smart.epsilon=auto with smart.rule={self.rule}: that rule normalizes δ to ≈ 1 per coordinate and"
                " projects onto no ball, so there is no radius to choose; set smart.rule=paper or drop"
                " smart.epsilon=auto"
            )
        if self.ascent_steps == 0:
            raise ConfigError(
                "smart.epsilon=auto with smart.ascent_steps=0: without an ascent step ε bounds nothing, so there is no"
                " radius to choose; set smart.ascent_steps ≥ 1 or give a number"
            )

    @property
    def auto(self) -> bool:
        """Whether the radius is calibrated while training (``epsilon=auto``)."""
        return self.epsilon == "auto"

    @property
    def radii(self) -> tuple[float, ...]:
        """The radii the step may perturb with, ``epsilon`` itself or the grid ``auto`` chooses from."""
        return RADIUS_GRID if self.auto else (float(self.epsilon),)

    @property
    def acts(self) -> bool:
        """Whether the step differs from plain fine-tuning without a teacher (R_s or NEFTune's noise is on)."""
        return self.lambda_s > 0 or self.neftune_alpha > 0


@dataclass
class TeacherConfig:
    """The momentum Bregman proximal point teacher (steps 5 and 7 of ``docs/algorithm.md``).

    Args:
        mu: μ, weight of the Bregman term D (≥ 0).
        beta: β0, the EMA decay during the first ``warmup_fraction`` of the optimizer steps.
        beta_final: β1, the EMA decay afterwards.
        warmup_fraction: fraction of the run's optimizer steps that use β0 (0 to 1).
        half_life: if set, replaces β0 → β1 by one β with β^(half_life·T) = 0.5, T the run's
            optimizer steps: the teacher forgets half of the past in that fraction of the run.
        dropout: run the teacher's forward with dropout (default: without).
        validate: also evaluate the teacher's weights (``val/<metric>_teacher``).
        rampup: fraction of the run's optimizer steps over which μ rises from 0 by the sigmoid ramp-up of
            :attr:`SmartConfig.rampup`; 0 (default) is no ramp.
        ema_warmup: Mean Teacher's warm-up, β_t = min(β_t, 1 − 1/(t + 1)) at the t-th update (t from 1): the
            teacher is the plain mean of the weights so far until the schedule's β takes over.
    """

    mu: float = 1.0
    beta: float = 0.99
    beta_final: float = 0.999
    warmup_fraction: float = 0.1
    half_life: float | None = None
    dropout: bool = False
    validate: bool = False
    rampup: float = 0.0
    ema_warmup: bool = False

    def __post_init__(self) -> None:
        g = "teacher"
        for key in ("mu", "beta", "beta_final", "warmup_fraction"):
            _number(g, key, getattr(self, key))
        _check(g, "mu", self.mu, self.mu >= 0, "≥ 0")
        _check(g, "beta", self.beta, 0 <= self.beta < 1, "in [0, 1)")
        _check(g, "beta_final", self.beta_final, 0 <= self.beta_final < 1, "in [0, 1)")
        _check(g, "warmup_fraction", self.warmup_fraction, 0 <= self.warmup_fraction <= 1, "in [0, 1]")
        if self.half_life is not None:
            _number(g, "half_life", self.half_life)
            _check(g, "half_life", self.half_life, 0 < self.half_life <= 1,
                   "null or a fraction of the run's optimizer steps in (0, 1]")
        _fraction(g, "rampup", self.rampup)
        for key in ("dropout", "validate", "ema_warmup"):
            _check(g, key, getattr(self, key), isinstance(getattr(self, key), bool), "true or false")
