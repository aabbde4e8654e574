"""``FineTuneTask``: what the app's tasks share. A transformers model loaded by an Auto class (optionally wrapped in
a LoRA adapter by peft), AdamW with linear warm-up and decay, and validation/test metrics from torchmetrics.

Each task says how to load its model (:attr:`FineTuneTask.auto_class`), which metrics it reports
(:meth:`FineTuneTask.metrics`) and what they are computed on (:meth:`FineTuneTask.evaluated`). Validation metrics
are logged as ``val/<metric>``, the teacher's (with ``EMATeacherCallback(validate=True)``) as
``val/<metric>_teacher``, and each named test set's as ``test/<name>/<metric>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
import transformers
from packaging.version import Version
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import get_linear_schedule_with_warmup

from lightning_smart.config import ConfigError
from lightning_smart.module import SmartLightningModule
from lightning_smart.sharding import is_sharded, shard_transformer

# From 5.25, from_pretrained kernelizes by default: on a CUDA, ROCm or XPU device, entering eval or train mode swaps
# layers (GELU, Llama's RMSNorm and rotary embedding...) for kernels downloaded from the Hub, and raises offline. Off,
# the step computes on every device what the float64 references check on CPU, with no download.
_NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False} if Version(transformers.__version__).release >= (5, 25) else {}


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


PEFT_TASK_TYPES = {"AutoModelForCausalLM": "CAUSAL_LM", "AutoModelForTokenClassification": "TOKEN_CLS",
                   "AutoModelForSequenceClassification": "SEQ_CLS"}


def with_lora(model: nn.Module, lora: Mapping[str, Any], auto_class: str) -> nn.Module:
    """``model`` wrapped by peft in a LoRA adapter: ``lora`` holds ``peft.LoraConfig``'s arguments (``r``,
    ``lora_alpha``, ``lora_dropout``, ``target_modules``...); the task type follows the Auto class, so a classifier's
    new head trains in full (peft's ``modules_to_save``). Only the adapter (and that head) is trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora needs peft: pip install peft (or pip install 'lightning-smart[peft]')") from None
    try:
        config = LoraConfig(task_type=PEFT_TASK_TYPES[auto_class], **dict(lora))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.lora={dict(lora)!r} is not allowed: peft's LoraConfig refuses it: {err}") from None
    return get_peft_model(model, config)



class Evaluation(NamedTuple):
    """One batch evaluated: what the metrics compare, the task loss, and how many predictions the loss averages."""

    preds: Tensor
    target: Tensor
    loss: Tensor
    predictions: int


class FineTuneTask(SmartLightningModule, pl.LightningModule):
    """Base of the app's tasks: a transformers model in ``self.model`` trained with SMART and AdamW.

    A subclass sets :attr:`auto_class`, calls :meth:`load_model` and :meth:`setup_metrics` in its ``__init__``
    (after ``save_hyperparameters`` with ``lr``, ``weight_decay`` and ``warmup_ratio``), and defines
    :meth:`metrics` and :meth:`evaluated`.
    """

    auto_class: Any = None

    def load_model(self, model: str | nn.Module, overrides: Mapping[str, Any] | None, pad_token_id: int | None,
                   lora: Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
        """A ready model, or ``auto_class.from_pretrained(model, **kwargs, **overrides)``, in train mode.

        Under transformers 5.25 and later, ``use_kernels=False`` unless ``kwargs`` or ``overrides`` set it: no layer is
        swapped for a kernel from the Hub. A ready model is used as it is.

        Args:
            model: a Hub name, a local folder, or a ready model.
            overrides: config values for ``from_pretrained`` (e.g. ``{"num_hidden_layers": 2}``).
            pad_token_id: the tokenizer's padding id, set on the model's config when it has none.
            lora: ``peft.LoraConfig``'s arguments, or ``None`` to train every weight (:func:`with_lora`).
            kwargs: more ``from_pretrained`` arguments (``num_labels``...).
        """
        module: nn.Module
        if isinstance(model, nn.Module):
            module = model
        else:
            overrides = dict(overrides or {})
            defaults = {key: value for key, value in _NO_HUB_KERNELS.items() if key not in kwargs | overrides}
            module = self.auto_class.from_pretrained(model, **defaults, **kwargs, **overrides)
        config = getattr(module, "config", None)
        if pad_token_id is not None and config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_token_id
        if lora is not None:
            module = with_lora(module, lora, self.auto_class.__name__)
        return module.train()  # from_pretrained returns eval mode: dropout would be off in training

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2), shard the model over the data-parallel mesh: each transformer
        block, then the root (:func:`~lightning_smart.sharding.shard_transformer`). Other strategies: nothing."""
        mesh, model = self.device_mesh, self.model
        if mesh is not None and isinstance(model, nn.Module) and not is_sharded(model):
            shard_transformer(model, mesh["data_parallel"])

    def setup_metrics(self, test_names: Sequence[str]) -> None:
        """``val_metrics``, ``val_metrics_teacher`` and one collection per test set, from :meth:`metrics`."""
        metrics = self.metrics()
        self.test_names = list(test_names)
        self.val_metrics = metrics.clone(prefix="val/")
        self.val_metrics_teacher = metrics.clone(prefix="val/", postfix="_teacher")
        self.test_metrics = nn.ModuleList(metrics.clone(prefix=f"test/{name}/") for name in self.test_names)

    def metrics(self) -> MetricCollection:
        """The task's metrics (updated with :meth:`evaluate`'s predictions and targets)."""
        raise NotImplementedError

    def evaluate(self, batch: Mapping[str, Any]) -> Evaluation:
        """Predictions and targets for the metrics, the task loss, and how many predictions the loss averages."""
        raise NotImplementedError

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        preds, target, loss, predictions = self.evaluate(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=predictions)
        self.val_metrics.update(preds, target)
        self.log_dict(self.val_metrics, prog_bar=True)

    def teacher_validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        preds, target, _, _ = self.evaluate(batch)
        self.val_metrics_teacher.update(preds, target)
        self.log_dict(self.val_metrics_teacher)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        preds, target, _, _ = self.evaluate(batch)
        metrics: MetricCollection = self.test_metrics[dataloader_idx]  # type: ignore[assignment]
        metrics.update(preds, target)
        self.log_dict(metrics, add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        optimizer = torch.optim.AdamW(parameter_groups(self, hp.weight_decay), lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["FineTuneTask", "parameter_groups", "with_lora"]
