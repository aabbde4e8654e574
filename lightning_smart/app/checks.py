"""What ``smart-train`` checks before it trains: the config, the data, a checkpoint to resume from, the strategy.

:func:`check` validates everything that can be checked before training, writing nothing; :class:`CheckBeforeRun`
runs it before Hydra creates the run's folder. Each error is a :class:`~lightning_smart.config.ConfigError` that names
the key (or the file) at fault.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import tempfile
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import AutoConfig

from lightning_smart._lightning import relaunches_script
from lightning_smart.app.robustness import check_eval
from lightning_smart.app.schema import TrainerConf
from lightning_smart.app.text_attacks import check_text_attacks
from lightning_smart.app.trackers import check_tracker
from lightning_smart.config import ConfigError, SmartConfig, TeacherConfig
from lightning_smart.data import (
    SFTDataConfig,
    SFTDataModule,
    TaggingDataConfig,
    TaggingDataModule,
    TextDataConfig,
    TextDataModule,
)
from lightning_smart.teacher import SHARDED_KEY


@dataclass
class Checked:
    """What :func:`check` built from a config: the validated hyperparameters and the loaded data."""

    smart: SmartConfig
    teacher: TeacherConfig | None
    data: TextDataModule
    metric: str


METRICS = {"sft": ("loss", "perplexity", "token_acc"), "tokens": ("f1", "precision", "recall", "acc")}
"""What each kind of token-level data's task logs under ``val/`` (the first is the default ``metric``)."""


DATA_MODULES: dict[type[TextDataConfig], type[TextDataModule]] = {
    TextDataConfig: TextDataModule, SFTDataConfig: SFTDataModule, TaggingDataConfig: TaggingDataModule}
"""The data module of each kind of data config."""


def data_module(data: DictConfig) -> TextDataModule:
    """The data module of the composed ``data`` node: its config, checked, in the module its type calls for."""
    config = OmegaConf.to_object(data)
    assert isinstance(config, TextDataConfig), config  # the schema types the node: AppConfig.data
    return DATA_MODULES[type(config)](config)


def _data_kind(cfg: DictConfig) -> str:
    """What the data are (``sequence``, ``sft``, ``tokens``), from the type of the ``data`` node."""
    return OmegaConf.get_type(cfg.data).kind  # type: ignore[union-attr]


def _monitored_metric(cfg: DictConfig, teacher: TeacherConfig | None) -> str:
    kind = _data_kind(cfg)
    if kind in METRICS:
        names: tuple[str, ...] = METRICS[kind]
    else:
        names = ("pearson", "spearman") if cfg.data.num_labels == 1 else ("acc", "f1", "mcc")
    allowed = list(dict.fromkeys(f"val/{name}" for name in (*names, "loss")))
    if teacher is not None and teacher.validate:
        allowed += [f"val/{name}_teacher" for name in names if name != "loss"]
    metric = cfg.metric or allowed[0]
    if metric not in allowed:
        raise ConfigError(f"metric={metric!r} is not logged by this run: one of {', '.join(allowed)}")
    return str(metric)


