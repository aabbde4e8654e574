"""Lightning's own ``LightningCLI`` over ``SequenceTask`` and ``TextDataModule``: the docs' example file, run as users
run it, on the 2-layer MiniLM and a few movie snippets."""

from __future__ import annotations

import csv
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_smart.data import TextDataModule, minilm_path

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures]")

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "lightning_cli.py"  # included in docs/guides/lightning-cli.md

# The knobs that reach the step: values other than the defaults, so that seeing them logged proves they arrived.
SMART = ["--model.smart.lambda_s=3", "--model.smart.epsilon_scale=relative", "--model.smart.epsilon=0.05",
         "--model.smart.sigma=0.01", "--model.smart.eta=1"]
TEACHER = ["--trainer.callbacks+=lightning_smart.EMATeacherCallback", "--trainer.callbacks.mu=2"]
MODEL = [f"--model.model={minilm_path()}", "--model.model_overrides={num_hidden_layers: 2}", "--seed_everything=0"]
TRAINER = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_steps=3",
           "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=1",
           "--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def data_flags() -> list[str]:
    """The data module's flags: ``--data.<field>``, or ``--data.config.<field>`` once ``TextDataModule`` takes its
    fields as one config dataclass (its ``config`` argument)."""
    prefix = "--data.config." if "config" in inspect.signature(TextDataModule).parameters else "--data."
    sizes = {"train_size": 32, "val_size": 32, "test_size": 32, "max_length": 32, "batch_size": 8,
             "eval_batch_size": 32}
    return [f"{prefix}{key}={value}" for key, value in sizes.items()]


def lightning_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def logged(log_dir: Path) -> list[dict[str, float]]:
    """The training steps' rows of the CSV logger's ``metrics.csv``: the columns logged there, as numbers."""
    (path,) = log_dir.rglob("metrics.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [{k: float(v) for k, v in row.items() if v != ""} for row in rows if row.get("train/loss")]


@pytest.mark.slow
def test_fit_through_lightning_cli_reaches_the_step_with_the_smart_values_and_the_teacher(tmp_path: Path) -> None:
    logger = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'logs'}"]
    run = lightning_cli("fit", *MODEL, *SMART, *TEACHER, *data_flags(), *TRAINER, *logger, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = logged(tmp_path / "logs")
    assert len(steps) == 3
    for row in steps:
        assert row["smart/adv_reg"] > 0 and row["smart/bregman"] > 0  # R_s and D, so λs > 0 and the teacher is on
        assert row["smart/lambda_s"] == 3 and row["smart/mu"] == 2  # the values given, not the defaults (1, 1)
        assert row["smart/epsilon"] == pytest.approx(0.05)
        assert row["train/loss"] > row["train/task_loss"]  # F = L + λs·R_s + μ·D


def run_in_process(*args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's ``main`` with ``args`` as its command line, in this process (no second start of torch)."""
    spec = importlib.util.spec_from_file_location("lightning_cli_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *args])
    example.main()


def test_print_config_holds_the_smart_values_and_a_bad_value_stops_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as printed:
        run_in_process("fit", *MODEL, *SMART, *TEACHER, *data_flags(), *TRAINER, "--print_config",
                       monkeypatch=monkeypatch)
    assert printed.value.code in (None, 0)
    text = capsys.readouterr().out
    config = yaml.safe_load(text)
    assert config["model"]["smart"]["lambda_s"] == 3 and config["model"]["smart"]["epsilon_scale"] == "relative"
    (teacher,) = config["trainer"]["callbacks"]
    assert teacher == {"class_path": "lightning_smart.EMATeacherCallback", "init_args": teacher["init_args"]}
    assert teacher["init_args"]["mu"] == 2
    (tmp_path / "config.yaml").write_text(text)

    # The printed config is read back as it is; a bad value on top of it names its key, and nothing trains.
    logger = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'logs'}"]
    with pytest.raises(ValueError, match=re.escape("smart.lambda_s=-1.0 is not allowed: lambda_s must be ≥ 0")):
        run_in_process("fit", "--config=config.yaml", "--model.smart.lambda_s=-1", *logger, monkeypatch=monkeypatch)
    assert not (tmp_path / "logs").exists()
