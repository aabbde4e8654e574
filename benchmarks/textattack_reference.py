"""Our text attacks against TextAttack's own recipes, on the same exported model and the same examples.

:mod:`lightning_smart.text_attack` implements TextAttack's ``DeepWordBugGao2018`` and ``Pruthi2019`` because TextAttack
cannot share our environment (it imports flair, which needs transformers < 5, and reads NLTK's stopword corpus at
import). This script runs both implementations on one exported model (a ``save_pretrained`` folder) and one seeded
sample of a task's test split, and prints, side by side, the accuracy under attack, the attack success rate, the words
perturbed, the queries and the seconds per example, and how many of those seconds each spent asking the model
(tokenizing and forwards: inside our ``predict`` and inside TextAttack's model wrapper). Both draw random characters,
each from its own generator, so they agree statistically, not example by example: the script also prints the
difference of the accuracies under attack with a 95% interval (the two attacks are run on the same examples: the
interval is over examples, paired).

TextAttack runs in an environment of its own, offline, where this script starts it as a subprocess::

    PY=$(../shared/textattack/make_venv.sh /tmp/textattack-venv)   # once: transformers 4.57, NLTK's stopwords
    python benchmarks/textattack_reference.py --textattack-python $PY --model outputs/.../model --task movies \\
        --examples 200 --out benchmarks/results/textattack/movies.json

``--model`` defaults to the study's stored final weights of plain fine-tuning, seed 0, of the task; ``--threads``
gives both implementations the same number of torch threads (1 by default), so that their times compare;
``--recipes`` runs some of them (``deepwordbug,pruthi`` by default). Each recipe's rows are printed, and written to
``--out``, as soon as both implementations have run it. ``--pool A.json B.json ...`` attacks nothing: it prints the
table of several such files (draws with other ``--seed``) as one, the interval over all their examples.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECIPES = {"deepwordbug": "DeepWordBugGao2018", "pruthi": "Pruthi2019"}


class Stopwatch:
    """Calls through it add up their seconds: each side's time asking the model (tokenizing and forwards)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, call: Any, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.seconds += time.perf_counter() - began


