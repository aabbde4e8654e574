"""``smart-train``: compose ``conf/`` with Hydra, check it, fine-tune with SMART, write ``summary.json``.

Examples::

    smart-train                                     # all-MiniLM-L6-v2 on movie sentiment, SMART + teacher, CPU
    smart-train smart=off teacher=off               # plain fine-tuning
    smart-train -m smart=off,paper seed=1,2         # a sweep: aggregate.md and val_curves.png at its end
    smart-train -m hparams_search=optuna            # an Optuna search (pip install "lightning-smart[optuna]")
    smart-train --config-dir my_conf data=my_data   # add your own presets

A run writes, under Hydra's output folder: ``csv/metrics.csv``, ``checkpoints/`` (best and last: one file when they
are the same step), ``model/`` and ``teacher/`` (``save_pretrained`` folders) and ``summary.json``. Config and data
are checked before Hydra creates that folder, where Hydra allows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
import transformers
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig

from lightning_smart import __version__
from lightning_smart.config import ConfigError, SmartConfig, TeacherConfig
from lightning_smart.data import TextDataModule
from lightning_smart.export import AtomicCheckpointIO, LastCheckpoint, export_pretrained
from lightning_smart.schema import TrainerConf, register_configs
from lightning_smart.sweep import replacing
from lightning_smart.tasks import SequenceTask
from lightning_smart.teacher import EMATeacherCallback

register_configs()


class RunConfigError(CompactHydraException):
    """A config or data error; Hydra prints its message alone, without a traceback."""


@dataclass
class Checked:
    """What :func:`check` built from a config: the validated hyperparameters and the loaded data."""

    smart: SmartConfig
    teacher: TeacherConfig | None
    data: TextDataModule
    metric: str


def _metric(cfg: DictConfig, teacher: TeacherConfig | None) -> str:
    names = ("pearson", "spearman") if cfg.data.num_labels == 1 else ("acc", "f1", "mcc")
    allowed = [f"val/{name}" for name in (*names, "loss")]
    if teacher is not None and teacher.validate:
        allowed += [f"val/{name}_teacher" for name in names]
    metric = cfg.metric or allowed[0]
    if metric not in allowed:
        raise ConfigError(f"metric={metric!r} is not logged by this run: one of {', '.join(allowed)}")
    return str(metric)


def _not_allowed(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: {why}")


def _check_run(cfg: DictConfig) -> None:
    """The app's own keys: the seed and the optimizer's settings (the model's and data's are checked where used)."""
    seed = cfg.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise _not_allowed("seed", seed, f"an integer in [0, {2**32 - 1}] (NumPy's seed range)")
    model = cfg.model
    if not math.isfinite(model.lr) or model.lr <= 0:
        raise _not_allowed("model.lr", model.lr, "AdamW's peak learning rate must be a finite number > 0")
    if not math.isfinite(model.weight_decay) or model.weight_decay < 0:
        raise _not_allowed("model.weight_decay", model.weight_decay, "a finite number ≥ 0")
    if not 0 <= model.warmup_ratio <= 1:
        raise _not_allowed("model.warmup_ratio", model.warmup_ratio, "a fraction of the run's steps in [0, 1]:"
                           " above 1 the learning rate would never reach model.lr")
    if cfg.checkpoint.save_top_k < -1:
        raise _not_allowed("checkpoint.save_top_k", cfg.checkpoint.save_top_k, "an integer ≥ -1 (-1 keeps all)")


# Values Lightning accepts when the Trainer is built but refuses, or misbehaves with, once training runs.
_TRAINER_RULES: dict[str, tuple[Any, str]] = {
    "accumulate_grad_batches": (lambda v: isinstance(v, int) and v >= 1, "an integer ≥ 1"),
    "log_every_n_steps": (lambda v: v is None or v >= 1, "an integer ≥ 1, or null"),
    "check_val_every_n_epoch": (lambda v: v is None or v >= 1, "an integer ≥ 1, or null (validate by steps)"),
    "gradient_clip_val": (lambda v: v is None or (math.isfinite(v) and v >= 0), "a finite number ≥ 0, or null"),
    "num_sanity_val_steps": (lambda v: v is None or v >= -1, "an integer ≥ -1, or null"),
}


def _trainer_error(trainer: DictConfig | ListConfig) -> BaseException | None:
    """Lightning's own error for these Trainer values, or ``None``: the Trainer is built with no logger, callback or
    checkpointing, so it writes nothing."""
    target = OmegaConf.to_container(trainer)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # "GPU available: ..." belongs to the run, not to its check
    try:
        with tempfile.TemporaryDirectory() as root:
            instantiate(target, logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    except InstantiationException as err:
        return err.__cause__ or err
    except Exception as err:  # Lightning refuses with ValueError, TypeError, MisconfigurationException alike
        return err
    finally:
        lightning_log.setLevel(level)
    return None


def _check_trainer(cfg: DictConfig) -> None:
    """Every ``trainer.*`` value Lightning would refuse, found before training, with the key named.

    Lightning is the judge: the Trainer is built once here. When it refuses, each value the user set is tried alone
    on the defaults, so the message names the key at fault (or all of them, for a combination).
    """
    trainer = cfg.trainer
    for key, (ok, allowed) in _TRAINER_RULES.items():
        if key in trainer and not ok(trainer[key]):
            raise _not_allowed(f"trainer.{key}", trainer[key], allowed)
    error = _trainer_error(trainer)
    if error is not None:
        defaults = OmegaConf.structured(TrainerConf)
        given = {k: v for k, v in trainer.items() if k != "_target_" and (k not in defaults or v != defaults[k])}
        at_fault = [k for k in given if _trainer_error(OmegaConf.merge(defaults, {k: given[k]}))]
        keys = at_fault[:1] or list(given)
        where = " with ".join(f"trainer.{k}={given[k]!r}" for k in keys) or "trainer"
        message = " ".join(str(error).split())
        raise ConfigError(f"{where} is not allowed: Lightning refuses it: {message}")
    if trainer.max_steps == -1 and trainer.max_epochs == -1:
        raise _not_allowed("trainer.max_steps", -1, "with trainer.max_epochs=-1 the run has no known length, which"
                           " the learning-rate schedule (and the teacher's β schedule and ramp-ups) are fractions of:"
                           " set trainer.max_steps or trainer.max_epochs")


def _check_sweeper(cfg: DictConfig, metric: str) -> None:
    """An Optuna search must optimize ``metric`` the way the checkpoint does: up, or down for a loss."""
    if "hydra" in cfg:
        sweeper = cfg.hydra.sweeper
    elif HydraConfig.initialized():
        sweeper = HydraConfig.get().sweeper
    else:
        return
    direction = sweeper.get("direction")
    if direction is None or not isinstance(direction, str):
        return
    wanted = "minimize" if metric.endswith("loss") else "maximize"
    if str(direction).lower() != wanted:
        raise _not_allowed("hydra.sweeper.direction", str(direction), f"metric={metric} is "
                           f"{wanted[:-1]}ed (best checkpoint and sweeper must agree): use {wanted}")


def check(cfg: DictConfig) -> Checked:
    """Validate everything that can be checked before training, writing nothing.

    The hyperparameters (their dataclasses' ranges), the seed and the optimizer's settings, the Trainer's values
    (as Lightning would take them), the model's config, the tokenizer and the data (files, columns, labels,
    splits), the monitored metric and, in a sweep, the sweeper's direction. Raises
    :class:`~lightning_smart.config.ConfigError` (or an OmegaConf error for a missing ``???`` value) naming the key
    or the file.
    """
    smart = SmartConfig(**OmegaConf.to_container(cfg.smart))  # type: ignore[arg-type]
    teacher = None if cfg.teacher is None else TeacherConfig(**OmegaConf.to_container(cfg.teacher))  # type: ignore[arg-type]
    _check_run(cfg)
    _check_trainer(cfg)
    try:
        AutoConfig.from_pretrained(cfg.model.name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path!r} could not be loaded: {err}") from None
    if cfg.logger.tensorboard and not (find_spec("tensorboard") or find_spec("tensorboardX")):
        raise ConfigError("logger.tensorboard=true needs TensorBoard: pip install tensorboard (or logger=csv)")
    metric = _metric(cfg, teacher)
    _check_sweeper(cfg, metric)
    try:
        data: TextDataModule = instantiate(cfg.data, _convert_="all")
    except InstantiationException as err:  # Hydra wraps the data module's own error, which names the key
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
    data.load()
    _ = data.tokenizer
    return Checked(smart, teacher, data, metric)


class CheckBeforeRun(HydraCallback):
    """Hydra callback: :func:`check` the composed config before Hydra creates any output folder.

    Hydra turns a callback's exceptions into warnings; ``SystemExit`` is no ``Exception``, so it ends the
    command, with the error's message and exit status 1, before anything is written.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)  # the base config: each job checks its swept values again

    @staticmethod
    def _check(config: DictConfig) -> None:
        try:
            check(config)
        except (ConfigError, OmegaConfBaseException) as err:
            raise SystemExit(f"Error in the config (nothing was written): {err}") from err


