"""``experiment=compare`` and its report: the statistics on fixed inputs, and a real sweep through Hydra."""

from __future__ import annotations

import csv
import itertools
import json
import statistics
from pathlib import Path

import pytest

from lightning_smart.app import stats
from lightning_smart.app.compare import compare, plot, write_csv
from tests.helpers.app import TINY, smart_train


def test_pairing_and_the_bootstrap_against_a_hand_computation() -> None:
    # Seeds pair by number; a seed only one side has is left out.
    assert stats.paired_differences({0: 80.0, 1: 82.0, 3: 90.0}, {0: 79.0, 1: 83.0, 2: 70.0}) == [1.0, -1.0]
    # Two differences: a resample's mean is 1, 2 or 3 with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles are the extremes. Three: the extremes 0 and 4 each have probability 1/27 > 2.5%.
    assert stats.bootstrap([1.0, 3.0]) == (2.0, 1.0, 3.0)
    assert stats.bootstrap([0.0, 2.0, 4.0]) == (2.0, 0.0, 4.0)
    # Five: against the exact bootstrap distribution, enumerated (5^5 equally likely resamples).
    diffs = [-1.0, 0.5, 1.0, 2.0, 4.0]
    exact = sorted(statistics.fmean(c) for c in itertools.product(diffs, repeat=5))
    mean, low, high = stats.bootstrap(diffs)
    assert mean == 1.3
    assert exact[int(0.02 * len(exact))] <= low <= exact[int(0.03 * len(exact))]
    assert exact[int(0.97 * len(exact))] <= high <= exact[int(0.98 * len(exact))]
    assert stats.quartiles([4.0, 1.0, 3.0, 2.0, 5.0]) == (3.0, 2.0, 4.0)
    with pytest.raises(ValueError, match="at least one paired difference"):
        stats.bootstrap([])


def test_the_failed_run_and_not_peaked_flags() -> None:
    assert stats.failed(0.51, majority=0.502) and not stats.failed(0.513, majority=0.502)
    assert stats.failed(0.09, regression=True) and not stats.failed(0.1, regression=True)
    with pytest.raises(ValueError, match="majority class's rate"):
        stats.failed(0.6)
    rising = stats.median_curve([[(40, 0.70), (80, 0.75)], [(40, 0.72), (80, 0.71)], [(40, 0.60), (80, 0.78)]])
    assert rising == [(40, 0.70), (80, 0.75)] and stats.not_peaked(rising)
    assert not stats.not_peaked([(40, 0.8), (80, 0.79)]) and not stats.not_peaked([(40, 0.8), (80, 0.8)])


def _summary(seed: int, lambda_s: float, teacher: bool, val: float, test: float, seconds: float,
             curve: list[list[float]]) -> dict:
    return {"config": {"seed": seed, "smart": {"lambda_s": lambda_s}, "teacher": {"mu": 1.0} if teacher else None},
            "metric": "val/acc", "score": val, "val": {"acc": val}, "test": {"movies": {"acc": test}},
            "data": {"val_majority": 0.5}, "wall_time_s": seconds, "curve": curve,
            "peak_memory": {"mib": 1000.0 + 100 * lambda_s, "what": "peak resident memory of the run"}}


