"""The SMART step on real modules: float64 reference, plain equivalence, other models, guards."""

from __future__ import annotations

import copy
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_smart import (
    ConfigError,
    EMATeacherCallback,
    SmartConfig,
    SmartLightningModule,
    bernoulli_symmetric_kl,
    squared_error,
    symmetric_kl,
)
from lightning_smart.divergence import is_regression
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import (
    VOCAB,
    GRUClassifier,
    PlainModule,
    tiny_bert,
    token_batch,
    token_examples,
    token_loader,
    trainer,
)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    lp, lq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    return ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1).mean()


def attach_teacher(task: SequenceTask, mu: float = 0.7, shift: float = 0.02) -> EMATeacherCallback:
    teacher = EMATeacherCallback(mu=mu)
    teacher.on_fit_start(None, task)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(5)
    for e in teacher.ema.values():
        e.add_(shift * torch.randn(e.shape, generator=g))
    return teacher


@pytest.mark.parametrize("norm", ["inf", "l2"])
@pytest.mark.parametrize("steps", [1, 2])
def test_full_loss_matches_float64_recomputation(norm: str, steps: int) -> None:
    smart = SmartConfig(lambda_s=3.0, epsilon=0.1, sigma=0.05, eta=0.1, ascent_steps=steps, norm=norm, probe=False)
    task = SequenceTask(tiny_bert(dropout=0.0, init_range=0.3), num_labels=3, smart=smart)
    teacher = attach_teacher(task)
    logged: dict[str, torch.Tensor] = {}
    task._smart_log = logged.update  # type: ignore[method-assign]
    batch = token_batch()
    loss = task.training_step(batch, 0)

    # Independent float64 recomputation of steps 1–6 (docs/algorithm.md).
    student = copy.deepcopy(task.model).double()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    def f(model: nn.Module, delta: torch.Tensor | None = None) -> torch.Tensor:
        hook = model.bert.embeddings.register_forward_hook(lambda m, i, o: o + delta) if delta is not None else None
        out = model(input_ids=ids, attention_mask=mask).logits
        if hook is not None:
            hook.remove()
        return out

    z = f(student)
    task_loss = F.cross_entropy(z, labels)
    real = mask.double()[..., None]
    g = torch.Generator().manual_seed(task.smart_noise_seed(0))
    delta = (torch.randn((*ids.shape, 16), generator=g) * smart.sigma).double() * real
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(ref_kl(f(student, delta), z.detach()), delta)
        grad = grad * real
        flat = grad.reshape(len(ids), -1)
        length = flat.abs().amax(-1) if norm == "inf" else flat.norm(dim=-1)
        delta = delta.detach() + smart.eta * grad / (length[:, None, None] + 1e-12)
        if norm == "inf":
            delta = delta.clamp(-smart.epsilon, smart.epsilon)
        else:
            n = delta.reshape(len(ids), -1).norm(dim=-1)[:, None, None]
            delta = torch.where(n > smart.epsilon, delta * smart.epsilon / n, delta)
    adv_reg = ref_kl(f(student, delta), z)
    ema_model = copy.deepcopy(task.model).double()
    ema_model.load_state_dict({k.removeprefix("model."): v for k, v in teacher.ema.items()}, strict=False)
    bregman = ref_kl(z, f(ema_model.eval()))
    expected = task_loss + smart.lambda_s * adv_reg + teacher.mu * bregman

    assert adv_reg > 1e-4 and bregman > 1e-4  # both terms matter at these settings
    # The step runs in float32: each of the ≈ 30 float32 operations in sequence from the embeddings to F (2 layers
    # of attention, FFN and 2 LayerNorms, the pooler, the head, log-softmax, the three forwards' divergences) rounds
    # by at most eps/2 relative, so to first order F is off by ≲ 15 eps; 64 eps (7.6e-6) leaves a factor of 4 for
    # the conditioning of softmax and LayerNorm, whatever kernels a transformers or torch version picks. The
    # logged terms below pin R_s and D to 1e-3 each.
    assert abs(loss.double() - expected) <= 64 * torch.finfo(torch.float32).eps * expected
    torch.testing.assert_close(logged["smart/adv_reg"].double(), adv_reg, rtol=1e-3, atol=0)
    torch.testing.assert_close(logged["smart/bregman"].double(), bregman, rtol=1e-3, atol=0)


