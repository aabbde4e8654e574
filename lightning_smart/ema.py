r"""θ̃, the EMA of the trainable weights: the tensors and their update, and a forward that computes with them.

.. math::
    \tilde\theta \leftarrow \beta\,\tilde\theta + (1 - \beta)\,\theta

Two forms behind one interface (:class:`EMA`), picked by :func:`ema_of` from the parameters themselves:

- :class:`DenseEMA`: a float32 copy of each trainable parameter; the teacher's forward swaps the copies in with
  :func:`torch.func.functional_call`, without copying the module.
- :class:`ShardedEMA`: for parameters that are DTensors (FSDP2's ``fully_shard``, tensor parallelism), float32
  DTensors with the parameters' placements, so each rank holds its shard of θ̃ only; updated on the local shards.
  ``functional_call`` cannot swap them: FSDP2 gathers each unit's parameters from their local shards at its
  forward, ignoring a swapped tensor, and leaves the root unit gathered after a forward, so a swap there would mix
  teacher and student weights. The teacher's forward therefore reshards every FSDP unit, copies θ̃'s local shards
  into the parameters' local storage, runs, reshards again and restores the student's shards.

No Lightning: the callback (:mod:`lightning_smart.teacher`) owns the schedule and the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.func import functional_call


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off within the block; every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _Call(nn.Module):
    """Calls any function while ``functional_call`` has swapped the teacher's tensors into ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class EMA:
    """θ̃ for a module's named trainable parameters, in float32.

    Args:
        params: name → parameter, the module's trainable ones (``named_parameters`` names).
    """

    def __init__(self, params: Mapping[str, Tensor]) -> None:
        self.params = dict(params)
        self.tensors: dict[str, Tensor] = {name: p.detach().float().clone() for name, p in self.params.items()}

    def update(self, weight: float) -> None:
        """θ̃ ← θ̃ + weight · (θ − θ̃), i.e. β = 1 − weight, in one foreach op."""
        ema, params = self._locals()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p if p.dtype == torch.float32 else p.float() for p in params], weight)

    def _locals(self) -> tuple[list[Tensor], list[Tensor]]:
        return list(self.tensors.values()), [p.detach() for p in self.params.values()]

    def run(self, module: nn.Module, fn: Callable[..., Any], *args: Any, dropout: bool = False) -> Any:
        """``fn(*args)`` with θ̃ in ``module`` in place of the trainable weights, without gradient."""
        raise NotImplementedError

    def load(self, saved: Mapping[str, Tensor]) -> None:
        """θ̃ ← ``saved`` (name → tensor, full or of this form), checked against the parameters' names and shapes."""
        missing, unexpected = sorted(set(self.tensors) - set(saved)), sorted(set(saved) - set(self.tensors))
        wrong = sorted(n for n in set(self.tensors) & set(saved) if saved[n].shape != self.tensors[n].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                "the checkpoint's teacher does not match this model's trainable parameters:"
                f" missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
            )
        with torch.no_grad():
            for name, ema in self.tensors.items():
                self._copy_into(ema, saved[name])

    def _copy_into(self, ema: Tensor, saved: Tensor) -> None:
        ema.copy_(saved.to(device=ema.device, dtype=torch.float32))

    def full(self) -> dict[str, Tensor]:
        """θ̃ as whole tensors (a collective call for the sharded form: every rank calls it)."""
        return dict(self.tensors)


class DenseEMA(EMA):
    """θ̃ as one float32 tensor per parameter; the forward swaps them in by ``functional_call``."""

    def __init__(self, params: Mapping[str, Tensor]) -> None:
        super().__init__(params)
        self._caller: _Call | None = None
        self._swap: dict[str, Tensor] = {}
        self._recast: list[tuple[str, Tensor, torch.dtype]] = []

    def run(self, module: nn.Module, fn: Callable[..., Any], *args: Any, dropout: bool = False) -> Any:
        if self._caller is None or self._caller.module is not module:
            self._bind(module)
        assert self._caller is not None
        for key, ema, dtype in self._recast:
            self._swap[key] = ema.to(dtype)
        with torch.no_grad(), (nullcontext() if dropout else eval_mode(module)):
            return functional_call(self._caller, self._swap, (fn, *args), strict=False)

    def _bind(self, module: nn.Module) -> None:
        """What the forward swaps in: the EMA tensors themselves (updated in place), and a cast copy, refreshed per
        call, only for a parameter that is not float32 (a half-precision model)."""
        self._caller = _Call(module)
        self._swap = {f"module.{name}": ema for name, ema in self.tensors.items()}
        self._recast = [(f"module.{name}", ema, self.params[name].dtype) for name, ema in self.tensors.items()
                        if self.params[name].dtype != ema.dtype]


def _fsdp_units(module: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


class ShardedEMA(EMA):
    """θ̃ as float32 DTensors with the parameters' placements: each rank holds and updates its own shard.

    The forward copies θ̃'s local shards into the parameters' local storage between two reshards of every FSDP unit,
    so every unit gathers the teacher's weights, and restores the student's shards (bit for bit) afterwards.
    """

    def __init__(self, params: Mapping[str, Tensor]) -> None:
        not_sharded = [name for name, p in params.items() if not isinstance(p, DTensor)]
        if not_sharded:
            raise ValueError(
                f"a sharded teacher needs every trainable parameter sharded (a DTensor); {not_sharded[:3]} are not:"
                " apply fully_shard to the whole model in configure_model (each block, then the root)"
            )
        super().__init__(params)

    def _locals(self) -> tuple[list[Tensor], list[Tensor]]:
        return ([e.to_local() for e in self.tensors.values()],  # type: ignore[attr-defined]
                [p.detach().to_local() for p in self.params.values()])  # type: ignore[attr-defined]

    def run(self, module: nn.Module, fn: Callable[..., Any], *args: Any, dropout: bool = False) -> Any:
        units = _fsdp_units(module)
        ema, params = self._locals()
        with torch.no_grad():
            for unit in units:  # a unit left gathered (the root, after a forward) would keep the student's weights
                unit.reshard()
            student = [p.clone() for p in params]
            torch._foreach_copy_(params, ema)
            try:
                with nullcontext() if dropout else eval_mode(module):
                    return fn(*args)
            finally:
                for unit in units:
                    unit.reshard()
                torch._foreach_copy_(params, student)

    def _copy_into(self, ema: Tensor, saved: Tensor) -> None:
        if isinstance(saved, DTensor):
            ema.copy_(saved.to(torch.float32))
        else:  # a whole tensor (a full checkpoint): this rank's shard of it, no communication
            assert isinstance(ema, DTensor)
            local = distribute_tensor(saved.to(device=ema.device, dtype=torch.float32), ema.device_mesh,
                                      ema.placements, src_data_rank=None)
            ema.copy_(local)

    def full(self) -> dict[str, Tensor]:
        return {name: e.full_tensor() for name, e in self.tensors.items()}  # type: ignore[attr-defined]


def ema_of(params: Mapping[str, Tensor]) -> EMA:
    """The form for these parameters: :class:`ShardedEMA` when they are DTensors, else :class:`DenseEMA`."""
    sharded = any(isinstance(p, DTensor) for p in params.values())
    return ShardedEMA(params) if sharded else DenseEMA(params)


__all__ = ["EMA", "DenseEMA", "ShardedEMA", "ema_of", "eval_mode"]
