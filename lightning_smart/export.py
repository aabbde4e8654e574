"""What a run hands over: checkpoints without duplicates, the student and the teacher as ``save_pretrained`` folders.

- :class:`AtomicCheckpointIO` writes each checkpoint beside its path, then renames it;
- :class:`LastCheckpoint` keeps ``checkpoints/last.ckpt`` (the latest validation, to resume), a hard link to the best
  checkpoint when both are the same step: one file on disk, two names;
- :func:`export_pretrained` writes ``model/`` (the final student) and ``teacher/`` (the student's model with the
  EMA tensors in place of its trainable weights), each with the tokenizer, for the task's ``Auto`` class (with a
  LoRA adapter: merged in, and ``adapter/`` the adapter alone);
- :func:`summarize`, :func:`write_json` and :func:`print_summary`: ``summary.json``, and its table.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
import transformers
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_smart import __version__
from lightning_smart.sweep import replacing


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint (``last.ckpt`` is overwritten at every validation) beside its path, then renames it.

    Lightning serializes to memory first, but then writes through a temporary file in the system's temp folder and
    moves it into place, a copy (not atomic) when that folder is on another file system. Renaming within the
    checkpoint's own folder is atomic: a crash while writing leaves the previous checkpoint whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest validated step, overwritten at each validation, what a resume needs.

    When ``best`` has just saved this very step (same global step, same ``save_weights_only``), ``last.ckpt``
    becomes a hard link to that file instead of a second identical copy (a full checkpoint of all-MiniLM-L6-v2
    with AdamW's moments and the teacher is ≈ 364 MB). The linked file differs from what this callback would write
    only in this callback's own bookkeeping (which file it wrote last), which resuming does not use. The link is
    replaced (not written through) at the next validation, and outlives the best file's removal: the two names
    never change each other's content. Where the file system has no hard links, the checkpoint is written.

    Args:
        best: the callback that keeps the best checkpoints (``None``: none to link to).
        dirpath: the checkpoints' folder.
        save_weights_only: leave out optimizer and callback states (cannot resume training).
    """

    def __init__(self, best: ModelCheckpoint | None, dirpath: str | Path, save_weights_only: bool = False) -> None:
        super().__init__(dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         save_weights_only=save_weights_only)
        self.best = best

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        best = self.best
        same_step = best is not None and best._last_global_step_saved == trainer.global_step and bool(
            best._last_checkpoint_saved) and best.save_weights_only == self.save_weights_only
        # A distributed checkpoint (trainer=fsdp) is a folder that every rank writes its shard into: written again.
        same_step = same_step and not Path(best._last_checkpoint_saved).is_dir()  # type: ignore[union-attr]
        if best is None or not same_step:
            super()._save_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            target = Path(filepath)
            try:
                with replacing(target) as tmp:
                    os.link(best._last_checkpoint_saved, tmp)
            except OSError:
                super()._save_checkpoint(trainer, filepath)
                return
        trainer.strategy.barrier("LastCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def teacher_state_dict(model: nn.Module, ema: dict[str, Tensor], prefix: str = "model.") -> dict[str, Tensor]:
    """``model``'s state dict with the teacher's EMA tensors in place of its trainable weights.

    Args:
        model: the student's transformers model (the LightningModule's ``model``).
        ema: :attr:`EMATeacherCallback.ema`: name → float32 tensor, named as the LightningModule's parameters.
        prefix: what the LightningModule's names put before ``model``'s own.

    Frozen parameters and buffers are the student's (the teacher shares them); each EMA tensor takes its
    parameter's dtype.
    """
    state = dict(model.state_dict())
    for name, tensor in ema.items():
        key = name.removeprefix(prefix)
        if key not in state:
            raise KeyError(f"the teacher's {name!r} is not a parameter of the model under {prefix!r}")
        state[key] = tensor.detach().to(device=state[key].device, dtype=state[key].dtype)
    return state


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
                    state_dict: dict[str, Tensor] | None = None) -> Path:
    """``model`` (with ``state_dict``'s weights, if given) and ``tokenizer`` in ``folder``, replaced whole.

    Written to a temporary folder beside it, then renamed: a crash leaves no half-written model.
    """
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _merged(model: nn.Module) -> PreTrainedModel:
    """A PEFT model's base model with its adapter merged in, on a copy (training goes on with the adapter)."""
    return copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds FSDP2 units (its parameters are shards)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def _unwrapped_class(module: nn.Module) -> type[nn.Module]:
    """The model's own class: ``fully_shard`` replaces it by a subclass that also derives from ``FSDPModule``."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if issubclass(c, nn.Module) and not issubclass(c, FSDPModule))


def unsharded_copy(hf_model: nn.Module) -> PreTrainedModel | None:
    """A whole copy of an FSDP2-sharded transformers (or PEFT) model, on rank 0's CPU; ``None`` on the other ranks.

    A collective call: every rank gathers its shards (``get_model_state_dict`` with ``full_state_dict``), rank 0
    builds the model anew from its config (with the same LoRA adapter) and loads the whole weights into it.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(hf_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    peft = callable(getattr(hf_model, "merge_and_unload", None))
    base = hf_model.get_base_model() if peft else hf_model  # type: ignore[operator]
    copy_: nn.Module = _unwrapped_class(base)(base.config)
    if peft:
        from peft import get_peft_model

        copy_ = get_peft_model(copy_, hf_model.peft_config["default"])  # type: ignore[arg-type,index]
    copy_.load_state_dict(full)
    return copy_.train(hf_model.training)  # type: ignore[return-value]


def export_pretrained(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path,
                      ema: dict[str, Tensor] | None = None) -> dict[str, str]:
    """``out/model`` (the student's current weights) and, given the teacher's ``ema``, ``out/teacher``.

    With a LoRA adapter (peft), ``model/`` and ``teacher/`` hold the base model with the adapter merged in, for the
    ``Auto`` classes, and ``adapter/`` the student's adapter alone (for ``PeftModel.from_pretrained``).

    Args:
        model: the LightningModule; its ``model`` attribute is the transformers (or PEFT) model.
        tokenizer: saved in each folder.
        out: the run's folder.
        ema: the teacher's whole tensors (:meth:`EMATeacherCallback.full_ema`), or ``None`` for no teacher folder.

    Under FSDP2 every rank calls it (the weights are gathered) and rank 0 writes.

    Returns:
        The folders written, relative to ``out``: ``{"model": "model", "teacher": "teacher", "adapter": "adapter"}``.
    """
    hf_model: PreTrainedModel | None = model.model  # type: ignore[assignment]
    if is_sharded(model):
        hf_model = unsharded_copy(hf_model)  # type: ignore[arg-type]
        if hf_model is None:  # not rank 0: it took part in the gather, rank 0 writes
            return {}
    assert hf_model is not None
    folders: dict[str, Path] = {}
    if callable(getattr(hf_model, "merge_and_unload", None)):  # a PEFT model
        folders["adapter"] = save_pretrained(hf_model, tokenizer, out / "adapter")
        folders["model"] = save_pretrained(_merged(hf_model), tokenizer, out / "model")
        if ema:
            teacher = copy.deepcopy(hf_model)
            teacher.load_state_dict(teacher_state_dict(hf_model, ema))
            folders["teacher"] = save_pretrained(_merged(teacher), tokenizer, out / "teacher")
    else:
        folders["model"] = save_pretrained(hf_model, tokenizer, out / "model")
        if ema:
            folders["teacher"] = save_pretrained(hf_model, tokenizer, out / "teacher",
                                                 teacher_state_dict(hf_model, ema))
    return {name: os.path.relpath(path, out) for name, path in folders.items()}


def summarize(cfg: DictConfig, out: Path, trainer: pl.Trainer, metric: str, data: dict[str, Any], *,
              val: dict[str, float], test: dict[str, dict[str, float]], steps: int, skipped: int,
              best: tuple[Any, str], exported: dict[str, str], wall_time_s: float,
              curve: list[tuple[int, float]] | None = None, peak_memory: dict[str, Any] | None = None,
              robust: dict[str, Any] | None = None, test_teacher: dict[str, dict[str, float]] | None = None
              ) -> dict[str, Any]:
    """``summary.json``'s content.

    Returns:
        ``metric`` and ``score`` (its final value), ``val`` and ``val_teacher`` (final validation metrics of the
        student and of the teacher), ``test`` (per test set, best checkpoint), ``test_teacher`` (per test set, the
        teacher's robust accuracy, or ``None``), ``robust`` (how robust accuracy, the ``robust_acc@<radius>``
        metrics, was measured: :meth:`~lightning_smart.robustness.RobustEvaluation.summary`, or ``None``),
        ``best`` (score and checkpoint),
        ``data`` (split sizes, what was left out), ``steps``, ``smart_skipped``, ``smart_epsilon`` (the radius in
        force at the end: ``smart.epsilon``, or ``auto``'s last calibration), ``wall_time_s``, ``curve`` (the
        monitored metric at each validation: ``[step, value]``), ``peak_memory`` (:class:`PeakMemory`), ``files`` (the
        metrics CSV, the last checkpoint, the exported ``model`` and ``teacher`` folders, relative to ``out``),
        ``overrides``, the resolved ``config`` and the ``versions``.
    """
    best_score, best_path = best
    csv = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    last = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)]
    return {
        "metric": metric,
        "score": val[metric.removeprefix("val/")],
        "val": {k: v for k, v in val.items() if not k.endswith("_teacher")},
        "val_teacher": {k.removesuffix("_teacher"): v for k, v in val.items() if k.endswith("_teacher")} or None,
        "test": test,
        "test_teacher": test_teacher or None,
        "robust": robust,
        "best": {"score": None if best_score is None else float(best_score),
                 "checkpoint": os.path.relpath(best_path, out) if best_path else None},
        "data": data,
        "steps": steps,
        "smart_skipped": skipped,
        "smart_epsilon": getattr(trainer.lightning_module, "smart_epsilon", None),
        "wall_time_s": round(wall_time_s, 1),
        "curve": [list(point) for point in curve or []],
        "peak_memory": peak_memory,
        "files": {"metrics_csv": os.path.relpath(Path(csv[0].log_dir) / "metrics.csv", out) if csv else None,
                  "last_checkpoint": os.path.relpath(Path(str(last[0].dirpath)) / "last.ckpt", out) if last else None,
                  "model": exported.get("model"), "teacher": exported.get("teacher"),
                  "adapter": exported.get("adapter")},
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": {"lightning_smart": __version__, "lightning": pl.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }


class PeakMemory:
    """The peak memory of a run, from its start (construction) to :meth:`read`.

    On a GPU, the peak of torch's allocated memory on the device. On the CPU (Linux), the process's peak resident set
    (``VmHWM``), reset at the start through ``/proc/self/clear_refs`` so that each run of a sweep in one process is
    measured apart; where that cannot be reset, the process's peak since it started, and the summary says so.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset = False
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            pass

    def read(self) -> dict[str, Any]:
        """``{"mib": float, "what": str}``."""
        if self.device.type == "cuda":
            return {"mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                    "what": "peak allocated GPU memory (torch)"}
        status = Path("/proc/self/status")
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    what = "peak resident memory of the run" if self.reset else "peak resident memory of the process"
                    return {"mib": round(int(line.split()[1]) / 1024, 1), "what": what}
        import resource  # not on Windows; Linux reports kilobytes, macOS bytes

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"mib": round(peak / (2**20 if sys.platform == "darwin" else 1024), 1),
                "what": "peak resident memory of the process"}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that a reader never sees half a file: a temporary file, then an atomic rename."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def print_summary(summary: dict[str, Any], path: Path | None = None) -> None:
    """A short table of a run's final metrics: student and teacher side by side, then the test sets."""
    table = Table(title=f"{summary['steps']} steps in {summary['wall_time_s']:.0f} s", title_justify="left")
    for column in ("metric", "student", "teacher"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    teacher = summary["val_teacher"] or {}
    for name, value in summary["val"].items():
        table.add_row(f"val/{name}", f"{value:.4f}", f"{teacher[name]:.4f}" if name in teacher else "—")
    for test_set, metrics in summary["test"].items():
        teacher = (summary.get("test_teacher") or {}).get(test_set, {})
        for name, value in metrics.items():
            table.add_row(f"test/{test_set}/{name}", f"{value:.4f}", f"{teacher[name]:.4f}" if name in teacher else "—")
    console = Console()
    console.print(table)
    robust = summary.get("robust")
    if robust:
        batches = "every batch" if robust["batches"] is None else f"{robust['batches']} batches"
        console.print(f"robust_acc@r: accuracy under PGD (ℓ{'∞' if robust['norm'] == 'inf' else '2'}, r × token RMS,"
                      f" {robust['steps']} steps) on {batches} of each split, {robust['seconds']:.0f} s")
    if path is not None:
        console.print(f"summary: {path}")
