"""``smart-train``: compose ``conf/`` with Hydra, check it, fine-tune with SMART, hand over the results.

Examples::

    smart-train                                     # all-MiniLM-L6-v2 on movie sentiment, SMART + teacher, CPU
    smart-train smart=off teacher=off               # plain fine-tuning
    smart-train -m smart=off,paper seed=1,2         # a sweep: aggregate.md and val_curves.png at its end
    smart-train -m hparams_search=optuna            # an Optuna search (pip install "lightning-smart[optuna]")
    smart-train --config-dir my_conf data=my_data   # add your own presets

A run writes, under Hydra's output folder: ``csv/metrics.csv``, ``checkpoints/`` (best and last: one file when they
are the same step), ``model/`` and ``teacher/`` (``save_pretrained`` folders) and ``summary.json``. Config and data
are checked before Hydra creates that folder, where Hydra allows (:mod:`lightning_smart.app.checks`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from lightning_smart._lightning import is_spawned
from lightning_smart.app import trackers
from lightning_smart.app.callbacks import RandomState, ValidationCurve, from_config
from lightning_smart.app.checkpoints import AtomicCheckpointIO
from lightning_smart.app.checks import (
    CheckBeforeRun,
    Checked,
    check,
    check_checkpoint,
    check_once,
    refuse_relaunch_under_multirun,
)
from lightning_smart.app.export import export_pretrained
from lightning_smart.app.files import write_json
from lightning_smart.app.robustness import RobustEvaluation, refuse_sharded
from lightning_smart.app.schema import register_configs
from lightning_smart.app.summary import PeakMemory, error_line, print_summary, summarize, summarize_failure
from lightning_smart.app.sweep import FailedJob
from lightning_smart.app.text_attacks import TextAttackEvaluation
from lightning_smart.config import ConfigError, SmartConfig
from lightning_smart.data import SFTDataModule, TaggingDataModule
from lightning_smart.sharding import EndProcessGroupAtExit, is_sharded
from lightning_smart.tasks import CausalLMTask, FineTuneTask, SequenceTask, TokenTask
from lightning_smart.teacher import EMATeacherCallback

__all__ = ["AtomicCheckpointIO", "CheckBeforeRun", "Run", "build", "check", "main", "make_task", "train"]
register_configs()


class RunConfigError(CompactHydraException):
    """A config or data error; Hydra prints its message alone, without a traceback."""


@dataclass
class Run:
    """A run ready to fit: :func:`check`'s results, the model and a Trainer with its callbacks and loggers."""

    checked: Checked
    model: FineTuneTask
    trainer: pl.Trainer
    checkpoint: ModelCheckpoint | None
    validation: ValidationCurve
    teacher: EMATeacherCallback | None


def make_task(cfg: DictConfig, checked: Checked, smart: SmartConfig) -> FineTuneTask:
    """The task the data call for: :class:`SequenceTask`, :class:`CausalLMTask` (``data=sft``) or
    :class:`TokenTask` (``data=tokens``), with the model, optimizer and LoRA settings of ``cfg.model``."""
    data = checked.data
    common: dict[str, Any] = {
        "smart": smart, "lr": cfg.model.lr, "weight_decay": cfg.model.weight_decay,
        "warmup_ratio": cfg.model.warmup_ratio, "model_overrides": OmegaConf.to_container(cfg.model.config),
        "test_names": data.test_names, "pad_token_id": data.tokenizer.pad_token_id,
        "lora": OmegaConf.to_container(cfg.model.lora) or None,
    }
    if isinstance(data, SFTDataModule):
        return CausalLMTask(cfg.model.name_or_path, **common)
    if isinstance(data, TaggingDataModule):
        return TokenTask(cfg.model.name_or_path, data.label_names, **common)
    return SequenceTask(cfg.model.name_or_path, num_labels=cfg.data.num_labels, **common)


