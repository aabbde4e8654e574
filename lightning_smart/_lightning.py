"""The one place the package reads Lightning's private names.

Each function below stands in for a public API Lightning does not offer (its docstring names the one it lacks); the
rest of the package calls these, never a ``_`` name of Lightning. :data:`PRIVATE_NAMES` lists every private name read
here, and ``tests/test_lightning_seam.py`` checks each against the installed Lightning, so a release that renames one
fails that test by name rather than somewhere deep in a run.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

PRIVATE_NAMES = {
    "LightningModule._trainer": "the attached Trainer, or None (the public .trainer raises when there is none)",
    "ModelParallelStrategy._save_distributed_checkpoint": "whether checkpoints are folders of shards or one file",
    "ModelCheckpoint._last_global_step_saved": "the step of the callback's latest save",
    "ModelCheckpoint._last_checkpoint_saved": "the path of the callback's latest save",
    "ModelCheckpoint._save_checkpoint": "the method every save of the callback goes through",
    "lightning.pytorch.strategies.launchers._MultiProcessingLauncher": "spawned workers (ddp_spawn)",
    "lightning.pytorch.strategies.launchers._SubprocessScriptLauncher": "a command line re-launched per worker (ddp)",
}
"""Every private name of Lightning the package reads, and what for."""


def attached_trainer(module: Any) -> pl.Trainer | None:
    """The Trainer ``module`` is attached to, or ``None`` (a module called outside ``fit``/``validate``/``test``).

    Lightning's public ``LightningModule.trainer`` raises when no Trainer is attached; there is no public way to ask
    whether one is.
    """
    return getattr(module, "_trainer", None)


def saves_distributed_checkpoint(strategy: Strategy) -> bool:
    """Whether ``strategy`` saves a distributed checkpoint (a folder that every rank writes its shards into).

    ``ModelParallelStrategy(save_distributed_checkpoint=...)`` keeps the setting in a private attribute, with no
    public property.
    """
    return isinstance(strategy, ModelParallelStrategy) and bool(strategy._save_distributed_checkpoint)


def last_saved(callback: ModelCheckpoint) -> tuple[int, str]:
    """The optimizer step and the path of ``callback``'s latest save (``(0, "")`` before the first).

    ``ModelCheckpoint`` exposes ``last_model_path`` and ``best_model_path``, but not the step of its latest save,
    nor the path it wrote last whatever its role.
    """
    return callback._last_global_step_saved, callback._last_checkpoint_saved


def mark_saved(callback: ModelCheckpoint, step: int, path: str) -> None:
    """Record, as ``callback``'s own save would, that it saved ``path`` at ``step`` (for a file it linked rather
    than wrote): what :func:`last_saved` and Lightning's de-duplication of saves read."""
    callback._last_global_step_saved = step
    callback._last_checkpoint_saved = path


class SaveHookCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose every save goes through :meth:`save`, which subclasses override.

    Lightning's public hooks run before or after a save (``on_save_checkpoint``, ``Logger.after_save_checkpoint``),
    not instead of it; every save of the callback goes through the private ``_save_checkpoint``.
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.save(trainer, filepath)

    def save(self, trainer: pl.Trainer, filepath: str) -> None:
        """Save the checkpoint at ``filepath``: ``ModelCheckpoint``'s own save, unless overridden."""
        super()._save_checkpoint(trainer, filepath)


def is_spawned(strategy: Strategy) -> bool:
    """Whether ``strategy`` runs the fit in spawned worker processes (``ddp_spawn``), which hand back the weights and
    the logged metrics but not the callbacks' state. Lightning names its launchers privately only."""
    return isinstance(strategy.launcher, _MultiProcessingLauncher)


def relaunches_script(strategy: Strategy) -> bool:
    """Whether ``strategy`` re-launches the command line in each worker process (``ddp``). Lightning names its
    launchers privately only."""
    return isinstance(strategy.launcher, _SubprocessScriptLauncher)


__all__ = ["PRIVATE_NAMES", "SaveHookCheckpoint", "attached_trainer", "is_spawned", "last_saved", "mark_saved",
           "relaunches_script", "saves_distributed_checkpoint"]
