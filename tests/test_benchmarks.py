"""The benchmark scripts' ``--quick`` (and ``--tiny``) modes run to completion and report what they promise."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_script(name: str, *args: str, timeout: int) -> str:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=BENCHMARKS.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def load_benchmark(name: str):
    """A benchmark script or a module of the study as a module (``benchmarks/`` on the path, as the scripts have it)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


RATIOS = ("smart_vs_plain_fp32", "smart_mem_vs_plain_fp32", "smart_vs_plain_bf16", "smart_relative_vs_plain_bf16",
          "smart_rs_vs_peer_fp32", "causal_smart_vs_plain_fp32", "causal_smart_mem_vs_plain_fp32")


@pytest.mark.slow
def test_step_cost_quick_prints_every_row_and_the_seven_ratios(minilm_path: str) -> None:
    lines = run_script("step_cost.py", "--quick", "--threads", "1", timeout=1200).strip().splitlines()
    ratios = {}
    for line, name in zip(lines[-7:], RATIOS, strict=True):
        found = re.fullmatch(rf"{name}=(\d+\.\d+|n/a)", line)
        assert found, (name, lines[-7:])
        ratios[name] = found[1]
    rows = {}
    for line in lines:
        found = re.fullmatch(
            r"(.+?)\s+(32-true|bf16-mixed)\s+(\d+\.\d+)\s+\S+\s+(\d+\.\d+)\s+(\S+)\s+(\S+)\s+(\d+\.\d+)", line)
        if found:
            rows[found[1], found[2]] = (float(found[4]), None if found[5] == "—" else float(found[5]), float(found[7]))
    # What each step does, counted (encoder passes per timed step, the teacher's and the peer's included): plain 1;
    # R3F 2; the ascent adds 1, the teacher 1, a second ascent step 1; lazy k = 4 one full step in four.
    passes = {"plain": 1, "r3f (K=0, σ=1e-5)": 2, "SMART no teacher (K=1)": 3, "SMART full (K=1)": 4,
              "SMART full (K=2)": 5, "lazy k=4 (full K=1)": 1.75, "relative_shared full": 4,
              "full, policy fp32": 4, "full, policy autocast": 4, "smart-pytorch R_s (peer)": 3}
    assert {key: row[2] for key, row in rows.items()} == {key: passes[key[0]] for key in rows}
    fp32 = {"plain", "r3f (K=0, σ=1e-5)", "SMART no teacher (K=1)", "SMART full (K=1)", "SMART full (K=2)",
            "lazy k=4 (full K=1)", "relative_shared full"}
    bf16 = {"plain", "SMART full (K=1)", "lazy k=4 (full K=1)", "full, policy fp32", "full, policy autocast",
            "relative_shared full"}
    peer = importlib.util.find_spec("smart_pytorch") is not None
    assert set(rows) == {(n, "32-true") for n in fp32 | ({"smart-pytorch R_s (peer)"} if peer else set())} | {
        (n, "bf16-mixed") for n in bf16}
    assert ratios["smart_rs_vs_peer_fp32"] != "n/a" if peer else ratios["smart_rs_vs_peer_fp32"] == "n/a"
    assert float(ratios["smart_vs_plain_fp32"]) == pytest.approx(rows["SMART full (K=1)", "32-true"][0], abs=0.006)
    # Memory: the teacher holds an fp32 copy of the trainable weights, on top of everything else.
    config = AutoConfig.from_pretrained(minilm_path, num_hidden_layers=1, num_labels=2)
    params = sum(p.numel() for p in AutoModelForSequenceClassification.from_config(config).parameters())
    peak = {key: mib for key, (_, mib, _) in rows.items() if mib is not None}
    assert peak["SMART full (K=1)", "32-true"] - peak["SMART no teacher (K=1)", "32-true"] >= 4 * params / 2**20 - 0.1
    # The causal-LM rows (a tiny Llama here): passes through the decoder per step, plain 1, full SMART 4.
    causal = {line.rsplit(None, 5)[0]: line.split()[-5:] for line in lines if line.startswith("causal LM ")}
    assert {name: float(cols[-1]) for name, cols in causal.items()} == {"causal LM plain": 1.0,
                                                                        "causal LM SMART full (K=1)": 4.0}
    assert float(ratios["causal_smart_vs_plain_fp32"]) == pytest.approx(
        float(causal["causal LM SMART full (K=1)"][1]), abs=0.006)
    assert float(ratios["causal_smart_mem_vs_plain_fp32"]) > 1  # the perturbed and the teacher's logits, at least


