"""Text attacks at the end of a run: :mod:`lightning_smart.text_attack`'s recipes on the run's own splits.

With ``eval.text_attacks`` (``deepwordbug``, ``pruthi``, ``typos``), each attack runs on a seeded sample of
``eval.text_attack_examples`` examples of the validation split and of each test split (the same examples for every
attack and model), against the exported student (``model/``: the final weights) and, where validated, the exported
teacher (``teacher/``). The attacks are black-box: they query the folders as a user would load them. They run on the
global-zero process alone, after training and testing, whatever the strategy: under DDP and FSDP2 that process loads
the exported folders, whole, which every process has finished writing.

The metrics are named ``<attack>_acc`` (accuracy under attack), ``<attack>_success_rate`` (of the examples first
right), ``<attack>_words_perturbed`` (% of words, over successful attacks) and ``<attack>_queries`` (model queries per
example attacked), under ``val/`` and ``test/<split>/``, with the ``_teacher`` suffix for the teacher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import AutoModelForSequenceClassification

from lightning_smart.app.robustness import log_final
from lightning_smart.config import ConfigError
from lightning_smart.data.examples import Examples
from lightning_smart.text_attack import ATTACKS, classifier, run_attack, sample, scores

FIELDS = ("acc", "success_rate", "words_perturbed", "queries")
"""Each attack's metrics, named ``<attack>_<field>``."""


def metric_names(attack: str) -> list[str]:
    """The logged names of ``attack``'s metrics.

    Example:
        >>> metric_names("pruthi")
        ['pruthi_acc', 'pruthi_success_rate', 'pruthi_words_perturbed', 'pruthi_queries']
    """
    return [f"{attack}_{field}" for field in FIELDS]


def check_text_attacks(attacks: Sequence[Any], examples: Any, rate: Any, *, kind: str, num_labels: int | None,
                       pairs: bool) -> None:
    """Refuse, before training, attacks that do not exist, values they cannot run with, or a task they cannot score.

    Args:
        attacks, examples, rate: ``eval.text_attacks``, ``eval.text_attack_examples``, ``eval.typo_rate``.
        kind: the data module's kind: ``sequence``, ``tokens`` (tagging) or ``sft``.
        num_labels: ``data.num_labels`` (1: regression).
        pairs: whether the data are sentence pairs.

    Raises:
        ConfigError: naming the key and what is allowed.
    """
    attacks = list(attacks)
    shown = f"eval.text_attacks={attacks!r}"
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"{shown} is not allowed: {', '.join(map(repr, unknown))} is not a text attack; the"
                          f" attacks are {', '.join(ATTACKS)}")
    if len(set(attacks)) < len(attacks):
        raise ConfigError(f"{shown} is not allowed: list each attack once")
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise ConfigError(f"eval.text_attack_examples={examples!r} is not allowed: an integer ≥ 1 (a seeded sample of"
                          " each split), or null to attack every example")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0 < rate <= 1) or not math.isfinite(rate):
        raise ConfigError(f"eval.typo_rate={rate!r} is not allowed: the probability that a word gets a typo, in (0, 1]")
    if not attacks:
        return
    if kind != "sequence":
        raise ConfigError(f"{shown} is not allowed with {kind} data: a text attack changes one prediction per"
                          " example, and this task's outputs are per token (tagging, SFT); leave eval.text_attacks"
                          " empty")
    if num_labels == 1:
        raise ConfigError(f"{shown} is not allowed with data.num_labels=1: a regression has no prediction to"
                          " change; leave eval.text_attacks empty")
    if pairs:
        raise ConfigError(f"{shown} is not allowed with sentence pairs (data.pair_column): the attacks edit one"
                          " text; leave eval.text_attacks empty")