def test_the_report_on_fixed_runs() -> None:
    names, summaries = [], []
    for seed, (plain, paper) in enumerate([(0.80, 0.82), (0.78, 0.81), (0.50, 0.79)]):
        names += ["plain", "paper"]
        summaries += [_summary(seed, 0.0, False, plain, plain + 0.01, 100.0, [[40, plain - 0.1], [80, plain]]),
                      _summary(seed, 1.0, True, paper, paper, 250.0, [[40, paper], [80, paper]])]
    result = compare(names, summaries)
    assert result is not None
    rows, lines = result
    text = "\n".join(lines)
    by = {(r.setting, r.split): r for r in rows}
    # Paired differences on validation, in points: +2, +3, +29 (seed 2's plain run failed: 50.0 ≤ 50 + 1).
    assert by["paper", "validation"].diff_mean == pytest.approx(34 / 3)
    assert by["plain", "validation"].failed == 1 and by["paper", "validation"].failed == 0
    assert by["paper", "validation"].time_ratio == 2.5 and by["paper", "movies"].seeds_paired == 3
    assert "| plain | 3 | 1 | 78.0 (64.0–79.0) | 79.0 (65.0–80.0) | 100 | 1.00 | 1000 |" in text
    assert "| paper | 3 | 0 | 81.0 (80.0–81.5) | 81.0 (80.0–81.5) | 250 | 2.50 | 1100 |" in text
    assert "**Plain has not peaked**" in text  # its median curve: 68.0 at step 40, 78.0 at 80
    assert "- **paper**: +11.3 [" in text and "2.5× the time." in text and "plain had not peaked" in text
    assert "Confirmed on movies: +10.3 [" in text  # test differences +1, +2, +28: the gain holds on test
    assert compare(["plain", "plain"], summaries[::2][:2]) is None  # nothing to compare with
    assert compare(["a", "b"], summaries[1::2][:2]) is None  # no plain fine-tuning among them


# Three seeds of plain and adversarial: clean accuracy on validation, on the movies test split and on tweets (out
# of domain), and robust accuracy at two radii on each. With three seeds the bootstrap interval's ends are the
# smallest and the largest difference (each has probability 1/27 > 2.5% of being every resample's).
ROBUST_RUNS = {  # split: (plain per seed, adversarial per seed)
    "acc": ([0.80, 0.80, 0.81], [0.79, 0.78, 0.78]),  # validation: -1, -2, -3 points: -2.0 [-3.0, -1.0]
    "movies/acc": ([0.81, 0.82, 0.80], [0.81, 0.81, 0.81]),  # 0, -1, +1: +0.0 [-1.0, +1.0]
    "tweets/acc": ([0.70, 0.72, 0.71], [0.66, 0.69, 0.69]),  # -4, -3, -2: -3.0 [-4.0, -2.0]
    "robust_acc@0.03": ([0.50, 0.52, 0.51], [0.60, 0.58, 0.62]),  # +10, +6, +11: +9.0 [+6.0, +11.0]
    "robust_acc@0.1": ([0.20, 0.25, 0.22], [0.22, 0.24, 0.26]),  # +2, -1, +4: +1.7 [-1.0, +4.0]
    "movies/robust_acc@0.03": ([0.52, 0.50, 0.55], [0.60, 0.57, 0.58]),  # +8, +7, +3: +6.0 [+3.0, +8.0]
    "movies/robust_acc@0.1": ([0.22, 0.22, 0.22], [0.25, 0.20, 0.24]),  # +3, -2, +2: +1.0 [-2.0, +3.0]
    "tweets/robust_acc@0.03": ([0.40, 0.41, 0.42], [0.45, 0.44, 0.43]),  # +5, +3, +1: +3.0 [+1.0, +5.0]
    "tweets/robust_acc@0.1": ([0.10, 0.10, 0.10], [0.10, 0.12, 0.08]),  # 0, +2, -2: +0.0 [-2.0, +2.0]
}


def _robust_summary(seed: int, adversarial: bool, wall: float) -> dict:
    side = int(adversarial)
    value = {key: runs[side][seed] for key, runs in ROBUST_RUNS.items()}
    val = {k: v for k, v in value.items() if "/" not in k}
    test = {split: {k.split("/")[1]: v for k, v in value.items() if k.startswith(f"{split}/")}
            for split in ("movies", "tweets")}
    return {"config": {"seed": seed, "smart": {"lambda_s": 1.0 if adversarial else 0.0}, "teacher": None,
                       "data": {"ood": ["tweets"]}},
            "metric": "val/acc", "score": val["acc"], "val": val, "test": test, "data": {"val_majority": 0.5},
            "wall_time_s": wall, "curve": [[40, 0.7], [80, 0.7]], "peak_memory": None,
            "robust": {"radii": [0.03, 0.1], "steps": 5, "batches": 4, "norm": "inf", "scale": "token RMS",
                       "examples": {"val": 256, "test/movies": 256, "test/tweets": 128}, "teacher": False,
                       "seconds": 20.0}}


