"""The app: every preset composes and instantiates, a real 2-layer fit, errors before training, sweeps."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import get_args

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.fabric.connector import _PRECISION_INPUT_STR
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lightning_smart.app import checks, sweep
from lightning_smart.app.checkpoints import AtomicModelCheckpoint, LastCheckpoint
from lightning_smart.app.cli import AtomicCheckpointIO, build, check, train
from lightning_smart.app.sweep import Job, aggregate, settings
from lightning_smart.config import ConfigError
from lightning_smart.data import (
    SFTDataConfig,
    SFTDataModule,
    TaggingDataConfig,
    TaggingDataModule,
    TextDataConfig,
    TextDataModule,
    minilm_path,
)
from lightning_smart.tasks import CausalLMTask, SequenceTask, TokenTask
from lightning_smart.teacher import EMATeacherCallback
from tests.helpers.app import TINY, app_config, smart_train, write_csv
from tests.helpers.decoders import save_causal_lm

CONF = Path(str(files("lightning_smart.conf")))
GROUPS = ("smart", "teacher", "model", "data", "trainer", "callbacks", "logger", "hparams_search", "experiment")
PRESETS = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]


def test_every_group_has_its_presets() -> None:
    found = {group: {name for g, name in PRESETS if g == group} for group in GROUPS}
    assert found["smart"] == {"paper", "mtdnn", "r3f", "rdrop", "off", "relative_shared", "neftune"}
    assert found["teacher"] == {"paper", "off", "half_life"}
    assert {"minilm", "minilm_l2", "hub", "causal_lm"} <= found["model"]
    assert {"movies", "movies_rating", "movies_ood", "trec", "csv", "jsonl", "hub", "sft", "tokens"} <= found["data"]
    assert found["trainer"] == {"cpu", "gpu_bf16", "ddp", "fsdp"}
    assert found["logger"] == {"csv", "tensorboard", "mlflow", "wandb"}
    assert found["callbacks"] == {"default"}
    assert found["hparams_search"] == {"optuna"} and found["experiment"]


def _preset_overrides(group: str, name: str, tmp_path: Path) -> list[str]:
    """What a preset needs from the user (a file, a name) or from this machine (no GPU here)."""
    extra = [] if group in ("model", "experiment") else ["model=minilm_l2"]  # the small model is enough elsewhere
    if (group, name) == ("model", "hub"):
        extra.append(f"model.name_or_path={minilm_path()}")  # a local folder stands in for a Hub name
    elif (group, name) in (("model", "causal_lm"), ("data", "sft")):  # a causal LM fine-tuned on prompt/response
        folder = save_causal_lm("llama", tmp_path / "llama")
        extra = [f"model.name_or_path={folder}"] + (["data=sft"] if group == "model" else ["model=causal_lm"])
    elif (group, name) == ("data", "tokens"):
        rows = [{"words": ["Who", "wrote", "Hamlet", "?"], "tags": ["B-WH", "O", "B-NAME", "O"]}] * 40
        (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
        extra.append(f"data.path={tmp_path / 't.jsonl'}")
    elif (group, name) == ("data", "csv"):
        extra.append(f"data.path={write_csv(tmp_path / 'd.csv', 'text,label', ['good,1', 'bad,0'] * 20)}")
    elif (group, name) == ("data", "jsonl"):
        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(40)))
        extra.append(f"data.path={tmp_path / 'd.jsonl'}")
    elif (group, name) == ("data", "hub"):
        datasets = pytest.importorskip("datasets", reason="the hub extra is not installed")
        rows = {"sentence": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
        saved = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                      "validation": datasets.Dataset.from_dict(rows).select(range(8))})
        saved.save_to_disk(tmp_path / "sst2")
        extra += [f"data.path={tmp_path / 'sst2'}", "data.text_column=sentence"]
    elif group == "trainer" and not torch.cuda.is_available():
        extra += ["trainer.accelerator=cpu", "trainer.devices=1"]
    elif group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    elif (group, name) == ("logger", "mlflow"):  # building opens the store: here, not MLflow's default in the cwd
        extra.append(f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    return [f"{group}={name}", *extra]


@pytest.mark.parametrize(("group", "name"), PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_every_preset_composes_and_instantiates(group: str, name: str, tmp_path: Path) -> None:
    overrides = _preset_overrides(group, name, tmp_path)
    with app_config(overrides) as cfg:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        run = build(cfg, tmp_path / "out")
    task = {"sft": CausalLMTask, "tokens": TokenTask}.get(run.checked.data.kind, SequenceTask)
    assert type(run.model) is task and isinstance(run.trainer, pl.Trainer)
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
    with app_config(["smart=relative_shared", "teacher=half_life"]) as cfg:  # the README's remedy for the paper's ε
        smart, teacher = cfg.smart, cfg.teacher
        assert (smart.lambda_s, smart.epsilon, smart.sigma, smart.eta, smart.ascent_steps) == (1.0, 0.01, 0.01, 1.0, 1)
        assert smart.epsilon_scale == "relative" and smart.shared_dropout
        assert (teacher.mu, teacher.half_life, teacher.validate) == (1.0, 0.25, True)


# Each conf/setting preset (what experiment=compare pairs) and the overrides it must equal.
SETTINGS = {
    "plain": ["smart=off", "teacher=off"],
    "teacher": ["smart=off", "teacher=paper"],
    "paper": ["smart=paper", "teacher=paper"],
    "rdrop": ["smart=rdrop", "teacher=off"],
    "relative": ["smart=relative_shared", "teacher=off"],
    "mtdnn": ["smart=mtdnn", "teacher=off"],
    "mtdnn_teacher": ["smart=mtdnn", "teacher=paper"],
    "adversarial": ["smart=relative_shared", "teacher=off", "smart.epsilon=auto"],  # RESULTS §1.3: auto matches strong
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_each_setting_is_the_study_setting_it_names(setting: str) -> None:
    assert {p.stem for p in (CONF / "setting").glob("*.yaml")} == set(SETTINGS)
    with app_config([f"setting={setting}"]) as cfg:
        chosen = {key: OmegaConf.to_container(cfg)[key] for key in ("smart", "teacher")}
    with app_config(SETTINGS[setting]) as cfg:
        assert chosen == {key: OmegaConf.to_container(cfg)[key] for key in ("smart", "teacher")}
    with app_config([f"setting={setting}", "smart.epsilon=0.03"]) as cfg:  # one override on top still wins
        assert cfg.smart.epsilon == 0.03


@pytest.mark.parametrize(("preset", "config", "module"), [
    ("movies_ood", TextDataConfig, TextDataModule), ("csv", TextDataConfig, TextDataModule),
    ("sft", SFTDataConfig, SFTDataModule), ("tokens", TaggingDataConfig, TaggingDataModule),
])
def test_the_data_node_is_the_data_config_and_its_type_picks_the_module(preset: str, config: type,
                                                                        module: type) -> None:
    """Hydra composes the data module's own config (no copy of its fields), with the model's tokenizer."""
    with app_config(["model=minilm_l2", f"data={preset}", *(["data.path=d.csv"] if preset in ("csv", "tokens")
                                                            else [])]) as cfg:
        assert OmegaConf.get_type(cfg.data) is config
        data = checks.data_module(cfg.data)
        assert type(data) is module and data.config == OmegaConf.to_object(cfg.data)
        assert data.config.tokenizer == cfg.model.name_or_path


def test_unknown_key_and_wrong_type_fail_at_composition() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"smart\.epsylon"), app_config(["smart.epsylon=1"]):
        pass
    with pytest.raises(ConfigCompositionException, match=r"smart\.sigma"), app_config(["smart.sigma=big"]):
        pass  # smart.epsilon takes a number or 'auto': another string is SmartConfig's to refuse (test_auto_epsilon)


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
    # The command line: one line naming the key, no traceback, no run folder.
    "lr": (["model.lr=-1"], ["Error in the config (nothing was written): model.lr=-1.0 is not allowed: AdamW's peak"
                             " learning rate must be a finite number > 0\n"]),
    "seed": (["seed=-1"], ["Error in the config (nothing was written): seed=-1 is not allowed: an integer in"
                           " [0, 4294967295] (NumPy's seed range)\n"]),
    "precision": (["trainer.precision=bf15"], ["Error in the config (nothing was written): trainer.precision='bf15' is"
                                               " not allowed: Lightning refuses it: Precision 'bf15' is invalid."]),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.slow
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


# Each malformed file: its name, its bytes, the data preset, and the one line smart-train prints for it (after
# "Error in the config (nothing was written): ").
BAD_FILES = {
    "latin-1": ("reviews.csv", "text,label\ngood,1\ncafé au lait,0\n".encode("latin-1"), "csv",
                "reviews.csv line 3: byte 0xe9 at offset 21 is not valid utf-8 (data.encoding=utf-8): save the file as"
                " UTF-8, or set data.encoding to the encoding it was written in, e.g. data.encoding=latin-1 or cp1252"),
    "random-bytes": ("reviews.csv", b"text,label\n" + bytes([0x8F, 0x12, 0xFF, 0x41]) * 8, "csv",
                     "reviews.csv line 2: byte 0x8f at offset 11 is not valid utf-8 (data.encoding=utf-8): save the"
                     " file as UTF-8, or set data.encoding to the encoding it was written in, e.g."
                     " data.encoding=latin-1 or cp1252"),
    "empty-text": ("reviews.csv", b"text,label\ngood,1\n,0\nbad,0\n", "csv",
                   "reviews.csv line 3: the text in column 'text' (data.text_column) is empty"),
    "numeric-tag": ("tags.jsonl", b'{"words": ["Paris", "is", "big"], "tags": ["B-LOC", 0, "O"]}\n', "tokens",
                    "tags.jsonl line 1: tag 0 of word 2 in 'tags' (data.label_column) is not a tag name: tags are"
                    " strings such as 'B-PER' or 'O'"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_fails_before_training_in_one_line_and_writes_nothing(case: str, tmp_path: Path) -> None:
    name, content, preset, message = BAD_FILES[case]
    (tmp_path / name).write_bytes(content)
    args = ["model=minilm_l2", f"data={preset}", f"data.path={name}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error in the config (nothing was written): {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no run folder, no log, nothing else


def test_class_names_are_inferred_from_every_split_and_summary_json_says_so(tmp_path: Path) -> None:
    """Labels that are words, in a Latin-1 file read with data.encoding: numbered in sorted order over the training
    and the validation file, and named in summary.json's data."""
    rows = [f"critique {i} {'très bonne' if i % 2 else 'mauvaise'},{'pos' if i % 2 else 'neg'}" for i in range(96)]
    train_file = tmp_path / "train.csv"
    train_file.write_bytes("\n".join(["text,label", *rows]).encode("latin-1"))
    val_file = write_csv(tmp_path / "val.csv", "text,label", [f"avis {i},{('neg', 'pos')[i % 2]}" for i in range(32)])
    overrides = [*TINY, "data=csv", f"data.path={train_file}", f"data.val_path={val_file}", "data.encoding=latin-1",
                 "data.test_size=0", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    with app_config(overrides) as cfg:
        run = build(cfg, tmp_path)
        train(cfg, tmp_path, run)
    data = json.loads((tmp_path / "summary.json").read_text())["data"]
    assert data["label_names"] == ["neg", "pos"] and data["label_names_inferred"] is True
    splits = run.checked.data.load()
    assert splits.val.labels == [i % 2 for i in range(32)] and "critique 1 très bonne" in splits.train.texts


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


@pytest.mark.slow
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

    command = "from lightning_smart.app.sweep import aggregate_main; aggregate_main()"
    printed = subprocess.run([sys.executable, "-c", command, str(sweep)], capture_output=True, text=True, check=True)
    assert "smart=off" in printed.stdout and "median (mean ± std)" in printed.stdout


@pytest.mark.slow
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


@pytest.mark.slow
def test_plain_install_runs_from_any_directory(tmp_path: Path) -> None:
    """``pip install .`` (not editable) ships the configs: the command composes them from another folder,
    with a user's presets added by ``--config-dir``."""
    root = Path(__file__).parents[2]
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(root)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {f"lightning_smart/conf/{p.relative_to(CONF)}" for p in CONF.rglob("*.yaml")}
    assert shipped <= set(names) and "lightning_smart/conf/config.yaml" in names

    # A fresh environment that sees this one's packages (torch and the rest) behind its own: a .pth file, since
    # system_site_packages would show the base interpreter's, which lack them when the tests run in a virtualenv.
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (Path(own) / "outer_environment.pth").write_text("\n".join(outer) + "\n")
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


# Each bad setting, with the exact message it gets (after "Error in the config (nothing was written): ").
REFUSED = {
    "lr": (["model.lr=-1"], "model.lr=-1.0 is not allowed: AdamW's peak learning rate must be a finite number > 0"),
    "weight-decay": (["model.weight_decay=-0.1"], "model.weight_decay=-0.1 is not allowed: a finite number ≥ 0"),
    "warmup-ratio": (["model.warmup_ratio=5"], "model.warmup_ratio=5.0 is not allowed: a fraction of the run's steps"
                     " in [0, 1]: above 1 the learning rate would never reach model.lr"),
    "seed": (["seed=-1"], "seed=-1 is not allowed: an integer in [0, 4294967295] (NumPy's seed range)"),
    "max-steps": (["trainer.max_steps=-2"], "trainer.max_steps=-2 is not allowed: Lightning refuses it: `max_steps`"
                  " must be a non-negative integer or -1 (infinite steps). You passed in -2."),
    "devices": (["trainer.devices=0"], "trainer.devices=0 is not allowed: Lightning refuses it: `Trainer(devices=0)`"
                " value is not a valid input using cpu accelerator."),
    "strategy": (["trainer.strategy=nope"], "trainer.strategy='nope' is not allowed: Lightning refuses it: You"
                 " selected an invalid strategy name: `strategy='nope'`."),
    "accumulate": (["trainer.accumulate_grad_batches=0"],
                   "trainer.accumulate_grad_batches=0 is not allowed: an integer ≥ 1"),
    "infinite": (["trainer.max_steps=-1", "trainer.max_epochs=-1"], "trainer.max_steps=-1 is not allowed: with"
                 " trainer.max_epochs=-1 the run has no known length, which the learning-rate schedule (and the"
                 " teacher's β schedule and ramp-ups) are fractions of: set trainer.max_steps or trainer.max_epochs"),
    "save-top-k": (["checkpoint.save_top_k=-2"], "checkpoint.save_top_k=-2 is not allowed: an integer ≥ -1 (-1 keeps"
                   " all)"),
    "num-workers": (["data.num_workers=-1"], "data.num_workers=-1 is not allowed: an integer ≥ 0 (0: no workers)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_bad_setting_is_refused_by_the_check_with_the_key_named(case: str) -> None:
    overrides, message = REFUSED[case]
    with app_config([*TINY, *overrides]) as cfg, pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value).startswith(message), str(raised.value)


def test_a_bad_precision_is_refused_with_lightnings_own_list() -> None:
    with app_config([*TINY, "trainer.precision=bf15"]) as cfg, pytest.raises(ConfigError) as raised:
        check(cfg)
    allowed = ", ".join(map(repr, get_args(_PRECISION_INPUT_STR)))
    assert str(raised.value).startswith("trainer.precision='bf15' is not allowed: Lightning refuses it: Precision"
                                        f" 'bf15' is invalid. Allowed precision values: ({allowed}, "), raised.value


@pytest.mark.parametrize(("metric", "direction"), [("val/loss", "maximize"), ("val/acc", "minimize")])
def test_an_optuna_direction_against_the_metric_is_refused(metric: str, direction: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    overrides = [*TINY, "hparams_search=optuna", f"metric={metric}", f"hydra.sweeper.direction={direction}"]
    with initialize_config_module(config_module="lightning_smart.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    wanted = "minimize" if direction == "maximize" else "maximize"
    with pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value) == (f"hydra.sweeper.direction={direction!r} is not allowed: metric={metric} is"
                                 f" {wanted[:-1]}ed (best checkpoint and sweeper must agree): use {wanted}")


@pytest.mark.parametrize("label", ["nan", "inf", "-Infinity"])
def test_a_non_finite_regression_label_is_refused(tmp_path: Path, label: str) -> None:
    rows = [f"text {i},{i / 10}" for i in range(30)] + [f"bad,{label}"]
    data = write_csv(tmp_path / "ratings.csv", "text,label", rows)
    with app_config([*TINY, "data=csv", f"data.path={data}", "data.num_labels=1"]) as cfg, \
            pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value) == (f"{data} line 32: label {label!r} in column 'label' is not a finite number"
                                 " (data.num_labels=1 is regression)")


def _crash_after_half(write: Callable[[Path], None]) -> Callable[..., None]:
    """A writer that writes half of what ``write`` would to its target, then fails as a full disk or a kill would."""
    def crashing(target: Path) -> None:
        write(target)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError("No space left on device")
    return crashing


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with app_config([*TINY, "checkpoint.save_last=true"]) as cfg:
        run = build(cfg, tmp_path)
    io = run.trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO)
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 2, "weights": torch.arange(1000.0)}, last)
    before = last.read_bytes()

    import lightning.fabric.plugins.io.torch_io as torch_io
    save = torch_io._atomic_save
    monkeypatch.setattr(torch_io, "_atomic_save", lambda ckpt, path: _crash_after_half(
        lambda target: save(ckpt, target))(path))
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 4, "weights": torch.zeros(1000)}, last)
    assert last.read_bytes() == before and torch.load(last)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


