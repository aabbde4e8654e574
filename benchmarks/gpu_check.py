"""The GPU check: ``step_cost.py``'s rows under bf16-mixed, eager and compiled, and the sharded step, one command.

On a machine with only torch, lightning, transformers, torchmetrics and peft installed and no network::

    python benchmarks/gpu_check.py             # into benchmarks/results/gpu/, in under 8 minutes (--budget)
    python benchmarks/gpu_check.py --tiny      # tiny models, a step or two each, no compile: a CPU smoke run

It first installs what it imports beyond those (hydra-core, omegaconf, antlr4-python3-runtime, torchdata: pure
Python, ``py3-none-any``) and then the package itself (editable, ``--no-deps``), all from the wheels in
``benchmarks/wheels/`` (ignored by git), with ``pip install --no-index``, and starts itself again (a new interpreter
reads the editable install). Fill that folder on a machine with network, from the repository root::

    pip wheel --no-deps --wheel-dir benchmarks/wheels hydra-core==1.3.8 omegaconf==2.3.1 \\
        antlr4-python3-runtime==4.9.3 torchdata==0.11.0 setuptools wheel packaging

``pip wheel`` rather than ``pip download``: antlr4-python3-runtime 4.9.3 is published as a source archive only, and
``pip wheel`` builds it; every wheel there is pure Python, so the folder serves any platform and Python version
(setuptools, wheel and packaging build the editable install offline). The app's other dependencies (matplotlib,
rich, seqeval and scikit-learn) are not imported here; to carry them too, the compiled ones need wheels for the GPU
machine's platform and Python, e.g. ``pip download --only-binary=:all: --platform manylinux2014_x86_64
--python-version 3.11 --dest benchmarks/wheels matplotlib scikit-learn rich`` (and ``pip wheel --no-deps
seqeval==1.2.2``: a source archive only).

The models are randomly initialised from their configs (``fsdp_memory.MODELS``: no weights, no tokenizer, random
token ids): BERT-base and RoBERTa-large, sequence classifiers, take ``step_cost.ROWS``' bf16-mixed rows (plain, full
SMART with each ``smart.perturbed_precision``, ``relative_shared``, lazy k = 4); a Llama of 1.1B parameters
(TinyLlama's shape, vocabulary 32,000), a causal LM, takes ``step_cost.CAUSAL_ROWS`` (plain, full SMART: its
vocabulary-sized ℓs). Each row is timed and measured as ``step_cost.py`` does (``step_cost.fit_steps``: a Lightning
fit, the settings taking turns; on a GPU the clock waits for the device, the memory is CUDA's peak allocated bytes),
eagerly and with each transformer block compiled (:func:`compile_blocks`; the ``graphs`` column: how many graphs
Dynamo compiled during the row's fits, its recompiles included). The TF32 rows (eager) train in 32-bit with float32
matrix products in TF32 (``torch.set_float32_matmul_precision('high')``, as Lightning advises on tensor-core GPUs):
plain; full SMART, whose regularized passes take full-precision matrix products (the paper's ε is below TF32's
spacing); the same with ``perturbed_precision=autocast``, its passes in TF32 and δ rounded away, so the difference
between the two is what the full-precision passes cost; ``relative_shared``, whose radius TF32 resolves; the Llama
its two rows. The sharded step: SMART with the teacher under FSDP2 (``ModelParallelStrategy`` over every GPU) and
under DDP on the Llama (``fsdp_memory.py``'s fit). The eager rows run first, then the sharded step, then the TF32
rows (eager), then the compiled rows, until ``--budget`` seconds have passed; a row left out says so.

Output: the printed lines in ``<out>/gpu_check.txt``, each row as JSON in ``<out>/rows.jsonl``, and the sharded
ranks' figures in ``<out>/sharded/``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "wheels"
NEEDED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
          "torchdata": "torchdata"}
"""Module → distribution: what the check imports beyond torch, lightning, transformers, torchmetrics and peft."""
BF16 = "bf16-mixed"
TF32 = "32-true+tf32"
"""The TF32 rows' precision: ``32-true`` with ``torch.set_float32_matmul_precision('high')``."""
TF32_ROWS = ("plain", "SMART full (K=1)", "full, policy autocast", "relative_shared full")
"""``step_cost.ROWS``' settings that the encoders take in :data:`TF32`."""


def install_from_wheels(wheels: Path = WHEELS) -> list[str]:
    """Install the missing :data:`NEEDED` distributions and the package from ``wheels``, offline; what was installed."""
    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    package = importlib.util.find_spec("lightning_smart") is None
    if (missing or package) and not any(wheels.glob("*.whl")):
        raise SystemExit(f"missing {missing + ['lightning-smart'] * package} and no wheels in {wheels}: fill it as"
                         " this script's docstring says (pip wheel --no-deps --wheel-dir benchmarks/wheels ...)")
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps"]
    if missing:
        subprocess.run([*pip, *missing], check=True)
    if package:
        subprocess.run([*pip, "-e", str(ROOT)], check=True)
    importlib.invalidate_caches()
    return missing + ["lightning-smart"] * package