def test_the_robust_columns_and_the_verdict_on_fixed_runs(tmp_path: Path) -> None:
    names, summaries = [], []
    for seed, (plain_s, adversarial_s) in enumerate([(100.0, 250.0), (110.0, 260.0), (90.0, 240.0)]):
        names += ["plain", "adversarial"]
        summaries += [_robust_summary(seed, False, plain_s), _robust_summary(seed, True, adversarial_s)]
    result = compare(names, summaries)
    assert result is not None
    rows, lines = result
    text = "\n".join(lines)
    by = {(r.setting, r.split, r.radius): r for r in rows}
    expected = {("validation", None): (-2.0, -3.0, -1.0), ("movies", None): (0.0, -1.0, 1.0),
                ("tweets", None): (-3.0, -4.0, -2.0), ("validation", 0.03): (9.0, 6.0, 11.0),
                ("validation", 0.1): (5 / 3, -1.0, 4.0), ("movies", 0.03): (6.0, 3.0, 8.0),
                ("movies", 0.1): (1.0, -2.0, 3.0), ("tweets", 0.03): (3.0, 1.0, 5.0), ("tweets", 0.1): (0.0, -2.0, 2.0)}
    for (split, radius), (mean, low, high) in expected.items():
        row = by["adversarial", split, radius]
        found = (row.diff_mean, row.diff_low, row.diff_high)
        assert found == pytest.approx((mean, low, high), abs=1e-9), (split, radius)
        assert row.seeds_paired == 3 and by["plain", split, radius].diff_mean is None
    # Robust accuracy's spread over seeds, in points: the inclusive quartiles of three values.
    assert (by["adversarial", "validation", 0.03].median, by["adversarial", "validation", 0.03].q1) == pytest.approx(
        (60.0, 59.0))
    # Seconds less the attack's 20 s: medians 80 and 230.
    assert by["adversarial", "validation", 0.1].seconds == 230.0 and by["plain", "movies", 0.03].seconds == 80.0
    assert by["adversarial", "tweets", None].time_ratio == pytest.approx(230 / 80)
    assert ("| setting | validation @0.03 | validation @0.1 | movies @0.03 | movies @0.1 | tweets @0.03 | tweets @0.1 |"
            in text)
    assert "| plain | 51.0 (50.5–51.5) | 22.0 (21.0–23.5) | 52.0 (51.0–53.5) | 22.0 (22.0–22.0) |" in text
    assert "PGD, ℓ∞, radius r × each token's RMS, 5 steps, on validation 256, movies 256, tweets 128 examples" in text
    assert ("| adversarial | 3 | -2.0 [-3.0, -1.0] | +0.0 [-1.0, +1.0] | -3.0 [-4.0, -2.0] | +9.0 [+6.0, +11.0] |"
            " +1.7 [-1.0, +4.0] | +6.0 [+3.0, +8.0] | +1.0 [-2.0, +3.0] | +3.0 [+1.0, +5.0] | +0.0 [-2.0, +2.0] |"
            in text)
    assert ("- **adversarial**: -2.0 [-3.0, -1.0] points on validation over 3 seeds: a loss: the interval excludes 0."
            " Under attack: at 0.03, +9.0 [+6.0, +11.0] points on validation, a gain (confirmed on movies: +6.0"
            " [+3.0, +8.0]); at 0.1, +1.7 [-1.0, +4.0] points on validation, no evidence of a change. Out of domain"
            " (clean): tweets -3.0 [-4.0, -2.0], a loss. In all: robustness at 0.03, confirmed on test, for a clean"
            " loss on validation and out of domain on tweets, at 2.9× the time.") in text
    assert "less its robust accuracy's attack" in text and "Out of domain: tweets (data.ood)." in text
    # Two seeds: the intervals are the two differences' range, too few to claim anything from.
    two = compare(names[:4], summaries[:4])
    assert two is not None
    assert ("Under attack: at 0.03, +8.0 [+6.0, +10.0] points on validation; at 0.1, +0.5 [-1.0, +2.0] points on"
            " validation. In all: 2 seeds cannot say what robustness it bought, nor at what cost: run 3 or more. It"
            " took 2.8× the time.") in "\n".join(two[1])  # seconds: 235 against 85
    write_csv(rows, tmp_path / "compare.csv")
    with (tmp_path / "compare.csv").open(newline="") as handle:
        written = {(r["setting"], r["split"], r["radius"]): r for r in csv.DictReader(handle)}
    assert float(written["adversarial", "movies", "0.03"]["diff_low"]) == pytest.approx(3.0)
    assert written["adversarial", "movies", ""]["diff_mean"] == "0.0" and len(written) == 18
    assert plot(rows, tmp_path / "compare.png") is not None
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# The same runs attacked with two text attacks on validation and movies: DeepWordBug does not match the PGD gain at
# 0.03 (its interval spans 0), typos do. The success rates on validation.
TEXT_RUNS = {
    "deepwordbug_success_rate": ([0.60, 0.55, 0.58], [0.56, 0.57, 0.52]),  # -4, +2, -6: -2.7 [-6.0, +2.0]
    "typos_success_rate": ([0.05, 0.04, 0.06], [0.05, 0.04, 0.06]),  # 0: +0.0 [+0.0, +0.0]
    "deepwordbug_acc": ([0.30, 0.35, 0.32], [0.33, 0.33, 0.36]),  # +3, -2, +4: +1.7 [-2.0, +4.0]
    "typos_acc": ([0.70, 0.71, 0.72], [0.72, 0.74, 0.73]),  # +2, +3, +1: +2.0 [+1.0, +3.0]
    "movies/deepwordbug_acc": ([0.30, 0.30, 0.30], [0.20, 0.25, 0.30]),  # -10, -5, 0: -5.0 [-10.0, +0.0]
    "movies/typos_acc": ([0.70, 0.70, 0.70], [0.70, 0.70, 0.70]),  # 0: +0.0 [+0.0, +0.0]
}


