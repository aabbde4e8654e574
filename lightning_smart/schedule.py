r"""The weights' schedules over a run: Mean Teacher's sigmoid ramp-up and the EMA warm-up.

Pure functions of the optimizer step; no Lightning. T is the run's number of optimizer steps.

.. math::
    w(t) = \begin{cases} \exp\!\left(-5\,\left(1 - \dfrac{t}{rT}\right)^2\right) & t < rT \\ 1 & t \ge rT \end{cases}
    \qquad\qquad
    \beta_t \leftarrow \min\!\left(\beta_t,\ 1 - \frac{1}{t + 1}\right)

The ramp is Tarvainen & Valpola's (2017) ``sigmoid_rampup``; the warm-up is their reference code's
``alpha = min(1 - 1 / (global_step + 1), alpha)``, with t counted from 1 at the first update, so the teacher
is the plain mean of the weights θ_0 … θ_t for as long as 1 − 1/(t + 1) is below the schedule's β.
"""

from __future__ import annotations

import math

from lightning_smart.config import ConfigError, TeacherConfig


def rampup(step: int, total_steps: float, fraction: float) -> float:
    """w(t): the factor on a consistency weight at optimizer step ``step`` (0-based); 1 once the ramp is over.

    Args:
        step: t, the index of the optimizer step (0 for the first).
        total_steps: T, the run's optimizer steps.
        fraction: r, the part of the run the ramp lasts; 0 gives 1 at every step.

    Example:
        >>> rampup(0, 100, 0.5) == math.exp(-5)
        True
        >>> rampup(50, 100, 0.5), rampup(0, 100, 0.0)
        (1.0, 1.0)
    """
    length = fraction * total_steps
    if step >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - step / length) ** 2)


def run_rampup(step: int, total_steps: float, fraction: float, key: str) -> float:
    """:func:`rampup` over a run of ``total_steps`` (Lightning's ``estimated_stepping_batches``), where ``key`` names
    the setting: a run of no known length (infinite) is refused, as the ramp is a fraction of it.

    Example:
        >>> run_rampup(3, float("inf"), 0.0, "smart.rampup")
        1.0
    """
    if fraction == 0:
        return 1.0
    if not math.isfinite(total_steps):
        raise ConfigError(f"{key}={fraction:g} is a fraction of the run's optimizer steps, but this run has no known"
                          " length: set trainer.max_steps or trainer.max_epochs")
    return rampup(step, total_steps, fraction)


def ema_warmup(beta: float, update: int) -> float:
    """β of the ``update``-th EMA update (1 for the first) under Mean Teacher's warm-up: min(β, 1 − 1/(t + 1)).

    Example:
        >>> ema_warmup(0.999, 1), ema_warmup(0.999, 3), ema_warmup(0.5, 9)
        (0.5, 0.75, 0.5)
    """
    return min(beta, 1.0 - 1.0 / (update + 1))


def ema_beta(config: TeacherConfig, update: int, total_steps: int) -> float:
    """β of the EMA update with index ``update`` (0-based) in a run of ``total_steps`` optimizer steps: β0 during
    the first ``warmup_fraction`` of the run, β1 after (or the one β of a ``half_life``), capped by
    :func:`ema_warmup` with ``ema_warmup``.

    Example:
        >>> ema_beta(TeacherConfig(beta=0.9, beta_final=0.99, warmup_fraction=0.1), 9, 100), ema_beta(
        ...     TeacherConfig(beta=0.9, beta_final=0.99, warmup_fraction=0.1), 10, 100)
        (0.9, 0.99)
        >>> round(ema_beta(TeacherConfig(half_life=0.5), 0, 10) ** 5, 12)
        0.5
    """
    if config.half_life is not None:
        beta = 0.5 ** (1.0 / max(config.half_life * total_steps, 1e-12))
    else:
        beta = config.beta if update < config.warmup_fraction * total_steps else config.beta_final
    return ema_warmup(beta, update + 1) if config.ema_warmup else beta


__all__ = ["ema_beta", "ema_warmup", "rampup", "run_rampup"]
