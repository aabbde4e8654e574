"""The token-level tasks: ``CausalLMTask`` (supervised fine-tuning of any ``AutoModelForCausalLM``) and
``TokenTask`` (``AutoModelForTokenClassification``), SMART through the mixin's per-token outputs.

``CausalLMTask`` reports the loss, perplexity and token accuracy on the tokens that count (the responses', under
:class:`~lightning_smart.data.SFTDataModule`), each prediction of token t + 1 read at t as the model's own loss
reads it; ``TokenTask`` entity-level precision, recall and F1 as seqeval defines them (CoNLL's rule, the tags'
IOB prefixes) and token accuracy over each word's first sub-token.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity
from torchmetrics.utilities import dim_zero_cat
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from lightning_smart.config import SmartConfig
from lightning_smart.outputs import IGNORE_INDEX, aligned, token_labels
from lightning_smart.tasks.base import Evaluation, FineTuneTask


class TokenAccuracy(MulticlassAccuracy):
    """Accuracy over the positions that count, of ``[B, T, C]`` logits against ``[B, T]`` labels (−100 ignored)."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds.transpose(1, 2), target)


class EntityScore(Metric):
    """seqeval's entity-level ``precision``, ``recall`` or ``f1`` (its default, CoNLL-compatible rule) of tag
    sequences: the argmax of ``[B, T, C]`` logits against ``[B, T]`` labels, at the positions whose label is not
    −100 (each word's first sub-token). Kept as tag indices and lengths, so it syncs across processes."""

    full_state_update = False

    def __init__(self, label_names: Sequence[str], score: str = "f1") -> None:
        super().__init__()
        self.label_names = list(label_names)
        self.score = score
        self.add_state("pred", default=[], dist_reduce_fx="cat")
        self.add_state("true", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        keep = target != IGNORE_INDEX
        self.pred.append(preds.argmax(-1)[keep])  # type: ignore[attr-defined,union-attr,operator]
        self.true.append(target[keep])  # type: ignore[attr-defined,union-attr,operator]
        self.lengths.append(keep.sum(-1))  # type: ignore[attr-defined,union-attr,operator]

    def compute(self) -> Tensor:
        from seqeval.metrics import f1_score, precision_score, recall_score

        if not self.lengths:
            return torch.tensor(0.0)
        lengths = dim_zero_cat(self.lengths).tolist()  # type: ignore[arg-type]
        names = self.label_names

        def sequences(flat: Any) -> list[list[str]]:
            tags = [names[i] for i in dim_zero_cat(flat).tolist()]
            starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
            return [tags[a:b] for a, b in itertools.pairwise(starts)]

        function = {"f1": f1_score, "precision": precision_score, "recall": recall_score}[self.score]
        return torch.tensor(float(function(sequences(self.true), sequences(self.pred), zero_division=0)))


class _TokenTask(FineTuneTask):
    """Predictions at the positions that count, aligned with their labels (shifted for a causal LM)."""

    def evaluate(self, batch: Mapping[str, Any]) -> Evaluation:
        outputs = self.smart_forward(batch)
        kind = self._smart_output_kind(outputs)
        labels = batch["labels"] if "labels" in batch else batch["input_ids"]
        target = token_labels(labels, self.smart_padding_mask(batch), kind, outputs)
        loss = self.smart_task_loss(outputs, batch)
        return Evaluation(aligned(outputs, kind).float(), target, loss, int((target != IGNORE_INDEX).sum()))


class CausalLMTask(_TokenTask):
    """Supervised fine-tuning of a causal LM with SMART: the loss on the tokens whose label is not −100.

    Args:
        model: a Hub name or local folder for ``AutoModelForCausalLM``, or a ready model.
        smart: the SMART hyperparameters (``smart=neftune`` for NEFTune).
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay (none on biases and normalization layers).
        warmup_ratio: fraction of the optimizer steps of linear warm-up before the linear decay.
        model_overrides: config values for ``from_pretrained``.
        test_names: names of the test dataloaders, in order.
        pad_token_id: the tokenizer's padding id, set on the model's config when it has none.
        lora: ``peft.LoraConfig``'s arguments to train a LoRA adapter only (the teacher then averages the adapter
            alone); ``None``: every weight.
    """

    auto_class = AutoModelForCausalLM

    def __init__(self, model: str | nn.Module, smart: SmartConfig | Mapping[str, Any] | None = None,
                 lr: float = 5e-5, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                 model_overrides: Mapping[str, Any] | None = None, test_names: Sequence[str] = ("test",),
                 pad_token_id: int | None = None, lora: Mapping[str, Any] | None = None) -> None:
        super().__init__(smart=smart)
        self.save_hyperparameters({
            "model": model if isinstance(model, str) else type(model).__name__, "smart": asdict(self.smart),
            "lr": lr, "weight_decay": weight_decay, "warmup_ratio": warmup_ratio,
            "model_overrides": dict(model_overrides or {}), "test_names": list(test_names),
            "lora": None if lora is None else dict(lora),
        })
        self.model = self.load_model(model, model_overrides, pad_token_id, lora)
        self.setup_metrics(test_names)

    def metrics(self) -> MetricCollection:
        vocab = int(self.model.get_output_embeddings().weight.shape[0])  # type: ignore[operator,union-attr]
        return MetricCollection({"perplexity": Perplexity(ignore_index=IGNORE_INDEX),
                                 "token_acc": TokenAccuracy(vocab, average="micro", ignore_index=IGNORE_INDEX)})


class TokenTask(_TokenTask):
    """Token classification with SMART: a tag per word (on its first sub-token), entity-level F1 as seqeval's.

    Args:
        model: a Hub name or local folder for ``AutoModelForTokenClassification``, or a ready model.
        label_names: the tags in index order (``B-PER``, ``I-PER``, ``O``, ...): the model's ``id2label``.
        smart, lr, weight_decay, warmup_ratio, model_overrides, test_names, pad_token_id, lora: as
            :class:`CausalLMTask`'s.
    """

    auto_class = AutoModelForTokenClassification

    def __init__(self, model: str | nn.Module, label_names: Sequence[str],
                 smart: SmartConfig | Mapping[str, Any] | None = None, lr: float = 5e-5, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.1, model_overrides: Mapping[str, Any] | None = None,
                 test_names: Sequence[str] = ("test",), pad_token_id: int | None = None,
                 lora: Mapping[str, Any] | None = None) -> None:
        super().__init__(smart=smart)
        self.label_names = list(label_names)
        self.save_hyperparameters({
            "model": model if isinstance(model, str) else type(model).__name__, "tags": self.label_names,
            "smart": asdict(self.smart), "lr": lr, "weight_decay": weight_decay, "warmup_ratio": warmup_ratio,
            "model_overrides": dict(model_overrides or {}), "test_names": list(test_names),
            "lora": None if lora is None else dict(lora),
        })
        names = dict(enumerate(self.label_names))
        self.model = self.load_model(model, model_overrides, pad_token_id, lora, num_labels=len(names),
                                     id2label=names, label2id={v: k for k, v in names.items()})
        self.setup_metrics(test_names)

    def metrics(self) -> MetricCollection:
        names = self.label_names
        return MetricCollection({
            "f1": EntityScore(names, "f1"), "precision": EntityScore(names, "precision"),
            "recall": EntityScore(names, "recall"),
            "acc": TokenAccuracy(len(names), average="micro", ignore_index=IGNORE_INDEX),
        })


__all__ = ["CausalLMTask", "EntityScore", "TokenAccuracy", "TokenTask"]
