"""Token-level fine-tuning through the app: ``data=sft`` (causal LMs) and ``data=tokens`` (token classification).

Tiny random Llama and GPT-2 models with the BPE tokenizer the decoder tests train on the shipped snippets, fitted on
the shipped movie-dialog lines; the 2-layer MiniLM tagging words of real TREC questions. Each fit has the teacher;
a run stopped mid-epoch and resumed from its ``last.ckpt`` ends where the uninterrupted one ends; the exported
folders load with the ``Auto`` classes and give the module's logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from seqeval.metrics import f1_score
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from lightning_smart.app.cli import build, train
from lightning_smart.data import DataError, SFTDataModule, TaggingDataModule
from lightning_smart.data.sources import load_trec
from tests.helpers.app import Interrupt, app_config, smart_train
from tests.helpers.decoders import save_causal_lm

SMALL = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.max_length=40", "data.batch_size=16",
         "trainer.max_steps=8", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "progress_bar=false",
         "checkpoint.save_top_k=0", "checkpoint.save_last=true", "smart.sigma=1e-3", "teacher.validate=true"]
WH = {"what", "which", "who", "whom", "whose", "when", "where", "why", "how"}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def causal_lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_causal_lm(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_causal_lm("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real TREC questions, each word tagged: question words (WH) and runs of capitalised words (NAME), IOB2."""
    path = tmp_path_factory.mktemp("tags") / "questions.jsonl"
    lines = []
    for text in load_trec().texts[:160]:
        words, tags = text.split(), []
        for i, word in enumerate(words):
            if word.lower() in WH:
                tags.append("B-WH")
            elif i > 0 and word[:1].isupper():
                tags.append("I-NAME" if tags[-1] in ("B-NAME", "I-NAME") else "B-NAME")
            else:
                tags.append("O")
        lines.append(json.dumps({"words": words, "tags": tags}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sft_overrides(folder: Path) -> list[str]:
    return ["model=causal_lm", f"model.name_or_path={folder}", "model.lr=3e-3", "data=sft", *SMALL]


def tokens_overrides(path: Path) -> list[str]:
    return ["model=minilm_l2", "data=tokens", f"data.path={path}", *SMALL]


def test_sft_data_label_the_response_and_its_end_only() -> None:
    data = SFTDataModule(tokenizer=None, train_size=8, val_size=4, test_size=0, max_length=64, batch_size=8)
    data.setup()
    tokenizer, pairs = data.tokenizer, data.load().train
    batch = next(iter(data.train_dataloader()))
    for i in range(4):  # training features keep the examples' order
        prompt = tokenizer(f"{pairs.texts[i]}\n")["input_ids"]
        response = tokenizer(pairs.pairs[i], add_special_tokens=False)["input_ids"]  # type: ignore[index]
        end = tokenizer.sep_token_id  # MiniLM's tokenizer has no end-of-sequence token: its [SEP] ends the response
        features = data._features["train"][i]
        assert features["input_ids"] == prompt + response + [end]
        assert features["labels"] == [-100] * len(prompt) + response + [end]
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == -100)  # padding never counts
    assert (batch["attention_mask"][:, -1] == 0).any() and torch.all(batch["attention_mask"][:, 0] == 1)  # right


def test_tagged_words_label_each_words_first_sub_token(tagged: Path) -> None:
    data = TaggingDataModule(path=str(tagged), tokenizer=None, val_size=8, test_size=8, max_length=64)
    data.setup()
    assert data.label_names == ["B-NAME", "B-WH", "I-NAME", "O"] and data.num_labels == 4
    examples, features = data.load().train, data._features["train"]
    encoded = data.tokenizer(examples.texts[0], is_split_into_words=True)
    firsts = [i for i, w in enumerate(encoded.word_ids()) if w is not None and w != encoded.word_ids()[i - 1]]
    assert [features[0]["labels"][i] for i in firsts] == [data.label_names.index(t) for t in examples.labels[0]]
    assert sum(label != -100 for label in features[0]["labels"]) == len(examples.texts[0])
    several = [i for i, words in enumerate(examples.texts) if len(features[i]["input_ids"]) > len(words) + 2]
    assert several, "no question has a word of several sub-tokens: the first-sub-token rule went untested"
    for i in several[:5]:  # more sub-tokens than words (+ [CLS], [SEP]), one label per word all the same
        assert sum(label != -100 for label in features[i]["labels"]) == len(examples.texts[i])


@pytest.mark.parametrize(("overrides", "message"), [
    (["data=sft", "data.num_labels=2"], "data.num_labels=2 does not apply to data=sft"),
    (["data=sft", "data.prompt_template=Q:"], "data.prompt_template='Q:' has no {prompt}"),
    (["data=tokens", "data.path={tagged}", "data.num_labels=3"], "data.num_labels=3 but the data have 4 tags"),
    (["data=tokens", "data.path={tagged}", "data.label_names=[O]"], "are not in data.label_names=['O']"),
    (["data=sft", "data.ood=[tweets]"], "out-of-domain sets are the sentiment snippets"),
], ids=["sft-num-labels", "template", "tag-count", "tag-names", "ood"])
def test_token_level_data_errors_name_the_setting(tagged: Path, overrides: list[str], message: str,
                                                  tmp_path: Path) -> None:
    with app_config(["model=minilm_l2", *(o.format(tagged=tagged) for o in overrides)]) as cfg, \
            pytest.raises(DataError) as raised:
        build(cfg, tmp_path / "run")
    assert message in str(raised.value)
    assert not (tmp_path / "run").exists()


def _final(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    ckpt = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 8
    return ckpt["state_dict"], ckpt["callbacks"]["EMATeacherCallback"]["ema"]


def test_an_sft_run_resumed_mid_epoch_ends_like_an_uninterrupted_one(causal_lm: Path, tmp_path: Path) -> None:
    resumes_exactly(sft_overrides(causal_lm), tmp_path)


@pytest.mark.slow
def test_a_tagging_run_resumed_mid_epoch_ends_like_an_uninterrupted_one(tagged: Path, tmp_path: Path) -> None:
    resumes_exactly(tokens_overrides(tagged), tmp_path)


def resumes_exactly(overrides: list[str], tmp_path: Path) -> None:
    """Stopped at step 3 of 8 (4 an epoch), resumed from last.ckpt (step 2): the student, the teacher and the
    validation metrics are the uninterrupted run's, bit for bit."""
    with app_config(overrides) as cfg:
        straight = train(cfg, tmp_path / "straight")
    with app_config(overrides) as cfg:
        run = build(cfg, tmp_path / "stopped")
        run.trainer.callbacks.append(Interrupt(at=3))  # 4 steps an epoch: stopped mid-epoch, saved at step 2
        with pytest.raises(RuntimeError, match="interrupted"):
            run.trainer.fit(run.model, datamodule=run.checked.data)
    last = tmp_path / "stopped/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    with app_config([*overrides, f"ckpt_path={last}"]) as cfg:
        resumed = train(cfg, tmp_path / "resumed")
    assert resumed["val"] == straight["val"] and resumed["val_teacher"] == straight["val_teacher"]
    (student, teacher), (student_again, teacher_again) = _final(tmp_path / "straight"), _final(tmp_path / "resumed")
    for name, value in student.items():
        assert torch.equal(value, student_again[name]), name
    for name, value in teacher.items():
        assert torch.equal(value, teacher_again[name]), name
    assert any(not torch.equal(value, student[name]) for name, value in teacher.items())  # the teacher lags


@pytest.mark.slow
def test_sft_through_smart_train_exports_a_causal_lm_with_the_modules_logits(causal_lm: Path, tmp_path: Path) -> None:
    result = smart_train([*sft_overrides(causal_lm), "test=false", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    val = summary["val"]
    assert summary["metric"] == "val/loss" and summary["steps"] == 8 and set(val) == {"loss", "perplexity",
                                                                                      "token_acc"}
    assert math.isclose(val["perplexity"], math.exp(val["loss"]), rel_tol=1e-4)  # both over the response tokens
    assert val["loss"] < math.log(400) and 0 < val["token_acc"] < 1  # below a uniform guess over the vocabulary
    assert summary["val_teacher"]["perplexity"] > 0 and summary["files"]["teacher"] == "teacher"

    state = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    module_model = AutoModelForCausalLM.from_pretrained(causal_lm)
    module_model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    ids = tokenizer(["you're asking me out.\n", "forget it."], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**ids).logits, module_model.eval()(**ids).logits, rtol=0, atol=0)


def test_a_lora_sft_run_averages_the_adapter_only_and_exports_it_merged_and_alone(llama: Path,
                                                                                  tmp_path: Path) -> None:
    from peft import PeftModel

    overrides = [*sft_overrides(llama), "+model.lora.r=4", "+model.lora.lora_alpha=8",
                 "+model.lora.target_modules=[q_proj,v_proj]", "test=false"]
    with app_config(overrides) as cfg:
        run = build(cfg, tmp_path)
        summary = train(cfg, tmp_path, run)
    assert set(summary["files"]) >= {"model", "teacher", "adapter"}
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert set(run.teacher.ema) == trainable  # type: ignore[union-attr]  # θ̃ of the adapter only

    ids = run.checked.data.tokenizer(["you're asking me out.\n"], return_tensors="pt")
    run.model.eval()
    with torch.no_grad():
        expected = run.model.model(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
        torch.testing.assert_close(merged(**ids).logits, expected, rtol=1e-5, atol=1e-6)
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama), tmp_path / "adapter")
        torch.testing.assert_close(adapter.eval()(**ids).logits, expected, rtol=1e-5, atol=1e-6)
        teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher").eval()
        assert not torch.allclose(teacher(**ids).logits, expected)  # the average of the adapter's path


@pytest.mark.slow
def test_tagging_through_smart_train_reports_seqevals_entity_f1_of_the_exported_tagger(tagged: Path, tmp_path: Path,
                                                                                       minilm_path: str) -> None:
    result = smart_train([*tokens_overrides(tagged), "test=false", "model.lr=5e-4", f"hydra.run.dir={tmp_path}"],
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metric"] == "val/f1" and set(summary["val"]) == {"loss", "f1", "precision", "recall", "acc"}

    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "model").eval()
    assert model.config.id2label == {0: "B-NAME", 1: "B-WH", 2: "I-NAME", 3: "O"}
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    state = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    module_model = AutoModelForTokenClassification.from_pretrained(minilm_path, num_hidden_layers=2, num_labels=4)
    module_model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    ids = tokenizer([["Who", "wrote", "Hamlet", "?"]], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():  # the exported tagger is the module's final one
        torch.testing.assert_close(model(**ids).logits, module_model.eval()(**ids).logits, rtol=0, atol=0)
    with app_config(tokens_overrides(tagged)) as cfg:
        data = build(cfg, tmp_path / "again").checked.data
    val = data.load().val
    truth, predicted = [], []
    for words, tags in zip(val.texts, val.labels, strict=True):
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=40, return_tensors="pt")
        with torch.no_grad():
            best = model(**encoded).logits[0].argmax(-1).tolist()
        word_ids, firsts = encoded.word_ids(), []
        for i, word in enumerate(word_ids):
            if word is not None and (i == 0 or word_ids[i - 1] != word):
                firsts.append(model.config.id2label[best[i]])
        truth.append(tags[:len(firsts)])
        predicted.append(firsts)
    assert summary["val"]["f1"] == pytest.approx(f1_score(truth, predicted), abs=1e-6)
