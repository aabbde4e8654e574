"""The data config: one dataclass per kind of data, checked when made; the data modules take it, by value or by its
settings, and LightningCLI builds it from the command line."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_smart.data import (
    DataError,
    SFTDataConfig,
    SFTDataModule,
    TaggingDataConfig,
    TaggingDataModule,
    TextDataConfig,
    TextDataModule,
)


def test_keyword_construction_is_construction_from_the_config() -> None:
    by_name = TextDataModule(source="trec", num_labels=6, train_size=500, ood=())
    by_config = TextDataModule(TextDataConfig(source="trec", num_labels=6, train_size=500))
    assert by_name.config == by_config.config == TextDataConfig(source="trec", num_labels=6, train_size=500)
    assert dict(by_name.hparams) == asdict(by_config.config)  # what save_hyperparameters records: the settings
    replaced = TextDataModule(by_config.config, train_size=100)  # a config and settings: the settings replace
    assert replaced.config.train_size == 100 and by_config.config.train_size == 500


@pytest.mark.parametrize(("module", "given", "message"), [
    (TextDataModule, "movies", "TextDataModule takes a TextDataConfig (or its settings by name, e.g. source='movies'),"
                               " not 'movies'"),
    (SFTDataModule, TextDataConfig(), "SFTDataModule takes a SFTDataConfig (or its settings by name, e.g."
                                      " source='movies'), not TextDataConfig("),
])
def test_a_module_refuses_what_is_not_its_config(module: type, given: object, message: str) -> None:
    with pytest.raises(TypeError) as raised:
        module(given)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(("config", "settings", "message"), [
    (SFTDataConfig, {"text_column": "question"}, "data.text_column='question' does not apply to data=sft: the fields"
                                                 " are data.prompt_column and data.response_column"),
    (SFTDataConfig, {"label_names": ["a", "b"]}, "data.label_names=['a', 'b'] does not apply to data=sft: a causal"
                                                 " LM predicts its vocabulary; leave it null"),
    (SFTDataConfig, {"ood": ["tweets"]}, "data.ood=['tweets'] does not apply to data=sft: out-of-domain sets are the"
                                         " sentiment snippets (sequence classification)"),
    (TaggingDataConfig, {"path": "t.jsonl", "text_pair_column": "b"},
     "data.text_pair_column='b' does not apply to data=tokens: a tagged example is one list of words"),
    (TaggingDataConfig, {"path": "t.jsonl", "hub_subset": "conll"},
     "data.hub_subset='conll' does not apply to data=tokens: token-level data are read from data.source's files, not"
     " from the Hub"),
    (TaggingDataConfig, {"source": "csv", "path": "t.csv"},
     "data.source='csv' is not allowed for data=tokens: one of jsonl"),
    (TextDataConfig, {"label_names": ["neg", "neg"]}, "data.label_names=['neg', 'neg'] is not allowed: name each class"
                                                      " once"),
    (TextDataConfig, {"val_size": 1.5}, "data.val_size=1.5 is not allowed: a fraction in [0, 1) or a whole count ≥ 1"),
], ids=["sft-text-column", "sft-label-names", "sft-ood", "tags-pair", "tags-hub", "tags-source", "repeated-name",
        "val-size"])
def test_a_setting_that_does_not_apply_or_is_out_of_range_is_refused(config: type, settings: dict,
                                                                     message: str) -> None:
    with pytest.raises(DataError) as raised:
        config(**settings)
    assert str(raised.value) == message


def test_the_prompt_template_is_the_configs_and_is_checked() -> None:
    assert SFTDataModule(prompt_template="Q: {prompt}\nA: ").config.prompt_template == "Q: {prompt}\nA: "
    with pytest.raises(DataError, match=r"^data\.prompt_template='Q:' has no \{prompt\}: where the prompt goes$"):
        SFTDataConfig(prompt_template="Q:")
    with pytest.raises(DataError) as raised:
        SFTDataConfig(prompt_template="{system} {prompt}")
    assert str(raised.value) == ("data.prompt_template='{system} {prompt}' is not allowed: {prompt} is its only field;"
                                 " write a brace of the text twice ({{ or }})")
    assert SFTDataConfig(prompt_template="{{json}} {prompt}").prompt_template == "{{json}} {prompt}"


@pytest.mark.parametrize(("module", "args", "expected"), [
    (TextDataModule, ["--data.config.source=trec", "--data.config.num_labels=6", "--data.config.train_size=50"],
     TextDataConfig(source="trec", num_labels=6, train_size=50)),
    (SFTDataModule, ["--data.config.prompt_column=question"], SFTDataConfig(prompt_column="question")),
    (TaggingDataModule, ["--data.config.path=t.jsonl"], TaggingDataConfig(path="t.jsonl")),
])
def test_lightning_cli_builds_the_config_from_its_type_hint(module: type, args: list[str],
                                                            expected: TextDataConfig) -> None:
    """jsonargparse reads the constructor's type hint: each key of the dataclass is a ``--data.config.*`` option."""
    cli = LightningCLI(BoringModel, module, run=False, args=args, save_config_callback=None,
                       trainer_defaults={"logger": False, "enable_checkpointing": False})
    assert type(cli.datamodule) is module and cli.datamodule.config == expected


def test_lightning_cli_refuses_a_bad_value_naming_the_key() -> None:
    """The config checks itself when jsonargparse builds it, before any training."""
    with pytest.raises(ValueError) as raised:
        LightningCLI(BoringModel, TextDataModule, run=False, args=["--data.config.source=imdb"],
                     save_config_callback=None)
    assert "data.source='imdb' is not allowed: one of movies" in str(raised.value)
