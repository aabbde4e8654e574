"""Two processes on CPU (gloo): identical teachers, and the single-process loss trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_smart import EMATeacherCallback, SmartConfig, sample_noise
from lightning_smart.sharding import EndProcessGroupAtExit
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import tiny_bert, token_examples

STEPS, GLOBAL_BATCH = 4, 8


class Record(pl.Callback):
    """Each rank writes its per-step losses and its teacher to ``folder``."""

    def __init__(self, folder: Path, teacher: EMATeacherCallback) -> None:
        self.folder, self.teacher, self.losses, self.seeds = folder, teacher, [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seeds.append(module.smart_noise_seed(batch_idx))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())

    def on_train_end(self, trainer, module):
        rank = trainer.global_rank
        (self.folder / f"losses{rank}.json").write_text(json.dumps(self.losses))
        (self.folder / f"seeds{rank}.json").write_text(json.dumps(self.seeds))
        torch.save({n: e.clone() for n, e in self.teacher.ema.items()}, self.folder / f"teacher{rank}.pt")


class Halves(pl.LightningDataModule):
    """Rank r of w takes examples r, r + w, …: the same global batches as one process, unshuffled."""

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        examples = token_examples(STEPS * GLOBAL_BATCH)[rank::world]
        return torch.utils.data.DataLoader(examples, batch_size=GLOBAL_BATCH // world)


def _run(folder: Path, devices: int) -> None:
    pl.seed_everything(3)
    task = SequenceTask(tiny_bert(dropout=0.0), num_labels=3, lr=1e-2,
                        smart=SmartConfig(sigma=0.0, lambda_s=1.0, probe=False))
    teacher = EMATeacherCallback(mu=1.0, beta=0.5, beta_final=0.9)
    run = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=STEPS,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[teacher, Record(folder, teacher), EndProcessGroupAtExit()], use_distributed_sampler=False,
    )
    run.fit(task, datamodule=Halves())


def test_ddp_teachers_agree_and_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    (tmp_path / "single").mkdir()
    (tmp_path / "ddp").mkdir()
    _run(tmp_path / "single", 1)
    _run(tmp_path / "ddp", 2)
    t0, t1 = (torch.load(tmp_path / "ddp" / f"teacher{r}.pt") for r in (0, 1))
    assert t0.keys() == t1.keys() and all(torch.equal(t0[n], t1[n]) for n in t0)
    single = json.loads((tmp_path / "single" / "losses0.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / f"losses{r}.json").read_text()) for r in (0, 1)]
    ddp = [(a + b) / 2 for a, b in zip(*ranks, strict=True)]
    assert len(single) == len(ddp) == STEPS and single[0] != single[-1]
    assert max(abs(a - b) for a, b in zip(single, ddp, strict=True)) <= 1e-5
    alone = torch.load(tmp_path / "single" / "teacher0.pt")
    assert all(torch.allclose(alone[n], t0[n], atol=1e-5) for n in alone)
    # Each rank draws its own σ-noise: smart_noise_seed holds the rank a factor P = 1_000_003 above the step, so the
    # ranks' seeds differ by exactly P² at every step, and a resume replays them.
    seeds = [json.loads((tmp_path / "ddp" / f"seeds{r}.json").read_text()) for r in (0, 1)]
    assert len(set(seeds[0])) == STEPS and len(seeds[1]) == STEPS
    assert all((b - a) % (2**63 - 1) == 1_000_003**2 for a, b in zip(*seeds, strict=True))
    noise = [sample_noise(torch.zeros(2, 3, 4), None, 1.0, seed[0]) for seed in seeds]
    assert not torch.equal(*noise)
