"""The probe: how far a perturbation moves the model's output, against how far dropout moves it.

At given weights, per perturbation, ℓs between the perturbed and the clean forward (on the same dropout masks) and ℓs
between two clean forwards that differ only in dropout, in train mode, on the first training batches: their ratio
says whether a radius acts. :func:`probe` measures the settings the probe's rule reads radii off
(:func:`study.settings.acting_radii`); :func:`grid_ratios` measures every grid radius batch by batch, as
``smart.epsilon=auto`` would choose on each.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lightning_smart import SmartConfig
from lightning_smart.config import RADIUS_GRID
from lightning_smart.tasks import SequenceTask
from study.runner import build_task, compose_run
from study.settings import ADVERSARIAL, PROBE_GRID, REGIMES, STRONG_RATIO, Bench, Run


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
            task, checked = build_task(cfg, 0, weights)
            checked.data.setup("fit")
            loader = list(itertools.islice(checked.data.train_dataloader(), batches))
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
    task, checked = build_task(cfg, seed, weights)
    smart = checked.smart
    checked.data.setup("fit")
    task.train()
    per_batch = []
    for index, batch in enumerate(itertools.islice(checked.data.train_dataloader(), batches)):
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
