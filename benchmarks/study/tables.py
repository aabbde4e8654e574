"""The study's tables: each split's score, the learning-rate phase's choice, and one study's medians and pairs.

A run scores each split by balanced accuracy on the out-of-domain sets (their label priors differ from the training
data's), else by accuracy (Pearson for regression). A failed run ends within 1 point of the majority class's rate on
validation (Pearson < 0.1). The learning-rate phase chooses the learning rate with the best median peak on
validation and the step where that median curve peaks. A study's table gives each setting's medians and
quartiles, its failures and its seconds per run, then the paired differences from plain, seed by seed, with their
bootstrap intervals; it says when plain's median curve still rises at its last validation.
"""

from __future__ import annotations

import statistics
from typing import Any

from lightning_smart.app import stats
from lightning_smart.app.stats import bootstrap, quartiles
from study.settings import LAZY_OF


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