@pytest.mark.slow
def test_quality_quick_runs_composed_settings_and_resumes(tmp_path: Path) -> None:
    args = ("study", "--quick", "--out", str(tmp_path), "--lr", "1e-4", "--steps", "4", "--threads", "1")
    plan = (*args, "--settings", "plain,paper_stab", "--setting",
            "lazy2:smart=paper teacher=paper smart.every_n_steps=2")
    text = run_script("quality.py", *plan, "--jobs", "2", timeout=900)  # two worker processes share the plan
    assert "3 runs planned, 3 to do, 2 at a time" in text
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["setting"], r["seed"]) for r in runs) == [("lazy2", 0), ("paper_stab", 0), ("plain", 0)]
    by_setting = {r["setting"]: r for r in runs}
    for row in runs:
        assert row["steps_done"] == 4 and row["splits"] == ["val", "movies", "tweets", "amazon", "nyt", "robust"]
        assert [step for step, _ in row["curve"]] == [2, 4]
        assert row["robust"]["acc"] <= row["robust"]["clean"] and row["robust"]["n"] > 0
        for split in ("val", "movies", "tweets"):
            assert set(row[split]) == {"acc", "bal", "majority"}
    stabilized = by_setting["paper_stab"]
    assert by_setting["plain"]["probe"] == {}
    assert set(stabilized["probe"]) == {"probe_perturbation_kl", "probe_dropout_kl", "probe_ratio"}
    assert [step for step, *_ in stabilized["probes"]] == [0, 2]  # at the first step, and after step 2's validation
    # The stabilized paper setting composed the package's presets and its options: the ramp shows in the weights.
    assert "smart.rampup=0.25" in stabilized["overrides"] and "teacher=paper" in stabilized["overrides"]

    again = run_script("quality.py", *args, "--settings", "plain,paper_stab", timeout=600)
    assert "2 runs planned, 0 to do" in again
    assert re.search(r"^\| plain \| 1 \| \d \| ", again, re.MULTILINE)
    assert re.search(r"^\| lazy2 \| 1 \| [+-]\d", again, re.MULTILINE)  # the paired difference row
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 3


