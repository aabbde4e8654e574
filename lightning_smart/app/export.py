"""The run's model folders: ``model/`` (the final student) and ``teacher/`` (the student's model with the EMA tensors
in place of its trainable weights), each a ``save_pretrained`` folder with the tokenizer, for the task's ``Auto``
class (with a LoRA adapter: merged in, and ``adapter/`` the adapter alone). Under FSDP2 the shards are gathered and
rank 0 writes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_smart.app.files import replacing
from lightning_smart.sharding import is_sharded


def teacher_state_dict(model: nn.Module, ema: dict[str, Tensor], prefix: str = "model.") -> dict[str, Tensor]:
    """``model``'s state dict with the teacher's EMA tensors in place of its trainable weights.

    Args:
        model: the student's transformers model (the LightningModule's ``model``).
        ema: :attr:`EMATeacherCallback.ema`: name → float32 tensor, named as the LightningModule's parameters.
        prefix: what the LightningModule's names put before ``model``'s own.

    Frozen parameters and buffers are the student's (the teacher shares them); each EMA tensor takes its
    parameter's dtype.
    """
    state = dict(model.state_dict())
    for name, tensor in ema.items():
        key = name.removeprefix(prefix)
        if key not in state:
            raise KeyError(f"the teacher's {name!r} is not a parameter of the model under {prefix!r}")
        state[key] = tensor.detach().to(device=state[key].device, dtype=state[key].dtype)
    return state


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
                    state_dict: dict[str, Tensor] | None = None) -> Path:
    """``model`` (with ``state_dict``'s weights, if given) and ``tokenizer`` in ``folder``, replaced whole.

    Written to a temporary folder beside it, then renamed: a crash leaves no half-written model.
    """
    with replacing(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return folder


def _merged(model: nn.Module) -> PreTrainedModel:
    """A PEFT model's base model with its adapter merged in, on a copy (training goes on with the adapter)."""
    return copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]


def _unwrapped_class(module: nn.Module) -> type[nn.Module]:
    """The model's own class: ``fully_shard`` replaces it by a subclass that also derives from ``FSDPModule``."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if issubclass(c, nn.Module) and not issubclass(c, FSDPModule))


def unsharded_copy(hf_model: nn.Module) -> PreTrainedModel | None:
    """A whole copy of an FSDP2-sharded transformers (or PEFT) model, on rank 0's CPU; ``None`` on the other ranks.

    A collective call: every rank gathers its shards (``get_model_state_dict`` with ``full_state_dict``), rank 0
    builds the model anew from its config (with the same LoRA adapter) and loads the whole weights into it.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(hf_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    peft = callable(getattr(hf_model, "merge_and_unload", None))
    base = hf_model.get_base_model() if peft else hf_model  # type: ignore[operator]
    copy_: nn.Module = _unwrapped_class(base)(base.config)
    if peft:
        from peft import get_peft_model

        copy_ = get_peft_model(copy_, hf_model.peft_config["default"])  # type: ignore[arg-type,index]
    copy_.load_state_dict(full)
    return copy_.train(hf_model.training)  # type: ignore[return-value]


def export_pretrained(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path,
                      ema: dict[str, Tensor] | None = None) -> dict[str, str]:
    """``out/model`` (the student's current weights) and, given the teacher's ``ema``, ``out/teacher``.

    With a LoRA adapter (peft), ``model/`` and ``teacher/`` hold the base model with the adapter merged in, for the
    ``Auto`` classes, and ``adapter/`` the student's adapter alone (for ``PeftModel.from_pretrained``).

    Args:
        model: the LightningModule; its ``model`` attribute is the transformers (or PEFT) model.
        tokenizer: saved in each folder.
        out: the run's folder.
        ema: the teacher's whole tensors (:meth:`EMATeacherCallback.full_ema`), or ``None`` for no teacher folder.

    Under FSDP2 every rank calls it (the weights are gathered) and rank 0 writes.

    Returns:
        The folders written, relative to ``out``: ``{"model": "model", "teacher": "teacher", "adapter": "adapter"}``.
    """
    hf_model: PreTrainedModel | None = model.model  # type: ignore[assignment]
    if is_sharded(model):
        hf_model = unsharded_copy(hf_model)  # type: ignore[arg-type]
        if hf_model is None:  # not rank 0: it took part in the gather, rank 0 writes
            return {}
    assert hf_model is not None
    folders: dict[str, Path] = {}
    if callable(getattr(hf_model, "merge_and_unload", None)):  # a PEFT model
        folders["adapter"] = save_pretrained(hf_model, tokenizer, out / "adapter")
        folders["model"] = save_pretrained(_merged(hf_model), tokenizer, out / "model")
        if ema:
            teacher = copy.deepcopy(hf_model)
            teacher.load_state_dict(teacher_state_dict(hf_model, ema))
            folders["teacher"] = save_pretrained(_merged(teacher), tokenizer, out / "teacher")
    else:
        folders["model"] = save_pretrained(hf_model, tokenizer, out / "model")
        if ema:
            folders["teacher"] = save_pretrained(hf_model, tokenizer, out / "teacher",
                                                 teacher_state_dict(hf_model, ema))
    return {name: os.path.relpath(path, out) for name, path in folders.items()}