def test_ascent_touches_no_parameter_gradient() -> None:
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(ascent_steps=3, probe=False))
    before = {n: torch.randn_like(p) for n, p in task.named_parameters()}
    for n, p in task.named_parameters():
        p.grad = before[n].clone()
    batch = token_batch()
    site = task.smart_perturbation_site()
    with torch.no_grad():
        z = task.smart_forward(batch)
    from lightning_smart.perturbation import captured

    with captured(site) as record:
        task.smart_forward(batch)
    delta, _, finite = task.smart_perturbation(batch, 0, site, record.output, z)
    assert bool(finite) and delta.abs().max() > 0
    for n, p in task.named_parameters():
        assert torch.equal(p.grad, before[n]), n


class SmartOffModule(SmartLightningModule, PlainModule):
    def __init__(self) -> None:
        super().__init__(smart=SmartConfig(lambda_s=0.0))


def test_lambda_zero_without_teacher_is_plain_fine_tuning_bit_for_bit() -> None:
    weights = []
    for cls in (PlainModule, SmartOffModule):
        pl.seed_everything(11)
        module = cls()
        trainer(max_steps=5).fit(module, token_loader(n=40))
        weights.append(module.state_dict())
    assert weights[0].keys() == weights[1].keys()
    initial = {f"model.{n}": v for n, v in tiny_bert(dropout=0.1, seed=3).state_dict().items()}
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    assert sum(not torch.equal(v, initial[n]) for n, v in weights[0].items()) > 10


def test_a_non_transformers_model_trains_by_naming_perturb_at() -> None:
    pl.seed_everything(0)
    model = GRUClassifier()
    logged = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer(max_steps=30, callbacks=[Record()]).fit(model, token_loader(n=48))
    assert logged[-1]["train/task_loss"] < 0.5 * logged[0]["train/task_loss"]
    assert all(r["smart/adv_reg"] > 0 and r["smart/delta_norm"] > 0 for r in logged)
    assert all(math.isclose(r["smart/delta_norm"], 1e-2, rel_tol=1e-5) for r in logged)


