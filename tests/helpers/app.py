"""Helpers for the app's tests (data module, CLI, notebook): tiny runs on the real offline assets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import lightning_smart.app.cli  # noqa: F401  (registers the schema and the ${package_dir:} resolver)

# A few seconds per run: the 2-layer model, 64 examples per split, 4 steps with a validation every 2.
TINY = [
    "model=minilm_l2",
    "data.train_size=64",
    "data.val_size=64",
    "data.test_size=64",
    "data.max_length=32",
    "data.batch_size=16",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "checkpoint.save_top_k=0",
    "checkpoint.save_last=false",
    "progress_bar=false",
]


@contextmanager
def app_config(overrides: Sequence[str] = ()) -> Iterator[DictConfig]:
    """The packaged config tree composed with ``overrides``, as ``smart-train`` would compose it."""
    with initialize_config_module(config_module="lightning_smart.conf", version_base="1.3"):
        yield compose(config_name="config", overrides=list(overrides))


def smart_train(args: Sequence[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed ``smart-train`` console script in ``cwd``, offline: the one of the environment the tests run
    in (beside its interpreter), else the first on ``PATH``."""
    beside = Path(sys.executable).with_name("smart-train")
    command = str(beside) if beside.is_file() else shutil.which("smart-train")
    argv = [command] if command else [sys.executable, "-c", "from lightning_smart.app.cli import main; main()"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def write_csv(path: Path, header: str, rows: Sequence[str]) -> Path:
    """A small CSV file: its header line and data lines."""
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def stopped_run(overrides: Sequence[str], out: Path, at: int) -> tuple[Any, Path]:
    """Build the run ``overrides`` compose and crash it at the start of optimizer step ``at``: the run (what
    :func:`lightning_smart.app.cli.build` made) and its ``last.ckpt``."""
    from lightning_smart.app.cli import build

    with app_config(overrides) as cfg:
        run = build(cfg, out)
        run.trainer.callbacks.append(Interrupt(at=at))
        try:
            run.trainer.fit(run.model, datamodule=run.checked.data)
        except RuntimeError as err:
            assert str(err) == "interrupted", err
        else:
            raise AssertionError(f"the run was not interrupted at step {at}")
    return run, out / "checkpoints" / "last.ckpt"


class Interrupt(pl.Callback):
    """Stops the run as a crash would: an exception at the start of optimizer step ``at`` (0-based)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("interrupted")
