"""SMART and its teacher under FSDP2 (``ModelParallelStrategy``, 2 CPU processes over gloo) against one process.

Each fit runs ``fsdp_fit.py`` in a subprocess (the strategy re-launches its script per rank): 3 optimizer steps of
SMART (λs = 1, K = 1) with the EMA teacher (μ = 1), the same global batches in one process and split over 2 ranks,
a distributed checkpoint after every step; a fit killed (SIGKILL, every rank) in the middle of a save or of a step,
and resumed from its ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lightning_smart.app.checks import check, check_checkpoint, data_module
from lightning_smart.attack import robust_accuracy_by_radius
from lightning_smart.config import ConfigError
from lightning_smart.tasks import SequenceTask
from tests.helpers.app import TINY, app_config, smart_train
from tests.helpers.fsdp_fit import tiny_llama
from tests.helpers.models import tiny_bert

SCRIPT = Path(__file__).parent / "helpers" / "fsdp_fit.py"
GLOO_EXIT = Path(__file__).parent / "helpers" / "gloo_exit.py"


def fit(out: Path, *args: str, fails: bool = False, killed: bool = False) -> str:
    """Run ``fsdp_fit.py`` into ``out``; its combined output (checked to end as ``fails`` says, or by SIGKILL)."""
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    output = done.stdout + done.stderr
    if killed:
        assert done.returncode == -signal.SIGKILL, output[-3000:]
    else:
        assert (done.returncode != 0) == fails, output[-3000:]
    return output


def losses(out: Path, ranks: int) -> list[float]:
    """The global batch's loss per step: the mean of the ranks' (each the mean over an equal share of the batch)."""
    per_rank = [json.loads((out / f"losses{r}.json").read_text()) for r in range(ranks)]
    return [sum(step) / ranks for step in zip(*per_rank, strict=True)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    folders = {
        "bert_single": ["--kind", "bert", "--devices", "1"],
        "bert_fsdp": ["--kind", "bert", "--devices", "2"],
        "llama_single": ["--kind", "llama", "--devices", "1"],
        "llama_fsdp": ["--kind", "llama", "--devices", "2", "--checkpointing", "non-reentrant"],
        "lora_single": ["--kind", "bert", "--devices", "1", "--lora"],
        "lora_fsdp": ["--kind", "bert", "--devices", "2", "--lora"],
    }
    for name, args in folders.items():
        fit(root / name, *args)
    return {name: root / name for name in folders}


def _reference(kind: str, ema: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An unsharded copy of the model holding θ̃ (the LightningModule's names are ``model.`` + the model's)."""
    model = tiny_llama() if kind == "llama" else tiny_bert(dropout=0.0)
    model.load_state_dict({n.removeprefix("model."): t for n, t in ema.items()})
    return model.eval()


def _teacher_errors(out: Path, kind: str) -> list[float]:
    """Per rank: the largest difference between the teacher's outputs inside the last step (after its forwards) and
    the unsharded reference holding the θ̃ of that moment."""
    reference = _reference(kind, torch.load(out / "mid_step.pt")["ema"])
    errors = []
    for rank in (0, 1):
        saved = torch.load(out / f"teacher_outputs{rank}.pt")
        batch = saved["batch"]
        with torch.no_grad():
            expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        errors.append((saved["outputs"] - expected).abs().max().item())
    return errors


