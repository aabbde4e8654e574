"""The multirun aggregate: each setting's metrics across seeds, as a table and a plot of validation curves.

A setting is a job's overrides that vary across the sweep, less ``seed``. Written in the sweep's folder
when Hydra's multirun ends (:class:`AggregateSweep`), or again at any time with ``smart-aggregate DIR``:

- ``aggregate.md``: per setting, the main metric (student, teacher, test sets) as median (mean ± std);
- ``aggregate.csv``: every metric, one row per setting and metric: n, median, mean, std;
- ``val_curves.png``: the main validation metric against the step, per setting (mean over seeds, min–max band);
- with plain fine-tuning among the settings (``experiment=compare``), ``compare.md``, ``compare.csv`` and
  ``compare.png``: the paired comparison with plain (:mod:`lightning_smart.app.compare`).

A job that raised at run time left a summary marked failed and its traceback in its folder
(:func:`lightning_smart.app.summary.summarize_failure`): the reports count it per setting and name its error, and the
sweep then ends with exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from matplotlib.figure import Figure
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from lightning_smart.app import compare
from lightning_smart.app.files import replacing
from lightning_smart.app.summary import error_line, raised
from lightning_smart.app.trackers import log_sweep

AGGREGATED_OVER = ("seed",)
log = logging.getLogger(__name__)


@dataclass
class Job:
    """One run of a sweep that ended, trained or failed: its folder and its ``summary.json``."""

    path: Path
    summary: dict[str, Any]

    @property
    def overrides(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.summary["overrides"] if "=" in o)

    @property
    def failed(self) -> bool:
        """Whether the run raised: its summary holds the error instead of metrics."""
        return raised(self.summary)

    @property
    def metrics(self) -> dict[str, float]:
        """Every final metric under its logged name: ``val/acc``, ``val/acc_teacher``, ``test/movies/acc``,
        ``test/movies/robust_acc@0.1_teacher``; none for a failed run."""
        if self.failed:
            return {}
        flat = {f"val/{k}": v for k, v in self.summary["val"].items()}
        flat |= {f"val/{k}_teacher": v for k, v in (self.summary["val_teacher"] or {}).items()}
        for test_set, values in self.summary["test"].items():
            flat |= {f"test/{test_set}/{k}": v for k, v in values.items()}
        for test_set, values in (self.summary.get("test_teacher") or {}).items():
            flat |= {f"test/{test_set}/{k}_teacher": v for k, v in values.items()}
        return flat


@dataclass(frozen=True)
class FailedJob:
    """What a job that raised hands its sweeper in place of its score: where its error is, and the error.

    No number, on purpose: the basic sweeper ignores what jobs return, and the Optuna sweeper (hydra-optuna-sweeper
    1.3) records a trial whose value is no float as failed and goes on, where a NaN would stop the study (Optuna 2
    refuses to be told one).
    """

    folder: str
    error: str

    def __str__(self) -> str:
        return f"job failed ({self.error}), its folder holds the traceback: {self.folder}"


@dataclass
class Row:
    """One metric of one setting across its jobs."""

    setting: str
    metric: str
    n: int
    median: float
    mean: float
    std: float

    def cell(self) -> str:
        return f"{self.median:.3f} ({self.mean:.3f} ± {self.std:.3f})"


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """The sweep's jobs that ended, trained or failed (each folder holding a ``summary.json``), in job order."""
    def job_order(path: Path) -> tuple[int, int, str]:
        name = path.parent.name
        return len(path.parts), int(name) if name.isdigit() else -1, str(path)

    paths = sorted(Path(sweep_dir).rglob("summary.json"), key=job_order)
    return [Job(p.parent, json.loads(p.read_text())) for p in paths]


def settings(jobs: Sequence[Job]) -> list[str]:
    """Each job's setting: the overrides whose values differ across the jobs, less ``seed``."""
    return _varying(jobs, leave_out=AGGREGATED_OVER)


def _varying(jobs: Sequence[Job], leave_out: Sequence[str] = ()) -> list[str]:
    """Each job's overrides whose values differ across the jobs, less those named in ``leave_out``."""
    keys = sorted({k for job in jobs for k in job.overrides} - set(leave_out))
    varying = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    return [" ".join(f"{k}={job.overrides.get(k, '-')}" for k in varying) or "all" for job in jobs]


