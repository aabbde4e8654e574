"""The report: every table of ``benchmarks/RESULTS.md`` over the stored runs, as ``quality.py report`` prints it."""

from __future__ import annotations

from typing import Any

from study.robustness import adversarial_report
from study.settings import TASKS
from study.tables import lr_choice, study_tables
from study.text import text_tables


def report(rows: list[dict[str, Any]], text: list[dict[str, Any]] | None = None) -> str:
    """Markdown tables: the learning-rate phase, then per task and setting the medians, paired gains and cost; with
    ``text`` (``text_attacks.jsonl``'s rows), the text attacks' tables."""
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
    lines += text_tables(rows, text or [])
    total = sum(r.get("train_s", 0) + r["eval_s"] for r in rows)
    lines.append(f"{len(runs)} runs and {len(rows) - len(runs)} probes, {total / 3600:.2f} h of compute"
                 f" (each run on {runs[0]['threads']} thread(s)).")
    return "\n".join(lines)
