"""Token-level data without a tokenizer: tagged words and prompt/response pairs as read, named and split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_smart.data import DataError, SFTDataConfig, TaggingDataConfig
from lightning_smart.data.token_level import load_prompt_responses, load_tagged


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_tags_are_named_from_every_split_given(tmp_path: Path) -> None:
    """B-LOC appears in the validation file only: it is a tag all the same."""
    train = _jsonl(tmp_path / "train.jsonl", [{"words": ["Who", "wrote", "it"], "tags": ["B-WH", "O", "O"]}] * 8)
    val = _jsonl(tmp_path / "val.jsonl", [{"words": ["Paris", "?"], "tags": ["B-LOC", "O"]}])
    splits, stats = load_tagged(TaggingDataConfig(path=str(train), val_path=str(val), test_size=0))
    assert stats["tags"] == stats["label_names"] == ["B-LOC", "B-WH", "O"] and stats["label_names_inferred"] is True
    assert (stats["train"], stats["val"]) == (8, 1) and splits.val.labels == [["B-LOC", "O"]]


def test_label_names_order_the_tags_and_refuse_an_unknown_one(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "t.jsonl", [{"words": ["Who", "?"], "tags": ["B-WH", "O"]}] * 4)
    _, stats = load_tagged(TaggingDataConfig(path=str(train), val_size=1, test_size=0, label_names=["O", "B-WH"]))
    assert stats["tags"] == ["O", "B-WH"] and stats["label_names_inferred"] is False
    with pytest.raises(DataError) as raised:
        load_tagged(TaggingDataConfig(path=str(train), val_size=1, test_size=0, label_names=["O"]))
    assert str(raised.value) == f"tags ['B-WH'] are not in data.label_names=['O'] (the first at {train} line 1)"


# Each malformed row of a tagging file, and the error's exact message ({file} stands for its path).
BAD_TAGGED = {
    "numeric-tag": ({"words": ["Paris", "is", "big"], "tags": ["B-LOC", 0, "O"]},
                    "{file} line 2: tag 0 of word 2 in 'tags' (data.label_column) is not a tag name: tags are strings"
                    " such as 'B-PER' or 'O'"),
    "null-tag": ({"words": ["Paris"], "tags": [None]},
                 "{file} line 2: tag None of word 1 in 'tags' (data.label_column) is not a tag name: tags are strings"
                 " such as 'B-PER' or 'O'"),
    "too-few-tags": ({"words": ["Paris", "is"], "tags": ["B-LOC"]},
                     "{file} line 2: 'tags' (data.label_column) has 1 tag for 2 words: one tag per word"),
    "tags-not-a-list": ({"words": ["Paris"], "tags": "B-LOC"},
                        "{file} line 2: 'tags' (data.label_column) is 'B-LOC': a list of tags, one per word"),
    "no-words": ({"words": [], "tags": []},
                 "{file} line 2: 'words' (data.text_column) is []: a list of one word or more"),
    "words-a-string": ({"words": "Paris is big", "tags": ["O"]},
                       "{file} line 2: 'words' (data.text_column) is 'Paris is big': a list of one word or more"),
    "empty-word": ({"words": ["Paris", ""], "tags": ["B-LOC", "O"]},
                   "{file} line 2: word 2 in 'words' (data.text_column) is '': each word is a string that is not"
                   " empty"),
    "no-tags-column": ({"words": ["Paris"], "labels": ["B-LOC"]},
                       "{file} line 2 has no column 'tags' (data.label_column); its columns: 'words', 'labels'"),
}


@pytest.mark.parametrize("case", list(BAD_TAGGED))
def test_a_malformed_tagged_row_is_named(case: str, tmp_path: Path) -> None:
    row, message = BAD_TAGGED[case]
    path = _jsonl(tmp_path / "t.jsonl", [{"words": ["Who", "?"], "tags": ["B-WH", "O"]}, row])
    with pytest.raises(DataError) as raised:
        load_tagged(TaggingDataConfig(path=str(path), val_size=1, test_size=0))
    assert str(raised.value) == message.replace("{file}", str(path))


def test_prompt_response_files_are_read_and_an_empty_response_refused(tmp_path: Path) -> None:
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(10)]
    splits, stats = load_prompt_responses(SFTDataConfig(source="jsonl", path=str(_jsonl(tmp_path / "p.jsonl", rows)),
                                                        val_size=2, test_size=0))
    assert stats["train"] == 8 and all(p.replace("question", "answer") == r
                                       for p, r in zip(splits.train.texts, splits.train.pairs or [], strict=True))
    path = _jsonl(tmp_path / "bad.jsonl", [*rows, {"prompt": "question", "response": ""}])
    with pytest.raises(DataError) as raised:
        load_prompt_responses(SFTDataConfig(source="jsonl", path=str(path)))
    assert str(raised.value) == f"{path} line 11: the text in column 'response' (data.response_column) is empty"