def failures(jobs: Sequence[Job], sweep_dir: str | Path) -> list[str]:
    """One line per failed job: its folder, the overrides that set it apart, and its error."""
    named = _varying(jobs)
    return [f"{job.path.relative_to(sweep_dir)} ({name}): {error_line(job.summary)}"
            for job, name in zip(jobs, named, strict=True) if job.failed]


def aggregate(jobs: Sequence[Job]) -> list[Row]:
    """Median, mean and standard deviation (0 for a single job) of every metric of every setting."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for setting, job in zip(settings(jobs), jobs, strict=True):
        for metric, value in job.metrics.items():
            values[setting, metric].append(value)
    return [
        Row(setting, metric, len(v), statistics.median(v), statistics.fmean(v),
            statistics.stdev(v) if len(v) > 1 else 0.0)
        for (setting, metric), v in values.items()
    ]


def _main_columns(jobs: Sequence[Job], rows: Sequence[Row]) -> list[str]:
    """The main metric, its teacher counterpart and its value on each test set, in that order (none when every job
    failed)."""
    trained = [job for job in jobs if not job.failed]
    if not trained:
        return []
    name = trained[0].summary["metric"].removeprefix("val/")
    wanted = [f"val/{name}", f"val/{name}_teacher"]
    present = {row.metric for row in rows}
    tests = sorted({m for m in present if m.startswith("test/") and m.endswith(f"/{name}")})
    return [m for m in wanted if m in present] + tests


def table(jobs: Sequence[Job], rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the compact table: per setting, its trained jobs (``n``), its failed jobs, and each main
    column as median (mean ± std)."""
    columns = _main_columns(jobs, rows)
    by_key = {(row.setting, row.metric): row for row in rows}
    names = settings(jobs)
    header = ["setting", "n", "failed", *columns]
    body = []
    for setting in dict.fromkeys(names):
        mine = [job for name, job in zip(names, jobs, strict=True) if name == setting]
        cells = [by_key[setting, m].cell() if (setting, m) in by_key else "—" for m in columns]
        failed = sum(job.failed for job in mine)
        body.append([setting, str(len(mine) - failed), str(failed), *cells])
    return header, body


def plot(jobs: Sequence[Job], path: Path) -> Path | None:
    """``val_curves.png``: the main validation metric (student solid, teacher dashed) against the step."""
    trained = [job for job in jobs if not job.failed]
    if not trained:
        return None
    metric = trained[0].summary["metric"]
    curves: dict[tuple[str, str], list[dict[int, float]]] = defaultdict(list)
    for setting, job in zip(settings(jobs), jobs, strict=True):
        if job.failed:
            continue
        csv_path = job.summary["files"].get("metrics_csv")
        if not csv_path or not (job.path / csv_path).is_file():
            continue
        with (job.path / csv_path).open(newline="") as f:
            rows = list(csv.DictReader(f))
        for who, column in (("student", metric), ("teacher", f"{metric}_teacher")):
            points = {int(r["step"]): float(r[column]) for r in rows if r.get(column)}
            if points:
                curves[setting, who].append(points)
    if not curves:
        return None
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    colors = {s: f"C{i}" for i, s in enumerate(dict.fromkeys(s for s, _ in curves))}
    for (setting, who), runs in curves.items():
        steps = sorted(set().union(*runs))
        at = [[run[s] for run in runs if s in run] for s in steps]
        axes.plot(steps, [statistics.fmean(v) for v in at], color=colors[setting],
                  linestyle="-" if who == "student" else "--", label=f"{setting} ({who}, n={len(runs)})")
        axes.fill_between(steps, [min(v) for v in at], [max(v) for v in at], alpha=0.15, color=colors[setting])
    axes.set(xlabel="optimizer step", ylabel=metric, title=f"{metric} per setting: mean over seeds, min–max band")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    with replacing(path) as tmp:
        figure.savefig(tmp, dpi=120)
    return path


