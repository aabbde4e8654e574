"""The stabilizers and the cost knob: ramp-ups, the EMA warm-up and lazy regularization."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from typing import Any

import pytest
import torch

from lightning_smart import ConfigError, EMATeacherCallback, SmartConfig
from lightning_smart.schedule import ema_warmup, rampup
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import GRUClassifier, Snapshots, tiny_bert, token_loader, trainer


class Recording(SequenceTask):
    """Records, per micro-batch, the optimizer step, the logged weights and which terms were computed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self.computed: Counter[tuple[str, int]] = Counter()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.records.append({"step": self.global_step})
        return super().training_step(batch, batch_idx)

    def smart_perturbation(self, *args: Any, **kwargs: Any) -> Any:
        self.computed["R_s", self.global_step] += 1
        return super().smart_perturbation(*args, **kwargs)

    def _smart_log(self, values: Any) -> None:
        self.records[-1] |= {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in values.items()}


class CountingTeacher(EMATeacherCallback):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.computed: Counter[int] = Counter()

    def teacher_outputs(self, module: Any, batch: Any) -> torch.Tensor:
        self.computed[module.global_step] += 1
        return super().teacher_outputs(module, batch)


def test_the_ramp_at_zero_half_and_end_equals_its_closed_form() -> None:
    total = 40
    assert rampup(0, total, 1.0) == math.exp(-5.0)
    assert rampup(total // 2, total, 1.0) == math.exp(-5.0 * 0.25)
    assert rampup(total, total, 1.0) == 1.0
    assert rampup(10, total, 0.5) == math.exp(-5.0 * (1 - 10 / 20) ** 2) and rampup(20, total, 0.5) == 1.0
    assert all(rampup(t, total, 0.0) == 1.0 for t in range(total))


def test_the_ramp_ups_weight_each_step_of_a_fit_as_the_closed_form_says() -> None:
    n, lambda_s, mu = 8, 2.0, 0.5
    task = Recording(tiny_bert(dropout=0.1), num_labels=3, lr=1e-2,
                     smart=SmartConfig(lambda_s=lambda_s, probe=False, rampup=0.5))
    teacher = EMATeacherCallback(mu=mu, rampup=1.0)
    trainer(max_steps=n, callbacks=[teacher]).fit(task, token_loader(n=64))
    assert [r["step"] for r in task.records] == list(range(n))
    for r in task.records:
        t = r["step"]
        assert r["smart/lambda_s"] == (lambda_s * math.exp(-5 * (1 - t / 4) ** 2) if t < 4 else lambda_s)
        assert r["smart/mu"] == mu * math.exp(-5 * (1 - t / n) ** 2)
        assert torch.equal(r["train/loss"], r["train/task_loss"] + r["smart/lambda_s"] * r["smart/adv_reg"]
                           + r["smart/mu"] * r["smart/bregman"])


def test_the_ema_warm_up_makes_the_teacher_the_mean_of_the_weights_so_far() -> None:
    n = 6
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(probe=False), lr=1e-2)
    teacher = EMATeacherCallback(mu=1.0, beta=0.99, beta_final=0.999, ema_warmup=True)
    snaps = Snapshots()
    trainer(max_steps=n, callbacks=[snaps, teacher]).fit(task, token_loader(n=64))
    assert [teacher.beta_at(t) for t in range(n)] == [1 - 1 / (t + 2) for t in range(n)]
    for name, ema in teacher.ema.items():  # 1 − 1/(t + 1) < β throughout: the plain mean of θ_0 … θ_n
        mean = torch.stack([w[name] for w in snaps.weights]).mean(0)
        torch.testing.assert_close(ema.double(), mean, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ema.double(), snaps.weights[0][name])


def test_the_ema_warm_up_gives_way_to_the_schedules_beta() -> None:
    teacher = EMATeacherCallback(beta=0.6, beta_final=0.7, warmup_fraction=0.5, ema_warmup=True)
    teacher.total_steps = 8
    assert [teacher.beta_at(t) for t in range(8)] == [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7]
    assert [ema_warmup(0.999, t) for t in (1, 2, 4)] == [0.5, 1 - 1 / 3, 0.8]


def _lazy_run(every: int, dropout: float) -> tuple[Recording, CountingTeacher]:
    smart = SmartConfig(lambda_s=2.0, epsilon=0.05, sigma=0.01, eta=0.05, probe=False, every_n_steps=every)
    task = Recording(tiny_bert(dropout=dropout, seed=4), num_labels=3, lr=1e-2, smart=smart)
    teacher = CountingTeacher(mu=0.5, beta=0.5, beta_final=0.8)
    torch.manual_seed(11)
    trainer(max_steps=7, accumulate_grad_batches=2, callbacks=[teacher]).fit(task, token_loader(n=48, batch_size=4))
    return task, teacher


