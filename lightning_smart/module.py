"""``SmartLightningModule``: the SMART step of SPEC §2, in order, as a Lightning ``training_step``.

List the mixin before ``L.LightningModule``. The step returns F = L + λs·R_s + μ·D; Lightning's
automatic optimization then does backward, accumulation, clipping, AMP scaling and the optimizer
step. The teacher (μ·D) comes from an attached :class:`TeacherProtocol`, normally
:class:`~lightning_smart.teacher.EMATeacherCallback`, which attaches itself at fit start.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from lightning.pytorch.core.module import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_smart.config import ConfigError, SmartConfig
from lightning_smart.divergence import bernoulli_symmetric_kl, is_regression, squared_error, symmetric_kl
from lightning_smart.perturbation import (
    ascent_step,
    captured,
    expand_mask,
    per_example_norm,
    perturbed,
    sample_noise,
    token_rms,
)
from lightning_smart.probe import ProbeResult, dropout_off_warning, weak_perturbation_warning
from lightning_smart.schedule import rampup

RngSnapshot = tuple[Tensor, Tensor | None]


class TeacherProtocol(Protocol):
    """What the mixin needs of a teacher: its weight μ at an optimizer step and its outputs on a batch (no graph)."""

    def weight(self, step: int) -> float: ...

    def teacher_outputs(self, module: Any, batch: Any) -> Tensor: ...


def _rng_snapshot(device: torch.device) -> RngSnapshot:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def _replayed(snapshot: RngSnapshot | None, device: torch.device) -> Iterator[None]:
    """Within the block, dropout draws the masks it drew at ``snapshot``; afterwards the RNG is as before."""
    if snapshot is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else None):
        torch.set_rng_state(snapshot[0])
        if snapshot[1] is not None:
            torch.cuda.set_rng_state(snapshot[1], device)
        yield


def _requiring_smart_loss(step: Callable[..., Any], owner: str) -> Callable[..., Any]:
    """``step``, a ``training_step`` that replaces the mixin's, refused at its first call if SMART is on and it
    returned a loss without calling ``smart_loss`` (a nested call, e.g. through ``super()``, is not checked apart)."""

    @functools.wraps(step)
    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._smart_step_checked or self._smart_step_depth:
            return step(self, *args, **kwargs)
        calls = self._smart_loss_calls
        self._smart_step_depth += 1
        try:
            out = step(self, *args, **kwargs)
        finally:
            self._smart_step_depth -= 1
        if out is None and self.automatic_optimization:
            return out  # Lightning skips this batch: the check waits for a step that returns a loss
        if self._smart_loss_calls == calls and (self.smart.lambda_s > 0 or self.smart_teacher is not None):
            raise TypeError(
                f"{owner}.training_step replaces SmartLightningModule's but did not call self.smart_loss(batch,"
                " batch_idx): SMART would silently do nothing. Either compute `loss = self.smart_loss(batch,"
                " batch_idx)` in your training_step and return it (F, with the smart/* metrics logged), or delete"
                " your training_step and let SmartLightningModule's run."
            )
        self._smart_step_checked = True
        return out

    training_step.__smart_checked__ = True  # type: ignore[attr-defined]
    return training_step


class SmartLightningModule:
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
        mro = cls.__mro__
        if LightningModule in mro and mro.index(LightningModule) < mro.index(SmartLightningModule):
            raise TypeError(
                f"{cls.__name__} lists SmartLightningModule after LightningModule in its bases, so Lightning's"
                f" training_step and __init__ hide the mixin's: write class {cls.__name__}(SmartLightningModule,"
                " L.LightningModule), the mixin first."
            )
        # Whether an own training_step calls smart_loss is known only when it runs: wrap it to check its first call.
        step = cls.training_step
        if step is not SmartLightningModule.training_step and not getattr(step, "__smart_checked__", False):
            owner = next((c for c in mro if c.__dict__.get("training_step") is step), cls)
            cls.training_step = _requiring_smart_loss(step, owner.__name__)  # type: ignore[method-assign]

    def __init__(self, *args: Any, smart: SmartConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.smart = smart if isinstance(smart, SmartConfig) else SmartConfig(**dict(smart or {}))
        self.smart_teacher = None
        self.smart_skipped = 0
        self._smart_first_step_done = False
        self._smart_site: tuple[tuple[str, int], nn.Module] | None = None
        self._smart_fp32: tuple[tuple[bool, torch.dtype], bool] | None = None
        self._smart_loss_calls = 0
        self._smart_step_depth = 0
        self._smart_step_checked = False
        self._smart_modes_checked = False
        self._smart_probe_due = False
        self._smart_probe_warned = False
        self.smart_probes: list[ProbeResult] = []

    # -- the four methods users may override --------------------------------------------------

    def smart_forward(self, batch: Any) -> Tensor:
        """The model's outputs on a batch: logits ``[B, C]`` or regression outputs ``[B]``/``[B, 1]``."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits  # type: ignore[attr-defined]

    def smart_task_loss(self, outputs: Tensor, batch: Any) -> Tensor:
        """L for the kind of output (see :meth:`smart_divergence`): cross-entropy for single-label logits,
        binary cross-entropy with logits (mean over labels and examples) for multi-label and one-logit binary
        outputs, mean squared error for regression outputs."""
        labels = batch["labels"]
        kind = self._smart_output_kind(outputs)
        if kind == "regression":
            return F.mse_loss(outputs.reshape(-1).float(), labels.reshape(-1).float())
        if kind == "multi_label":
            return F.binary_cross_entropy_with_logits(outputs.float(), labels.float().reshape(outputs.shape))
        return F.cross_entropy(outputs.float(), labels)

    def smart_padding_mask(self, batch: Any) -> Tensor | None:
        """``[B, T]``, 1 at real tokens; ``None`` treats every position as real."""
        return batch.get("attention_mask") if isinstance(batch, Mapping) else None

    def smart_divergence(self, p: Tensor, q: Tensor, batch: Any) -> Tensor:
        """ℓs(p, q), batch mean, for the kind of output the model's config declares.

        ``self.model.config`` decides, where its ``num_labels`` is the outputs' width: ``problem_type=
        "multi_label_classification"`` (or ``"single_label_classification"`` with one logit: a one-logit binary
        classifier) gives the Bernoulli symmetric KL per label (:func:`~lightning_smart.bernoulli_symmetric_kl`);
        ``"regression"``, or none with ``num_labels = 1``, the squared error; otherwise the symmetric KL of the
        softmax distributions. Without such a config (a custom model, or a head of another width than
        ``num_labels``), the outputs' shape decides: one output per example is regression, more are softmax
        logits; override this method (and :meth:`smart_task_loss`) for multi-label outputs there.

        Used for the ascent direction, R_s, D and the probe alike; ``batch`` is there for an override to use.
        """
        kind = self._smart_output_kind(p)
        if kind == "regression":
            return squared_error(p, q)
        if kind == "multi_label":
            return bernoulli_symmetric_kl(p, q)
        return symmetric_kl(p, q)

    def _smart_output_kind(self, outputs: Tensor) -> str:
        """``regression``, ``multi_label`` or ``single_label``: from the model's config where it describes
        ``outputs``, else from their shape."""
        config = getattr(getattr(self, "model", None), "config", None)
        num_labels = getattr(config, "num_labels", None)
        if num_labels != (1 if outputs.ndim == 1 else outputs.shape[-1]):
            return "regression" if is_regression(outputs) else "single_label"
        problem = getattr(config, "problem_type", None)
        if problem == "multi_label_classification" or (problem == "single_label_classification" and num_labels == 1):
            return "multi_label"
        if problem == "regression" or (problem is None and num_labels == 1):
            return "regression"
        return "single_label"

    # -- where δ goes -------------------------------------------------------------------------

    def smart_perturbation_site(self) -> nn.Module:
        """The submodule whose output is perturbed, from ``smart.perturb_at`` (looked up once per model)."""
        key = (self.smart.perturb_at, id(getattr(self, "model", None)))
        if self._smart_site is None or self._smart_site[0] != key:
            self._smart_site = key, self._smart_find_site()
        return self._smart_site[1]

    def _smart_find_site(self) -> nn.Module:
        path = self.smart.perturb_at
        owner: nn.Module = self  # type: ignore[assignment]
        if path != "auto":
            try:
                return owner.get_submodule(path)
            except AttributeError:
                raise ConfigError(
                    f"smart.perturb_at={path!r} names no submodule of {type(self).__name__}: give a dotted path"
                    " from the LightningModule, e.g. 'model.bert.embeddings' (see named_modules())"
                ) from None
        model = getattr(self, "model", None)
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
            f"smart.perturb_at='auto' found no embeddings in {type(self).__name__}: 'auto' needs a transformers"
            " model in self.model; set smart.perturb_at to the dotted path of the submodule whose output to"
            " perturb, e.g. 'embed'"
        )

    def smart_noise_seed(self, batch_idx: int) -> int:
        """Seed of the σ-noise of this micro-batch: a function of the seed, the process's rank and the step.

        Resumes replay it; under DDP each rank draws its own noise, as it draws its own data.
        """
        base = self.smart.noise_seed if self.smart.noise_seed is not None else torch.initial_seed()
        rank = int(self.global_rank)  # type: ignore[attr-defined]
        step = int(self.global_step)  # type: ignore[attr-defined]
        return (((base * 1_000_003 + rank) * 1_000_003 + step) * 1_000_003 + batch_idx) % (2**63 - 1)

    # -- the step -----------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The SMART step: :meth:`smart_loss`, returned to Lightning's automatic optimization."""
        return self.smart_loss(batch, batch_idx)

    def smart_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """F = L + λs·R_s + μ·D on ``batch`` (SPEC §2 steps 1–6), with ``train/*`` and ``smart/*`` logged.

        The mixin's ``training_step`` returns it; a ``training_step`` of your own calls it instead::

            def training_step(self, batch, batch_idx):
                loss = self.smart_loss(batch, batch_idx)
                self.log("train/my_metric", ...)
                return loss
        """
        self._smart_loss_calls += 1
        if not self._smart_modes_checked:  # at the first training step: the modes the fit really trains in
            self._smart_modes_checked = True
            message = dropout_off_warning(self)  # type: ignore[arg-type]
            if message:
                rank_zero_warn(message)
        cfg, teacher = self.smart, self.smart_teacher
        step = int(self.global_step)  # type: ignore[attr-defined]
        # Lazy regularization: R_s and D on every k-th optimizer step only (all its micro-batches), weighted × k.
        if (cfg.lambda_s == 0 and teacher is None) or step % cfg.every_n_steps:  # a plain step, bit for bit
            outputs = self.smart_forward(batch)
            task_loss = self.smart_task_loss(outputs, batch)
            self._smart_log({"train/loss": task_loss, "train/task_loss": task_loss})
            return task_loss

        site = self.smart_perturbation_site()
        if cfg.lambda_s > 0:
            self._smart_choose_precision(batch, site)
        with self.smart_precision():
            loss, logs = self._smart_regularized(batch, batch_idx, site, step)
        self._smart_log(logs)
        return loss

    def _smart_regularized(
        self, batch: Any, batch_idx: int, site: nn.Module, step: int
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        cfg, teacher = self.smart, self.smart_teacher
        rng = None
        # 1. Clean forward, train mode: z = f(x; θ), task loss L(z, y).
        with captured(site) as clean:
            if cfg.shared_dropout:
                rng = _rng_snapshot(self.device)  # type: ignore[attr-defined]
            z = self.smart_forward(batch)
        if clean.output is None:
            raise ConfigError(
                f"smart.perturb_at={cfg.perturb_at!r}: the submodule {type(site).__name__} was not called by"
                " smart_forward(batch); name a submodule on the forward path"
            )
        x = clean.output
        task_loss = self.smart_task_loss(z, batch)
        loss = task_loss
        logs: dict[str, Tensor | float] = {"train/task_loss": task_loss}

        if cfg.lambda_s > 0:
            if not self._smart_first_step_done:
                self._smart_first_step(batch, batch_idx, x)
            elif self._smart_probe_due:
                self._smart_probe_now(batch, batch_idx, step)
            # 2.–3. δ: σ-noise, then K ascent steps; 4. R_s = ℓs(f(x + δ), z).
            delta, scale, finite = self.smart_perturbation(batch, batch_idx, site, x, z.detach(), rng)
            shift = delta if scale is None else delta * scale
            with perturbed(site, shift), _replayed(rng, x.device):
                adv_outputs = self.smart_forward(batch)
            adv_reg = self.smart_divergence(adv_outputs, z, batch)
            lambda_s = cfg.lambda_s * cfg.every_n_steps * self._smart_rampup(step)
            if bool(finite & torch.isfinite(adv_reg)):  # one host sync per step: skipping must not touch θ
                loss = loss + lambda_s * adv_reg
            else:
                self.smart_skipped += 1
            logs |= {"smart/adv_reg": adv_reg.detach(), "smart/skipped": float(self.smart_skipped),
                     "smart/delta_norm": per_example_norm(shift, cfg.norm).mean(), "smart/lambda_s": lambda_s}

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
        self, batch: Any, batch_idx: int, site: nn.Module, x: Tensor, target: Tensor, rng: RngSnapshot | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """δ for this batch: σ-noise then K ascent steps on ℓs(f(x + δ), target) by input-only gradients.

        Runs in the precision it is called in (the step calls it within :meth:`smart_precision`).

        Returns δ (float32, detached), the per-token scale it is measured in (``epsilon_scale=relative``)
        or ``None``, and whether every ascent gradient was finite (a 0-d bool tensor, not synced).
        """
        cfg = self.smart
        mask = self.smart_padding_mask(batch)
        scale = token_rms(x) if cfg.epsilon_scale == "relative" else None
        delta = sample_noise(x, mask, cfg.sigma, self.smart_noise_seed(batch_idx))
        finite = torch.ones((), dtype=torch.bool, device=x.device)
        for _ in range(cfg.ascent_steps):
            delta.requires_grad_(True)
            with perturbed(site, delta, scale), _replayed(rng, x.device):
                outputs = self.smart_forward(batch)
            # g = ∂ℓs/∂δ only: no parameter .grad is touched and no weight gradient is computed.
            (grad,) = torch.autograd.grad(self.smart_divergence(outputs, target, batch), delta)
            finite = finite & torch.isfinite(grad).all()
            delta = ascent_step(delta.detach(), grad, mask, eta=cfg.eta, epsilon=cfg.epsilon,
                                rule=cfg.rule, norm=cfg.norm)
        return delta, scale, finite

    def smart_precision(self) -> AbstractContextManager[Any]:
        """Where the regularized step's passes run: autocast turned off when ``smart.perturbed_precision`` (or
        ``auto``'s choice at the first regularized step) is fp32 under a training autocast; else as training runs."""
        device_type = self.device.type  # type: ignore[attr-defined]
        enabled = torch.is_autocast_enabled(device_type)
        policy = self.smart.perturbed_precision
        fp32 = enabled and self.smart.lambda_s > 0 and (
            policy == "fp32" or (policy == "auto" and self._smart_fp32 is not None and self._smart_fp32[1])
        )
        return torch.autocast(device_type, enabled=False) if fp32 else nullcontext()

    def smart_probe(self, batch: Any, batch_idx: int = 0) -> dict[str, float]:
        """On one batch, the output change (ℓs) from the perturbation alone and from dropout alone.

        ``perturbation_kl``: ℓs(f(x + δ), f(x)) with the same dropout masks on both sides;
        ``dropout_kl``: ℓs between two clean forwards that differ only in their dropout masks.
        """
        site = self.smart_perturbation_site()
        device: torch.device = self.device  # type: ignore[attr-defined]
        rng = _rng_snapshot(device)
        self._smart_choose_precision(batch, site)
        with self.smart_precision():  # through the forward training uses: its precision and policy
            with captured(site) as clean, torch.no_grad():
                z = self.smart_forward(batch)
            assert clean.output is not None
            delta, scale, _ = self.smart_perturbation(batch, batch_idx, site, clean.output, z, rng)
            with torch.no_grad():
                with perturbed(site, delta, scale), _replayed(rng, device):
                    adv = self.smart_forward(batch)
                other_masks = self.smart_forward(batch)
        return {"perturbation_kl": float(self.smart_divergence(adv, z, batch)),
                "dropout_kl": float(self.smart_divergence(other_masks, z, batch))}

    # -- helpers ------------------------------------------------------------------------------

    def _smart_resolution(self, x: Tensor, batch: Any) -> tuple[float, float, float, torch.dtype]:
        """The radius ε (× the median token RMS if relative) and the compute dtype's spacing at the median |x|."""
        cfg = self.smart
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        mask = self.smart_padding_mask(batch)
        real = expand_mask(mask, x).reshape(x.shape[:2]) > 0 if x.ndim >= 2 else torch.ones_like(x, dtype=torch.bool)
        magnitude = x.detach().float().abs()[real].median().item()
        spacing = 2.0 ** math.floor(math.log2(magnitude)) * torch.finfo(dtype).eps if magnitude > 0 else 0.0
        unit = token_rms(x)[real].median().item() if cfg.epsilon_scale == "relative" else 1.0
        return cfg.epsilon * unit, spacing, magnitude, dtype

    def _smart_choose_precision(self, batch: Any, site: nn.Module) -> None:
        """Under a training autocast, once per compute dtype: does it resolve the radius at the perturbed point?

        Measured on a clean forward without gradient that replays the step's dropout masks, so the RNG the
        training draws from is left as it was. ``auto`` then runs the regularized passes in fp32 unless the radius
        is at least twice the spacing; ``autocast`` warns where it is under half the spacing.
        """
        device_type = self.device.type  # type: ignore[attr-defined]
        if not torch.is_autocast_enabled(device_type):
            return
        key = (True, torch.get_autocast_dtype(device_type))
        if self._smart_fp32 is not None and self._smart_fp32[0] == key:
            return
        device: torch.device = self.device  # type: ignore[attr-defined]
        with captured(site) as clean, torch.no_grad(), _replayed(_rng_snapshot(device), device):
            self.smart_forward(batch)
        if clean.output is None:
            return  # the step itself raises, naming smart.perturb_at
        radius, spacing, magnitude, dtype = self._smart_resolution(clean.output, batch)
        policy = self.smart.perturbed_precision
        self._smart_fp32 = key, policy == "fp32" or (policy == "auto" and radius < 2 * spacing)
        if policy == "autocast" and radius < spacing / 2:
            self._smart_warn_unresolved(radius, spacing, magnitude, dtype)

    def _smart_warn_unresolved(self, radius: float, spacing: float, magnitude: float, dtype: torch.dtype) -> None:
        cfg = self.smart
        rank_zero_warn(
            f"smart.epsilon={cfg.epsilon:g} ({cfg.epsilon_scale}; radius {radius:.2e}) is below what {dtype} resolves"
            f" at the perturbed point (spacing {spacing:.2e} at median |x| = {magnitude:.3g}): the perturbed forward"
            f" rounds δ away and R_s measures dropout alone. Remedy: smart.perturbed_precision=auto (fp32 passes),"
            f" smart.epsilon_scale=relative with smart.epsilon ≥ {2 * torch.finfo(dtype).eps:.1e}, or train in"
            " 32-bit precision."
        )

    def _smart_first_step(self, batch: Any, batch_idx: int, x: Tensor) -> None:
        """Once per module: warn where a half-precision model (no autocast) cannot resolve ε; run the probe."""
        self._smart_first_step_done = True
        cfg = self.smart
        if not torch.is_autocast_enabled(x.device.type):
            radius, spacing, magnitude, dtype = self._smart_resolution(x, batch)
            if radius < spacing / 2:
                self._smart_warn_unresolved(radius, spacing, magnitude, dtype)
        if cfg.probe:
            self._smart_probe_now(batch, batch_idx, int(self.global_step))  # type: ignore[attr-defined]

    def _smart_probe_now(self, batch: Any, batch_idx: int, step: int) -> None:
        """The probe on this training batch at the current weights: logged, kept in :attr:`smart_probes`, and a
        warning where the perturbation barely acts (after the first step only: see :mod:`lightning_smart.probe`).

        On a forked RNG: its dropout draws leave the training's stream (and a resume) as they were."""
        self._smart_probe_due = False
        device: torch.device = self.device  # type: ignore[attr-defined]
        with _replayed(_rng_snapshot(device), device):
            measured = self.smart_probe(batch, batch_idx)
        result = ProbeResult(step, measured["perturbation_kl"], measured["dropout_kl"])
        self.smart_probes.append(result)
        self._smart_log({"smart/probe_perturbation_kl": result.perturbation_kl,
                         "smart/probe_dropout_kl": result.dropout_kl, "smart/probe_ratio": result.ratio})
        message = weak_perturbation_warning(result, self.smart.epsilon, self.smart.epsilon_scale)
        if message and not self._smart_probe_warned:
            self._smart_probe_warned = True
            rank_zero_warn(message)

    def on_validation_end(self) -> None:
        """After each validation inside ``fit``, the next regularized step probes again (with ``smart.probe``)."""
        super().on_validation_end()  # type: ignore[misc]
        trainer = getattr(self, "_trainer", None)
        if self.smart.probe and trainer is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._smart_probe_due = True

    def _smart_rampup(self, step: int) -> float:
        """The ramp-up's factor on λs at optimizer step ``step``: 1 without ``smart.rampup``."""
        if self.smart.rampup == 0:
            return 1.0
        total = self.trainer.estimated_stepping_batches  # type: ignore[attr-defined]
        if not math.isfinite(total):
            raise ConfigError(
                f"smart.rampup={self.smart.rampup:g} is a fraction of the run's optimizer steps, but this run has no"
                " known length: set trainer.max_steps or trainer.max_epochs"
            )
        return rampup(step, total, self.smart.rampup)

    def _smart_log(self, values: Mapping[str, Tensor | float]) -> None:
        if getattr(self, "_trainer", None) is None:
            return
        for name, value in values.items():
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=name == "train/loss")  # type: ignore[attr-defined]
