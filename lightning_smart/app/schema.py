"""The app's config tree: one dataclass per group, registered with Hydra's ConfigStore.

Every key's type and default lives here, or in :class:`~lightning_smart.config.SmartConfig`,
:class:`~lightning_smart.config.TeacherConfig` and the data configs (:class:`~lightning_smart.data.TextDataConfig`,
and ``data=sft``'s and ``data=tokens``' subclasses of it); the YAML presets under ``conf/`` set values only. A key
that is not in a dataclass, or a value of the wrong type, fails at composition with Hydra's error naming it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lightning_smart.config import SmartConfig, TeacherConfig
from lightning_smart.data import SFTDataConfig, TaggingDataConfig, TextDataConfig
from lightning_smart.data.assets import package_dir


@dataclass
class ModelConf:
    """The pre-trained encoder and its optimizer (:class:`~lightning_smart.tasks.SequenceTask`).

    Args:
        name_or_path: a Hub name or local folder for ``AutoModelForSequenceClassification`` (required).
        config: values that override the model's config, e.g. ``{num_hidden_layers: 2}``.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        warmup_ratio: fraction of the optimizer steps of linear warm-up.
        lora: ``peft.LoraConfig``'s arguments (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``...) to
            train a LoRA adapter only (needs peft), e.g. ``+model.lora.r=8``; empty (default) trains every weight.
    """

    name_or_path: str = MISSING
    config: dict[str, Any] = field(default_factory=dict)
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lora: dict[str, Any] = field(default_factory=dict)


MODEL_TOKENIZER = "${model.name_or_path}"
"""``data.tokenizer``'s default in the app: the model's own tokenizer."""


@dataclass
class TrainerConf:
    """Arguments of ``lightning.pytorch.Trainer`` (Lightning's documentation describes each).

    These are the defaults the app sets; ``AppConfig.trainer`` is open to any other argument of the Trainer
    (``+trainer.profiler=simple`` on the command line, ``profiler: simple`` in a preset), which Lightning itself
    checks before training.
    """

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: Any = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int | None = None
    max_steps: int = -1
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = 10
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    deterministic: Any = None
    fast_dev_run: Any = False


@dataclass
class CheckpointConf:
    """``ModelCheckpoint`` on the run's ``metric``, under ``checkpoints/``.

    Args:
        save_top_k: how many best checkpoints to keep (0: none).
        save_last: also keep ``last.ckpt``, the weights of the latest validation, best or not (to resume with
            ``ckpt_path``; Lightning's own ``save_last`` follows the latest *best* checkpoint instead).
        save_weights_only: leave out optimizer and callback states (smaller; cannot resume training).
    """

    save_top_k: int = 1
    save_last: bool = True
    save_weights_only: bool = False


@dataclass
class EvalConf:
    """What the run measures beyond its task's metrics, after training (:mod:`lightning_smart.app.robustness`).

    Args:
        robust_radii: radii ε of the embedding-space PGD attack (:mod:`lightning_smart.attack`, ℓ∞, in units of
            each token's RMS, at the site SMART perturbs), e.g. ``[0.03, 0.1]``: robust accuracy at each, on the
            validation split and on every test split, for the student and the validated teacher. Empty
            (default): no attack. Sequence classification only.
        robust_steps: K, PGD's ascent steps at each radius.
        robust_batches: how many evaluation batches of each split to attack: every k-th batch of the
            length-sorted loader, so that they span the lengths; ``null`` attacks every batch.
        text_attacks: character-level attacks on the raw text (:mod:`lightning_smart.app.text_attacks`), from
            ``deepwordbug``, ``pruthi`` (TextAttack's recipes) and ``typos`` (random typos at ``typo_rate``), e.g.
            ``[deepwordbug, typos]``: on the validation split and every test split, for the exported student and
            teacher. Empty (default): none. Sequence classification only.
        text_attack_examples: how many examples of each split the text attacks attack (a sample seeded by
            ``seed``); ``null`` attacks every example.
        typo_rate: the probability that ``typos`` gives a word a typo.
    """

    robust_radii: list[float] = field(default_factory=list)
    robust_steps: int = 5
    robust_batches: int | None = 4
    text_attacks: list[str] = field(default_factory=list)
    text_attack_examples: int | None = 256
    typo_rate: float = 0.1


@dataclass
class AppConfig:
    """The whole run.

    Args:
        seed: seeds Python, NumPy and torch (weights of the new head, dropout, SMART's noise, shuffling).
        metric: the validation metric to checkpoint on and return to sweepers; ``None``: ``val/acc``
            (classification) or ``val/pearson`` (regression).
        test: evaluate the test and out-of-domain sets with the best checkpoint after training.
        ckpt_path: resume training from this checkpoint (e.g. a run's ``checkpoints/last.ckpt``).
        progress_bar: show Lightning's rich progress bar.
        trainer: ``lightning.pytorch.Trainer``'s arguments: :class:`TrainerConf`'s defaults, and any other.
        callbacks: Lightning callbacks by name, each a ``_target_`` entry that Hydra instantiates.
        logger: Lightning loggers by name, likewise.
        eval: what the run measures after training beyond its task's metrics: :class:`EvalConf`.
        data: the data config, whose type picks the data module: :class:`~lightning_smart.data.TextDataConfig`
            (``data=sft`` and ``data=tokens`` make it their subclass); ``data.tokenizer`` is the model's.
    """

    smart: SmartConfig = field(default_factory=SmartConfig)
    teacher: TeacherConfig | None = field(default_factory=TeacherConfig)
    model: ModelConf = field(default_factory=ModelConf)
    data: TextDataConfig = field(default_factory=lambda: TextDataConfig(tokenizer=MODEL_TOKENIZER))
    trainer: dict[str, Any] = field(default_factory=lambda: asdict(TrainerConf()))
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    eval: EvalConf = field(default_factory=EvalConf)
    seed: int = 42
    metric: str | None = None
    test: bool = True
    ckpt_path: str | None = None
    progress_bar: bool = True


def register_configs() -> None:
    """Store the schema as ``app_schema`` (``conf/config.yaml`` starts from it) and add ``${package_dir:...}``."""
    store = ConfigStore.instance()
    store.store(name="app_schema", node=AppConfig)
    for name, config in (("sft_schema", SFTDataConfig), ("tokens_schema", TaggingDataConfig)):
        node = OmegaConf.structured(config)  # the class: its defaults alone need not be valid (no data.path yet)
        node.tokenizer = MODEL_TOKENIZER
        store.store(group="data", name=name, node=node)
    if not OmegaConf.has_resolver("package_dir"):
        OmegaConf.register_new_resolver("package_dir", lambda name: str(package_dir(name)))