def _text_summary(seed: int, adversarial: bool, wall: float) -> dict:
    summary = _robust_summary(seed, adversarial, wall)
    for key, runs in TEXT_RUNS.items():
        split, _, name = key.rpartition("/")
        (summary["test"][split] if split else summary["val"])[name] = runs[int(adversarial)][seed]
        summary["val"][f"{name}_queries"] = 30.0  # the other text-attack metrics are not columns
    summary["text_attacks"] = {"attacks": ["deepwordbug", "typos"], "examples": {"val": 256, "test/movies": 256},
                               "sample": 256, "seed": seed, "typo_rate": 0.1, "teacher": False,
                               "seconds": {"deepwordbug": 30.0, "typos": 5.0}}
    return summary


def test_the_text_attack_columns_and_the_verdict_on_fixed_runs(tmp_path: Path) -> None:
    names, summaries = [], []
    for seed, (plain_s, adversarial_s) in enumerate([(100.0, 250.0), (110.0, 260.0), (90.0, 240.0)]):
        names += ["plain", "adversarial"]
        summaries += [_text_summary(seed, False, plain_s), _text_summary(seed, True, adversarial_s)]
    result = compare(names, summaries)
    assert result is not None
    rows, lines = result
    text = "\n".join(lines)
    by = {(r.setting, r.split, r.measure): r for r in rows}
    expected = {("validation", "deepwordbug"): (5 / 3, -2.0, 4.0), ("validation", "typos"): (2.0, 1.0, 3.0),
                ("movies", "deepwordbug"): (-5.0, -10.0, 0.0), ("movies", "typos"): (0.0, 0.0, 0.0)}
    for (split, attack), (mean, low, high) in expected.items():
        row = by["adversarial", split, attack]
        assert (row.diff_mean, row.diff_low, row.diff_high) == pytest.approx((mean, low, high), abs=1e-9)
        assert row.attack == attack and row.radius is None and row.seeds_paired == 3
    assert not any(r.attack == "deepwordbug_queries" or r.split.endswith("queries") for r in rows)
    flipped = by["adversarial", "validation", "deepwordbug_success_rate"]
    assert (flipped.diff_mean, flipped.diff_low, flipped.diff_high) == pytest.approx((-8 / 3, -6.0, 2.0), abs=1e-9)
    assert flipped.median == pytest.approx(56.0) and by["plain", "validation", "typos_success_rate"].median == 5.0
    success_table = lines.index("| setting | validation deepwordbug | validation typos |")
    assert lines[success_table - 2].startswith("The text attacks' success rates (points: of the examples first right,")
    assert lines[success_table + 2:success_table + 4] == ["| adversarial | -2.7 [-6.0, +2.0] | +0.0 [+0.0, +0.0] |", ""]
    # Seconds less the PGD attack's 20 s and the text attacks' 35 s: medians 45 and 195.
    assert by["adversarial", "validation", None].seconds == 195.0 and by["plain", "movies", "typos"].seconds == 45.0
    assert ("Accuracy (points) under the text attacks (deepwordbug, typos on 256 examples of each split (seed 0;"
            " typos at rate 0.1), against the exported final weights). Median (IQR) over seeds:") in text
    assert "| setting | validation deepwordbug | validation typos | movies deepwordbug | movies typos |" in text
    assert "| plain | 32.0 (31.0–33.5) | 71.0 (70.5–71.5) | 30.0 (30.0–30.0) | 70.0 (70.0–70.0) |" in text
    assert (" +6.0 [+3.0, +8.0] | +1.0 [-2.0, +3.0] | +3.0 [+1.0, +5.0] | +0.0 [-2.0, +2.0] | +1.7 [-2.0, +4.0] |"
            " +2.0 [+1.0, +3.0] | -5.0 [-10.0, +0.0] | +0.0 [+0.0, +0.0] |") in text
    assert (" Its embedding-space gain (at 0.03) is **not matched** under deepwordbug: on validation deepwordbug"
            " +1.7 [-2.0, +4.0], typos +2.0 [+1.0, +3.0] points. Success rates against plain's (− is fewer flipped):"
            " deepwordbug -2.7 [-6.0, +2.0], typos +0.0 [+0.0, +0.0] points.") in text
    assert "less its robust accuracy's attack and text attacks" in text
    write_csv(rows, tmp_path / "compare.csv")
    with (tmp_path / "compare.csv").open(newline="") as handle:
        written = {(r["setting"], r["split"], r["radius"], r["attack"]): r for r in csv.DictReader(handle)}
    assert float(written["adversarial", "movies", "", "deepwordbug"]["diff_low"]) == pytest.approx(-10.0)
    assert float(written["adversarial", "validation", "", "deepwordbug_success_rate"]["diff_low"]) == -6.0
    assert written["adversarial", "movies", "", ""]["diff_mean"] == "0.0" and len(written) == 30
    assert plot(rows, tmp_path / "compare.png") is not None


