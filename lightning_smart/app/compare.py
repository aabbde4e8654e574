"""Does SMART pay on my data? The report of a sweep that pairs settings with plain fine-tuning over seeds.

``smart-train -m experiment=compare`` runs plain fine-tuning, the teacher alone and the paper's method (or the
settings you list) on the same seeds; when the sweep ends (and again with ``smart-aggregate DIR``) this module
writes, beside :mod:`lightning_smart.app.sweep`'s aggregate, in the sweep's folder:

- ``compare.md``: per setting, the monitored metric on validation and on each test split as median (IQR); the
  paired per-seed difference from plain with a bootstrap 95% interval; failed runs (those that raised, each named
  with its error, and those that learned nothing); seconds per run and the ratio to plain; peak memory; a flag
  when plain's validation curve has not peaked; with ``eval.robust_radii``, robust accuracy at each radius on each
  split, paired the same way; with ``eval.text_attacks``, the accuracy under each text attack on each split, paired
  the same way, and each attack's success rate (of the examples first right) paired in a table of its own, where − is
  fewer flipped than plain's: it tells a loss under attack that is the clean loss from a setting the attack breaks
  more often; one plain-language line per setting that weighs the robustness a setting bought against its clean,
  out-of-domain and time cost, and says whether a gain under the embedding-space attack holds under the text attacks;
- ``compare.csv``: the same numbers, one row per setting, split and radius or text attack (both empty for the clean
  metric; ``<attack>_success_rate`` for a success rate, where a negative difference is fewer flipped);
- ``compare.png``: the paired differences with their intervals.

Plain is the setting whose runs have ``smart.lambda_s = 0`` and no teacher. The statistics are
:mod:`lightning_smart.app.stats`'s, which ``benchmarks/quality.py`` uses too. A run's seconds leave out its robust
accuracy's attack and its text attacks, which cost every setting the same and measure rather than train.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lightning_smart.app import stats
from lightning_smart.app.summary import error_line, raised
from lightning_smart.text_attack import ATTACKS

ROBUST = "robust_acc@"
"""The prefix of robust accuracy's metrics in ``summary.json`` (``robust_acc@0.1``: at radius 0.1)."""
TEXT_ACC = "_acc"
"""The suffix of the accuracy under a text attack in ``summary.json`` (``deepwordbug_acc``)."""
SUCCESS = "_success_rate"
"""The suffix of a text attack's success rate in ``summary.json`` (``deepwordbug_success_rate``), and of its column."""


@dataclass
class SplitRow:
    """One setting on one split (and radius): its spread over seeds and its paired difference from plain (points).

    ``radius`` is the attack's radius for robust accuracy, ``attack`` the text attack's name for the accuracy under
    it, or that name with :data:`SUCCESS` for its success rate (a negative difference: fewer flipped than plain's);
    both are ``None`` for the monitored metric. ``n`` counts the runs that trained;
    ``failed`` the setting's runs that raised or learned nothing (:func:`failed`).
    """

    setting: str
    split: str
    radius: float | None
    attack: str | None
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

    @property
    def measure(self) -> float | str | None:
        """What the row measures beyond its split: a radius, a text attack, or ``None`` (the monitored metric)."""
        return self.radius if self.radius is not None else self.attack


def is_plain(summary: dict[str, Any]) -> bool:
    """A run of plain fine-tuning: no R_s (``smart.lambda_s = 0``), no NEFTune noise and no teacher."""
    config = summary["config"]
    smart = config["smart"]
    return float(smart["lambda_s"]) == 0 and float(smart.get("neftune_alpha", 0)) == 0 and config.get("teacher") is None


def failed(summary: dict[str, Any]) -> bool:
    """A failed run: one that raised (its summary holds the error), or one that learned nothing
    (:func:`lightning_smart.app.stats.failed`)."""
    if raised(summary):
        return True
    val = summary["val"]
    if "pearson" in val:
        return stats.failed(val["pearson"], regression=True)
    majority = summary["data"].get("val_majority")
    return majority is not None and "acc" in val and stats.failed(val["acc"], majority=majority)


