"""The method does not depend on the app: no module outside ``lightning_smart/app/`` imports it, Hydra or OmegaConf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
APP_ONLY = ("lightning_smart.app", "hydra", "omegaconf")


def imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` (a file under ``root``), relative imports resolved."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = list(package[: len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            # `from lightning_smart import app` imports the app as surely as `import lightning_smart.app` does
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def app_imports(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line imports module`` for each import of the app, Hydra or OmegaConf in ``path``."""
    return [f"{path.relative_to(root)}:{line} imports {name}" for line, name in imported(path, root)
            if any(name == top or name.startswith(top + ".") for top in APP_ONLY)]


def test_no_module_outside_the_app_imports_the_app_hydra_or_omegaconf() -> None:
    package = ROOT / "lightning_smart"
    outside = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] != "app"]
    assert len(outside) > 20  # the method, tasks/ and data/ are all read
    assert [found for path in outside for found in app_imports(path)] == []


@pytest.mark.parametrize(("statement", "module"), [
    ("import hydra", "hydra"),
    ("from omegaconf import DictConfig", "omegaconf"),
    ("from lightning_smart.app.cli import train", "lightning_smart.app.cli"),
    ("from lightning_smart import app", "lightning_smart.app"),
    ("from ..app import cli", "lightning_smart.app"),
    ("import lightning_smart.app.schema as schema", "lightning_smart.app.schema"),
    ("def f():\n    from hydra.utils import instantiate", "hydra.utils"),
])
def test_every_form_of_an_app_import_is_caught(tmp_path: Path, statement: str, module: str) -> None:
    path = tmp_path / "lightning_smart" / "tasks" / "some_task.py"
    path.parent.mkdir(parents=True)
    path.write_text(statement + "\n")
    assert f"lightning_smart/tasks/some_task.py:{statement.count(chr(10)) + 1} imports {module}" in app_imports(
        path, tmp_path)


def test_the_method_alone_imports_no_module_of_the_app() -> None:
    """The public API, tasks/, data/ and attack.py, imported in a fresh interpreter, leave the app unloaded (whether
    a dependency loads Hydra or OmegaConf is its own affair)."""
    import subprocess
    import sys

    code = ("import sys, lightning_smart, lightning_smart.tasks, lightning_smart.data, lightning_smart.attack;"
            "print(sorted(m for m in sys.modules if m.startswith('lightning_smart.app')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def long_classes(package: Path, limit: int) -> list[str]:
    """``file:Class lines`` for each class in ``package`` longer than ``limit`` lines, from ``class`` to its end."""
    return [f"{path.relative_to(package.parent)}:{node.name} {node.end_lineno - node.lineno + 1}"
            for path in sorted(package.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > limit]


def test_no_class_but_the_mixin_is_over_150_lines(tmp_path: Path) -> None:
    """A class that grows past a screenful holds more than one job; the mixin alone holds the algorithm's step."""
    mixin = "lightning_smart/module.py:SmartLightningModule "
    assert [found for found in long_classes(ROOT / "lightning_smart", 150) if not found.startswith(mixin)] == []
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "big.py").write_text("class Big:\n" + "    x = 1\n" * 150)
    assert long_classes(tmp_path / "pkg", 150) == ["pkg/big.py:Big 151"]
