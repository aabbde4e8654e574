"""``notebooks/quickstart.ipynb`` runs top to bottom and learns, so it never rots."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient", reason="the dev extra (nbclient, ipykernel) is not installed")

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs_and_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    found = re.search(r"validation accuracy: ([\d.]+) before, ([\d.]+) after 45 SMART steps", printed)
    assert found, printed[-2000:]
    before, after = map(float, found.groups())
    assert after > before + 0.05
