"""A SMART + teacher fit of a tiny BERT or Llama, in one process or under FSDP2 on N CPU processes (gloo).

``ModelParallelStrategy`` re-launches this script once per rank, so :mod:`test_fsdp` runs it in a subprocess:

    python tests/helpers/fsdp_fit.py OUT --kind bert --devices 2 --steps 3 [--resume CKPT] [--functional-call]
        [--checkpointing reentrant|non-reentrant] [--mp-policy] [--perturbed-precision auto|fp32|autocast] [--lora]
        [--kill-at STEP --kill-when writing|step]

Each rank writes to ``OUT``: its per-step losses, and at the last step (after the step's forwards, where FSDP2's
root unit is still gathered) the teacher's outputs on its batch, with the batch. Rank 0 also writes θ̃ and the
student gathered whole (θ̃ alone at that moment, both at the end), and the exported folders. Checkpoints, after
every step: ``checkpoints/step<N>.ckpt`` (every one kept) and ``checkpoints/last.ckpt`` (the app's callbacks).
``--kill-at STEP`` SIGKILLs every rank as a preemption would: with ``--kill-when writing``, in the save of
``last.ckpt`` after optimizer step ``STEP``, once the rank has written its shards and before the save completes; with
``step``, at the start of the training step after ``STEP`` optimizer steps.
``--functional-call`` replaces the sharded teacher's forward by a ``torch.func.functional_call`` swap of whole
tensors, to show that the checks of :mod:`test_fsdp` catch the silent student/teacher mix it gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.func import functional_call
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parents[2]))  # the checkout, for tests.helpers
from lightning_smart import EMATeacherCallback, SmartConfig
from lightning_smart.app.checkpoints import AtomicModelCheckpoint, LastCheckpoint
from lightning_smart.app.export import export_pretrained
from lightning_smart.ema import ShardedEMA, eval_mode
from lightning_smart.sharding import EndProcessGroupAtExit, shard_transformer
from lightning_smart.tasks import CausalLMTask, SequenceTask
from tests.helpers.models import VOCAB, tiny_bert, token_examples

GLOBAL_BATCH = 8
SMART = SmartConfig(sigma=0.0, lambda_s=1.0, epsilon=1e-3, eta=1e-2, probe=False)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=None, eos_token_id=1,
    )).train()


def examples(kind: str, n: int) -> list[dict[str, torch.Tensor]]:
    rows = token_examples(n)
    if kind == "llama":  # no padding: each rank's mean over its tokens is then the global batch's mean
        for row in rows:
            row["attention_mask"] = torch.ones_like(row["attention_mask"])
            row["labels"] = row["input_ids"].clone()
    return rows


class Recorded:
    """What the last step saw, for the test to check against unsharded references; when to die."""

    def __init__(self, out: Path, steps: int, kill_at_step: int | None = None) -> None:
        self.out, self.steps, self.kill_at_step = out, steps, kill_at_step


def kill_while_writing(step: int) -> None:
    """SIGKILL each rank as soon as it has written its shards of ``last.ckpt`` after optimizer step ``step``: before
    DCP's ``.metadata``, Lightning's ``meta.pt`` and the publication of the folder."""
    from torch.distributed.checkpoint.filesystem import _FileSystemWriter

    write = _FileSystemWriter.write_data

    def write_then_die(self: Any, plan: Any, planner: Any) -> Any:
        written = write(self, plan, planner)
        if Path(self.path).name.startswith(f".last.step{step}."):
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    _FileSystemWriter.write_data = write_then_die  # type: ignore[method-assign]


def task_class(kind: str, mp_policy: bool) -> type:
    base = CausalLMTask if kind == "llama" else SequenceTask

    class Task(base):  # type: ignore[misc,valid-type]
        recorded: Recorded

        def configure_model(self) -> None:
            if not mp_policy:
                return super().configure_model()
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            shard_transformer(self.model, self.device_mesh["data_parallel"], mp_policy=policy)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            rec, rank = self.recorded, self.global_rank
            if rec.kill_at_step == self.global_step:
                os.kill(os.getpid(), signal.SIGKILL)
            loss = self.smart_loss(batch, batch_idx)
            losses = rec.out / f"losses{rank}.json"
            done = json.loads(losses.read_text()) if losses.exists() else []
            losses.write_text(json.dumps([*done, loss.item()]))
            if self.global_step == rec.steps - 1:  # the forwards of this step ran: the root unit is gathered
                teacher = self.smart_teacher
                outputs = teacher.teacher_outputs(self, batch)  # type: ignore[union-attr]
                torch.save({"outputs": outputs.detach(), "batch": batch}, rec.out / f"teacher_outputs{rank}.pt")
                save_whole(self, teacher, rec.out / "mid_step.pt", student=False)
            return loss

    return Task


def save_whole(module: pl.LightningModule, teacher: Any, path: Path, student: bool = True) -> None:
    """θ̃ and the student's weights, whole, written by rank 0 (every rank takes part in the gathers)."""
    ema = teacher.full_ema()
    weights: dict[str, torch.Tensor] = {}
    if student and teacher.sharded:
        weights = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif student:
        weights = {n: p.detach().clone() for n, p in module.state_dict().items()}
    if module.global_rank == 0:
        torch.save({"ema": {n: e.detach().cpu() for n, e in ema.items()}, "student": weights}, path)