def lower_is_better(metric: str) -> bool:
    """A loss or a perplexity (``data=sft``'s ``val/loss``): a gain is a decrease, reported in the metric's units."""
    return metric.removeprefix("val/").endswith(("loss", "perplexity"))


Column = tuple[str, "float | str | None"]
"""A split and what is measured on it: a radius (robust accuracy), a text attack's name (the accuracy under it), that
name with :data:`SUCCESS` (its success rate), or ``None`` (the monitored metric)."""


def _is_success(measure: float | str | None) -> bool:
    return isinstance(measure, str) and measure.endswith(SUCCESS)


def _scores(summary: dict[str, Any], metric: str) -> dict[Column, float]:
    """The monitored metric on validation and on each test split (points, ×100, or a loss's own units), robust
    accuracy at each radius, and the accuracy under each text attack and its success rate (points)."""
    name, scale = metric.removeprefix("val/"), 1.0 if lower_is_better(metric) else 100.0
    scores: dict[Column, float] = {("validation", None): scale * float(summary["score"])}
    for split, values in summary["test"].items():
        if name in values:
            scores[split, None] = scale * float(values[name])
    for split, values in [("validation", summary["val"]), *summary["test"].items()]:
        for key, value in values.items():
            if key.startswith(ROBUST):
                scores[split, float(key.removeprefix(ROBUST))] = 100.0 * float(value)
            elif key.endswith(TEXT_ACC) and key.removesuffix(TEXT_ACC) in ATTACKS:
                scores[split, key.removesuffix(TEXT_ACC)] = 100.0 * float(value)
            elif key.endswith(SUCCESS) and key.removesuffix(SUCCESS) in ATTACKS:
                scores[split, key] = 100.0 * float(value)
    return scores


def _seconds(summary: dict[str, Any]) -> float:
    """The run's wall time less its robust accuracy's attack and its text attacks."""
    text = sum((summary.get("text_attacks") or {}).get("seconds", {}).values())
    return float(summary["wall_time_s"]) - float((summary.get("robust") or {}).get("seconds", 0.0)) - text


