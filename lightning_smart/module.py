"""``SmartLightningModule``: the SMART step, in the order of ``docs/algorithm.md``, as a Lightning ``training_step``.

List the mixin before ``L.LightningModule``. The step returns F = L + λs·R_s + μ·D; Lightning's
automatic optimization then does backward, accumulation, clipping, AMP scaling and the optimizer
step. The teacher (μ·D) comes from an attached :class:`TeacherProtocol`, normally
:class:`~lightning_smart.teacher.EMATeacherCallback`, which attaches itself at fit start.

What the step calls lives beside it: the overridable hooks (:mod:`lightning_smart.overrides`), the kinds of output
(:mod:`lightning_smart.outputs`), δ's arithmetic (:mod:`lightning_smart.perturbation`), the precision policy
(:mod:`lightning_smart.precision`), the probe (:mod:`lightning_smart.probe`) and the drop-in guard
(:mod:`lightning_smart.guard`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_smart import precision, probe, sharding
from lightning_smart._lightning import attached_trainer
from lightning_smart.config import ConfigError, SmartConfig
from lightning_smart.guard import guard_subclass
from lightning_smart.overrides import SmartOverrides
from lightning_smart.perturbation import (
    RngSnapshot,
    ascent_step,
    captured,
    per_example_norm,
    perturbed,
    replayed,
    rng_snapshot,
    sample_noise,
    token_rms,
)
from lightning_smart.schedule import run_rampup


class TeacherProtocol(Protocol):
    """What the mixin needs of a teacher: its weight μ at an optimizer step and its outputs on a batch (no graph)."""

    def weight(self, step: int) -> float: ...

    def teacher_outputs(self, module: Any, batch: Any) -> Tensor: ...


class SmartLightningModule(SmartOverrides):
    """Mixin that makes a LightningModule's ``training_step`` a SMART step.

    Override four small methods where the defaults (a transformers model in ``self.model``, a
    dict batch with ``labels`` and ``attention_mask``) do not fit: :meth:`smart_forward`,
    :meth:`smart_task_loss`, :meth:`smart_padding_mask` and :meth:`smart_divergence`. Any other
    model names the submodule to perturb in ``smart.perturb_at``.

    A class that keeps its own ``training_step`` returns :meth:`smart_loss` from it (or a loss built on it).
    One that does not is refused at its first training step, before any backward or optimizer step, with an
    error that names both fixes; so is a class that lists the mixin after ``LightningModule``, at its
    definition. With ``lambda_s = 0`` and no teacher the step is plain fine-tuning either way, and not checked.

    Args:
        smart: the :class:`SmartConfig` (or a mapping of its keys); default: the paper's values.

    Example::

        class MyModel(SmartLightningModule, L.LightningModule):
            def __init__(self):
                super().__init__(smart=SmartConfig(lambda_s=1.0))
                self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

        Trainer(callbacks=[EMATeacherCallback(mu=1.0)]).fit(MyModel(), datamodule)
    """

    smart: SmartConfig
    smart_teacher: TeacherProtocol | None
    smart_skipped: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard_subclass(cls, SmartLightningModule)  # the mixin first; an own training_step must call smart_loss

    def __init__(self, *args: Any, smart: SmartConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.smart = smart if isinstance(smart, SmartConfig) else SmartConfig(**dict(smart or {}))
        self.smart_teacher = None
        self.smart_skipped = 0
        self.smart_probes: list[probe.ProbeResult] = []
        self._smart_site: tuple[tuple[str, int], nn.Module] | None = None
        self._smart_precision = precision.PrecisionPolicy()
        self._smart_probing = probe.ProbeSchedule()
        self._smart_radius: float | None = None  # smart.epsilon=auto: the radius in force, once calibrated
        self._smart_calibration_due = False
        self.smart_calibrations: list[probe.Calibration] = []
        self.smart_calibration_s = 0.0
        self._smart_loss_calls = 0  # the drop-in guard's bookkeeping (lightning_smart.guard)
        self._smart_step_depth = 0
        self._smart_step_checked = False
        self._smart_modes_checked = False

    @property
    def smart_epsilon(self) -> float | None:
        """The radius in force, ``smart.epsilon`` or with ``auto`` the last calibration's (``None`` before the
        first, and R_s is off until then)."""
        return self._smart_radius if self.smart.auto else float(self.smart.epsilon)

    @property
    def _smart_fp32(self) -> tuple[tuple[torch.dtype | None, str], precision.Decision] | None:
        """The precision policy's decision: ((the autocast dtype, the float32 matmul precision) it was made under, where
        the passes run)."""
        return self._smart_precision.decided

    # -- the step -----------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The SMART step: :meth:`smart_loss`, returned to Lightning's automatic optimization."""
        return self.smart_loss(batch, batch_idx)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward; after a step whose regularized passes took full-precision float32 matrix products,
        with them too (:meth:`lightning_smart.precision.PrecisionPolicy.backward_context`)."""
        with self._smart_precision.backward_context(self):
            super().backward(loss, *args, **kwargs)  # type: ignore[misc]

    def smart_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """F = L + λs·R_s + μ·D on ``batch`` (steps 1–6 of ``docs/algorithm.md``), ``train/*`` and ``smart/*`` logged.

        The mixin's ``training_step`` returns it; a ``training_step`` of your own calls it instead::

            def training_step(self, batch, batch_idx):
                loss = self.smart_loss(batch, batch_idx)
                self.log("train/my_metric", ...)
                return loss
        """
        self._smart_loss_calls += 1
        self._smart_precision.backward_full = False  # a plain step's backward runs as training runs
        if not self._smart_modes_checked:  # at the first training step: the modes the fit really trains in
            self._smart_modes_checked = True
            self._smart_check_modes()
        cfg, teacher = self.smart, self.smart_teacher
        step = int(self.global_step)  # type: ignore[attr-defined]
        # Lazy regularization: R_s and D on every k-th optimizer step only (all its micro-batches), weighted × k.
        regularized = not step % cfg.every_n_steps
        if regularized and self._smart_calibration_due and cfg.lambda_s > 0:
            self._smart_calibrate(batch, batch_idx, step)  # smart.epsilon=auto, after each validation
        adversarial = cfg.lambda_s > 0 and self.smart_epsilon is not None
        if not regularized or not (adversarial or teacher is not None):  # a plain step, bit for bit
            outputs = self._smart_task_forward(batch, batch_idx)
            task_loss = self.smart_task_loss(outputs, batch)
            self._smart_log({"train/loss": task_loss, "train/task_loss": task_loss})
            return task_loss

        site = self.smart_perturbation_site()
        if cfg.lambda_s > 0:
            self._smart_choose_precision(batch, site)
        with self._smart_precision.context(self):
            loss, logs = self._smart_regularized(batch, batch_idx, site, step, adversarial)
        self._smart_precision.backward_full = self._smart_precision.in_force(self).full_matmuls
        self._smart_log(logs)
        return loss

    def _smart_regularized(
        self, batch: Any, batch_idx: int, site: nn.Module, step: int, adversarial: bool
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        cfg, teacher = self.smart, self.smart_teacher
        rng = None
        # 1. Clean forward, train mode: z = f(x; θ), task loss L(z, y).
        with captured(site) as clean:
            if cfg.shared_dropout:
                rng = rng_snapshot(self.device)  # type: ignore[attr-defined]
            z = self._smart_task_forward(batch, batch_idx)
        if clean.output is None:
            raise ConfigError(
                f"smart.perturb_at={cfg.perturb_at!r}: the submodule {type(site).__name__} was not called by"
                " smart_forward(batch); name a submodule on the forward path"
            )
        x = clean.output
        task_loss = self.smart_task_loss(z, batch)
        loss = task_loss
        logs: dict[str, Tensor | float] = {"train/task_loss": task_loss}

        if adversarial:
            self._smart_record(self._smart_probing.at_regularized_step(self, batch, batch_idx, x, step))  # probe
            # 2.–3. δ: σ-noise, then K ascent steps; 4. R_s = ℓs(f(x + δ), z).
            delta, scale, finite = self.smart_perturbation(batch, batch_idx, site, x, z.detach(), rng)
            shift = delta if scale is None else delta * scale
            with perturbed(site, shift), replayed(rng, x.device):
                adv_outputs = self.smart_forward(batch)
            adv_reg = self.smart_divergence(adv_outputs, z, batch)
            ramp = 1.0 if cfg.rampup == 0 else run_rampup(
                step, self.trainer.estimated_stepping_batches, cfg.rampup, "smart.rampup")  # type: ignore[attr-defined]
            lambda_s = cfg.lambda_s * cfg.every_n_steps * ramp
            if bool(finite & torch.isfinite(adv_reg)):  # one host sync per step: skipping must not touch θ
                loss = loss + lambda_s * adv_reg
            else:
                self.smart_skipped += 1
            logs |= {"smart/adv_reg": adv_reg.detach(), "smart/skipped": float(self.smart_skipped),
                     "smart/delta_norm": per_example_norm(shift, cfg.norm).mean(), "smart/lambda_s": lambda_s,
                     "smart/epsilon": self.smart_epsilon or 0.0}  # set: R_s acts once calibrated

        if teacher is not None:
            # 5. D = ℓs(z, f(x; θ̃)), the teacher's output a constant of this step.
            bregman = self.smart_divergence(z, teacher.teacher_outputs(self, batch), batch)
            mu = teacher.weight(step) * cfg.every_n_steps
            loss = loss + mu * bregman
            logs |= {"smart/bregman": bregman.detach(), "smart/mu": mu}

        # 6. F = L + λs·R_s + μ·D; 7. (the teacher's EMA) runs after the optimizer step, in the callback.
        logs["train/loss"] = loss.detach()
        return loss, logs

    def smart_perturbation(
        self, batch: Any, batch_idx: int, site: nn.Module, x: Tensor, target: Tensor, rng: RngSnapshot | None = None,
        epsilon: float | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """δ for this batch: σ-noise then K ascent steps on ℓs(f(x + δ), target) by input-only gradients, within
        the radius ``epsilon`` (default: the radius in force, :attr:`smart_epsilon`).

        Runs in the precision it is called in (the step calls it within :meth:`smart_precision`).

        Returns δ (float32, detached), the per-token scale it is measured in (``epsilon_scale=relative``)
        or ``None``, and whether every ascent gradient was finite (a 0-d bool tensor, not synced).
        """
        cfg = self.smart
        radius = self.smart_epsilon if epsilon is None else epsilon
        assert radius is not None, "smart.epsilon=auto perturbs once calibrated"
        mask = self.smart_padding_mask(batch)
        scale = token_rms(x) if cfg.epsilon_scale == "relative" else None
        delta = sample_noise(x, mask, cfg.sigma, self.smart_noise_seed(batch_idx))
        finite = torch.ones((), dtype=torch.bool, device=x.device)
        for _ in range(cfg.ascent_steps):
            delta.requires_grad_(True)
            with perturbed(site, delta, scale), replayed(rng, x.device):
                outputs = self.smart_forward(batch)
            # g = ∂ℓs/∂δ only: no parameter .grad is touched and no weight gradient is computed.
            (grad,) = torch.autograd.grad(self.smart_divergence(outputs, target, batch), delta)
            finite = finite & torch.isfinite(grad).all()
            delta = ascent_step(delta.detach(), grad, mask, eta=cfg.eta, epsilon=radius, rule=cfg.rule, norm=cfg.norm)
        return delta, scale, finite

    def smart_precision(self) -> AbstractContextManager[Any]:
        """Where the regularized step's passes run: autocast turned off and float32 matrix products at full precision
        where ``smart.perturbed_precision`` (or ``auto``'s choice at the first regularized step) has them; else as
        training runs (:class:`lightning_smart.precision.PrecisionPolicy`)."""
        return self._smart_precision.context(self)

    def smart_probe(self, batch: Any, batch_idx: int = 0) -> dict[str, float]:
        """On one batch, the output change (ℓs) from the perturbation alone and from dropout alone.

        ``perturbation_kl``: ℓs(f(x + δ), f(x)) with the same dropout masks on both sides;
        ``dropout_kl``: ℓs between two clean forwards that differ only in their dropout masks
        (:func:`lightning_smart.probe.measure`).
        """
        self._smart_choose_precision(batch, self.smart_perturbation_site())
        return probe.measure(self, batch, batch_idx)

    # -- helpers ------------------------------------------------------------------------------

    def _smart_choose_precision(self, batch: Any, site: nn.Module) -> None:
        """Once per autocast dtype and float32 matmul precision: do they resolve the radius at the perturbed point?"""
        self._smart_warn(self._smart_precision.choose(self, batch, site))

    def _smart_check_modes(self) -> None:
        """At the first training step: warn where dropout is off; refuse reentrant activation checkpointing (the
        ascent cannot run through it), and ``smart.epsilon=auto`` without dropout (no reference) or without a
        validation inside the fit (no calibration)."""
        self._smart_warn(probe.dropout_off_warning(self))  # type: ignore[arg-type]
        reentrant = sharding.reentrant_checkpointing_error(self) if self.smart.lambda_s > 0 else None  # type: ignore[arg-type]
        if reentrant:
            raise ConfigError(reentrant)
        if not (self.smart.auto and self.smart.lambda_s > 0):
            return
        refusal = probe.no_dropout_error(self)  # type: ignore[arg-type]
        trainer = attached_trainer(self)
        if refusal is None and trainer is not None and not trainer.enable_validation:
            refusal = ("smart.epsilon=auto calibrates the radius after each validation, and this fit never validates"
                       " (no val_dataloader, no validation_step or limit_val_batches=0): give a number, e.g."
                       " smart.epsilon=0.1, or validate")
        if refusal:
            raise ConfigError(refusal)

    def _smart_calibrate(self, batch: Any, batch_idx: int, step: int) -> None:
        """``smart.epsilon=auto``: the radius from this batch at the current weights, on a forked RNG (training's
        random stream stays as it was), the same on every process (ℓs averaged over them); logged, and kept in
        :attr:`smart_calibrations` with the probe it is (:attr:`smart_probes`)."""
        self._smart_calibration_due = False
        device: torch.device = self.device  # type: ignore[attr-defined]
        trainer = attached_trainer(self)
        reduce = None if trainer is None else (lambda t: trainer.strategy.reduce(t, reduce_op="mean"))
        start = time.perf_counter()
        self._smart_choose_precision(batch, self.smart_perturbation_site())
        with replayed(rng_snapshot(device), device):
            found = probe.calibrate(self, batch, batch_idx, step, self._smart_radius, reduce)
        self.smart_calibration_s += time.perf_counter() - start
        self._smart_radius = found.epsilon
        self.smart_calibrations.append(found)
        unreached = probe.unreached_warning(found, self.smart.target_ratio)
        result = probe.ProbeResult(step, dict(found.tried)[found.epsilon], found.dropout_kl)
        self._smart_record(probe.Probed(result, (unreached,) if unreached else ()))

    def _smart_record(self, probed: probe.Probed) -> None:
        """Keep a probe's result in :attr:`smart_probes`, log it, and give its warnings."""
        if probed.result is not None:
            self.smart_probes.append(probed.result)
            self._smart_log({"smart/probe_perturbation_kl": probed.result.perturbation_kl,
                             "smart/probe_dropout_kl": probed.result.dropout_kl,
                             "smart/probe_ratio": probed.result.ratio})
        for warning in probed.warnings:
            self._smart_warn(warning)

    def on_validation_start(self) -> None:
        """``smart.epsilon=auto``: the first regularized step after a validation inside ``fit`` calibrates. Marked
        at its start, so that a checkpoint written at its end carries it: a resumed run calibrates where the
        uninterrupted one does."""
        super().on_validation_start()  # type: ignore[misc]
        if self.smart.auto and probe.inside_fit(self):
            self._smart_calibration_due = True

    def on_validation_end(self) -> None:
        """After each validation inside ``fit``, the next regularized step probes again (with ``smart.probe``)."""
        super().on_validation_end()  # type: ignore[misc]
        self._smart_probing.after_validation(self)

    def on_train_end(self) -> None:
        """Warn where ``smart.epsilon=auto`` never calibrated: R_s was off the whole fit."""
        super().on_train_end()  # type: ignore[misc]
        if self.smart.auto and self.smart.lambda_s > 0 and self._smart_radius is None:
            self._smart_warn("smart.epsilon=auto never calibrated in this fit (no validation ran before its last"
                             " step), so R_s was off throughout: validate sooner (trainer.val_check_interval) or"
                             " give a number")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With ``smart.epsilon=auto``: the radius in force, whether a calibration is due, and the calibrations."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        if self.smart.auto:
            checkpoint["smart_auto_epsilon"] = {
                "epsilon": self._smart_radius, "due": self._smart_calibration_due,
                "calibrations": [found._asdict() for found in self.smart_calibrations],
                "calibration_s": self.smart_calibration_s}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` saved when a fit resumes: it goes on with the radius it stopped
        at. A checkpoint loaded to evaluate (``test(ckpt_path="best")``) leaves the radius the fit ended with."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get("smart_auto_epsilon")
        trainer = attached_trainer(self)
        if self.smart.auto and state is not None and trainer is not None and trainer.state.fn == "fit":
            self._smart_radius, self._smart_calibration_due = state["epsilon"], state["due"]
            self.smart_calibrations = [
                probe.Calibration(**(found | {"tried": tuple(map(tuple, found["tried"]))}))
                for found in state["calibrations"]]
            self.smart_calibration_s = state["calibration_s"]

    @staticmethod
    def _smart_warn(message: str | None) -> bool:
        """Warn (once per process, on rank zero) where there is something to say; whether there was."""
        if message:
            rank_zero_warn(message)
        return bool(message)

    def _smart_log(self, values: Mapping[str, Tensor | float]) -> None:
        if attached_trainer(self) is None:
            return
        for name, value in values.items():
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=name == "train/loss")  # type: ignore[attr-defined]
