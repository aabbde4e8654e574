"""Where SMART pays for itself: seeds × settings × tasks, with the full 6-layer model users run (issue 10).

Every run is composed from the package's own ``conf/`` by Hydra's compose API, exactly as ``smart-train`` would
compose it (``model=minilm``, a ``data=`` preset, a ``smart=`` and a ``teacher=`` preset and overrides), and
trained by a Lightning ``Trainer`` built from ``conf/trainer``; the data module, the task and the teacher are
the library's. The regime: all-MiniLM-L6-v2 (6 layers), 500 training examples, batch 16, ≤ 64 tokens.

Tasks (``--task``): ``movies`` (binary sentiment of the movie snippets; tested in domain and out of domain on
tweets, Amazon and NYT snippets), ``trec`` (TREC-6 questions), ``rating`` (the movie snippets' mean rating as
regression). Each run records the validation curve, then evaluates its final weights on every split:
accuracy and balanced accuracy (mean per-class recall: the out-of-domain sets' label priors differ from the
movie snippets'), or Pearson and Spearman for regression, and robust accuracy under an embedding-space PGD
attack (:func:`lightning_smart.attack.robust_accuracy`, ℓ∞, radius 0.02 of each token's RMS, 5 steps).

Three commands, each resumable (runs are appended to ``<out>/runs.jsonl`` as they finish; a run already there
with the same overrides is skipped). Processes share a plan: each takes the next run that is neither done nor
claimed by a live process (a file in ``<out>/claims``), so two processes of one thread each keep both cores of a
2-core machine busy to the end, and a run whose process died is free again; ``--shard i/n`` (every n-th run)
splits a plan between machines::

    python benchmarks/quality.py lr --task movies --threads 1               # plain at 3 learning rates × 3 seeds
    python benchmarks/quality.py study --task movies --lr 5e-5 --steps 200 --threads 1   # twice, side by side
    python benchmarks/quality.py report                                     # the tables of RESULTS.md
    python benchmarks/quality.py study --quick --out /tmp/q                 # a smoke run: 2 settings, 4 steps

``lr`` trains plain fine-tuning for ``--steps`` (300) at each of 2e-5, 5e-5 and 1e-4 with 3 seeds; ``report``
then names the learning rate with the best median peak on validation and the step where that median curve
peaks: the ``--lr`` and ``--steps`` every setting of ``study`` uses (an lr-phase run at those is the study's
plain run of its seed: same overrides, so the same key; ``study`` skips it, ``report`` pairs it). ``report``
tables each learning rate and step count apart and flags a study whose plain runs still improve at their last
validation: shortening the schedule to the peak step moves the peak when the learning rate decays to zero over it
(TREC at 2e-5 peaked at 250 of 300 steps, yet still rose at step 250 of 250; its study runs 300). A failed run is
one whose final validation accuracy is within 1 point of the majority class's rate (Pearson < 0.1 for regression).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import shlex
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from transformers.utils import logging as transformers_logging

from lightning_smart import EMATeacherCallback, SmartConfig, TeacherConfig
from lightning_smart.app import stats
from lightning_smart.app.schema import register_configs
from lightning_smart.app.stats import bootstrap, quartiles
from lightning_smart.attack import robust_accuracy, robust_accuracy_by_radius
from lightning_smart.config import RADIUS_GRID
from lightning_smart.tasks import SequenceTask

OUT = Path(__file__).parent / "results" / "study"
TASKS = {"movies": "data=movies_ood", "trec": "data=trec", "rating": "data=movies_rating"}
LEARNING_RATES = (2e-5, 5e-5, 1e-4)
STABILIZERS = "smart.rampup=0.25 teacher.rampup=0.25 teacher.ema_warmup=true"
SETTINGS = {
    "plain": "smart=off teacher=off",
    "rdrop": "smart=rdrop teacher=off",
    "teacher": "smart=off teacher=paper",
    "paper": "smart=paper teacher=paper",
    "paper_stab": f"smart=paper teacher=paper {STABILIZERS}",
    "relative_stab": f"smart=relative_shared teacher=half_life {STABILIZERS}",
}
"""Each setting's overrides on top of ``conf/config.yaml``; ``--setting NAME:OVERRIDES`` adds one (e.g. lazy)."""
LAZY_OF = ("rdrop", "teacher", "paper", "paper_stab")
"""Issue 10's "lazy k = 4 of the best of those": the best of these on validation (median over seeds; ties: first)."""

# -- issue 19: the adversarial term on its own, at radii where it acts --------------------------------------
REGIMES = {"movies": (5e-5, 200), "trec": (2e-5, 400)}
"""Issue 19's lr and optimizer steps per task: the study's, where plain fine-tuning's validation curve peaks."""
PROBE_GRID = RADIUS_GRID
"""Relative radii (× each token's RMS) the probe measures; ε_act and ε_strong are read off them (the grid
``smart.epsilon=auto`` chooses from)."""
ACT_RATIO, STRONG_RATIO = 1.0, 10.0
"""ε_act: the smallest grid radius whose perturbation moves the output at least as much as dropout does (ratio of
the two ℓs ≥ 1); ε_strong: the smallest with ratio ≥ 10 (fixed before the probe ran)."""
ATTACK_RADII = tuple(sorted({0.02, *PROBE_GRID, *(round(3 * e, 6) for e in PROBE_GRID)}))
"""Every run of issue 19 is attacked at each of these (× token RMS): 0.02 (the earlier study's radius), every grid
radius and three times each, so ε_act, ε_strong and 3·ε_strong are in it whatever the probe finds."""
ADVERSARIAL = {
    "plain": SETTINGS["plain"],
    "teacher": SETTINGS["teacher"],
    "act": "smart=relative_shared teacher=off smart.epsilon={act}",
    "strong": "smart=relative_shared teacher=off smart.epsilon={strong}",
    "mtdnn": "smart=mtdnn teacher=off",
    "mtdnn_teacher": "smart=mtdnn teacher=paper",
    "auto": "smart=relative_shared teacher=off smart.epsilon=auto",
}
"""Issue 19's settings; ``{act}``/``{strong}`` are the task's ε_act/ε_strong from its stored probe; ``auto`` calibrates
ε_strong's rule (ratio ≥ 10) on training batches after each validation."""