def compare(names: Sequence[str], summaries: Sequence[dict[str, Any]], folders: Sequence[str] | None = None
            ) -> tuple[list[SplitRow], list[str]] | None:
    """The comparison of every setting with plain: its rows, and the Markdown report's lines.

    A run that raised counts among its setting's runs and failed runs, and the report names its error; the statistics
    are over the runs that trained.

    Args:
        names: each run's setting (:func:`lightning_smart.app.sweep.settings`).
        summaries: each run's ``summary.json``, in the same order.
        folders: each run's folder, in the same order, for the report to say where a failed run's error is.

    Returns:
        ``None`` when no setting is plain fine-tuning or none is anything else, when no run trained, or when a
        summary lacks the resolved config (an older version's): nothing to compare.
    """
    if any("config" not in m or "score" not in m for m in summaries):
        return None  # summaries of an older version, without the resolved config: nothing to pair by
    settings = list(dict.fromkeys(names))
    plain_names = [s for s in settings if all(is_plain(m) for n, m in zip(names, summaries, strict=True) if n == s)]
    trained = [m for m in summaries if not raised(m)]
    if not plain_names or len(settings) < 2 or not trained:
        return None
    plain_name = plain_names[0]
    metric = trained[0]["metric"]
    runs: dict[str, list[dict[str, Any]]] = {s: [m for n, m in zip(names, summaries, strict=True) if n == s]
                                             for s in settings}
    done = {s: [m for m in mine if not raised(m)] for s, mine in runs.items()}
    by_seed = {s: {int(m["config"]["seed"]): _scores(m, metric) for m in mine} for s, mine in done.items()}
    found = dict.fromkeys(column for seeds in by_seed.values() for scores in seeds.values() for column in scores)
    order = list(dict.fromkeys(split for split, _ in found))
    columns = ([c for c in found if c[1] is None]
               + sorted((c for c in found if isinstance(c[1], float)), key=lambda c: (order.index(c[0]), c[1]))
               + sorted((c for c in found if isinstance(c[1], str)),
                        key=lambda c: (_is_success(c[1]), order.index(c[0]),  # accuracies, then success rates
                                       ATTACKS.index(str(c[1]).removesuffix(SUCCESS)))))
    seconds = {s: statistics.median(_seconds(m) for m in mine) if mine else None for s, mine in done.items()}
    memory = {s: [m["peak_memory"]["mib"] for m in mine if m.get("peak_memory")] for s, mine in done.items()}
    curve = stats.median_curve([[tuple(p) for p in m.get("curve", [])] for m in done[plain_name]])
    better = -1.0 if lower_is_better(metric) else 1.0  # differences are signed so that + is always a gain
    unpeaked = stats.not_peaked([(step, better * value) for step, value in curve])

    rows: list[SplitRow] = []
    for setting in settings:
        failures = sum(map(failed, runs[setting]))
        mine, plain = seconds[setting], seconds[plain_name]
        ratio = mine / plain if mine is not None and plain else None
        peak = statistics.median(memory[setting]) if memory[setting] else None
        for column in columns:
            values = [scores[column] for scores in by_seed[setting].values() if column in scores]
            if not values:
                continue
            median, q1, q3 = stats.quartiles(values)
            sign = better if column[1] is None else 1.0  # under an attack: the setting's minus plain's
            diffs = [sign * d for d in stats.paired_differences(
                {k: v[column] for k, v in by_seed[setting].items() if column in v},
                {k: v[column] for k, v in by_seed[plain_name].items() if column in v})]
            paired = bool(diffs) and setting != plain_name
            mean, low, high = stats.bootstrap(diffs) if paired else (None, None, None)
            assert mine is not None  # the setting has values: some of its runs trained
            radius = column[1] if isinstance(column[1], float) else None
            attack = column[1] if isinstance(column[1], str) else None
            rows.append(SplitRow(setting, column[0], radius, attack, len(values), median, q1, q3,
                                 len(diffs) if paired else 0, mean, low, high, failures, mine, ratio, peak))
    where = folders or [""] * len(summaries)
    raised_runs = [_raised_line(name, m, folder) for name, m, folder in zip(names, summaries, where, strict=True)
                   if raised(m)]
    return rows, _markdown(rows, settings, plain_name, columns, metric, curve, unpeaked, runs, raised_runs)


def _raised_line(setting: str, summary: dict[str, Any], folder: str) -> str:
    """A run that raised, as the report names it: its setting, seed and error, and the file with its traceback."""
    where = f" (traceback: {folder}/{summary['error']['traceback']})" if folder else ""
    return f"- {setting}, seed {summary['config']['seed']}: {error_line(summary)}{where}"


def _failed_cell(runs: list[dict[str, Any]]) -> str:
    """A setting's failed runs, with how many of them raised."""
    count, raised_count = sum(map(failed, runs)), sum(map(raised, runs))
    return f"{count} ({raised_count} raised)" if raised_count else str(count)


def _cell(row: SplitRow | None) -> str:
    if row is None or row.diff_mean is None:
        return "–"
    assert row.diff_low is not None and row.diff_high is not None
    return stats.interval((row.diff_mean, row.diff_low, row.diff_high))


def _difference(row: SplitRow) -> stats.Difference:
    assert row.diff_mean is not None and row.diff_low is not None and row.diff_high is not None
    return row.diff_mean, row.diff_low, row.diff_high


def _label(column: Column) -> str:
    split, measure = column
    if measure is None:
        return split
    return f"{split} {measure.removesuffix(SUCCESS)}" if isinstance(measure, str) else f"{split} @{measure:g}"


