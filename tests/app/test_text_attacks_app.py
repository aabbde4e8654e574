"""``eval.text_attacks``: the app's text-attack metrics against the attacks run by hand on the exported models, in
``summary.json`` and ``metrics.csv``; and the refusals, each with its exact message."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from lightning_smart.app.checks import check, data_module
from lightning_smart.app.cli import train
from lightning_smart.app.text_attacks import metric_names
from lightning_smart.config import ConfigError
from lightning_smart.text_attack import ATTACKS, classifier, run_attack, sample, scores
from tests.helpers.app import TINY, app_config

EXAMPLES = 4
TEXT = [*TINY, "teacher.validate=true", f"eval.text_attacks=[{','.join(ATTACKS)}]",
        f"eval.text_attack_examples={EXAMPLES}", "eval.typo_rate=0.3", "seed=3"]


@pytest.mark.slow
def test_the_apps_text_attacks_are_the_attacks_on_the_exported_models(tmp_path: Path) -> None:
    with app_config(TEXT) as cfg:
        summary = train(cfg, tmp_path)
        data = data_module(cfg.data)  # a data module of its own: the same splits, from the seed
    splits = data.load()
    logged = {k: float(v) for row in csv.DictReader((tmp_path / "csv/metrics.csv").open()) for k, v in row.items()
              if v and any(a in k for a in ATTACKS)}
    assert summary["text_attacks"]["attacks"] == list(ATTACKS)
    assert summary["text_attacks"]["examples"] == {"val": EXAMPLES, "test/movies": EXAMPLES}
    assert set(summary["text_attacks"]["seconds"]) == set(ATTACKS)
    for who, folder in (("", "model"), ("_teacher", "teacher")):
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / folder)
        predict = classifier(model, data.tokenizer, max_length=32)
        for split, examples in (("val", splits.val), ("test/movies", splits.test["movies"])):
            chosen = sample(len(examples), EXAMPLES, seed=3)
            texts, labels = [examples.texts[i] for i in chosen], [examples.labels[i] for i in chosen]
            found = {("", "val"): summary["val"], ("_teacher", "val"): summary["val_teacher"],
                     ("", "test/movies"): summary["test"]["movies"],
                     ("_teacher", "test/movies"): summary["test_teacher"]["movies"]}[who, split]
            for attack in ATTACKS:
                by_hand = scores(run_attack(attack, predict, texts, labels, seed=3, typo_rate=0.3))
                expected = [by_hand.accuracy, by_hand.success_rate, by_hand.words_perturbed, by_hand.queries]
                assert [found[name] for name in metric_names(attack)] == expected, (split, who, attack)
                assert [logged[f"{split}/{name}{who}"] for name in metric_names(attack)] == pytest.approx(expected)
                assert 0.0 <= by_hand.accuracy <= by_hand.clean_accuracy <= 1.0


REFUSED = {
    "unknown": (["eval.text_attacks=[deepwordbug,textfooler]"], "eval.text_attacks=['deepwordbug', 'textfooler'] is"
                " not allowed: 'textfooler' is not a text attack; the attacks are deepwordbug, pruthi, typos"),
    "twice": (["eval.text_attacks=[typos,typos]"], "eval.text_attacks=['typos', 'typos'] is not allowed: list each"
              " attack once"),
    "examples": (["eval.text_attacks=[typos]", "eval.text_attack_examples=0"], "eval.text_attack_examples=0 is not"
                 " allowed: an integer ≥ 1 (a seeded sample of each split), or null to attack every example"),
    "rate": (["eval.text_attacks=[typos]", "eval.typo_rate=1.5"], "eval.typo_rate=1.5 is not allowed: the"
             " probability that a word gets a typo, in (0, 1]"),
    "tagging": (["data=tokens", "eval.text_attacks=[pruthi]"], "eval.text_attacks=['pruthi'] is not allowed with"
                " tokens data: a text attack changes one prediction per example, and this task's outputs are per"
                " token (tagging, SFT); leave eval.text_attacks empty"),
    "regression": (["data=movies_rating", "eval.text_attacks=[deepwordbug]"], "eval.text_attacks=['deepwordbug'] is"
                   " not allowed with data.num_labels=1: a regression has no prediction to change; leave"
                   " eval.text_attacks empty"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_text_attack_setting_is_refused_before_training(case: str) -> None:
    overrides, message = REFUSED[case]
    with app_config([*TINY, *overrides]) as cfg, pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value) == message
