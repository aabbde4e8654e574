"""Does the embedding-space robustness reach real text? The text attacks on the adversarial study's final students.

Each run of :data:`TEXT_SETTINGS` (plain, the adversarial setting with its auto radius, the paper's SMART with its
teacher) at :data:`~study.settings.REGIMES`' learning rate and steps is attacked by
:mod:`lightning_smart.text_attack`'s DeepWordBug, Pruthi et al. and random typos, on the same seeded sample of
:data:`TEXT_EXAMPLES` examples of each of its task's test splits, with the same attack seed for every run, so that the
settings pair by seed on the very same texts. A run whose final weights are not kept (``<out>/weights/<key>``) is
trained again first, without its attacks, and must reproduce its stored clean metrics exactly on this machine; the
row says whether it did. Each attacked run is one line of ``<out>/text_attacks.jsonl``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from lightning_smart.app.stats import bootstrap
from lightning_smart.text_attack import ATTACKS, classifier, run_attack, sample, scores
from study.runner import append, build_task, compose_run, stored, train_one
from study.settings import ADVERSARIAL, Bench, Run, acting_radii, stored_probe

TEXT_SETTINGS = ("plain", "auto", "paper")
TEXT_EXAMPLES = 256
TEXT_SEED = 0
"""The seed of each split's sample and of the attacks' random characters: the same for every run."""
TYPO_RATE = 0.1
TEXT = "text_attacks.jsonl"
REPRODUCED = "reproduced.jsonl"
"""Where a rerun for its weights is kept, beside the study's other reruns."""
CLEAN = ("val", "curve", "steps_done")
"""What a retrained run must reproduce of its stored row (with every test split's clean metrics)."""


