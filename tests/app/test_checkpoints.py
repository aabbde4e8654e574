"""How a distributed checkpoint's folder is published under its name (:func:`publish`), on real folders; the sharded
runs that write them, killed in the middle of a save and resumed, are in ``tests/test_fsdp.py``."""

from __future__ import annotations

import os
from pathlib import Path

from lightning_smart.app.checkpoints import publish, shards_folder


def _written(folder: Path, step: int) -> Path:
    """A folder as a complete save leaves it (its shards and Lightning's ``meta.pt``), marked with ``step``."""
    folder.mkdir()
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp"):
        (folder / name).write_bytes(b"shard")
    (folder / "meta.pt").write_text(str(step))
    return folder


def test_last_ckpt_is_a_link_replaced_whole_at_each_save(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    publish(_written(shards_folder(last, 2), 2), last, link=True)
    assert os.readlink(last) == ".last.step2.ckpt" and (last / "meta.pt").read_text() == "2"
    partial = shards_folder(last, 4)  # a save cut short: shards without metadata, never linked
    partial.mkdir()
    (partial / "__1_0.distcp").write_bytes(b"half")
    (tmp_path / ".last.ckpt.link").symlink_to(partial.name)  # a link made, not yet renamed onto last.ckpt
    assert shards_folder(last, 4).name == ".last.step4-1.ckpt"  # the next save at that step goes beside it
    publish(_written(shards_folder(last, 4), 4), last, link=True)
    assert os.readlink(last) == ".last.step4-1.ckpt" and (last / "meta.pt").read_text() == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.step4-1.ckpt", "last.ckpt"]


def test_a_new_name_is_the_folder_renamed_onto_it(tmp_path: Path) -> None:
    best = tmp_path / "best-step4.ckpt"
    left = tmp_path / ".best-step4.step4.ckpt"  # an earlier save of this name, cut short
    left.mkdir()
    publish(_written(shards_folder(best, 4), 4), best, link=False)
    assert not best.is_symlink() and (best / "meta.pt").read_text() == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step4.ckpt"]


def test_a_name_held_by_a_folder_of_its_own_becomes_a_link(tmp_path: Path) -> None:
    last = _written(tmp_path / "last.ckpt", 2)  # a distributed checkpoint written in place
    publish(_written(shards_folder(last, 4), 4), last, link=False)
    assert os.readlink(last) == ".last.step4.ckpt" and (last / "meta.pt").read_text() == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.step4.ckpt", "last.ckpt"]


def test_only_the_names_own_folders_are_removed(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    others = [tmp_path / name for name in (".last.step2.ckpt.bak", ".last-2.step2.ckpt", ".last.step2.step3.ckpt",
                                           "last-v1.ckpt", "step2.ckpt")]
    for other in others:
        other.mkdir()
    publish(_written(shards_folder(last, 3), 3), last, link=True)
    assert all(other.is_dir() for other in others)
