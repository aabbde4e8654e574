"""What the study runs: tasks, learning rates, settings, the bench, the radius grid and the plans.

A run is a task, a setting (its overrides of ``conf/config.yaml``), a seed, a learning rate and a number of
optimizer steps, on a :class:`Bench` (the model, the data sizes and the attack). :meth:`Run.key` hashes all of it:
the key names the run in ``runs.jsonl`` and its folder of weights, and a run whose key is stored is not run again.

The learning-rate phase trains plain fine-tuning at each of :data:`LEARNING_RATES`; the study trains every setting of
:data:`SETTINGS` at the learning rate and step count that phase chose. The adversarial study trains the settings of
:data:`ADVERSARIAL` at :data:`REGIMES`' learning rates and steps, with ``{act}`` and ``{strong}`` the radii that the
probe's rule (:func:`acting_radii`) reads off the task's stored probe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from lightning_smart.config import RADIUS_GRID

TASKS = {"movies": "data=movies_ood", "trec": "data=trec", "rating": "data=movies_rating"}
"""``--task``: binary movie sentiment (tested in domain and on tweets, Amazon and NYT snippets), TREC-6 questions,
and the movie snippets' mean rating as regression."""
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
"""Lazy k = 4 is run on the best of these on validation (median over seeds; ties: first)."""

REGIMES = {"movies": (5e-5, 200), "trec": (2e-5, 400)}
"""The adversarial study's learning rate and optimizer steps per task: where plain fine-tuning's validation curve
peaks."""
PROBE_GRID = RADIUS_GRID
"""Relative radii (× each token's RMS) the probe measures; ε_act and ε_strong are read off them (the grid
``smart.epsilon=auto`` chooses from)."""
ACT_RATIO, STRONG_RATIO = 1.0, 10.0
"""ε_act: the smallest grid radius whose perturbation moves the output at least as much as dropout does (ratio of
the two ℓs ≥ 1); ε_strong: the smallest with ratio ≥ 10 (fixed before the probe ran)."""
ATTACK_RADII = tuple(sorted({0.02, *PROBE_GRID, *(round(3 * e, 6) for e in PROBE_GRID)}))
"""Every run of the adversarial study is attacked at each of these (× token RMS): 0.02 (the first study's radius),
every grid radius and three times each, so ε_act, ε_strong and 3·ε_strong are in it whatever the probe finds."""
ADVERSARIAL = {
    "plain": SETTINGS["plain"],
    "teacher": SETTINGS["teacher"],
    "act": "smart=relative_shared teacher=off smart.epsilon={act}",
    "strong": "smart=relative_shared teacher=off smart.epsilon={strong}",
    "mtdnn": "smart=mtdnn teacher=off",
    "mtdnn_teacher": "smart=mtdnn teacher=paper",
    "auto": "smart=relative_shared teacher=off smart.epsilon=auto",
    "paper": SETTINGS["paper"],
}
"""The adversarial study's settings; ``{act}``/``{strong}`` are the task's ε_act/ε_strong from its stored probe;
``auto`` calibrates ε_strong's rule (ratio ≥ 10) on training batches after each validation; ``paper`` is the paper's
SMART with its teacher (ε = 1e-5), the third setting the text attacks compare."""


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
    """Radii of the multi-radius attack; empty: the single radius ``attack_epsilon`` alone."""


QUICK = Bench(model="minilm_l2", train_size=32, batch_size=8, val_every=2, val_size=32, test_size=32, ood_size=32,
              attack_batches=1, attack_steps=2)
"""``--quick``: the 2-layer cut of the model, a few examples; a smoke run of every command."""
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
        """The run's name in ``runs.jsonl``: a hash of what it depends on (not of the setting's name)."""
        fields = asdict(bench)
        if not fields["attack_radii"]:  # hashed without the field, as the runs stored before it existed were
            del fields["attack_radii"]
        payload = json.dumps([self.task, self.overrides, self.seed, self.lr, self.steps, fields])
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,3`` → a list of seeds."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def chosen(known: dict[str, str], names: str | None, extra: list[str]) -> dict[str, str]:
    """The settings to run, name → overrides, in the order named.

    Args:
        known: the study's settings, name → overrides.
        names: ``--settings``, comma-separated (``None``: every one of ``known``).
        extra: ``--setting`` values, ``NAME:OVERRIDES``: settings added to ``known`` (or replacing one), and run.

    Raises:
        SystemExit: a name that is neither known nor added.
    """
    added = dict(text.partition(":")[::2] for text in extra)
    settings = known | added
    wanted = list(dict.fromkeys([*(n for n in (names or ",".join(known)).split(",") if n), *added]))
    unknown = [n for n in wanted if n not in settings]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; known: {', '.join(settings)}")
    return {name: settings[name] for name in wanted}


def plan(task: str, settings: dict[str, str], seeds: list[int], lr: float, steps: int) -> list[Run]:
    """Every setting at every seed, seed by seed (a partial study pairs its settings on its first seeds)."""
    return [Run(task, name, overrides, seed, lr, steps) for seed in seeds for name, overrides in settings.items()]


def lr_plan(task: str, seeds: list[int], steps: int) -> list[Run]:
    """Plain fine-tuning at each learning rate: the phase that chooses the study's ``--lr`` and ``--steps``."""
    return [Run(task, "plain@lr", SETTINGS["plain"], seed, lr, steps) for seed in seeds for lr in LEARNING_RATES]


def acting_radii(probe_row: dict[str, Any]) -> tuple[float | None, float | None]:
    """(ε_act, ε_strong) of a stored probe: the smallest relative grid radius with ratio ≥ 1, resp. ≥ 10."""
    relative = sorted((s["epsilon"], s["ratio"]) for s in probe_row["settings"] if s["relative"])
    act = next((e for e, ratio in relative if ratio >= ACT_RATIO), None)
    strong = next((e for e, ratio in relative if ratio >= STRONG_RATIO), None)
    return act, strong


def stored_probe(rows: list[dict[str, Any]], task_name: str) -> dict[str, Any] | None:
    """The task's latest probe among ``rows``."""
    return next((r for r in reversed(rows) if r.get("kind") == "probe" and r["task"] == task_name), None)


def adversarial_settings(rows: list[dict[str, Any]], task_name: str, names: list[str],
                         extra: dict[str, str] | None = None) -> dict[str, str]:
    """The adversarial settings named in ``names`` (of :data:`ADVERSARIAL` and ``extra``), with ``{act}`` and
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
