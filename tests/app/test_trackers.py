"""logger=mlflow and logger=wandb: a real sweep read back from MLflow's SQLite store through MLflow's client, and from
W&B's offline run files; a missing extra refused before training; a job that raised leaves its runs failed."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from wandb.proto import wandb_internal_pb2

from lightning_smart.app import trackers
from lightning_smart.app.cli import build, check
from lightning_smart.config import ConfigError
from tests.helpers.app import TINY, app_config, smart_train

TRACKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_ENTITY")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The trackers' environment: none set by the user, W&B offline with its own folders under ``tmp_path``."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    return tmp_path


def wandb_records(run_folder: Path) -> Iterator[Any]:
    """The records of the one W&B offline run under ``run_folder``/wandb: its ``run-<id>.wandb`` file is a LevelDB log
    (32 KiB blocks, each record a 7-byte header and a chunk) of W&B's own protobuf records."""
    (path,) = run_folder.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    position, record = 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            return
        record += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(record)
            record = b""


def wandb_run(run_folder: Path) -> dict[str, Any]:
    """A W&B offline run as its records hold it: the run record, config, history rows, summary, artifacts and exit."""
    found: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "artifacts": [], "exit": None}

    def items(updates: Any) -> dict[str, Any]:
        return {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in updates}

    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["run"] = record.run
            found["config"] |= items(record.run.config.update)
        elif kind == "config":
            found["config"] |= items(record.config.update)
        elif kind == "history":
            found["history"].append(items(record.history.item))
        elif kind == "summary":
            found["summary"] |= items(record.summary.update)
        elif kind == "artifact":
            found["artifacts"].append(record.artifact)
        elif kind == "exit":
            found["exit"] = record.exit.exit_code
    return found


def logged_metrics(run_folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric the run logged, from its ``csv/metrics.csv``: ``(step, value)`` in the order logged."""
    with (run_folder / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = [name for name in rows[0] if name != "step"]
    return {name: [(int(r["step"]), float(r[name])) for r in rows if r[name]] for name in names}


@pytest.mark.slow  # a 2-job sweep through smart-train: about a minute of CPU
def test_a_sweep_in_mlflow_and_in_wandb_offline_read_back(offline: Path) -> None:
    """Two jobs with both trackers: each job's run holds the composed config, every metric the CSV holds, the summary
    and the run's files; the sweep's run holds its reports, in MLflow as the jobs' parent, in W&B in their group."""
    sweep = offline / "sweep"
    args = ["-m", "logger=[mlflow,wandb]", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}"]
    result = smart_train(args, cwd=offline)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{offline / 'mlflow.db'}")  # MLflow's default store, where the sweep started
    experiment = client.get_experiment_by_name("smart-train")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"sweep", "sweep/0", "sweep/1"}
    parent = runs["sweep"]
    reports = sorted(p.name for p in sweep.iterdir() if p.is_file())
    assert {"multirun.yaml", "aggregate.md", "aggregate.csv", "val_curves.png"} <= set(reports)
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == reports
    shown = Path(client.download_artifacts(parent.info.run_id, "aggregate.md", str(offline / "down")))
    assert shown.read_text() == (sweep / "aggregate.md").read_text()

    for job in ("0", "1"):
        folder, run = sweep / job, runs[f"sweep/{job}"]
        summary = json.loads((folder / "summary.json").read_text())
        config = trackers.flat_config(OmegaConf.create(summary["config"]))
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["smart.sweep_dir"] == str(sweep) and run.data.tags["smart.job"] == job
        assert {k: run.data.params.get(k) for k in config} == {k: str(v)[:250] for k, v in config.items()}
        assert run.data.params["seed"] == str(int(job) + 1)
        metrics = logged_metrics(folder)
        assert {"train/loss", "val/acc", "val/acc_teacher", "test/movies/acc", "epoch"} <= set(metrics)
        for name, points in metrics.items():
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted((m.step, m.value) for m in history) == sorted(points), name
        assert run.data.metrics["summary/score"] == summary["score"] and run.data.metrics["summary/steps"] == 4
        assert set(run.data.metrics) == set(metrics) | set(trackers.summary_numbers(summary))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
        assert artifacts == {"summary.json", "smart-train.log", ".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml",
                             ".hydra/overrides.yaml"}
        down = Path(client.download_artifacts(run.info.run_id, "summary.json", str(offline / "down" / job)))
        assert json.loads(down.read_text()) == summary

        recorded = wandb_run(folder)
        assert (recorded["run"].display_name, recorded["run"].run_group) == (f"sweep/{job}", "sweep")
        assert {k: recorded["config"].get(k) for k in config} == json.loads(json.dumps(config))
        for name, points in metrics.items():
            history = [(row["trainer/global_step"], row[name]) for row in recorded["history"] if name in row]
            assert history == points, name
        assert recorded["summary"]["summary/score"] == summary["score"] and recorded["exit"] == 0
        (files,) = recorded["artifacts"]
        assert files.type == "run-files"
        staged = {entry.path: Path(entry.local_path) for entry in files.manifest.contents}
        assert set(staged) == {"summary.json", "smart-train.log", ".hydra/config.yaml", ".hydra/hydra.yaml",
                               ".hydra/overrides.yaml"}
        assert json.loads(staged["summary.json"].read_text()) == summary
        assert staged[".hydra/config.yaml"].read_text() == (folder / ".hydra" / "config.yaml").read_text()

    recorded = wandb_run(sweep)
    assert (recorded["run"].display_name, recorded["run"].run_group, recorded["run"].job_type) == (
        "sweep", "sweep", "sweep")
    (report,) = recorded["artifacts"]
    staged = {entry.path: Path(entry.local_path) for entry in report.manifest.contents}
    assert report.type == "sweep-report" and sorted(staged) == reports and recorded["exit"] == 0
    assert staged["val_curves.png"].read_bytes() == (sweep / "val_curves.png").read_bytes()


