"""The documentation: the site builds strictly (``make docs``), documents the public API, draws its formulas offline
and shows the LightningCLI example the suite runs; the README stays a guide that points only at shipped files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_smart
import lightning_smart.data
import lightning_smart.tasks

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``make docs`` builds it: ``-W`` makes every warning an error, ``-n`` every reference into the
    package that resolves nowhere, and ``--keep-going`` reports them all at once."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html",
                            "-d", str(out / ".doctrees"), str(DOCS), str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    assert "WARNING" not in built.stderr and "ERROR" not in built.stderr, built.stderr[-4000:]
    return out


def test_the_makefile_builds_the_same_strict_site() -> None:
    shown = subprocess.run(["make", "--no-print-directory", "-n", "docs", "PYTHON=python3"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown[-1] == "python3 -m sphinx -W -n --keep-going -b html docs site"


@pytest.mark.slow
def test_every_guide_and_the_reference_are_built(site: Path) -> None:
    pages = {p.relative_to(DOCS).with_suffix(".html") for p in DOCS.rglob("*.md") if "examples" not in p.parts}
    assert {Path("index.html"), Path("algorithm.html"), Path("guides/lightning-cli.html"),
            Path("reference/index.html")} <= pages
    for page in pages:
        assert (site / page).is_file(), page


@pytest.mark.slow
def test_the_api_reference_documents_every_public_name(site: Path) -> None:
    html = (site / "reference" / "index.html").read_text(encoding="utf-8")
    public = [name for name in lightning_smart.__all__ if name != "__version__"]
    assert [name for name in public if f'id="lightning_smart.{name}"' not in html] == []
    tasks = (site / "reference" / "tasks.html").read_text(encoding="utf-8")
    assert [n for n in lightning_smart.tasks.__all__ if f'id="lightning_smart.tasks.{n}"' not in tasks] == []
    data = (site / "reference" / "data.html").read_text(encoding="utf-8")
    classes = [n for n in lightning_smart.data.__all__ if n[0].isupper() and not n.isupper()]  # not the constants
    assert [n for n in classes if f'id="lightning_smart.data.{n}"' not in data] == []
    assert 'id="lightning_smart.attack.robust_accuracy"' in (site / "reference" / "attack.html").read_text()


@pytest.mark.slow
def test_formulas_are_drawn_offline(site: Path) -> None:
    algorithm = (site / "algorithm.html").read_text(encoding="utf-8")
    assert r"\nabla_{\delta}" in algorithm and 'class="math' in algorithm
    static = site / "_static"
    assert (static / "katex" / "katex.min.css").is_file() and (static / "katex.min.js").is_file()
    assert (static / "auto-render.min.js").is_file() and list((static / "katex" / "fonts").glob("KaTeX_Main-*.woff2"))
    for page in site.rglob("*.html"):  # nothing fetched from elsewhere: no script or stylesheet by URL
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+"', page.read_text("utf-8"))
        assert remote == [], (page, remote)


@pytest.mark.slow
def test_the_lightning_cli_guide_shows_the_example_the_suite_runs(site: Path) -> None:
    guide = (DOCS / "guides" / "lightning-cli.md").read_text(encoding="utf-8")
    assert "```{literalinclude} ../examples/lightning_cli.py" in guide
    built = (site / "guides" / "lightning-cli.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", built).replace("&quot;", '"')
    assert "LightningCLI(SequenceTask, TextDataModule)" in text
    runs = (ROOT / "tests" / "tasks" / "test_lightning_cli.py").read_text(encoding="utf-8")
    assert '"docs" / "examples" / "lightning_cli.py"' in runs


def test_the_readme_is_a_guide_that_points_at_shipped_files() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "SPEC" not in readme
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local and [t for t in local if not (ROOT / t).exists()] == []
    for command in ("make train", "make test", 'python3 -m pip install -e ".[dev]"'):
        assert command in readme
