"""``SequenceTask``: SMART fine-tuning of ``AutoModelForSequenceClassification``, with torchmetrics.

Classification (``num_labels ≥ 2``) reports accuracy, macro-F1 and Matthews correlation;
regression (``num_labels = 1``) Pearson and Spearman correlation (logged as :mod:`lightning_smart.tasks.base` says).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef
from transformers import AutoModelForSequenceClassification

from lightning_smart.config import SmartConfig
from lightning_smart.tasks.base import Evaluation, FineTuneTask


def _metrics(num_labels: int) -> MetricCollection:
    if num_labels == 1:
        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
    return MetricCollection({
        "acc": MulticlassAccuracy(num_labels, average="micro"),
        "f1": MulticlassF1Score(num_labels, average="macro"),
        "mcc": MulticlassMatthewsCorrCoef(num_labels),
    })


class SequenceTask(FineTuneTask):
    """Sequence classification or regression with SMART.

    Args:
        model: a Hub name or local folder for ``AutoModelForSequenceClassification``, or a ready model.
        num_labels: number of classes; 1 for regression.
        smart: the SMART hyperparameters.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay (not applied to biases and normalization layers:
            :func:`~lightning_smart.tasks.base.parameter_groups`).
        warmup_ratio: fraction of the optimizer steps of linear warm-up before the linear decay.
        model_overrides: config values for ``from_pretrained`` (e.g. ``{"num_hidden_layers": 2}``).
        test_names: names of the test dataloaders, in order (``test/<name>/<metric>``).
        pad_token_id: the tokenizer's padding id, set on the model's config when it has none: a decoder's
            ``*ForSequenceClassification`` classifies each sequence at its last token that is not padding.
        lora: ``peft.LoraConfig``'s arguments to train a LoRA adapter (and the new head) only; ``None``: every weight.
    """

    auto_class = AutoModelForSequenceClassification

    def __init__(
        self,
        model: str | nn.Module,
        num_labels: int = 2,
        smart: SmartConfig | Mapping[str, Any] | None = None,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        model_overrides: Mapping[str, Any] | None = None,
        test_names: Sequence[str] = ("test",),
        pad_token_id: int | None = None,
        lora: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(smart=smart)
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"model.num_labels={num_labels!r} is not allowed: 1 (regression) or ≥ 2 classes")
        self.save_hyperparameters({
            "model": model if isinstance(model, str) else type(model).__name__,
            "num_labels": num_labels, "smart": asdict(self.smart), "lr": lr, "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio, "model_overrides": dict(model_overrides or {}),
            "test_names": list(test_names), "lora": None if lora is None else dict(lora),
        })
        self.num_labels = num_labels
        self.model = self.load_model(model, model_overrides, pad_token_id, lora, num_labels=num_labels)
        self.setup_metrics(test_names)

    def metrics(self) -> MetricCollection:
        return _metrics(self.num_labels)

    def evaluate(self, batch: Mapping[str, Any]) -> Evaluation:
        outputs = self.smart_forward(batch).float()
        preds = outputs.reshape(-1) if self.num_labels == 1 else outputs
        return Evaluation(preds, batch["labels"], self.smart_task_loss(preds, batch), len(batch["labels"]))