def build(cfg: DictConfig, output_dir: str | Path) -> Run:
    """:func:`check` ``cfg`` (once), then build the model and the Trainer (files appear only once training starts)."""
    checked = check_once(cfg)
    out = Path(output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    # The probe ran in the run being resumed; run again, its dropout draws would shift the random stream that
    # RandomState restores, and the resumed run would no longer be the one that never stopped.
    smart = checked.smart if cfg.ckpt_path is None else dataclasses.replace(checked.smart, probe=False)
    model = make_task(cfg, checked, smart)
    if checked.smart.acts:
        model.smart_perturbation_site()  # a bad smart.perturb_at fails here, not after the first step
    if cfg.ckpt_path is not None:
        check_checkpoint(cfg.ckpt_path, model)
    callbacks, checkpoint = from_config(cfg, out, checked.metric)
    validation = ValidationCurve(checkpoint, checked.metric)
    teacher = None if checked.teacher is None else EMATeacherCallback.from_config(checked.teacher)
    callbacks += [validation, RandomState(), EndProcessGroupAtExit(), *([teacher] if teacher else [])]
    loggers: list[Logger] = [instantiate(spec, save_dir=str(out)) for spec in (cfg.logger or {}).values() if spec]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(out),
                          enable_progress_bar=cfg.progress_bar, plugins=[AtomicCheckpointIO()])
    refuse_relaunch_under_multirun(trainer, cfg.trainer.strategy)
    refuse_sharded(trainer.strategy, cfg.eval.robust_radii)
    return Run(checked, model, trainer, checkpoint, validation, teacher)