@pytest.mark.parametrize(("perturb_at", "message"), [
    ("auto", "smart.perturb_at='auto' found no embeddings in GRUClassifier"),
    ("encoder.embed", "smart.perturb_at='encoder.embed' names no submodule of GRUClassifier"),
])
def test_perturb_at_that_finds_nothing_is_an_error_naming_it(perturb_at: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        trainer(max_steps=1).fit(GRUClassifier(perturb_at), token_loader())


class TermGradients(SequenceTask):
    """Records, in its own training_step, the gradients of λs·R_s and of μ·D alone on every trainable parameter."""

    def smart_divergence(self, p: torch.Tensor, q: torch.Tensor, batch: dict) -> torch.Tensor:
        value = super().smart_divergence(p, q, batch)
        self.terms.append(value)  # the ascent's K calls, then R_s, then D
        return value

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.terms: list[torch.Tensor] = []
        loss = self.smart_loss(batch, batch_idx)
        params = [p for p in self.parameters() if p.requires_grad]
        adv_reg, bregman = self.terms[-2:]
        self.term_grads = {
            name: torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            for name, term in (("R_s", self.smart.lambda_s * adv_reg), ("D", self.smart_teacher.weight(0) * bregman))
        }
        return loss


@pytest.mark.parametrize("policy", ["fp32", "autocast"])
def test_bf16_mixed_gives_every_trainable_parameter_a_gradient_from_each_regularizer(policy: str) -> None:
    smart = SmartConfig(epsilon=0.05, sigma=0.01, eta=0.05, probe=False, perturbed_precision=policy)
    task = TermGradients(tiny_bert(dropout=0.1), num_labels=3, smart=smart)
    grads: dict[str, torch.Tensor] = {}

    class Grads(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            grads.update({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})

    teacher = EMATeacherCallback(mu=1.0, beta=0.5)
    trainer(max_steps=2, precision="bf16-mixed", callbacks=[teacher, Grads()]).fit(task, token_loader())
    assert teacher.num_updates == 2
    names = [n for n, p in task.named_parameters() if p.requires_grad]
    assert grads.keys() == set(names)
    for name, grad in grads.items():  # F's gradient
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # The second step's terms on their own (the teacher has moved off the student): a term whose gradient were
    # lost under autocast (Lightning #19517/#20644) would leave None or zeros here while F's stayed non-zero.
    for term, term_grads in task.term_grads.items():
        for name, grad in zip(names, term_grads, strict=True):
            assert grad is not None, (term, name)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0, (term, name)


def test_accumulation_and_clipping_update_the_teacher_once_per_optimizer_step() -> None:
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(probe=False), lr=5e-2,
                        warmup_ratio=0.0)
    teacher = EMATeacherCallback(mu=1.0)
    norms: list[float] = []
    changed: list[bool] = []

    class Watch(pl.Callback):
        def on_train_start(self, trainer, module):
            self.last = [p.detach().clone() for p in module.parameters()]

            def pre_step(optimizer, args, kwargs):
                grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

            trainer.optimizers[0].register_step_pre_hook(pre_step)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = [p.detach().clone() for p in module.parameters()]
            changed.append(any(not torch.equal(a, b) for a, b in zip(now, self.last, strict=True)))
            self.last = now

    trainer(max_steps=3, accumulate_grad_batches=4, gradient_clip_val=1.0, callbacks=[teacher, Watch()]).fit(
        task, token_loader(n=96, batch_size=8)
    )
    assert teacher.num_updates == 3
    assert changed == [False, False, False, True] * 3
    assert len(norms) == 3 and all(n <= 1.0 + 1e-5 for n in norms)
    student = dict(task.named_parameters())
    assert all(torch.isfinite(e).all() and not torch.equal(e, student[n]) for n, e in teacher.ema.items())


class Overflowing(SequenceTask):
    """Returns inf logits in the ascent (batch 1) or the perturbed forward (batch 2); NaN clean logits in batch 4."""

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self.calls, self.batch_idx = 0, batch_idx

    def smart_forward(self, batch: dict) -> torch.Tensor:
        self.calls += 1
        out = super().smart_forward(batch)
        poisoned = {(1, 2): math.inf, (2, 3): math.inf, (4, 1): math.nan}.get((self.batch_idx, self.calls))
        return out * poisoned if poisoned is not None else out


def test_a_non_finite_regularizer_is_skipped_and_counted_and_never_reaches_the_weights() -> None:
    task = Overflowing(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(probe=False))
    losses: list[torch.Tensor] = []
    skipped: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].detach())
            skipped.append(float(trainer.callback_metrics["smart/skipped"]))
            if batch_idx == 3:
                assert all(torch.isfinite(p).all() for p in module.parameters())

    trainer(max_steps=5, callbacks=[Record()]).fit(task, token_loader(n=40))
    assert task.smart_skipped == 3 and skipped == [0.0, 1.0, 2.0, 2.0, 3.0]  # a NaN z spoils R_s too
    assert [bool(torch.isfinite(v)) for v in losses] == [True, True, True, True, False]  # L itself is not hidden


def test_relative_epsilon_bounds_every_token_by_its_rms() -> None:
    smart = SmartConfig(epsilon=0.05, sigma=0.03, eta=0.5, epsilon_scale="relative", probe=False)
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=smart)
    batch = token_batch()
    from lightning_smart.perturbation import captured, token_rms

    site = task.smart_perturbation_site()
    with captured(site) as record:
        z = task.smart_forward(batch)
    delta, scale, _ = task.smart_perturbation(batch, 0, site, record.output, z.detach())
    torch.testing.assert_close(scale, token_rms(record.output))
    shift = (delta * scale).abs().amax(-1, keepdim=True)
    assert (shift <= smart.epsilon * scale * (1 + 1e-6)).all()
    assert ((shift / scale)[batch["attention_mask"].bool()] > 0.9 * smart.epsilon).float().mean() > 0.5


def _adv_reg(smart: SmartConfig, seed: int = 0) -> torch.Tensor:
    task = SequenceTask(tiny_bert(dropout=0.2), num_labels=3, smart=smart)
    logged: dict[str, torch.Tensor] = {}
    task._smart_log = logged.update  # type: ignore[method-assign]
    batch = token_batch()
    torch.manual_seed(seed)
    task.training_step(batch, 0)
    return logged["smart/adv_reg"]