def textattack_side(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in TextAttack's environment: each recipe on the examples; what each result says, example by example."""
    import textattack
    import torch
    from textattack.attack_recipes import DeepWordBugGao2018, Pruthi2019
    from textattack.attack_results import FailedAttackResult, SkippedAttackResult, SuccessfulAttackResult
    from textattack.models.wrappers import HuggingFaceModelWrapper
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    tokenizer.model_max_length = spec["max_length"]
    asked = Stopwatch()

    class Timed(HuggingFaceModelWrapper):  # type: ignore[misc,valid-type]
        def __call__(self, texts: list[str]) -> Any:
            return asked(super().__call__, texts)

    wrapper = Timed(model, tokenizer)
    dataset = textattack.datasets.Dataset(list(zip(spec["texts"], spec["labels"], strict=True)))
    found: dict[str, Any] = {}
    for name in spec["recipes"]:
        recipe = {"deepwordbug": DeepWordBugGao2018, "pruthi": Pruthi2019}[name]
        random.seed(spec["seed"])
        asked.seconds = 0.0
        args = textattack.AttackArgs(num_examples=len(dataset), random_seed=spec["seed"], silent=True,
                                     disable_stdout=True, query_budget=None)
        start = time.perf_counter()
        results = textattack.Attacker(recipe.build(wrapper), dataset, args).attack_dataset()
        seconds = time.perf_counter() - start
        rows = []
        for result in results:
            status = ("succeeded" if isinstance(result, SuccessfulAttackResult) else
                      "skipped" if isinstance(result, SkippedAttackResult) else
                      "failed" if isinstance(result, FailedAttackResult) else type(result).__name__)
            original, perturbed = result.original_result.attacked_text, result.perturbed_result.attacked_text
            changed = len(original.all_words_diff(perturbed)) if status == "succeeded" else 0
            rows.append({"status": status, "queries": result.perturbed_result.num_queries,
                         "words_perturbed": 100.0 * changed / max(len(original.words), 1),
                         "text": perturbed.text})
        found[name] = {"results": rows, "seconds": seconds, "model_seconds": asked.seconds}
    return found


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy under attack, success rate, words perturbed (%, over successes) and queries (per example first
    right), as TextAttack reports them."""
    attacked = [r for r in rows if r["status"] != "skipped"]
    succeeded = [r for r in attacked if r["status"] == "succeeded"]
    return {"accuracy": (len(attacked) - len(succeeded)) / len(rows),
            "success_rate": len(succeeded) / max(len(attacked), 1),
            "words_perturbed": sum(r["words_perturbed"] for r in succeeded) / max(len(succeeded), 1),
            "queries": sum(r["queries"] for r in attacked) / max(len(attacked), 1)}


def paired_interval(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], resamples: int = 10_000
                    ) -> tuple[float, float, float]:
    """The difference of the accuracies under attack (ours − TextAttack's, points) and its bootstrap 95% interval
    over the examples, paired."""
    pairs = [(r["status"] == "failed", t["status"] == "failed") for r, t in zip(ours, theirs, strict=True)]
    diff = [100.0 * (a - b) for a, b in pairs]
    rng = random.Random(0)
    means = sorted(sum(rng.choices(diff, k=len(diff))) / len(diff) for _ in range(resamples))
    return sum(diff) / len(diff), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def our_side(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The examples (the study's sample of the task's first test split) and our attacks' results on them."""
    import torch
    from study.runner import build_task, compose_run, quiet
    from study.settings import ADVERSARIAL, ADVERSARIAL_BENCH, REGIMES, Run
    from transformers import AutoModelForSequenceClassification

    from lightning_smart.text_attack import classifier, run_attack, sample

    quiet(args.threads)
    lr, steps = REGIMES[args.task]
    run = Run(args.task, "plain", ADVERSARIAL["plain"], 0, lr, steps)
    model_dir = args.model or Path(__file__).parent / "results" / "study" / "weights" / run.key(ADVERSARIAL_BENCH)
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--model {model_dir}: no save_pretrained folder there; train it first (quality.py text"
                         f" --task {args.task} --seeds 0) or name an exported model/ folder")
    cfg = compose_run(run, ADVERSARIAL_BENCH)
    _, checked = build_task(cfg, 0)
    split, data = next(iter(checked.data.load().test.items()))
    chosen = sample(len(data), args.examples, args.seed)
    spec = {"model": str(model_dir), "tokenizer": str(cfg.data.tokenizer), "max_length": int(cfg.data.max_length),
            "texts": [data.texts[i] for i in chosen], "labels": [int(data.labels[i]) for i in chosen],
            "seed": args.seed, "threads": args.threads, "recipes": args.recipes, "split": split}
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    predict = classifier(model, checked.data.tokenizer, max_length=spec["max_length"])
    asked = Stopwatch()
    found: dict[str, Any] = {}
    for name in args.recipes:
        asked.seconds = 0.0
        start = time.perf_counter()
        with torch.no_grad():
            results = run_attack(name, functools.partial(asked, predict), spec["texts"], spec["labels"], seed=args.seed)
        seconds = time.perf_counter() - start
        found[name] = {"seconds": seconds, "model_seconds": asked.seconds, "results": [
            {"status": r.status, "queries": r.queries, "words_perturbed": r.words_perturbed if r.status == "succeeded"
             else 0.0, "text": r.text} for r in results]}
    return spec, found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textattack-python", help="the python of TextAttack's environment (make_venv.sh prints it)")
    parser.add_argument("--task", choices=("trec", "movies"), default="movies")
    parser.add_argument("--model", type=Path, default=None, help="an exported save_pretrained folder")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for both sides' results")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of " + ", ".join(RECIPES))
    parser.add_argument("--pool", type=Path, nargs="+", default=None, metavar="JSON",
                        help="no attack: pool the --out files of several draws into one table")
    parser.add_argument("--textattack-side", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pool:
        print("\n".join(pooled([json.loads(path.read_text()) for path in args.pool])))
        return
    args.recipes = [name for name in args.recipes.split(",") if name]
    if any(name not in RECIPES for name in args.recipes):
        parser.error(f"--recipes {','.join(args.recipes)}: each of {', '.join(RECIPES)}")
    if args.textattack_side is not None:  # inside TextAttack's environment: read the spec, write the results
        spec = json.loads(args.textattack_side.read_text())
        args.textattack_side.with_suffix(".out.json").write_text(json.dumps(textattack_side(spec)))
        return
    if not args.textattack_python:
        parser.error("--textattack-python is required: PY=$(../shared/textattack/make_venv.sh) builds the environment")
    spec, ours = our_side(args)
    header = [f"{args.task}, split {spec['split']}: {len(spec['texts'])} examples (seed {args.seed}), model"
              f" {spec['model']}, {args.threads} torch thread(s) each", "",
              "| recipe | implementation | accuracy under attack | success rate | words perturbed (%) | queries |"
              " s / example |", "|---|---|---|---|---|---|---|"]
    print("\n".join(header + [_row(name, "lightning_smart", ours[name], len(spec["texts"])) for name in ours]),
          flush=True)
    exchange = Path(os.environ.get("TMPDIR", "/tmp")) / f"textattack-spec-{os.getpid()}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    theirs: dict[str, Any] = {}
    rows, notes = [], []
    for name in args.recipes:  # a recipe at a time, each kept as soon as it is done
        exchange.write_text(json.dumps(spec | {"recipes": [name]}))
        subprocess.run([args.textattack_python, __file__, "--textattack-side", str(exchange)], check=True, env=env)
        theirs |= json.loads(exchange.with_suffix(".out.json").read_text())
        rows += [_row(name, who, side[name], len(spec["texts"]))
                 for who, side in (("lightning_smart", ours), ("TextAttack", theirs))]
        m, lo, hi = paired_interval(ours[name]["results"], theirs[name]["results"])
        ratio = ours[name]["seconds"] / theirs[name]["seconds"]
        count = len(spec["texts"])
        notes.append(f"{RECIPES[name]}: accuracy under attack, ours − TextAttack's: {m:+.1f} points [{lo:+.1f},"
                     f" {hi:+.1f}] (paired bootstrap over examples); our time per example {ratio:.3f}× TextAttack's;"
                     f" of it, asking the model (tokenizing and forwards) {ours[name]['model_seconds'] / count:.3f} s"
                     f" / example ({ours[name]['model_seconds'] / ours[name]['seconds']:.0%} of ours,"
                     f" {ours[name]['model_seconds'] / theirs[name]['seconds']:.3f}× TextAttack's time), TextAttack's"
                     f" {theirs[name]['model_seconds'] / count:.3f} s / example")
        lines = [*header, *rows, "", *notes]
        print("\n".join(lines), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"spec": spec, "ours": ours, "textattack": theirs, "table": lines},
                                           indent=1))


def pooled(draws: list[dict[str, Any]]) -> list[str]:
    """The table and notes of several ``--out`` files (draws: other examples or characters) as one: each recipe's
    results over all their examples, the paired interval over them all, and the seconds summed."""
    lines = ["| recipe | implementation | accuracy under attack | success rate | words perturbed (%) | queries |"
             " s / example |", "|---|---|---|---|---|---|---|"]
    notes = []
    for name in dict.fromkeys(n for draw in draws for n in draw["ours"]):
        having = [draw for draw in draws if name in draw["ours"] and name in draw["textattack"]]
        ours, theirs = ({"results": [r for d in having for r in d[who][name]["results"]],
                         **{key: sum(d[who][name].get(key, 0.0) for d in having)
                            for key in ("seconds", "model_seconds")}} for who in ("ours", "textattack"))
        count = len(ours["results"])
        lines += [_row(name, "lightning_smart", ours, count), _row(name, "TextAttack", theirs, count)]
        m, lo, hi = paired_interval(ours["results"], theirs["results"])
        timed = all("model_seconds" in d[who][name] for d in having for who in ("ours", "textattack"))
        notes.append(f"{RECIPES[name]}, {len(having)} draws, {count} examples: ours − TextAttack's {m:+.1f} points"
                     f" [{lo:+.1f}, {hi:+.1f}]; our time {ours['seconds'] / theirs['seconds']:.3f}× TextAttack's"
                     + (f"; in the model: ours {ours['model_seconds'] / ours['seconds']:.1%}, TextAttack's"
                        f" {theirs['model_seconds'] / theirs['seconds']:.1%}" if timed else
                        " (a file made before the model's time was measured: no share in the model)"))
    return [*lines, "", *notes]


def _row(name: str, who: str, side: dict[str, Any], count: int) -> str:
    s = summarize(side["results"])
    return (f"| {RECIPES[name]} | {who} | {100 * s['accuracy']:.1f} | {100 * s['success_rate']:.1f} |"
            f" {s['words_perturbed']:.1f} | {s['queries']:.1f} | {side['seconds'] / count:.3f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # the study package beside this script
    main()
