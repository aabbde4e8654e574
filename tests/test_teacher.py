"""The EMA teacher: the β schedule in closed form, checkpoints, adapters, strategies."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from lightning_smart import ConfigError, EMATeacherCallback, SmartConfig, SmartLightningModule
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import GRUClassifier, PlainModule, Snapshots, tiny_bert, token_batch, token_loader, trainer


@pytest.mark.parametrize(("half_life", "warmup"), [(None, 0.25), (0.5, 0.1)])
def test_teacher_after_n_steps_equals_the_closed_form_of_the_schedule(half_life: float | None, warmup: float) -> None:
    n = 8
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(probe=False), lr=1e-2)
    teacher = EMATeacherCallback(mu=1.0, beta=0.6, beta_final=0.9, warmup_fraction=warmup, half_life=half_life)
    snaps = Snapshots()
    trainer(max_steps=n, callbacks=[snaps, teacher]).fit(task, token_loader(n=64))
    assert teacher.num_updates == n and len(snaps.weights) == n + 1
    if half_life is None:
        betas = [0.6] * 2 + [0.9] * (n - 2)  # β0 for the first 25% of 8 optimizer steps
    else:
        betas = [0.5 ** (1 / (half_life * n))] * n
        assert betas[0] ** (half_life * n) == pytest.approx(0.5, rel=1e-12)
    assert [teacher.beta_at(t) for t in range(n)] == pytest.approx(betas, rel=1e-15)
    # θ̃_n = Π_t β_t θ_0 + Σ_t (1 − β_t) Π_{s>t} β_s θ_{t+1}
    for name, ema in teacher.ema.items():
        expected = torch.tensor(betas, dtype=torch.float64).prod() * snaps.weights[0][name]
        for t in range(n):
            tail = torch.tensor(betas[t + 1:], dtype=torch.float64).prod()
            expected = expected + (1 - betas[t]) * tail * snaps.weights[t + 1][name]
        torch.testing.assert_close(ema.double(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ema.double(), snaps.weights[-1][name])


def test_teacher_forward_uses_the_ema_weights_without_dropout_and_without_copying() -> None:
    task = SequenceTask(tiny_bert(dropout=0.3), num_labels=3)
    teacher = EMATeacherCallback()
    teacher.on_fit_start(None, task)  # type: ignore[arg-type]
    for e in teacher.ema.values():
        e.mul_(0.9)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    batch = token_batch()
    out = teacher.teacher_outputs(task, batch)
    assert out.grad_fn is None and task.model.training  # mode restored
    reference = tiny_bert(dropout=0.3)
    reference.load_state_dict({n.removeprefix("model."): e for n, e in teacher.ema.items()}, strict=False)
    expected = reference.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out, expected)
    assert all(torch.equal(p, before[n]) for n, p in task.named_parameters())


def _fit(tmp_path: Path, stop_at: int | None, ckpt: Path | None) -> tuple[SequenceTask, EMATeacherCallback]:
    pl.seed_everything(7)
    task = SequenceTask(tiny_bert(dropout=0.0), num_labels=3, smart=SmartConfig(probe=False), lr=1e-2)
    teacher = EMATeacherCallback(mu=1.0, beta=0.5, beta_final=0.8, warmup_fraction=0.5)
    callbacks: list[pl.Callback] = [teacher]
    if stop_at is not None:
        class Stop(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == stop_at:
                    trainer.should_stop = True

        callbacks += [Stop(), ModelCheckpoint(tmp_path / "stopped", every_n_train_steps=stop_at, save_last=True)]
    run = trainer(max_steps=6, callbacks=callbacks, enable_checkpointing=stop_at is not None)
    run.fit(task, token_loader(n=24, batch_size=8), ckpt_path=ckpt)
    return task, teacher


def test_stop_and_resume_ends_with_the_same_teacher_and_student(tmp_path: Path) -> None:
    straight, straight_teacher = _fit(tmp_path, None, None)
    _fit(tmp_path, 3, None)
    last = tmp_path / "stopped" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 3
    assert set(checkpoint["callbacks"]["EMATeacherCallback"]) == {"ema", "num_updates"}
    assert checkpoint["callbacks"]["EMATeacherCallback"]["num_updates"] == 3
    assert all(k.startswith(("model.", "val_", "test_")) for k in checkpoint["state_dict"])  # the student
    resumed, resumed_teacher = _fit(tmp_path, None, last)
    assert resumed_teacher.num_updates == 6
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    for name, value in straight_teacher.ema.items():
        assert torch.equal(value, resumed_teacher.ema[name]), name


def test_a_foreign_teacher_state_is_refused_with_its_names(tmp_path: Path) -> None:
    teacher = EMATeacherCallback()
    with pytest.raises(ValueError, match=r"the checkpoint's EMATeacherCallback state is not a teacher's"):
        teacher.load_state_dict({"weights": 1})
    teacher.load_state_dict({"ema": {"model.other.weight": torch.zeros(2)}, "num_updates": 2})
    with pytest.raises(ValueError, match=r"does not match this model's trainable parameters: missing \['model."):
        trainer(max_steps=1, callbacks=[teacher]).fit(SequenceTask(tiny_bert(), num_labels=3), token_loader())


def test_validate_logs_the_teachers_metrics_beside_the_students() -> None:
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(probe=False))
    run = trainer(max_epochs=1, callbacks=[EMATeacherCallback(validate=True)], limit_val_batches=2)
    run.fit(task, token_loader(), token_loader(seed=2))
    for metric in ("acc", "f1", "mcc"):
        assert f"val/{metric}" in run.callback_metrics and f"val/{metric}_teacher" in run.callback_metrics


def test_validate_needs_a_teacher_validation_step() -> None:
    with pytest.raises(ValueError, match=r"teacher.validate=true needs GRUClassifier.teacher_validation_step"):
        trainer(max_steps=1, callbacks=[EMATeacherCallback(validate=True)]).fit(GRUClassifier(), token_loader())


def _deepspeed_stage_3() -> DeepSpeedStrategy:
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # its __init__ needs the deepspeed package
    strategy.config = {"zero_optimization": {"stage": 3}}
    return strategy


class _StrategyOnly:
    def __init__(self, strategy: pl.strategies.Strategy) -> None:
        self.strategy = strategy


@pytest.mark.parametrize("make", [FSDPStrategy, _deepspeed_stage_3], ids=["fsdp", "deepspeed3"])
def test_sharded_strategies_are_refused_at_fit_start(make) -> None:
    strategy = make()
    teacher = EMATeacherCallback()
    with pytest.raises(ValueError) as refused:
        teacher.setup(_StrategyOnly(strategy), SequenceTask(tiny_bert(), num_labels=3), "fit")  # type: ignore[arg-type]
    assert str(refused.value) == (
        f"EMATeacherCallback does not support {type(strategy).__name__}: it shards the parameters behind its own"
        " wrappers and the teacher would hold one flat shard or gather the whole model. Shard with FSDP2 instead:"
        " trainer=fsdp in the app, or ModelParallelStrategy with fully_shard in configure_model (the teacher is"
        " sharded like the parameters); or strategy='ddp' (or DeepSpeed stage 1-2), or teacher=off."
    )


def test_a_lora_teacher_holds_the_adapter_parameters_only() -> None:
    peft = pytest.importorskip("peft", reason="the 'peft' extra is installed by .ci/run")

    class LoraTask(SmartLightningModule, pl.LightningModule):
        def __init__(self) -> None:
            super().__init__(smart=SmartConfig(probe=False))
            config = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
            self.model = peft.get_peft_model(tiny_bert(dropout=0.1), config)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)

    task = LoraTask()
    teacher = EMATeacherCallback()
    trainer(max_steps=2, callbacks=[teacher]).fit(task, token_loader())
    trainable = [p for p in task.parameters() if p.requires_grad]
    total = sum(p.numel() for p in task.parameters())
    count = sum(e.numel() for e in teacher.ema.values())
    assert count == sum(p.numel() for p in trainable) < total / 5
    assert sum(e.numel() * e.element_size() for e in teacher.ema.values()) == 4 * count
    assert all("lora_" in n or "classifier" in n for n in teacher.ema)
    assert task.smart_perturbation_site() is task.model.base_model.model.bert.embeddings


def test_teacher_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"teacher.beta=1.0 is not allowed: beta must be in \[0, 1\)"):
        EMATeacherCallback(beta=1.0)
    with pytest.raises(ConfigError, match=r"teacher.mu=-1 is not allowed: mu must be ≥ 0"):
        EMATeacherCallback(mu=-1)


def test_a_module_that_cannot_add_d_is_refused_at_setup() -> None:
    module = PlainModule()
    before = {n: v.clone() for n, v in module.state_dict().items()}
    message = (
        "EMATeacherCallback cannot add μ·D to PlainModule: it is not a SmartLightningModule (no smart_loss,"
        " smart_forward and smart_teacher). Put the mixin first in its bases, class PlainModule(SmartLightningModule,"
        " L.LightningModule), or remove the callback."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer(max_steps=2, callbacks=[EMATeacherCallback()]).fit(module, token_loader())
    assert all(torch.equal(v, before[n]) for n, v in module.state_dict().items())
