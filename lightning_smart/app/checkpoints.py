"""Checkpoint files without duplicates: each written beside its path and renamed, and ``last.ckpt`` a hard link to
the best checkpoint when both are the same step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO

from lightning_smart._lightning import SaveHookCheckpoint, last_saved, mark_saved
from lightning_smart.app.files import replacing


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint (``last.ckpt`` is overwritten at every validation) beside its path, then renames it.

    Lightning serializes to memory first, but then writes through a temporary file in the system's temp folder and
    moves it into place, a copy (not atomic) when that folder is on another file system. Renaming within the
    checkpoint's own folder is atomic: a crash while writing leaves the previous checkpoint whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class LastCheckpoint(SaveHookCheckpoint):
    """``last.ckpt``: the latest validated step, overwritten at each validation, what a resume needs.

    When ``best`` has just saved this very step (same global step, same ``save_weights_only``), ``last.ckpt``
    becomes a hard link to that file instead of a second identical copy (a full checkpoint of all-MiniLM-L6-v2
    with AdamW's moments and the teacher is ≈ 364 MB). The linked file differs from what this callback would write
    only in this callback's own bookkeeping (which file it wrote last), which resuming does not use. The link is
    replaced (not written through) at the next validation, and outlives the best file's removal: the two names
    never change each other's content. Where the file system has no hard links, the checkpoint is written.

    Args:
        best: the callback that keeps the best checkpoints (``None``: none to link to).
        dirpath: the checkpoints' folder.
        save_weights_only: leave out optimizer and callback states (cannot resume training).
    """

    def __init__(self, best: ModelCheckpoint | None, dirpath: str | Path, save_weights_only: bool = False) -> None:
        super().__init__(dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         save_weights_only=save_weights_only)
        self.best = best

    def save(self, trainer: pl.Trainer, filepath: str) -> None:
        best = self.best
        best_step, best_path = last_saved(best) if best is not None else (None, "")
        same_step = best_step == trainer.global_step and bool(best_path) and (
            best is not None and best.save_weights_only == self.save_weights_only)
        # A distributed checkpoint (trainer=fsdp) is a folder that every rank writes its shard into: written again.
        same_step = same_step and not Path(best_path).is_dir()
        if not same_step:
            super().save(trainer, filepath)
            return
        if trainer.is_global_zero:
            target = Path(filepath)
            try:
                with replacing(target) as tmp:
                    os.link(best_path, tmp)
            except OSError:
                super().save(trainer, filepath)
                return
        trainer.strategy.barrier("LastCheckpoint")
        mark_saved(self, trainer.global_step, filepath)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