def _attack(runs: dict[str, list[dict[str, Any]]]) -> str:
    """How the runs' robust accuracy was measured, from the first run that measured it."""
    robust = next((m["robust"] for mine in runs.values() for m in mine if m.get("robust")), None)
    if robust is None:
        return "the PGD attack of lightning_smart.attack"
    norm = "ℓ∞" if robust.get("norm", "inf") == "inf" else "ℓ2"
    named = {"val": "validation"}
    examples = ", ".join(f"{named.get(split, split.removeprefix('test/'))} {n}"
                         for split, n in robust.get("examples", {}).items())
    return (f"PGD, {norm}, radius r × each token's RMS, {robust['steps']} steps, on {examples} examples; an example"
            " counts at r when it is right on the clean input and under every attack of radius ≤ r")


def _text_attacks(runs: dict[str, list[dict[str, Any]]]) -> str:
    """How the runs' text attacks were measured, from the first run that measured them."""
    text = next((m["text_attacks"] for mine in runs.values() for m in mine if m.get("text_attacks")), None)
    if text is None:
        return "the text attacks of lightning_smart.text_attack"
    sample = "every example" if text["sample"] is None else f"{text['sample']} examples"
    return (f"{', '.join(text['attacks'])} on {sample} of each split (seed {text['seed']}; typos at rate"
            f" {text['typo_rate']:g}), against the exported final weights")


def _text_verdict(at: dict[tuple[str, str, float | str | None], SplitRow], setting: str, radii: list[float],
                  attacks: list[str]) -> str:
    """Whether a gain under the embedding-space attack (an interval above 0 on validation at some radius) holds under
    the text attacks on validation, said no stronger than their intervals, with the attacks' success rates against
    plain's; empty without text attacks."""
    gained = [r for r in radii if (row := at.get((setting, "validation", r))) is not None
              and row.diff_low is not None and row.diff_low > 0]
    text = [(a, row) for a in attacks if (row := at.get((setting, "validation", a))) is not None
            and row.diff_mean is not None]
    if not text:
        return ""
    said = ", ".join(f"{a} {stats.interval(_difference(row))}" for a, row in text)
    flipped = ", ".join(f"{a} {stats.interval(_difference(row))}" for a in attacks
                        if (row := at.get((setting, "validation", a + SUCCESS))) is not None
                        and row.diff_mean is not None)
    rates = f" Success rates against plain's (− is fewer flipped): {flipped} points." if flipped else ""
    unmatched = [a for a, row in text if not (row.diff_low is not None and row.diff_low > 0)]
    if not gained:
        return f" Under the text attacks, on validation: {said} points.{rates}"
    if unmatched:
        return (f" Its embedding-space gain (at {', '.join(f'{r:g}' for r in gained)}) is **not matched** under"
                f" {', '.join(unmatched)}: on validation {said} points.{rates}")
    return f" Its embedding-space gain holds under every text attack: on validation {said} points.{rates}"


def _robustness(at: dict[tuple[str, str, float | str | None], SplitRow], setting: str, radii: list[float],
                tests: list[str], ood: set[str], val: SplitRow, clean_tests: list[SplitRow]) -> str:
    """The verdict's robustness part: robust accuracy at each radius, against the clean, out-of-domain and time cost
    (:func:`~lightning_smart.app.stats.robustness_verdict`); empty without robust accuracy."""
    attacked = []
    for radius in radii:
        row = at.get((setting, "validation", radius))
        if row is None or row.diff_mean is None:
            continue
        confirming = [(split, _difference(t)) for split in tests
                      if split not in ood and (t := at.get((setting, split, radius))) is not None and t.diff_mean
                      is not None]
        attacked.append((radius, _difference(row), confirming))
    if not attacked:
        return ""
    clean = [("validation", _difference(val))] + [(t.split, _difference(t)) for t in clean_tests if t.split not in ood]
    out = [(t.split, _difference(t)) for t in clean_tests if t.split in ood]
    return " " + stats.robustness_verdict(attacked, clean, out, val.time_ratio, seeds=val.seeds_paired)


