"""What a run hands over: the student and teacher as ``save_pretrained`` folders, one file for best and last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from lightning_smart.app.cli import build, train
from lightning_smart.teacher import EMATeacherCallback
from tests.helpers.app import TINY, Interrupt, app_config

# Every validation (steps 2 and 4) keeps a best checkpoint, so last.ckpt is always one of them.
KEEP_ALL = [*[o for o in TINY if not o.startswith("checkpoint.")], "checkpoint.save_top_k=-1",
            "checkpoint.save_last=true", "smart.sigma=1e-3"]


def test_exported_folders_predict_as_the_trained_student_and_teacher(tmp_path: Path) -> None:
    with app_config([*TINY, "test=false"]) as cfg:
        run = build(cfg, tmp_path)
        summary = train(cfg, tmp_path, run)
    assert summary["files"]["model"] == "model" and summary["files"]["teacher"] == "teacher"
    assert json.loads((tmp_path / "summary.json").read_text())["files"]["teacher"] == "teacher"
    texts = run.checked.data.load().val.texts[:8]  # real movie snippets, of different lengths
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    batch = DataCollatorWithPadding(tokenizer)(tokenizer(texts, truncation=True, max_length=32))
    module = run.model.eval()
    (teacher,) = [cb for cb in run.trainer.callbacks if isinstance(cb, EMATeacherCallback)]
    with torch.no_grad():
        student_logits = module.smart_forward(batch)
        teacher_logits = teacher.teacher_outputs(module, batch)
        student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
        exported_teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher").eval()
        assert torch.equal(student(**batch).logits, student_logits)
        assert torch.equal(exported_teacher(**batch).logits, teacher_logits)
    assert not torch.allclose(student_logits, teacher_logits)  # the teacher folder holds the EMA, not the student
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_teacher_folder_when_the_teacher_is_not_validated(tmp_path: Path) -> None:
    with app_config([*TINY, "test=false", "teacher.validate=false"]) as cfg:
        summary = train(cfg, tmp_path)
    assert summary["files"]["model"] == "model" and summary["files"]["teacher"] is None
    assert (tmp_path / "model/config.json").is_file() and not (tmp_path / "teacher").exists()


def _distinct_files_differ(folder: Path) -> None:
    files = sorted(folder.iterdir())
    inodes = {p.stat().st_ino: p for p in files}
    contents = [p.read_bytes() for p in inodes.values()]
    assert len(set(contents)) == len(contents), files


def test_best_and_last_of_the_same_step_are_one_file(tmp_path: Path) -> None:
    with app_config([*KEEP_ALL, "test=false"]) as cfg:
        train(cfg, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-step2.ckpt", "best-step4.ckpt", "last.ckpt"]
    last = checkpoints / "last.ckpt"
    assert last.samefile(checkpoints / "best-step4.ckpt") and last.stat().st_nlink == 2
    assert not (checkpoints / "best-step2.ckpt").samefile(last)  # the link was replaced, not written through
    assert torch.load(checkpoints / "best-step2.ckpt", weights_only=False)["global_step"] == 2
    assert torch.load(last, weights_only=False)["global_step"] == 4
    _distinct_files_differ(checkpoints)


@pytest.mark.slow
def test_a_linked_last_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    """Stopped at step 3, resumed from last.ckpt, a link to best-step2.ckpt: the run that never stopped."""
    with app_config([*KEEP_ALL, "test=false"]) as cfg:
        straight = train(cfg, tmp_path / "straight")
        run = build(cfg, tmp_path / "stopped")
        run.trainer.callbacks.append(Interrupt(at=3))
        with pytest.raises(RuntimeError, match="interrupted"):
            run.trainer.fit(run.model, datamodule=run.checked.data)
    last = tmp_path / "stopped/checkpoints/last.ckpt"
    assert last.samefile(tmp_path / "stopped/checkpoints/best-step2.ckpt")
    with app_config([*KEEP_ALL, "test=false", f"ckpt_path={last}"]) as cfg:
        resumed = train(cfg, tmp_path / "resumed")
    assert resumed["steps"] == straight["steps"] == 4
    assert resumed["val"] == straight["val"] and resumed["val_teacher"] == straight["val_teacher"]
    for who in ("model", "teacher"):
        a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "straight" / who).state_dict()
        b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "resumed" / who).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), who
