"""The data config: every setting of the data, its default and what is allowed, checked when it is made.

:class:`TextDataConfig` is sequence classification or regression (``data=movies``, ``trec``, ``csv``, ``jsonl``,
``hub``); :class:`SFTDataConfig` (``data=sft``) and :class:`TaggingDataConfig` (``data=tokens``) extend it with what
token-level data need, and refuse the settings that do not apply to them. The data modules take these configs, and
the app registers them with Hydra as the ``data`` node: each key is named here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lightning_smart.data.assets import DataError
from lightning_smart.data.examples import Columns
from lightning_smart.data.sources import FILE_SOURCES, FILE_SPLITS, SNIPPETS, SOURCES, TREC_CLASSES
from lightning_smart.data.splits import check_split_size

_OOD = "out-of-domain sets are the sentiment snippets (sequence classification)"


@dataclass
class TextDataConfig:
    """Text classification or regression: where the examples come from, how they are split and batched.

    Each batch is padded to its own longest sequence; splits are drawn once with ``split_seed``, so the seed is the
    record of the split. Errors are :class:`~lightning_smart.data.DataError` naming the key as ``data.<key>``.

    Args:
        source: ``movies``, ``tweets``, ``amazon``, ``nyt`` (sentiment snippets), ``trec`` (6 question
            classes), ``csv`` or ``jsonl`` (a local file), or ``hub`` (a Hugging Face dataset, needs ``datasets``).
        tokenizer: name or folder for ``AutoTokenizer``; ``None`` is the shipped all-MiniLM-L6-v2.
        num_labels: number of classes; 1 for regression (the snippets' rating instead of its sign).
        path: the file (``csv``/``jsonl``), or the dataset (``hub``): its name, or a folder saved by
            ``save_to_disk``. Splits without labels (every label −1, as GLUE's test splits) are left out.
        val_path: a separate validation file; ``None`` carves ``val_size`` out of ``path``.
        test_path: a separate test file; ``None`` carves ``test_size`` out of ``path``.
        encoding: the text encoding of ``path``, ``val_path`` and ``test_path`` (``latin-1``, ``cp1252``...).
        text_column: the text's column in files and Hub datasets.
        text_pair_column: the second text of sentence-pair tasks, or ``None``.
        label_column: the label's column.
        label_names: class names in index order, for labels that are names; ``None`` takes the names found in every
            split given, sorted (labels that are integers are class indices).
        hub_subset: the Hub dataset's configuration (e.g. ``sst2`` of ``glue``).
        hub_val_split: the Hub split used for validation; ``None`` carves ``val_size`` out of ``train``.
        hub_test_split: the Hub split used for testing; ``None`` carves ``test_size`` out of ``train``.
        max_length: longer inputs are truncated to this many tokens.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        val_size: validation split, a fraction (< 1) or a count (≥ 1).
        test_size: test split, a fraction or a count; 0 for none.
        split_seed: the seed of the split and of every subsample.
        train_size: keep this many training examples (a seeded random subset); ``None`` keeps all.
        ood: out-of-domain test sets, from ``tweets``, ``amazon``, ``nyt``, ``movies`` (sentiment tasks only).
        ood_size: keep this many examples of each out-of-domain set; ``None`` keeps all.
        num_workers: DataLoader worker processes.

    Example:
        >>> TextDataConfig(source="movies", train_size=500).test_names
        ['movies']
        >>> TextDataConfig(source="movies", batch_size=0)
        Traceback (most recent call last):
        ...
        lightning_smart.data.assets.DataError: data.batch_size=0 is not allowed: an integer ≥ 1
    """

    kind: ClassVar[str] = "sequence"
    """What the examples are: ``sequence`` (one label per text), ``sft`` or ``tokens``; the app picks the task by it."""
    sources: ClassVar[tuple[str, ...]] = SOURCES
    does_not_apply: ClassVar[dict[str, str]] = {}
    """The inherited settings this kind of data has no use for, and why: set to anything but the default, refused."""

    source: str = "movies"
    tokenizer: str | None = None
    num_labels: int | None = 2
    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    encoding: str = "utf-8"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None
    hub_subset: str | None = None
    hub_val_split: str | None = "validation"
    hub_test_split: str | None = None
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    val_size: float = 0.1
    test_size: float = 0.1
    split_seed: int = 0
    train_size: int | None = None
    ood: list[str] = field(default_factory=list)
    ood_size: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.ood = list(self.ood)
        if self.label_names is not None:
            self.label_names = [str(name) for name in self.label_names]
        for check in (_check_counts, _check_source, _check_applies):
            check(self)
        self._check()

    def _check(self) -> None:
        """What this kind of data checks beyond the common settings: here, the sources' classes and ``ood``."""
        if self.source in SNIPPETS and self.num_labels not in (1, 2):
            raise DataError(f"data.num_labels={self.num_labels} is not allowed for data.source={self.source}: 2 (the"
                            " rating's sign) or 1 (the rating, regression)")
        if self.source == "trec" and self.num_labels != len(TREC_CLASSES):
            raise DataError(f"data.num_labels={self.num_labels} is not allowed for data.source=trec: 6 (coarse"
                            " classes)")
        unknown = [name for name in self.ood if name not in SNIPPETS]
        if unknown:
            raise DataError(f"data.ood={self.ood} is not allowed: {unknown} unknown; choose from {', '.join(SNIPPETS)}")
        if self.ood and self.num_labels not in (1, 2):
            raise DataError(f"data.ood={self.ood} needs a sentiment task: data.num_labels 2 (sign) or 1 (rating),"
                            f" not {self.num_labels}")
        if len(set(self.test_names)) < len(self.test_names):
            raise DataError(f"data.ood={self.ood} repeats a test set of {self.test_names}: name each set once")

    @property
    def dataset_name(self) -> str:
        """The main data set's name: the source, the file's stem or the Hub dataset's."""
        if self.source in FILE_SOURCES:
            return Path(str(self.path)).stem
        return str(self.path).rstrip("/").split("/")[-1] if self.source == "hub" else self.source

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets, in order: the main test split (if any), then the ``ood`` sets."""
        given = self.test_path if self.source in FILE_SOURCES else self.hub_test_split if self.source == "hub" else None
        has_test = given is not None or self.test_size > 0
        return ([self.dataset_name] if has_test else []) + self.ood

    @property
    def files(self) -> dict[str, str]:
        """The files of a file source, by the setting that names each: ``path``, ``val_path``, ``test_path``."""
        if self.source not in FILE_SOURCES:
            return {}
        return {key: str(getattr(self, key)) for key in FILE_SPLITS if getattr(self, key)}

    @property
    def columns(self) -> Columns:
        """Which fields of a row hold the text, the pair and the label, and how labels are read."""
        return Columns(self.text_column, self.label_column, self.text_pair_column, int(self.num_labels or 0),
                       self.label_names)


_NOT_FROM_THE_HUB = "token-level data are read from data.source's files, not from the Hub"


@dataclass
class SFTDataConfig(TextDataConfig):
    """``data=sft``: prompt/response pairs for supervised fine-tuning of a causal LM, the loss on the response only.

    Takes :class:`TextDataConfig`'s sizes, splits and files, and:

    Args:
        source: ``moviedialog`` (shipped, offline), ``jsonl`` or ``csv`` (``path``, with ``val_path``/``test_path``).
        prompt_column: the prompt's field in files.
        response_column: the response's field.
        prompt_template: what precedes the response, ``{prompt}`` standing for the prompt (default: the prompt and a
            newline).
        num_labels: must stay ``None``: a causal LM's outputs are its vocabulary.
    """

    kind: ClassVar[str] = "sft"
    sources: ClassVar[tuple[str, ...]] = ("moviedialog", *FILE_SOURCES)
    does_not_apply: ClassVar[dict[str, str]] = {
        "num_labels": "a causal LM predicts its vocabulary; leave it null",
        "label_names": "a causal LM predicts its vocabulary; leave it null",
        **dict.fromkeys(("text_column", "text_pair_column", "label_column"),
                        "the fields are data.prompt_column and data.response_column"),
        **dict.fromkeys(("hub_subset", "hub_val_split", "hub_test_split"), _NOT_FROM_THE_HUB),
        **dict.fromkeys(("ood", "ood_size"), _OOD),
    }

    source: str = "moviedialog"
    num_labels: int | None = None
    prompt_column: str = "prompt"
    response_column: str = "response"
    prompt_template: str = "{prompt}\n"

    def _check(self) -> None:
        if "{prompt}" not in self.prompt_template:
            raise DataError(f"data.prompt_template={self.prompt_template!r} has no {{prompt}}: where the prompt goes")
        try:
            self.prompt_template.format(prompt="")
        except (KeyError, IndexError, ValueError):
            raise DataError(f"data.prompt_template={self.prompt_template!r} is not allowed: {{prompt}} is its only"
                            " field; write a brace of the text twice ({{ or }})") from None


@dataclass
class TaggingDataConfig(TextDataConfig):
    """``data=tokens``: words and their tags (``B-PER``, ``I-PER``, ``O``, ...) for token classification.

    Takes :class:`TextDataConfig`'s sizes, splits and files, with ``text_column`` the words' field (a list of strings)
    and ``label_column`` the tags' (a list of tag names, one per word).

    Args:
        source: ``jsonl`` (``path``, with ``val_path``/``test_path``).
        label_names: the tags in index order; ``None`` takes every tag in every split given, sorted.
        num_labels: ``None`` (the tags' count), or that count, checked.
    """

    kind: ClassVar[str] = "tokens"
    sources: ClassVar[tuple[str, ...]] = ("jsonl",)
    does_not_apply: ClassVar[dict[str, str]] = {
        "text_pair_column": "a tagged example is one list of words",
        **dict.fromkeys(("hub_subset", "hub_val_split", "hub_test_split"), _NOT_FROM_THE_HUB),
        **dict.fromkeys(("ood", "ood_size"), _OOD),
    }

    source: str = "jsonl"
    num_labels: int | None = None
    text_column: str = "words"
    label_column: str = "tags"


def _check_counts(config: TextDataConfig) -> None:
    """Sizes and counts: integers ≥ 1 (``None`` where optional), workers ≥ 0, split sizes."""
    optional = ("train_size", "ood_size") if config.kind == "sequence" else ("train_size", "ood_size", "num_labels")
    for key in ("max_length", "batch_size", "eval_batch_size", "train_size", "ood_size", "num_labels"):
        value = getattr(config, key)
        if value is None and key in optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"data.{key}={value!r} is not allowed: an integer ≥ 1")
    if not isinstance(config.num_workers, int) or isinstance(config.num_workers, bool) or config.num_workers < 0:
        raise DataError(f"data.num_workers={config.num_workers!r} is not allowed: an integer ≥ 0 (0: no workers)")
    check_split_size(config.val_size, "data.val_size")
    check_split_size(config.test_size, "data.test_size")


def _check_source(config: TextDataConfig) -> None:
    """The source this kind of data reads, the file or dataset it needs, the files' encoding."""
    if config.source not in config.sources:
        kind = "" if config.kind == "sequence" else f" for data={config.kind}"
        raise DataError(f"data.source={config.source!r} is not allowed{kind}: one of {', '.join(config.sources)}")
    if config.source in (*FILE_SOURCES, "hub") and not config.path:
        what = "the dataset's name" if config.source == "hub" else "the file"
        raise DataError(f"data.path is required for data.source={config.source}: {what}")
    try:
        b"a".decode(config.encoding)  # not b"": Python skips the codec's lookup for no bytes
    except UnicodeError:  # a real text encoding, which needs more than one byte (UTF-16)
        pass
    except LookupError:
        raise DataError(f"data.encoding={config.encoding!r} is not allowed: a text encoding Python knows, such as"
                        " utf-8, latin-1, cp1252 or utf-16") from None


def _check_applies(config: TextDataConfig) -> None:
    """Settings this kind of data has no use for left at their defaults; class names once each, as many as classes."""
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(config)}
    for key, why in config.does_not_apply.items():
        if getattr(config, key) != defaults[key]:
            raise DataError(f"data.{key}={getattr(config, key)!r} does not apply to data={config.kind}: {why}")
    names, count = config.label_names, config.num_labels
    if names is not None and len(set(names)) < len(names):
        raise DataError(f"data.label_names={names} is not allowed: name each class once")
    if names is not None and count is not None and len(names) != count:
        raise DataError(f"data.label_names has {len(names)} names but data.num_labels={count}")