@pytest.mark.slow  # 16 processes
def test_gloo_ranks_that_end_their_group_at_exit_destroy_it_and_exit_cleanly() -> None:
    # Left to the interpreter's exit (gloo_exit.py's "left"), the group aborted 3 of 12 such pairs here (SIGABRT,
    # torch 2.13), and a finished multi-process run failed in CI. At that rate, 8 pairs exit cleanly without
    # end_process_group_at_exit about 10% of the time; its exit handler's effect is checked on every rank.
    for _ in range(8):
        port = find_free_network_port()  # Lightning's: where the pair of ranks meets
        pairs = [subprocess.Popen([sys.executable, str(GLOO_EXIT), str(rank), str(port), "ended"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
        outputs = [p.communicate(timeout=120)[0] for p in pairs]
        assert [p.returncode for p in pairs] == [0, 0], outputs
        assert all(out.endswith("group at exit: False\n") for out in outputs), outputs


@pytest.mark.parametrize("kind", ["bert", "llama", "lora"])
@pytest.mark.slow
def test_sharded_fit_gives_the_single_process_losses_and_teacher(runs: dict[str, Path], kind: str) -> None:
    single, sharded = runs[f"{kind}_single"], runs[f"{kind}_fsdp"]
    alone, split = losses(single, 1), losses(sharded, 2)
    assert len(alone) == 3 and alone[0] != alone[-1]
    assert max(abs(a - b) for a, b in zip(alone, split, strict=True)) <= 1e-6
    one, two = torch.load(single / "end.pt"), torch.load(sharded / "end.pt")
    assert one["ema"].keys() == two["ema"].keys() and len(one["ema"]) >= 10
    for name, ema in one["ema"].items():
        assert ema.dtype == two["ema"][name].dtype == torch.float32
        torch.testing.assert_close(two["ema"][name], ema, rtol=0, atol=1e-6, msg=name)
        assert not torch.equal(ema, one["student"][name])  # θ̃ lags the student: the check compares teachers
    for name, weight in one["student"].items():
        torch.testing.assert_close(two["student"][name], weight, rtol=0, atol=1e-6, msg=name)
    if kind == "lora":  # θ̃ of the adapter and the new head only, sharded like them
        assert all("lora_" in name or "classifier" in name for name in two["ema"])


@pytest.mark.slow
def test_a_sharded_lora_run_exports_its_adapter_and_the_merged_model(runs: dict[str, Path]) -> None:
    out = runs["lora_fsdp"]
    saved = torch.load(out / "export_logits.pt")
    assert saved["exported"] == {"adapter": "adapter", "model": "model", "teacher": "teacher"}
    merged = AutoModelForSequenceClassification.from_pretrained(out / "export" / "model").eval()
    batch = saved["batch"]
    with torch.no_grad():
        logits = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-6)  # merging rounds W + BA once
    assert (out / "export" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.slow
def test_sharded_teacher_outputs_equal_an_unsharded_copy_holding_theta_tilde(runs: dict[str, Path], kind: str) -> None:
    assert _teacher_errors(runs[f"{kind}_fsdp"], kind) == [0.0, 0.0]


@pytest.mark.slow
def test_a_functional_call_teacher_is_caught_mixing_student_and_teacher(tmp_path: Path) -> None:
    # functional_call with θ̃ whole, after the step's forwards: FSDP2's root unit is still gathered with the student's
    # weights, the other units gather theirs at their forward: the "teacher" silently mixes the two.
    fit(tmp_path, "--kind", "bert", "--devices", "2", "--functional-call")
    assert min(_teacher_errors(tmp_path, "bert")) > 1e-3


SHARDS = [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]


@pytest.mark.slow
def test_a_sharded_run_publishes_each_checkpoint_whole(runs: dict[str, Path]) -> None:
    # Each save went to a folder beside its name; a new name is that folder renamed, last.ckpt a link to the newest.
    checkpoints = runs["bert_fsdp"] / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        ".last.step3.ckpt", "last.ckpt", "step1.ckpt", "step2.ckpt", "step3.ckpt"]
    assert os.readlink(checkpoints / "last.ckpt") == ".last.step3.ckpt"  # relative: the folder can be moved
    for name in ("step1.ckpt", "step2.ckpt", "step3.ckpt", "last.ckpt"):
        assert sorted(p.name for p in (checkpoints / name).iterdir()) == SHARDS, name
    assert torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=True)["global_step"] == 3


@pytest.mark.slow  # two fits
@pytest.mark.parametrize("moment", ["writing", "step"])
def test_a_sharded_run_killed_mid_save_or_mid_step_resumes_as_one_never_stopped(
    runs: dict[str, Path], tmp_path: Path, moment: str
) -> None:
    # SIGKILL on every rank, as a preemption: in the save of last.ckpt after step 2, each rank's shards written but
    # not the save's end (its metadata, the publication); or at the start of step 3, between two saves.
    killed = tmp_path / "killed"
    fit(killed, "--kind", "bert", "--devices", "2", "--kill-at", "2", "--kill-when", moment, killed=True)
    checkpoints, saved = killed / "checkpoints", 1 if moment == "writing" else 2
    last = checkpoints / "last.ckpt"
    assert os.readlink(last) == f".last.step{saved}.ckpt"
    assert sorted(p.name for p in last.iterdir()) == SHARDS
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == saved
    if moment == "writing":  # the save cut short, out of last.ckpt's way: both shards, no metadata
        assert sorted(p.name for p in (checkpoints / ".last.step2.ckpt").iterdir()) == ["__0_0.distcp", "__1_0.distcp"]
    check_checkpoint(str(last), SequenceTask(tiny_bert(dropout=0.0), num_labels=3))
    fit(tmp_path / "resumed", "--kind", "bert", "--devices", "2", "--resume", str(last))
    straight, resumed = torch.load(runs["bert_fsdp"] / "end.pt"), torch.load(tmp_path / "resumed" / "end.pt")
    for part in ("ema", "student"):
        assert straight[part].keys() == resumed[part].keys()
        assert all(torch.equal(straight[part][n], resumed[part][n]) for n in straight[part]), part
    assert losses(killed, 2) == losses(runs["bert_fsdp"], 2)[:2]
    assert losses(tmp_path / "resumed", 2) == losses(runs["bert_fsdp"], 2)[saved:]


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.slow
def test_sharded_export_loads_with_the_auto_classes_and_gives_the_module_logits(runs: dict[str, Path],
                                                                                kind: str) -> None:
    out = runs[f"{kind}_fsdp"]
    saved = torch.load(out / "export_logits.pt")
    assert saved["exported"] == {"model": "model", "teacher": "teacher"}
    auto = AutoModelForCausalLM if kind == "llama" else AutoModelForSequenceClassification
    batch = saved["batch"]
    student = auto.from_pretrained(out / "export" / "model").eval()
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(logits, saved["logits"])
    teacher = auto.from_pretrained(out / "export" / "teacher")
    ema = torch.load(out / "end.pt")["ema"]
    assert all(torch.equal(teacher.state_dict()[n.removeprefix("model.")], t) for n, t in ema.items())


@pytest.mark.slow
def test_reentrant_activation_checkpointing_is_refused_at_the_first_step(tmp_path: Path) -> None:
    output = fit(tmp_path, "--kind", "llama", "--devices", "2", "--checkpointing", "reentrant", fails=True)
    assert (
        "lightning_smart.config.ConfigError: LlamaModel runs activation checkpointing with use_reentrant=True, which"
        " the SMART ascent (torch.autograd.grad on δ) cannot run through: enable it as"
        " gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False}) (transformers'"
        " default), or set smart.lambda_s=0"
    ) in output
    assert not (tmp_path / "losses0.json").exists()  # before the first step's loss


@pytest.mark.slow
def test_fp32_passes_are_refused_under_fsdp_mixed_precision_which_casts_every_pass(tmp_path: Path) -> None:
    output = fit(tmp_path, "--devices", "2", "--mp-policy", "--perturbed-precision", "fp32", fails=True)
    assert (
        "lightning_smart.config.ConfigError: smart.perturbed_precision=fp32 cannot act: the model computes in"
        " torch.bfloat16 without autocast (its weights are torch.bfloat16, or FSDP2's MixedPrecisionPolicy casts"
        " them), so the perturbed passes cannot run in fp32."
    ) in output
    assert not (tmp_path / "losses0.json").exists()


# -- the app: smart-train trainer=fsdp --------------------------------------------------------------------------

APP = [*TINY, "trainer.accelerator=cpu", "trainer.precision=32-true", "checkpoint.save_top_k=1",
       "checkpoint.save_last=true"]


def _outputs(out: Path) -> set[str]:
    """What a run wrote, by relative path (a distributed checkpoint, a folder, counts as one entry)."""
    found = set()
    for path in out.rglob("*"):
        parents = {p.suffix for p in path.relative_to(out).parents}
        if (".ckpt" not in parents and path.is_file()) or path.suffix == ".ckpt":
            found.add(str(path.relative_to(out)))
    return found


# Robust accuracy where the attack flips predictions of the 4-step model, on 3 of the 8 evaluation batches of each
# split: rank 0 attacks two of them, rank 1 the third and one more that it does not count.
RADII = [0.3, 1.0]
ROBUST = ["data.eval_batch_size=8", "eval.robust_radii=[1.0,0.3]", "eval.robust_steps=3", "eval.robust_batches=3"]


def _attacked_in_one_process(folder: Path, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Clean accuracy and robust accuracy at each of :data:`RADII` of the exported model in ``folder``, loaded by its
    Auto class and attacked here, in one process (:func:`robust_accuracy_by_radius`)."""
    model = AutoModelForSequenceClassification.from_pretrained(folder)

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    return robust_accuracy_by_radius(model, model.base_model.embeddings, forward, batches, RADII, steps=3,
                                     relative=True)


@pytest.mark.slow  # two app runs, each attacking
def test_smart_train_with_trainer_fsdp_writes_what_a_single_process_run_writes_and_attacks_sharded(
    tmp_path: Path,
) -> None:
    single = smart_train([*APP, *ROBUST, f"hydra.run.dir={tmp_path / 'single'}"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = smart_train(["trainer=fsdp", "trainer.devices=2", *APP, *ROBUST, f"hydra.run.dir={tmp_path / 'fsdp'}"],
                          cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = _outputs(tmp_path / "single"), _outputs(tmp_path / "fsdp")
    # Beside what one process writes: Hydra's log of the re-launched rank 1, and the folder last.ckpt links to.
    assert one <= two and two - one == {"train_ddp_process_1.log", "checkpoints/.last.step4.ckpt"}
    checkpoints = tmp_path / "fsdp" / "checkpoints"
    assert os.readlink(checkpoints / "last.ckpt") == ".last.step4.ckpt"
    for name in ("last.ckpt", "best-step4.ckpt"):  # distributed checkpoints: one shard per rank
        assert sorted(p.name for p in (checkpoints / name).iterdir()) == SHARDS
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("single", "fsdp")]
    assert summaries[0].keys() == summaries[1].keys() and summaries[1]["steps"] == 4
    assert summaries[0]["val"].keys() == summaries[1]["val"].keys()
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fsdp" / "teacher")
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fsdp" / "model")
    assert any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))

    # The sharded attack's figures are those of one process attacking the same weights on the same examples: the
    # exported folders (the final weights; the test split's are the best checkpoint's, here the final step).
    found = summaries[1]
    assert found["best"]["checkpoint"] == "checkpoints/best-step4.ckpt"
    assert found["robust"]["examples"] == {"val": 24, "test/movies": 24}
    with app_config([*APP, *ROBUST]) as cfg:
        data = data_module(cfg.data)
    data.setup("fit")
    batches = {"val": list(data.val_dataloader())[::2][:3], "movies": list(data.test_dataloader()[0])[::2][:3]}
    figures = {("model", "val"): found["val"], ("model", "movies"): found["test"]["movies"],
               ("teacher", "val"): found["val_teacher"], ("teacher", "movies"): found["test_teacher"]["movies"]}
    for (folder, split), metrics in figures.items():
        expected = _attacked_in_one_process(tmp_path / "fsdp" / folder, batches[split])
        assert [metrics[f"robust_acc@{r:g}"] for r in RADII] == expected["robust_acc"], (folder, split)
        if (folder, split) == ("model", "val"):  # radii at which the attack bites
            assert 0 == expected["robust_acc"][1] < expected["robust_acc"][0] < expected["clean_acc"]


REFUSED = {
    "devices": (["trainer=fsdp", "trainer.devices=auto"], "trainer.devices='auto' is not allowed: with trainer=fsdp,"
                " the number of processes to shard over, an integer ≥ 1 (the data-parallel mesh has that size)"),
    "tensor parallel": (["trainer=fsdp", "trainer.strategy.tensor_parallel_size=2"],
                        "trainer.strategy.tensor_parallel_size=2 is not allowed: 1: tensor parallelism needs a plan"
                        " for the model's layers"),
    "uneven shards": (["trainer=fsdp", "trainer.devices=2", "data.train_size=63"],
                      "data.train_size=63 is not allowed: a multiple of the 2 processes (trainer.devices ×"
                      " trainer.num_nodes): each takes every 2-th training example, and the sampler would repeat 1"
                      " to even them out"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_fsdp_settings_that_would_fail_mid_run_are_refused_before_training(case: str, tmp_path: Path) -> None:
    overrides, message = REFUSED[case]
    with app_config([*APP, *overrides]) as cfg, pytest.raises(ConfigError) as refused:
        check(cfg)
    assert str(refused.value).startswith(message)


def test_fsdp_is_refused_under_multirun_before_training(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=1,2", "trainer=fsdp", "trainer.devices=2", *APP, f"hydra.sweep.dir={sweep}"]
    result = smart_train(args, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "trainer=fsdp (ModelParallelStrategy) re-launches the command line in each worker, which under --multirun"
        " would start the whole sweep again in every worker, and it has no spawning variant: run each job as a"
        " smart-train command of its own, or sweep with trainer.strategy=ddp_spawn"
    ) in result.stderr, result.stderr[-2000:]
    assert not list(sweep.glob("*/summary.json")) and not list(sweep.glob("*/checkpoints"))


@pytest.mark.slow
def test_a_distributed_checkpoint_is_checked_before_resuming(runs: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = runs["bert_fsdp"] / "checkpoints" / "step2.ckpt"
    check_checkpoint(str(checkpoint), SequenceTask(tiny_bert(dropout=0.0), num_labels=3))  # this model's: accepted
    with pytest.raises(ConfigError) as foreign:
        check_checkpoint(str(checkpoint), SequenceTask(tiny_llama(), num_labels=3))
    assert str(foreign.value).startswith(f"ckpt_path={str(checkpoint)!r} was saved from another model: missing")
    (tmp_path / "empty.ckpt").mkdir()
    with pytest.raises(ConfigError) as empty:
        check_checkpoint(str(tmp_path / "empty.ckpt"), SequenceTask(tiny_bert(dropout=0.0), num_labels=3))
    assert str(empty.value) == (f"ckpt_path={str(tmp_path / 'empty.ckpt')!r} is a folder but not a distributed"
                                " checkpoint (no meta.pt): resume from a run's checkpoints/last.ckpt")