def write(sweep_dir: str | Path) -> list[Row]:
    """Aggregate a sweep's folder: write ``aggregate.md``, ``aggregate.csv`` and ``val_curves.png``, print the table
    and the failed jobs."""
    sweep = Path(sweep_dir)
    jobs = load_jobs(sweep)
    if not jobs:
        raise FileNotFoundError(f"{sweep} holds no summary.json: not a smart-train sweep folder, or no job finished")
    rows = aggregate(jobs)
    with replacing(sweep / "aggregate.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in fields(Row)])
        writer.writerows(astuple(row) for row in rows)
    header, body = table(jobs, rows)
    failed = failures(jobs, sweep)
    lines = [f"Across seeds: median (mean ± std). {len(jobs)} jobs in {sweep}"
             + (f", {len(failed)} failed (no metrics)." if failed else "."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    if failed:
        lines += ["", "Failed jobs (each folder holds summary.json, marked failed, and error.txt, the traceback):", "",
                  *(f"- {line}" for line in failed)]
    with replacing(sweep / "aggregate.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    plotted = plot(jobs, sweep / "val_curves.png")
    compared = _write_comparison(jobs, sweep)

    console = Console()
    rich_table = Table(title=f"{len(jobs)} jobs · median (mean ± std) across seeds", title_justify="left")
    for column in header:
        rich_table.add_column(column, justify="left" if column == "setting" else "right")
    for cells in body:
        rich_table.add_row(*cells)
    console.print(rich_table)
    if failed:
        console.print("Failed jobs:\n" + "\n".join(f"  {line}" for line in failed), markup=False, highlight=False,
                      soft_wrap=True)
    console.print(f"aggregate: {sweep / 'aggregate.md'}" + (f", plot: {plotted}" if plotted else ""))
    if compared:
        console.print("\n".join(compared[2:]), markup=False, highlight=False, soft_wrap=True)
        console.print(f"comparison with plain fine-tuning: {sweep / 'compare.md'}, {sweep / 'compare.csv'}, "
                      f"{sweep / 'compare.png'}")
    return rows


def _write_comparison(jobs: Sequence[Job], sweep: Path) -> list[str] | None:
    """With plain fine-tuning among the settings: ``compare.md``, ``compare.csv`` and ``compare.png``."""
    names = settings(jobs)
    if all(n.startswith("setting=") and " " not in n for n in names):  # experiment=compare: the setting's name
        names = [n.removeprefix("setting=") for n in names]
    result = compare.compare(names, [job.summary for job in jobs], [str(job.path.relative_to(sweep)) for job in jobs])
    if result is None:
        return None
    rows, lines = result
    with replacing(sweep / "compare.csv") as tmp:
        compare.write_csv(rows, tmp)
    with replacing(sweep / "compare.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with replacing(sweep / "compare.png") as tmp:
        compare.plot(rows, tmp)
    return lines


class AggregateSweep(HydraCallback):
    """Hydra callback: :func:`write` the aggregate when a multirun ends, then end the command with exit status 1 if a
    job failed.

    Hydra turns a callback's exceptions into warnings; ``SystemExit`` is no ``Exception``, so it sets the exit status.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = load_jobs(sweep)
        failed = failures(jobs, sweep)
        try:
            write(sweep)
            log_sweep(config)  # MLflow, W&B: the reports in a run of the sweep's own
        except Exception:
            if not failed:
                raise
            log.exception("The sweep's reports could not be written")  # the exit status must still say a job failed
        if failed:
            raise SystemExit(f"{len(failed)} of {len(jobs)} jobs failed; their folders hold the error (summary.json,"
                             f" error.txt) and the reports in {sweep} name them:\n" + "\n".join(failed))


def aggregate_main(argv: Sequence[str] | None = None) -> None:
    """``smart-aggregate SWEEP_DIR``: print (and rewrite) a finished or partial sweep's aggregate, its failed jobs
    named."""
    parser = argparse.ArgumentParser(prog="smart-aggregate", description=aggregate_main.__doc__)
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. multirun/2026-01-31/12-00-00")
    args = parser.parse_args(argv)
    try:
        write(args.sweep_dir)
    except FileNotFoundError as err:
        parser.error(str(err))
