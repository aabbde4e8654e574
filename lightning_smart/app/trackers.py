"""The run in the user's tracker: MLflow (``logger=mlflow``) and Weights & Biases (``logger=wandb``).

Lightning's ``MLFlowLogger`` and ``WandbLogger`` log every metric as the run logs it. Around them:

- :class:`MLFlowTracker` and :class:`WandbTracker` (the presets' loggers) name each run after its folder and file a
  sweep's jobs together: MLflow tags, a W&B group;
- before training, :func:`start` logs the composed config, flattened to Hydra's keys (``model.lr``,
  ``smart.epsilon``), as the run's hyperparameters;
- at the end of a run, :func:`finish` logs the summary's own numbers (``summary/score``...) and the run's files
  (``summary.json``, Hydra's ``.hydra/``, the job's log) as artifacts, and closes the run;
- at the end of a sweep, :func:`log_sweep` logs the sweep's reports (``aggregate.md``, ``val_curves.png``,
  ``compare.md``...) in a run of their own, under which MLflow nests the jobs' runs.

Each tracker needs its extra (``pip install "lightning-smart[mlflow]"``, ``"lightning-smart[wandb]"``):
:func:`check_tracker` refuses a missing one before training.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_smart.config import ConfigError

TRACKERS: dict[type[Logger], tuple[str, str]] = {MLFlowLogger: ("MLflow", "mlflow"),
                                                  WandbLogger: ("Weights & Biases", "wandb")}
"""Each tracker's logger class: its name, and its module, which is also the extra that installs it."""

DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
"""The URI schemes of the stores MLflow keeps in a database, through SQLAlchemy and Alembic."""

_open: list[Logger] = []
"""The trackers of the run that :func:`start` opened and :func:`finish` has not closed: a job that raised."""


def _shown(path: Path) -> str:
    """A folder as the user knows it: relative to the working directory when inside it."""
    return str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)


