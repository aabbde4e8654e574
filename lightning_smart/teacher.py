r"""``EMATeacherCallback``: the momentum Bregman proximal point teacher θ̃, wired into Lightning.

After each optimizer step (not each micro-batch):

.. math::
    \tilde\theta \leftarrow \beta\,\tilde\theta + (1 - \beta)\,\theta, \qquad
    \beta = \begin{cases}\beta_0 & t < w\,T\\ \beta_1 & \text{otherwise}\end{cases}

with t the update's index, T the run's optimizer steps and w ``warmup_fraction`` (or one β from a half-life;
with ``ema_warmup``, β is capped by Mean Teacher's 1 − 1/(t + 1)). μ may rise from 0 by a sigmoid ramp-up
(``rampup``; :mod:`lightning_smart.schedule`). θ̃ itself, its update and the forward that computes with it live in
:mod:`lightning_smart.ema`: dense (one float32 copy of the trainable parameters, swapped in by ``functional_call``)
or, under FSDP2 (``ModelParallelStrategy``), sharded like the parameters. The callback is the wiring: the schedule,
the checks at setup, the hooks, and the checkpoint.

In the checkpoint: dense, θ̃ in the callback's state. FSDP2 with a distributed checkpoint (a folder, one file per
rank): the callback's state is written by rank 0 alone, so θ̃'s shards go beside the model's, through distributed
checkpointing, and are read back from the same folder. FSDP2 with a full checkpoint (one file): θ̃ gathered whole
into the callback's state, each rank taking its shard back on load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed.checkpoint as dcp
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor, nn

from lightning_smart._lightning import saves_distributed_checkpoint
from lightning_smart.config import TeacherConfig
from lightning_smart.ema import EMA, ShardedEMA, ema_of
from lightning_smart.schedule import ema_beta, rampup

SHARDED_KEY = "smart_teacher."
"""Under FSDP2's distributed checkpoint, θ̃'s shards are saved beside the model's, under this prefix."""


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

    θ̃ takes the form the parameters call for (:func:`lightning_smart.ema.ema_of`): one float32 copy, or under
    ``ModelParallelStrategy`` (FSDP2) float32 shards placed like the parameters'. Lightning's FSDP1 and DeepSpeed
    stage 3 are refused at setup (:func:`refuse_gathering_strategy`).

    Example: ``Trainer(callbacks=[EMATeacherCallback(mu=1.0)])``.
    """

    def __init__(self, mu: float = 1.0, beta: float = 0.99, beta_final: float = 0.999, warmup_fraction: float = 0.1,
                 half_life: float | None = None, dropout: bool = False, validate: bool = False, rampup: float = 0.0,
                 ema_warmup: bool = False) -> None:
        self.config = TeacherConfig(mu=mu, beta=beta, beta_final=beta_final, warmup_fraction=warmup_fraction,
                                    half_life=half_life, dropout=dropout, validate=validate, rampup=rampup,
                                    ema_warmup=ema_warmup)
        self.mu = mu
        self.num_updates = 0
        self.total_steps = 0
        self._ema: EMA | None = None
        self._restored: dict[str, Any] | None = None
        self._checkpoint_path: Path | None = None
        self._distributed_checkpoint = False
        self._last_global_step = 0

    @classmethod
    def from_config(cls, config: TeacherConfig) -> EMATeacherCallback:
        return cls(**asdict(config))

    @property
    def ema(self) -> dict[str, Tensor]:
        """θ̃ by name (as the module's ``named_parameters``) → float32 tensor (a DTensor shard when sharded)."""
        return self._ema.tensors if self._ema is not None else {}

    @property
    def sharded(self) -> bool:
        """Whether θ̃ is sharded like the parameters (FSDP2)."""
        return isinstance(self._ema, ShardedEMA)

    @property
    def state_key(self) -> str:
        return "EMATeacherCallback"


    def beta_at(self, update: int) -> float:
        """β of the update with index ``update`` (0-based) in a run of ``total_steps`` optimizer steps."""
        return ema_beta(self.config, update, self.total_steps)

    def weight(self, step: int) -> float:
        """μ at optimizer step ``step`` (0-based): μ times the ramp-up's factor, μ itself without a ramp."""
        return self.mu * rampup(step, self.total_steps, self.config.rampup)


    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_module(pl_module, self.config.validate)
        refuse_gathering_strategy(trainer.strategy)
        self._distributed_checkpoint = saves_distributed_checkpoint(trainer.strategy)  # shards, or one file

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # θ̃ starts at the weights the fit starts from: after the strategy has moved, sharded and broadcast them. A
        # checkpoint's θ̃ replaces it where the strategy restores: before this hook (dense), or after it (FSDP2).
        trainable = {name: p for name, p in pl_module.named_parameters() if p.requires_grad}
        self._ema = ema_of(trainable)
        if self._restored is not None:
            self._load(self._restored)
        pl_module.smart_teacher = self  # type: ignore[assignment]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        refuse_unknown_length(self.config, total)
        self.total_steps = int(total) if math.isfinite(total) else 0
        self._last_global_step = trainer.global_step

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.smart_teacher = None  # type: ignore[assignment]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        pl_module.smart_teacher = None  # type: ignore[assignment]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # 7. Once per optimizer step: global_step moves only when the optimizer stepped.
        if trainer.global_step == self._last_global_step or self._ema is None:
            return
        self._last_global_step = trainer.global_step
        self._ema.update(1.0 - self.beta_at(self.num_updates))
        self.num_updates += 1


    def run_as_teacher(self, pl_module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with θ̃ in place of the trainable weights, without gradient (dropout per config)."""
        if self._ema is None:
            raise RuntimeError("the teacher has no weights yet: they are taken at fit start")
        return self._ema.run(pl_module, fn, *args, dropout=self.config.dropout)

    def teacher_outputs(self, module: Any, batch: Any) -> Tensor:
        """f(x; θ̃) on ``batch``, through the module's own ``smart_forward``."""
        return self.run_as_teacher(module, module.smart_forward, batch)  # type: ignore[no-any-return]

    def full_ema(self) -> dict[str, Tensor]:
        """θ̃ as whole tensors, e.g. to export the teacher; under FSDP2 a collective call (every rank calls it)."""
        return self._ema.full() if self._ema is not None else {}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.config.validate and self._ema is not None:
            step: Callable[..., Any] = pl_module.teacher_validation_step  # type: ignore[assignment]
            self.run_as_teacher(pl_module, step, batch, batch_idx)


    def state_dict(self) -> dict[str, Any]:
        if self.sharded and self._distributed_checkpoint:
            return {"ema": SHARDED_KEY, "num_updates": self.num_updates}
        return {"ema": self.full_ema(), "num_updates": self.num_updates}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        if self.sharded and self._distributed_checkpoint and "callbacks" in checkpoint:
            checkpoint["state_dict"].update({SHARDED_KEY + name: e for name, e in self.ema.items()})

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        self._checkpoint_path = Path(trainer.ckpt_path) if trainer.ckpt_path else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        refuse_state(state_dict)
        self.num_updates = state_dict["num_updates"]
        self._restored = state_dict
        if self._ema is not None:  # FSDP2 restores after fit start
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        assert self._ema is not None
        restore(self._ema, state["ema"], self._checkpoint_path)
        self._restored = None


def refuse_module(module: Any, validate: bool) -> None:
    """Refuse a module the teacher cannot act on: one without the mixin (the mixin adds μ·D in ``smart_loss`` from
    the teacher it is handed, a module without it would ignore it), or ``validate`` without a
    ``teacher_validation_step``."""
    name = type(module).__name__
    if not (callable(getattr(module, "smart_loss", None)) and callable(getattr(module, "smart_forward", None))
            and hasattr(module, "smart_teacher")):
        raise ValueError(
            f"EMATeacherCallback cannot add μ·D to {name}: it is not a SmartLightningModule (no smart_loss,"
            f" smart_forward and smart_teacher). Put the mixin first in its bases, class {name}"
            "(SmartLightningModule, L.LightningModule), or remove the callback."
        )
    if validate and not callable(getattr(module, "teacher_validation_step", None)):
        raise ValueError(
            f"teacher.validate=true needs {name}.teacher_validation_step(batch, batch_idx)"
            " to evaluate the teacher's weights; define it or set teacher.validate=false"
        )


def refuse_unknown_length(config: TeacherConfig, total_steps: float) -> None:
    """Refuse a schedule that is a fraction of the run in a run of no known length (``total_steps`` infinite)."""
    needs_length = [key for key, used in (
        ("half_life", config.half_life is not None),
        ("warmup_fraction", 0 < config.warmup_fraction < 1 and config.beta != config.beta_final),
        ("rampup", config.rampup > 0),
    ) if used]
    if not math.isfinite(total_steps) and needs_length:
        raise ValueError(
            f"teacher.{needs_length[0]} is a fraction of the run's optimizer steps, but this run has no known"
            " length: set trainer.max_steps or trainer.max_epochs"
        )


def refuse_state(state: dict[str, Any]) -> None:
    """Refuse a checkpoint state that is not a teacher's."""
    ema = state.get("ema")
    if not (isinstance(ema, dict) or ema == SHARDED_KEY) or not isinstance(state.get("num_updates"), int):
        raise ValueError(
            "the checkpoint's EMATeacherCallback state is not a teacher's: expected keys 'ema' (name → tensor)"
            f" and 'num_updates' (int), found {sorted(state)}"
        )


def restore(ema: EMA, saved: dict[str, Tensor] | str, checkpoint: Path | None) -> None:
    """θ̃ from a checkpoint: the tensors themselves, or (:data:`SHARDED_KEY`) its shards read from the distributed
    checkpoint folder ``checkpoint``, which only a sharded θ̃ can take."""
    if saved != SHARDED_KEY:
        ema.load(saved)  # type: ignore[arg-type]
        return
    if not isinstance(ema, ShardedEMA) or checkpoint is None:
        raise ValueError(
            "the checkpoint's teacher was saved sharded (a distributed checkpoint under ModelParallelStrategy):"
            " resume it with the same strategy (trainer=fsdp)"
        )
    shards = {SHARDED_KEY + name: e for name, e in ema.tensors.items()}
    dcp.load({"state_dict": shards}, checkpoint_id=checkpoint)


def refuse_gathering_strategy(strategy: Any) -> None:
    """Refuse the strategies whose sharding the teacher cannot follow without gathering the whole model.

    Lightning's FSDP (FSDP1: flat parameters) and DeepSpeed ZeRO stage 3 partition the parameters behind their own
    wrappers; θ̃ of one rank would be one flat shard, and a teacher's forward would need the whole model gathered.
    FSDP2 (``ModelParallelStrategy``) keeps each parameter a DTensor, which the sharded teacher follows exactly.
    """
    gathering = isinstance(strategy, FSDPStrategy) or (
        isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3)
    if gathering:
        raise ValueError(
            f"EMATeacherCallback does not support {type(strategy).__name__}: it shards the parameters behind its own"
            " wrappers and the teacher would hold one flat shard or gather the whole model. Shard with FSDP2 instead:"
            " trainer=fsdp in the app, or ModelParallelStrategy with fully_shard in configure_model (the teacher is"
            " sharded like the parameters); or strategy='ddp' (or DeepSpeed stage 1-2), or teacher=off."
        )