@pytest.mark.parametrize(("hidden", "overrides", "message"), [
    ("mlflow", ["logger=mlflow"], 'logger.mlflow needs MLflow, which is not installed: pip install'
                                  ' "lightning-smart[mlflow]" (or logger=csv)'),
    ("wandb", ["logger=wandb"], 'logger.wandb needs Weights & Biases, which is not installed: pip install'
                                ' "lightning-smart[wandb]" (or logger=csv)'),
    ("alembic", ["logger=mlflow", "logger.mlflow.tracking_uri=sqlite:///runs.db"],
     'logger.mlflow.tracking_uri is a sqlite store, which MLflow reaches through alembic, not installed: pip install'
     ' "lightning-smart[mlflow]"'),
])
def test_a_missing_extra_is_refused_before_training(hidden: str, overrides: list[str], message: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The package made unimportable as Python's import system does it for an absent one (``sys.modules[name] =
    None``): the check refuses the config, naming the key and the install command."""
    monkeypatch.setitem(sys.modules, hidden, None)
    with app_config([*TINY, *overrides]) as cfg, pytest.raises(ConfigError) as refused:
        check(cfg)
    assert str(refused.value) == message


def test_a_job_that_raised_leaves_its_runs_failed_and_the_next_one_starts_new_runs(offline: Path) -> None:
    """A job of a sweep that raises never reaches :func:`trackers.finish`: the next job's start closes its runs as
    failed, so that W&B does not log the next job into the open run."""
    overrides = [*TINY, "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri=sqlite:///{offline / 'mlflow.db'}"]
    with app_config(overrides) as cfg:
        first = build(cfg, offline / "first")
        trackers.start(cfg, first.trainer)  # the job then raised
        second = build(cfg, offline / "second")
        trackers.start(cfg, second.trainer)
        trackers.finish(second.trainer, offline / "second", {"score": 0.5, "steps": 0})
    client = MlflowClient(f"sqlite:///{offline / 'mlflow.db'}")
    runs = {run.info.run_name: run.info.status for run in client.search_runs(
        [client.get_experiment_by_name("smart-train").experiment_id])}
    assert runs == {str(offline / "first"): "FAILED", str(offline / "second"): "FINISHED"}
    failed, finished = wandb_run(offline / "first"), wandb_run(offline / "second")
    assert (failed["exit"], finished["exit"]) == (1, 0) and failed["run"].run_id != finished["run"].run_id
    assert failed["config"]["model.name_or_path"] == cfg.model.name_or_path


@pytest.mark.slow
def test_a_single_run_that_raised_after_training_leaves_its_runs_failed(offline: Path) -> None:
    """A run that raises after ``fit`` (here its export, made to fail) finds Lightning's loggers already finalized as a
    success: the command closes them again as failed, and re-raises."""
    boom = ("import sys; import lightning_smart.app.cli as cli\n"
            "def export_pretrained(*args, **kwargs): raise OSError('No space left on device (made to fail)')\n"
            "cli.export_pretrained = export_pretrained; sys.argv[0] = 'smart-train'; cli.main()")
    done = subprocess.run(
        [sys.executable, "-c", boom, *TINY, "logger=[mlflow,wandb]",
         f"logger.mlflow.tracking_uri=sqlite:///{offline / 'mlflow.db'}", f"hydra.run.dir={offline / 'run'}"],
        cwd=offline, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}, capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 1 and "OSError: No space left on device (made to fail)" in done.stderr
    client = MlflowClient(f"sqlite:///{offline / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("smart-train").experiment_id])
    assert (run.info.run_name, run.info.status) == ("run", "FAILED")  # named by its folder, relative to the cwd
    assert run.data.metrics["train/loss"] > 0  # it trained, and Lightning closed it as a success, before the export
    assert wandb_run(offline / "run")["exit"] == 1