def _sweep_of(run: Path) -> Path | None:
    """The folder of the sweep that ``run`` is a job of, or ``None`` (a single run, or the sweep's own run)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep = Path(HydraConfig.get().sweep.dir).resolve()
    return sweep if run != sweep and run.is_relative_to(sweep) else None


class MLFlowTracker(MLFlowLogger):
    """Lightning's ``MLFlowLogger``, its run named after the run's folder and tagged with its sweep, in MLflow's store.

    Tags: ``smart.run_dir`` (the run's folder), and in a sweep ``smart.sweep_dir`` and ``smart.job`` (Hydra's job
    number).

    Args:
        save_dir: the run's folder (``smart-train`` passes it).
        tracking_uri: where the runs go; ``None``: MLflow's own choice, ``$MLFLOW_TRACKING_URI`` or else its default
            (``mlflow.db`` and ``mlruns/`` in the working directory), where Lightning's would be a store inside the
            run's folder, apart from every other run.
        run_name: the run's name; ``None``: its folder, relative to the working directory.
        tags: more tags.
        **kwargs: ``MLFlowLogger``'s other arguments (``experiment_name``, ``log_model``, ``artifact_location``...).
    """

    def __init__(self, save_dir: str, tracking_uri: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        import mlflow

        run = Path(save_dir).resolve()
        ours = {"smart.run_dir": str(run)}
        sweep = _sweep_of(run)
        if sweep is not None:
            ours |= {"smart.sweep_dir": str(sweep), "smart.job": str(HydraConfig.get().job.num)}
        super().__init__(tracking_uri=tracking_uri or mlflow.get_tracking_uri(), run_name=run_name or _shown(run),
                         tags={**ours, **(tags or {})}, save_dir=save_dir, **kwargs)


class WandbTracker(WandbLogger):
    """Lightning's ``WandbLogger``, its run named after the run's folder, a sweep's jobs in one group.

    Args:
        save_dir: the run's folder (``smart-train`` passes it): W&B's files go to its ``wandb/``.
        name: the run's name; ``None``: its folder, relative to the working directory.
        group: the run's group; ``None``: ``$WANDB_RUN_GROUP``, else in a sweep the sweep's folder.
        **kwargs: ``WandbLogger``'s other arguments (``project``, ``log_model``...) and ``wandb.init``'s
            (``entity``, ``tags``...).
    """

    def __init__(self, save_dir: str, name: str | None = None, group: str | None = None, **kwargs: Any) -> None:
        run = Path(save_dir).resolve()
        sweep = _sweep_of(run)
        group = group or os.environ.get("WANDB_RUN_GROUP") or (_shown(sweep) if sweep is not None else None)
        super().__init__(save_dir=save_dir, name=name or _shown(run), group=group, **kwargs)


def check_tracker(name: str, target: type, spec: Mapping[str, Any]) -> None:
    """Refuse ``logger.<name>``, before training, when its tracker is not installed (saying how to install it), or
    when its MLflow store is a database and SQLAlchemy or Alembic, which MLflow reaches it through, are missing."""
    for logger, (what, extra) in TRACKERS.items():
        if issubclass(target, logger) and find_spec(extra) is None:
            raise ConfigError(f'logger.{name} needs {what}, which is not installed: pip install'
                              f' "lightning-smart[{extra}]" (or logger=csv)')
    if issubclass(target, MLFlowLogger):
        import mlflow

        scheme = urlparse(spec.get("tracking_uri") or mlflow.get_tracking_uri()).scheme.split("+")[0]
        lacking = [package for package in ("sqlalchemy", "alembic") if find_spec(package) is None]
        if scheme in DATABASES and lacking:
            raise ConfigError(f"logger.{name}.tracking_uri is a {scheme} store, which MLflow reaches through"
                              f" {' and '.join(lacking)}, not installed: pip install \"lightning-smart[mlflow]\"")


def trackers(loggers: Iterable[Logger]) -> list[MLFlowLogger | WandbLogger]:
    """The MLflow and W&B loggers among ``loggers``."""
    return [logger for logger in loggers if isinstance(logger, MLFlowLogger | WandbLogger)]


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved and flattened to the keys Hydra overrides them by.

    Example:
        >>> flat_config(OmegaConf.create({"model": {"lr": 1e-3, "lora": {}}, "eval": {"radii": [0.1]}, "seed": 1}))
        {'model.lr': 0.001, 'model.lora': {}, 'eval.radii': [0.1], 'seed': 1}
    """
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict) or not node:
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    return {key.rstrip("."): value for key, value in flat(OmegaConf.to_container(cfg, resolve=True), "").items()}


