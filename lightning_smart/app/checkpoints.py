"""Checkpoints that appear under their name only whole, without duplicates.

A file is written beside its path and renamed onto it (:class:`AtomicCheckpointIO`); a distributed checkpoint (a
folder that every rank writes its shards into, ``trainer=fsdp``) is written into a fresh folder beside its name and
published once every rank has finished (:class:`AtomicModelCheckpoint`); ``last.ckpt`` is a hard link to the best
checkpoint when both are the same step (:class:`LastCheckpoint`).
"""

from __future__ import annotations

import os
import re
import shutil
from itertools import count
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO

from lightning_smart._lightning import SaveHookCheckpoint, last_saved, mark_saved, saves_distributed_checkpoint
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


def shards_folder(target: Path, step: int) -> Path:
    """A name beside ``target`` that nothing holds yet, for the distributed checkpoint of optimizer step ``step``:
    ``.<stem>.step<step>.ckpt``, then ``-1``, ``-2``... after the step while taken.

    Example:
        >>> shards_folder(Path("/no/such/folder/last.ckpt"), 8)
        PosixPath('/no/such/folder/.last.step8.ckpt')
    """
    for version in count():
        folder = target.with_name(f".{target.stem}.step{step}{f'-{version}' if version else ''}{target.suffix}")
        if not os.path.lexists(folder):
            return folder
    raise AssertionError("unreachable")


def _is_shards_folder_of(name: str, target: Path) -> bool:
    pattern = rf"\.{re.escape(target.stem)}\.step\d+(-\d+)?{re.escape(target.suffix)}"
    return re.fullmatch(pattern, name) is not None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def publish(folder: Path, target: Path, *, link: bool) -> None:
    """Make the complete distributed checkpoint ``folder`` (a :func:`shards_folder` of ``target``) visible as
    ``target``, in one atomic step, and remove the folders of ``target`` that no longer count.

    - ``link=False`` and no ``target`` yet (a best checkpoint's new name): ``folder`` is renamed onto it.
    - Otherwise (``last.ckpt``, which every save replaces): ``target`` becomes a relative symbolic link to ``folder``,
      made beside and renamed onto ``target``, replacing the previous link whole. A rename cannot replace a folder
      that is not empty, which is why the name is a link. A ``target`` that is a folder of its own is first moved
      aside: the one moment without a checkpoint under that name, which only a folder written otherwise gives.

    Then the folders of ``target`` other than the one it now is are removed: the one it linked to before, and any left
    by a save cut short.
    """
    keep = None
    if not link and not os.path.lexists(target):
        os.rename(folder, target)
    else:
        if target.is_dir() and not target.is_symlink():
            os.rename(target, shards_folder(target, 0))
        pointer = target.with_name(f".{target.name}.link")
        pointer.unlink(missing_ok=True)
        os.symlink(folder.name, pointer)
        os.replace(pointer, target)
        keep = folder
    for stale in target.parent.iterdir():
        if stale != keep and _is_shards_folder_of(stale.name, target):
            _remove(stale)


class AtomicModelCheckpoint(SaveHookCheckpoint):
    """Lightning's ``ModelCheckpoint``, whose distributed checkpoints appear under their name only whole.

    Under ``ModelParallelStrategy`` (``trainer=fsdp``) every rank writes its shards into the checkpoint's folder
    itself, not through a ``CheckpointIO``: written in place, a save cut short by a crash or a preemption would leave
    a folder that mixes two steps, the previous checkpoint gone. Here each rank writes into a fresh folder beside the
    name (:func:`shards_folder`); once every rank has written its part (the strategy's barrier after the save), rank 0
    makes it visible (:func:`publish`): a new name is the folder itself, renamed onto it; a name the callback saves
    again (``last.ckpt``) is a symbolic link to the newest folder. ``ckpt_path=<dir>/last.ckpt`` resumes through the
    link; copy the checkpoints' folder with its links (``cp -r``, ``rsync -a``), or the folder a link names.

    Files (every other strategy) are written by the Trainer's ``CheckpointIO`` (the app's :class:`AtomicCheckpointIO`
    renames them onto their name).
    """

    def save(self, trainer: pl.Trainer, filepath: str) -> None:
        if not saves_distributed_checkpoint(trainer.strategy):
            super().save(trainer, filepath)
            return
        target = Path(filepath)
        chosen = shards_folder(target, trainer.global_step) if trainer.is_global_zero else None
        folder = trainer.strategy.broadcast(chosen)  # rank 0's: the ranks write into one folder
        assert folder is not None
        trainer.save_checkpoint(folder, self.save_weights_only)  # every rank writes its part, then a barrier
        if trainer.is_global_zero:
            publish(folder, target, link=self.saves_again(filepath))
        self.saved(trainer, filepath)

    def saves_again(self, filepath: str) -> bool:
        """Whether this callback saves ``filepath`` again (its ``save_last`` file, or a name it has saved): such a
        distributed checkpoint is published as a link."""
        return filepath == self.last_model_path or os.path.lexists(filepath)

    def saved(self, trainer: pl.Trainer, filepath: str) -> None:
        """Record, once every rank has reached this point, a save of ``filepath`` made other than by Lightning's own
        save (a link, a published folder), as that save does: for Lightning's de-duplication and the loggers."""
        trainer.strategy.barrier("AtomicModelCheckpoint")
        mark_saved(self, trainer.global_step, filepath)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class LastCheckpoint(AtomicModelCheckpoint):
    """``last.ckpt``: the latest validated step, overwritten at each validation, what a resume needs.

    When ``best`` has just saved this very step (same global step, same ``save_weights_only``), ``last.ckpt``
    becomes a hard link to that file instead of a second identical copy (a full checkpoint of all-MiniLM-L6-v2
    with AdamW's moments and the teacher is ≈ 364 MB). The linked file differs from what this callback would write
    only in this callback's own bookkeeping (which file it wrote last), which resuming does not use. The link is
    replaced (not written through) at the next validation, and outlives the best file's removal: the two names
    never change each other's content. Where the file system has no hard links, the checkpoint is written.

    A distributed checkpoint (``trainer=fsdp``) is written again, and ``last.ckpt`` is then a symbolic link to the
    newest complete one (:class:`AtomicModelCheckpoint`).

    Args:
        best: the callback that keeps the best checkpoints (``None``: none to link to).
        dirpath: the checkpoints' folder.
        save_weights_only: leave out optimizer and callback states (cannot resume training).
        kwargs: more of ``ModelCheckpoint``'s arguments (``every_n_train_steps``...).
    """

    def __init__(self, best: ModelCheckpoint | None, dirpath: str | Path, save_weights_only: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         save_weights_only=save_weights_only, **kwargs)
        self.best = best

    def saves_again(self, filepath: str) -> bool:
        return True

    def save(self, trainer: pl.Trainer, filepath: str) -> None:
        best = self.best
        best_step, best_path = last_saved(best) if best is not None else (None, "")
        same_step = best_step == trainer.global_step and bool(best_path) and (
            best is not None and best.save_weights_only == self.save_weights_only)
        # A distributed checkpoint is a folder, which the best callback removes when a better one comes: written again.
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
        self.saved(trainer, filepath)
