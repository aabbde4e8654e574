"""The app where users run it: a resumed run equals an uninterrupted one; DDP under --multirun; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_smart.app.cli import build, train
from lightning_smart.config import ConfigError
from lightning_smart.data import DataError
from lightning_smart.teacher import EMATeacherCallback
from tests.helpers.app import TINY, app_config, smart_train, stopped_run, write_csv

# 64 training examples in batches of 16: 4 optimizer steps an epoch, 8 in all, validated (and last.ckpt written)
# every 2 steps: mid-epoch and at each epoch's end. Dropout stays on (the model's 0.1), and so does the σ-noise.
RESUMABLE = [
    *[o for o in TINY if not o.startswith(("checkpoint.", "trainer.max_steps", "trainer.val_check_interval"))],
    "trainer.max_steps=8",
    "trainer.val_check_interval=2",
    "checkpoint.save_last=true",
    "smart.sigma=1e-3",
]


def _final(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The student's weights and the teacher's EMA tensors in a run's ``last.ckpt``, checked to be its 8th step."""
    ckpt = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8  # the final step's, where Lightning's own save_last keeps the latest best's
    return ckpt["state_dict"], ckpt["callbacks"]["EMATeacherCallback"]["ema"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The run that never stopped: its summary and its folder."""
    out = tmp_path_factory.mktemp("straight")
    with app_config(RESUMABLE) as cfg:
        return train(cfg, out), out


@pytest.mark.parametrize(("at", "saved"), [(3, 2), (7, 6), (5, 4)],
                         ids=["mid-first-epoch", "mid-second-epoch", "epoch-end"])
@pytest.mark.slow
def test_a_resumed_run_ends_like_an_uninterrupted_one(
    tmp_path: Path, straight: tuple[dict, Path], at: int, saved: int
) -> None:
    """Stopped at step ``at``, resumed from its last.ckpt (step ``saved``), with dropout on: the same run."""
    run, last = stopped_run(RESUMABLE, tmp_path / "stopped", at)
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == saved  # the latest validation
    assert run.model.model.config.hidden_dropout_prob == 0.1 and run.model.model.training  # dropout on

    with app_config([*RESUMABLE, f"ckpt_path={last}"]) as cfg:
        resumed = train(cfg, tmp_path / "resumed")
    (summary, out) = straight
    (student, teacher), (resumed_student, resumed_teacher) = _final(out), _final(tmp_path / "resumed")

    assert resumed["steps"] == summary["steps"] == 8
    assert resumed["val"] == summary["val"] and resumed["val_teacher"] == summary["val_teacher"]
    assert resumed["test"] == summary["test"]
    assert student.keys() == resumed_student.keys() and teacher.keys() == resumed_teacher.keys()
    for name, value in student.items():
        assert torch.equal(value, resumed_student[name]), name
    for name, value in teacher.items():
        assert torch.equal(value, resumed_teacher[name]), name
    # The teacher moved away from the student: a resume that restarted it from the student would differ.
    assert any(not torch.equal(value, student[name]) for name, value in teacher.items())


@pytest.mark.slow
def test_ddp_is_refused_under_multirun_before_training(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=1,2", "trainer.strategy=ddp", "trainer.devices=2", *TINY, f"hydra.sweep.dir={sweep}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 1
    assert "trainer.strategy='ddp' re-launches the command line in each worker" in result.stderr, result.stderr[-2000:]
    assert "trainer.strategy=ddp_spawn" in result.stderr
    assert not list(sweep.glob("*/summary.json")) and not list(sweep.glob("*/checkpoints"))


@pytest.mark.slow
def test_ddp_spawn_under_multirun_runs_each_job_once(tmp_path: Path) -> None:
    """The supported way: spawned workers run the job, the sweep runs once (2 jobs × 2 processes)."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=1,2", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.strategy=ddp_spawn", "trainer.precision=32-true", *TINY, "trainer.max_steps=2",
            "checkpoint.save_top_k=1", f"hydra.sweep.dir={sweep}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["config"]["seed"] for s in summaries] == [1, 2]
    assert all(s["steps"] == 2 and 0 <= s["score"] <= 1 for s in summaries)
    # One validation (step 2): the best checkpoint is that step, and its score came back from the workers.
    assert [s["best"]["score"] for s in summaries] == [s["score"] for s in summaries]
    assert all((sweep / str(i) / s["best"]["checkpoint"]).is_file() for i, s in enumerate(summaries))
    assert all(0 <= s["test"]["movies"]["acc"] <= 1 for s in summaries)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no sweep inside a worker
    assert result.stdout.count("Launching 2 jobs locally") == 1 and not (tmp_path / "multirun").exists()
    assert "| seed" not in (sweep / "aggregate.md").read_text() and (sweep / "aggregate.md").is_file()


def _labels_csv(tmp_path: Path, labels: list[int]) -> Path:
    return write_csv(tmp_path / "labels.csv", "text,label", [f"text {i},{label}" for i, label in enumerate(labels)])


@pytest.mark.parametrize(
    ("overrides", "error", "named"),
    [
        (["data=csv", "data.path={labels}", "data.num_labels=2"], DataError,
         ["labels.csv line 4", "5", "data.num_labels=2"]),
        (["data=csv", "data.path={empty}"], DataError, ["empty.csv", "no rows"]),
        (["smart.perturb_at=encoder.nowhere"], ConfigError, ["smart.perturb_at='encoder.nowhere'"]),
        (["smart.ascent_steps=-1"], ConfigError, ["smart.ascent_steps=-1", "integer ≥ 0"]),
        (["teacher.beta=1.0"], ConfigError, ["teacher.beta=1.0", "in [0, 1)"]),
        (["smart.norm=l1"], ConfigError, ["smart.norm='l1'", "inf, l2"]),
    ],
    ids=["label-outside-num-labels", "empty-dataset", "perturb-at", "ascent-steps", "beta", "norm"],
)
def test_bad_input_fails_before_training_with_one_message(
    tmp_path: Path, overrides: list[str], error: type[Exception], named: list[str]
) -> None:
    files = {"labels": _labels_csv(tmp_path, [0, 1, 5, 0] * 10),
             "empty": write_csv(tmp_path / "empty.csv", "text,label", [])}
    with app_config([*TINY, *(o.format(**files) for o in overrides)]) as cfg, pytest.raises(error) as raised:
        build(cfg, tmp_path / "run")  # everything short of fit
    for part in named:
        assert part in str(raised.value), str(raised.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint", None], ids=["unreadable", "foreign"])
def test_an_unreadable_or_foreign_checkpoint_is_named_and_the_run_writes_no_summary(
    tmp_path: Path, content: bytes | None
) -> None:
    ckpt = tmp_path / "given.ckpt"
    if content is None:  # a checkpoint of another model: a state_dict whose names are not ours
        torch.save({"state_dict": {"other.weight": torch.zeros(1)}, "pytorch-lightning_version": pl.__version__}, ckpt)
    else:
        ckpt.write_bytes(content)
    with app_config([*TINY, f"ckpt_path={ckpt}"]) as cfg, pytest.raises(ConfigError) as raised:
        train(cfg, tmp_path / "run")
    expected = "is not a readable checkpoint: UnpicklingError" if content else "was saved from another model"
    assert f"ckpt_path={str(ckpt)!r} {expected}" in str(raised.value)
    assert not (tmp_path / "run").exists()


class _CreatesFile:
    """Unpickled, it opens ``path`` for writing: what a crafted checkpoint's payload would run instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_before_its_code_runs(tmp_path: Path) -> None:
    """A ``ckpt_path`` whose unpickling would run code: one line naming the setting, no run, the code never ran."""
    marker, crafted = tmp_path / "created-by-the-checkpoint", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": pl.__version__, "hook": _CreatesFile(marker)}, crafted)
    run_dir = tmp_path / "run"
    result = smart_train([*TINY, f"ckpt_path={crafted}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    refused = [line for line in result.stderr.splitlines() if "is refused" in line]
    assert len(refused) == 1 and f"ckpt_path={str(crafted)!r} is refused" in refused[0], result.stderr[-2000:]
    assert "open" in refused[0].split("pickled call to ")[1]  # names what it would have called
    assert not marker.exists() and not run_dir.exists()
    # The payload is live: trusting the file (weights_only=False) runs it.
    torch.load(crafted, weights_only=False)
    assert marker.exists()


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "none.ckpt"
    with app_config([*TINY, f"ckpt_path={missing}"]) as cfg, pytest.raises(ConfigError) as raised:
        build(cfg, tmp_path / "run")
    assert str(raised.value) == f"ckpt_path={str(missing)!r}: no such file (resume from a run's checkpoints/last.ckpt)"


def test_the_teacher_from_the_config_matches_the_callback() -> None:
    with app_config([*TINY, "teacher.mu=2.0", "teacher.half_life=0.25"]) as cfg:
        run = build(cfg, "unused")
    (teacher,) = [c for c in run.trainer.callbacks if isinstance(c, EMATeacherCallback)]
    assert teacher.mu == 2.0 and teacher.config.half_life == 0.25


def test_a_bad_perturb_at_through_the_command_leaves_no_run_folder(tmp_path: Path) -> None:
    """Checked once the model is built, after Hydra made the run's folder: the command removes it again."""
    run_dir = tmp_path / "run"
    result = smart_train([*TINY, "smart.perturb_at=encoder.nowhere", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 1 and "smart.perturb_at='encoder.nowhere'" in result.stderr, result.stderr[-2000:]
    # Reported as one message, not as a traceback of our code (a library's own noise on stderr is not ours).
    assert "ConfigError" not in result.stderr and "lightning_smart" not in result.stderr, result.stderr
    assert not run_dir.exists(), (sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*")), result.stderr)
