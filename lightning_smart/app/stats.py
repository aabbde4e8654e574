r"""The statistics of a comparison between settings over paired seeds: pure functions, no Lightning.

A seed fixes the new head, the dropout draws and the batch order, so two settings run on the same seed differ only
by the setting: their difference on that seed is a paired measurement. Over n seeds, the mean paired difference
and its percentile bootstrap 95% interval (resampling the seeds) say whether a setting beats another, and by how
much, without assuming a distribution:

.. math::
    d_i = s_i^{\text{setting}} - s_i^{\text{plain}}, \qquad
    \bar d = \frac{1}{n}\sum_i d_i, \qquad
    [\,q_{2.5\%},\ q_{97.5\%}\,] \text{ of } \bar d^{*} \text{ over resamples of } (d_1, \dots, d_n).

The interval is over seeds with the evaluation sets fixed: it leaves out the sampling of the evaluation examples
(a binomial standard error of about 1.3 points at 90% accuracy on 500 examples).

``smart-aggregate`` (:mod:`lightning_smart.app.sweep`) and ``benchmarks/quality.py`` both use these.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence

FAILED_MARGIN = 0.01
"""A classifier whose final validation accuracy is within this of the majority class's rate has failed."""
FAILED_PEARSON = 0.1
"""A regressor whose final validation Pearson correlation is under this has failed."""


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and interquartile range (inclusive quartiles: defined for any number of values ≥ 1).

    Example:
        >>> quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
        (3.0, 2.0, 4.0)
    """
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def bootstrap(diffs: Sequence[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the paired differences and its percentile bootstrap 95% interval over seeds.

    Example:
        >>> bootstrap([2.0, 2.0])
        (2.0, 2.0, 2.0)
    """
    if not diffs:
        raise ValueError("bootstrap needs at least one paired difference")
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return statistics.fmean(diffs), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired_differences(setting: Mapping[int, float], plain: Mapping[int, float]) -> list[float]:
    """``setting[seed] − plain[seed]`` for every seed both have, in seed order.

    Example:
        >>> paired_differences({0: 0.8, 1: 0.9, 2: 0.7}, {0: 0.75, 1: 0.95})
        [0.050000000000000044, -0.04999999999999993]
    """
    return [setting[seed] - plain[seed] for seed in sorted(set(setting) & set(plain))]


def failed(score: float, *, majority: float | None = None, regression: bool = False) -> bool:
    """The study's rule for a failed run: a classifier's final validation accuracy within 1 point of the majority
    class's rate (it learned nothing beyond the prior), or a regressor's Pearson correlation under 0.1.

    Example:
        >>> failed(0.505, majority=0.5), failed(0.52, majority=0.5), failed(0.05, regression=True)
        (True, False, True)
    """
    if regression:
        return score < FAILED_PEARSON
    if majority is None:
        raise ValueError("a classifier's failed-run rule needs the majority class's rate on validation")
    return score <= majority + FAILED_MARGIN


