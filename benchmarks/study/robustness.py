"""The adversarial study's tables: the probe's ratios and the radii they fix, robust accuracy at every radius with
the rule's verdicts, ``smart.epsilon=auto`` against the hand-fixed radius, and whether reruns reproduce stored runs.

The rule: a setting earns a robustness claim when, over at least :data:`MIN_SEEDS` paired seeds, the interval of
its robust-accuracy gain over plain at its own training radius excludes 0 and no out-of-domain split's interval
excludes a loss; a gain on validation is confirmed on test.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any

from lightning_smart.app.stats import bootstrap
from study.settings import ACT_RATIO, STRONG_RATIO, TASKS, acting_radii, stored_probe
from study.tables import headline, study_tables

MIN_SEEDS = 3
"""Fewer paired seeds than this make no claim, whatever their interval (one seed's interval is a point)."""
TRAINING_RADIUS = {"mtdnn": 1.0, "mtdnn_teacher": 1.0}
"""The authors' rule has no radius: its δ is ≈ 1 per coordinate, about the token RMS, so it is judged at 1×."""
HAND_FIXED = "strong"
"""The setting ``auto`` is judged against: R_s alone at the task's ε_strong, fixed by hand from the stored probe."""


def adversarial_report(rows: list[dict[str, Any]]) -> list[str]:
    """The probe's table and the radii it fixes, then each task's study with the multi-radius attack."""
    lines: list[str] = []
    found = {task: stored_probe(rows, task) for task in TASKS}
    probes = {task: row for task, row in found.items() if row is not None}
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
