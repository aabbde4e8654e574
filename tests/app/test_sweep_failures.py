"""A sweep outlives a job that fails at run time: the job's folder keeps its error, the other jobs run, the reports
name it and the command exits with status 1. A config error and a Ctrl-C still stop the sweep at once."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from lightning_smart.app import sweep
from lightning_smart.app.summary import summarize_failure
from tests.helpers.app import TINY, smart_train
from tests.helpers.failing import MESSAGE

REPO = Path(__file__).resolve().parents[2]
OOM = MESSAGE.format(step=2)


def _fail(job: int | None, error: str = "RuntimeError") -> str:
    """The override that adds :class:`tests.helpers.failing.FailAt` to the run's callbacks: step 2, its third batch."""
    at = "" if job is None else f", job: {job}"
    return f"+callbacks.fail={{_target_: tests.helpers.failing.FailAt, step: 2{at}, error: {error}}}"


@pytest.fixture
def helpers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command runs in another folder: let it import ``tests.helpers``, as a user's own callback would be."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def _completed(setting: str, seed: int, acc: float, lambda_s: float, teacher: bool) -> dict[str, Any]:
    return {"status": "completed", "overrides": [f"setting={setting}", f"seed={seed}"], "metric": "val/acc",
            "score": acc, "val": {"acc": acc}, "val_teacher": None, "test": {"movies": {"acc": acc}},
            "config": {"seed": seed, "smart": {"lambda_s": lambda_s}, "teacher": {"mu": 1.0} if teacher else None},
            "data": {"val_majority": 0.5}, "wall_time_s": 100.0, "curve": [[4, acc]], "peak_memory": None,
            "files": {}}


def _failed(setting: str, seed: int, lambda_s: float, teacher: bool) -> dict[str, Any]:
    cfg = OmegaConf.create({"seed": seed, "metric": None, "smart": {"lambda_s": lambda_s},
                            "teacher": {"mu": 1.0} if teacher else None})
    summary = summarize_failure(cfg, RuntimeError(f"{OOM}\nmore of the message"), 12.0, "error.txt")
    return {**summary, "overrides": [f"setting={setting}", f"seed={seed}"]}


def test_the_reports_count_and_name_the_failed_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From the jobs' files: the aggregate and the comparison count each failed job in its setting and name its error,
    the sweep's end says so with exit status 1, and ``smart-aggregate`` prints them (and exits 0: it reports)."""
    summaries = [_completed("plain", 0, 0.80, 0.0, False), _completed("plain", 1, 0.70, 0.0, False),
                 _completed("teacher", 0, 0.84, 0.0, True), _failed("teacher", 1, 0.0, True),
                 _failed("paper", 0, 1.0, True)]
    for job, summary in enumerate(summaries):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit) as stopped:
        sweep.AggregateSweep().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert str(stopped.value) == (
        f"2 of 5 jobs failed; their folders hold the error (summary.json, error.txt) and the reports in {tmp_path} name"
        f" them:\n3 (seed=1 setting=teacher): RuntimeError: {OOM}\n4 (seed=0 setting=paper): RuntimeError: {OOM}")

    aggregate = (tmp_path / "aggregate.md").read_text().splitlines()
    assert aggregate[0] == f"Across seeds: median (mean ± std). 5 jobs in {tmp_path}, 2 failed (no metrics)."
    assert aggregate[2:7] == ["| setting | n | failed | val/acc | test/movies/acc |", "|---|---|---|---|---|",
                              "| setting=plain | 2 | 0 | 0.750 (0.750 ± 0.071) | 0.750 (0.750 ± 0.071) |",
                              "| setting=teacher | 1 | 1 | 0.840 (0.840 ± 0.000) | 0.840 (0.840 ± 0.000) |",
                              "| setting=paper | 0 | 1 | — | — |"]
    assert aggregate[-2:] == [f"- 3 (seed=1 setting=teacher): RuntimeError: {OOM}",
                              f"- 4 (seed=0 setting=paper): RuntimeError: {OOM}"]

    report = (tmp_path / "compare.md").read_text().splitlines()
    assert "| plain | 2 | 0 | 75.0 (72.5–77.5) | 75.0 (72.5–77.5) | 100 | 1.00 | – |" in report
    assert "| teacher | 2 | 1 (1 raised) | 84.0 (84.0–84.0) | 84.0 (84.0–84.0) | 100 | 1.00 | – |" in report
    assert "| paper | 1 | 1 (1 raised) | – | – | – | – | – |" in report
    start = report.index("Runs that raised (counted as failed, left out of every statistic):")
    assert report[start + 2:start + 4] == [f"- teacher, seed 1: RuntimeError: {OOM} (traceback: 3/error.txt)",
                                           f"- paper, seed 0: RuntimeError: {OOM} (traceback: 4/error.txt)"]
    assert report[-1].startswith("Failed: a run that raised, or one whose final validation accuracy is within 1 point")
    with (tmp_path / "compare.csv").open(newline="") as handle:
        rows = {(r["setting"], r["split"]): r for r in csv.DictReader(handle)}
    assert (rows["teacher", "validation"]["n"], rows["teacher", "validation"]["failed"]) == ("1", "1")
    assert rows["teacher", "validation"]["diff_mean"] == "4.0" and rows["teacher", "validation"]["seeds_paired"] == "1"
    assert not [key for key in rows if key[0] == "paper"]  # no run of it trained: nothing to put in numbers

    capsys.readouterr()
    sweep.aggregate_main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert f"Failed jobs:\n  3 (seed=1 setting=teacher): RuntimeError: {OOM}\n" in printed