@dataclass(frozen=True)
class Bench:
    """Everything but the setting, the seed, the learning rate and the steps that a run depends on."""

    model: str = "minilm"
    train_size: int = 500
    batch_size: int = 16
    val_every: int = 50
    val_size: int = 500
    test_size: int = 1000
    ood_size: int = 500
    attack_batches: int = 4
    attack_epsilon: float = 0.02
    attack_steps: int = 5
    attack_radii: tuple[float, ...] = ()
    """Radii of the multi-radius attack (issue 19); empty: the single radius ``attack_epsilon`` alone."""


QUICK = Bench(model="minilm_l2", train_size=32, batch_size=8, val_every=2, val_size=32, test_size=32, ood_size=32,
              attack_batches=1, attack_steps=2)
ADVERSARIAL_BENCH = Bench(attack_radii=ATTACK_RADII)
QUICK_ADVERSARIAL = replace(QUICK, attack_radii=(0.01, 0.1, 1.0))


@dataclass(frozen=True)
class Run:
    """One run: a task, a setting (its overrides), a seed, a learning rate and a number of optimizer steps."""

    task: str
    setting: str
    overrides: str
    seed: int
    lr: float
    steps: int

    def key(self, bench: Bench) -> str:
        fields = asdict(bench)
        if not fields["attack_radii"]:  # the benches before issue 19 had no such field: their keys stay
            del fields["attack_radii"]
        payload = json.dumps([self.task, self.overrides, self.seed, self.lr, self.steps, fields])
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


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