def test_a_loss_is_compared_as_lower_is_better_in_its_own_units() -> None:
    """data=sft monitors val/loss: a setting whose loss is lower gains, and plain's falling curve has not peaked."""
    names, summaries = [], []
    for seed, (plain, neftune) in enumerate([(2.50, 2.40), (2.60, 2.45), (2.55, 2.50)]):
        for name, loss, alpha in (("plain", plain, 0.0), ("neftune", neftune, 5.0)):
            names.append(name)
            summaries.append({"config": {"seed": seed, "smart": {"lambda_s": 0.0, "neftune_alpha": alpha},
                                         "teacher": None},
                              "metric": "val/loss", "score": loss, "val": {"loss": loss}, "test": {}, "data": {},
                              "wall_time_s": 10.0, "curve": [[40, loss + 0.3], [80, loss]], "peak_memory": None})
    result = compare(names, summaries)
    assert result is not None
    rows, lines = result
    text = "\n".join(lines)
    neftune = next(r for r in rows if r.setting == "neftune")
    assert neftune.diff_mean == pytest.approx((0.10 + 0.15 + 0.05) / 3) and neftune.median == pytest.approx(2.45)
    assert "(its own units, lower is better)" in text and "plain minus the setting, so + is a gain" in text
    assert "- **neftune**: +0.1 [" in text and "less loss on validation over 3 seeds" in text
    assert "still falls at its last validation" in text and "40: 2.850, 80: 2.550" in text


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
@pytest.mark.slow
def test_experiment_compare_through_hydra_writes_the_report_from_the_runs_files(tmp_path: Path, launcher: str) -> None:
    """A real sweep: the 2-layer model on the shipped movie snippets, plain and the teacher on 2 seeds, with
    Hydra's basic launcher and with a parallel one (hydra-joblib-launcher, 2 jobs at a time)."""
    sweep = tmp_path / "compare"
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    result = smart_train(["-m", "experiment=compare", "setting=plain,teacher", "seed=0,1", *TINY, *parallel,
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 4
    assert "comparison with plain fine-tuning" in result.stdout and "What the evidence says" in result.stdout
    runs = {(s["config"]["teacher"] is not None, s["config"]["seed"]): s for s in summaries}
    assert set(runs) == {(False, 0), (False, 1), (True, 0), (True, 1)}
    with (sweep / "compare.csv").open(newline="") as handle:
        rows = {(r["setting"], r["split"]): r for r in csv.DictReader(handle)}
    # Read back from the runs' own summaries: the paired difference on validation and the time ratio.
    diffs = [100 * (runs[True, seed]["score"] - runs[False, seed]["score"]) for seed in (0, 1)]
    assert float(rows["teacher", "validation"]["diff_mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-4)
    seconds = [statistics.median(runs[teacher, seed]["wall_time_s"] for seed in (0, 1)) for teacher in (False, True)]
    assert float(rows["teacher", "validation"]["time_ratio"]) == pytest.approx(seconds[1] / seconds[0], abs=1e-4)
    assert float(rows["plain", "movies"]["median"]) == pytest.approx(
        statistics.median(100 * runs[False, seed]["test"]["movies"]["acc"] for seed in (0, 1)), abs=1e-4)
    assert rows["plain", "validation"]["diff_mean"] == "" and rows["teacher", "validation"]["seeds_paired"] == "2"
    report = (sweep / "compare.md").read_text()
    assert "| teacher | 2 |" in report and "- **teacher**: " in report and "over 2 seeds" in report
    assert (sweep / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(s["peak_memory"]["mib"] > 0 and len(s["curve"]) == 2 for s in summaries)


def test_the_robustness_verdict_claims_no_more_than_its_intervals() -> None:
    """A gain on validation that test does not confirm, no out-of-domain split; no gain and a clean loss."""
    unconfirmed = stats.robustness_verdict(
        [(0.03, (0.0, 0.0, 0.0), [("movies", (-1.0, -1.6, 0.0))]),
         (0.1, (3.6, 1.6, 7.8), [("movies", (1.0, -3.1, 4.7))])],
        [("validation", (-3.2, -9.7, 0.0)), ("movies", (-1.6, -5.0, 0.3))], [], 1.1)
    assert unconfirmed == (
        "Under attack: at 0.03, +0.0 [+0.0, +0.0] points on validation, no evidence of a change; at 0.1, +3.6 [+1.6,"
        " +7.8] points on validation, a gain (not confirmed on movies: +1.0 [-3.1, +4.7]). In all: robustness at 0.1"
        " on validation, which test does not confirm, with no clean loss the intervals show (no out-of-domain split:"
        " data.ood), at 1.1× the time.")
    assert stats.robustness_verdict([(0.1, (0.5, -1.0, 2.0), [])], [("validation", (-2.0, -3.0, -1.0))], []) == (
        "Under attack: at 0.1, +0.5 [-1.0, +2.0] points on validation, no evidence of a change. In all: no robustness"
        " the intervals show at these radii, and a clean loss on validation (no out-of-domain split: data.ood).")
