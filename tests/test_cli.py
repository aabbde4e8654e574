"""The app: every preset composes and instantiates, a real 2-layer fit, errors before training, sweeps."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
import venv
import zipfile
from importlib.resources import files
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers_app import TINY, app_config, smart_train, write_csv
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lightning_smart.cli import build, check, train
from lightning_smart.data import TextDataModule, minilm_path
from lightning_smart.schema import DataConf
from lightning_smart.sweep import Job, aggregate, settings
from lightning_smart.tasks import SequenceTask
from lightning_smart.teacher import EMATeacherCallback

CONF = Path(str(files("lightning_smart.conf")))
GROUPS = ("smart", "teacher", "model", "data", "trainer", "logger", "hparams_search", "experiment")
PRESETS = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]


def test_every_group_has_its_presets() -> None:
    found = {group: {name for g, name in PRESETS if g == group} for group in GROUPS}
    assert found["smart"] == {"paper", "mtdnn", "r3f", "rdrop", "off", "relative_shared"}
    assert found["teacher"] == {"paper", "off", "half_life"}
    assert {"minilm", "minilm_l2", "hub"} <= found["model"]
    assert {"movies", "movies_rating", "movies_ood", "trec", "csv", "jsonl", "hub"} <= found["data"]
    assert found["trainer"] == {"cpu", "gpu_bf16", "ddp"} and found["logger"] == {"csv", "tensorboard"}
    assert found["hparams_search"] == {"optuna"} and found["experiment"]


def _preset_overrides(group: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What a preset needs from the user (a file, a name) or from this machine (no GPU here)."""
    extra = [] if group in ("model", "experiment") else ["model=minilm_l2"]  # the small model is enough elsewhere
    if (group, name) == ("model", "hub"):
        extra.append(f"model.name_or_path={minilm_path()}")  # a local folder stands in for a Hub name
    elif (group, name) == ("data", "csv"):
        extra.append(f"data.path={write_csv(tmp_path / 'd.csv', 'text,label', ['good,1', 'bad,0'] * 20)}")
    elif (group, name) == ("data", "jsonl"):
        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(40)))
        extra.append(f"data.path={tmp_path / 'd.jsonl'}")
    elif (group, name) == ("data", "hub"):
        rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(40)]
        fake = types.SimpleNamespace(load_dataset=lambda path, subset: {"train": rows, "validation": rows[:8]})
        monkeypatch.setitem(sys.modules, "datasets", fake)
        extra += ["data.path=glue", "data.hub_subset=sst2", "data.text_column=sentence"]
    elif group == "trainer" and not torch.cuda.is_available():
        extra += ["trainer.accelerator=cpu", "trainer.devices=1"]
    elif group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    return [f"{group}={name}", *extra]