class TextAttackEvaluation:
    """A run's end-of-training text attacks, on the exported folders (:mod:`lightning_smart.app.text_attacks`).

    :meth:`run` attacks one split with each attack and adds the results to that split's metrics; :meth:`log` hands
    them all to the run's loggers (``metrics.csv``) at the final step; :meth:`summary` says how they were measured.

    Args:
        attacks, examples, rate: ``eval.text_attacks``, ``eval.text_attack_examples``, ``eval.typo_rate``.
        seed: the run's seed: the sample of each split and each attack's random characters.
        tokenizer: the data's tokenizer; ``max_length`` its truncation.
        student, teacher: the exported ``model/`` and ``teacher/`` folders (``None``: not exported).
        device: where the attacks run.
        active: whether this process attacks at all.
    """

    def __init__(self, attacks: Sequence[str], examples: int | None, rate: float, seed: int, tokenizer: Any,
                 max_length: int, student: Path | None, teacher: Path | None, device: torch.device,
                 active: bool = True) -> None:
        self.attacks = list(attacks) if active and student is not None else []
        self.examples, self.rate, self.seed = examples, float(rate), seed
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device
        self.folders = {"": student, "_teacher": teacher}
        self.logged: dict[str, float] = {}
        self.sizes: dict[str, int] = {}
        self.seconds: dict[str, float] = dict.fromkeys(self.attacks, 0.0)
        self._predict: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: Any, trainer: pl.Trainer, tokenizer: Any, out: Path,
                    exported: dict[str, str]) -> TextAttackEvaluation:
        """From the run's config, its Trainer and what it exported (folder names relative to ``out``)."""
        folder = {name: out / exported[name] if name in exported else None for name in ("model", "teacher")}
        return cls(list(cfg.eval.text_attacks), cfg.eval.text_attack_examples, cfg.eval.typo_rate, cfg.seed,
                   tokenizer, cfg.data.max_length, folder["model"], folder["teacher"], trainer.strategy.root_device,
                   active=trainer.is_global_zero)

    def predict(self, suffix: str) -> Any:
        """The exported model of ``suffix`` (``""``: the student, ``"_teacher"``) as the attacks query it."""
        if suffix not in self._predict:
            model = AutoModelForSequenceClassification.from_pretrained(str(self.folders[suffix])).to(self.device)
            self._predict[suffix] = classifier(model, self.tokenizer, max_length=self.max_length)
        return self._predict[suffix]

    def run(self, split: str, data: Examples, into: dict[str, float],
            into_teacher: dict[str, float] | None = None) -> None:
        """Attack a sample of ``split`` (``val`` or ``test/<name>``) with each attack and add the metrics to ``into``;
        the teacher's go to ``into_teacher``, or to ``into`` with the ``_teacher`` suffix when that is ``None``."""
        if not self.attacks:
            return
        chosen = sample(len(data), self.examples, self.seed)
        texts, labels = [data.texts[i] for i in chosen], [int(data.labels[i]) for i in chosen]
        self.sizes[split] = len(chosen)
        for suffix, folder in self.folders.items():
            if folder is None:
                continue
            for attack in self.attacks:
                start = time.perf_counter()
                found = scores(run_attack(attack, self.predict(suffix), texts, labels, seed=self.seed,
                                          typo_rate=self.rate))
                self.seconds[attack] += time.perf_counter() - start
                values = dict(zip(metric_names(attack), (found.accuracy, found.success_rate,
                                                         found.words_perturbed, found.queries), strict=True))
                if suffix and into_teacher is not None:
                    into_teacher |= values
                else:
                    into |= {f"{name}{suffix}": value for name, value in values.items()}
                self.logged |= {f"{split}/{name}{suffix}": value for name, value in values.items()}

    def log(self, trainer: pl.Trainer) -> None:
        """Every result so far, to each of the run's loggers, at the run's final step."""
        log_final(trainer, self.logged)

    def summary(self) -> dict[str, Any] | None:
        """How the text attacks were measured, for ``summary.json`` (``None`` when they were not)."""
        if not self.attacks:
            return None
        return {"attacks": self.attacks, "examples": dict(self.sizes), "sample": self.examples, "seed": self.seed,
                "typo_rate": self.rate, "teacher": self.folders["_teacher"] is not None,
                "models": "the exported folders (model/, teacher/)",
                "seconds": {attack: round(s, 1) for attack, s in self.seconds.items()}}


__all__ = ["FIELDS", "TextAttackEvaluation", "check_text_attacks", "metric_names"]
