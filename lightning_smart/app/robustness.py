"""Robust accuracy at the end of a run: :mod:`lightning_smart.attack`'s PGD on the run's own splits.

At each radius of ``eval.robust_radii`` (ℓ∞, in units of each token's RMS, at the site SMART perturbs), the attack
runs on a few batches of each split: every k-th batch of the length-sorted evaluation loader, so that they span the
lengths (what ``benchmarks/quality.py`` attacks). An example counts as robust at r when it is right on the clean
input and under every attack of radius ≤ r (:func:`~lightning_smart.attack.robust_accuracy_by_radius`). The attack
is deterministic (δ starts at zero, the model in eval mode, no random draw), so it leaves training's random stream
and every other metric of the run as they were.

Under FSDP2 (``trainer=fsdp``) the attack runs on the sharded model: every rank attacks its share of those batches
(:func:`shares`), and the counts are summed over the ranks, so the figures are those of one process attacking every
batch with the same weights. The validated teacher is loaded from its exported folder and sharded like the student.

The metrics are named like the task's: ``robust_acc@0.03`` under ``val/``, ``test/<split>/`` and with the
``_teacher`` suffix for the teacher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ParallelStrategy, Strategy

from lightning_smart.attack import robust_accuracy_by_radius
from lightning_smart.config import ConfigError
from lightning_smart.sharding import is_sharded, shard_transformer
from lightning_smart.tasks import FineTuneTask, SequenceTask

NORM = "inf"
"""The attack's ball: ℓ∞ (each coordinate of δ within ε times its token's RMS), the study's."""


def metric_name(radius: float) -> str:
    """The logged name of robust accuracy at ``radius``.

    Example:
        >>> metric_name(0.03), metric_name(0.1)
        ('robust_acc@0.03', 'robust_acc@0.1')
    """
    return f"robust_acc@{radius:g}"


def check_eval(radii: Sequence[Any], steps: Any, batches: Any, *, kind: str, num_labels: int | None) -> None:
    """Refuse, before training, values the attack cannot run with, or a task it cannot score.

    Args:
        radii, steps, batches: ``eval.robust_radii``, ``eval.robust_steps``, ``eval.robust_batches``.
        kind: the data module's kind: ``sequence``, ``tokens`` (tagging) or ``sft``.
        num_labels: ``data.num_labels`` (1: regression).

    Raises:
        ConfigError: naming the key and what is allowed.
    """
    radii = list(radii)
    shown = f"eval.robust_radii={radii!r}"
    if not radii:
        return
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0 for r in radii):
        raise ConfigError(f"{shown} is not allowed: each radius must be a finite number > 0 (a multiple of each"
                          " token's RMS)")
    if len({metric_name(r) for r in radii}) < len(radii):
        raise ConfigError(f"{shown} is not allowed: list each radius once")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"eval.robust_steps={steps!r} is not allowed: PGD's ascent steps, an integer ≥ 1")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ConfigError(f"eval.robust_batches={batches!r} is not allowed: an integer ≥ 1, or null to attack every"
                          " batch")
    if kind != "sequence":
        raise ConfigError(f"{shown} is not allowed with {kind} data: robust accuracy counts one prediction per"
                          " example, and this task's outputs are per token (tagging, SFT); leave eval.robust_radii"
                          " empty")
    if num_labels == 1:
        raise ConfigError(f"{shown} is not allowed with data.num_labels=1: a regression has no accuracy to attack;"
                          " leave eval.robust_radii empty")


def refuse_sharded(strategy: Strategy, radii: Sequence[float]) -> None:
    """Refuse the attack under a strategy that flattens the weights behind a wrapper of its own (Lightning's FSDP1,
    DeepSpeed stage 3). FSDP2 (``ModelParallelStrategy``, ``trainer=fsdp``) runs it on the sharded model.

    Raises:
        ConfigError: for ``FSDPStrategy`` and DeepSpeed stage 3, with radii listed.
    """
    deepspeed_3 = isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3
    if radii and (isinstance(strategy, FSDPStrategy) or deepspeed_3):
        raise ConfigError(f"eval.robust_radii={list(radii)!r} is not allowed with {type(strategy).__name__}: the attack"
                          " runs on a whole model or on FSDP2's sharded one, not on this strategy's flattened"
                          " parameters; train with trainer=fsdp (FSDP2) or trainer.strategy=ddp")