@dataclass
class Row:
    """One setting's figures on one model in one mode."""

    model: str
    mode: str
    setting: str
    precision: str
    times: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    peak_bytes: int | None = None
    graphs: int = 0
    done: bool = False

    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Plan:
    """What to run: the models and their batches, rounds, steps, modes and the time budget."""

    models: dict[str, tuple[int, int]]  # name → (batch size, tokens)
    accelerator: str
    rounds: int
    timed: int
    modes: tuple[str, ...]
    warmup: bool  # a first round that warms up (compiles) and measures memory, untimed
    sharded_model: str
    sharded_batch: tuple[int, int]
    sharded_steps: int
    devices: int
    deadline: float


def settings_for(model: str, precision: str = BF16) -> dict[str, tuple[str, ...]]:
    """``step_cost.py``'s bf16-mixed rows (in :data:`TF32`: :data:`TF32_ROWS`) for an encoder, its causal-LM rows
    for Llama: name → overrides."""
    import step_cost
    from fsdp_memory import MODELS

    if MODELS[model][0] == "llama":
        return dict(step_cost.CAUSAL_ROWS)
    if precision == TF32:
        return {name: step_cost.ROWS[name][0] for name in TF32_ROWS}
    return {name: overrides for name, (overrides, precisions) in step_cost.ROWS.items() if BF16 in precisions}


@contextmanager
def float32_matmuls(precision: str) -> Iterator[None]:
    """In :data:`TF32`, float32 matrix products in TF32 (``torch.set_float32_matmul_precision('high')``), the
    setting restored after; else as it is."""
    import torch

    if precision != TF32:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_blocks(model: Any) -> int:
    """``compile()`` each transformer block of ``model`` that holds no embedding table; how many.

    The blocks are those ``_no_split_modules`` names (:func:`lightning_smart.sharding.block_classes`), compiled one
    by one as PyTorch advises for a stack of repeated blocks; the embeddings, whose output SMART's forward hook
    perturbs while a step registers and removes it, stay eager, as does the hook counting the passes."""
    from torch import nn

    from lightning_smart.sharding import block_classes

    names = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names
              and not any(isinstance(sub, nn.Embedding) for sub in m.modules())]
    for block in blocks:
        block.compile()
    return len(blocks)


def run_group(model: str, mode: str, plan: Plan, emit: Any, precision: str = BF16) -> list[Row]:
    """Every setting of ``model`` in ``mode`` and ``precision``, taking turns as ``step_cost.py``'s rows do: a first
    round measures memory and warms up (compiles) where ``plan.warmup``, then ``plan.rounds`` timed rounds; settings
    not reached in time are left out."""
    import step_cost
    import torch
    from fsdp_memory import random_batches, random_task

    settings = settings_for(model, precision)
    rows = [Row(model, mode, name, precision) for name in settings]
    if time.monotonic() > plan.deadline:
        for row in rows:
            emit(format_row(row, None))
        return rows
    configs = {name: step_cost.preset(overrides) for name, overrides in settings.items()}
    device = torch.device("cuda") if plan.accelerator == "gpu" else None
    size, tokens = plan.models[model]
    batches = random_batches(model, max(plan.timed, step_cost.LAZY) + 1, size, tokens)
    if device is not None:
        batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    tasks = {}
    for name, (smart, _) in configs.items():
        torch.manual_seed(0)
        tasks[name] = random_task(model, smart, device)
        if mode == "compile":
            compile_blocks(tasks[name].model)
    trainer_precision = step_cost.FP32 if precision == TF32 else precision
    for round_ in range(0 if plan.warmup else 1, plan.rounds + 1):
        for row in rows:
            if time.monotonic() > plan.deadline:
                break
            smart, teacher = configs[row.setting]
            lazy = smart.every_n_steps > 1
            steps = 2 if round_ == 0 else (step_cost.LAZY if lazy else plan.timed) + 1
            before = compiled_graphs()
            with float32_matmuls(precision):
                meter = step_cost.fit_steps(tasks[row.setting], teacher, trainer_precision, batches, steps,
                                            measure_memory=round_ == 0 and not lazy, accelerator=plan.accelerator)
            row.graphs += compiled_graphs() - before
            if round_ > 0 and meter.times:
                row.times += [statistics.fmean(meter.times)] if lazy else meter.times
                row.passes += meter.passes
                row.done = True
            if meter.peak_bytes is not None:
                row.peak_bytes = meter.peak_bytes
    del tasks
    if device is not None:
        torch.cuda.empty_cache()
    plain = next((r for r in rows if r.setting in ("plain", "causal LM plain") and r.done), None)
    for row in rows:
        emit(format_row(row, plain))
    return rows


HEADER = (f"{'model':<14} {'mode':<8} {'setting':<26} {'precision':<12} {'s/step':>7} {'IQR':>13} {'× plain':>7}"
          f" {'peak MiB':>9} {'× plain':>7} {'passes':>6} {'graphs':>6}")


