"""Lightning's private names, read in ``lightning_smart/_lightning.py`` alone: each still exists in the installed
Lightning (a test per name, so a release that renames one fails here by name), and no other module reads one."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from lightning_smart import _lightning
from lightning_smart._lightning import PRIVATE_NAMES

PACKAGE = Path(_lightning.__file__).parent


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)


def lookup(name: str) -> object:
    """The object a dotted private name denotes, on an instance where it is an attribute set in ``__init__``."""
    owner_name, _, attribute = name.rpartition(".")
    instances = {
        "LightningModule": Tiny(),
        "ModelParallelStrategy": ModelParallelStrategy(),
        "ModelCheckpoint": ModelCheckpoint(),
    }
    owner = instances[owner_name] if owner_name in instances else importlib.import_module(owner_name)
    if not hasattr(owner, attribute):
        raise AssertionError(f"Lightning {pl.__version__} has no {name} ({PRIVATE_NAMES[name]}): "
                             f"lightning_smart/_lightning.py reads it; find its new name or a public API")
    return getattr(owner, attribute)


@pytest.mark.parametrize("name", sorted(PRIVATE_NAMES))
def test_each_private_name_exists_in_the_installed_lightning(name: str) -> None:
    lookup(name)


def test_the_seam_reads_what_it_names() -> None:
    module = Tiny()
    assert _lightning.attached_trainer(module) is None
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    module.trainer = trainer
    assert _lightning.attached_trainer(module) is trainer
    assert _lightning.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=True))
    assert not _lightning.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=False))
    assert not _lightning.saves_distributed_checkpoint(DDPStrategy())
    callback = ModelCheckpoint()
    assert _lightning.last_saved(callback) == (0, "")
    _lightning.mark_saved(callback, 7, "/x/last.ckpt")
    assert _lightning.last_saved(callback) == (7, "/x/last.ckpt")
    assert not _lightning.is_spawned(trainer.strategy) and not _lightning.relaunches_script(trainer.strategy)


def test_no_other_module_reads_a_private_name_of_lightning() -> None:
    attributes = {name.rpartition(".")[2] for name in PRIVATE_NAMES}
    names = "|".join(r"(?<!\w)" + re.escape(a) + r"\b" for a in sorted(attributes))
    pattern = re.compile(names + r"|from lightning[\w.]* import .*\b_[A-Za-z]")
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "_lightning.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == [], "read Lightning's private names through lightning_smart/_lightning.py"
