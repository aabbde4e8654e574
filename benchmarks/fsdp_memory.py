"""Memory per rank of SMART with its teacher, sharded (FSDP2) against replicated (DDP), at world size 2.

Model: a randomly initialised BERT-base (``BertConfig()``: 12 layers, width 768, 109.5M parameters) in a
``SequenceTask`` (2 labels), so that weights, gradients, AdamW's state and θ̃ outweigh the activations of the tiny
batch, 2 × 32 random token ids per rank. The step is full SMART (λs = 1, K = 1, the paper's ε, σ and η, no probe)
with the EMA teacher (μ = 1), for a few optimizer steps, fp32, on 2 CPU processes over gloo: once under
``strategy="ddp"`` (every rank holds the whole model, its gradients, AdamW's state and a dense θ̃), once under
``ModelParallelStrategy(2, tensor_parallel_size=1)``, where the task's ``configure_model`` shards each block and
then the root with ``fully_shard`` and the teacher keeps θ̃ as DTensor shards.

**Teacher memory** is the bytes of θ̃ a rank holds at the end of the fit: the local shards
(``e.to_local().numel() * e.element_size()``) when sharded, the whole tensors under DDP, which are the dense
teacher a single process holds (the report checks they are 4 bytes per trainable parameter).

**Peak memory** is the bytes of PyTorch tensors at the run's highest point on a rank, over the whole run: from
before the model is built to the end of the fit (the model built whole, sharded, the optimizer's state, every step
and the teacher's forwards). On the CPU it is counted from ``torch.profiler``'s memory events
(:func:`step_cost.peak_in_window`); on a GPU it is CUDA's peak allocated bytes. Beside it, the growth of the
process's peak resident memory over the same span (the profiler's own records and the allocator's caching
included), for reference.

Run::

    python benchmarks/fsdp_memory.py            # BERT-base, 3 optimizer steps
    python benchmarks/fsdp_memory.py --quick    # a tiny BERT, 2 steps: a smoke run

Each strategy runs in a subprocess (both re-launch their script once per rank); each rank writes what it measured
to ``--out`` (a temporary folder by default). The last two lines: ``teacher_per_rank_vs_single=`` (the larger
rank's θ̃ bytes under FSDP2 over the dense teacher's) and ``peak_fsdp_vs_ddp=`` (the larger rank's peak under FSDP2
over the larger under DDP).

:data:`MODELS` and :func:`random_task` also build the randomly initialised models of ``gpu_check.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from step_cost import MEASURED, StepMeter, causal_batches, peak_in_window
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from lightning_smart import EMATeacherCallback, SmartConfig
from lightning_smart.sharding import EndProcessGroupAtExit
from lightning_smart.tasks import CausalLMTask, FineTuneTask, SequenceTask

STRATEGIES = ("ddp", "fsdp")
ROBERTA_LARGE = {"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "intermediate_size": 4096, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1,
                 "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5}
LLAMA_1B = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
            "tie_word_embeddings": False}
"""TinyLlama-1.1B's shape: 1.1B parameters."""
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (model_type, config overrides); the encoders are sequence classifiers (2 labels), Llama a causal LM
    "bert-base": ("bert", {}),
    "roberta-large": ("roberta", ROBERTA_LARGE),
    "llama-1b": ("llama", LLAMA_1B),
    "tiny-bert": ("bert", {**TINY, "vocab_size": 1000, "max_position_embeddings": 64}),
    "tiny-roberta": ("roberta", {**TINY, "vocab_size": 1000, "max_position_embeddings": 66, "pad_token_id": 1}),
    "tiny-llama": ("llama", {**TINY, "vocab_size": 2000, "num_key_value_heads": 2, "max_position_embeddings": 64}),
}
"""Randomly initialised models, built from their configs: no weights, no tokenizer."""
SMART = SmartConfig(lambda_s=1.0, ascent_steps=1, probe=False)


def random_task(name: str, smart: SmartConfig, device: torch.device | None = None) -> FineTuneTask:
    """The task on a randomly initialised :data:`MODELS` model (built on ``device``, the CPU by default)."""
    kind, overrides = MODELS[name]
    with torch.device(device or "cpu"):
        if kind == "llama":
            return CausalLMTask(LlamaForCausalLM(LlamaConfig(**overrides)), smart=smart, warmup_ratio=0.0)
        config = AutoConfig.for_model(kind, num_labels=2, **overrides)
        model = AutoModelForSequenceClassification.from_config(config)
        return SequenceTask(model, num_labels=2, smart=smart, warmup_ratio=0.0)