def train_one(run: Run, bench: Bench, weights: Path | None = None) -> dict[str, Any]:
    """Compose, train and evaluate one run: one line of ``runs.jsonl``; its final weights saved in ``weights``
    (a ``save_pretrained`` folder), so that a later metric needs no rerun."""
    cfg = compose_run(run, bench)
    smart = SmartConfig(**OmegaConf.to_container(cfg.smart))  # type: ignore[arg-type]
    teacher = None if cfg.teacher is None else TeacherConfig(**OmegaConf.to_container(cfg.teacher))  # type: ignore[arg-type]
    data = instantiate(cfg.data, _convert_="all")
    pl.seed_everything(run.seed, verbose=False)  # the new head, dropout, the order: paired across settings
    task = SequenceTask(cfg.model.name_or_path, num_labels=cfg.data.num_labels, smart=smart, lr=cfg.model.lr,
                        weight_decay=cfg.model.weight_decay, warmup_ratio=cfg.model.warmup_ratio,
                        model_overrides=OmegaConf.to_container(cfg.model.config),  # type: ignore[arg-type]
                        test_names=data.test_names)
    metric = "val/pearson" if cfg.data.num_labels == 1 else "val/acc"
    curve = Curve(metric)
    callbacks: list[pl.Callback] = [curve] + ([EMATeacherCallback.from_config(teacher)] if teacher else [])
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False,
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
    row["splits"] = ["val", *data.test_names] + (["robust"] if cfg.data.num_labels > 1 else [])
    row["val"] = evaluate(task, data.val_dataloader())
    tests = data.test_dataloader()
    for name, loader in zip(data.test_names, tests, strict=True):
        row[name] = evaluate(task, loader)
    if cfg.data.num_labels > 1:  # every k-th evaluation batch: they are sorted by length, so this spans lengths
        stride = max(1, len(tests[0]) // bench.attack_batches)
        batches = list(itertools.islice(tests[0], 0, None, stride))[:bench.attack_batches]
        scores = robust_accuracy(task, task.smart_perturbation_site(), task.smart_forward, batches,
                                 epsilon=bench.attack_epsilon, steps=bench.attack_steps, relative=True)
        row["robust"] = {"acc": scores["robust_acc"], "clean": scores["clean_acc"], "n": scores["n"]}
        if bench.attack_radii:
            grid = robust_accuracy_by_radius(task, task.smart_perturbation_site(), task.smart_forward, batches,
                                             bench.attack_radii, steps=bench.attack_steps, relative=True)
            row["robust_radii"] = {"radii": grid["radii"], "acc": grid["robust_acc"], "clean": grid["clean_acc"],
                                   "n": grid["n"]}
    if weights is not None:
        task.model.save_pretrained(weights)
    row |= {"train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads()}
    return row


# -- the plan, the shards, the resumable file -----------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,3`` → a list of seeds."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def stored(out: Path) -> list[dict[str, Any]]:
    """The runs of ``<out>/runs.jsonl``, each key once (the first: a run two processes both finished counts once)."""
    path = out / "runs.jsonl"
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["key"], row)
    return list(rows.values())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def claim(out: Path, key: str) -> bool:
    """Take run ``key`` for this process; False while another live process holds it. A dead holder's claim is void."""
    path = out / "claims" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        holder = path.read_text()
        if not holder or alive(int(holder)):  # empty: its holder is writing its pid this instant
            return False
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def execute(plan: list[Run], bench: Bench, out: Path, shard: tuple[int, int]) -> None:
    """Run this shard's part of ``plan`` that no process has done or is doing, appending each run as it ends."""
    out.mkdir(parents=True, exist_ok=True)
    mine = [run for i, run in enumerate(plan) if i % shard[1] == shard[0]]
    done = {r["key"] for r in stored(out)}
    todo = [run for run in mine if run.key(bench) not in done]
    print(f"{len(plan)} runs planned, {len(mine)} in shard {shard[0]}/{shard[1]}, {len(todo)} to do", flush=True)
    for number, run in enumerate(todo, 1):
        key = run.key(bench)
        if not claim(out, key):
            continue
        try:
            if key in {r["key"] for r in stored(out)}:  # done by another process since this one started
                continue
            row = train_one(run, bench, out / "weights" / key) | {"key": key, "bench": asdict(bench)}
            with (out / "runs.jsonl").open("a") as handle:  # one write of one line: processes append side by side
                handle.write(json.dumps(row) + "\n")
        finally:
            (out / "claims" / key).unlink(missing_ok=True)
        print(f"[{number}/{len(todo)}] {run.task} {run.setting} seed {run.seed} lr {run.lr:g}: "
              f"val {headline(row, 'val'):.4f}"
              f" ({row['train_s']:.0f} s training, {row['eval_s']:.0f} s evaluation)", flush=True)


# -- issue 19: the probe at trained weights, and the settings it fixes -----------------------------------


def probe_settings() -> dict[str, str]:
    """The perturbations the probe measures: the paper's ε, each relative grid radius (as ``act``/``strong`` would
    train with it: ``smart=relative_shared``) and the authors' public rule."""
    relative = {f"relative {e:g}": f"smart=relative_shared teacher=off smart.epsilon={e:g}" for e in PROBE_GRID}
    return {"paper ε": "smart=paper teacher=off", **relative, "mtdnn": "smart=mtdnn teacher=off"}


def probe(task_name: str, weights: Path, bench: Bench, batches: int = 4, batch_size: int = 32) -> list[dict[str, Any]]:
    """At the weights in ``weights``, per setting: ℓs of the perturbation and of dropout, and their ratio.

    Both ℓs come from :meth:`~lightning_smart.SmartLightningModule.smart_probe` (one ascent step, the perturbed
    forward on the clean forward's dropout masks; dropout's ℓs between two clean forwards), in train mode, averaged
    over the first ``batches`` training batches of ``batch_size`` (the same batches and dropout masks for every
    setting); the ratio is that of the two means.
    """
    lr, steps = REGIMES[task_name]
    rows = []
    task: SequenceTask | None = None
    for name, overrides in probe_settings().items():
        cfg = compose_run(Run(task_name, name, overrides, 0, lr, steps), replace(bench, batch_size=batch_size))
        smart = SmartConfig(**OmegaConf.to_container(cfg.smart))  # type: ignore[arg-type]
        if task is None:
            pl.seed_everything(0, verbose=False)
            data = instantiate(cfg.data, _convert_="all")
            data.setup("fit")
            loader = list(itertools.islice(data.train_dataloader(), batches))
            task = SequenceTask(str(weights), num_labels=cfg.data.num_labels, smart=smart,
                                model_overrides=OmegaConf.to_container(cfg.model.config))  # type: ignore[arg-type]
        task.smart = smart
        task.train()
        measured = []
        for index, batch in enumerate(loader):
            with torch.random.fork_rng():
                torch.manual_seed(index)  # the same dropout masks for every setting
                measured.append(task.smart_probe(batch, index))
        perturbation = statistics.fmean(m["perturbation_kl"] for m in measured)
        dropout = statistics.fmean(m["dropout_kl"] for m in measured)
        rows.append({"name": name, "overrides": overrides, "epsilon": smart.epsilon, "relative": name.startswith("rel"),
                     "perturbation_kl": perturbation, "dropout_kl": dropout, "ratio": perturbation / dropout})
    return rows


def grid_ratios(task_name: str, seed: int, bench: Bench, weights: Path | None = None,
                batches: int = 4) -> dict[str, Any]:
    """The probe's ratio at every grid radius on each of the first ``batches`` training batches of a run of the
    ``auto`` setting: at its step 0 (the head ``seed`` draws, as that run starts) or at the weights in ``weights``;
    the radius auto would choose on each (smallest with ratio ≥ ``STRONG_RATIO``, ``None`` where none reaches it),
    and whether the ratio grows with the radius on every batch."""
    lr, steps = REGIMES[task_name]
    cfg = compose_run(Run(task_name, "auto", ADVERSARIAL["auto"], seed, lr, steps), bench)
    smart = SmartConfig(**OmegaConf.to_container(cfg.smart))  # type: ignore[arg-type]
    data = instantiate(cfg.data, _convert_="all")
    pl.seed_everything(seed, verbose=False)
    task = SequenceTask(str(weights) if weights else cfg.model.name_or_path, num_labels=cfg.data.num_labels,
                        smart=smart, model_overrides=OmegaConf.to_container(cfg.model.config))  # type: ignore[arg-type]
    data.setup("fit")
    task.train()
    per_batch = []
    for index, batch in enumerate(itertools.islice(data.train_dataloader(), batches)):
        ratios = []
        for radius in RADIUS_GRID:
            task.smart = replace(smart, epsilon=radius)
            with torch.random.fork_rng():
                torch.manual_seed(index)  # the same dropout masks at every radius
                found = task.smart_probe(batch, index)
            ratios.append(found["perturbation_kl"] / found["dropout_kl"])
        per_batch.append(ratios)
    return {"kind": "grid_ratios", "task": task_name, "seed": seed, "weights": str(weights) if weights else None,
            "radii": list(RADIUS_GRID), "ratios": per_batch,
            "chosen": [next((r for r, x in zip(RADIUS_GRID, b, strict=True) if x >= STRONG_RATIO), None)
                       for b in per_batch],
            "monotone": all(a < b for row in per_batch for a, b in itertools.pairwise(row))}


def acting_radii(probe_row: dict[str, Any]) -> tuple[float | None, float | None]:
    """(ε_act, ε_strong) of a stored probe: the smallest relative grid radius with ratio ≥ 1, resp. ≥ 10."""
    relative = sorted((s["epsilon"], s["ratio"]) for s in probe_row["settings"] if s["relative"])
    act = next((e for e, ratio in relative if ratio >= ACT_RATIO), None)
    strong = next((e for e, ratio in relative if ratio >= STRONG_RATIO), None)
    return act, strong


def stored_probe(rows: list[dict[str, Any]], task_name: str) -> dict[str, Any] | None:
    return next((r for r in reversed(rows) if r.get("kind") == "probe" and r["task"] == task_name), None)


def adversarial_settings(rows: list[dict[str, Any]], task_name: str, names: list[str],
                         extra: dict[str, str] | None = None) -> dict[str, str]:
    """Issue 19's settings named in ``names`` (of :data:`ADVERSARIAL` and ``extra``), with ``{act}`` and
    ``{strong}`` the task's ε_act and ε_strong from its stored probe."""
    known = ADVERSARIAL | (extra or {})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; known: {', '.join(known)}")
    radii: dict[str, float | None] = {}
    if any("{" in known[n] for n in names):
        found = stored_probe(rows, task_name)
        if found is None:
            raise SystemExit(f"act and strong need the probe's radii: run `quality.py probe --task {task_name}` first")
        radii["act"], radii["strong"] = acting_radii(found)
    settings = {}
    for name in names:
        missing = [k for k, v in radii.items() if v is None and f"{{{k}}}" in known[name]]
        if missing:
            raise SystemExit(f"{name}: no radius of the grid {PROBE_GRID} reaches the ratio of ε_{missing[0]}"
                             f" on {task_name} (quality.py report shows the probe)")
        settings[name] = known[name].format(**{k: f"{v:g}" for k, v in radii.items() if v is not None})
    return settings


# -- the report -----------------------------------------------------------------------------------------


def headline(row: dict[str, Any], split: str) -> float | None:
    """The score of a split in a run: balanced accuracy for the out-of-domain sets, else accuracy (or Pearson)."""
    if split == "robust":
        return row.get("robust", {}).get("acc")
    values = row.get(split)
    if values is None:
        return None
    if "pearson" in values:
        return float(values["pearson"])
    return float(values["bal"] if split in ("tweets", "amazon", "nyt") else values["acc"])


def failed(row: dict[str, Any]) -> bool:
    """:func:`lightning_smart.app.stats.failed` on a run's final validation scores."""
    val = row["val"]
    if "pearson" in val:
        return stats.failed(val["pearson"], regression=True)
    return stats.failed(val["acc"], majority=val["majority"])


def median_curve(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The median over runs of the validation curve, at the steps every run validated at."""
    return stats.median_curve([[tuple(point) for point in r["curve"]] for r in rows])


def lr_choice(rows: list[dict[str, Any]]) -> tuple[float, int, dict[float, list[tuple[int, float]]]]:
    """The learning rate with the best median peak on validation, and the step where its median curve peaks."""
    curves = {lr: median_curve([r for r in rows if r["lr"] == lr]) for lr in sorted({r["lr"] for r in rows})}
    best = max(curves, key=lambda lr: max(v for _, v in curves[lr]))
    step = max(curves[best], key=lambda point: point[1])[0]
    return best, step, curves


def study_tables(task: str, study: list[dict[str, Any]], lazy_of: tuple[str, ...] = LAZY_OF,
                 title: str = "") -> list[str]:
    """One task's study at one learning rate and step count: medians, failures, cost, paired differences."""
    lines: list[str] = []
    splits = study[0]["splits"]
    lines += [f"### {task}: {study[0]['steps']} steps at lr {study[0]['lr']:g}{title}", "",
              "| setting | n | failed | " + " | ".join(splits) + " | s per run |",
              "|---" * (len(splits) + 4) + "|"]
    settings = sorted(dict.fromkeys(r["setting"] for r in study), key=lambda name: name != "plain")  # plain first
    for setting in settings:
        mine = [r for r in study if r["setting"] == setting]
        cells = []
        for split in splits:
            m, q1, q3 = quartiles([100 * headline(r, split) for r in mine])  # type: ignore[operator]
            cells.append(f"{m:.1f} ({q1:.1f}–{q3:.1f})")
        seconds = statistics.median(r["train_s"] + r["eval_s"] for r in mine)
        lines.append(f"| {setting} | {len(mine)} | {sum(map(failed, mine))} | " + " | ".join(cells)
                     + f" | {seconds:.0f} |")
    medians: dict[str, float] = {
        name: statistics.median(headline(r, "val") for r in study if r["setting"] == name)  # type: ignore[misc,type-var]
        for name in lazy_of if name in settings}
    if medians:
        lines += ["", f"Lazy k = 4 is run on the best median validation score of {', '.join(medians)}: "
                  f"{max(medians, key=medians.__getitem__)}."]
    curve = median_curve([r for r in study if r["setting"] == "plain"])
    if stats.not_peaked(curve):
        (before, low), (last, high) = curve[-2:]
        lines += ["", f"**Plain has not peaked**: its median validation curve still rises at its last step "
                  f"({100 * low:.1f} at step {before}, {100 * high:.1f} at {last}); these steps "
                  "favour whatever speeds training up."]
    plain = {r["seed"]: r for r in study if r["setting"] == "plain"}
    lines += ["", "Paired difference from plain (points; mean over seeds, bootstrap 95% interval):", "",
              "| setting | seeds | " + " | ".join(splits) + " |", "|---" * (len(splits) + 2) + "|"]
    for setting in settings:
        if setting == "plain":
            continue
        mine = [r for r in study if r["setting"] == setting and r["seed"] in plain]
        if not mine:
            continue
        cells = []
        for split in splits:
            diffs = [100 * (headline(r, split) - headline(plain[r["seed"]], split)) for r in mine]  # type: ignore[operator]
            mean, low, high = bootstrap(diffs)
            cells.append(f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]")
        lines.append(f"| {setting} | {len(mine)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def adversarial_report(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 19: the probe's table and the radii it fixes, then each task's study with the multi-radius attack."""
    lines: list[str] = []
    probes = {task: stored_probe(rows, task) for task in TASKS}
    probes = {task: row for task, row in probes.items() if row is not None}
    if probes:
        lines += ["### The probe at plain's final weights (seed 0): ℓs of the perturbation / ℓs of dropout", "",
                  "| perturbation | " + " | ".join(probes) + " |", "|---" * (len(probes) + 1) + "|"]
        names = list(dict.fromkeys(s["name"] for row in probes.values() for s in row["settings"]))
        for name in names:
            cells = [next((f"{s['ratio']:.3g}×" for s in row["settings"] if s["name"] == name), "–")
                     for row in probes.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for task, row in probes.items():
            act, strong = acting_radii(row)
            lines.append(f"{task} ({row['steps']} steps at lr {row['lr']:g}): ε_act = {act}, ε_strong = {strong}"
                         f" (× token RMS; ratio ≥ {ACT_RATIO:g} and ≥ {STRONG_RATIO:g}).")
        lines.append("")
    for task in TASKS:
        study = [r for r in rows if r.get("kind") != "probe" and r["task"] == task
                 and r.get("bench", {}).get("attack_radii")]
        if study:
            lines += study_tables(task, study, lazy_of=(), title=" (issue 19: the multi-radius attack)")
            lines += radius_tables(task, study, probes.get(task))
            lines += auto_tables(task, study, probes.get(task))
            lines += reproduced(rows, study)
    return lines


MIN_SEEDS = 3
"""Fewer paired seeds than this make no claim, whatever their interval (one seed's interval is a point)."""
TRAINING_RADIUS = {"mtdnn": 1.0, "mtdnn_teacher": 1.0}
"""The authors' rule has no radius: its δ is ≈ 1 per coordinate, about the token RMS, so it is judged at 1×."""


def training_radius(setting: str, probe_row: dict[str, Any] | None) -> float | None:
    if setting in TRAINING_RADIUS:
        return TRAINING_RADIUS[setting]
    if probe_row is None or setting.removeprefix("lazy4_") not in ("act", "strong", "auto"):
        return None
    act, strong = acting_radii(probe_row)  # auto is judged at the radius it replaces, ε_strong
    return act if setting.removeprefix("lazy4_") == "act" else strong


def _paired(mine: list[dict[str, Any]], plain: dict[int, dict[str, Any]], score: Any) -> tuple[float, float, float]:
    """Mean paired difference from plain of ``score(row)`` (points) and its bootstrap 95% interval."""
    return bootstrap([100 * (score(r) - score(plain[r["seed"]])) for r in mine])


def _at(radii: list[float], radius: float) -> Any:
    """A run's robust accuracy at ``radius``."""
    index = next(i for i, x in enumerate(radii) if math.isclose(x, radius))
    return lambda row: row["robust_radii"]["acc"][index]


def radius_tables(task: str, study: list[dict[str, Any]], probe_row: dict[str, Any] | None) -> list[str]:
    """Clean and robust accuracy at every radius (medians), the paired differences from plain at the radii that
    matter, and what the rule lets each setting claim."""
    radii = study[0]["robust_radii"]["radii"]
    settings = sorted(dict.fromkeys(r["setting"] for r in study), key=lambda name: name != "plain")
    lines = [f"Clean and robust accuracy (%) under the PGD attack at each radius (× token RMS; ℓ∞, "
             f"{study[0]['bench']['attack_steps']} steps, {int(study[0]['robust_radii']['n'])} test examples; an "
             "example is robust at r if right under every attack of radius ≤ r), median over seeds:", "",
             "| setting | clean | " + " | ".join(f"{r:g}" for r in radii) + " |", "|---" * (len(radii) + 2) + "|"]
    for setting in settings:
        mine = [r["robust_radii"] for r in study if r["setting"] == setting]
        cells = [statistics.median(100 * g["acc"][i] for g in mine) for i in range(len(radii))]
        lines.append(f"| {setting} | {statistics.median(100 * g['clean'] for g in mine):.1f} | "
                     + " | ".join(f"{c:.1f}" for c in cells) + " |")
    act, strong = acting_radii(probe_row) if probe_row else (None, None)
    marked = [r for r in dict.fromkeys([0.02, act, strong, 3 * strong if strong else None, 1.0]) if r is not None]
    marked = [r for r in marked if any(math.isclose(r, x) for x in radii)]
    plain = {r["seed"]: r for r in study if r["setting"] == "plain"}
    lines += ["", "Paired difference from plain (points; mean over seeds, bootstrap 95% interval), clean and at "
              f"the radii that matter (0.02, ε_act = {act}, ε_strong = {strong}, 3·ε_strong, 1):", "",
              "| setting | seeds | clean | " + " | ".join(f"r = {r:g}" for r in marked) + " |",
              "|---" * (len(marked) + 3) + "|"]
    verdicts = []
    ood = [split for split in study[0]["splits"] if split in ("tweets", "amazon", "nyt")]
    for setting in settings:
        mine = [r for r in study if r["setting"] == setting and r["seed"] in plain]
        if setting == "plain" or not mine:
            continue
        paired = functools.partial(_paired, mine, plain)
        cells = [paired(lambda row: row["robust_radii"]["clean"])] + [paired(_at(radii, r)) for r in marked]
        lines.append(f"| {setting} | {len(mine)} | " + " | ".join(f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                                                                  for m, lo, hi in cells) + " |")
        radius = training_radius(setting, probe_row)
        val = paired(lambda row: headline(row, "val"))
        losses = [split for split in ood if paired(lambda row, s=split: headline(row, s))[2] < 0]
        said = [f"validation {val[0]:+.1f} [{val[1]:+.1f}, {val[2]:+.1f}]"]
        if radius is not None and any(math.isclose(radius, x) for x in radii):
            robust = paired(_at(radii, radius))
            said.append(f"robust at its training radius {radius:g}: {robust[0]:+.1f} [{robust[1]:+.1f}, "
                        f"{robust[2]:+.1f}]")
            gain = robust[1] > 0 and not losses and len(mine) >= MIN_SEEDS
            said.append("**earns a robustness claim**" if gain else "no robustness claim"
                        + (f" (out of domain its interval excludes a loss on {', '.join(losses)})" if losses else ""))
        if len(mine) < MIN_SEEDS:
            said.append(f"{len(mine)} of the planned seeds: too few to claim anything yet")
        elif val[1] > 0:
            test = paired(lambda row: headline(row, study[0]["splits"][1]))
            said.append(f"beats plain on validation; on test {test[0]:+.1f} [{test[1]:+.1f}, {test[2]:+.1f}]: "
                        + ("confirmed" if test[1] > 0 else "not confirmed"))
        verdicts.append(f"- {setting}: " + "; ".join(said) + ".")
    lines += ["", "By the rule (a robustness claim needs its interval to exclude 0 at the training radius and no "
              "out-of-domain loss whose interval excludes 0; a gain is chosen on validation and confirmed on test):",
              "", *verdicts, ""]
    curves = [(r["setting"], r["probes"]) for r in study if r.get("probes")]
    if curves:
        lines += ["The in-training probe (ℓs of the perturbation / ℓs of dropout, median over seeds, at the step "
                  "after each validation):", "", "| setting | " + " | ".join(
                      str(step) for step, *_ in curves[0][1]) + " |", "|---" * (len(curves[0][1]) + 1) + "|"]
        for setting in dict.fromkeys(name for name, _ in curves):
            mine = [probes for name, probes in curves if name == setting]
            cells = [statistics.median(p[i][1] / p[i][2] for p in mine) for i in range(len(mine[0]))]
            lines.append(f"| {setting} | " + " | ".join(f"{c:.3g}" for c in cells) + " |")
        lines.append("")
    return lines


HAND_FIXED = "strong"
"""The setting ``auto`` is judged against: R_s alone at the task's ε_strong, fixed by hand from the stored probe."""


def auto_tables(task: str, study: list[dict[str, Any]], probe_row: dict[str, Any] | None) -> list[str]:
    """``smart.epsilon=auto`` against the hand-fixed radius: the radius each seed's run calibrated after each
    validation and ended at, the calibration's share of training time, the paired differences from plain and from
    ``strong``, and the verdict of the rule: auto matches strong where its robust gain's interval (at ε_strong)
    overlaps strong's and its clean and out-of-domain differences from strong are no worse (no interval below 0)."""
    auto = sorted((r for r in study if r["setting"] == "auto"), key=lambda r: r["seed"])
    if not auto:
        return []
    strong_radius = acting_radii(probe_row)[1] if probe_row else None
    lines = [f"`smart.epsilon=auto` ({task}): the radius after each validation (step: radius, ratio there; * where "
             f"no radius reached {STRONG_RATIO:g}), the radius it ended at against the hand-fixed ε_strong = "
             f"{strong_radius}, and the calibration's share of training time:", "",
             "| seed | calibrations | ends at | calibration s | share of training |", "|---|---|---|---|---|"]
    for row in auto:
        steps = ", ".join(f"{step}: {eps:g} ({dict(map(tuple, tried))[eps] / dropout:.3g}{'' if ok else '*'})"
                          for step, eps, ok, dropout, tried in row["calibrations"])
        lines.append(f"| {row['seed']} | {steps} | {row['epsilon']:g} | {row['calibration_s']:.1f} | "
                     f"{100 * row['calibration_s'] / row['train_s']:.2f}% |")
    ends = [r["epsilon"] for r in auto]
    lines += ["", f"Ends at ε_strong in {sum(math.isclose(e, strong_radius) for e in ends) if strong_radius else 0} "
              f"of {len(auto)} seeds; calibration {100 * max(r['calibration_s'] / r['train_s'] for r in auto):.2f}% "
              "of training time at most.", ""]
    plain = {r["seed"]: r for r in study if r["setting"] == "plain"}
    seeds = {r["seed"] for r in auto}  # strong on auto's seeds: every row of the table on the same seeds
    strong = {r["seed"]: r for r in study if r["setting"] == HAND_FIXED and r["seed"] in seeds}
    radii = study[0]["robust_radii"]["radii"]
    at_strong = [r for r in (strong_radius,) if r is not None and any(math.isclose(r, x) for x in radii)]
    splits = list(study[0]["splits"][:-1])  # val, the test split, the out-of-domain ones; robust is below
    scores: dict[str, Any] = {split: (lambda row, s=split: headline(row, s)) for split in splits}
    scores["clean (attacked examples)"] = lambda row: row["robust_radii"]["clean"]
    for radius in at_strong:
        scores[f"robust at {radius:g}"] = _at(radii, radius)
    lines += ["Paired differences (points; mean over seeds, bootstrap 95% interval):", "",
              "| comparison | seeds | " + " | ".join(scores) + " |", "|---" * (len(scores) + 2) + "|"]
    cells: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, mine, base in (("auto − plain", auto, plain), (f"{HAND_FIXED} − plain", list(strong.values()), plain),
                             (f"auto − {HAND_FIXED}", auto, strong)):
        paired = [r for r in mine if r["seed"] in base]
        if not paired:
            continue
        cells[name] = {key: _paired(paired, base, score) for key, score in scores.items()}
        lines.append(f"| {name} | {len(paired)} | " + " | ".join(
            f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]" for m, lo, hi in cells[name].values()) + " |")
    lines.append("")
    versus = cells.get(f"auto − {HAND_FIXED}")
    if versus is None or not at_strong or len(auto) < MIN_SEEDS:
        return [*lines, f"Verdict: not yet ({len(auto)} auto runs paired with {HAND_FIXED}).", ""]
    robust = f"robust at {at_strong[0]:g}"
    gain, hand = cells["auto − plain"][robust], cells[f"{HAND_FIXED} − plain"][robust]
    overlaps = gain[1] <= hand[2] and hand[1] <= gain[2]
    costs = [split for split in splits[1:] if versus[split][2] < 0]  # test and out of domain: worse than strong
    verdict = "matches" if overlaps and not costs else "does not match"
    said = [f"robust gain at {at_strong[0]:g} {gain[0]:+.1f} [{gain[1]:+.1f}, {gain[2]:+.1f}] against "
            f"{HAND_FIXED}'s {hand[0]:+.1f} [{hand[1]:+.1f}, {hand[2]:+.1f}] ({'overlap' if overlaps else 'disjoint'})"]
    said.append("no test or out-of-domain split worse than strong's" if not costs else
                f"worse than strong (interval below 0) on {', '.join(costs)}")
    return [*lines, f"Verdict: auto {verdict} {HAND_FIXED} on {task}: " + "; ".join(said) + ".", ""]


def reproduced(rows: list[dict[str, Any]], study: list[dict[str, Any]]) -> list[str]:
    """Whether the reruns of runs stored before the multi-radius attack reproduce their metrics exactly."""
    before = {(r["task"], r["overrides"], r["seed"], r["lr"], r["steps"]): r for r in rows
              if r.get("kind") != "probe" and not r.get("bench", {}).get("attack_radii")}
    pairs = [(r, before[k]) for r in study if (k := (r["task"], r["overrides"], r["seed"], r["lr"], r["steps"]))
             in before]
    if not pairs:
        return []
    same = [a for a, b in pairs if all(a[split] == b[split] for split in b["splits"])]
    differ = [f"{a['setting']} seed {a['seed']}" for a, b in pairs if a not in same]
    return [f"Reruns of stored runs: {len(same)} of {len(pairs)} reproduce every stored metric exactly"
            + (f"; differ: {', '.join(differ)}." if differ else "."), ""]


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: the learning-rate phase, then per task and setting the medians, paired gains and cost."""
    lines: list[str] = []
    runs = [r for r in rows if r.get("kind") != "probe"]
    earlier = [r for r in runs if not r.get("bench", {}).get("attack_radii")]
    for task in TASKS:
        phase = [r for r in earlier if r["task"] == task and r["setting"] == "plain@lr"]
        if phase:
            lr, step, curves = lr_choice(phase)
            lines += [f"### {task}: learning rate for plain fine-tuning ({len(phase)} runs)", "",
                      "| lr | median validation curve (step: value) | peak |", "|---|---|---|"]
            for rate, curve in curves.items():
                points = ", ".join(f"{s}: {100 * v:.1f}" for s, v in curve)
                lines.append(f"| {rate:g} | {points} | {100 * max(v for _, v in curve):.1f} |")
            lines += ["", f"chosen: lr {lr:g}, {step} steps", ""]
        study = [r for r in earlier if r["task"] == task and r["setting"] != "plain@lr"]
        for regime in dict.fromkeys((r["lr"], r["steps"]) for r in study):
            mine = [r for r in study if (r["lr"], r["steps"]) == regime]
            # A plain run of the lr phase at this lr and these steps is the study's plain run of its seed (same key).
            seeds = {r["seed"] for r in mine if r["setting"] == "plain"}
            lines += study_tables(task, [r | {"setting": "plain"} for r in phase
                                         if (r["lr"], r["steps"]) == regime and r["seed"] not in seeds] + mine)
    lines += adversarial_report(rows)
    total = sum(r.get("train_s", 0) + r["eval_s"] for r in rows)
    lines.append(f"{len(runs)} runs and {len(rows) - len(runs)} probes, {total / 3600:.2f} h of compute"
                 f" (each run on {runs[0]['threads']} thread(s)).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("lr", "study", "probe", "adversarial", "ratios", "report"))
    parser.add_argument("--task", choices=list(TASKS), default="movies")
    parser.add_argument("--settings", default=None,
                        help="comma-separated names of SETTINGS (study) or of ADVERSARIAL (adversarial)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME:OVERRIDES",
                        help="an extra setting, e.g. 'lazy4:smart=paper teacher=paper smart.every_n_steps=4'")
    parser.add_argument("--seeds", default=None, help="e.g. 0-4 (study), 0-2 (lr)")
    parser.add_argument("--lr", type=float, default=None, help="the learning rate of every study run")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every run (lr phase: 300)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th run of the plan, starting at i")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="2-layer model, a few examples and steps")
    parser.add_argument("--weights", type=Path, default=None,
                        help="ratios: a run's saved final weights (default: the fresh head of step 0)")
    parser.add_argument("--batches", type=int, default=4, help="ratios: how many training batches")
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(stored(args.out)))
        return

    register_configs()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    bench = QUICK if args.quick else Bench()
    index, count = (int(x) for x in args.shard.split("/"))
    if args.command == "ratios":  # the ratio at each grid radius, at step 0 or at saved weights (auto's start)
        bench = QUICK_ADVERSARIAL if args.quick else ADVERSARIAL_BENCH
        for seed in parse_seeds(args.seeds or "0"):
            row = grid_ratios(args.task, seed, bench, args.weights, batches=args.batches)
            with (args.out / "ratios.jsonl").open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        return
    if args.command in ("probe", "adversarial"):
        bench = QUICK_ADVERSARIAL if args.quick else ADVERSARIAL_BENCH
        lr, steps = REGIMES[args.task]
        steps = 4 if args.quick else steps
        if args.command == "probe":  # at plain's final weights, seed 0: the study's own plain run of that seed
            run = Run(args.task, "plain", SETTINGS["plain"], 0, lr, steps)
            execute([run], bench, args.out, (0, 1))
            start = time.perf_counter()
            row = {"kind": "probe", "key": f"probe-{run.key(bench)}", "task": args.task, "lr": lr, "steps": steps,
                   "of": run.key(bench), "settings": probe(args.task, args.out / "weights" / run.key(bench), bench)}
            row["eval_s"] = round(time.perf_counter() - start, 1)
            with (args.out / "runs.jsonl").open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(report(stored(args.out)))
            return
        extra = dict(text.partition(":")[::2] for text in args.setting)
        names = list(dict.fromkeys(n for n in (args.settings or ",".join(ADVERSARIAL)).split(",") if n))
        settings = adversarial_settings(stored(args.out), args.task, names + [n for n in extra if n not in names],
                                        extra)
        names = list(settings)
        seeds = parse_seeds(args.seeds or ("0" if args.quick else "0-4"))
        plan = [Run(args.task, name, settings[name], seed, lr, steps) for seed in seeds for name in names]
        start = time.perf_counter()
        execute(plan, bench, args.out, (index, count))
        print(f"this invocation: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        print(report(stored(args.out)))
        return
    if args.command == "lr":
        seeds = parse_seeds(args.seeds or "0-2")
        plan = [Run(args.task, "plain@lr", SETTINGS["plain"], seed, lr, args.steps or (4 if args.quick else 300))
                for seed in seeds for lr in LEARNING_RATES]
    else:
        if args.lr is None or args.steps is None:
            raise SystemExit("study needs --lr and --steps: the lr phase's choice (quality.py report)")
        settings = dict(SETTINGS)
        args.settings = args.settings or ",".join(SETTINGS)
        for text in args.setting:
            name, _, overrides = text.partition(":")
            settings[name] = overrides
            args.settings += f",{name}"
        names = list(dict.fromkeys(n for n in args.settings.split(",") if n))  # --settings lazy4 --setting lazy4:…
        unknown = [n for n in names if n not in settings]
        if unknown:
            raise SystemExit(f"--settings: unknown {unknown}; known: {', '.join(settings)}")
        seeds = parse_seeds(args.seeds or ("0" if args.quick else "0-4"))
        plan = [Run(args.task, name, settings[name], seed, args.lr, args.steps) for seed in seeds for name in names]
    start = time.perf_counter()
    execute(plan, bench, args.out, (index, count))
    print(f"this invocation: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print(report(stored(args.out)))


if __name__ == "__main__":
    main()
