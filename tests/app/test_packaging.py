"""The wheel: built without a warning, it carries the config tree and ``py.typed``, and its ``smart-train`` trains
from another folder with nothing of the checkout on the path."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.app import TINY

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_the_wheel_builds_without_warnings_and_its_smart_train_runs_outside_the_checkout(tmp_path: Path) -> None:
    # Offline: the environment's setuptools and build (the dev extra pins both). Byte-compiling is switched on as it
    # is by default, so that setuptools has nothing to warn about but the project itself.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
                            str(ROOT)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    log = built.stdout + built.stderr
    assert "warning" not in log.lower() and "deprecat" not in log.lower(), log
    (wheel,) = tmp_path.glob("lightning_smart-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode())
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    shipped = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"lightning_smart/conf/{name}" for name in shipped} <= names
    assert {"lightning_smart/py.typed", "lightning_smart/app/cli.py"} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert dict(entry_points["console_scripts"]) == {
        "smart-train": "lightning_smart.app.cli:main", "smart-aggregate": "lightning_smart.app.sweep:aggregate_main"}

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed script, as pip wrote it, with the wheel's files ahead of the checkout's editable install.
    script = ["import lightning_smart", "print(lightning_smart.__file__)",
              *(site / "bin" / "smart-train").read_text().splitlines()[1:]]
    run = subprocess.run([sys.executable, "-c", "\n".join(script), *TINY, "data.test_size=0",
                          "hydra.run.dir=run"], cwd=elsewhere, capture_output=True, text=True, timeout=600,
                         env={**env, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(site / "lightning_smart" / "__init__.py")), run.stdout
    assert (elsewhere / "run" / "summary.json").is_file() and (elsewhere / "run" / "model" / "config.json").is_file()
