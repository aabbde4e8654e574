"""What a run hands over: checkpoints without duplicates, the student and the teacher as ``save_pretrained`` folders.

- :class:`AtomicCheckpointIO` writes each checkpoint beside its path, then renames it;
- :class:`LastCheckpoint` keeps ``checkpoints/last.ckpt`` (the latest validation, to resume), a hard link to the best
  checkpoint when both are the same step: one file on disk, two names;
- :func:`export_pretrained` writes ``model/`` (the final student) and ``teacher/`` (the student's model with the
  EMA tensors in place of its trainable weights), each with the tokenizer, for
  ``AutoModelForSequenceClassification.from_pretrained``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_smart.sweep import replacing


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


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest validated step, overwritten at each validation, what a resume needs.

    When ``best`` has just saved this very step (same global step, same ``save_weights_only``), ``last.ckpt``
    becomes a hard link to that file instead of a second identical copy (a full checkpoint of all-MiniLM-L6-v2
    with AdamW's moments and the teacher is ≈ 364 MB). The linked file differs from what this callback would write
    only in this callback's own bookkeeping (which file it wrote last), which resuming does not use. The link is
    replaced (not written through) at the next validation, and outlives the best file's removal: the two names
    never change each other's content. Where the file system has no hard links, the checkpoint is written.

    Args:
        best: the callback that keeps the best checkpoints.
        dirpath: the checkpoints' folder.
        save_weights_only: leave out optimizer and callback states (cannot resume training).
    """

    def __init__(self, best: ModelCheckpoint, dirpath: str | Path, save_weights_only: bool = False) -> None:
        super().__init__(dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         save_weights_only=save_weights_only)
        self.best = best

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        best = self.best
        same_step = (best._last_global_step_saved == trainer.global_step and best._last_checkpoint_saved
                     and best.save_weights_only == self.save_weights_only)
        if not same_step:
            super()._save_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            target = Path(filepath)
            try:
                with replacing(target) as tmp:
                    os.link(best._last_checkpoint_saved, tmp)
            except OSError:
                super()._save_checkpoint(trainer, filepath)
                return
        trainer.strategy.barrier("LastCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def teacher_state_dict(model: nn.Module, ema: dict[str, Tensor], prefix: str = "model.") -> dict[str, Tensor]:
    """``model``'s state dict with the teacher's EMA tensors in place of its trainable weights.

    Args:
        model: the student's transformers model (the LightningModule's ``model``).
        ema: :attr:`EMATeacherCallback.ema`: name → float32 tensor, named as the LightningModule's parameters.
        prefix: what the LightningModule's names put before ``model``'s own.

    Frozen parameters and buffers are the student's (the teacher shares them); each EMA tensor takes its
    parameter's dtype.
    """
    state = dict(model.state_dict())
    for name, tensor in ema.items():
        key = name.removeprefix(prefix)
        if key not in state:
            raise KeyError(f"the teacher's {name!r} is not a parameter of the model under {prefix!r}")
        state[key] = tensor.detach().to(device=state[key].device, dtype=state[key].dtype)
    return state


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
                    state_dict: dict[str, Tensor] | None = None) -> Path:
    """``model`` (with ``state_dict``'s weights, if given) and ``tokenizer`` in ``folder``, replaced whole.

    Written to a temporary folder beside it, then renamed: a crash leaves no half-written model.
    """
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def export_pretrained(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path,
                      ema: dict[str, Tensor] | None = None) -> dict[str, str]:
    """``out/model`` (the student's current weights) and, given the teacher's ``ema``, ``out/teacher``.

    Args:
        model: the LightningModule; its ``model`` attribute is the transformers model.
        tokenizer: saved in each folder.
        out: the run's folder.
        ema: :attr:`EMATeacherCallback.ema`, or ``None`` for no teacher folder.

    Returns:
        The folders written, relative to ``out``: ``{"model": "model", "teacher": "teacher"}``.
    """
    hf_model: PreTrainedModel = model.model  # type: ignore[assignment]
    folders = {"model": save_pretrained(hf_model, tokenizer, out / "model")}
    if ema:
        folders["teacher"] = save_pretrained(hf_model, tokenizer, out / "teacher", teacher_state_dict(hf_model, ema))
    return {name: os.path.relpath(path, out) for name, path in folders.items()}