def test_shared_dropout_makes_the_regularizer_measure_the_perturbation_alone() -> None:
    assert _adv_reg(SmartConfig(shared_dropout=True, sigma=0.0, ascent_steps=0, probe=False)).item() == 0.0
    values = [_adv_reg(SmartConfig(shared_dropout=True, epsilon=eps, sigma=eps, probe=False)).item()
              for eps in (1e-1, 1e-2, 1e-3)]
    assert values[0] > values[1] > values[2] > 0 and values[2] < 1e-3 * values[0]


def test_without_shared_dropout_and_sigma_zero_the_regularizer_is_the_rdrop_term() -> None:
    got = _adv_reg(SmartConfig(sigma=0.0, ascent_steps=0, probe=False), seed=4)
    task = SequenceTask(tiny_bert(dropout=0.2), num_labels=3)
    batch = token_batch()
    torch.manual_seed(4)
    first, second = task.smart_forward(batch), task.smart_forward(batch)
    assert got > 0
    torch.testing.assert_close(got, symmetric_kl(second, first), rtol=0, atol=0)


def _probed_fit(max_steps: int, **smart: float) -> tuple[SequenceTask, pl.Trainer, list[str]]:
    """The paper's ε on a tiny BERT, validated every 10 steps; the SMART probe warnings it raised."""
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(**smart), lr=5e-2)
    run = trainer(max_steps=max_steps, val_check_interval=10, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.fit(task, token_loader(48, 8), token_loader(16, 8, seed=3))
    return task, run, [str(w.message) for w in caught if "SMART probe" in str(w.message)]


def test_the_probe_at_the_fresh_head_logs_without_warning() -> None:
    """At step 0 the head is fresh: the paper's ε moves the output by far under 1% of dropout, and that says
    nothing about the trained model: logged, not warned."""
    task, run, warned = _probed_fit(max_steps=5)
    ((step, perturbation, dropout),) = task.smart_probes
    assert step == 0 and 0 < perturbation < 0.01 * dropout
    assert run.callback_metrics["smart/probe_ratio"] == pytest.approx(perturbation / dropout)
    assert warned == []
    probe = task.smart_probe(token_batch())
    assert probe.keys() == {"perturbation_kl", "dropout_kl"}


def test_the_probe_runs_after_each_validation_and_warns_on_trained_weights() -> None:
    """Validated at steps 10, 20 and 30: probed at steps 0, 10 and 20 (the step after the last validation never
    comes), each ratio logged; one warning, from the first probe at trained weights, naming its step."""
    task, run, warned = _probed_fit(max_steps=30)
    assert [p.step for p in task.smart_probes] == [0, 10, 20]
    assert all(0 <= p.ratio < 0.01 for p in task.smart_probes)  # float32 may round ε's effect to 0
    assert run.callback_metrics["smart/probe_ratio"] == pytest.approx(task.smart_probes[-1].ratio)
    assert len(warned) == 1 and warned[0].startswith("SMART probe at step 10: the perturbation (smart.epsilon=1e-05,")


def test_the_probe_is_off_with_smart_probe_false() -> None:
    task, _, warned = _probed_fit(max_steps=15, probe=False)
    assert task.smart_probes == [] and warned == []


def test_labels_outside_num_labels_fail_with_a_message() -> None:
    with pytest.raises(ValueError, match=r"model.num_labels=0 is not allowed"):
        SequenceTask(tiny_bert(), num_labels=0)


class ConfigDecides(SmartLightningModule, pl.LightningModule):
    """A transformers classifier whose config says what its outputs are."""

    def __init__(self, num_labels: int, problem_type: str | None) -> None:
        super().__init__(smart=SmartConfig(lambda_s=1.0, epsilon=0.05, sigma=0.01, eta=0.05, probe=False))
        self.model = tiny_bert(num_labels=num_labels, dropout=0.1)
        self.model.config.problem_type = problem_type

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def labelled_loader(num_labels: int, kind: str, n: int = 24) -> DataLoader:
    examples = token_examples(n, num_labels=3)
    for e in examples:
        ids = e["input_ids"]
        e["labels"] = {
            "single_label": ids[0] % num_labels,
            "regression": ids[:num_labels].float().squeeze(0) / VOCAB,
            "multi_label": (ids[:num_labels] % 2).float().squeeze(0),  # multi-hot; one 0/1 label for one logit
        }[kind]
    return DataLoader(examples, batch_size=8)


@pytest.mark.parametrize(("num_labels", "problem_type", "kind"), [
    (3, None, "single_label"),
    (2, "single_label_classification", "single_label"),
    (1, None, "regression"),
    (1, "regression", "regression"),
    (1, "multi_label_classification", "multi_label"),  # a one-logit binary classifier (BCE)
    (1, "single_label_classification", "multi_label"),  # softmax of one logit is constant: the sigmoid reading
    (4, "multi_label_classification", "multi_label"),
])
def test_the_kind_of_output_comes_from_the_models_config_not_its_shape(
    num_labels: int, problem_type: str | None, kind: str
) -> None:
    module = ConfigDecides(num_labels, problem_type)
    logged: list[dict[str, float]] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    loader = labelled_loader(num_labels, kind)
    trainer(max_steps=3, callbacks=[EMATeacherCallback(mu=1.0), Record()]).fit(module, loader)
    assert all(r["smart/adv_reg"] > 0 and r["smart/bregman"] > 0 and math.isfinite(r["train/loss"]) for r in logged)

    batch = next(iter(loader))
    with torch.no_grad():
        p, q = module.smart_forward(batch), module.smart_forward(batch)  # two dropout masks
    divergence, loss = {
        "single_label": (symmetric_kl, lambda z, y: F.cross_entropy(z, y)),
        "regression": (squared_error, lambda z, y: F.mse_loss(z.reshape(-1), y.reshape(-1))),
        "multi_label": (bernoulli_symmetric_kl, lambda z, y: F.binary_cross_entropy_with_logits(z, y.reshape(z.shape))),
    }[kind]
    assert module.smart_divergence(p, q, batch) > 0
    assert torch.equal(module.smart_divergence(p, q, batch), divergence(p, q))
    assert torch.equal(module.smart_task_loss(p, batch), loss(p, batch["labels"]))
    if num_labels == 1:
        assert is_regression(p)  # the shape alone would have said regression


def test_without_a_config_the_shape_decides() -> None:
    model = GRUClassifier()
    batch = token_batch()
    p, q = model.smart_forward(batch), torch.randn(8, 3)
    assert torch.equal(model.smart_divergence(p, q, batch), symmetric_kl(p, q))
    assert torch.equal(model.smart_divergence(p[:, :1], q[:, :1], batch), squared_error(p[:, :1], q[:, :1]))


class HalvedDivergence(SequenceTask):
    """ℓs overridden: half the symmetric KL, each call recorded with whether a gradient was being taken."""

    calls: list[tuple[int, bool, torch.Tensor]]

    def smart_divergence(self, p: torch.Tensor, q: torch.Tensor, batch: dict) -> torch.Tensor:
        value = 0.5 * symmetric_kl(p, q)
        self.calls.append((self.global_step, p.requires_grad and q.requires_grad, value.detach()))
        return value


def test_an_overridden_smart_divergence_is_the_ascent_the_regularizer_and_the_bregman_term() -> None:
    task = HalvedDivergence(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(
        lambda_s=1.0, epsilon=0.05, sigma=0.01, eta=0.05, ascent_steps=2, probe=False))
    task.calls = []
    logged: list[dict[str, torch.Tensor]] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append({k: v.clone() for k, v in trainer.callback_metrics.items()})

    trainer(max_steps=3, callbacks=[EMATeacherCallback(mu=1.0), Record()]).fit(task, token_loader())
    # Per step: K = 2 ascent calls (gradient through δ only: z is detached), R_s (both sides with graphs), D.
    assert [(step, grads) for step, grads, _ in task.calls] == [
        (s, g) for s in range(3) for g in (False, False, True, False)]
    for step, record in enumerate(logged):
        assert torch.equal(record["smart/adv_reg"], task.calls[4 * step + 2][2])
        assert torch.equal(record["smart/bregman"], task.calls[4 * step + 3][2])