def random_batches(name: str, count: int, size: int, tokens: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of ``size`` × ``tokens`` random token ids for a :data:`MODELS` model; a causal LM's labels
    are its ids, an encoder's a class from the first id."""
    kind, overrides = MODELS[name]
    vocab = overrides.get("vocab_size", AutoConfig.for_model(kind).vocab_size)
    batches = causal_batches(vocab, count, size, tokens)
    if kind != "llama":
        for batch in batches:
            batch["labels"] = batch["input_ids"][:, 0] % 2
    return batches


def teacher_bytes(ema: dict[str, torch.Tensor]) -> int:
    """Bytes of θ̃ held by this rank: the local shards of a sharded θ̃, the whole tensors of a dense one."""
    local = [e.to_local() if isinstance(e, DTensor) else e for e in ema.values()]
    return sum(t.numel() * t.element_size() for t in local)


def rss_bytes() -> int:
    """The process's resident memory now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace) -> None:
    """One rank's fit under ``args.strategy``; writes ``<out>/<strategy>_rank<r>.json`` with what it measured."""
    cuda = args.accelerator == "gpu"
    devices = args.devices
    strategy: Any = ModelParallelStrategy(devices, tensor_parallel_size=1) if args.strategy == "fsdp" else "ddp"
    teacher, meter = EMATeacherCallback(mu=1.0), StepMeter()
    callbacks = [teacher, meter, EndProcessGroupAtExit()]
    trainer = pl.Trainer(accelerator=args.accelerator, devices=devices, strategy=strategy, precision=args.precision,
                         max_steps=args.steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    batches: Any = random_batches(args.model, args.steps, args.batch, args.tokens)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    rss_before = rss_bytes()
    prof: profile | None = None
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats()
    else:
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.start()
    with record_function(MEASURED):
        torch.manual_seed(0)
        task = random_task(args.model, SMART, device)
        trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
        trainer.fit(task, train_dataloaders=loader)
    if prof is not None:
        prof.stop()
    peak = peak_in_window(prof) if prof is not None else torch.cuda.max_memory_allocated()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {"strategy": args.strategy, "rank": trainer.global_rank, "params": trainable, "steps": trainer.global_step,
              "sharded": teacher.sharded, "teacher_bytes": teacher_bytes(teacher.ema), "peak_bytes": peak,
              "rss_growth_bytes": peak_rss - rss_before, "step_s": meter.times}
    (args.out / f"{args.strategy}_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def run_strategies(out: Path, model: str, steps: int, batch: int, tokens: int, accelerator: str = "cpu",
                   devices: int = 2, precision: str = "32-true", strategies: Sequence[str] = STRATEGIES) -> None:
    """Each strategy's fit in a subprocess of this script (it re-launches itself once per rank), into ``out``."""
    for strategy in strategies:
        command = [sys.executable, __file__, "--strategy", strategy, "--model", model, "--steps", str(steps),
                   "--batch", str(batch), "--tokens", str(tokens), "--accelerator", accelerator,
                   "--devices", str(devices), "--precision", precision, "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {strategy} fit failed:\n{done.stderr[-3000:]}")


def report(out: Path, devices: int = 2, strategies: Sequence[str] = STRATEGIES) -> list[str]:
    """The table of every rank's figures, then the two ratio lines (FSDP2 against DDP, when both ran)."""
    runs = {(s, r): json.loads((out / f"{s}_rank{r}.json").read_text()) for s in strategies for r in range(devices)}
    params = next(iter(runs.values()))["params"]
    single = 4 * params  # the dense teacher: one float32 copy of each trainable parameter
    if any(not run["sharded"] and run["teacher_bytes"] != single for run in runs.values()):
        raise SystemExit(f"DDP's teacher is not one float32 copy of the {params} trainable parameters: {runs}")
    ddp = max((run["peak_bytes"] for (s, _), run in runs.items() if s == "ddp"), default=None)
    header = (f"{'strategy':<8} {'rank':>4} {'θ̃ MiB':>9} {'× single':>8} {'peak MiB':>9} {'× DDP':>6}"
              f" {'RSS growth MiB':>14} {'s/step':>7}")
    lines = [header, "-" * len(header)]
    for (strategy, rank), run in runs.items():
        versus = f"{run['peak_bytes'] / ddp:6.3f}" if ddp else f"{'—':>6}"
        step = f"{statistics.median(run['step_s']):7.3f}" if run["step_s"] else f"{'—':>7}"
        lines.append(f"{strategy:<8} {rank:>4} {run['teacher_bytes'] / 2**20:9.1f} {run['teacher_bytes'] / single:8.3f}"
                     f" {run['peak_bytes'] / 2**20:9.1f} {versus} {run['rss_growth_bytes'] / 2**20:14.1f} {step}")
    if "fsdp" in strategies:
        sharded = [runs["fsdp", r] for r in range(devices)]
        lines.append(f"teacher_per_rank_vs_single={max(run['teacher_bytes'] for run in sharded) / single:.3f}")
        peak = f"{max(run['peak_bytes'] for run in sharded) / ddp:.3f}" if ddp else "n/a"
        lines.append(f"peak_fsdp_vs_ddp={peak}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny BERT and 2 steps: a smoke run")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per fit (default 3; 2 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="folder for each rank's figures (default: temporary)")
    # One rank's fit, as run_strategies launches it (gpu_check.py's sharded step too).
    parser.add_argument("--strategy", choices=STRATEGIES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--accelerator", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 3)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    if args.strategy is not None:
        if args.accelerator == "cpu":
            torch.set_num_threads(1)
        measure(args)
        return

    model = "tiny-bert" if args.quick else "bert-base"
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        shape = "a tiny BERT" if args.quick else "BERT-base (random init)"
        print(f"{shape}, SMART (λs=1, K=1) + teacher (μ=1), {args.steps} steps, batch 2×32 per rank, fp32,"
              f" 2 CPU processes over gloo, torch {torch.__version__}", flush=True)
        run_strategies(out, model, args.steps, 2, 32)
        print("\n".join(report(out)))


if __name__ == "__main__":
    main()
