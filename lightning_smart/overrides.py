"""The mixin's hooks: what the model outputs and where δ goes, each a method a LightningModule may override.

:class:`SmartOverrides` holds the defaults for a transformers model in ``self.model`` and a dict batch with ``labels``
and ``attention_mask``: :meth:`~SmartOverrides.smart_forward`, :meth:`~SmartOverrides.smart_task_loss`,
:meth:`~SmartOverrides.smart_padding_mask` and :meth:`~SmartOverrides.smart_divergence` (by the kind of output,
:mod:`lightning_smart.outputs`), :meth:`~SmartOverrides.smart_perturbation_site` and
:meth:`~SmartOverrides.smart_noise_seed` (:mod:`lightning_smart.perturbation`). The step that calls them is
:class:`~lightning_smart.SmartLightningModule`'s (:mod:`lightning_smart.module`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_smart import outputs as outputs_module
from lightning_smart.config import SmartConfig
from lightning_smart.perturbation import find_site, input_embeddings, noised


class SmartOverrides:
    """The overridable parts of the SMART step, with their defaults (see the module's docstring)."""

    smart: SmartConfig
    _smart_site: tuple[tuple[str, int], nn.Module] | None = None

    # -- the four methods users may override --------------------------------------------------

    def smart_forward(self, batch: Any) -> Tensor:
        """The model's outputs on a batch: logits ``[B, C]``, regression outputs ``[B]``/``[B, 1]``, or logits per
        token ``[B, T, C]`` (a tagger's, a causal LM's)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits  # type: ignore[attr-defined]

    def smart_task_loss(self, outputs: Tensor, batch: Any) -> Tensor:
        """L for the kind of output (see :meth:`smart_divergence`): cross-entropy for single-label logits,
        binary cross-entropy with logits (mean over labels and examples) for multi-label and one-logit binary
        outputs, mean squared error for regression outputs (:func:`lightning_smart.outputs.task_loss`)."""
        kind = self._smart_output_kind(outputs)
        labels = batch["labels"] if "labels" in batch or kind != "causal" else batch["input_ids"]
        return outputs_module.task_loss(outputs, labels, kind, self.smart_padding_mask(batch))

    def smart_padding_mask(self, batch: Any) -> Tensor | None:
        """``[B, T]``, 1 at real tokens; ``None`` treats every position as real."""
        return batch.get("attention_mask") if isinstance(batch, Mapping) else None

    def smart_divergence(self, p: Tensor, q: Tensor, batch: Any) -> Tensor:
        """ℓs(p, q), batch mean, for the kind of output the model's config declares, or else the outputs' shape
        (:func:`lightning_smart.outputs.output_kind`): the symmetric KL of softmax distributions, the Bernoulli
        symmetric KL per label, or the squared error. Override it (and :meth:`smart_task_loss`) for outputs that a
        custom model's config does not describe. Used for the ascent direction, R_s, D and the probe alike;
        ``batch`` is there for an override to use.
        """
        kind = self._smart_output_kind(p)
        weights = None
        if kind in outputs_module.TOKEN_KINDS:
            labels = batch.get("labels") if isinstance(batch, Mapping) else None
            weights = outputs_module.position_weights(labels, self.smart_padding_mask(batch), kind, p)
        return outputs_module.divergence(p, q, kind, weights)

    def _smart_output_kind(self, outputs: Tensor) -> outputs_module.OutputKind:
        """One of :data:`lightning_smart.outputs.OutputKind` (:func:`lightning_smart.outputs.output_kind`)."""
        model = getattr(self, "model", None)
        return outputs_module.output_kind(outputs, getattr(model, "config", None), model)

    # -- where δ goes -------------------------------------------------------------------------

    def smart_perturbation_site(self) -> nn.Module:
        """The submodule whose output is perturbed, from ``smart.perturb_at`` (looked up once per model)."""
        key = (self.smart.perturb_at, id(getattr(self, "model", None)))
        if self._smart_site is None or self._smart_site[0] != key:
            self._smart_site = key, find_site(self, self.smart.perturb_at)  # type: ignore[arg-type]
        return self._smart_site[1]

    def _smart_task_forward(self, batch: Any, batch_idx: int) -> Tensor:
        """The task's forward of a training step: :meth:`smart_forward`, with NEFTune's noise on the input
        embeddings where ``smart.neftune_alpha`` > 0 (a transformers model's ``get_input_embeddings()``, as Hugging
        Face's NEFTune hooks it; else the perturbation site), seeded as the σ-noise is."""
        alpha = self.smart.neftune_alpha
        if alpha == 0:
            return self.smart_forward(batch)
        site = input_embeddings(getattr(self, "model", None)) if self.smart.perturb_at == "auto" else None
        if site is None:
            site = self.smart_perturbation_site()
        with noised(site, self.smart_padding_mask(batch), alpha, self.smart_noise_seed(batch_idx)):
            return self.smart_forward(batch)

    def smart_noise_seed(self, batch_idx: int) -> int:
        """Seed of the σ-noise of this micro-batch: a function of the seed, the process's rank and the step.

        Resumes replay it; under DDP each rank draws its own noise, as it draws its own data.
        """
        base = self.smart.noise_seed if self.smart.noise_seed is not None else torch.initial_seed()
        rank = int(self.global_rank)  # type: ignore[attr-defined]
        step = int(self.global_step)  # type: ignore[attr-defined]
        return (((base * 1_000_003 + rank) * 1_000_003 + step) * 1_000_003 + batch_idx) % (2**63 - 1)


__all__ = ["SmartOverrides"]
