"""Where SMART pays for itself: seeds × settings × tasks, with the full 6-layer model users run.

The study lives in :mod:`study` (next to this script): what it runs (:mod:`study.settings`), how a run is composed
from ``conf/``, trained and stored (:mod:`study.runner`), the probe (:mod:`study.probe`) and the tables
(:mod:`study.report`). This script is its command line. The regime: all-MiniLM-L6-v2 (6 layers), 500 training
examples, batch 16, ≤ 64 tokens; ``--quick`` runs the 2-layer cut on a few examples instead.

Each command that trains is resumable: runs are appended to ``<out>/runs.jsonl`` as they finish, and a run already
there (the same key: task, overrides, seed, learning rate, steps and bench) is skipped. ``--jobs N`` runs N at a
time, in worker processes of one torch thread each (``--threads`` to change it)::

    python benchmarks/quality.py lr --task movies --jobs 2                  # plain at 3 learning rates × 3 seeds
    python benchmarks/quality.py report                                     # names the lr and the step count
    python benchmarks/quality.py study --task movies --lr 5e-5 --steps 200 --jobs 2
    python benchmarks/quality.py probe --task trec                          # the radii the adversarial study uses
    python benchmarks/quality.py adversarial --task trec --jobs 2
    python benchmarks/quality.py ratios --task trec --seeds 0-4 --batches 2 # auto's ratios at step 0
    python benchmarks/quality.py text --task trec --jobs 2                  # text attacks on plain, auto, paper
    python benchmarks/quality.py study --quick --out /tmp/q --lr 1e-4 --steps 4   # a smoke run

``lr`` trains plain fine-tuning for ``--steps`` (300) at each of 2e-5, 5e-5 and 1e-4 with 3 seeds; ``report``
then names the learning rate with the best median peak on validation and the step where that median curve peaks:
the ``--lr`` and ``--steps`` every setting of ``study`` uses (an lr-phase run at those is the study's plain run of
its seed: same overrides, so the same key; ``study`` skips it, ``report`` pairs it). ``report`` tables each learning
rate and step count apart and flags a study whose plain runs still improve at their last validation. ``probe``
trains plain seed 0 at the task's regime (if it is not stored) and measures the perturbation against dropout at its
final weights; ``adversarial`` trains the adversarial settings, with the radii that probe fixes, and attacks each
run at every radius of the grid; ``ratios`` writes the probe's ratio at every grid radius, batch by batch, to
``<out>/ratios.jsonl``; ``text`` trains the runs of plain, auto and paper not stored yet (as ``adversarial``), then
attacks each final student with the text attacks (:mod:`study.text`) into ``<out>/text_attacks.jsonl``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from study.probe import grid_ratios, probe
from study.report import report
from study.runner import RUNS, append, execute, finished, quiet, stored
from study.settings import (
    ADVERSARIAL,
    ADVERSARIAL_BENCH,
    QUICK,
    QUICK_ADVERSARIAL,
    REGIMES,
    SETTINGS,
    TASKS,
    Bench,
    Run,
    adversarial_settings,
    chosen,
    lr_plan,
    parse_seeds,
    plan,
)
from study.text import TEXT, TEXT_EXAMPLES, attack_run, text_plan, text_rows

OUT = Path(__file__).parent / "results" / "study"


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("lr", "study", "probe", "adversarial", "ratios", "text", "report"))
    parser.add_argument("--task", choices=list(TASKS), default="movies")
    parser.add_argument("--settings", default=None,
                        help="comma-separated names of SETTINGS (study) or of ADVERSARIAL (adversarial)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME:OVERRIDES",
                        help="an extra setting, e.g. 'lazy4:smart=paper teacher=paper smart.every_n_steps=4'")
    parser.add_argument("--seeds", default=None, help="e.g. 0-4 (study), 0-2 (lr)")
    parser.add_argument("--lr", type=float, default=None, help="the learning rate of every study run")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every run (lr phase: 300)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in a worker process")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each run (default: 1 with --jobs > 1, else torch's choice)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="2-layer model, a few examples and steps")
    parser.add_argument("--weights", type=Path, default=None,
                        help="ratios: a run's saved final weights (default: the fresh head of step 0)")
    parser.add_argument("--batches", type=int, default=4, help="ratios: how many training batches")
    parser.add_argument("--examples", type=int, default=TEXT_EXAMPLES, help="text: examples of each test split")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    if args.command == "report":
        print(report(stored(args.out), text_rows(args.out)))
        return
    quiet(args.threads)
    bench = QUICK if args.quick else Bench()
    if args.command == "ratios":  # the ratio at each grid radius, at step 0 or at saved weights (auto's start)
        bench = QUICK_ADVERSARIAL if args.quick else ADVERSARIAL_BENCH
        for seed in parse_seeds(args.seeds or "0"):
            row = grid_ratios(args.task, seed, bench, args.weights, batches=args.batches)
            append(args.out / "ratios.jsonl", row)
            print(json.dumps(row), flush=True)
        return
    if args.command == "text":
        bench = QUICK_ADVERSARIAL if args.quick else ADVERSARIAL_BENCH
        lr, steps = REGIMES[args.task]
        runs = text_plan(args.task, parse_seeds(args.seeds or ("0" if args.quick else "0-4")), lr,
                         4 if args.quick else steps, args.settings)
        execute(runs, bench, args.out, args.jobs, args.threads)  # the runs not stored yet, with their weights
        done = {row["key"] for row in text_rows(args.out)}
        todo = [run for run in runs if f"text-{run.key(bench)}" not in done]
        print(f"{len(runs)} runs to attack, {len(todo)} to do", flush=True)
        work = functools.partial(attack_run, bench=bench, out=args.out, examples=args.examples)
        for number, row in enumerate(finished(work, todo, args.jobs, args.threads), 1):
            append(args.out / TEXT, row)
            print(f"[{number}/{len(todo)}] {row['task']} {row['setting']} seed {row['seed']}: "
                  + ", ".join(f"{s}/{a} {100 * v['accuracy']:.1f}" for s, found in row["splits"].items()
                              for a, v in found.items()) + f" (reproduced: {row['reproduced']})", flush=True)
        print(report(stored(args.out), text_rows(args.out)))
        return
    if args.command in ("probe", "adversarial"):
        bench = QUICK_ADVERSARIAL if args.quick else ADVERSARIAL_BENCH
        lr, steps = REGIMES[args.task]
        steps = 4 if args.quick else steps
        if args.command == "probe":  # at plain's final weights, seed 0: the study's own plain run of that seed
            run = Run(args.task, "plain", SETTINGS["plain"], 0, lr, steps)
            execute([run], bench, args.out)
            start = time.perf_counter()
            row = {"kind": "probe", "key": f"probe-{run.key(bench)}", "task": args.task, "lr": lr, "steps": steps,
                   "of": run.key(bench), "settings": probe(args.task, args.out / "weights" / run.key(bench), bench)}
            row["eval_s"] = round(time.perf_counter() - start, 1)
            append(args.out / RUNS, row)
            print(report(stored(args.out)))
            return
        named = chosen(ADVERSARIAL, args.settings, args.setting)
        settings = adversarial_settings(stored(args.out), args.task, list(named), named)
        runs = plan(args.task, settings, parse_seeds(args.seeds or ("0" if args.quick else "0-4")), lr, steps)
    elif args.command == "lr":
        runs = lr_plan(args.task, parse_seeds(args.seeds or "0-2"), args.steps or (4 if args.quick else 300))
    else:
        if args.lr is None or args.steps is None:
            raise SystemExit("study needs --lr and --steps: the lr phase's choice (quality.py report)")
        settings = chosen(SETTINGS, args.settings, args.setting)
        runs = plan(args.task, settings, parse_seeds(args.seeds or ("0" if args.quick else "0-4")), args.lr, args.steps)
    start = time.perf_counter()
    execute(runs, bench, args.out, args.jobs, args.threads)
    print(f"this invocation: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print(report(stored(args.out)))


if __name__ == "__main__":
    main()