@pytest.mark.parametrize(("group", "name"), PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_every_preset_composes_and_instantiates(group: str, name: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = _preset_overrides(group, name, tmp_path, monkeypatch)
    with app_config(overrides) as cfg:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        run = build(cfg, tmp_path / "out")
    assert isinstance(run.model, SequenceTask) and isinstance(run.trainer, pl.Trainer)
    assert isinstance(run.checked.data, TextDataModule) and run.checked.data.load().train
    teachers = [cb for cb in run.trainer.callbacks if isinstance(cb, EMATeacherCallback)]
    assert len(teachers) == (0 if cfg.teacher is None else 1)
    assert run.model.smart == run.checked.smart
    assert not (tmp_path / "out").exists()  # building writes nothing


def test_preset_values() -> None:
    with app_config(["smart=paper", "teacher=paper"]) as cfg:
        assert (cfg.smart.epsilon, cfg.smart.sigma, cfg.smart.eta, cfg.smart.ascent_steps) == (1e-5, 1e-5, 1e-3, 1)
        assert (cfg.smart.lambda_s, cfg.smart.rule, cfg.smart.norm) == (1.0, "paper", "inf")
        assert (cfg.teacher.mu, cfg.teacher.beta, cfg.teacher.beta_final, cfg.teacher.warmup_fraction) == (
            1.0, 0.99, 0.999, 0.1)
        assert cfg.teacher.validate and cfg.data.source == "movies" and cfg.trainer.precision == "32-true"
    for preset, values in {"r3f": (1e-5, 0), "rdrop": (0.0, 0)}.items():
        with app_config([f"smart={preset}"]) as cfg:
            assert (cfg.smart.sigma, cfg.smart.ascent_steps) == values
    with app_config(["smart=off", "teacher=off"]) as cfg:
        assert cfg.smart.lambda_s == 0 and cfg.teacher is None
    with app_config(["smart=mtdnn"]) as cfg:
        assert cfg.smart.rule == "mtdnn"
    with app_config(["smart=relative_shared", "teacher=half_life"]) as cfg:  # benchmarks/RESULTS.md's best setting
        smart, teacher = cfg.smart, cfg.teacher
        assert (smart.lambda_s, smart.epsilon, smart.sigma, smart.eta, smart.ascent_steps) == (1.0, 0.01, 0.01, 1.0, 1)
        assert smart.epsilon_scale == "relative" and smart.shared_dropout
        assert (teacher.mu, teacher.half_life, teacher.validate) == (1.0, 0.25, True)


def test_schema_defaults_match_the_data_module() -> None:
    """DataConf mirrors TextDataModule's signature: a default changed in one place only fails here."""
    schema = OmegaConf.to_container(OmegaConf.structured(DataConf))
    signature = inspect.signature(TextDataModule).parameters
    assert set(schema) - {"_target_"} == set(signature)
    for key, parameter in signature.items():
        if key != "tokenizer":
            default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
            assert schema[key] == default, key


def test_unknown_key_and_wrong_type_fail_at_composition() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"smart\.epsylon"), app_config(["smart.epsylon=1"]):
        pass
    with pytest.raises(ConfigCompositionException, match=r"smart\.epsilon"), app_config(["smart.epsilon=big"]):
        pass


def test_end_to_end_fit_on_real_data(tmp_path: Path) -> None:
    """The 2-layer MiniLM on real movie snippets with SMART and its teacher: every output of a run."""
    overrides = [o for o in TINY if not o.startswith(("checkpoint.", "trainer.max_steps", "data.train_size"))]
    overrides += ["trainer.max_steps=8", "data.train_size=128", "checkpoint.save_weights_only=true",
                  "data.ood=[tweets]", "data.ood_size=32", "trainer.val_check_interval=3"]
    with app_config(overrides) as cfg:
        summary = train(cfg, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert summary["steps"] == 8 and summary["metric"] == "val/acc" and summary["score"] == summary["val"]["acc"]
    assert set(summary["val"]) == {"acc", "f1", "mcc", "loss"} and set(summary["val_teacher"]) == {"acc", "f1", "mcc"}
    assert set(summary["test"]) == {"movies", "tweets"} and 0 <= summary["test"]["tweets"]["acc"] <= 1
    assert summary["data"]["test"] == {"movies": 64, "tweets": 32} and summary["data"]["train"] == 128
    assert summary["config"]["smart"]["rule"] == "paper" and summary["wall_time_s"] > 0
    assert (tmp_path / summary["best"]["checkpoint"]).is_file() and (tmp_path / "checkpoints/last.ckpt").is_file()
    metrics = (tmp_path / "csv/metrics.csv").read_text()
    for logged in ("train/loss", "smart/adv_reg", "smart/bregman", "val/acc_teacher", "test/tweets/acc"):
        assert logged in metrics
    assert not list(tmp_path.glob("*.tmp"))


BAD = {
    "epsilon": (["smart.epsilon=-1"], ["smart.epsilon=-1", "> 0"]),
    "rule": (["smart.rule=foo"], ["smart.rule='foo'", "paper, mtdnn"]),
    "missing file": (["data=csv", "data.path=nowhere.csv"], ["data.path='nowhere.csv'", "no such file"]),
    "no text column": (["data=csv", "data.path={csv}"], ["no column 'text'", "data.text_column", "no_text.csv"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_fails_before_training_and_writes_nothing(case: str, tmp_path: Path) -> None:
    no_text = write_csv(tmp_path / "no_text.csv", "review,label", ["fine,1", "poor,0"])
    args, named = BAD[case]
    args = [a.format(csv=no_text) for a in args]
    result = smart_train([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 1
    for part in named:
        assert part in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Epoch" not in result.stdout
    assert not (tmp_path / "run").exists()


def test_a_required_value_left_out_is_named() -> None:
    with app_config(["model=hub"]) as cfg, pytest.raises(MissingMandatoryValue, match=r"model\.name_or_path"):
        check(cfg)


def test_settings_aggregate_over_seeds() -> None:
    def job(smart: str, seed: int, acc: float) -> Job:
        summary = {"overrides": [f"smart={smart}", f"seed={seed}", "trainer.max_steps=4"], "metric": "val/acc",
                   "val": {"acc": acc}, "val_teacher": {"acc": acc / 2}, "test": {"movies": {"acc": acc}}}
        return Job(Path(), summary)

    jobs = [job("off", 1, 0.6), job("off", 2, 0.8), job("off", 3, 0.9), job("paper", 1, 0.7)]
    assert settings(jobs) == ["smart=off"] * 3 + ["smart=paper"]
    rows = {(r.setting, r.metric): r for r in aggregate(jobs)}
    off = rows["smart=off", "val/acc"]
    assert (off.n, off.median, round(off.mean, 6), round(off.std, 6)) == (3, 0.8, round(23 / 30, 6), 0.152753)
    assert rows["smart=paper", "val/acc_teacher"].n == 1 and rows["smart=paper", "test/movies/acc"].std == 0.0


def test_multirun_writes_the_aggregate_and_the_plot(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = smart_train(["-m", "smart=off,paper", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.glob("*/summary.json"))) == 4
    table = (sweep / "aggregate.md").read_text()
    assert "| smart=off | 2 |" in table and "| smart=paper | 2 |" in table and "val/acc_teacher" in table
    assert (sweep / "aggregate.csv").read_text().count("smart=paper,val/acc,2,") == 1
    assert (sweep / "val_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "smart=paper" in result.stdout  # the table, printed at the sweep's end

    command = "from lightning_smart.sweep import aggregate_main; aggregate_main()"
    printed = subprocess.run([sys.executable, "-c", command, str(sweep)], capture_output=True, text=True, check=True)
    assert "smart=off" in printed.stdout and "median (mean ± std)" in printed.stdout


def test_optuna_sweep_of_three_trials(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    sweep = tmp_path / "optuna"
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={sweep}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = [json.loads(p.read_text())["score"] for p in sweep.glob("*/summary.json")]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert len(scores) == 3 and best.best_value == max(scores) and (sweep / "aggregate.md").is_file()
    assert set(best.best_params) == {"smart.lambda_s", "smart.epsilon", "model.lr"}


def test_plain_install_runs_from_any_directory(tmp_path: Path) -> None:
    """``pip install .`` (not editable) ships the configs: the command composes them from another folder,
    with a user's presets added by ``--config-dir``."""
    root = Path(__file__).parents[1]
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(root)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {f"lightning_smart/conf/{p.relative_to(CONF)}" for p in CONF.rglob("*.yaml")}
    assert shipped <= set(names) and "lightning_smart/conf/config.yaml" in names

    env_dir = tmp_path / "env"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    where = subprocess.run([python, "-c", "import lightning_smart.conf as c; print(c.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in where  # the installed copy, not the editable checkout
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "reviews.yaml").write_text("defaults: [csv]\npath: reviews.csv\n")
    args = ["--config-dir", "my_conf", "data=reviews", "smart=r3f", "--cfg", "job"]
    shown = subprocess.run([env_dir / "bin" / "smart-train", *args], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout
    assert "source: csv" in shown and "path: reviews.csv" in shown and "ascent_steps: 0" in shown