def _markdown(rows: list[SplitRow], settings: list[str], plain: str, columns: list[Column], metric: str,
              curve: list[tuple[int, float]], unpeaked: bool, runs: dict[str, list[dict[str, Any]]],
              raised_runs: list[str]) -> list[str]:
    at = {(r.setting, r.split, r.measure): r for r in rows}
    memory_kind = next((m["peak_memory"]["what"] for mine in runs.values() for m in mine if m.get("peak_memory")),
                       "peak memory")
    ood = {split for mine in runs.values() for m in mine for split in (m["config"].get("data") or {}).get("ood") or []}
    clean = [c for c in columns if c[1] is None]
    robust = [c for c in columns if isinstance(c[1], float)]
    text = [c for c in columns if isinstance(c[1], str) and not _is_success(c[1])]
    flips = [c for c in columns if _is_success(c[1])]
    paired_columns = [c for c in columns if c not in flips]
    splits = [split for split, _ in clean]
    lower = lower_is_better(metric)
    unit = "its own units, lower is better" if lower else "points, ×100"
    lines = [f"# Does it pay? {len(settings) - 1} setting(s) against plain fine-tuning ({plain}), paired by seed",
             "", f"Monitored metric: `{metric}` ({unit}), on validation and on each test split (the best"
             " checkpoint's). Median (IQR) over seeds:", "",
             "| setting | runs | failed | " + " | ".join(splits) + " | s per run | × plain | peak MiB |",
             "|---" * (len(splits) + 6) + "|"]

    def medians(setting: str, wanted: list[Column]) -> list[str]:
        found = [at.get((setting, split, radius)) for split, radius in wanted]
        return [f"{r.median:.1f} ({r.q1:.1f}–{r.q3:.1f})" if r is not None else "–" for r in found]

    for setting in settings:
        first = next((r for r in rows if r.setting == setting), None)  # None: every run of the setting raised
        seconds = f"{first.seconds:.0f}" if first is not None else "–"
        ratio = f"{first.time_ratio:.2f}" if first is not None and first.time_ratio is not None else "–"
        peak = f"{first.peak_memory_mib:.0f}" if first is not None and first.peak_memory_mib is not None else "–"
        lines.append(f"| {setting} | {len(runs[setting])} | {_failed_cell(runs[setting])} | "
                     + " | ".join(medians(setting, clean)) + f" | {seconds} | {ratio} | {peak} |")
    if raised_runs:
        lines += ["", "Runs that raised (counted as failed, left out of every statistic):", "", *raised_runs]
    if robust:
        lines += ["", f"Robust accuracy (points) under attack at each radius r ({_attack(runs)}). Median (IQR) over"
                  " seeds:", "", "| setting | " + " | ".join(map(_label, robust)) + " |",
                  "|---" * (len(robust) + 1) + "|"]
        lines += [f"| {setting} | " + " | ".join(medians(setting, robust)) + " |" for setting in settings]
    if text:
        lines += ["", f"Accuracy (points) under the text attacks ({_text_attacks(runs)}). Median (IQR) over seeds:",
                  "", "| setting | " + " | ".join(map(_label, text)) + " |", "|---" * (len(text) + 1) + "|"]
        lines += [f"| {setting} | " + " | ".join(medians(setting, text)) + " |" for setting in settings]
    signed = "plain minus the setting, so + is a gain" if lower else "points"
    lines += ["", f"Paired difference from plain ({signed}; mean over seeds, bootstrap 95% interval over seeds):", "",
              "| setting | seeds | " + " | ".join(map(_label, paired_columns)) + " |",
              "|---" * (len(paired_columns) + 2) + "|"]
    verdicts = []
    for setting in settings:
        if setting == plain:
            continue
        val = at.get((setting, "validation", None))
        seeds = val.seeds_paired if val else 0
        cells = [_cell(at.get((setting, split, radius))) for split, radius in paired_columns]
        lines.append(f"| {setting} | {seeds} | " + " | ".join(cells) + " |")
        if val is not None and val.diff_mean is not None:
            said = stats.verdict(_difference(val), seeds, time_ratio=None if robust or text else val.time_ratio,
                                 failed_runs=val.failed, plain_not_peaked=unpeaked,
                                 unit="less loss" if lower else "points")
            tests = [t for s in splits[1:] if (t := at.get((setting, s, None))) is not None and t.diff_mean is not None]
            if val.diff_low is not None and val.diff_low > 0:  # a gain on validation: does each test split confirm it?
                said += "".join(f" {'Confirmed' if _difference(t)[1] > 0 else 'Not confirmed'} on {t.split}:"
                                f" {stats.interval(_difference(t))}." for t in tests)
            radii = [float(r) for r in dict.fromkeys(radius for _, radius in robust) if r is not None]
            said += _robustness(at, setting, radii, splits[1:], ood, val, tests)
            said += _text_verdict(at, setting, radii, [str(a) for a in dict.fromkeys(a for _, a in text)])
            verdicts.append(f"- **{setting}**: {said}")
    if flips:
        lines += ["", "The text attacks' success rates (points: of the examples first right, the share the attack"
                  " flipped), paired difference from plain (the setting's minus plain's, so − is fewer flipped; mean"
                  " over seeds, bootstrap 95% interval over seeds). A loss under attack with a success rate like"
                  " plain's is the clean loss carried through:", "",
                  "| setting | " + " | ".join(map(_label, flips)) + " |", "|---" * (len(flips) + 1) + "|"]
        lines += [f"| {setting} | " + " | ".join(_cell(at.get((setting, *c))) for c in flips) + " |"
                  for setting in settings if setting != plain]
    points = ", ".join(f"{step}: {value:.3f}" if lower else f"{step}: {100 * value:.1f}" for step, value in curve)
    lines += ["", f"Plain's median validation curve (step: {metric}): {points or 'not recorded'}."]
    if unpeaked:
        lines.append(f"**Plain has not peaked**: its validation curve still {'falls' if lower else 'rises'} at its last"
                     " validation, so a"
                     " setting that only trains faster looks like a gain here. Rerun with more steps"
                     " (trainer.max_steps) before deciding.")
    lines += ["", "What the evidence says (validation decides; a test split confirms):", "", *verdicts, "",
              f"Failed: a run that raised, or one whose final validation accuracy is within"
              f" {100 * stats.FAILED_MARGIN:.0f} point of the majority class's rate (Pearson <"
              f" {stats.FAILED_PEARSON} for regression). Peak memory: {memory_kind}, median"
              " over runs. Seconds: each run's wall time, median" + (", less its robust accuracy's attack and text"
                                                                     " attacks" if robust or text else "") + "."]
    if ood:
        lines[-1] += f" Out of domain: {', '.join(s for s in splits if s in ood)} (data.ood)."
    return lines