class _ValidationStep(Callback):
    """Remembers the step of the last validation, so the summary always holds the final weights' metrics.

    At the end of training it also leaves the step count and the best checkpoint's score in ``callback_metrics``,
    where the summary reads them: spawned workers (``ddp_spawn``) send those metrics back to the main process,
    which has neither of its own (Lightning's spawn launcher hands back the best checkpoint's path, not its score).
    """

    step = -1

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["trainer/global_step"] = torch.tensor(float(trainer.global_step))
        if self.checkpoint.best_model_score is not None:
            trainer.callback_metrics["trainer/best_score"] = self.checkpoint.best_model_score.detach().float().cpu()


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


def _loggers(cfg: DictConfig, out: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(out, name="csv", version=""))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(out, name="tensorboard", version=""))
    return loggers


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that a reader never sees half a file: a temporary file, then an atomic rename."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _check_checkpoint(path: str, model: pl.LightningModule) -> None:
    """Refuse, before training, a ``ckpt_path`` that cannot resume this run: missing, unreadable or foreign."""
    key = f"ckpt_path={path!r}"
    if not Path(path).is_file():
        raise ConfigError(f"{key}: no such file (resume from a run's checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a file that is no checkpoint
        raise ConfigError(f"{key} is not a readable checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{key} is not a Lightning checkpoint: it has no 'state_dict'")
    saved, ours = set(ckpt["state_dict"]), set(model.state_dict())
    if saved != ours:
        missing, unexpected = sorted(ours - saved)[:3], sorted(saved - ours)[:3]
        raise ConfigError(f"{key} was saved from another model: missing {missing}, unexpected {unexpected}")
    if "optimizer_states" not in ckpt:
        raise ConfigError(f"{key} holds weights only (checkpoint.save_weights_only=true): it cannot resume training")


def _refuse_relaunch_under_multirun(trainer: pl.Trainer, strategy: Any) -> None:
    """Refuse a strategy that re-launches the command line per worker (``ddp``, ``fsdp``...) in a sweep.

    Lightning's script launcher starts each worker with this process's ``sys.argv``: under ``--multirun`` that
    is the whole sweep, so every worker would start the sweep again (a known Hydra + DDP pitfall). Spawned
    workers (``ddp_spawn``) run the job's function instead.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            f"trainer.strategy={strategy!r} re-launches the command line in each worker, which "
            "under --multirun would start the whole sweep again in every worker: use trainer.strategy=ddp_spawn "
            "with --multirun (ddp is fine for single runs)"
        )


@dataclass
class Run:
    """A run ready to fit: :func:`check`'s results, the model and a Trainer with its callbacks and loggers."""

    checked: Checked
    model: SequenceTask
    trainer: pl.Trainer
    checkpoint: ModelCheckpoint
    validation: _ValidationStep
    teacher: EMATeacherCallback | None


def build(cfg: DictConfig, output_dir: str | Path) -> Run:
    """:func:`check` ``cfg``, then build the model and the Trainer (files appear only once training starts)."""
    checked = check(cfg)
    out = Path(output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    # The probe ran in the run being resumed; run again, its dropout draws would shift the random stream that
    # RandomState restores, and the resumed run would no longer be the one that never stopped.
    smart = checked.smart if cfg.ckpt_path is None else dataclasses.replace(checked.smart, probe=False)
    model = SequenceTask(
        cfg.model.name_or_path,
        num_labels=cfg.data.num_labels,
        smart=smart,
        lr=cfg.model.lr,
        weight_decay=cfg.model.weight_decay,
        warmup_ratio=cfg.model.warmup_ratio,
        model_overrides=OmegaConf.to_container(cfg.model.config),  # type: ignore[arg-type]
        test_names=checked.data.test_names,
        pad_token_id=checked.data.tokenizer.pad_token_id,
    )
    if checked.smart.lambda_s > 0:
        model.smart_perturbation_site()  # a bad smart.perturb_at fails here, not after the first step
    if cfg.ckpt_path is not None:
        _check_checkpoint(cfg.ckpt_path, model)
    ckpt_cfg: dict[str, Any] = OmegaConf.to_container(cfg.checkpoint)  # type: ignore[assignment]
    save_last = ckpt_cfg.pop("save_last")
    checkpoint = ModelCheckpoint(
        out / "checkpoints", filename="best-step{step}", auto_insert_metric_name=False, monitor=checked.metric,
        mode="min" if checked.metric.endswith("loss") else "max", **ckpt_cfg,
    )
    callbacks: list[Callback] = [checkpoint]
    if save_last:  # the latest validated step, overwritten at each validation: what a resume needs
        callbacks.append(LastCheckpoint(checkpoint, out / "checkpoints", cfg.checkpoint.save_weights_only))
    validation = _ValidationStep(checkpoint)
    callbacks += [validation, LearningRateMonitor("step"), RandomState()]
    if cfg.progress_bar:
        callbacks += [RichProgressBar(), RichModelSummary()]
    teacher = None if checked.teacher is None else EMATeacherCallback.from_config(checked.teacher)
    if teacher is not None:
        callbacks.append(teacher)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=_loggers(cfg, out) or False,
                          default_root_dir=str(out), enable_progress_bar=cfg.progress_bar,
                          plugins=[AtomicCheckpointIO()])
    _refuse_relaunch_under_multirun(trainer, cfg.trainer.strategy)
    return Run(checked, model, trainer, checkpoint, validation, teacher)


def train(cfg: DictConfig, output_dir: str | Path, run: Run | None = None) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says, evaluate, and write ``summary.json`` in ``output_dir``.

    At the end of training the final student is saved in ``model/``, and the teacher, when validated, in
    ``teacher/`` (``save_pretrained`` folders with the tokenizer), before the test sets load the best checkpoint.

    Args:
        cfg: the composed config.
        output_dir: the run's folder.
        run: what :func:`build` made of ``cfg`` (built here when ``None``).

    Returns:
        The summary: ``score`` (the final value of ``metric``), ``val`` and ``val_teacher`` (final validation
        metrics of the student and of the teacher), ``test`` (per test set, best checkpoint), ``best``, ``data``
        (split sizes), ``steps``, ``wall_time_s``, ``overrides`` and the resolved ``config``.
    """
    start = time.perf_counter()
    out = Path(output_dir)
    run = run or build(cfg, out)
    checked, model, trainer, checkpoint = run.checked, run.model, run.trainer, run.checkpoint
    trainer.fit(model, datamodule=checked.data, ckpt_path=cfg.ckpt_path)
    # Spawned workers (ddp_spawn) hand back the weights and the logged metrics, not the callbacks' state: the
    # summary then holds the last validation inside fit (let val_check_interval divide max_steps).
    # Read before validate/test reset the metrics; the counter is logged only when λs > 0.
    steps = int(trainer.callback_metrics.pop("trainer/global_step"))
    best_score = trainer.callback_metrics.pop("trainer/best_score", None)
    skipped = int(trainer.callback_metrics.get("smart/skipped", model.smart_skipped))
    spawned = isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
    if run.validation.step != steps and not spawned:
        trainer.validate(model, datamodule=checked.data, verbose=False)
    val = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    exported: dict[str, str] = {}
    if trainer.is_global_zero:  # spawned workers keep the teacher: the main process exports the student alone
        teacher = run.teacher
        ema = teacher.ema if teacher is not None and teacher.config.validate else None
        exported = export_pretrained(model, checked.data.tokenizer, out, ema)
    test: dict[str, dict[str, float]] = {}
    if cfg.test and checked.data.test_names:
        results = trainer.test(model, datamodule=checked.data, ckpt_path="best" if checkpoint.best_model_path else None,
                               verbose=False)
        for name, result in zip(checked.data.test_names, results, strict=True):
            test[name] = {k.removeprefix(f"test/{name}/"): float(v) for k, v in result.items()}

    summary = {
        "metric": checked.metric,
        "score": val[checked.metric.removeprefix("val/")],
        "val": {k: v for k, v in val.items() if not k.endswith("_teacher")},
        "val_teacher": {k.removesuffix("_teacher"): v for k, v in val.items() if k.endswith("_teacher")} or None,
        "test": test,
        "best": {
            "score": None if best_score is None else float(best_score),
            "checkpoint": os.path.relpath(checkpoint.best_model_path, out) if checkpoint.best_model_path else None,
        },
        "data": checked.data.stats,
        "steps": steps,
        "smart_skipped": skipped,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "files": {"metrics_csv": "csv/metrics.csv" if cfg.logger.csv else None,
                  "last_checkpoint": "checkpoints/last.ckpt" if cfg.checkpoint.save_last else None,
                  "model": exported.get("model"), "teacher": exported.get("teacher")},
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": {"lightning_smart": __version__, "lightning": pl.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    if trainer.is_global_zero:
        _write_json(out / "summary.json", summary)
        print_summary(summary, out / "summary.json")
    return summary


def print_summary(summary: dict[str, Any], path: Path | None = None) -> None:
    """A short table of a run's final metrics: student and teacher side by side, then the test sets."""
    table = Table(title=f"{summary['steps']} steps in {summary['wall_time_s']:.0f} s", title_justify="left")
    for column in ("metric", "student", "teacher"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    teacher = summary["val_teacher"] or {}
    for name, value in summary["val"].items():
        table.add_row(f"val/{name}", f"{value:.4f}", f"{teacher[name]:.4f}" if name in teacher else "—")
    for test_set, metrics in summary["test"].items():
        for name, value in metrics.items():
            table.add_row(f"test/{test_set}/{name}", f"{value:.4f}", "—")
    console = Console()
    console.print(table)
    if path is not None:
        console.print(f"summary: {path}")


@hydra.main(version_base="1.3", config_path="pkg://lightning_smart.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """The ``smart-train`` console command; returns the final ``metric`` to sweepers."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return float(train(cfg, output_dir)["score"])
    except ConfigError as err:
        raise RunConfigError(str(err) + _remove_if_only_hydra(output_dir)) from err


def _remove_if_only_hydra(output_dir: Path) -> str:
    """Remove the folder Hydra made for a job that failed before training: its config copy and its log.

    Returns what to add to the error message: nothing, or why the folder stays.
    """
    hydra_files = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if not output_dir.is_dir() or any(e.name not in hydra_files for e in output_dir.iterdir()):
        return ""  # no folder, or the job wrote files of its own: leave them to the user
    try:
        shutil.rmtree(output_dir)
    except OSError as err:
        return f" (the run folder {output_dir} could not be removed: {err})"
    return ""


if __name__ == "__main__":
    main()