def format_row(row: Row, plain: Row | None) -> str:
    """A row as ``step_cost.py`` prints its own (× plain: the same model, mode and precision), or why it is absent."""
    head = f"{row.model:<14} {row.mode:<8} {row.setting:<26} {row.precision:<12}"
    if not row.done:
        return f"{head} not run: the time budget was spent"
    median = row.median()
    q1, _, q3 = statistics.quantiles(row.times, n=4, method="inclusive") if len(row.times) > 1 else (
        median, 0, median)
    versus = f"{median / plain.median():7.2f}" if plain else f"{'—':>7}"
    if row.peak_bytes is None:
        memory = f"{'—':>9} {'—':>7}"
    else:
        ratio = f"{row.peak_bytes / plain.peak_bytes:7.2f}" if plain and plain.peak_bytes else f"{'—':>7}"
        memory = f"{row.peak_bytes / 2**20:9.1f} {ratio}"
    return (f"{head} {median:7.3f} {q1:6.3f}–{q3:<6.3f} {versus} {memory} {statistics.fmean(row.passes):6.2f}"
            f" {row.graphs:6d}")


def sharded_step(plan: Plan, out: Path, emit: Any) -> bool:
    """SMART with the teacher on ``plan.sharded_model`` under FSDP2 and DDP over ``plan.devices`` devices."""
    from fsdp_memory import report, run_strategies

    if time.monotonic() > plan.deadline:
        emit(f"sharded step ({plan.sharded_model}): not run: the time budget was spent")
        return False
    size, tokens = plan.sharded_batch
    strategies = ("fsdp", "ddp")
    out.mkdir(parents=True, exist_ok=True)
    emit(f"\nsharded step: {plan.sharded_model}, SMART (λs=1, K=1) + teacher (μ=1), {BF16}, batch {size}×{tokens}"
         f" per rank, {plan.devices} {plan.accelerator} device(s), FSDP2 (ModelParallelStrategy) and DDP")
    run_strategies(out, plan.sharded_model, plan.sharded_steps, size, tokens, plan.accelerator, plan.devices, BF16,
                   strategies)
    for line in report(out, plan.devices, strategies):
        emit(line)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models, 1 round × 1 timed step, no warm-up round (no memory), no compile: a CPU run")
    parser.add_argument("--compile", action="store_true", help="with --tiny: the compiled rows too")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds after which no row or step starts (360: the last one ends within 8 minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu", help="output folder")
    parser.add_argument("--wheels", type=Path, default=WHEELS, help="the wheels' folder (benchmarks/wheels)")
    args = parser.parse_args()
    start = time.monotonic()
    installed = install_from_wheels(args.wheels)
    if installed:  # the editable install maps conf/ into the package by a finder that a new interpreter reads
        print(f"installed from {args.wheels}: {', '.join(installed)}; starting again", flush=True)
        os.execv(sys.executable, [sys.executable, *sys.argv])

    import logging
    import warnings

    import lightning.pytorch as pl
    import torch
    from transformers.utils import logging as transformers_logging

    from lightning_smart.app.schema import register_configs

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    torch._dynamo.config.recompile_limit = 64  # each setting's passes (hooks, grad modes, the teacher) are graphs
    pl.seed_everything(0, verbose=False)
    register_configs()
    gpus = torch.cuda.device_count()
    if args.tiny:
        plan = Plan({"tiny-bert": (4, 16), "tiny-roberta": (4, 16), "tiny-llama": (2, 16)}, "gpu" if gpus else "cpu",
                    1, 1, ("eager", "compile") if args.compile else ("eager",), False, "tiny-llama", (2, 16), 2,
                    max(gpus, 1), start + args.budget)
    elif gpus:
        plan = Plan({"bert-base": (32, 128), "roberta-large": (16, 128), "llama-1b": (4, 512)}, "gpu", 2, 3,
                    ("eager", "compile"), True, "llama-1b", (4, 512), 4, gpus, start + args.budget)
    else:
        raise SystemExit("no GPU: run with --tiny on a CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    device = torch.cuda.get_device_name(0) if gpus else "CPU"
    emit(f"gpu_check: {gpus} × {device}, torch {torch.__version__}, {BF16}; budget {args.budget:.0f} s")
    emit(HEADER)
    emit("-" * len(HEADER))
    rows: list[Row] = []
    for model in plan.models:
        rows += run_group(model, "eager", plan, emit)
    sharded = sharded_step(plan, args.out / "sharded", emit)
    emit(f"\n{TF32}: 32-true, float32 matrix products in TF32; SMART's passes at full precision where ε needs it")
    for model in plan.models:
        rows += run_group(model, "eager", plan, emit, TF32)
    if "compile" in plan.modes:
        emit("")
        for model in plan.models:
            rows += run_group(model, "compile", plan, emit)
    measured = sum(row.done for row in rows)
    emit(f"rows measured: {measured} of {len(rows)}; sharded step: {'measured' if sharded else 'not run'};"
         f" {time.monotonic() - start:.0f} s")
    (args.out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    (args.out / "rows.jsonl").write_text("".join(json.dumps(asdict(row)) + "\n" for row in rows))


if __name__ == "__main__":
    main()