def plot(rows: list[SplitRow], path: Path) -> Path | None:
    """``compare.png``: each setting's paired difference from plain, per split (and radius, for robust accuracy),
    with its 95% interval."""
    paired = [r for r in rows if r.diff_mean is not None and not _is_success(r.attack)]  # accuracies: + is a gain
    if not paired:
        return None
    columns = list(dict.fromkeys((r.split, r.measure) for r in paired))
    settings = list(dict.fromkeys(r.setting for r in paired))
    figure = Figure(figsize=(max(6.0, 1.6 + 1.4 * len(columns) * len(settings) ** 0.5), 4.2), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(settings)
    for k, setting in enumerate(settings):
        mine = {(r.split, r.measure): _difference(r) for r in paired if r.setting == setting}
        xs = [i - 0.4 + width * (k + 0.5) for i, column in enumerate(columns) if column in mine]
        means = [mine[c][0] for c in columns if c in mine]
        errors = [[mine[c][0] - mine[c][1] for c in columns if c in mine],
                  [mine[c][2] - mine[c][0] for c in columns if c in mine]]
        seeds = max(r.seeds_paired for r in paired if r.setting == setting)
        axes.errorbar(xs, means, yerr=errors, fmt="o", capsize=4, color=f"C{k}", label=f"{setting} ({seeds} seeds)")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(columns)), [_label(c).replace(" @", "\nunder attack @") for c in columns])
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


__all__ = ["SplitRow", "compare", "failed", "is_plain", "plot", "write_csv"]