def test_quality_report_chooses_the_learning_rate_and_steps_and_bootstraps_pairs() -> None:
    tables, study = load_benchmark("study.tables"), load_benchmark("study.report")
    curves = {2e-5: [[50, 0.6], [100, 0.7]], 5e-5: [[50, 0.7], [100, 0.8]], 1e-4: [[50, 0.75], [100, 0.72]]}
    rows = [{"lr": lr, "curve": [[s, v + 0.01 * seed] for s, v in curve]} for lr, curve in curves.items()
            for seed in range(3)]
    lr, step, medians = tables.lr_choice(rows)
    assert (lr, step) == (5e-5, 100) and medians[1e-4] == [(50, 0.76), (100, 0.73)]
    mean, low, high = tables.bootstrap([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and 1.0 <= low < 3.0 < high <= 5.0
    assert tables.bootstrap([2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert tables.failed({"val": {"acc": 0.505, "majority": 0.5}}) and not tables.failed(
        {"val": {"acc": 0.52, "majority": 0.5}})
    assert tables.failed({"val": {"pearson": 0.05}})
    assert load_benchmark("study.settings").parse_seeds("0-2") == [0, 1, 2]

    # The lr phase's plain run at the study's lr and steps is the study's plain run of its seed: paired with the
    # study's settings, as the study itself skips it (same overrides, seed, lr and steps: the same key).
    def row(setting: str, seed: int, lr: float, val: float) -> dict:
        return {"task": "trec", "setting": setting, "seed": seed, "lr": lr, "steps": 100, "curve": [[100, val]],
                "splits": ["val"], "val": {"acc": val, "bal": val, "majority": 0.2}, "train_s": 1.0, "eval_s": 1.0,
                "threads": 1}
    rows = [row("plain@lr", seed, lr, 0.8 + 0.01 * seed + lr) for seed in range(2) for lr in (2e-5, 5e-5)]
    rows += [*(row("paper", seed, 5e-5, 0.85) for seed in range(3)), row("plain", 2, 5e-5, 0.9)]
    lazy = study.report([*rows, *(row("teacher", seed, 5e-5, 0.86 - 0.1 * seed) for seed in range(3))])
    assert "best median validation score of teacher, paper: paper." in lazy  # teacher's median 76 < paper's 85
    text = study.report(rows)
    assert "| plain | 3 | 0 | 81.0 (80.5–85.5) | 2 |\n| paper | 3 | 0 | 85.0 (85.0–85.0) | 2 |" in text
    alone = study.report(rows[4:])  # no lr phase: plain's one run was the last to finish; its row still comes first
    assert "| plain | 1 | 0 | 90.0 (90.0–90.0) | 2 |\n| paper | 3 | 0 | 85.0 (85.0–85.0) | 2 |" in alone
    assert "Lazy k = 4 is run on the best median validation score of paper: paper." in text
    assert "| paper | 3 | +1.3 [-5.0, +5.0] |" in text  # (85 − 80.005, 85 − 81.005, 85 − 90) / 3 = +1.33
    # Each lr and step count is its own study; one whose plain runs still improve at their last step says so.
    rising = [row("plain", seed, 5e-5, 0.8) | {"steps": 200, "curve": [[100, 0.7], [200, 0.8]]} for seed in range(2)]
    both = study.report(rows + rising)
    assert "### trec: 100 steps at lr 5e-05" in both and "### trec: 200 steps at lr 5e-05" in both
    assert both.count("Plain has not peaked") == 1 and "(70.0 at step 100, 80.0 at 200)" in both


def test_quality_rule_claims_robustness_only_without_an_out_of_domain_loss_and_confirms_on_test() -> None:
    """The adversarial study's rule, on made-up runs whose paired differences are the same for every seed (a point
    interval)."""
    robustness = load_benchmark("study.robustness")
    radii = [0.01, 0.02, 0.03, 0.09, 1.0]
    probe = {"settings": [{"epsilon": e, "relative": True, "ratio": r} for e, r in ((0.01, 2.0), (0.03, 12.0))]}
    assert load_benchmark("study.settings").acting_radii(probe) == (0.01, 0.03)

    def run(setting: str, seed: int, val: float, test: float, tweets: float, robust: list[float]) -> dict:
        return {"setting": setting, "seed": seed, "splits": ["val", "movies", "tweets", "robust"],
                "val": {"acc": val}, "movies": {"acc": test}, "tweets": {"bal": tweets},
                "robust_radii": {"radii": radii, "acc": robust, "clean": 0.8, "n": 256}, "bench": {"attack_steps": 5}}
    base = [0.7, 0.6, 0.5, 0.1, 0.0]
    study = [run("plain", seed, 0.80, 0.80, 0.70, base) for seed in range(3)]
    study += [run("strong", seed, 0.80, 0.80, 0.68, [0.7, 0.6, 0.6, 0.1, 0.0]) for seed in range(3)]  # tweets -2
    study += [run("lazy4_strong", seed, 0.81, 0.80, 0.70, [0.7, 0.6, 0.55, 0.1, 0.0]) for seed in range(3)]
    study += [run("act", seed, 0.82, 0.81, 0.70, base) for seed in range(3)]
    study += [run("mtdnn", seed, 0.80, 0.80, 0.70, base) for seed in range(2)]
    verdicts = {line.split(":")[0][2:]: line for line in robustness.radius_tables("movies", study, probe)
                if line.startswith("- ")}
    assert verdicts["strong"] == ("- strong: validation +0.0 [+0.0, +0.0]; robust at its training radius 0.03: "
                                  "+10.0 [+10.0, +10.0]; no robustness claim (out of domain its interval excludes "
                                  "a loss on tweets).")
    assert "robust at its training radius 0.03: +5.0 [+5.0, +5.0]; **earns a robustness claim**; beats plain on " \
           "validation; on test +0.0 [+0.0, +0.0]: not confirmed." in verdicts["lazy4_strong"]
    assert verdicts["act"].endswith("no robustness claim; beats plain on validation; on test +1.0 [+1.0, +1.0]: "
                                    "confirmed.")
    assert verdicts["mtdnn"].endswith("2 of the planned seeds: too few to claim anything yet.")


def test_quality_counts_a_run_stored_twice_once(tmp_path: Path) -> None:
    runner = load_benchmark("study.runner")
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps({"key": k, "n": n}) + "\n"
                                                 for n, k in enumerate("abab")) + "\n")
    assert runner.stored(tmp_path) == [{"key": "a", "n": 0}, {"key": "b", "n": 1}]


STUDY = BENCHMARKS / "results" / "study"
RUN_FIELDS = ("task", "setting", "overrides", "seed", "lr", "steps")
TIMING = {"train_s", "eval_s", "calibration_s"}


def stored_run_and_bench(row: dict) -> tuple:
    """The :class:`Run` and :class:`Bench` a stored row was made of, from its own fields."""
    settings = load_benchmark("study.settings")
    bench = dict(row["bench"])
    bench["attack_radii"] = tuple(bench.get("attack_radii", ()))
    return settings.Run(*(row[field] for field in RUN_FIELDS)), settings.Bench(**bench)


@pytest.mark.parametrize("name", ["runs.jsonl", "reproduced.jsonl"])
def test_the_stored_study_runs_keep_their_keys(name: str) -> None:
    """Every stored run's key, recomputed from its fields: a run already done is recognised, and not run again."""
    settings = load_benchmark("study.settings")
    rows = [json.loads(line) for line in (STUDY / name).read_text().splitlines() if line.strip()]
    assert rows
    for row in rows:
        if row.get("kind") == "probe":  # the probe of plain seed 0's final weights, on the adversarial bench
            plain = settings.Run(row["task"], "plain", settings.SETTINGS["plain"], 0, row["lr"], row["steps"])
            assert row["key"] == f"probe-{row['of']}" == f"probe-{plain.key(settings.ADVERSARIAL_BENCH)}"
            continue
        run, bench = stored_run_and_bench(row)
        assert run.key(bench) == row["key"], row["setting"]


def test_the_runner_runs_what_is_not_stored_and_resumes_after_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Each finished run is appended as it ends; a plan that stopped resumes with the runs not stored, and two
    settings with the same overrides are one run."""
    settings, runner = load_benchmark("study.settings"), load_benchmark("study.runner")
    done: list[str] = []
    broken = [True]

    def train_one(run: Any, bench: Any, weights: Path) -> dict:
        if run.setting == "broken" and broken[0]:
            raise RuntimeError("out of memory")
        done.append(f"{run.setting} {run.seed}")
        return {"task": run.task, "setting": run.setting, "seed": run.seed, "lr": run.lr, "val": {"acc": 0.5},
                "train_s": 1.0, "eval_s": 1.0, "weights": str(weights)}

    monkeypatch.setattr(runner, "train_one", train_one)
    named = {"plain": "smart=off teacher=off", "same": "smart=off teacher=off", "broken": "smart=paper teacher=off"}
    plan = settings.plan("trec", named, [0, 1], 1e-4, 4)
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.execute(plan, settings.QUICK, tmp_path)
    assert done == ["plain 0"]
    assert [r["setting"] for r in runner.stored(tmp_path)] == ["plain"]
    broken[0] = False
    runner.execute(plan, settings.QUICK, tmp_path)
    assert done == ["plain 0", "broken 0", "plain 1", "broken 1"]
    rows = runner.stored(tmp_path)
    assert [r["key"] for r in rows] == [run.key(settings.QUICK) for run in plan if run.setting != "same"]
    assert rows[0]["bench"] == json.loads(json.dumps(dataclasses.asdict(settings.QUICK)))
    assert rows[0]["weights"] == str(tmp_path / "weights" / rows[0]["key"])
    printed = capsys.readouterr().out
    assert "6 runs planned, 4 to do" in printed and "6 runs planned, 3 to do" in printed
    assert "[3/3] trec broken seed 1 lr 0.0001: val 0.5000" in printed
    runner.execute(plan, settings.QUICK, tmp_path)
    assert "6 runs planned, 0 to do" in capsys.readouterr().out and len(done) == 4


# Bit for bit is a promise for one machine: another processor's kernels sum floats in another order. Measured on the
# quick run below (the fixture, recorded on another machine, against an Intel Xeon's rerun): every accuracy, count and
# choice equal; the ℓs of the perturbation and the ratio off by up to 1.1e-3 relative (an AMD EPYC's, reported:
# 1.0e-3 from the fixture, 2.1e-3 from the Xeon's), dropout's ℓs by up to 3.4e-6. The tolerances leave 5-30×.
CROSS_MACHINE_RTOL = {"perturbation_kl": 1e-2, "ratio": 1e-2, "dropout_kl": 1e-4}


def divergence_kind(path: tuple) -> str | None:
    """Which divergence a value of a stored run is, by where it sits in the row; ``None`` for the rest (accuracies,
    counts, steps, the radii tried and chosen, the settings), which any machine reproduces exactly."""
    match path:
        case ("probe", name):
            return str(name).removeprefix("probe_")
        case ("probes", _, 1) | ("calibrations", _, 4, _, 1):  # (step, ℓs perturbation, ℓs dropout); (ε, ℓs)
            return "perturbation_kl"
        case ("probes", _, 2) | ("calibrations", _, 3):
            return "dropout_kl"
    return None


def leaves(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every number or string of a stored row, with its path of keys and indices."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        yield path, value
        return
    for key, item in items:
        yield from leaves(item, (*path, key))


@pytest.mark.filterwarnings("ignore:smart.epsilon=auto")  # the 2-layer cut's ratio is far below the target
@pytest.mark.slow
def test_a_stored_quick_run_reproduces_bit_for_bit_here_and_within_rounding_from_another_machine(
        tmp_path: Path) -> None:
    """A run stored by the study's runner, run twice here: the two rows equal field for field and bit for bit (but
    their seconds). Against the row stored on another machine: the same fields, every value exact but the
    divergences, each within its kind's relative tolerance (:data:`CROSS_MACHINE_RTOL`)."""
    runner = load_benchmark("study.runner")
    stored = json.loads((Path(__file__).parent / "fixtures" / "study_quick_run.jsonl").read_text())
    run, bench = stored_run_and_bench(stored)
    assert run.key(bench) == stored["key"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as it was stored; other thread counts may sum in another order
    try:
        first, second = (json.loads(json.dumps(runner.stored_run(run, bench, tmp_path / str(i)))) for i in (0, 1))
    finally:
        torch.set_num_threads(threads)
    assert list(first) == list(second) == list(stored)
    here, again, there = ({path: v for path, v in leaves(row) if path[0] not in TIMING}
                          for row in (first, second, stored))
    assert here == again
    assert list(here) == list(there)
    differ = {path: (value, there[path]) for path, value in here.items() if not (
        value == there[path] if (kind := divergence_kind(path)) is None
        else math.isclose(value, there[path], rel_tol=CROSS_MACHINE_RTOL[kind]))}
    assert differ == {}


@pytest.mark.slow
def test_quality_probe_and_the_adversarial_study_on_the_two_layer_cut(tmp_path: Path) -> None:
    """The probe trains plain seed 0 (keeping its weights) and measures every grid radius, the paper's ε and mtdnn;
    the study's runs record robust accuracy at every radius of the attack's grid."""
    settings, runner, study = (load_benchmark(f"study.{name}") for name in ("settings", "runner", "report"))
    out = ("--quick", "--out", str(tmp_path), "--threads", "1")
    text = run_script("quality.py", "probe", "--task", "movies", *out, timeout=900)
    (probe,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()
                if json.loads(line).get("kind") == "probe"]
    names = ["paper ε", *(f"relative {e:g}" for e in settings.PROBE_GRID), "mtdnn"]
    assert [s["name"] for s in probe["settings"]] == names
    for setting in probe["settings"]:
        assert 0 <= setting["perturbation_kl"] < float("inf") and 0 < setting["dropout_kl"] < float("inf")
        assert setting["ratio"] == setting["perturbation_kl"] / setting["dropout_kl"]
        assert re.search(rf"^\| {re.escape(setting['name'])} \| [0-9.e+-]+× \|$", text, re.MULTILINE), text
    assert (tmp_path / "weights" / probe["of"] / "config.json").is_file()  # plain's final weights, kept
    assert "ε_act = " in text and "ε_strong = " in text

    run_script("quality.py", "adversarial", "--task", "movies", "--settings", "plain,mtdnn", *out, timeout=900)
    runs = [r for r in runner.stored(tmp_path) if r.get("kind") != "probe"]
    assert sorted(r["setting"] for r in runs) == ["mtdnn", "plain"]  # plain seed 0 ran once, for the probe
    for row in runs:
        grid = row["robust_radii"]
        assert grid["radii"] == list(settings.QUICK_ADVERSARIAL.attack_radii) and len(grid["acc"]) == len(grid["radii"])
        assert grid["acc"][0] <= grid["clean"]
        assert all(a >= b for a, b in zip(grid["acc"], grid["acc"][1:], strict=False))
    text = study.report(runner.stored(tmp_path))
    assert re.search(r"^\| mtdnn \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", text, re.MULTILINE), text


def test_quality_fixes_the_acting_radii_by_the_rule_and_plans_with_them() -> None:
    study = load_benchmark("study.settings")
    ratios = dict(zip(study.PROBE_GRID, (0.3, 0.8, 1.5, 12.0, 9.0, 30.0), strict=True))
    settings = [{"name": f"relative {e:g}", "epsilon": e, "relative": True, "ratio": r} for e, r in ratios.items()]
    probe = {"kind": "probe", "task": "trec", "lr": 2e-5, "steps": 400, "settings": [
        {"name": "paper ε", "epsilon": 1e-5, "relative": False, "ratio": 50.0}, *settings]}
    assert study.acting_radii(probe) == (0.03, 0.1)  # smallest with ratio ≥ 1 and ≥ 10; the paper's ε is no grid row
    planned = study.adversarial_settings([probe], "trec", ["act", "strong", "mtdnn", "lazy"],
                                        {"lazy": "smart=relative_shared smart.epsilon={act} smart.every_n_steps=4"})
    assert planned == {"act": "smart=relative_shared teacher=off smart.epsilon=0.03",
                       "strong": "smart=relative_shared teacher=off smart.epsilon=0.1",
                       "mtdnn": "smart=mtdnn teacher=off",
                       "lazy": "smart=relative_shared smart.epsilon=0.03 smart.every_n_steps=4"}
    with pytest.raises(SystemExit, match=r"run `quality.py probe --task movies` first"):
        study.adversarial_settings([probe], "movies", ["act"])
    weak = probe | {"settings": [s | {"ratio": 0.5} for s in settings]}
    with pytest.raises(SystemExit, match=r"strong: no radius of the grid .* reaches the ratio of ε_strong on trec"):
        study.adversarial_settings([weak], "trec", ["strong"])
    assert study.adversarial_settings([weak], "trec", ["plain"]) == {"plain": "smart=off teacher=off"}
    text = "\n".join(load_benchmark("study.robustness").adversarial_report([probe]))
    assert "| relative 0.03 | 1.5× |" in text and "trec (400 steps at lr 2e-05): ε_act = 0.03, ε_strong = 0.1" in text


def _auto_study_row(setting: str, seed: int, test: float, robust: float, **extra: object) -> dict:
    radii = [0.03, 0.1, 0.3]
    return {"task": "trec", "setting": setting, "seed": seed, "splits": ["val", "trec", "robust"],
            "val": {"acc": 0.9}, "trec": {"acc": test}, "robust": {"acc": 0.5},
            "robust_radii": {"radii": radii, "acc": [0.8, robust, 0.1], "clean": 0.88, "n": 256.0}, **extra}


def test_quality_auto_tables_pair_auto_with_plain_and_strong_and_give_the_rules_verdict() -> None:
    """Fixed run rows: auto's calibrations and share of training, the paired differences computed by hand (the same
    difference on every seed: the bootstrap interval is that point), and both verdicts of the rule."""
    robustness = load_benchmark("study.robustness")
    probe = {"kind": "probe", "task": "trec", "settings": [
        {"name": f"relative {e:g}", "epsilon": e, "relative": True, "ratio": r}
        for e, r in zip(load_benchmark("study.settings").PROBE_GRID, (0.01, 0.1, 1.5, 12.0, 30.0, 40.0), strict=True)]}
    calibrations = [[50, 0.3, True, 1e-3, [[0.1, 5e-3], [0.3, 2e-2]]], [100, 1.0, False, 1e-3, [[1.0, 8e-3]]]]
    study = []
    for seed in range(3):
        study += [_auto_study_row("plain", seed, 0.90, 0.40), _auto_study_row("strong", seed, 0.89, 0.55),
                  _auto_study_row("auto", seed, 0.88, 0.56, calibrations=calibrations, epsilon=1.0,
                                  calibration_s=20.0, train_s=1000.0)]
    text = "\n".join(robustness.auto_tables("trec", study, probe)).rstrip()
    assert "| 0 | 50: 0.3 (20), 100: 1 (8*) | 1 | 20.0 | 2.00% |" in text
    assert "Ends at ε_strong in 0 of 3 seeds; calibration 2.00% of training time at most." in text
    zero = "+0.0 [+0.0, +0.0]"
    assert f"| auto − plain | 3 | {zero} | -2.0 [-2.0, -2.0] | {zero} | +16.0 [+16.0, +16.0] |" in text
    assert f"| auto − strong | 3 | {zero} | -1.0 [-1.0, -1.0] | {zero} | +1.0 [+1.0, +1.0] |" in text
    assert text.endswith("Verdict: auto does not match strong on trec: robust gain at 0.1 +16.0 [+16.0, +16.0] against"
                         " strong's +15.0 [+15.0, +15.0] (disjoint); worse than strong (interval below 0) on trec.")
    level = [r | {"trec": {"acc": 0.89}} if r["setting"] == "auto" else r for r in study]
    level = [r | {"robust_radii": r["robust_radii"] | {"acc": [0.8, 0.55, 0.1]}} if r["setting"] == "auto" else r
             for r in level]
    assert "\n".join(robustness.auto_tables("trec", level, probe)).rstrip().endswith(
        "Verdict: auto matches strong on trec: robust gain at 0.1 +15.0 [+15.0, +15.0] against strong's +15.0"
        " [+15.0, +15.0] (overlap); no test or out-of-domain split worse than strong's.")
    assert robustness.auto_tables("trec", [r for r in study if r["setting"] != "auto"], probe) == []


FSDP_ROW = re.compile(r"(ddp|fsdp)\s+(\d)\s+(\d+\.\d)\s+(\d\.\d{3})\s+(\d+\.\d)\s+(\d\.\d{3})"  # θ̃, peak: MiB, ×
                      r"\s+(-?\d+\.\d)\s+(\d+\.\d{3})")  # RSS growth MiB, s/step


@pytest.mark.slow
def test_fsdp_memory_quick_prints_every_rank_and_each_holds_half_the_teacher(tmp_path: Path) -> None:
    lines = run_script("fsdp_memory.py", "--quick", "--out", str(tmp_path), timeout=900).strip().splitlines()
    rows = {(found[1], int(found[2])): found for line in lines if (found := FSDP_ROW.fullmatch(line))}
    assert set(rows) == {("ddp", 0), ("ddp", 1), ("fsdp", 0), ("fsdp", 1)}, lines
    teacher = re.fullmatch(r"teacher_per_rank_vs_single=(\d\.\d{3})", lines[-2])
    peak = re.fullmatch(r"peak_fsdp_vs_ddp=(\d\.\d{3})", lines[-1])
    assert teacher and peak, lines[-2:]
    assert float(teacher[1]) <= 0.55  # each rank holds its shard of θ̃, at world size 2 half of it
    runs = {key: json.loads((tmp_path / f"{key[0]}_rank{key[1]}.json").read_text()) for key in rows}
    dense = 4 * runs["ddp", 0]["params"]  # one float32 copy of every trainable parameter
    assert [runs["ddp", r]["teacher_bytes"] for r in (0, 1)] == [dense, dense]
    assert runs["fsdp", 0]["teacher_bytes"] + runs["fsdp", 1]["teacher_bytes"] == dense  # the shards partition θ̃
    assert all(run["sharded"] == (strategy == "fsdp") and run["steps"] == 2 for (strategy, _), run in runs.items())
    assert float(peak[1]) == pytest.approx(max(runs["fsdp", r]["peak_bytes"] for r in (0, 1)) / max(
        runs["ddp", r]["peak_bytes"] for r in (0, 1)), abs=6e-4)


@pytest.mark.slow
def test_gpu_check_tiny_prints_every_row_and_the_sharded_step_and_writes_its_files(tmp_path: Path) -> None:
    step_cost, gpu_check = load_benchmark("step_cost"), load_benchmark("gpu_check")
    text = run_script("gpu_check.py", "--tiny", "--budget", "1800", "--out", str(tmp_path), timeout=900)
    lines = text.strip().splitlines()
    encoder = [name for name, (_, precisions) in step_cost.ROWS.items() if step_cost.BF16 in precisions]
    expected = {(model, name, step_cost.BF16) for model in ("tiny-bert", "tiny-roberta") for name in encoder}
    expected |= {("tiny-llama", name, step_cost.BF16) for name in step_cost.CAUSAL_ROWS}
    # The TF32 rows: 32-bit, float32 matrix products in TF32 (on a CPU the setting only, which SMART still reads).
    tf32 = gpu_check.TF32
    expected |= {(model, name, tf32) for model in ("tiny-bert", "tiny-roberta") for name in gpu_check.TF32_ROWS}
    expected |= {("tiny-llama", name, tf32) for name in step_cost.CAUSAL_ROWS}
    rows = {}
    for line in lines:
        found = re.fullmatch(r"(tiny-\w+)\s+eager\s+(.+?)\s+(bf16-mixed|32-true\+tf32)\s+(\d+\.\d{3})\s+.*"
                             r"\s(\d+\.\d{2})\s+0", line)
        if found:
            rows[found[1], found[2], found[3]] = float(found[5])
    assert set(rows) == expected, text
    # What each step does, counted (passes through the encoder or decoder per timed step, as step_cost.py's test).
    passes = {"plain": 1, "SMART full (K=1)": 4, "lazy k=4 (full K=1)": 1.75, "full, policy fp32": 4,
              "full, policy autocast": 4, "relative_shared full": 4, "causal LM plain": 1,
              "causal LM SMART full (K=1)": 4}
    assert rows == {key: passes[key[1]] for key in rows}
    assert re.search(r"^fsdp\s+0\s+\d+\.\d\s+1\.000\s", text, re.MULTILINE)  # one process: it holds all of θ̃
    assert re.search(r"^teacher_per_rank_vs_single=1\.000$", text, re.MULTILINE)
    assert lines[-1].startswith("rows measured: 24 of 24; sharded step: measured;")
    assert (tmp_path / "gpu_check.txt").read_text().splitlines() == lines
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert {(row["model"], row["setting"], row["precision"]) for row in stored} == expected
    assert all(row["done"] for row in stored)
    sharded = json.loads((tmp_path / "sharded" / "fsdp_rank0.json").read_text())
    assert sharded["sharded"] and sharded["steps"] == 2


def test_gpu_check_refuses_a_missing_dependency_without_wheels_naming_the_fill_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = load_benchmark("gpu_check")
    assert gpu_check.install_from_wheels(tmp_path) == []  # everything is installed here: nothing to do
    monkeypatch.setitem(gpu_check.NEEDED, "no_such_module_here", "no-such-dist")
    with pytest.raises(SystemExit, match=r"missing \['no-such-dist'\] and no wheels in .*pip wheel --no-deps"):
        gpu_check.install_from_wheels(tmp_path)


def test_the_text_attack_tables_pair_each_attack_with_plain_beside_pgd_and_say_whether_the_gain_holds() -> None:
    """Fixed rows of ``runs.jsonl`` and ``text_attacks.jsonl``: the paired differences by hand (the same on every
    seed, so each interval is that point) and the verdict."""
    text = load_benchmark("study.text")
    grid = load_benchmark("study.settings").PROBE_GRID
    strong = grid[3]
    probe = {"kind": "probe", "key": "probe-x", "task": "trec", "settings": [
        {"name": f"relative {e:g}", "epsilon": e, "relative": True, "ratio": r}
        for e, r in zip(grid, (0.01, 0.1, 1.5, 12.0, 30.0, 40.0), strict=True)]}
    accuracy = {"plain": (0.90, 0.40, 0.30, 0.20, 0.70), "paper": (0.89, 0.55, 0.31, 0.18, 0.72)}  # clean, PGD, ...
    runs, attacked = [probe], []
    for seed in range(3):
        for setting, (clean, pgd, dwb, pruthi, typos) in accuracy.items():
            key = f"{setting}{seed}"
            runs.append({"key": key, "task": "trec", "setting": setting, "seed": seed, "splits": ["val", "trec"],
                         "trec": {"acc": clean}, "robust_radii": {"radii": [strong], "acc": [pgd]}})
            found = {"deepwordbug": dwb, "pruthi": pruthi, "typos": typos}
            attacked.append({"key": f"text-{key}", "of": key, "task": "trec", "setting": setting, "seed": seed,
                             "examples": 256, "typo_rate": 0.1, "reproduced": [None, True, False][seed],
                             "splits": {"trec": {a: {"accuracy": v, "clean_accuracy": clean + 0.01,
                                                     "success_rate": v / 2} for a, v in found.items()}}})
    lines = "\n".join(text.text_tables(runs, attacked))
    # Each run's own accuracies, seed by seed (plain first), with the sample's clean accuracy and its rerun.
    assert (f"| seed | setting | clean | clean (the 256) | PGD r = {strong:g} | trec deepwordbug | trec pruthi |"
            " trec typos | reproduced |") in lines
    assert ("| 0 | plain | 90.0 | 91.0 | 40.0 | 30.0 | 20.0 | 70.0 | not rerun |\n"
            "| 0 | paper | 89.0 | 90.0 | 55.0 | 31.0 | 18.0 | 72.0 | not rerun |\n"
            "| 1 | plain | 90.0 | 91.0 | 40.0 | 30.0 | 20.0 | 70.0 | yes |") in lines
    assert "| 2 | paper | 89.0 | 90.0 | 55.0 | 31.0 | 18.0 | 72.0 | **no** |" in lines
    point = "{0} [{0}, {0}]".format
    assert (f"| setting | seeds | clean | clean (the 256) | PGD r = {strong:g} | trec deepwordbug | trec pruthi |"
            " trec typos |") in lines
    assert (f"| paper | 3 | {point('-1.0')} | {point('-1.0')} | {point('+15.0')} | {point('+1.0')} |"
            f" {point('-2.0')} | {point('+2.0')} |") in lines
    assert ("Attack success rate (of the examples first right), paired difference from plain (points):\n\n"
            "| setting | seeds | trec deepwordbug | trec pruthi | trec typos |\n|---|---|---|---|---|\n"
            f"| paper | 3 | {point('+0.5')} | {point('-1.0')} | {point('+1.0')} |\n") in lines
    assert "plain, mean accuracy under attack (%): trec deepwordbug 30.0, trec pruthi 20.0, trec typos 70.0" in lines
    assert lines.rstrip().endswith(
        f"- paper: PGD at {strong:g}: {point('+15.0')} (a gain); trec deepwordbug {point('+1.0')} (a gain); trec"
        f" pruthi {point('-2.0')} (a loss); trec typos {point('+2.0')} (a gain); its embedding-space gain is **not"
        " matched** under the text attacks.\n\n"
        "Warning: 2 retrained run(s) did not reproduce their stored clean metrics.")  # seed 2's, plain and paper

    # A setting paired on one seed only: its one difference, and no interval nor verdict drawn from it.
    lines = "\n".join(text.text_tables(runs, [r for r in attacked if r["setting"] == "plain" or r["seed"] == 0]))
    one = " | ".join(f"{d} (one seed)" for d in ("-1.0", "-1.0", "+15.0", "+1.0", "-2.0", "+2.0"))
    assert f"| paper | 1 | {one} |" in lines
    assert "| paper | 1 | +0.5 (one seed) | -1.0 (one seed) | +1.0 (one seed) |" in lines
    assert "- paper: one seed paired with plain so far: no interval, no verdict.\n" in lines


def test_the_textattack_reference_pools_draws_into_one_table_over_all_their_examples() -> None:
    """Two fixed ``--out`` files: the accuracies, success rates, queries and seconds over the four examples by hand."""
    reference = load_benchmark("textattack_reference")

    def side(statuses: list[str], seconds: float, model_seconds: float) -> dict[str, Any]:
        return {"seconds": seconds, "model_seconds": model_seconds, "results": [
            {"status": s, "queries": 10 if s != "skipped" else 1, "words_perturbed": 20.0 if s == "succeeded" else 0.0}
            for s in statuses]}

    draws = [{"ours": {"deepwordbug": side(["failed", "succeeded"], 1.0, 0.5)},
              "textattack": {"deepwordbug": side(["succeeded", "succeeded"], 8.0, 6.0)}},
             {"ours": {"deepwordbug": side(["succeeded", "skipped"], 3.0, 2.5)},
              "textattack": {"deepwordbug": side(["succeeded", "skipped"], 8.0, 6.0)}}]
    lines = reference.pooled(draws)
    assert lines[2:4] == ["| DeepWordBugGao2018 | lightning_smart | 25.0 | 66.7 | 20.0 | 10.0 | 1.000 |",
                          "| DeepWordBugGao2018 | TextAttack | 0.0 | 100.0 | 20.0 | 10.0 | 4.000 |"]
    assert re.fullmatch(r"DeepWordBugGao2018, 2 draws, 4 examples: ours − TextAttack's \+25\.0 points \[\+0\.0, "
                        r"\+[0-9.]+\]; our time 0\.250× TextAttack's; in the model: ours 75\.0%, TextAttack's 75\.0%",
                        lines[-1]), lines[-1]
    del draws[1]["ours"]["deepwordbug"]["model_seconds"]  # a file from before the model was timed: no share claimed
    assert reference.pooled(draws)[-1].endswith(
        "our time 0.250× TextAttack's (a file made before the model's time was measured: no share in the model)")
