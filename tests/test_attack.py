"""The embedding-space PGD attack: the ε-bound, its effect, and that it leaves the weights' gradients alone."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_smart.attack import pgd_attack, robust_accuracy, robust_accuracy_by_radius
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import tiny_bert, token_batch


def batch_of(seed: int = 1) -> dict[str, torch.Tensor]:
    """16 token sequences, padded at the end, with random labels."""
    batch = token_batch(16, num_labels=3, seed=seed)
    batch["labels"] = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(seed))
    return batch


def logits_of(model: nn.Module):
    return lambda batch: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("norm", ["inf", "l2"])
@pytest.mark.parametrize("relative", [False, True])
def test_delta_stays_in_the_ball_and_off_padding(norm: str, relative: bool) -> None:
    model, batch, epsilon = tiny_bert(), batch_of(), 0.05
    site = model.bert.embeddings
    result = pgd_attack(model, site, logits_of(model), batch, batch["labels"], batch["attention_mask"],
                        epsilon=epsilon, steps=4, norm=norm, relative=relative)
    delta = result.delta.double()
    flat = delta.reshape(len(delta), -1)
    sizes = flat.abs().amax(-1) if norm == "inf" else flat.norm(dim=-1)
    assert (sizes <= epsilon * (1 + 1e-6)).all()
    assert (sizes > 0.5 * epsilon).all()  # every example's δ reached the boundary region, not nowhere
    assert (delta[batch["attention_mask"] == 0] == 0).all()
    assert (result.scale is not None) == relative


def test_one_linf_step_matches_a_float64_rederivation() -> None:
    torch.manual_seed(0)
    embed, head = nn.Embedding(10, 4), nn.Linear(4, 3)
    model = nn.ModuleDict({"embed": embed, "head": head})
    ids, labels, epsilon = torch.randint(0, 10, (5, 6)), torch.tensor([0, 1, 2, 1, 0]), 0.1
    result = pgd_attack(model, embed, lambda i: head(embed(i).mean(1)), ids, labels, epsilon=epsilon, steps=1,
                        step_size=epsilon)
    # ∂CE/∂δ_t = (softmax(z) − onehot(y)) W / T for a mean-pooled linear classifier; one ℓ∞ step is ε·sign of it.
    w = head.weight.detach().double()
    z = embed.weight.detach().double()[ids].mean(1) @ w.T + head.bias.detach().double()
    g = (torch.softmax(z, -1) - F.one_hot(labels, 3).double()) @ w / ids.shape[1]
    expected = epsilon * g.sign()[:, None, :].expand(-1, ids.shape[1], -1)
    torch.testing.assert_close(result.delta.double(), expected)


def test_attack_lowers_accuracy_below_clean() -> None:
    model = tiny_bert()
    batches = [batch_of(seed=s) for s in range(3)]
    for batch in batches:  # labels the model gets right: clean accuracy 1, so any flip is the attack's doing
        with torch.no_grad():
            batch["labels"] = logits_of(model.eval())(batch).argmax(-1)
    model.train()
    scores = robust_accuracy(model, model.bert.embeddings, logits_of(model), batches, epsilon=0.5, steps=5)
    assert scores["clean_acc"] == 1.0
    assert scores["robust_acc"] < 0.9
    assert scores["n"] == 48
    assert model.training and all(m.training for m in model.modules())  # its mode restored


def test_no_parameter_grad_is_touched() -> None:
    model, batch = tiny_bert(), batch_of()
    sentinel = {name: torch.full_like(p, 0.25) for name, p in model.named_parameters() if "classifier" in name}
    for name, p in model.named_parameters():
        p.grad = sentinel[name].clone() if name in sentinel else None
    pgd_attack(model, model.bert.embeddings, logits_of(model), batch, batch["labels"], batch["attention_mask"],
               epsilon=0.1, steps=3)
    for name, p in model.named_parameters():
        if name in sentinel:
            assert torch.equal(p.grad, sentinel[name])
        else:
            assert p.grad is None, name


def test_attack_through_the_sequence_task_site() -> None:
    """Through the task's own site and forward: a large relative ε flips predictions, a negligible one none."""
    task = SequenceTask(tiny_bert(), num_labels=3)
    batch = batch_of()
    with torch.no_grad():  # labels the task gets right: clean accuracy 1, so any flip is the attack's doing
        batch["labels"] = task.eval().smart_forward(batch).argmax(-1)
    task.train()
    site, n = task.smart_perturbation_site(), len(batch["labels"])
    strong = robust_accuracy(task, site, task.smart_forward, [batch], epsilon=1.0, steps=3, relative=True)
    weak = robust_accuracy(task, site, task.smart_forward, [batch], epsilon=1e-7, steps=3, relative=True)
    assert strong["clean_acc"] == weak["clean_acc"] == 1.0 and strong["n"] == weak["n"] == n
    assert strong["robust_acc"] < 0.5 and (strong["robust_acc"] * n).is_integer()
    assert weak["robust_acc"] == 1.0
    assert task.training


def test_bad_arguments_and_inference_mode_fail_clearly() -> None:
    model, batch = tiny_bert(), batch_of()
    args = (model, model.bert.embeddings, logits_of(model), batch, batch["labels"])
    with pytest.raises(ValueError, match="epsilon"):
        pgd_attack(*args, epsilon=0.0)
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(*args, epsilon=0.1, norm="l1")
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        pgd_attack(*args, epsilon=0.1)


def test_robust_accuracy_by_radius_is_one_accuracy_per_radius_non_increasing() -> None:
    """Fixed weights, radii given out of order: sorted, one accuracy each, never rising (an example robust at r is
    robust under every smaller ball, which lies inside r's), each at most the single-radius attack's accuracy."""
    model = tiny_bert(seed=2).eval()
    batches = [batch_of(seed=s) for s in range(3)]
    radii = [1.0, 0.01, 0.3, 0.1, 3.0]
    grid = robust_accuracy_by_radius(model, model.bert.embeddings, logits_of(model), batches, radii, steps=3,
                                     relative=True)
    assert grid["radii"] == sorted(radii) and len(grid["robust_acc"]) == len(radii) and grid["n"] == 48
    accuracy = grid["robust_acc"]
    assert all(a >= b for a, b in itertools.pairwise(accuracy))
    assert grid["clean_acc"] >= accuracy[0] and accuracy[-1] < grid["clean_acc"]  # the largest ball flips some
    for radius, robust in zip(grid["radii"], accuracy, strict=True):
        alone = robust_accuracy(model, model.bert.embeddings, logits_of(model), batches, epsilon=radius, steps=3,
                                relative=True)
        assert alone["clean_acc"] == grid["clean_acc"] and robust <= alone["robust_acc"]
    with pytest.raises(ValueError, match="radii is empty"):
        robust_accuracy_by_radius(model, model.bert.embeddings, logits_of(model), batches, [])
