r"""``EMATeacherCallback``: the momentum Bregman proximal point teacher θ̃ (SPEC §2 steps 5 and 7, §4).

After each optimizer step (not each micro-batch):

.. math::
    \tilde\theta \leftarrow \beta\,\tilde\theta + (1 - \beta)\,\theta, \qquad
    \beta = \begin{cases}\beta_0 & t < w\,T\\ \beta_1 & \text{otherwise}\end{cases}

with t the update's index, T the run's optimizer steps and w ``warmup_fraction`` (or one β from a half-life;
with ``ema_warmup``, β is capped by Mean Teacher's 1 − 1/(t + 1)). μ may rise from 0 by a sigmoid ramp-up
(``rampup``; :mod:`lightning_smart.schedule`). The teacher holds
the trainable parameters only, in float32; frozen ones are shared with the student. Its forward
swaps the EMA tensors in with :func:`torch.func.functional_call`: no copy of the module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn
from torch.func import functional_call

from lightning_smart.config import TeacherConfig
from lightning_smart.schedule import ema_warmup, rampup


class _Call(nn.Module):
    """Calls any method of ``module`` while ``functional_call`` has swapped the teacher's tensors in."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off within the block; every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class EMATeacherCallback(Callback):
    """Maintains θ̃, an EMA of the trainable weights, and makes the SMART mixin add μ·D.

    Args:
        mu: μ, weight of the Bregman term D = ℓs(f(x; θ), f(x; θ̃)).
        beta: β0, the decay during the first ``warmup_fraction`` of the optimizer steps.
        beta_final: β1, the decay afterwards.
        warmup_fraction: fraction of the run's optimizer steps that use β0.
        half_life: if set, one β with β^(half_life·T) = 0.5 replaces β0 → β1.
        dropout: run the teacher's forward with dropout.
        validate: also evaluate θ̃ each validation batch through the module's
            ``teacher_validation_step(batch, batch_idx)`` (it logs ``val/<metric>_teacher``).
        rampup: fraction of the run's optimizer steps over which μ rises from 0 (sigmoid ramp-up).
        ema_warmup: cap β at 1 − 1/(t + 1) at the t-th update (Mean Teacher's true average at the start).

    Example::

        trainer = Trainer(callbacks=[EMATeacherCallback(mu=1.0)])
    """

    def __init__(
        self,
        mu: float = 1.0,
        beta: float = 0.99,
        beta_final: float = 0.999,
        warmup_fraction: float = 0.1,
        half_life: float | None = None,
        dropout: bool = False,
        validate: bool = False,
        rampup: float = 0.0,
        ema_warmup: bool = False,
    ) -> None:
        self.config = TeacherConfig(mu, beta, beta_final, warmup_fraction, half_life, dropout, validate, rampup,
                                    ema_warmup)
        self.mu = mu
        self.ema: dict[str, Tensor] = {}
        self.num_updates = 0
        self.total_steps = 0
        self._pairs: list[tuple[Tensor, Tensor]] = []
        self._caller: _Call | None = None
        self._swap: dict[str, Tensor] = {}
        self._recast: list[tuple[str, Tensor, torch.dtype]] = []
        self._restored: dict[str, Any] | None = None
        self._last_global_step = 0

    @classmethod
    def from_config(cls, config: TeacherConfig) -> EMATeacherCallback:
        return cls(config.mu, config.beta, config.beta_final, config.warmup_fraction, config.half_life,
                   config.dropout, config.validate, config.rampup, config.ema_warmup)

    @property
    def state_key(self) -> str:
        return "EMATeacherCallback"

    # -- the schedule -------------------------------------------------------------------------

    def beta_at(self, update: int) -> float:
        """β of the update with index ``update`` (0-based) in a run of ``total_steps`` optimizer steps."""
        cfg = self.config
        if cfg.half_life is not None:
            beta = 0.5 ** (1.0 / max(cfg.half_life * self.total_steps, 1e-12))
        else:
            beta = cfg.beta if update < cfg.warmup_fraction * self.total_steps else cfg.beta_final
        return ema_warmup(beta, update + 1) if cfg.ema_warmup else beta

    def weight(self, step: int) -> float:
        """μ at optimizer step ``step`` (0-based): μ times the ramp-up's factor, μ itself without a ramp."""
        return self.mu * rampup(step, self.total_steps, self.config.rampup)

    # -- lifecycle ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The mixin adds μ·D in smart_loss from the teacher it is handed: a module without them would ignore it.
        if not (callable(getattr(pl_module, "smart_loss", None)) and callable(getattr(pl_module, "smart_forward", None))
                and hasattr(pl_module, "smart_teacher")):
            name = type(pl_module).__name__
            raise ValueError(
                f"EMATeacherCallback cannot add μ·D to {name}: it is not a SmartLightningModule (no smart_loss,"
                f" smart_forward and smart_teacher). Put the mixin first in its bases, class {name}"
                "(SmartLightningModule, L.LightningModule), or remove the callback."
            )
        strategy = trainer.strategy
        sharded = isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)) or (
            isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3
        )
        if sharded:
            raise ValueError(
                f"EMATeacherCallback does not support {type(strategy).__name__}: it shards the parameters and the"
                " teacher would hold one shard. Use strategy='ddp' (or DeepSpeed stage 1-2), or teacher=off."
            )
        if self.config.validate and not callable(getattr(pl_module, "teacher_validation_step", None)):
            raise ValueError(
                f"teacher.validate=true needs {type(pl_module).__name__}.teacher_validation_step(batch, batch_idx)"
                " to evaluate the teacher's weights; define it or set teacher.validate=false"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainable: dict[str, Tensor] = {name: p for name, p in pl_module.named_parameters() if p.requires_grad}
        if self._restored is not None:
            self._load_into(trainable, self._restored)
        else:
            self.ema = {name: p.detach().float().clone() for name, p in trainable.items()}
        self._pairs = [(self.ema[name], p) for name, p in trainable.items()]
        self._bind(pl_module)
        pl_module.smart_teacher = self  # type: ignore[assignment]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        cfg = self.config
        needs_length = [key for key, used in (
            ("half_life", cfg.half_life is not None),
            ("warmup_fraction", 0 < cfg.warmup_fraction < 1 and cfg.beta != cfg.beta_final),
            ("rampup", cfg.rampup > 0),
        ) if used]
        if not math.isfinite(total) and needs_length:
            raise ValueError(
                f"teacher.{needs_length[0]} is a fraction of the run's optimizer steps, but this run has no known"
                " length: set trainer.max_steps or trainer.max_epochs"
            )
        self.total_steps = int(total) if math.isfinite(total) else 0
        self._last_global_step = trainer.global_step

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.smart_teacher = None  # type: ignore[assignment]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        pl_module.smart_teacher = None  # type: ignore[assignment]

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # 7. Once per optimizer step: global_step moves only when the optimizer stepped.
        if trainer.global_step == self._last_global_step:
            return
        self._last_global_step = trainer.global_step
        ema = [e for e, _ in self._pairs]
        params = [p.detach() if p.dtype == torch.float32 else p.detach().float() for _, p in self._pairs]
        torch._foreach_lerp_(ema, params, 1.0 - self.beta_at(self.num_updates))
        self.num_updates += 1

    # -- the teacher's forward ----------------------------------------------------------------

    def run_as_teacher(self, pl_module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with θ̃ in place of the trainable weights, without gradient (dropout per config)."""
        if self._caller is None or self._caller.module is not pl_module:
            self._bind(pl_module)
        assert self._caller is not None
        for key, ema, dtype in self._recast:
            self._swap[key] = ema.to(dtype)
        with torch.no_grad(), (nullcontext() if self.config.dropout else _eval_mode(pl_module)):
            return functional_call(self._caller, self._swap, (fn, *args), strict=False)

    def _bind(self, pl_module: nn.Module) -> None:
        """Build once what the teacher's forward swaps in: the EMA tensors themselves (updated in place), and a
        cast copy, refreshed per call, only for a parameter that is not float32 (a half-precision model)."""
        self._caller = _Call(pl_module)
        dtypes = {name: p.dtype for name, p in pl_module.named_parameters() if name in self.ema}
        self._swap = {f"module.{name}": ema for name, ema in self.ema.items()}
        self._recast = [(f"module.{name}", ema, dtypes[name]) for name, ema in self.ema.items()
                        if dtypes[name] != ema.dtype]

    def teacher_outputs(self, module: Any, batch: Any) -> Tensor:
        """f(x; θ̃) on ``batch``, through the module's own ``smart_forward``."""
        return self.run_as_teacher(module, module.smart_forward, batch)  # type: ignore[no-any-return]

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.config.validate and self.ema:
            step: Callable[..., Any] = pl_module.teacher_validation_step  # type: ignore[assignment]
            self.run_as_teacher(pl_module, step, batch, batch_idx)

    # -- checkpoint ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"ema": dict(self.ema), "num_updates": self.num_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict.get("ema"), dict) or not isinstance(state_dict.get("num_updates"), int):
            raise ValueError(
                "the checkpoint's EMATeacherCallback state is not a teacher's: expected keys 'ema' (name → tensor)"
                f" and 'num_updates' (int), found {sorted(state_dict)}"
            )
        self._restored = state_dict
        self.num_updates = state_dict["num_updates"]

    def _load_into(self, trainable: dict[str, Tensor], state: dict[str, Any]) -> None:
        saved: dict[str, Tensor] = state["ema"]
        missing, unexpected = sorted(set(trainable) - set(saved)), sorted(set(saved) - set(trainable))
        wrong = sorted(n for n in set(trainable) & set(saved) if saved[n].shape != trainable[n].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                "the checkpoint's teacher does not match this model's trainable parameters:"
                f" missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
            )
        self.ema = {n: saved[n].to(device=p.device, dtype=torch.float32).clone() for n, p in trainable.items()}
        self._restored = None