def _not_allowed(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: {why}")


def _check_run(cfg: DictConfig) -> None:
    """The app's own keys: the seed and the optimizer's settings (the model's and data's are checked where used)."""
    seed = cfg.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise _not_allowed("seed", seed, f"an integer in [0, {2**32 - 1}] (NumPy's seed range)")
    model = cfg.model
    if not math.isfinite(model.lr) or model.lr <= 0:
        raise _not_allowed("model.lr", model.lr, "AdamW's peak learning rate must be a finite number > 0")
    if not math.isfinite(model.weight_decay) or model.weight_decay < 0:
        raise _not_allowed("model.weight_decay", model.weight_decay, "a finite number ≥ 0")
    if not 0 <= model.warmup_ratio <= 1:
        raise _not_allowed("model.warmup_ratio", model.warmup_ratio, "a fraction of the run's steps in [0, 1]:"
                           " above 1 the learning rate would never reach model.lr")
    if cfg.checkpoint.save_top_k < -1:
        raise _not_allowed("checkpoint.save_top_k", cfg.checkpoint.save_top_k, "an integer ≥ -1 (-1 keeps all)")


# Values Lightning accepts when the Trainer is built but refuses, or misbehaves with, once training runs.
_TRAINER_RULES: dict[str, tuple[Any, str]] = {
    "accumulate_grad_batches": (lambda v: isinstance(v, int) and v >= 1, "an integer ≥ 1"),
    "log_every_n_steps": (lambda v: v is None or v >= 1, "an integer ≥ 1, or null"),
    "check_val_every_n_epoch": (lambda v: v is None or v >= 1, "an integer ≥ 1, or null (validate by steps)"),
    "gradient_clip_val": (lambda v: v is None or (math.isfinite(v) and v >= 0), "a finite number ≥ 0, or null"),
    "num_sanity_val_steps": (lambda v: v is None or v >= -1, "an integer ≥ -1, or null"),
}


def _trainer_error(trainer: DictConfig | ListConfig) -> BaseException | None:
    """Lightning's own error for these Trainer values, or ``None``: the Trainer is built with no logger, callback or
    checkpointing, so it writes nothing."""
    target = OmegaConf.to_container(trainer, resolve=True)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # "GPU available: ..." belongs to the run, not to its check
    try:
        with tempfile.TemporaryDirectory() as root:
            instantiate(target, logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    except InstantiationException as err:
        return err.__cause__ or err
    except Exception as err:  # Lightning refuses with ValueError, TypeError, MisconfigurationException alike
        return err
    finally:
        lightning_log.setLevel(level)
    return None


def _check_trainer(cfg: DictConfig) -> None:
    """Every ``trainer.*`` value Lightning would refuse, found before training, with the key named.

    Lightning is the judge: the Trainer is built once here. When it refuses, each value the user set is tried alone
    on the defaults, so the message names the key at fault (or all of them, for a combination).
    """
    trainer = cfg.trainer
    for key, (ok, allowed) in _TRAINER_RULES.items():
        if key in trainer and not ok(trainer[key]):
            raise _not_allowed(f"trainer.{key}", trainer[key], allowed)
    error = _trainer_error(trainer)
    if error is not None:
        defaults = OmegaConf.create(asdict(TrainerConf()))  # open: an argument it does not list is tried too
        given = {k: v for k, v in trainer.items() if k != "_target_" and (k not in defaults or v != defaults[k])}
        at_fault = [k for k in given if _trainer_error(OmegaConf.merge(defaults, {k: given[k]}))]
        keys = at_fault[:1] or list(given)
        where = " with ".join(f"trainer.{k}={given[k]!r}" for k in keys) or "trainer"
        message = " ".join(str(error).split())
        raise ConfigError(f"{where} is not allowed: Lightning refuses it: {message}")
    if trainer.max_steps == -1 and trainer.max_epochs == -1:
        raise _not_allowed("trainer.max_steps", -1, "with trainer.max_epochs=-1 the run has no known length, which"
                           " the learning-rate schedule (and the teacher's β schedule and ramp-ups) are fractions of:"
                           " set trainer.max_steps or trainer.max_epochs")


def _check_sweeper(cfg: DictConfig, metric: str) -> None:
    """An Optuna search must optimize ``metric`` the way the checkpoint does: up, or down for a loss."""
    if "hydra" in cfg:
        sweeper = cfg.hydra.sweeper
    elif HydraConfig.initialized():
        sweeper = HydraConfig.get().sweeper
    else:
        return
    direction = sweeper.get("direction")
    if direction is None or not isinstance(direction, str):
        return
    wanted = "minimize" if metric.endswith("loss") else "maximize"
    if str(direction).lower() != wanted:
        raise _not_allowed("hydra.sweeper.direction", str(direction), f"metric={metric} is "
                           f"{wanted[:-1]}ed (best checkpoint and sweeper must agree): use {wanted}")


def _check_targets(cfg: DictConfig) -> None:
    """Every ``callbacks.*`` and ``logger.*`` entry names an importable class (TensorBoard's, MLflow's and W&B's with
    their packages: :func:`~lightning_smart.app.trackers.check_tracker`)."""
    for group in ("callbacks", "logger"):
        for name, spec in (cfg.get(group) or {}).items():
            if spec is None:
                continue
            key = f"{group}.{name}._target_"
            try:
                target = get_class(spec["_target_"])
            except Exception as err:  # a missing key or an unimportable class, as Hydra reports them
                raise ConfigError(f"{key} is not allowed: {' '.join(str(err).split())}") from None
            if issubclass(target, TensorBoardLogger) and not (find_spec("tensorboard") or find_spec("tensorboardX")):
                raise ConfigError(f"logger.{name} needs TensorBoard: pip install tensorboard (or logger=csv)")
            if group == "logger":
                check_tracker(name, target, spec)


def _check_eval(cfg: DictConfig) -> None:
    """``eval.*``: the attacks' values, and a task they can score (:func:`lightning_smart.app.robustness.check_eval`,
    :func:`lightning_smart.app.text_attacks.check_text_attacks`)."""
    check_eval(OmegaConf.to_container(cfg.eval.robust_radii), cfg.eval.robust_steps,  # type: ignore[arg-type]
               cfg.eval.robust_batches, kind=_data_kind(cfg), num_labels=cfg.data.num_labels)
    check_text_attacks(OmegaConf.to_container(cfg.eval.text_attacks), cfg.eval.text_attack_examples,  # type: ignore[arg-type]
                       cfg.eval.typo_rate, kind=_data_kind(cfg), num_labels=cfg.data.num_labels,
                       pairs=cfg.data.get("text_pair_column") is not None)


def check(cfg: DictConfig) -> Checked:
    """Validate everything that can be checked before training, writing nothing.

    The hyperparameters (their dataclasses' ranges), the seed and the optimizer's settings, the Trainer's values
    (as Lightning would take them), the model's config, the tokenizer and the data (files, columns, labels,
    splits), the monitored metric, the end-of-run attack's values and, in a sweep, the sweeper's direction. Raises
    :class:`~lightning_smart.config.ConfigError` (or an OmegaConf error for a missing ``???`` value) naming the key
    or the file.
    """
    smart = SmartConfig(**OmegaConf.to_container(cfg.smart))  # type: ignore[arg-type]
    teacher = None if cfg.teacher is None else TeacherConfig(**OmegaConf.to_container(cfg.teacher))  # type: ignore[arg-type]
    _check_run(cfg)
    _check_trainer(cfg)
    try:
        AutoConfig.from_pretrained(cfg.model.name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path!r} could not be loaded: {err}") from None
    _check_targets(cfg)
    metric = _monitored_metric(cfg, teacher)
    _check_sweeper(cfg, metric)
    _check_eval(cfg)
    data = data_module(cfg.data)
    splits = data.load()
    _check_processes(cfg, len(splits.train))
    _ = data.tokenizer
    return Checked(smart, teacher, data, metric)


def _check_processes(cfg: DictConfig, train_examples: int) -> None:
    """What a sharded (``trainer=fsdp``) or multi-process run would otherwise meet only once it runs."""
    trainer = cfg.trainer
    strategy = trainer.strategy
    sharded = isinstance(strategy, DictConfig) and str(strategy.get("_target_", "")).endswith("ModelParallelStrategy")
    devices = trainer.devices
    if sharded:
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise _not_allowed("trainer.devices", devices, "with trainer=fsdp, the number of processes to shard over,"
                               " an integer ≥ 1 (the data-parallel mesh has that size)")
        if strategy.get("tensor_parallel_size", 1) != 1:
            raise _not_allowed("trainer.strategy.tensor_parallel_size", strategy.tensor_parallel_size,
                               "1: tensor parallelism needs a plan for the model's layers, which the app's tasks do not"
                               " have (FSDP2 shards every weight over trainer.devices)")
    world = devices * trainer.num_nodes if isinstance(devices, int) and not isinstance(devices, bool) else 1
    if world > 1 and strategy not in ("auto", "single_device") and train_examples % world:
        raise _not_allowed("data.train_size", train_examples, f"a multiple of the {world} processes"
                           f" (trainer.devices × trainer.num_nodes): each takes every {world}-th training example, and"
                           f" the sampler would repeat {world - train_examples % world} to even them out")


def _task_config_key(cfg: DictConfig) -> str:
    """The config less Hydra's own node: what the task function receives of what the callback checked."""
    return OmegaConf.to_yaml({k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"})


_checked: dict[str, Checked] = {}


def check_once(cfg: DictConfig) -> Checked:
    """:func:`check`'s result for ``cfg``: the one :class:`CheckBeforeRun` made of this very config, else a new one."""
    return _checked.pop(_task_config_key(cfg), None) or check(cfg)


class CheckBeforeRun(HydraCallback):
    """Hydra callback: :func:`check` the composed config before Hydra creates any output folder.

    Hydra turns a callback's exceptions into warnings; ``SystemExit`` is no ``Exception``, so it ends the
    command, with the error's message and exit status 1, before anything is written. A run's result is kept for
    its task function (:func:`check_once`): the config is checked, and the data read, once.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _checked[_task_config_key(config)] = self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)  # the base config: each job checks its swept values again

    @staticmethod
    def _check(config: DictConfig) -> Checked:
        try:
            return check(config)
        except (ConfigError, OmegaConfBaseException) as err:
            raise SystemExit(f"Error in the config (nothing was written): {err}") from err


def _refused_global(err: pickle.UnpicklingError) -> tuple[str | None, str]:
    """From torch's ``weights_only`` error: the global (class or function) it refused to load, if that was the
    cause, and the line that says what it refused (the rest is torch's general advice)."""
    text = str(err).split("Check the documentation")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = re.search(r"GLOBAL ([\w.]+)", text)
    return (found[1] if found else None), (lines[-1].rstrip(".") if lines else type(err).__name__)


def _load_safely(path: Path, key: str) -> Any:
    try:
        # weights_only: tensors and plain containers only, as Lightning's own resume reads it. A file that pickles
        # anything else (a class, a function to call) is refused here, before that code can run.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        call, refused = _refused_global(err)
        if call is not None:  # a class or function to call: the way a crafted pickle runs code
            raise ConfigError(f"{key} is refused: it holds a pickled call to {call}, which loading would run as"
                              " code; only tensors and plain values are read from a checkpoint (smart-train's own"
                              " resume)") from None
        raise ConfigError(f"{key} is not a readable checkpoint: UnpicklingError: {refused}") from None
    except Exception as err:  # torch raises zip and runtime errors alike for a file that is no checkpoint
        raise ConfigError(f"{key} is not a readable checkpoint: {type(err).__name__}: {err}") from None


def _sharded_checkpoint(folder: Path, key: str) -> tuple[Any, set[str], bool]:
    """A distributed checkpoint (``trainer=fsdp``: a folder of shards and ``meta.pt``): its metadata, the model's
    keys and whether it holds optimizer states, read without loading a tensor."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (folder / "meta.pt").is_file():
        raise ConfigError(f"{key} is a folder but not a distributed checkpoint (no meta.pt): resume from a run's"
                          " checkpoints/last.ckpt")
    meta = _load_safely(folder / "meta.pt", key)
    try:
        stored = set(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    except Exception as err:
        raise ConfigError(f"{key} is not a readable checkpoint: {type(err).__name__}: {err}") from None
    model = {k.removeprefix("state_dict.") for k in stored if k.startswith("state_dict.")}
    return meta, {k for k in model if not k.startswith(SHARDED_KEY)}, any(k.startswith("optimizer_") for k in stored)


def check_checkpoint(path: str, model: pl.LightningModule) -> None:
    """Refuse, before training, a ``ckpt_path`` that cannot resume this run: missing, unreadable or foreign."""
    key = f"ckpt_path={path!r}"
    where = Path(path)
    if where.is_dir():
        ckpt, saved, resumable = _sharded_checkpoint(where, key)
        if not isinstance(ckpt, dict):
            raise ConfigError(f"{key} is not a Lightning checkpoint: its meta.pt holds no dict")
    elif where.is_file():
        ckpt = _load_safely(where, key)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise ConfigError(f"{key} is not a Lightning checkpoint: it has no 'state_dict'")
        saved, resumable = set(ckpt["state_dict"]), "optimizer_states" in ckpt
    else:
        raise ConfigError(f"{key}: no such file (resume from a run's checkpoints/last.ckpt)")
    ours = set(model.state_dict())
    if saved != ours:
        missing, unexpected = sorted(ours - saved)[:3], sorted(saved - ours)[:3]
        raise ConfigError(f"{key} was saved from another model: missing {missing}, unexpected {unexpected}")
    if not resumable:
        raise ConfigError(f"{key} holds weights only (checkpoint.save_weights_only=true): it cannot resume training")


def refuse_relaunch_under_multirun(trainer: pl.Trainer, strategy: Any) -> None:
    """Refuse a strategy that re-launches the command line per worker (``ddp``, ``fsdp``...) in a sweep.

    Lightning's script launcher starts each worker with this process's ``sys.argv``: under ``--multirun`` that
    is the whole sweep, so every worker would start the sweep again (a known Hydra + DDP pitfall). Spawned
    workers (``ddp_spawn``) run the job's function instead.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and isinstance(trainer.strategy, ModelParallelStrategy):
        raise ConfigError(
            "trainer=fsdp (ModelParallelStrategy) re-launches the command line in each worker, which under --multirun"
            " would start the whole sweep again in every worker, and it has no spawning variant: run each job as a"
            " smart-train command of its own, or sweep with trainer.strategy=ddp_spawn"
        )
    if multirun and relaunches_script(trainer.strategy):
        raise ConfigError(
            f"trainer.strategy={strategy!r} re-launches the command line in each worker, which "
            "under --multirun would start the whole sweep again in every worker: use trainer.strategy=ddp_spawn "
            "with --multirun (ddp is fine for single runs)"
        )
