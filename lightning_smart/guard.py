"""The drop-in checks: SMART cannot silently do nothing.

Two ways a subclass of the mixin would train without SMART and say nothing: listing the mixin after
``LightningModule`` (whose ``training_step`` and ``__init__`` then hide the mixin's), refused when the class is
defined; and a ``training_step`` of its own that never calls ``smart_loss``, refused at its first call, before
any backward or optimizer step. :func:`guard_subclass` installs both; the mixin calls it from
``__init_subclass__``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lightning.pytorch.core.module import LightningModule


def requiring_smart_loss(step: Callable[..., Any], owner: str) -> Callable[..., Any]:
    """``step``, a ``training_step`` that replaces the mixin's, refused at its first call if SMART is on and it
    returned a loss without calling ``smart_loss`` (a nested call, e.g. through ``super()``, is not checked apart)."""

    @functools.wraps(step)
    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._smart_step_checked or self._smart_step_depth:
            return step(self, *args, **kwargs)
        calls = self._smart_loss_calls
        self._smart_step_depth += 1
        try:
            out = step(self, *args, **kwargs)
        finally:
            self._smart_step_depth -= 1
        if out is None and self.automatic_optimization:
            return out  # Lightning skips this batch: the check waits for a step that returns a loss
        if self._smart_loss_calls == calls and (self.smart.acts or self.smart_teacher is not None):
            raise TypeError(
                f"{owner}.training_step replaces SmartLightningModule's but did not call self.smart_loss(batch,"
                " batch_idx): SMART would silently do nothing. Either compute `loss = self.smart_loss(batch,"
                " batch_idx)` in your training_step and return it (F, with the smart/* metrics logged), or delete"
                " your training_step and let SmartLightningModule's run."
            )
        self._smart_step_checked = True
        return out

    training_step.__smart_checked__ = True  # type: ignore[attr-defined]
    return training_step


def guard_subclass(cls: type, mixin: type) -> None:
    """Refuse ``cls`` if it lists ``mixin`` after ``LightningModule``; wrap a ``training_step`` of its own so that
    its first call is checked (:func:`requiring_smart_loss`)."""
    mro = cls.__mro__
    if LightningModule in mro and mro.index(LightningModule) < mro.index(mixin):
        raise TypeError(
            f"{cls.__name__} lists SmartLightningModule after LightningModule in its bases, so Lightning's"
            f" training_step and __init__ hide the mixin's: write class {cls.__name__}(SmartLightningModule,"
            " L.LightningModule), the mixin first."
        )
    # Whether an own training_step calls smart_loss is known only when it runs: wrap it to check its first call.
    step = cls.training_step  # type: ignore[attr-defined]
    if step is not mixin.training_step and not getattr(step, "__smart_checked__", False):  # type: ignore[attr-defined]
        owner = next((c for c in mro if c.__dict__.get("training_step") is step), cls)
        cls.training_step = requiring_smart_loss(step, owner.__name__)  # type: ignore[attr-defined]


__all__ = ["guard_subclass", "requiring_smart_loss"]