def summary_numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's numbers that no logged metric holds, as ``summary/<name>``: ``score`` (the final ``metric``),
    ``best_score``, ``steps``, ``wall_time_s``, ``peak_memory_mib``, ``smart_skipped``, ``smart_epsilon``; those that
    are ``None`` are left out."""
    numbers = {"score": summary.get("score"), "best_score": (summary.get("best") or {}).get("score"),
               "steps": summary.get("steps"), "wall_time_s": summary.get("wall_time_s"),
               "peak_memory_mib": (summary.get("peak_memory") or {}).get("mib"),
               "smart_skipped": summary.get("smart_skipped"), "smart_epsilon": summary.get("smart_epsilon")}
    return {f"summary/{k}": float(v) for k, v in numbers.items() if isinstance(v, int | float)}


def run_files(out: Path) -> list[Path]:
    """What the trackers keep of a run's folder: the files at its top (``summary.json``, the job's log) and Hydra's
    ``.hydra/`` (the composed config, the overrides). The checkpoints and the exported models stay on disk (the
    loggers' ``log_model`` uploads the checkpoints)."""
    return sorted(p for p in [*out.glob("*"), *out.glob(".hydra/*")] if p.is_file())


def _close(logger: MLFlowLogger | WandbLogger, ok: bool) -> None:
    logger.finalize("success" if ok else "failed")  # MLflow: the run's status; both: log_model's checkpoints
    if isinstance(logger, WandbLogger):
        logger.experiment.finish(exit_code=0 if ok else 1)


def close_failed() -> None:
    """Close, as failed, the runs of a job that raised (a single run, or a sweep's job, as soon as it raised; and at
    the next job's start, whatever was left): MLflow's status FAILED, W&B's exit code 1, and W&B would otherwise log
    the next job into the open run."""
    while _open:
        _close(_open.pop(), ok=False)  # type: ignore[arg-type]


def start(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Before training: log ``cfg``, flattened (:func:`flat_config`), as the hyperparameters of each tracker's run,
    which opens it."""
    close_failed()
    found = trackers(trainer.loggers)
    if not found or not trainer.is_global_zero:
        return
    params = flat_config(cfg)
    # Lightning's MLflow logger drops an empty list or dict, and logs every other value as text: log them as text.
    text = {k: str(v) if isinstance(v, list | dict) else v for k, v in params.items()}
    for logger in found:
        logger.log_hyperparams(params if isinstance(logger, WandbLogger) else text)
        _open.append(logger)


def _save(logger: MLFlowLogger | WandbLogger, files: Iterable[Path], root: Path, kind: str) -> None:
    """Attach ``files`` to the logger's run at their paths relative to ``root``: MLflow artifacts, or one W&B artifact
    of type ``kind`` (staged outside ``root``: a copy named ``summary.json`` inside a sweep's folder would count as
    one more job)."""
    files = list(files)
    if not files:
        return
    if isinstance(logger, MLFlowLogger):
        for path in files:
            folder = path.parent.relative_to(root).as_posix()
            logger.experiment.log_artifact(logger.run_id, str(path), None if folder == "." else folder)
        return
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(f"{kind}-{run.id}", type=kind)
    for path in files:
        artifact.add_file(str(path), name=path.relative_to(root).as_posix(), policy=logger.add_file_policy)
    run.log_artifact(artifact)


def finish(trainer: pl.Trainer, out: Path, summary: Mapping[str, Any]) -> None:
    """At the end of a run (``summary.json`` written): log the summary's numbers (:func:`summary_numbers`; in W&B's
    run summary) and the run's files (:func:`run_files`) to each tracker's run, then close it."""
    numbers = summary_numbers(summary)
    files = run_files(out)
    for logger in trackers(trainer.loggers):
        if isinstance(logger, MLFlowLogger):
            logger.log_metrics(numbers, step=summary["steps"])
        else:
            logger.experiment.summary.update(numbers)
        _save(logger, files, out, "run-files")
        _close(logger, ok=True)
        if logger in _open:
            _open.remove(logger)


def log_sweep(config: DictConfig) -> None:
    """At the end of a sweep: the files at the top of its folder (``multirun.yaml``, ``aggregate.md``,
    ``aggregate.csv``, ``val_curves.png``, ``compare.*``) in a run of their own, named after the folder, in each
    tracker of ``config.logger``: in MLflow the parent of the jobs' runs (found by their ``smart.sweep_dir`` tag), in
    W&B in the jobs' group with ``job_type="sweep"``."""
    close_failed()
    sweep = Path(config.hydra.sweep.dir).resolve()
    files = sorted(p for p in sweep.glob("*") if p.is_file())
    for spec in (config.get("logger") or {}).values():
        if not spec:
            continue
        target = get_class(spec["_target_"])
        if issubclass(target, MLFlowLogger):
            mlflow_logger = instantiate(spec, save_dir=str(sweep), run_name=_shown(sweep),
                                        tags={"smart.sweep_dir": str(sweep)})
            _save(mlflow_logger, files, sweep, "sweep-report")
            _nest(mlflow_logger, sweep)
            _close(mlflow_logger, ok=True)
        elif issubclass(target, WandbLogger):
            wandb_logger = instantiate(spec, save_dir=str(sweep), name=_shown(sweep), group=_shown(sweep),
                                       job_type="sweep")
            _save(wandb_logger, files, sweep, "sweep-report")
            _close(wandb_logger, ok=True)


def _nest(sweep_run: MLFlowLogger, sweep: Path) -> None:
    """Make the sweep's run the parent of its jobs' runs, as MLflow nests runs: the ``mlflow.parentRunId`` tag."""
    client, parent = sweep_run.experiment, sweep_run.run_id
    query = f"tags.`smart.sweep_dir` = '{sweep}'"
    token = None
    while True:
        page = client.search_runs([sweep_run.experiment_id], query, max_results=1000, page_token=token)
        for job in page:
            if job.info.run_id != parent:
                client.set_tag(job.info.run_id, "mlflow.parentRunId", parent)
        token = page.token
        if not token:
            return
