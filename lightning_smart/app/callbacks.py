"""The app's callbacks: those of ``conf/callbacks/`` (:func:`from_config`), and its own for summary and resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, ProgressBar
from omegaconf import DictConfig

from lightning_smart.app.checkpoints import LastCheckpoint


class ValidationCurve(Callback):
    """Remembers the step of the last validation and the monitored metric at each validation (the run's validation
    curve, kept across a resume), so the summary always holds the final weights' metrics and the curve.

    At the end of training it also leaves the step count and the best checkpoint's score in ``callback_metrics``,
    where the summary reads them: spawned workers (``ddp_spawn``) send those metrics back to the main process,
    which has neither of its own (Lightning's spawn launcher hands back the best checkpoint's path, not its score).
    """

    step = -1

    def __init__(self, checkpoint: ModelCheckpoint | None, metric: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.metric = metric
        self.curve: list[tuple[int, float]] = []

    @property
    def state_key(self) -> str:
        # Checkpoints key this callback's state by this name: it stays fixed, so that existing checkpoints resume.
        return "ValidationStep"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step
            value = trainer.callback_metrics.get(self.metric) if self.metric else None
            if value is not None and trainer.state.fn == "fit":
                self.curve = [point for point in self.curve if point[0] != self.step] + [(self.step, float(value))]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["trainer/global_step"] = torch.tensor(float(trainer.global_step))
        if self.checkpoint is not None and self.checkpoint.best_model_score is not None:
            trainer.callback_metrics["trainer/best_score"] = self.checkpoint.best_model_score.detach().float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"curve": [list(point) for point in self.curve]}  # plain lists: a weights_only load reads them

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [(int(step), float(value)) for step, value in state_dict.get("curve", [])]


class RandomState(Callback):
    """Saves the global random states (torch, CUDA, NumPy, Python) in the checkpoint, and restores them on a resume.

    Dropout draws its masks from torch's global generator, which Lightning does not checkpoint. The states are
    taken when the checkpoint is written, and put back just before the first training batch after the resume: later
    than anything a resumed fit draws at its start (the SMART probe's forwards, the sanity check), which the
    uninterrupted run drew long before.
    """

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Plain lists and tensors: Lightning reloads checkpoints with torch.load(weights_only=True), which refuses
        # NumPy arrays.
        name, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [name, np.asarray(keys).tolist(), position, has_gauss, gauss],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._restore is not None:
            state, self._restore = self._restore, None
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])
            name, keys, position, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
            if state["cuda"]:
                torch.cuda.set_rng_state_all(state["cuda"])


def from_config(cfg: DictConfig, out: Path, metric: str) -> tuple[list[Callback], ModelCheckpoint | None]:
    """``cfg.callbacks``, each built by Hydra; the checkpoints go to ``<out>/checkpoints`` and follow ``metric``.

    Returns:
        The callbacks, and the one that keeps the best checkpoints (``None`` if the config has none).
    """
    callbacks: list[Callback] = []
    best: ModelCheckpoint | None = None
    for spec in (cfg.callbacks or {}).values():
        kind = get_class(spec._target_) if spec is not None else None
        if kind is None or (issubclass(kind, (ProgressBar, ModelSummary)) and not cfg.progress_bar):
            continue
        if issubclass(kind, LastCheckpoint):  # the latest validated step, for a resume
            if cfg.checkpoint.save_last:
                callbacks.append(instantiate(spec, best=best, dirpath=out / "checkpoints"))
        elif issubclass(kind, ModelCheckpoint):
            mode = "min" if metric.endswith("loss") else "max"
            best = instantiate(spec, dirpath=out / "checkpoints", monitor=metric, mode=mode)
            callbacks.append(best)
        else:
            callbacks.append(instantiate(spec))
    return callbacks, best
