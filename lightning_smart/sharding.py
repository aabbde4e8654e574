"""FSDP2 for a transformers model, and the checks that keep the SMART step exact under it.

:func:`shard_transformer` applies ``fully_shard`` as FSDP2 expects it: each transformer block (the classes the
model's ``_no_split_modules`` names) is a unit of its own, then the root. A LightningModule calls it from
``configure_model`` under Lightning's ``ModelParallelStrategy``::

    def configure_model(self):
        shard_transformer(self.model, self.device_mesh["data_parallel"])

On CPU (gloo), a multi-process fit (``ModelParallelStrategy``, ``"ddp"``, ``"ddp_spawn"``) adds
:class:`EndProcessGroupAtExit` to its callbacks, so that each process ends its process group before the interpreter
shuts down (:func:`end_process_group_at_exit`).

:func:`reentrant_checkpointing_error` finds activation checkpointing of the reentrant kind, which the ascent's
``torch.autograd.grad`` on δ cannot run through; the mixin refuses it at its first training step.
"""

from __future__ import annotations

import atexit
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds FSDP2 units (its parameters are shards).

    Example:
        >>> is_sharded(nn.Linear(2, 2))
        False
    """
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def end_process_group_at_exit() -> bool:
    """Have this process destroy its process group when it exits, while the interpreter is still whole; whether it
    has one to destroy.

    Lightning registers this at exit for NCCL only. A gloo group (every CPU run) left to the interpreter's shutdown can
    abort the process after its work is done: gloo's threads still hold tensors as Python is torn down, and the
    process ends by SIGABRT ("terminate called without an active exception"). A relaunched rank then exits non-zero,
    a spawned worker makes Lightning raise: a finished run reads as failed. Registered once per process, however
    often this is called.

    Example:
        >>> end_process_group_at_exit()  # no process group here
        False
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    atexit.unregister(_destroy_process_group)
    atexit.register(_destroy_process_group)
    return True


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class EndProcessGroupAtExit(pl.Callback):
    """:func:`end_process_group_at_exit` in each process of a fit, validate or test, once its process group is up (the
    ``setup`` hook runs in relaunched ranks and spawned workers alike); nothing in a single process."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        end_process_group_at_exit()


def block_classes(model: nn.Module) -> set[str]:
    """The class names of ``model``'s transformer blocks: its own ``_no_split_modules`` (a PEFT model's, through the
    model it wraps).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> sorted(block_classes(BertModel(BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
        ...                                           intermediate_size=8))))
        ['BertEmbeddings', 'BertLayer']
    """
    found: set[str] = set()
    for sub in model.modules():
        found |= set(getattr(sub, "_no_split_modules", None) or ())
    return found


def shard_transformer(model: nn.Module, mesh: Any, **fully_shard_kwargs: Any) -> nn.Module:
    """``fully_shard`` each block of ``model`` (:func:`block_classes`), then ``model`` itself, over ``mesh``.

    Args:
        model: a transformers model (or a PEFT model around one).
        mesh: the data-parallel device mesh (``self.device_mesh["data_parallel"]`` in a LightningModule).
        fully_shard_kwargs: more arguments for every ``fully_shard`` call (``mp_policy``, ``reshard_after_forward``).

    Raises:
        ValueError: the model names no blocks (a model without ``_no_split_modules``): say which to wrap, by
            sharding it yourself.
    """
    from torch.distributed.fsdp import fully_shard

    names = block_classes(model)
    blocks = [sub for sub in model.modules() if type(sub).__name__ in names]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} names no transformer blocks (_no_split_modules): apply fully_shard yourself in"
            " configure_model, to each block and then to the root"
        )
    for block in blocks:
        fully_shard(block, mesh=mesh, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, **fully_shard_kwargs)
    return model


def reentrant_checkpointing_error(model: nn.Module) -> str | None:
    """The refusal for a model that runs transformers' activation checkpointing with ``use_reentrant=True``, or
    ``None``.

    transformers' ``gradient_checkpointing_enable()`` defaults to the non-reentrant kind, which the SMART step runs
    through; the reentrant kind runs each block's forward without a graph and replays it in ``backward``, which the
    ascent's ``torch.autograd.grad`` on δ refuses inside torch ("incompatible with .grad()").
    """
    for sub in model.modules():
        if not getattr(sub, "gradient_checkpointing", False):
            continue
        func = getattr(sub, "_gradient_checkpointing_func", None)
        keywords = getattr(func, "keywords", None) or {}
        if keywords.get("use_reentrant", True) is not False:  # torch's checkpoint is reentrant unless told
            return (
                f"{type(sub).__name__} runs activation checkpointing with use_reentrant=True, which the SMART"
                " ascent (torch.autograd.grad on δ) cannot run through: enable it as"
                " gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
                " (transformers' default), or set smart.lambda_s=0"
            )
    return None


__all__ = ["block_classes", "reentrant_checkpointing_error", "shard_transformer"]
