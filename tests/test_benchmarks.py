"""The benchmark scripts' ``--quick`` modes run to completion and report what they promise."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_script(name: str, *args: str, timeout: int) -> str:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=BENCHMARKS.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def load_quality():
    spec = importlib.util.spec_from_file_location("quality", BENCHMARKS / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_step_cost_quick_prints_the_table_then_the_two_ratios() -> None:
    lines = run_script("step_cost.py", "--quick", timeout=600).strip().splitlines()
    time_ratio = re.fullmatch(r"smart_vs_plain_fp32=(\d+\.\d+)", lines[-2])
    memory_ratio = re.fullmatch(r"smart_mem_vs_plain_fp32=(\d+\.\d+)", lines[-1])
    assert time_ratio and memory_ratio, lines[-2:]
    assert float(time_ratio[1]) > 1.0  # a full SMART step does about three times plain's work
    assert float(memory_ratio[1]) > 1.0  # it holds a teacher and a second graph
    for setting in ("plain", "r3f", "SMART no teacher (K=1)", "SMART full (K=1)", "SMART full (K=2)"):
        rows = [line for line in lines if line.startswith(setting + " ")]
        assert len(rows) == 2, (setting, lines)  # one row per precision


@pytest.mark.slow
def test_quality_quick_writes_raw_results_summary_and_plot(tmp_path: Path) -> None:
    out = run_script("quality.py", "--quick", "--out", str(tmp_path), timeout=600)
    runs = [json.loads(line) for line in (tmp_path / "quality_runs.jsonl").read_text().splitlines()]
    assert [(r["setting"], r["seed"]) for r in runs] == [("off", 0), ("paper", 0)]
    for row in runs:
        for metric in ("val", "movie", "tweets", "amazon", "robust", "tweets_bal"):
            assert 0.0 <= row[metric] <= 1.0, metric
    assert runs[1]["teacher"] == {} and runs[0]["teacher"] is None
    with (tmp_path / "quality.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    summary = json.loads((tmp_path / "quality_summary.json").read_text())
    assert set(summary["summary"]) == {"off", "paper"} and len(summary["summary"]["off"]["movie"]) == 3
    assert (tmp_path / "quality.png").stat().st_size > 10_000
    assert re.search(r"^off\s+1\s", out, re.MULTILINE) and re.search(r"^paper\s+1\s", out, re.MULTILINE)

    again = run_script("quality.py", "--quick", "--out", str(tmp_path), "--resume", timeout=600)
    assert "[1/2]" not in again and "[2/2]" not in again  # both runs were already there
    assert len((tmp_path / "quality_runs.jsonl").read_text().splitlines()) == 2


def test_settings_parse_onto_a_preset_and_fail_on_a_bad_key() -> None:
    quality = load_quality()
    setting = quality.parse_setting("rel=paper,smart.epsilon_scale=relative,smart.epsilon=1e-2,teacher.half_life=0.2")
    assert setting.smart == {"epsilon_scale": "relative", "epsilon": 0.01}
    assert setting.teacher == {"half_life": 0.2}
    assert quality.parse_setting("plain=paper,teacher=off").teacher is None
    with pytest.raises(SystemExit, match="epsilon"):
        quality.parse_setting("bad=paper,smart.epsilon=-1")
    with pytest.raises(SystemExit, match="neither"):
        quality.parse_setting("bad=paper,lr=3")
