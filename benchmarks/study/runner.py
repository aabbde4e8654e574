"""One run of the study, and a plan of them over worker processes.

A run's config is composed from the package's ``conf/`` by Hydra's compose API, as ``smart-train`` composes it
(``model=``, a ``data=`` preset, the setting's ``smart=``/``teacher=`` presets and overrides, the bench's sizes). The
app checks it and builds the task (:func:`lightning_smart.app.cli.check`, :func:`~lightning_smart.app.cli.make_task`);
a ``Trainer`` from ``conf/trainer`` trains it. The final weights are then scored on every split: accuracy and
balanced accuracy (mean per-class recall: the out-of-domain sets' label priors differ from the movie snippets'), or
Pearson and Spearman for regression, and robust accuracy under the embedding-space PGD attack
(:mod:`lightning_smart.attack`, ℓ∞, relative to each token's RMS). Each run is one line of ``<out>/runs.jsonl``.

:func:`execute` runs a plan in ``jobs`` worker processes (one torch thread each, unless told otherwise); the parent
alone appends each finished run to ``runs.jsonl``, so a plan that stops resumes where it stopped: a run whose key
is stored is not run again.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import multiprocessing
import shlex
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from transformers import PreTrainedModel
from transformers.utils import logging as transformers_logging

from lightning_smart import EMATeacherCallback
from lightning_smart.app.cli import check, make_task
from lightning_smart.app.schema import register_configs
from lightning_smart.attack import robust_accuracy, robust_accuracy_by_radius
from lightning_smart.tasks import SequenceTask
from study.settings import TASKS, Bench, Run
from study.tables import headline

if TYPE_CHECKING:
    from lightning_smart.app.checks import Checked

RUNS = "runs.jsonl"


def quiet(threads: int | None = None) -> None:
    """Set up a process to run the study: ``threads`` torch threads (``None``: torch's choice), the app's configs
    registered, and Lightning's, transformers' and Python's chatter silenced (a run prints one line)."""
    register_configs()
    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()


def compose_run(run: Run, bench: Bench) -> DictConfig:
    """The run's config, composed from the package's ``conf/`` as ``smart-train`` composes it."""
    overrides = [
        f"model={bench.model}", TASKS[run.task], *shlex.split(run.overrides), f"seed={run.seed}",
        f"model.lr={run.lr}", f"trainer.max_steps={run.steps}", f"trainer.val_check_interval={bench.val_every}",
        f"data.train_size={bench.train_size}", f"data.batch_size={bench.batch_size}",
        f"data.val_size={bench.val_size}", f"data.test_size={bench.test_size}",
    ]
    if run.task == "movies":
        overrides.append(f"data.ood_size={bench.ood_size}")
    with initialize_config_module("lightning_smart.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if cfg.teacher is not None:
        cfg.teacher.validate = False  # the study evaluates the student; the teacher's curve would double the cost
    return cfg


def build_task(cfg: DictConfig, seed: int, weights: Path | None = None) -> tuple[SequenceTask, Checked]:
    """The app's task for ``cfg`` and what :func:`~lightning_smart.app.cli.check` made of ``cfg`` (the data, the
    hyperparameters); ``seed`` draws the new head, and then dropout and the batch order, so runs pair by seed.

    ``weights``, a ``save_pretrained`` folder of a run's final weights, replaces ``cfg``'s model (in ``cfg``).
    """
    if weights is not None:
        cfg.data.tokenizer = cfg.model.name_or_path  # the folder holds the weights, not the tokenizer
        cfg.model.name_or_path = str(weights)
    checked = check(cfg)
    pl.seed_everything(seed, verbose=False)
    task = make_task(cfg, checked, checked.smart)
    if not isinstance(task, SequenceTask):
        raise SystemExit(f"the study scores sequence tasks; {type(checked.data).__name__} makes {type(task).__name__}")
    return task, checked


class Curve(pl.Callback):
    """The validation metric at each validation: (optimizer step, value)."""

    def __init__(self, metric: str) -> None:
        self.metric, self.points = metric, []  # type: ignore[var-annotated]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.points.append((trainer.global_step, float(trainer.callback_metrics[self.metric])))


@torch.no_grad()
def evaluate(task: SequenceTask, loader: Any) -> dict[str, float]:
    """Accuracy and balanced accuracy (classification) or Pearson and Spearman (regression) of final weights."""
    task.eval()
    outputs, labels = [], []
    for batch in loader:
        outputs.append(task.smart_forward(batch).float())
        labels.append(batch["labels"])
    out, y = torch.cat(outputs), torch.cat(labels)
    if task.num_labels == 1:
        return {"pearson": float(pearson_corrcoef(out.reshape(-1), y.float())),
                "spearman": float(spearman_corrcoef(out.reshape(-1), y.float()))}
    preds = out.argmax(-1)
    recalls = [float((preds[y == c] == c).float().mean()) for c in y.unique()]
    majority = float(torch.bincount(y).max()) / len(y)
    return {"acc": float((preds == y).float().mean()), "bal": sum(recalls) / len(recalls), "majority": majority}


def train_one(run: Run, bench: Bench, weights: Path | None = None, attack: bool = True) -> dict[str, Any]:
    """Compose, train and evaluate one run: one line of ``runs.jsonl``; its final weights saved in ``weights``
    (a ``save_pretrained`` folder), so that a later metric needs no rerun; ``attack=False`` leaves out the
    embedding-space attack (a rerun for the weights alone)."""
    cfg = compose_run(run, bench)
    task, checked = build_task(cfg, run.seed)
    smart, data = checked.smart, checked.data
    curve = Curve("val/pearson" if cfg.data.num_labels == 1 else "val/acc")
    teacher = [EMATeacherCallback.from_config(checked.teacher)] if checked.teacher else []
    trainer = instantiate(cfg.trainer, callbacks=[curve, *teacher], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    row: dict[str, Any] = asdict(run) | {"curve": curve.points, "steps_done": trainer.global_step}
    row["probe"] = {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "probe" in k}
    row["skipped"] = task.smart_skipped
    row["probes"] = [list(p) for p in task.smart_probes]  # (step, ℓs of the perturbation, ℓs of dropout)
    if smart.auto:  # each calibration: step, radius chosen, reached, dropout's ℓs, (radius, perturbation's ℓs) tried
        row["calibrations"] = [[c.step, c.epsilon, c.reached, c.dropout_kl, [list(t) for t in c.tried]]
                               for c in task.smart_calibrations]
        row["epsilon"] = task.smart_epsilon
        row["calibration_s"] = round(task.smart_calibration_s, 2)
    attack = attack and cfg.data.num_labels > 1
    row["splits"] = ["val", *data.test_names] + (["robust"] if attack else [])
    row["val"] = evaluate(task, data.val_dataloader())
    tests = data.test_dataloader()
    for name, loader in zip(data.test_names, tests, strict=True):
        row[name] = evaluate(task, loader)
    if attack:
        row |= attacked(task, tests[0], bench)
    if weights is not None:
        cast(PreTrainedModel, task.model).save_pretrained(weights)
    row |= {"train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads()}
    return row


def attacked(task: SequenceTask, loader: Any, bench: Bench) -> dict[str, Any]:
    """Robust accuracy at the bench's radius (``robust``) and, with ``attack_radii``, at each (``robust_radii``),
    on every k-th batch of ``loader``: evaluation batches are sorted by length, so these span the lengths."""
    stride = max(1, len(loader) // bench.attack_batches)
    batches = list(itertools.islice(loader, 0, None, stride))[:bench.attack_batches]
    site = task.smart_perturbation_site()
    scores = robust_accuracy(task, site, task.smart_forward, batches, epsilon=bench.attack_epsilon,
                             steps=bench.attack_steps, relative=True)
    found: dict[str, Any] = {"robust": {"acc": scores["robust_acc"], "clean": scores["clean_acc"], "n": scores["n"]}}
    if bench.attack_radii:
        grid = robust_accuracy_by_radius(task, site, task.smart_forward, batches,
                                         bench.attack_radii, steps=bench.attack_steps, relative=True)
        found["robust_radii"] = {"radii": grid["radii"], "acc": grid["robust_acc"], "clean": grid["clean_acc"],
                                 "n": grid["n"]}
    return found


def stored(out: Path, name: str = RUNS) -> list[dict[str, Any]]:
    """The rows of ``<out>/<name>`` (``runs.jsonl``: the runs), each key once (the first: a run stored twice counts
    once)."""
    path = out / name
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["key"], row)
    return list(rows.values())


def append(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the JSON-lines file ``path``, in one write."""
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def stored_run(run: Run, bench: Bench, out: Path) -> dict[str, Any]:
    """:func:`train_one`'s row as stored: with the run's key and its bench; the weights kept in
    ``<out>/weights/<key>``."""
    key = run.key(bench)
    return train_one(run, bench, out / "weights" / key) | {"key": key, "bench": asdict(bench)}


def finished(work: Callable[[Run], dict[str, Any]], todo: list[Run], jobs: int, threads: int | None
             ) -> Iterator[dict[str, Any]]:
    """``work``'s rows of ``todo`` as they finish: in this process, or in ``jobs`` worker processes (``work`` a
    module-level function, or a ``functools.partial`` of one, so that it pickles)."""
    if jobs == 1:
        yield from map(work, todo)
        return
    # Spawned, not forked: a fork of a process that has run torch's thread pools can hang in its first op.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=quiet, initargs=(threads or 1,)) as pool:
        futures = [pool.submit(work, run) for run in todo]
        try:
            yield from (future.result() for future in as_completed(futures))
        finally:  # a failed run (or an interrupt) stops the plan: the runs not started are not started
            for future in futures:
                future.cancel()


def execute(plan: list[Run], bench: Bench, out: Path, jobs: int = 1, threads: int | None = None) -> None:
    """Run every run of ``plan`` whose key ``<out>/runs.jsonl`` does not hold, appending each as it finishes.

    Args:
        plan: the runs, in the order to start them.
        bench: what every run depends on besides its own fields.
        out: the folder of ``runs.jsonl`` and of the runs' weights.
        jobs: worker processes; 1 runs the plan in this process.
        threads: torch threads of each worker (``None``: 1); this process's own are set by :func:`quiet`.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = {row["key"] for row in stored(out)}
    todo: dict[str, Run] = {}
    for run in plan:  # two settings with the same overrides are one run: the first named
        if run.key(bench) not in done:
            todo.setdefault(run.key(bench), run)
    print(f"{len(plan)} runs planned, {len(todo)} to do" + (f", {jobs} at a time" if jobs > 1 else ""), flush=True)
    work = functools.partial(stored_run, bench=bench, out=out)
    for number, row in enumerate(finished(work, list(todo.values()), jobs, threads), 1):
        append(out / RUNS, row)
        print(f"[{number}/{len(todo)}] {row['task']} {row['setting']} seed {row['seed']} lr {row['lr']:g}: "
              f"val {headline(row, 'val'):.4f}"
              f" ({row['train_s']:.0f} s training, {row['eval_s']:.0f} s evaluation)", flush=True)