class PlainOrFull(Recording):
    """The lazy schedule written out: a plain step, or a full SMART step with weights × 3, by hand."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step % 3 == 0:
            return super().training_step(batch, batch_idx)
        self.records.append({"step": self.global_step})
        return self.smart_task_loss(self.smart_forward(batch), batch)


def test_lazy_regularization_acts_on_every_kth_step_with_weights_times_k() -> None:
    task, teacher = _lazy_run(3, dropout=0.1)
    # 7 optimizer steps of 2 micro-batches: R_s and D on steps 0, 3 and 6 only, both micro-batches each.
    assert [r["step"] for r in task.records] == [s for s in range(7) for _ in range(2)]
    assert task.computed == Counter({("R_s", 0): 2, ("R_s", 3): 2, ("R_s", 6): 2})
    assert teacher.computed == Counter({0: 2, 3: 2, 6: 2})
    for r in task.records:
        if r["step"] % 3 == 0:
            assert r["smart/lambda_s"] == 2.0 * 3 and r["smart/mu"] == 0.5 * 3
        else:
            assert set(r) == {"step", "train/loss", "train/task_loss"}
            assert torch.equal(r["train/loss"], r["train/task_loss"])
    assert teacher.num_updates == 7  # θ̃ still follows every optimizer step

    # The same run written out by hand (plain steps, and full steps with λs·3 and μ·3), dropout masks and all:
    # equal weights and teacher, bit for bit.
    smart = SmartConfig(lambda_s=6.0, epsilon=0.05, sigma=0.01, eta=0.05, probe=False)
    by_hand = PlainOrFull(tiny_bert(dropout=0.1, seed=4), num_labels=3, lr=1e-2, smart=smart)
    hand_teacher = EMATeacherCallback(mu=1.5, beta=0.5, beta_final=0.8)
    torch.manual_seed(11)
    trainer(max_steps=7, accumulate_grad_batches=2, callbacks=[hand_teacher]).fit(
        by_hand, token_loader(n=48, batch_size=4))
    for name, value in task.state_dict().items():
        assert torch.equal(value, by_hand.state_dict()[name]), name
    for name, value in teacher.ema.items():
        assert torch.equal(value, hand_teacher.ema[name]), name


def test_each_option_off_leaves_the_step_as_it_was() -> None:
    smart = SmartConfig(lambda_s=3.0, epsilon=0.05, sigma=0.01, eta=0.05, probe=False, rampup=0.0, every_n_steps=1)
    task = Recording(tiny_bert(dropout=0.1), num_labels=3, lr=1e-2, smart=smart)
    teacher = EMATeacherCallback(mu=0.7, rampup=0.0, ema_warmup=False)
    trainer(max_steps=4, callbacks=[teacher]).fit(task, token_loader(n=32))
    for r in task.records:  # F = L + λs·R_s + μ·D with the configured weights themselves, every step
        assert r["smart/lambda_s"] == 3.0 and r["smart/mu"] == 0.7
        assert torch.equal(r["train/loss"], r["train/task_loss"] + 3.0 * r["smart/adv_reg"] + 0.7 * r["smart/bregman"])
    teacher.total_steps = 4
    assert [teacher.beta_at(t) for t in range(4)] == [0.99, 0.999, 0.999, 0.999]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rampup": 1.5}, "smart.rampup=1.5 is not allowed: rampup must be a fraction of the run's optimizer steps"),
    ({"every_n_steps": 0}, "smart.every_n_steps=0 is not allowed: every_n_steps must be an integer ≥ 1"),
    ({"every_n_steps": 2.0}, "smart.every_n_steps=2.0 is not allowed: every_n_steps must be an integer ≥ 1"),
])
def test_bad_smart_options_name_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SmartConfig(**kwargs)


def test_bad_teacher_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"teacher.rampup=-0.1 is not allowed: rampup must be a fraction"):
        EMATeacherCallback(rampup=-0.1)
    with pytest.raises(ConfigError, match=r"teacher.ema_warmup=1 is not allowed: ema_warmup must be true or false"):
        EMATeacherCallback(ema_warmup=1)  # type: ignore[arg-type]


def test_a_ramp_needs_a_run_of_known_length() -> None:
    task = GRUClassifier()  # a constant learning rate: nothing else needs the run's length
    task.smart = SmartConfig(**(asdict(task.smart) | {"rampup": 0.2}))
    with pytest.raises(ConfigError, match=r"smart.rampup=0.2 is a fraction of the run's optimizer steps, but this"):
        trainer(max_epochs=-1, max_steps=-1).fit(task, token_loader())
    teacher = EMATeacherCallback(warmup_fraction=0.0, rampup=0.3)
    with pytest.raises(ValueError, match=r"teacher.rampup is a fraction of the run's optimizer steps, but this run"):
        trainer(max_epochs=-1, max_steps=-1, callbacks=[teacher]).fit(GRUClassifier(), token_loader())