def attacked_batches(loader: Iterable[Any], count: int | None) -> list[Any]:
    """Every k-th batch of ``loader``, k = ⌊batches / count⌋ (at least 1), the first ``count`` of them; every batch
    for ``count=None``.

    Example:
        >>> attacked_batches(range(10), 4), attacked_batches(range(3), 4), attacked_batches(range(3), None)
        ([0, 2, 4, 6], [0, 1, 2], [0, 1, 2])
    """
    batches = list(loader)
    if count is None:
        return batches
    stride = max(1, len(batches) // count)
    return batches[::stride][:count]


def shares(batches: Sequence[Any], rank: int, world: int) -> tuple[list[Any], list[Any]]:
    """Rank ``rank``'s share of ``batches`` (every ``world``-th, from its own rank on), and the batches it attacks
    besides without counting them: under FSDP2 every forward and backward is a collective of all ranks, so each rank
    runs as many attacks as the rank with the most batches.

    Example:
        >>> shares(["a", "b", "c"], 0, 2), shares(["a", "b", "c"], 1, 2), shares(["a"], 1, 2)
        ((['a', 'c'], []), (['b'], ['a']), ([], ['a']))
    """
    mine = list(batches[rank::world])
    most = -(-len(batches) // world)
    return mine, list(batches[: most - len(mine)])


def robust_metrics(task: FineTuneTask, loader: Iterable[Any], radii: Sequence[float], *, steps: int,
                   batches: int | None, device: torch.device,
                   strategy: ParallelStrategy | None = None) -> tuple[dict[str, float], int]:
    """Robust accuracy of ``task``'s current weights at each radius, on :func:`attacked_batches` of ``loader``.

    Runs in float32 on ``device`` (a whole ``task`` is moved there for the attack and back after).

    Args:
        task, loader, radii, steps, batches, device: what to attack, on what, and how.
        strategy: for a sharded ``task``, the strategy whose ranks share the batches (:func:`shares`; every rank
            calls this, with the same ``loader``), the counts summed over them; ``None``: this process attacks every
            batch.

    Returns:
        ``{metric_name(r): accuracy}`` for each radius, and the number of examples attacked.
    """
    rank, world = (strategy.global_rank, strategy.world_size) if strategy is not None else (0, 1)
    home = next(task.parameters()).device
    whole = not is_sharded(task)
    if whole:
        task.to(device)
    try:
        chosen = [move_data_to_device(batch, device) for batch in attacked_batches(loader, batches)]
        mine, padding = shares(chosen, rank, world)
        site, forward = task.smart_perturbation_site(), task.smart_forward
        result = robust_accuracy_by_radius(task, site, forward, mine, radii, steps=steps, norm=NORM, relative=True)
        if padding:
            robust_accuracy_by_radius(task, site, forward, padding, radii, steps=steps, norm=NORM, relative=True)
    finally:
        if whole:
            task.to(home)
    n = int(result["n"])
    # Back to counts (each fraction is a count over n, which round() recovers exactly), summed over the ranks.
    counts = torch.tensor([n, *(round(a * n) for a in result["robust_acc"])], dtype=torch.int64, device=device)
    if strategy is not None:
        counts = strategy.reduce(counts, reduce_op="sum")
    total, *right = (int(c) for c in counts)
    accuracy = {metric_name(r): k / max(total, 1) for r, k in zip(result["radii"], right, strict=True)}
    return accuracy, total


def log_final(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """``metrics`` to each of the run's loggers at the run's final step (``metrics.csv``'s last rows), if any."""
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


class RobustEvaluation:
    """A run's end-of-training attack: the student at its current weights, the teacher from its exported folder.

    :meth:`run` attacks one split and adds the results to that split's metrics; :meth:`log` hands them all to the
    run's loggers (``metrics.csv``) at the final step; :meth:`summary` says how they were measured. It acts on the
    global-zero process only (where ``summary.json`` is written), or on every rank of a sharded student, and not at
    all with no radius.

    Args:
        radii, steps, batches: ``eval.robust_radii``, ``eval.robust_steps``, ``eval.robust_batches``.
        student: the run's task.
        device: where the attack runs (the strategy's root device).
        teacher: the exported ``teacher/`` folder (``save_pretrained``), or ``None`` without a validated teacher.
        active: whether this process attacks at all.
        strategy: for a sharded student, the strategy whose ranks share the attack (:func:`robust_metrics`).
    """

    def __init__(self, radii: Sequence[float], steps: int, batches: int | None, student: FineTuneTask,
                 device: torch.device, teacher: Path | None = None, active: bool = True,
                 strategy: ParallelStrategy | None = None) -> None:
        self.radii = sorted(float(r) for r in radii) if active else []
        self.steps, self.batches, self.student, self.device = steps, batches, student, device
        self.teacher_folder = teacher
        self.strategy = strategy
        self._teacher: FineTuneTask | None = None
        self.logged: dict[str, float] = {}
        self.examples: dict[str, int] = {}
        self.seconds = 0.0

    @classmethod
    def from_config(cls, eval_cfg: Any, trainer: pl.Trainer, student: FineTuneTask,
                    teacher: Path | None) -> RobustEvaluation:
        """From the run's ``eval`` section and its Trainer. With a sharded student every rank calls it: rank 0, which
        exported the teacher, names its folder to the others."""
        strategy = trainer.strategy
        if not is_sharded(student):
            return cls(list(eval_cfg.robust_radii), eval_cfg.robust_steps, eval_cfg.robust_batches, student,
                       strategy.root_device, teacher, active=trainer.is_global_zero)
        assert isinstance(strategy, ParallelStrategy)
        teacher = strategy.broadcast(teacher)
        return cls(list(eval_cfg.robust_radii), eval_cfg.robust_steps, eval_cfg.robust_batches, student,
                   strategy.root_device, teacher, strategy=strategy)

    @property
    def teacher(self) -> FineTuneTask | None:
        """The teacher as a task of its own, loaded once from its folder (the EMA weights the run exported); with a
        sharded student, sharded like it over the same mesh (each rank holds its share)."""
        if self._teacher is None and self.teacher_folder is not None:
            student: Any = self.student
            teacher = SequenceTask(str(self.teacher_folder), num_labels=student.num_labels, smart=student.smart)
            if self.strategy is not None:
                shard_transformer(teacher.model, student.device_mesh["data_parallel"])
            self._teacher = teacher
        return self._teacher

    def run(self, split: str, loader: Iterable[Any], into: dict[str, float],
            into_teacher: dict[str, float] | None = None) -> None:
        """Attack ``split`` (``val`` or ``test/<name>``) and add robust accuracy at each radius to ``into``; the
        teacher's goes to ``into_teacher``, or to ``into`` with the ``_teacher`` suffix when that is ``None``."""
        if not self.radii:
            return
        start = time.perf_counter()
        loader = list(loader)  # iterated once per model
        found, self.examples[split] = robust_metrics(self.student, loader, self.radii, steps=self.steps,
                                                     batches=self.batches, device=self.device, strategy=self.strategy)
        into |= found
        self.logged |= {f"{split}/{name}": value for name, value in found.items()}
        if self.teacher is not None:
            found, _ = robust_metrics(self.teacher, loader, self.radii, steps=self.steps, batches=self.batches,
                                      device=self.device, strategy=self.strategy)
            if into_teacher is None:
                into |= {f"{name}_teacher": value for name, value in found.items()}
            else:
                into_teacher |= found
            self.logged |= {f"{split}/{name}_teacher": value for name, value in found.items()}
        self.seconds += time.perf_counter() - start

    def log(self, trainer: pl.Trainer) -> None:
        """Every result so far, to each of the run's loggers, at the run's final step."""
        log_final(trainer, self.logged)

    def summary(self) -> dict[str, Any] | None:
        """How robust accuracy was measured, for ``summary.json`` (``None`` when it was not)."""
        if not self.radii:
            return None
        return {"radii": self.radii, "steps": self.steps, "batches": self.batches, "norm": NORM,
                "scale": "token RMS", "examples": dict(self.examples), "teacher": self.teacher_folder is not None,
                "seconds": round(self.seconds, 1)}


__all__ = ["NORM", "RobustEvaluation", "attacked_batches", "check_eval", "log_final", "metric_name", "refuse_sharded",
           "robust_metrics", "shares"]
