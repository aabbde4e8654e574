"""``summary.json`` (what a run measured, how, and with what) and the table printed at the end of a run.

A run that raised in a sweep leaves a summary of its own (:func:`summarize_failure`), marked ``"status": "failed"``:
its error in place of metrics.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import transformers
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lightning_smart import __version__
from lightning_smart.app.checkpoints import LastCheckpoint


def summarize(cfg: DictConfig, out: Path, trainer: pl.Trainer, metric: str, data: dict[str, Any], *,
              val: dict[str, float], test: dict[str, dict[str, float]], steps: int, skipped: int,
              best: tuple[Any, str], exported: dict[str, str], wall_time_s: float,
              curve: list[tuple[int, float]] | None = None, peak_memory: dict[str, Any] | None = None,
              robust: dict[str, Any] | None = None, test_teacher: dict[str, dict[str, float]] | None = None,
              text_attacks: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json``'s content.

    Returns:
        ``status`` (``completed``), ``metric`` and ``score`` (its final value), ``val`` and ``val_teacher`` (final
        validation metrics of the student and of the teacher), ``test`` (per test set, best checkpoint),
        ``test_teacher`` (per test set, the teacher's robust accuracy, or ``None``), ``robust`` (how robust accuracy,
        the ``robust_acc@<radius>`` metrics, was measured:
        :meth:`~lightning_smart.app.robustness.RobustEvaluation.summary`, or ``None``), ``text_attacks`` (how the
        text attacks' metrics were measured: :meth:`~lightning_smart.app.text_attacks.TextAttackEvaluation.summary`,
        or ``None``), ``best`` (score and checkpoint), ``data`` (the data module's ``stats``: split sizes, what was
        left out, the class names as ``label_names`` and whether they were inferred from the data), ``steps``,
        ``smart_skipped``,
        ``smart_epsilon`` (the radius in force at the end: ``smart.epsilon``, or ``auto``'s last calibration),
        ``wall_time_s``, ``curve`` (the monitored metric at each validation: ``[step, value]``), ``peak_memory``
        (:class:`PeakMemory`), ``files`` (the metrics CSV, the last checkpoint, the exported ``model`` and ``teacher``
        folders, relative to ``out``), ``overrides``, the resolved ``config`` and the ``versions``.
    """
    best_score, best_path = best
    csv = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    last = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)]
    return {
        "status": "completed",
        "metric": metric,
        "score": val[metric.removeprefix("val/")],
        "val": {k: v for k, v in val.items() if not k.endswith("_teacher")},
        "val_teacher": {k.removesuffix("_teacher"): v for k, v in val.items() if k.endswith("_teacher")} or None,
        "test": test,
        "test_teacher": test_teacher or None,
        "robust": robust,
        "text_attacks": text_attacks,
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
        "versions": _versions(),
    }


def summarize_failure(cfg: DictConfig, error: BaseException, wall_time_s: float, traceback_file: str) -> dict[str, Any]:
    """``summary.json``'s content for a run that raised after its config was accepted.

    Returns:
        ``status`` (``failed``), ``error`` (``type``, ``message`` and ``traceback``, the file that holds it, relative
        to the run's folder), ``metric`` (``cfg.metric``: ``None`` for the task's default), ``score`` (``None``),
        ``wall_time_s`` (until the error), ``overrides``, the resolved ``config`` and the ``versions``.
    """
    return {
        "status": "failed",
        "error": {"type": type(error).__name__, "message": str(error), "traceback": traceback_file},
        "metric": cfg.get("metric"),
        "score": None,
        "wall_time_s": round(wall_time_s, 1),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": _versions(),
    }


def raised(summary: dict[str, Any]) -> bool:
    """Whether a run raised (:func:`summarize_failure`): its summary holds the error and no metrics."""
    return summary.get("status") == "failed"


def error_line(summary: dict[str, Any]) -> str:
    """A failed run's error on one line: its type and the first line of its message."""
    error = summary["error"]
    message = next((line.strip() for line in str(error["message"]).splitlines() if line.strip()), "")
    return f"{error['type']}: {message}" if message else str(error["type"])


def _versions() -> dict[str, str]:
    return {"lightning_smart": __version__, "lightning": pl.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


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
    text = summary.get("text_attacks")
    if text:
        shown = "every example" if text["sample"] is None else f"{text['sample']} examples"
        seconds = ", ".join(f"{attack} {s:.0f} s" for attack, s in text["seconds"].items())
        console.print(f"<attack>_acc: accuracy under text attacks on the exported models, {shown} of each split"
                      f" (seed {text['seed']}, typo rate {text['typo_rate']:g}): {seconds}")
    if path is not None:
        console.print(f"summary: {path}")
