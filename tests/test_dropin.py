"""Drop-in use: a training_step of your own calls smart_loss; one that does not is refused."""

from __future__ import annotations

import re
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from lightning_smart import EMATeacherCallback, SmartConfig, SmartLightningModule
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import tiny_bert, token_loader, trainer

SMART = SmartConfig(lambda_s=2.0, epsilon=0.05, sigma=0.01, eta=0.05, probe=False)


def refusal(owner: str) -> str:
    return (
        f"{owner}.training_step replaces SmartLightningModule's but did not call self.smart_loss(batch, batch_idx):"
        " SMART would silently do nothing. Either compute `loss = self.smart_loss(batch, batch_idx)` in your"
        " training_step and return it (F, with the smart/* metrics logged), or delete your training_step and let"
        " SmartLightningModule's run."
    )


class Existing(pl.LightningModule):
    """An existing project's module, before SMART: its model and optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_bert(dropout=0.1, seed=3)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class UsesTheMixinsStep(SmartLightningModule, Existing):
    pass


class KeepsItsStep(SmartLightningModule, Existing):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.smart_loss(batch, batch_idx)
        self.log("train/mine", float(batch_idx))
        return loss


class ForgetsSmartLoss(SmartLightningModule, Existing):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits, batch["labels"])


class TaskWithItsOwnStep(SequenceTask):
    """A subclass of a ready SMART module that overrides training_step without calling the mixin's."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.smart_task_loss(self.smart_forward(batch), batch)


class ManualPlain(SmartLightningModule, Existing):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.smart_task_loss(self.smart_forward(batch), batch))
        optimizer.step()


class SkipsItsFirstBatch(KeepsItsStep):
    """Returns None (Lightning skips the batch) first, then its parent's step through super()."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        return None if batch_idx == 0 else super().training_step(batch, batch_idx)


def _fit(module: pl.LightningModule, steps: int = 4, teacher: EMATeacherCallback | None = None) -> list[dict]:
    logged: list[dict] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append({k: v.clone() for k, v in trainer.callback_metrics.items()})

    callbacks: list[pl.Callback] = [Record()] + ([teacher] if teacher is not None else [])
    trainer(max_steps=steps, callbacks=callbacks).fit(module, token_loader(n=40))
    return logged


def test_an_own_training_step_that_calls_smart_loss_is_the_smart_step_bit_for_bit() -> None:
    runs = []
    for cls in (UsesTheMixinsStep, KeepsItsStep):
        pl.seed_everything(5)
        module, teacher = cls(smart=SMART), EMATeacherCallback(mu=0.5)
        runs.append((module, teacher, _fit(module, teacher=teacher)))
    (mixin, mixin_teacher, mixin_logs), (own, own_teacher, own_logs) = runs
    initial = tiny_bert(dropout=0.1, seed=3).state_dict()
    assert sum(not torch.equal(v, initial[n.removeprefix("model.")]) for n, v in own.state_dict().items()) > 10
    for name, value in mixin.state_dict().items():
        assert torch.equal(value, own.state_dict()[name]), name
    for name, value in mixin_teacher.ema.items():
        assert torch.equal(value, own_teacher.ema[name]), name
    assert [r["train/mine"].item() for r in own_logs] == [0.0, 1.0, 2.0, 3.0]
    for mine, theirs in zip(own_logs, mixin_logs, strict=True):
        assert {k for k in mine if k.startswith("smart/")} >= {"smart/adv_reg", "smart/bregman", "smart/delta_norm"}
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize(("make", "teacher", "owner"), [
    (lambda: ForgetsSmartLoss(smart=SMART), False, "ForgetsSmartLoss"),
    (lambda: ForgetsSmartLoss(smart=SmartConfig(lambda_s=0.0)), True, "ForgetsSmartLoss"),  # D alone is SMART too
    (lambda: TaskWithItsOwnStep(tiny_bert(dropout=0.1), num_labels=3, smart=SMART), False, "TaskWithItsOwnStep"),
    (lambda: ManualPlain(smart=SMART), False, "ManualPlain"),
], ids=["own-step", "teacher-only", "subclass-of-a-ready-module", "manual-optimization"])
def test_an_own_training_step_without_smart_loss_is_refused_at_its_first_step(make, teacher: bool, owner: str) -> None:
    module = make()
    before = {n: v.clone() for n, v in module.state_dict().items()}
    with pytest.raises(TypeError, match=re.escape(refusal(owner))):
        _fit(module, teacher=EMATeacherCallback(mu=1.0) if teacher else None)
    if module.automatic_optimization:  # refused before any backward or optimizer step
        assert all(torch.equal(v, before[n]) for n, v in module.state_dict().items())


def test_without_lambda_s_or_a_teacher_an_own_step_is_plain_fine_tuning_and_allowed() -> None:
    module = ForgetsSmartLoss(smart=SmartConfig(lambda_s=0.0))
    _fit(module, steps=2)
    assert module.trainer.global_step == 2


def test_a_skipped_first_batch_and_super_calls_pass_the_check() -> None:
    module = SkipsItsFirstBatch(smart=SMART)
    logs = _fit(module, steps=3)
    assert module.trainer.global_step == 3 and module._smart_loss_calls == 2  # batch 0 returned None
    assert all(torch.isfinite(r["smart/adv_reg"]) and r["smart/adv_reg"] > 0 for r in logs[1:])


def test_the_mixin_after_lightning_module_is_refused_where_the_class_is_defined() -> None:
    message = (
        "Late lists SmartLightningModule after LightningModule in its bases, so Lightning's training_step and"
        " __init__ hide the mixin's: write class Late(SmartLightningModule, L.LightningModule), the mixin first."
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        class Late(pl.LightningModule, SmartLightningModule):
            pass


class FromPretrained(SmartLightningModule, pl.LightningModule):
    """The Lightning tutorial's module made SMART: the model as ``from_pretrained`` returns it (eval mode)."""

    def __init__(self, path: str, train_mode: bool) -> None:
        super().__init__(smart=SMART)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, num_hidden_layers=2)
        self.model = model.train() if train_mode else model

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


@pytest.mark.parametrize("train_mode", [False, True], ids=["left-in-eval-mode", "after-train"])
def test_a_model_left_in_eval_mode_is_warned_about_at_fit_start(minilm_path: str, train_mode: bool) -> None:
    module = FromPretrained(minilm_path, train_mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=1).fit(module, token_loader(8, 8))
    said = [str(w.message) for w in caught if "dropout off" in str(w.message)]
    if train_mode:
        assert said == []
    else:  # Lightning kept the submodules' eval mode: every dropout stayed off in training
        assert not any(m.training for m in module.model.modules() if isinstance(m, torch.nn.Dropout))
        assert len(said) == 1 and said[0].startswith("The model trains with dropout off: its ")
        assert "Call .train() on it where you load it" in said[0]
