"""A run made to fail while it trains, as a GPU out of memory or a Ctrl-C would: a callback given through the config.

``+callbacks.fail={_target_: tests.helpers.failing.FailAt, step: 2, job: 1}`` fails job 1 of a sweep at the start of
its optimizer step 2 (its third batch). The app's command finds ``tests`` when the repository root is on
``PYTHONPATH``.
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

MESSAGE = "CUDA out of memory (made to fail at step {step})"


class FailAt(pl.Callback):
    """Raises at the start of optimizer step ``step`` (0-based) of Hydra job number ``job`` (any job, or a single run,
    when ``None``): ``RuntimeError`` with :data:`MESSAGE`, or ``KeyboardInterrupt`` as a Ctrl-C would."""

    def __init__(self, step: int, job: int | None = None,
                 error: Literal["RuntimeError", "KeyboardInterrupt"] = "RuntimeError") -> None:
        self.step, self.job, self.error = step, job, error

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        job = OmegaConf.select(HydraConfig.get(), "job.num") if HydraConfig.initialized() else None  # a run: no number
        if trainer.global_step != self.step or self.job not in (None, job):
            return
        if self.error == "KeyboardInterrupt":
            raise KeyboardInterrupt
        raise RuntimeError(MESSAGE.format(step=self.step))