def train(cfg: DictConfig, output_dir: str | Path, run: Run | None = None) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says, hand over the student (and teacher), test, and write ``summary.json``.

    The final student is saved in ``model/`` and the teacher, when validated, in ``teacher/`` (``save_pretrained``
    folders with the tokenizer), before the test sets load the best checkpoint. With ``eval.robust_radii``, robust
    accuracy (:mod:`lightning_smart.app.robustness`) is measured on validation at the final weights, on each test split
    at the weights its test used, and for the teacher from ``teacher/``.

    Args:
        cfg: the composed config.
        output_dir: the run's folder.
        run: what :func:`build` made of ``cfg`` (built here when ``None``).

    Returns:
        The summary (:func:`~lightning_smart.app.summary.summarize`).
    """
    start = time.perf_counter()
    out = Path(output_dir)
    run = run or build(cfg, out)
    trackers.start(cfg, run.trainer)  # MLflow, W&B: the composed config as the run's hyperparameters
    checked, model, trainer, checkpoint = run.checked, run.model, run.trainer, run.checkpoint
    memory = PeakMemory(trainer.strategy.root_device)
    trainer.fit(model, datamodule=checked.data, ckpt_path=cfg.ckpt_path, weights_only=True)
    # Spawned workers (ddp_spawn) hand back the weights and the logged metrics, not the callbacks' state: the
    # summary then holds the last validation inside fit (let val_check_interval divide max_steps).
    # Read before validate/test reset the metrics; the counter is logged only when λs > 0.
    steps = int(trainer.callback_metrics.pop("trainer/global_step"))
    best_score = trainer.callback_metrics.pop("trainer/best_score", None)
    skipped = int(trainer.callback_metrics.get("smart/skipped", model.smart_skipped))
    spawned = is_spawned(trainer.strategy)
    if run.validation.step != steps and not spawned:
        trainer.validate(model, datamodule=checked.data, verbose=False)
    val = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    exported: dict[str, str] = {}
    sharded = is_sharded(model)
    if trainer.is_global_zero or sharded:  # spawned workers keep the teacher: the main process exports the student
        ema = run.teacher.full_ema() if run.teacher is not None and run.teacher.config.validate else None
        exported = export_pretrained(model, checked.data.tokenizer, out, ema)  # sharded: every rank gathers
    robust = RobustEvaluation.from_config(cfg.eval, trainer, model,
                                          out / exported["teacher"] if "teacher" in exported else None)
    if robust.radii:
        checked.data.setup("fit")  # a spawned fit set its data up in its workers only
        robust.run("val", checked.data.val_dataloader(), val)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    curve = list(run.validation.curve)  # loading the best checkpoint for the test restores the callbacks' state too
    test: dict[str, dict[str, float]] = {}
    test_teacher: dict[str, dict[str, float]] = {}
    if cfg.test and checked.data.test_names:
        results = trainer.test(model, datamodule=checked.data, ckpt_path="best" if best_path else None, verbose=False)
        loaders: list[Any] = checked.data.test_dataloader() if robust.radii else [[]] * len(checked.data.test_names)
        for name, result, loader in zip(checked.data.test_names, results, loaders, strict=True):
            test[name] = {k.removeprefix(f"test/{name}/"): float(v) for k, v in result.items()}
            test_teacher[name] = {}
            robust.run(f"test/{name}", loader, test[name], test_teacher[name])  # the weights the test just used
    robust.log(trainer)
    text = TextAttackEvaluation.from_config(cfg, trainer, checked.data.tokenizer, out, exported)
    if text.attacks:  # the exported folders: the final student and teacher, whole under any strategy
        splits = checked.data.load()
        text.run("val", splits.val, val)
        for name in test:
            text.run(f"test/{name}", splits.test[name], test[name], test_teacher[name])
        text.log(trainer)
    summary = summarize(cfg, out, trainer, checked.metric, checked.data.stats, val=val, test=test, steps=steps,
                        skipped=skipped, best=(best_score, best_path), exported=exported,
                        wall_time_s=time.perf_counter() - start, curve=curve,
                        peak_memory=memory.read(), robust=robust.summary(), text_attacks=text.summary(),
                        test_teacher={k: v for k, v in test_teacher.items() if v})
    if trainer.is_global_zero:
        from lightning_smart.app.model_card import write_model_cards

        write_json(out / "summary.json", summary)
        write_model_cards(out, summary)  # the final metrics, in the exported folders' README.md
        trackers.finish(trainer, out, summary)  # MLflow, W&B: the summary, the run's files; the run closed
        print_summary(summary, out / "summary.json")
    return summary


@hydra.main(version_base="1.3", config_path="pkg://lightning_smart.conf", config_name="config")
def main(cfg: DictConfig) -> float | FailedJob:
    """The ``smart-train`` console command; returns the final ``metric`` to sweepers.

    In a sweep, a job that raises after its config was accepted leaves its error in its folder (``summary.json``
    marked failed, ``error.txt`` with the traceback) and returns a :class:`~lightning_smart.app.sweep.FailedJob`, so
    that the sweep goes on; :class:`~lightning_smart.app.sweep.AggregateSweep` names it in the reports and ends the
    command with exit status 1. A config error stops the sweep at once; a single run raises either error.
    """
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    start = time.perf_counter()
    try:
        return float(train(cfg, output_dir)["score"])
    except ConfigError as err:
        trackers.close_failed()  # a check of the first step's: the trackers' runs already open
        message = str(err) + _remove_if_only_hydra(output_dir)
        if in_sweep:  # no Exception, so the launcher starts no further job, and Hydra prints the message alone
            raise SystemExit(f"Error in the config of job {hydra_config.job.num}"
                             f" ({' '.join(hydra_config.overrides.task)}), the sweep stops: {message}") from err
        raise RunConfigError(message) from err
    except Exception as err:
        trackers.close_failed()  # MLflow, W&B: the run marked failed, whether it ended in fit or after
        if not in_sweep:
            raise
        failed = _record_failure(cfg, output_dir, err, time.perf_counter() - start)
    gc.collect()  # the failed run's model and Trainer refer to each other: free them (and their GPU memory) now
    return failed


def _record_failure(cfg: DictConfig, output_dir: Path, error: Exception, seconds: float) -> FailedJob:
    """Leave a sweep job's run-time error in its folder: ``error.txt`` (the traceback) and ``summary.json``
    (:func:`~lightning_smart.app.summary.summarize_failure`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "error.txt").write_text("".join(traceback.format_exception(error)))
    summary = summarize_failure(cfg, error, seconds, "error.txt")
    write_json(output_dir / "summary.json", summary)
    logging.getLogger(__name__).error("This job failed; the sweep goes on. Its error, kept in %s:",
                                      output_dir / "error.txt", exc_info=error)
    return FailedJob(str(output_dir), error_line(summary))


def _remove_if_only_hydra(output_dir: Path) -> str:
    """Remove the folder Hydra made for a job that failed before training (its config copy and its log); returns
    what to add to the error message: nothing, or why the folder stays."""
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