def functional_call_run(self: ShardedEMA, module: torch.nn.Module, fn: Any, *args: Any, dropout: bool = False) -> Any:
    """The dense teacher's swap, by ``functional_call`` with θ̃ whole: what FSDP2 silently ignores or mixes."""
    whole = {name: e.full_tensor() for name, e in self.tensors.items()}  # type: ignore[attr-defined]

    class Call(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *inner: Any) -> Any:
            return fn(*inner)

    with torch.no_grad(), eval_mode(module):
        return functional_call(Call(), {f"module.{n}": t for n, t in whole.items()}, args, strict=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kind", choices=["bert", "llama"], default="bert")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resume", type=Path, default=None)
    parser.add_argument("--functional-call", action="store_true")
    parser.add_argument("--checkpointing", choices=["reentrant", "non-reentrant"], default=None)
    parser.add_argument("--mp-policy", action="store_true", help="FSDP2's MixedPrecisionPolicy(param_dtype=bf16)")
    parser.add_argument("--perturbed-precision", default="auto")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (peft) and the head only")
    parser.add_argument("--kill-at", type=int, default=None, help="SIGKILL every rank at this optimizer step")
    parser.add_argument("--kill-when", choices=["writing", "step"], default="writing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.functional_call:
        ShardedEMA.run = functional_call_run  # type: ignore[method-assign]
    if args.kill_at is not None and args.kill_when == "writing":
        kill_while_writing(args.kill_at)

    pl.seed_everything(3)
    kind = args.kind
    model = tiny_llama() if kind == "llama" else tiny_bert(dropout=0.0)
    if args.checkpointing:  # before sharding, as a user enables it on the model they load
        reentrant = args.checkpointing == "reentrant"
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    Task = task_class(kind, args.mp_policy)
    smart = dataclasses.replace(SMART, perturbed_precision=args.perturbed_precision)
    targets = ["query", "value"] if kind == "bert" else ["q_proj", "v_proj"]
    lora = {"r": 4, "target_modules": targets} if args.lora else None
    task = Task(model, smart=smart, lr=1e-2, warmup_ratio=0.0, lora=lora) if kind == "llama" else Task(
        model, num_labels=3, smart=smart, lr=1e-2, warmup_ratio=0.0, lora=lora)
    task.recorded = Recorded(args.out, args.steps, args.kill_at if args.kill_when == "step" else None)
    teacher = EMATeacherCallback(mu=1.0, beta=0.5, beta_final=0.9, validate=False)
    sharded = args.devices > 1
    strategy: Any = ModelParallelStrategy(args.devices, tensor_parallel_size=1) if sharded else "auto"
    checkpoint = AtomicModelCheckpoint(dirpath=args.out / "checkpoints", save_top_k=-1, every_n_train_steps=1,
                                       filename="step{step}", auto_insert_metric_name=False)
    last = LastCheckpoint(None, args.out / "checkpoints", every_n_train_steps=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=args.steps,
        logger=False, enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[teacher, checkpoint, last, EndProcessGroupAtExit()], num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    rows = examples(kind, args.steps * GLOBAL_BATCH)
    rank, world = (trainer.global_rank, trainer.world_size)
    loader = StatefulDataLoader(rows[rank::world], batch_size=GLOBAL_BATCH // world)  # the global batches; resumable
    trainer.fit(task, train_dataloaders=loader, ckpt_path=args.resume)
    if trainer.global_step < args.steps:
        return
    save_whole(task, teacher, args.out / "end.pt")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_level(), pad_token="<pad>", unk_token="<unk>")
    exported = export_pretrained(task, tokenizer, args.out / "export", teacher.full_ema())
    batch = next(iter(torch.utils.data.DataLoader(rows[:4], batch_size=4)))
    with torch.no_grad(), eval_mode(task):
        logits = task.smart_forward(batch)
    if rank == 0:
        torch.save({"logits": logits, "batch": batch, "exported": exported}, args.out / "export_logits.pt")


def _word_level() -> Any:
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    return Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))


if __name__ == "__main__":
    main()