@pytest.mark.parametrize("output", ["aggregate.md", "aggregate.csv", "val_curves.png"])
def test_a_crash_while_writing_the_aggregate_leaves_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    for i, (smart, acc) in enumerate([("off", 0.6), ("off", 0.7), ("paper", 0.8)]):
        job = tmp_path / str(i)
        (job / "csv").mkdir(parents=True)
        write_csv(job / "csv/metrics.csv", "step,val/acc", [f"2,{acc - 0.1}", f"4,{acc}"])
        summary = {"overrides": [f"smart={smart}", f"seed={i}"], "metric": "val/acc", "val": {"acc": acc},
                   "val_teacher": None, "test": {}, "files": {"metrics_csv": "csv/metrics.csv"}}
        (job / "summary.json").write_text(json.dumps(summary))
    sweep.write(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("aggregate.md", "aggregate.csv", "val_curves.png")}
    assert before["val_curves.png"][:8] == b"\x89PNG\r\n\x1a\n" and b"smart=paper" in before["aggregate.md"]

    (tmp_path / "3").mkdir()  # a new job: the aggregate would change
    (tmp_path / "3/summary.json").write_text((tmp_path / "2/summary.json").read_text().replace("0.8", "0.9"))
    if output == "val_curves.png":
        savefig = sweep.Figure.savefig
        monkeypatch.setattr(sweep.Figure, "savefig", lambda self, path, **kw: _crash_after_half(
            lambda target: savefig(self, target, **kw))(path))
    elif output == "aggregate.csv":
        monkeypatch.setattr(sweep, "astuple", lambda row: (_ for _ in ()).throw(OSError("No space left on device")))
    else:
        write_text = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **kw: _crash_after_half(
            lambda target: write_text(target, text, *a, **kw))(self))
    with pytest.raises(OSError, match="No space left"):
        sweep.write(tmp_path)
    assert (tmp_path / output).read_bytes() == before[output]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_callbacks_and_loggers_are_config_groups_that_hydra_builds(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX", reason="TensorBoard is not installed")
    early = "+callbacks.early_stopping={_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/loss}"
    overrides = [*TINY, "checkpoint.save_last=true", "logger=tensorboard", early, "callbacks.lr_monitor=null"]
    with app_config(overrides) as cfg:
        assert set(cfg.callbacks) == {"model_checkpoint", "last_checkpoint", "lr_monitor", "rich_progress_bar",
                                      "rich_model_summary", "early_stopping"}
        run = build(cfg, tmp_path)
    kinds = {type(cb) for cb in run.trainer.callbacks}
    assert {AtomicModelCheckpoint, LastCheckpoint, EarlyStopping, EMATeacherCallback} <= kinds
    assert LearningRateMonitor not in kinds and RichProgressBar not in kinds  # dropped; progress_bar=false
    assert run.checkpoint is not None and run.checkpoint.monitor == "val/acc" and run.checkpoint.mode == "max"
    assert Path(str(run.checkpoint.dirpath)) == tmp_path / "checkpoints"
    (last,) = [cb for cb in run.trainer.callbacks if isinstance(cb, LastCheckpoint)]
    assert last.best is run.checkpoint and Path(str(last.dirpath)) == tmp_path / "checkpoints"
    assert [type(lg) for lg in run.trainer.loggers] == [CSVLogger, TensorBoardLogger]
    assert Path(run.trainer.loggers[0].log_dir) == tmp_path / "csv"


def test_a_callback_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    with app_config([*TINY, "+callbacks.mine={_target_: nowhere.Callback}"]) as cfg, \
            pytest.raises(ConfigError, match=r"^callbacks\.mine\._target_ is not allowed: "):
        check(cfg)


def test_any_trainer_argument_is_accepted_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    with app_config([*TINY, "+trainer.profiler=simple", "+trainer.benchmark=false"]) as cfg:
        run = build(cfg, tmp_path)
    assert isinstance(run.trainer.profiler, SimpleProfiler) and run.trainer.max_steps == 4
    with app_config([*TINY, "+trainer.nonsense=1"]) as cfg, pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value).startswith("trainer.nonsense=1 is not allowed: Lightning refuses it:"), raised.value


def test_the_config_is_checked_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    check_config = checks.check
    monkeypatch.setattr(checks, "check", lambda cfg: calls.append(cfg) or check_config(cfg))
    with initialize_config_module(config_module="lightning_smart.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=TINY, return_hydra_config=True)
    checks.CheckBeforeRun().on_run_start(cfg)
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # what the task function receives
    run = build(task_cfg, tmp_path)
    assert len(calls) == 1 and run.checked.data.load().train
    build(task_cfg, tmp_path)  # a second build of the same config checks it again: the result is used once
    assert len(calls) == 2
