"""Does SMART pay on my data? The report of a sweep that pairs settings with plain fine-tuning over seeds.

``smart-train -m experiment=compare`` runs plain fine-tuning, the teacher alone and the paper's method (or the
settings you list) on the same seeds; when the sweep ends (and again with ``smart-aggregate DIR``) this module
writes, beside :mod:`lightning_smart.sweep`'s aggregate, in the sweep's folder:

- ``compare.md``: per setting, the monitored metric on validation and on each test split as median (IQR); the
  paired per-seed difference from plain with a bootstrap 95% interval; failed runs; seconds per run and the ratio
  to plain; peak memory; a flag when plain's validation curve has not peaked; one plain-language line per setting;
- ``compare.csv``: the same numbers, one row per setting and split;
- ``compare.png``: the paired differences with their intervals.

Plain is the setting whose runs have ``smart.lambda_s = 0`` and no teacher. The statistics are
:mod:`lightning_smart.stats`'s, which ``benchmarks/quality.py`` uses too.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lightning_smart import stats


@dataclass
class SplitRow:
    """One setting on one split: its spread over seeds and its paired difference from plain (points)."""

    setting: str
    split: str
    n: int
    median: float
    q1: float
    q3: float
    seeds_paired: int
    diff_mean: float | None
    diff_low: float | None
    diff_high: float | None
    failed: int
    seconds: float
    time_ratio: float | None
    peak_memory_mib: float | None


def is_plain(summary: dict[str, Any]) -> bool:
    """A run of plain fine-tuning: no R_s (``smart.lambda_s = 0``), no NEFTune noise and no teacher."""
    config = summary["config"]
    smart = config["smart"]
    return float(smart["lambda_s"]) == 0 and float(smart.get("neftune_alpha", 0)) == 0 and config.get("teacher") is None


def _failed(summary: dict[str, Any]) -> bool:
    val = summary["val"]
    if "pearson" in val:
        return stats.failed(val["pearson"], regression=True)
    majority = summary["data"].get("val_majority")
    return majority is not None and "acc" in val and stats.failed(val["acc"], majority=majority)


def lower_is_better(metric: str) -> bool:
    """A loss or a perplexity (``data=sft``'s ``val/loss``): a gain is a decrease, reported in the metric's units."""
    return metric.removeprefix("val/").endswith(("loss", "perplexity"))


def _scores(summary: dict[str, Any], metric: str) -> dict[str, float]:
    """The monitored metric on validation and on each test split: points (×100), or a loss's own units."""
    name, scale = metric.removeprefix("val/"), 1.0 if lower_is_better(metric) else 100.0
    scores = {"validation": scale * float(summary["score"])}
    for split, values in summary["test"].items():
        if name in values:
            scores[split] = scale * float(values[name])
    return scores


def compare(names: Sequence[str], summaries: Sequence[dict[str, Any]]) -> tuple[list[SplitRow], list[str]] | None:
    """The comparison of every setting with plain: its rows, and the Markdown report's lines.

    Args:
        names: each run's setting (:func:`lightning_smart.sweep.settings`).
        summaries: each run's ``summary.json``, in the same order.

    Returns:
        ``None`` when no setting is plain fine-tuning or none is anything else, or a summary lacks the resolved
        config (an older version's): nothing to compare.
    """
    if any("config" not in m or "score" not in m for m in summaries):
        return None  # summaries of an older version, without the resolved config: nothing to pair by
    settings = list(dict.fromkeys(names))
    plain_names = [s for s in settings if all(is_plain(m) for n, m in zip(names, summaries, strict=True) if n == s)]
    if not plain_names or len(settings) < 2:
        return None
    plain_name = plain_names[0]
    metric = summaries[0]["metric"]
    runs: dict[str, list[dict[str, Any]]] = {s: [m for n, m in zip(names, summaries, strict=True) if n == s]
                                             for s in settings}
    by_seed = {s: {int(m["config"]["seed"]): _scores(m, metric) for m in mine} for s, mine in runs.items()}
    splits = list(dict.fromkeys(split for seeds in by_seed.values() for scores in seeds.values() for split in scores))
    seconds = {s: statistics.median(m["wall_time_s"] for m in mine) for s, mine in runs.items()}
    memory = {s: [m["peak_memory"]["mib"] for m in mine if m.get("peak_memory")] for s, mine in runs.items()}
    curve = stats.median_curve([[tuple(p) for p in m.get("curve", [])] for m in runs[plain_name]])
    better = -1.0 if lower_is_better(metric) else 1.0  # differences are signed so that + is always a gain
    unpeaked = stats.not_peaked([(step, better * value) for step, value in curve])

    rows: list[SplitRow] = []
    for setting in settings:
        failures = sum(map(_failed, runs[setting]))
        ratio = seconds[setting] / seconds[plain_name] if seconds[plain_name] > 0 else None
        peak = statistics.median(memory[setting]) if memory[setting] else None
        for split in splits:
            values = [scores[split] for scores in by_seed[setting].values() if split in scores]
            if not values:
                continue
            median, q1, q3 = stats.quartiles(values)
            diffs = [better * d for d in stats.paired_differences(
                {k: v[split] for k, v in by_seed[setting].items() if split in v},
                {k: v[split] for k, v in by_seed[plain_name].items() if split in v})]
            paired = bool(diffs) and setting != plain_name
            mean, low, high = stats.bootstrap(diffs) if paired else (None, None, None)
            rows.append(SplitRow(setting, split, len(values), median, q1, q3, len(diffs) if paired else 0, mean,
                                 low, high, failures, seconds[setting], ratio, peak))
    return rows, _markdown(rows, settings, plain_name, splits, metric, curve, unpeaked, runs)


def _markdown(rows: list[SplitRow], settings: list[str], plain: str, splits: list[str], metric: str,
              curve: list[tuple[int, float]], unpeaked: bool, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    at = {(r.setting, r.split): r for r in rows}
    memory_kind = next((m["peak_memory"]["what"] for mine in runs.values() for m in mine if m.get("peak_memory")),
                       "peak memory")
    lower = lower_is_better(metric)
    unit = "its own units, lower is better" if lower else "points, ×100"
    lines = [f"# Does it pay? {len(settings) - 1} setting(s) against plain fine-tuning ({plain}), paired by seed",
             "", f"Monitored metric: `{metric}` ({unit}), on validation and on each test split (the best"
             " checkpoint's). Median (IQR) over seeds:", "",
             "| setting | runs | failed | " + " | ".join(splits) + " | s per run | × plain | peak MiB |",
             "|---" * (len(splits) + 6) + "|"]
    for setting in settings:
        first = next(r for r in rows if r.setting == setting)
        cells = [f"{at[setting, s].median:.1f} ({at[setting, s].q1:.1f}–{at[setting, s].q3:.1f})"
                 if (setting, s) in at else "–" for s in splits]
        ratio = f"{first.time_ratio:.2f}" if first.time_ratio is not None else "–"
        peak = f"{first.peak_memory_mib:.0f}" if first.peak_memory_mib is not None else "–"
        lines.append(f"| {setting} | {len(runs[setting])} | {first.failed} | " + " | ".join(cells)
                     + f" | {first.seconds:.0f} | {ratio} | {peak} |")
    signed = "plain minus the setting, so + is a gain" if lower else "points"
    lines += ["", f"Paired difference from plain ({signed}; mean over seeds, bootstrap 95% interval over seeds):", "",
              "| setting | seeds | " + " | ".join(splits) + " |", "|---" * (len(splits) + 2) + "|"]
    verdicts = []
    for setting in settings:
        if setting == plain:
            continue
        cells = []
        for split in splits:
            row = at.get((setting, split))
            cells.append("–" if row is None or row.diff_mean is None
                         else f"{row.diff_mean:+.1f} [{row.diff_low:+.1f}, {row.diff_high:+.1f}]")
        val = at.get((setting, "validation"))
        seeds = val.seeds_paired if val else 0
        lines.append(f"| {setting} | {seeds} | " + " | ".join(cells) + " |")
        if val is not None and val.diff_mean is not None:
            assert val.diff_low is not None and val.diff_high is not None
            said = stats.verdict((val.diff_mean, val.diff_low, val.diff_high), seeds, time_ratio=val.time_ratio,
                                 failed_runs=val.failed, plain_not_peaked=unpeaked,
                                 unit="less loss" if lower else "points")
            if val.diff_low > 0:  # a gain on validation: does each test split confirm it?
                tests = [at[setting, s] for s in splits[1:] if (setting, s) in at and at[setting, s].diff_mean
                         is not None]
                said += "".join(f" {'Confirmed' if t.diff_low > 0 else 'Not confirmed'} on {t.split}:"  # type: ignore[operator]
                                f" {t.diff_mean:+.1f} [{t.diff_low:+.1f}, {t.diff_high:+.1f}]." for t in tests)
            verdicts.append(f"- **{setting}**: {said}")
    points = ", ".join(f"{step}: {value:.3f}" if lower else f"{step}: {100 * value:.1f}" for step, value in curve)
    lines += ["", f"Plain's median validation curve (step: {metric}): {points or 'not recorded'}."]
    if unpeaked:
        lines.append(f"**Plain has not peaked**: its validation curve still {'falls' if lower else 'rises'} at its last"
                     " validation, so a"
                     " setting that only trains faster looks like a gain here. Rerun with more steps"
                     " (trainer.max_steps) before deciding.")
    lines += ["", "What the evidence says (validation decides; a test split confirms):", "", *verdicts, "",
              f"Failed: final validation accuracy within {100 * stats.FAILED_MARGIN:.0f} point of the majority"
              f" class's rate (Pearson < {stats.FAILED_PEARSON} for regression). Peak memory: {memory_kind}, median"
              " over runs. Seconds: each run's wall time, median."]
    return lines


def plot(rows: list[SplitRow], path: Path) -> Path | None:
    """``compare.png``: each setting's paired difference from plain, per split, with its 95% interval."""
    paired = [r for r in rows if r.diff_mean is not None]
    if not paired:
        return None
    splits = list(dict.fromkeys(r.split for r in paired))
    settings = list(dict.fromkeys(r.setting for r in paired))
    figure = Figure(figsize=(max(6.0, 1.6 + 1.4 * len(splits) * len(settings) ** 0.5), 4.2), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(settings)
    for k, setting in enumerate(settings):
        mine = {r.split: r for r in paired if r.setting == setting}
        xs = [i - 0.4 + width * (k + 0.5) for i, split in enumerate(splits) if split in mine]
        means = [float(mine[s].diff_mean) for s in splits if s in mine]  # type: ignore[arg-type]
        errors = [[mine[s].diff_mean - mine[s].diff_low for s in splits if s in mine],  # type: ignore[operator]
                  [mine[s].diff_high - mine[s].diff_mean for s in splits if s in mine]]  # type: ignore[operator]
        seeds = max(r.seeds_paired for r in mine.values())
        axes.errorbar(xs, means, yerr=errors, fmt="o", capsize=4, color=f"C{k}", label=f"{setting} ({seeds} seeds)")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(splits)), splits)
    axes.set(ylabel="difference from plain (points)", title="Paired difference from plain, bootstrap 95% interval")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return path


def write_csv(rows: list[SplitRow], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([field.name for field in fields(SplitRow)])
        for row in rows:
            writer.writerow(["" if v is None else (round(v, 4) if isinstance(v, float) else v)
                             for v in (getattr(row, f.name) for f in fields(SplitRow))])


__all__ = ["SplitRow", "compare", "is_plain", "plot", "write_csv"]