def test_a_sweep_whose_every_job_failed_still_names_them(tmp_path: Path) -> None:
    for job, seed in enumerate((1, 2)):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "summary.json").write_text(json.dumps(_failed("plain", seed, 0.0, False)))
    sweep.write(tmp_path)
    assert (tmp_path / "aggregate.md").read_text().splitlines()[2:] == [
        "| setting | n | failed |", "|---|---|---|", "| all | 0 | 2 |", "",
        "Failed jobs (each folder holds summary.json, marked failed, and error.txt, the traceback):", "",
        f"- 0 (seed=1): RuntimeError: {OOM}", f"- 1 (seed=2): RuntimeError: {OOM}"]
    assert not (tmp_path / "compare.md").exists() and not (tmp_path / "val_curves.png").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("helpers_importable")
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_outlives_a_job_that_fails_at_run_time(tmp_path: Path, launcher: str) -> None:
    """Three jobs, the second failing at its third batch: basic, plain, the paper's method and the teacher
    (``experiment=compare``); joblib, 2 jobs at a time, three seeds of plain fine-tuning."""
    folder = tmp_path / "sweep"
    if launcher == "basic":
        swept = ["experiment=compare", "setting=plain,paper,teacher", "seed=0"]
    else:
        swept = ["smart=off", "teacher=off", "seed=1,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = smart_train(["-m", *swept, *TINY, _fail(job=1), f"hydra.sweep.dir={folder}"], cwd=tmp_path)
    named = "setting=paper" if launcher == "basic" else "seed=2"
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.endswith(
        f"1 of 3 jobs failed; their folders hold the error (summary.json, error.txt) and the reports in {folder} name"
        f" them:\n1 ({named}): RuntimeError: {OOM}\n")

    failed = json.loads((folder / "1/summary.json").read_text())
    assert failed["status"] == "failed" and failed["score"] is None and failed["wall_time_s"] > 0
    assert failed["error"] == {"type": "RuntimeError", "message": OOM, "traceback": "error.txt"}
    traceback = (folder / "1/error.txt").read_text()
    assert traceback.startswith("Traceback (most recent call last):") and traceback.endswith(f"RuntimeError: {OOM}\n")
    assert "in on_train_batch_start" in traceback
    others = [json.loads((folder / f"{job}/summary.json").read_text()) for job in (0, 2)]
    assert [s["status"] for s in others] == ["completed"] * 2 and all(s["steps"] == 4 for s in others)

    aggregate = (folder / "aggregate.md").read_text()
    assert f"- 1 ({named}): RuntimeError: {OOM}" in aggregate and ", 1 failed (no metrics)." in aggregate
    if launcher == "basic":
        report = (folder / "compare.md").read_text()
        assert "| paper | 1 | 1 (1 raised) | – | – | – | – | – |" in report
        assert f"- paper, seed 0: RuntimeError: {OOM} (traceback: 1/error.txt)" in report
        teacher = next(line for line in report.splitlines() if line.startswith("| teacher | 1 | "))
        assert "raised" not in teacher  # it trained
    else:
        assert "| all | 2 | 1 |" in aggregate


@pytest.mark.slow
@pytest.mark.usefixtures("helpers_importable")
def test_an_optuna_study_records_the_failed_trial_and_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    folder = tmp_path / "optuna"
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, _fail(job=1),
            f"hydra.sweep.dir={folder}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"[HYDRA] Failed experiment: Return value must be float-castable. Got 'job failed (RuntimeError: {OOM})," \
        f" its folder holds the traceback: {folder / '1'}'." in result.stdout
    summaries = [json.loads((folder / f"{job}/summary.json").read_text()) for job in range(3)]
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    best = OmegaConf.load(folder / "optimization_results.yaml")
    assert best.best_value == max(summaries[0]["score"], summaries[2]["score"])
    assert f"RuntimeError: {OOM}" in (folder / "aggregate.md").read_text()
    assert "1 of 3 jobs failed; their folders hold the error" in result.stderr


@pytest.mark.usefixtures("helpers_importable")
@pytest.mark.parametrize("case", ["config error", "ctrl-c", "single run"])
@pytest.mark.slow
def test_what_still_stops_at_once(tmp_path: Path, case: str) -> None:
    """In a sweep, a config error found before training and a Ctrl-C stop it: no further job starts and no failure is
    recorded. A single run raises a run-time error as it always has, with its traceback."""
    folder = tmp_path / "sweep"
    if case == "config error":
        args = ["-m", "smart.lambda_s=-1,1", *TINY, f"hydra.sweep.dir={folder}"]
    elif case == "ctrl-c":
        args = ["-m", "seed=1,2", "smart=off", "teacher=off", *TINY, _fail(job=0, error="KeyboardInterrupt"),
                f"hydra.sweep.dir={folder}"]
    else:
        args = ["smart=off", "teacher=off", *TINY, _fail(job=None), f"hydra.run.dir={folder}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    if case == "config error":
        assert result.stderr.endswith(" is not allowed: lambda_s must be ≥ 0\n")
        stop = result.stderr.splitlines()[-1]
        assert stop.startswith("Error in the config of job 0 (smart.lambda_s=-1 model=minilm_l2 ")
        assert stop.endswith(" progress_bar=False), the sweep stops: smart.lambda_s=-1.0 is not allowed: lambda_s must"
                             " be ≥ 0")
        assert not folder.joinpath("0").exists()  # it held only Hydra's files
    elif case == "ctrl-c":
        assert "Detected KeyboardInterrupt, attempting graceful shutdown" in result.stdout + result.stderr
        assert not (folder / "0/summary.json").exists() and not (folder / "0/error.txt").exists()
    else:
        assert f"RuntimeError: {OOM}\n" in result.stderr and "Traceback (most recent call last)" in result.stderr
        assert not (folder / "summary.json").exists() and not (folder / "error.txt").exists()
    assert not folder.joinpath("1").exists() and not (folder / "aggregate.md").exists()
