"""``eval.robust_radii``: the app's robust accuracy against the attack run by hand on the exported models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from transformers import AutoModelForSequenceClassification

from lightning_smart.app.checks import check, data_module
from lightning_smart.app.cli import train
from lightning_smart.app.robustness import refuse_sharded
from lightning_smart.attack import pgd_attack, robust_accuracy
from lightning_smart.config import ConfigError
from tests.helpers.app import TINY, app_config, smart_train

RADII = (0.03, 0.1)
# Evaluation batches of 8: the 64 validation (and test) snippets make 8 batches, of which the app attacks every
# second one (4 batches, the default), 32 examples per split.
ROBUST = [*TINY, "data.eval_batch_size=8", "eval.robust_radii=[0.1,0.03]", "eval.robust_steps=3"]


def _by_hand(folder: Path, batches: list[dict[str, torch.Tensor]]) -> tuple[list[float], list[float], float]:
    """The exported model, loaded by its Auto class and attacked with :func:`pgd_attack` at each radius.

    Returns: robust accuracy at each radius as the app defines it (right on the clean input and under every attack
    of radius ≤ r), :func:`robust_accuracy` at each radius, and the fraction of examples wrong on the clean input
    but right under an attack.
    """
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    site = model.base_model.embeddings

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    survived, flipped, total = [0] * len(RADII), 0, 0
    for batch in batches:
        right = None
        for i, radius in enumerate(RADII):
            result = pgd_attack(model, site, forward, batch, batch["labels"], batch["attention_mask"],
                                epsilon=radius, steps=3, relative=True)
            clean = result.clean.argmax(-1) == batch["labels"]
            attacked = result.adversarial.argmax(-1) == batch["labels"]
            flipped += int((attacked & ~clean).sum())
            right = (clean if right is None else right) & attacked
            survived[i] += int(right.sum())
        total += len(batch["labels"])
    direct = [robust_accuracy(model, site, forward, batches, epsilon=r, steps=3, relative=True)["robust_acc"]
              for r in RADII]
    return [s / total for s in survived], direct, flipped / total


@pytest.mark.slow
def test_the_apps_robust_accuracy_is_the_attack_on_the_exported_models(tmp_path: Path) -> None:
    """Student and validated teacher, on validation and test (the final weights here: no best checkpoint is kept)."""
    with app_config(ROBUST) as cfg:
        summary = train(cfg, tmp_path)
        data = data_module(cfg.data)  # a data module of its own: the same splits, from the seed
    data.setup("fit")
    loaders = {"val": data.val_dataloader(), "movies": data.test_dataloader()[0]}
    found = {"val": summary["val"], "movies": summary["test"]["movies"]}
    teacher_found = {"val": summary["val_teacher"], "movies": summary["test_teacher"]["movies"]}
    rows = list(csv.DictReader((tmp_path / "csv/metrics.csv").open()))
    logged = {k: float(v) for row in rows for k, v in row.items() if "robust" in k and v}
    for split, loader in loaders.items():
        every = list(loader)
        assert len(every) == 8
        attacked = every[::2]  # every k-th batch of the length-sorted loader, k = 8 // 4
        for who, folder, metrics in (("", "model", found), ("_teacher", "teacher", teacher_found)):
            nested, direct, flipped = _by_hand(tmp_path / folder, attacked)
            assert [metrics[split][f"robust_acc@{r:g}"] for r in RADII] == nested, (split, who)
            # No example wrong on the clean input was right under an attack: the nested rule then gives, at the
            # smallest radius, exactly what robust_accuracy counts.
            assert flipped == 0 and nested[0] == direct[0], (split, who)
            prefix = "val" if split == "val" else f"test/{split}"
            assert [logged[f"{prefix}/robust_acc@{r:g}{who}"] for r in RADII] == nested
    assert summary["robust"] == {"radii": [0.03, 0.1], "steps": 3, "batches": 4, "norm": "inf", "scale": "token RMS",
                                 "examples": {"val": 32, "test/movies": 32}, "teacher": True,
                                 "seconds": summary["robust"]["seconds"]}
    assert json.loads((tmp_path / "summary.json").read_text())["test_teacher"] == summary["test_teacher"]
    # The attack is a measurement: the clean metrics are those of a run without it.
    with app_config([*TINY, "data.eval_batch_size=8"]) as cfg:
        plain = train(cfg, tmp_path / "without")
    assert plain["robust"] is None and plain["test_teacher"] is None
    assert {k: v for k, v in summary["val"].items() if "robust" not in k} == plain["val"]
    assert {k: v for k, v in summary["test"]["movies"].items() if "robust" not in k} == plain["test"]["movies"]


# Each refusal, with its exact message.
REFUSED = {
    "negative": (["eval.robust_radii=[0.1,-0.03]"], "eval.robust_radii=[0.1, -0.03] is not allowed: each radius"
                 " must be a finite number > 0 (a multiple of each token's RMS)"),
    "twice": (["eval.robust_radii=[0.1,0.1]"], "eval.robust_radii=[0.1, 0.1] is not allowed: list each radius once"),
    "steps": (["eval.robust_radii=[0.1]", "eval.robust_steps=0"],
              "eval.robust_steps=0 is not allowed: PGD's ascent steps, an integer ≥ 1"),
    "batches": (["eval.robust_radii=[0.1]", "eval.robust_batches=0"],
                "eval.robust_batches=0 is not allowed: an integer ≥ 1, or null to attack every batch"),
    "tagging": (["data=tokens", "eval.robust_radii=[0.1]"], "eval.robust_radii=[0.1] is not allowed with tokens data:"
                " robust accuracy counts one prediction per example, and this task's outputs are per token (tagging,"
                " SFT); leave eval.robust_radii empty"),
    "sft": (["data=sft", "eval.robust_radii=[0.1]"], "eval.robust_radii=[0.1] is not allowed with"
            " sft data: robust accuracy counts one prediction per example, and this task's outputs are per token"
            " (tagging, SFT); leave eval.robust_radii empty"),
    "regression": (["data=movies_rating", "eval.robust_radii=[0.1]"], "eval.robust_radii=[0.1] is not allowed with"
                   " data.num_labels=1: a regression has no accuracy to attack; leave eval.robust_radii empty"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_eval_setting_is_refused_before_training(case: str) -> None:
    overrides, message = REFUSED[case]
    with app_config([*TINY, *overrides]) as cfg, pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value) == message


def test_the_command_line_refuses_a_negative_radius_and_writes_nothing(tmp_path: Path) -> None:
    result = smart_train([*TINY, "eval.robust_radii=[-0.1]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 1
    assert ("Error in the config (nothing was written): eval.robust_radii=[-0.1] is not allowed: each radius must be"
            " a finite number > 0 (a multiple of each token's RMS)\n") in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_fsdp1_is_refused_with_the_alternative_named_and_fsdp2_accepted() -> None:
    flattened = FSDPStrategy()  # Lightning's FSDP1 (a Trainer with it needs a GPU)
    with pytest.raises(ConfigError) as raised:
        refuse_sharded(flattened, [0.1])
    assert str(raised.value) == ("eval.robust_radii=[0.1] is not allowed with FSDPStrategy: the attack runs on a whole"
                                 " model or on FSDP2's sharded one, not on this strategy's flattened parameters; train"
                                 " with trainer=fsdp (FSDP2) or trainer.strategy=ddp")
    refuse_sharded(flattened, [])  # no attack, nothing to refuse
    refuse_sharded(ModelParallelStrategy(), [0.1])  # FSDP2: tests/test_fsdp.py attacks the sharded model
    refuse_sharded(pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False).strategy, [0.1])