def median_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The median over runs of the validation curve, at the steps every run validated at.

    Example:
        >>> median_curve([[(50, 0.6), (100, 0.7)], [(50, 0.8), (100, 0.9)], [(100, 0.8)]])
        [(100, 0.8)]
    """
    by_step = [dict(curve) for curve in curves]
    steps = sorted(set.intersection(*(set(c) for c in by_step))) if by_step else []
    return [(step, statistics.median(c[step] for c in by_step)) for step in steps]


def not_peaked(curve: Sequence[tuple[int, float]]) -> bool:
    """Whether a (median) validation curve still rises at its last point: above every earlier point.

    A setting that only speeds training up then looks like a gain; a longer schedule would tell.

    Example:
        >>> not_peaked([(40, 0.7), (80, 0.8)]), not_peaked([(40, 0.8), (80, 0.8)]), not_peaked([(80, 0.8)])
        (True, False, False)
    """
    return len(curve) > 1 and curve[-1][1] > max(value for _, value in curve[:-1])


def verdict(difference: tuple[float, float, float], seeds: int, *, split: str = "validation", unit: str = "points",
            time_ratio: float | None = None, failed_runs: int = 0, plain_not_peaked: bool = False) -> str:
    """One plain-language line on a paired difference: what the evidence says, and no more.

    Example:
        >>> verdict((0.4, -0.2, 1.1), 5, time_ratio=2.2)
        '+0.4 [-0.2, +1.1] points on validation over 5 seeds: no evidence of a gain at this budget; 2.2× the time.'
    """
    mean, low, high = difference
    if low > 0:
        said = "a gain: the interval excludes 0"
    elif high < 0:
        said = "a loss: the interval excludes 0"
    else:
        said = "no evidence of a gain at this budget" if mean >= 0 else "no evidence of a loss at this budget"
    if seeds < 3:
        said += f" (only {seeds} seed{'s' if seeds > 1 else ''}: the interval means little)"
    parts = [f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] {unit} on {split} over {seeds} seeds: {said}"]
    if failed_runs:
        parts.append(f"{failed_runs} failed run{'s' if failed_runs > 1 else ''}")
    if plain_not_peaked:
        parts.append("plain had not peaked, so a faster start reads as a gain: try more steps")
    if time_ratio is not None:
        parts.append(f"{time_ratio:.1f}× the time")
    return "; ".join(parts) + "."


Difference = tuple[float, float, float]
"""A paired difference: its mean and the bounds of its 95% interval."""


def interval(difference: Difference) -> str:
    """A difference as the reports write it.

    Example:
        >>> interval((1.25, -0.5, 3.0))
        '+1.2 [-0.5, +3.0]'
    """
    mean, low, high = difference
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def reading(difference: Difference) -> str:
    """What a paired difference's interval supports: a gain or a loss where it excludes 0, else neither.

    Example:
        >>> reading((1.0, 0.2, 2.0)), reading((-1.0, -2.0, -0.1)), reading((0.5, -0.5, 1.5))
        ('a gain', 'a loss', 'no evidence of a change')
    """
    _, low, high = difference
    return "a gain" if low > 0 else "a loss" if high < 0 else "no evidence of a change"


def robustness_verdict(robust: Sequence[tuple[float, Difference, Sequence[tuple[str, Difference]]]],
                       clean: Sequence[tuple[str, Difference]], ood: Sequence[tuple[str, Difference]],
                       time_ratio: float | None = None, seeds: int = 3) -> str:
    """What robustness a setting bought, and at what cost, in the words its intervals support.

    Robustness is bought at a radius where the paired difference of robust accuracy on validation excludes 0 from
    above (each test split then confirms it or not, as for clean metrics); a cost is a clean difference, in domain
    or out of it, whose interval excludes 0 from below. Under 3 seeds the interval means little: no claim is made.

    Args:
        robust: per radius, the difference of robust accuracy on validation and on each test split.
        clean: the difference of the clean metric on validation and on each in-domain test split.
        ood: the difference of the clean metric on each out-of-domain test split.
        time_ratio: the setting's time over plain's.
        seeds: how many seeds the differences pair.

    Example:
        >>> robustness_verdict([(0.1, (5.0, 3.0, 7.0), [("test", (4.0, 1.0, 6.0))])],
        ...                    [("validation", (-0.8, -1.5, -0.1)), ("test", (-0.2, -0.9, 0.4))],
        ...                    [("tweets", (-2.0, -3.0, -1.0))], 2.7)  # doctest: +NORMALIZE_WHITESPACE
        'Under attack: at 0.1, +5.0 [+3.0, +7.0] points on validation, a gain (confirmed on test: +4.0 [+1.0,
        +6.0]). Out of domain (clean): tweets -2.0 [-3.0, -1.0], a loss. In all: robustness at 0.1, confirmed on test,
        for a clean loss on validation and out of domain on tweets, at 2.7× the time.'
    """
    if seeds < 3:
        said = "; ".join(f"at {radius:g}, {interval(d)} points on validation" for radius, d, _ in robust)
        time = f" It took {time_ratio:.1f}× the time." if time_ratio is not None else ""
        return (f"Under attack: {said}. In all: {seeds} seed{'s' if seeds > 1 else ''} cannot say what robustness it"
                f" bought, nor at what cost: run 3 or more.{time}")
    parts = []
    for radius, validation, tests in robust:
        said = f"at {radius:g}, {interval(validation)} points on validation, {reading(validation)}"
        if validation[1] > 0 and tests:
            said += " (" + "; ".join(f"{'confirmed' if d[1] > 0 else 'not confirmed'} on {split}: {interval(d)}"
                                     for split, d in tests) + ")"
        parts.append(said)
    text = "Under attack: " + "; ".join(parts) + "."
    if ood:
        text += " Out of domain (clean): " + "; ".join(f"{split} {interval(d)}, {reading(d)}" for split, d in ood) + "."
    confirmed = [f"{r:g}" for r, v, tests in robust if v[1] > 0 and tests and all(d[1] > 0 for _, d in tests)]
    unconfirmed = [f"{r:g}" for r, v, tests in robust if v[1] > 0 and f"{r:g}" not in confirmed]
    bought = []
    if confirmed:
        bought.append(f"robustness at {' and '.join(confirmed)}, confirmed on test")
    if unconfirmed:
        bought.append(f"robustness at {' and '.join(unconfirmed)} on validation, which test does not confirm")
    losses = [split for split, d in clean if d[2] < 0]
    ood_losses = [split for split, d in ood if d[2] < 0]
    cost = []
    if losses:
        cost.append("a clean loss on " + " and ".join(losses))
    if ood_losses:
        cost.append(("" if losses else "a loss ") + "out of domain on " + " and ".join(ood_losses))
    text += " In all: " + ("; ".join(bought) if bought else "no robustness the intervals show at these radii")
    measured = "clean or out-of-domain loss" if ood else "clean loss"
    if cost:
        text += (", for " if bought else ", and ") + " and ".join(cost)
    else:
        text += f", with no {measured} the intervals show" if bought else f", and no {measured} they show"
    if not ood:
        text += " (no out-of-domain split: data.ood)"
    if time_ratio is not None:
        text += f", at {time_ratio:.1f}× the time"
    return text + "."


__all__ = ["Difference", "bootstrap", "failed", "interval", "median_curve", "not_peaked", "paired_differences",
           "quartiles", "reading", "robustness_verdict", "verdict"]
