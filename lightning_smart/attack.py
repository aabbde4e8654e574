r"""An embedding-space PGD attack of fixed radius, and the robust accuracy it defines.

The attack perturbs the same tensor SMART does (the output of one submodule, added by a forward
hook), but as an evaluation: the model in eval mode, the true labels as the target, δ starting at
zero and moved by K steepest-ascent steps on the task loss, each projected back onto the ε-ball
(Madry et al., 2018):

.. math::
    \delta_0 = 0, \qquad
    \delta_{k+1} = \Pi_\epsilon\!\left(\delta_k + \alpha\, s(g_k)\right), \qquad
    g_k = \nabla_\delta\, L\big(f(x + \delta_k), y\big),

with :math:`s(g) = \mathrm{sign}(g)` for the ℓ∞ ball and :math:`s(g_i) = g_i / \|g_i\|_2` per example
for the ℓ2 ball, both over real tokens only, and L the cross-entropy (squared error for regression
outputs). With ``relative=True`` the ball is measured in units of each token's RMS, as
``smart.epsilon_scale=relative``. The gradient is taken with respect to δ alone
(:func:`torch.autograd.grad`): no parameter's ``.grad`` is read or written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_smart.divergence import is_regression
from lightning_smart.ema import eval_mode
from lightning_smart.perturbation import TINY, captured, expand_mask, per_example_norm, perturbed, project, token_rms


class PGDResult(NamedTuple):
    """What :func:`pgd_attack` returns: the outputs on the clean and on the attacked input, and δ."""

    clean: Tensor
    adversarial: Tensor
    delta: Tensor
    """In the units of the ball; multiply by ``scale`` for the shift actually added (``relative=True``)."""
    scale: Tensor | None


def _attack_loss(outputs: Tensor, labels: Tensor) -> Tensor:
    # Summed, not averaged: each example's gradient then does not shrink with the batch size.
    if is_regression(outputs):
        return F.mse_loss(outputs.reshape(-1).float(), labels.reshape(-1).float(), reduction="sum")
    return F.cross_entropy(outputs.float(), labels, reduction="sum")


def _direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "inf":
        return grad.sign()
    return grad / (per_example_norm(grad, "l2") + TINY)


def pgd_attack(
    module: nn.Module,
    site: nn.Module,
    forward: Callable[[Any], Tensor],
    batch: Any,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "inf",
    relative: bool = False,
) -> PGDResult:
    """PGD on the output of ``site``: the outputs of ``forward(batch)`` under the worst δ found in the ε-ball.

    Args:
        module: the model ``forward`` runs (put in eval mode for the attack, its mode restored after).
        site: the submodule of ``module`` whose output is perturbed, e.g. ``model.base_model.embeddings``
            (``SmartLightningModule.smart_perturbation_site()`` gives the one SMART perturbs).
        forward: the model's outputs on a batch: logits ``[B, C]`` or regression outputs ``[B]``/``[B, 1]``.
        batch: what ``forward`` takes.
        labels: ``[B]`` true classes (or regression targets): the attack ascends the task loss on them.
        mask: ``[B, T]``, 1 at real tokens; δ stays zero at padding. ``None`` treats every position as real.
        epsilon: ε, the radius of the ball (> 0).
        steps: K, the number of ascent steps (≥ 1).
        step_size: α; default ``2.5 * epsilon / steps``, so K steps can cross the ball and come back.
        norm: ``inf`` (each coordinate in [−ε, ε]) or ``l2`` (each example's δ of ℓ2 norm ≤ ε).
        relative: ε and α are multiples of each token's RMS of the site's clean output.

    Returns:
        A :class:`PGDResult`, outputs detached, δ float32.

    Raises:
        ValueError: a radius, step count or norm outside its range, or a call under inference mode
            (gradients cannot flow there: use ``Trainer(inference_mode=False)`` to attack in ``test_step``).

    Example:
        >>> import torch
        >>> embed, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)
        >>> model = torch.nn.ModuleDict({"embed": embed, "head": head})
        >>> forward = lambda ids: head(embed(ids).mean(1))
        >>> ids, labels = torch.randint(0, 10, (3, 5)), torch.tensor([0, 1, 1])
        >>> result = pgd_attack(model, embed, forward, ids, labels, epsilon=0.1, steps=3)
        >>> bool(result.delta.abs().max() <= 0.1)
        True
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon={epsilon!r} is not allowed: the radius must be > 0")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps={steps!r} is not allowed: an integer ≥ 1")
    if norm not in ("inf", "l2"):
        raise ValueError(f"norm={norm!r} is not allowed: one of inf, l2")
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "pgd_attack needs gradients with respect to δ, and this call runs under torch.inference_mode:"
            " call it outside, or use Trainer(inference_mode=False) to attack inside test_step"
        )
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    with eval_mode(module):
        with torch.no_grad(), captured(site) as record:
            clean = forward(batch)
        if record.output is None:
            raise ValueError(f"the site {type(site).__name__} was not called by forward(batch): name one on its path")
        x = record.output
        scale = token_rms(x) if relative else None
        m = expand_mask(mask, x)
        delta = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad(), perturbed(site, delta, scale):
                loss = _attack_loss(forward(batch), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            grad = torch.nan_to_num(grad.float()) * m  # a non-finite gradient gives no step, not a NaN δ
            delta = project((delta.detach() + alpha * _direction(grad, norm)) * m, epsilon, norm)
        with torch.no_grad(), perturbed(site, delta, scale):
            adversarial = forward(batch)
    return PGDResult(clean.detach(), adversarial.detach(), delta, scale)


def robust_accuracy(
    module: nn.Module,
    site: nn.Module,
    forward: Callable[[Any], Tensor],
    batches: Iterable[Mapping[str, Any]],
    *,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "inf",
    relative: bool = False,
    labels_key: str = "labels",
    mask_key: str | None = "attention_mask",
) -> dict[str, float]:
    """Clean and robust (under :func:`pgd_attack`) accuracy of a classifier over dict batches.

    Args:
        module: the model (eval mode during the attack, its mode restored after).
        site: the submodule whose output is perturbed.
        forward: logits ``[B, C]`` of a batch; it receives the whole batch, labels included.
        batches: an iterable of dict batches on the model's device, e.g. a ``DataLoader``.
        epsilon: ε, the radius of the ball.
        steps: K, the ascent steps.
        step_size: α; default ``2.5 * epsilon / steps``.
        norm: ``inf`` or ``l2``.
        relative: ε in units of each token's RMS.
        labels_key: the batch's key of the labels.
        mask_key: the batch's key of the padding mask, or ``None``.

    Returns:
        ``{"clean_acc", "robust_acc", "n"}``: the fractions of examples right before and after the attack.
        Inside a ``LightningModule``, feed :attr:`PGDResult.adversarial` to any torchmetrics accuracy instead.
    """
    right_clean = right_adv = total = 0
    for batch in batches:
        labels = batch[labels_key]
        result = pgd_attack(module, site, forward, batch, labels, batch.get(mask_key) if mask_key else None,
                            epsilon=epsilon, steps=steps, step_size=step_size, norm=norm, relative=relative)
        right_clean += int((result.clean.argmax(-1) == labels).sum())
        right_adv += int((result.adversarial.argmax(-1) == labels).sum())
        total += len(labels)
    return {"clean_acc": right_clean / max(total, 1), "robust_acc": right_adv / max(total, 1), "n": float(total)}


def robust_accuracy_by_radius(
    module: nn.Module,
    site: nn.Module,
    forward: Callable[[Any], Tensor],
    batches: Iterable[Mapping[str, Any]],
    radii: Sequence[float],
    *,
    steps: int = 10,
    norm: str = "inf",
    relative: bool = False,
    labels_key: str = "labels",
    mask_key: str | None = "attention_mask",
) -> dict[str, Any]:
    """Clean accuracy and robust accuracy at each of several radii, non-increasing in the radius by construction.

    Each radius gets its own :func:`pgd_attack` (step size ``2.5 * r / steps``). The balls are nested (the ball of a
    smaller radius lies inside a larger one, measured in the same units), so an input that flips a prediction at one
    radius is a valid attack at every larger one: an example counts as robust at ``r`` only if it is right on the
    clean input and under every attack of radius ≤ ``r``. A single PGD run per radius is a local search and need
    not be monotone by itself; this is the strongest of the attacks made, at no extra cost.

    Args:
        module, site, forward, steps, norm, relative, labels_key, mask_key: as :func:`robust_accuracy`.
        batches: dict batches on the model's device (iterated once).
        radii: the radii ε (> 0), in any order.

    Returns:
        ``{"radii": sorted radii, "clean_acc": float, "robust_acc": [one per radius], "n": float}``.
    """
    order = sorted(float(r) for r in radii)
    if not order:
        raise ValueError("radii is empty: give at least one radius > 0")
    right_clean = total = 0
    right = [0] * len(order)
    for batch in batches:
        labels = batch[labels_key]
        mask = batch.get(mask_key) if mask_key else None
        survives: Tensor | None = None
        for i, radius in enumerate(order):
            result = pgd_attack(module, site, forward, batch, labels, mask, epsilon=radius, steps=steps, norm=norm,
                                relative=relative)
            if survives is None:
                survives = result.clean.argmax(-1) == labels
                right_clean += int(survives.sum())
            survives = survives & (result.adversarial.argmax(-1) == labels)
            right[i] += int(survives.sum())
        total += len(labels)
    n = max(total, 1)
    return {"radii": order, "clean_acc": right_clean / n, "robust_acc": [r / n for r in right], "n": float(total)}


__all__ = ["PGDResult", "pgd_attack", "robust_accuracy", "robust_accuracy_by_radius"]
