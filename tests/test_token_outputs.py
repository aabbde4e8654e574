"""Token-level SMART: token classification and causal LMs through the mixin.

Float64 references written here, independent of the library's code: which positions count (padding, −100), the
causal shift, and one whole SMART step with its teacher.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForTokenClassification, BertModel

from lightning_smart import ConfigError, EMATeacherCallback, SmartConfig
from lightning_smart.outputs import divergence, position_weights
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import SEQ, VOCAB, tiny_llama, token_batch


def ref_position_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-position symmetric KL of softmax distributions, float64: ``[B, T]``."""
    lp, lq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    return ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)


def ref_counted_mean(values: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Mean over the positions that count, by explicit loops: t counts where its target is a real, labelled token;
    a causal LM's output at t targets position t + 1."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(values.shape[0]):
        for t in range(values.shape[1] - (1 if causal else 0)):
            target = t + 1 if causal else t
            if mask[b, target] == 1 and labels[b, target] != -100:
                total += values[b, t]
                count += 1
    return total / count


def padded_labels(batch: dict[str, torch.Tensor], classes: int, seed: int = 3, mark_padding: bool = True
                  ) -> torch.Tensor:
    """Per-token labels with −100 at a few real positions (a prompt's, say) and, with ``mark_padding``, at padding
    (without it the padding mask alone must leave padding out)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, batch["input_ids"].shape, generator=g)
    if mark_padding:
        labels[batch["attention_mask"] == 0] = -100
    labels[:, :2] = -100
    return labels


@pytest.mark.parametrize("kind", ["token", "causal"])
def test_masked_token_level_divergence_matches_a_float64_reference(kind: str) -> None:
    batch = token_batch(6)
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(6, SEQ, 7, generator=g) * 3, torch.randn(6, SEQ, 7, generator=g) * 3
    labels = padded_labels(batch, 7, mark_padding=False)
    assert (labels[batch["attention_mask"] == 0] != -100).any()  # padding has labels: the mask must drop them
    weights = position_weights(labels, batch["attention_mask"], kind, p)
    got = divergence(p, q, kind, weights)
    expected = ref_counted_mean(ref_position_kl(p, q), batch["attention_mask"], labels, kind == "causal")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def test_the_causal_shift_compares_the_predictions_of_the_next_token() -> None:
    batch = token_batch(4)
    labels = padded_labels(batch, 7)
    p = torch.randn(4, SEQ, 7, generator=torch.Generator().manual_seed(1))
    last = p.clone()
    last[:, -1, 0] += 5.0  # the last output predicts no token: a causal LM compares nothing there
    assert divergence(p, last, "causal", position_weights(labels, batch["attention_mask"], "causal", p)) == 0
    assert divergence(p, last, "token", None) > 0
    first = p.clone()
    first[:, 1, 0] += 5.0  # predicts token 2, which counts; position 1's own label is −100
    token_weights = position_weights(labels, batch["attention_mask"], "token", p)
    assert divergence(p, first, "token", token_weights) == 0
    assert divergence(p, first, "causal", position_weights(labels, batch["attention_mask"], "causal", p)) > 0


def tiny_tagger(seed: int = 0, classes: int = 5) -> BertForTokenClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=SEQ, num_labels=classes,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.3)
    return BertForTokenClassification(config).train()


@pytest.mark.parametrize("kind", ["token", "causal"])
def test_one_token_level_smart_step_matches_a_hand_written_float64_step(kind: str) -> None:
    """F = L + λs·R_s + μ·D and its gradient, per token, against the step written out in float64."""
    model = tiny_llama() if kind == "causal" else tiny_tagger()
    classes = VOCAB if kind == "causal" else 5
    smart = SmartConfig(lambda_s=2.0, epsilon=0.2, sigma=0.05, eta=0.2, ascent_steps=1, probe=False)
    task = SequenceTask(model, num_labels=classes, smart=smart)
    teacher = EMATeacherCallback(mu=0.7)
    teacher.on_fit_start(None, task)  # type: ignore[arg-type]
    for e in teacher.ema.values():
        e.add_(0.05 * torch.randn(e.shape, generator=torch.Generator().manual_seed(5)))
    batch = token_batch(6)
    batch["labels"] = padded_labels(batch, classes, mark_padding=kind == "token")
    loss = task.training_step(batch, 0)
    loss.backward()
    site = task.smart_perturbation_site()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    student = copy.deepcopy(task.model).double()
    student.zero_grad()
    student_site = dict(student.named_modules())[next(n for n, m in task.model.named_modules() if m is site)]

    def f(net: nn.Module, where: nn.Module, delta: torch.Tensor | None = None) -> torch.Tensor:
        hook = where.register_forward_hook(lambda m, i, o: o + delta) if delta is not None else None
        out = net(input_ids=ids, attention_mask=mask).logits
        if hook is not None:
            hook.remove()
        return out

    def ell(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return ref_counted_mean(ref_position_kl(p, q), mask, labels, kind == "causal")

    z = f(student, student_site)
    counts = labels.masked_fill(mask == 0, -100)  # a padded position never counts, whatever its label
    logits, target = (z[:, :-1], counts[:, 1:]) if kind == "causal" else (z, counts)
    task_loss = F.cross_entropy(logits.reshape(-1, classes), target.reshape(-1), ignore_index=-100)
    real = mask.double()[..., None]
    g = torch.Generator().manual_seed(task.smart_noise_seed(0))
    delta = (torch.randn((*ids.shape, 16), generator=g) * smart.sigma).double() * real
    delta.requires_grad_(True)
    (grad,) = torch.autograd.grad(ell(f(student, student_site, delta), z.detach()), delta)
    grad = grad * real
    length = grad.reshape(len(ids), -1).abs().amax(-1)
    delta = (delta.detach() + smart.eta * grad / (length[:, None, None] + 1e-12)).clamp(-smart.epsilon, smart.epsilon)
    adv_reg = ell(f(student, student_site, delta), z)
    ema_model = copy.deepcopy(task.model).double()
    ema_model.load_state_dict({k.removeprefix("model."): v for k, v in teacher.ema.items()}, strict=False)
    with torch.no_grad():
        teacher_out = f(ema_model.eval(), ema_model)
    bregman = ell(z, teacher_out)
    expected = task_loss + smart.lambda_s * adv_reg + teacher.mu * bregman
    expected.backward()

    assert adv_reg > 1e-5 and bregman > 1e-5
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    # float32 against float64 through three forwards and one backward: entries off by under 1e-5 of the largest
    # gradient (seen: 9e-6); a wrong mask, shift or term is off by far more.
    scale = max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None)
    for p32, p64 in zip(task.model.parameters(), student.parameters(), strict=True):
        if p64.grad is not None:
            torch.testing.assert_close(p32.grad.double(), p64.grad, rtol=1e-3, atol=4e-5 * scale)


class HiddenStates(SequenceTask):
    """A model whose outputs are per token but are neither a tagger's nor a language model's."""

    def smart_forward(self, batch: dict) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_per_token_outputs_the_mixin_cannot_read_are_refused_naming_the_hooks() -> None:
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=SEQ))
    task = HiddenStates(encoder, num_labels=2, smart=SmartConfig(probe=False))
    with pytest.raises(ConfigError, match=r"override smart_task_loss and smart_divergence"):
        task.training_step(token_batch(4), 0)


def test_sequence_labels_for_a_tagger_are_refused_before_torch_sees_them() -> None:
    task = SequenceTask(tiny_tagger(), num_labels=5, smart=SmartConfig(probe=False))
    with pytest.raises(ConfigError, match=r"labels of shape \(4,\) for outputs of shape \(4, 12, 5\)"):
        task.training_step(token_batch(4), 0)
