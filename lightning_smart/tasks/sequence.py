"""``SequenceTask``: SMART fine-tuning of ``AutoModelForSequenceClassification``, with torchmetrics.

Classification (``num_labels ≥ 2``) reports accuracy, macro-F1 and Matthews correlation;
regression (``num_labels = 1``) Pearson and Spearman correlation. Validation metrics are logged as
``val/<metric>``, the teacher's (with ``EMATeacherCallback(validate=True)``) as
``val/<metric>_teacher``, and each named test set's as ``test/<name>/<metric>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

from lightning_smart.config import SmartConfig
from lightning_smart.module import SmartLightningModule


def _metrics(num_labels: int) -> MetricCollection:
    if num_labels == 1:
        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
    return MetricCollection({
        "acc": MulticlassAccuracy(num_labels, average="micro"),
        "f1": MulticlassF1Score(num_labels, average="macro"),
        "mcc": MulticlassMatthewsCorrCoef(num_labels),
    })


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, RMSNorm (torch's, or a model's own such as ``LlamaRMSNorm``): by type, not by name."""
    normalization = nn.modules.normalization
    return type(module).__module__ == normalization.__name__ or type(module).__name__.endswith("Norm")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups: weight decay on the weights, none on biases and normalization layers' parameters.

    Normalization layers are found by module type (:func:`_is_norm`: torch's ``LayerNorm``/``RMSNorm``, a model's
    own ``*Norm`` class), so a decoder's ``input_layernorm`` (``LlamaRMSNorm``) or GPT-2's ``ln_1`` is spared as
    BERT's ``LayerNorm`` is, whatever the attribute's name. Trainable parameters only.
    """
    no_decay = {id(p) for sub in module.modules() if _is_norm(sub) for p in sub.parameters(recurse=False)}
    no_decay |= {id(p) for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


class SequenceTask(SmartLightningModule, pl.LightningModule):
    """Sequence classification or regression with SMART.

    Args:
        model: a Hub name or local folder for ``AutoModelForSequenceClassification``, or a ready model.
        num_labels: number of classes; 1 for regression.
        smart: the SMART hyperparameters.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay (not applied to biases and normalization layers: :func:`parameter_groups`).
        warmup_ratio: fraction of the optimizer steps of linear warm-up before the linear decay.
        model_overrides: config values for ``from_pretrained`` (e.g. ``{"num_hidden_layers": 2}``).
        test_names: names of the test dataloaders, in order (``test/<name>/<metric>``).
        pad_token_id: the tokenizer's padding id, set on the model's config when it has none: a decoder's
            ``*ForSequenceClassification`` classifies each sequence at its last token that is not padding.
    """

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
    ) -> None:
        super().__init__(smart=smart)
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"model.num_labels={num_labels!r} is not allowed: 1 (regression) or ≥ 2 classes")
        self.save_hyperparameters({
            "model": model if isinstance(model, str) else type(model).__name__,
            "num_labels": num_labels, "smart": asdict(self.smart), "lr": lr, "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio, "model_overrides": dict(model_overrides or {}),
            "test_names": list(test_names),
        })
        module: nn.Module = (
            model if isinstance(model, nn.Module)
            else AutoModelForSequenceClassification.from_pretrained(model, num_labels=num_labels,
                                                                    **dict(model_overrides or {}))
        )
        config = getattr(module, "config", None)
        if pad_token_id is not None and config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_token_id
        self.model = module.train()  # from_pretrained returns eval mode: dropout would be off in training
        self.num_labels = num_labels
        self.test_names = list(test_names)
        metrics = _metrics(num_labels)
        self.val_metrics = metrics.clone(prefix="val/")
        self.val_metrics_teacher = metrics.clone(prefix="val/", postfix="_teacher")
        self.test_metrics = nn.ModuleList(metrics.clone(prefix=f"test/{name}/") for name in self.test_names)

    def _predictions(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        outputs = self.smart_forward(batch).float()
        preds = outputs.reshape(-1) if self.num_labels == 1 else outputs
        return preds, batch["labels"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        preds, labels = self._predictions(batch)
        self.log("val/loss", self.smart_task_loss(preds, batch), prog_bar=True, batch_size=len(labels))
        self.val_metrics.update(preds, labels)
        self.log_dict(self.val_metrics, prog_bar=True)

    def teacher_validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        preds, labels = self._predictions(batch)
        self.val_metrics_teacher.update(preds, labels)
        self.log_dict(self.val_metrics_teacher)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        preds, labels = self._predictions(batch)
        metrics: MetricCollection = self.test_metrics[dataloader_idx]  # type: ignore[assignment]
        metrics.update(preds, labels)
        self.log_dict(metrics, add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        optimizer = torch.optim.AdamW(parameter_groups(self, hp.weight_decay), lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