def text_plan(task: str, seeds: list[int], lr: float, steps: int, names: str | None = None) -> list[Run]:
    """The runs the text attacks attack: each of :data:`TEXT_SETTINGS` (or those of them ``names`` lists, comma
    separated) at each seed."""
    chosen = TEXT_SETTINGS if names is None else tuple(n for n in names.split(",") if n)
    unknown = [n for n in chosen if n not in TEXT_SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; the text attacks' settings are {', '.join(TEXT_SETTINGS)}")
    return [Run(task, name, ADVERSARIAL[name], seed, lr, steps) for seed in seeds for name in chosen]


def final_weights(run: Run, bench: Bench, out: Path) -> tuple[Path, bool | None]:
    """The run's saved final weights, trained again (without its attacks) where they are not kept, and whether that
    rerun reproduced the stored run's clean metrics exactly (``None``: nothing was rerun, or nothing was stored)."""
    key = run.key(bench)
    folder = out / "weights" / key
    if (folder / "config.json").is_file():
        return folder, None
    row = json.loads(json.dumps(train_one(run, bench, folder, attack=False)))  # tuples as the stored lists
    before = next((r for r in stored(out) if r["key"] == key), None)
    if before is None:
        return folder, None
    append(out / REPRODUCED, row | {"key": key, "bench": asdict(bench), "rerun_for": "text attacks"})
    fields = [*CLEAN, *(s for s in before["splits"][1:] if s != "robust")]
    return folder, all(row.get(f) == before.get(f) for f in fields)


def attack_run(run: Run, bench: Bench, out: Path, examples: int = TEXT_EXAMPLES) -> dict[str, Any]:
    """One line of ``text_attacks.jsonl``: every attack of :data:`ATTACKS` on a sample of each test split."""
    start = time.perf_counter()
    weights, reproduced = final_weights(run, bench, out)
    train_s = time.perf_counter() - start
    cfg = compose_run(run, bench)
    _, checked = build_task(cfg, run.seed)
    splits = checked.data.load()
    model = AutoModelForSequenceClassification.from_pretrained(str(weights))
    predict = classifier(model, checked.data.tokenizer, max_length=cfg.data.max_length)
    row: dict[str, Any] = {"key": f"text-{run.key(bench)}", "of": run.key(bench), "task": run.task,
                           "setting": run.setting, "seed": run.seed, "examples": examples, "attack_seed": TEXT_SEED,
                           "typo_rate": TYPO_RATE, "reproduced": reproduced, "splits": {}, "seconds": {}}
    for name, data in splits.test.items():
        chosen = sample(len(data), examples, TEXT_SEED)
        texts, labels = [data.texts[i] for i in chosen], [int(data.labels[i]) for i in chosen]
        row["splits"][name] = {}
        for attack in ATTACKS:
            began = time.perf_counter()
            found = scores(run_attack(attack, predict, texts, labels, seed=TEXT_SEED, typo_rate=TYPO_RATE))
            row["splits"][name][attack] = asdict(found)
            row["seconds"][f"{name}/{attack}"] = round(time.perf_counter() - began, 1)
    row |= {"retrain_s": round(train_s, 1), "threads": torch.get_num_threads()}
    return row


def text_rows(out: Path) -> list[dict[str, Any]]:
    """The stored rows of ``<out>/text_attacks.jsonl``, each key once (the first)."""
    return stored(out, TEXT)


def text_tables(runs: list[dict[str, Any]], attacked: list[dict[str, Any]]) -> list[str]:
    """Per task: each run's accuracies, seed by seed; accuracy under each text attack, paired by seed with plain
    (points, bootstrap 95% interval), beside the same runs' clean accuracy (on the whole split and on the attacked
    sample), PGD robust accuracy at the task's ε_strong and out-of-domain accuracy; the attacks' success rates, paired
    the same way; then what each setting's embedding-space gain becomes on real text."""
    lines: list[str] = []
    by_key = {r["key"]: r for r in runs if "key" in r}
    for task in dict.fromkeys(r["task"] for r in attacked):
        mine = [r for r in attacked if r["task"] == task and r["of"] in by_key]
        plain = {r["seed"]: r for r in mine if r["setting"] == "plain"}
        if not plain:
            continue
        strong = acting_radii(probe)[1] if (probe := stored_probe(runs, task)) else None
        splits = list(mine[0]["splits"])
        lines += [f"### {task}: the final students under text attacks ({mine[0]['examples']} examples of each test"
                  f" split; DeepWordBug, Pruthi et al., typos at rate {mine[0]['typo_rate']:g})", ""]
        columns = [("clean", lambda r, s=splits[0]: by_key[r["of"]][s]["acc"]),  # all the split; then the sample
                   (f"clean (the {mine[0]['examples']})",
                    lambda r, s=splits[0]: r["splits"][s][ATTACKS[0]]["clean_accuracy"])]
        if strong is not None:
            columns.append((f"PGD r = {strong:g}", functools.partial(_pgd, by_key, strong)))
        columns += [(f"{s} {a}", lambda r, s=s, a=a: r["splits"][s][a]["accuracy"]) for s in splits for a in ATTACKS]
        columns += [(f"{s} (clean, out of domain)", lambda r, s=s: by_key[r["of"]][s]["acc"])
                    for s in by_key[mine[0]["of"]]["splits"] if s in ("tweets", "amazon", "nyt")]
        lines += _per_run(mine, columns)
        table, paired = _paired(mine, plain, columns)
        lines += ["Paired difference from plain (points; mean over seeds, bootstrap 95% interval):", "", *table]
        verdicts = [f"- {setting}: " + (_verdict(cells, strong, splits) if n > 1 else
                                        "one seed paired with plain so far: no interval, no verdict.")
                    for setting, (n, cells) in paired.items()]
        success = [(f"{s} {a}", lambda r, s=s, a=a: r["splits"][s][a]["success_rate"]) for s in splits for a in ATTACKS]
        lines += ["", "Attack success rate (of the examples first right), paired difference from plain (points):", "",
                  *_paired(mine, plain, success)[0]]
        plain_rows = list(plain.values())
        lines += ["", "plain, mean accuracy under attack (%): " + ", ".join(
            f"{s} {a} {sum(100 * r['splits'][s][a]['accuracy'] for r in plain_rows) / len(plain_rows):.1f}"
            for s in splits for a in ATTACKS), "", *verdicts, ""]
        stale = [r for r in mine if r["reproduced"] is False]
        if stale:
            lines += [f"Warning: {len(stale)} retrained run(s) did not reproduce their stored clean metrics.", ""]
    return lines


def _paired(rows: list[dict[str, Any]], plain: dict[int, dict[str, Any]], columns: list[tuple[str, Any]]
            ) -> tuple[list[str], dict[str, tuple[int, dict[str, tuple[float, float, float]]]]]:
    """The table of each setting's paired differences from plain (points, bootstrap 95% interval) in ``columns``, and
    each setting's number of paired seeds and cells. One paired seed shows its difference and no interval: its
    "interval" would be that point, which says nothing of the spread."""
    lines = ["| setting | seeds | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    paired = {}
    for setting in TEXT_SETTINGS[1:]:
        mine = [r for r in rows if r["setting"] == setting and r["seed"] in plain]
        if not mine:
            continue
        cells = {name: bootstrap([100 * (score(r) - score(plain[r["seed"]])) for r in mine]) for name, score in columns}
        paired[setting] = len(mine), cells
        lines.append(f"| {setting} | {len(mine)} | " + " | ".join(
            f"{m:+.1f} (one seed)" if len(mine) < 2 else f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            for m, lo, hi in cells.values()) + " |")
    return lines, paired


def _per_run(rows: list[dict[str, Any]], columns: list[tuple[str, Any]]) -> list[str]:
    """Each attacked run's own accuracies (%), seed by seed, and whether its retrained weights reproduced the stored
    run."""
    order = {name: i for i, name in enumerate(TEXT_SETTINGS)}
    lines = ["Each run's final student (accuracy, %):", "",
             "| seed | setting | " + " | ".join(name for name, _ in columns) + " | reproduced |",
             "|---" * (len(columns) + 3) + "|"]
    for r in sorted(rows, key=lambda r: (r["seed"], order.get(r["setting"], len(order)))):
        values = [score(r) for _, score in columns]
        reproduced = {True: "yes", False: "**no**", None: "not rerun"}[r["reproduced"]]
        lines.append(f"| {r['seed']} | {r['setting']} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {reproduced} |")
    return [*lines, ""]


def _pgd(by_key: dict[str, dict[str, Any]], radius: float, row: dict[str, Any]) -> float:
    grid = by_key[row["of"]]["robust_radii"]
    return grid["acc"][next(i for i, x in enumerate(grid["radii"]) if math.isclose(x, radius))]


def _verdict(cells: dict[str, tuple[float, float, float]], strong: float | None, splits: list[str]) -> str:
    """Whether the setting's gain under PGD is matched under each text attack (an interval above 0), said no
    stronger than the intervals."""
    said = []
    pgd = next((v for k, v in cells.items() if k.startswith("PGD")), None)
    if pgd is not None:
        said.append(f"PGD at {strong:g}: {pgd[0]:+.1f} [{pgd[1]:+.1f}, {pgd[2]:+.1f}]"
                    + (" (a gain)" if pgd[1] > 0 else " (no gain shown)"))
    for split in splits:
        for attack in ATTACKS:
            m, lo, hi = cells[f"{split} {attack}"]
            kind = "a gain" if lo > 0 else "a loss" if hi < 0 else "no difference shown"
            said.append(f"{split} {attack} {m:+.1f} [{lo:+.1f}, {hi:+.1f}] ({kind})")
    matched = all(cells[f"{s} {a}"][1] > 0 for s in splits for a in ATTACKS)
    if pgd is not None and pgd[1] > 0:
        said.append("its embedding-space gain **is matched** under every text attack" if matched else
                    "its embedding-space gain is **not matched** under the text attacks")
    return "; ".join(said) + "."
