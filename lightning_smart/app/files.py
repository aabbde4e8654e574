"""Files and folders replaced whole: what a reader (or a resume after a crash) sees is the old content or the new."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file or a folder to, renamed onto ``path`` when the block ends
    without error.

    The rename is atomic (same folder, ``os.replace``): a reader never sees half a file, and a crash while writing
    leaves the previous ``path`` whole. A folder replaces the old one, which is removed just before the rename. The
    temporary name keeps the suffix, for writers that read the format from it.
    """
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that a reader never sees half a file: a temporary file, then an atomic rename."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
