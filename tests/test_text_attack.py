"""The text attacks (:mod:`lightning_smart.text_attack`): each edit and constraint on fixed strings, the word ranking
against a hand computation, attacks whose flipping edit is known, and seeds."""

from __future__ import annotations

import random

import pytest
import torch

from lightning_smart import text_attack as ta
from lightning_smart.text_attack import (
    STOPWORDS,
    deepwordbug,
    deepwordbug_edits,
    delete,
    insert,
    keyboard_neighbours,
    levenshtein,
    pruthi,
    pruthi_edits,
    scores,
    swap_neighbours,
    typos,
    word_spans,
    words,
)


def lexicon(weights: dict[str, float]) -> ta.Predict:
    """A black-box binary sentiment model: p(positive) = sigmoid(sum of the weights of the words present)."""

    def predict(texts: list[str]) -> torch.Tensor:
        logits = torch.tensor([sum(weights.get(w, 0.0) for w in words(t)) for t in texts], dtype=torch.float64)
        p = torch.sigmoid(logits)
        return torch.stack([1 - p, p], dim=-1)

    return predict


def test_words_are_textattacks_words() -> None:
    text = "It's a 'well-made' film -- isn't it? 10/10 @home"
    assert words(text) == ["It's", "a", "well-made", "film", "isn't", "it", "10", "10", "home"]
    assert all(text[a:b] == w for (a, b), w in zip(word_spans(text), words(text), strict=True))


def test_the_stopword_list_is_nltks_english_list() -> None:
    assert len(STOPWORDS) == 179
    assert {"the", "not", "don't", "wouldn't", "ourselves", "y"} <= STOPWORDS
    assert "movie" not in STOPWORDS and "The" not in STOPWORDS  # matched as written, as TextAttack does


def test_each_edit_on_fixed_strings() -> None:
    assert swap_neighbours("abcd") == ["bacd", "acbd", "abdc"]
    assert swap_neighbours("abcde", skip_ends=True) == ["acbde", "abdce"]
    assert delete("abcd") == ["bcd", "acd", "abd", "abc"]
    assert delete("abcd", skip_ends=True) == ["acd", "abd"]
    assert keyboard_neighbours("Qp") == ["Wp", "Ap", "Sp", "Qo", "Ql"]  # the case kept
    assert keyboard_neighbours("tops", skip_ends=True) == ["tips", "tkps", "tlps", "tpps", "toos", "tols"]
    rng = random.Random(0)
    inserted = insert("abcd", rng, skip_ends=True, every=True)
    assert [w[0] + w[2:] for w in inserted[:1]] == ["abcd"] and [w[:2] + w[3:] for w in inserted[1:]] == ["abcd"]
    assert all(len(w) == 5 and w[0] == "a" and w[-1] == "d" for w in inserted)
    assert swap_neighbours("a") == delete("a") == insert("a", rng) == []


def test_pruthi_keeps_the_first_and_last_characters_and_tries_every_typo() -> None:
    typos_of = pruthi_edits("word", random.Random(0))
    assert all(t[0] == "w" and t[-1] == "d" for t in typos_of)
    assert {"wrod", "wrd", "wod"} <= set(typos_of)  # the swap, both deletions
    assert {"wird", "wlrd", "wprd", "wkrd", "woed", "wodd", "wofd", "wogd", "wotd"} <= set(typos_of)
    assert len(typos_of) == len(set(typos_of)) and "word" not in typos_of


def test_deepwordbug_tries_one_of_each_edit_at_a_random_position() -> None:
    found = deepwordbug_edits("terrible", random.Random(3))
    assert 1 <= len(found) <= 4 and "terrible" not in found
    assert all(levenshtein("terrible", w) in (1, 2) for w in found)


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("ab", "ba") == 2
    assert levenshtein("", "abcd") == 4


def test_the_word_ranking_is_the_unk_score_computed_by_hand() -> None:
    weights = {"great": 3.0, "fun": 1.0, "plot": -0.5, "long": -0.2}
    predict = lexicon(weights)
    text = "great fun , long plot"
    # Replacing a word by [UNK] removes its weight: the score 1 - p(positive) is highest for the word that helps most.
    by_hand = {w: 1 - torch.sigmoid(torch.tensor(sum(weights.values()) - weights[w], dtype=torch.float64)).item()
               for w in weights}
    expected = sorted(weights, key=lambda w: -by_hand[w])
    assert expected == ["great", "fun", "long", "plot"]
    queried: list[list[str]] = []

    def recording(texts: list[str]) -> torch.Tensor:
        queried.append(texts)
        return predict(texts)

    result = deepwordbug(recording, [text], [1], seed=0)[0]
    ranking = queried[1]
    assert ranking == [text.replace(w, "[UNK]", 1) for w in ["great", "fun", "long", "plot"]]  # in text order
    # The first edits go to the words in the hand-computed order: "great" first.
    first_step = queried[2]
    assert all(levenshtein(t.split()[0], "great") > 0 and t.split()[1:] == text.split()[1:] for t in first_step)
    # "great" alone does not flip it (3.3 - 3 > 0); "fun", next in the ranking, does.
    assert all(levenshtein(t.split()[1], "fun") > 0 and t.split()[0] == result.text.split()[0] for t in queried[3])
    assert result.status == "succeeded" and result.changed == {0, 1}


def test_deepwordbug_flips_by_the_known_edit_and_leaves_stopwords_and_other_words() -> None:
    predict = lexicon({"great": 2.0, "the": 5.0})  # the stopword carries weight, yet may not be edited
    text = "the great show"
    result = deepwordbug(predict, [text], [1], seed=0)[0]
    assert result.status == "failed"  # "the" alone keeps it positive: the only editable words cannot flip it
    assert words(result.text)[0] == "the"
    result = deepwordbug(lexicon({"great": 2.0}), [text], [1], seed=0)[0]
    assert result.status == "succeeded"
    assert words(result.text)[0::2] == ["the", "show"] and words(result.text)[1] != "great"
    assert result.changed == {1} and result.words_perturbed == pytest.approx(100 / 3)


def test_deepwordbug_edits_each_word_once_within_the_levenshtein_bound() -> None:
    # Every word pushes positive a little: the attack must edit many, each once, until the bound stops it.
    vocabulary = [f"word{chr(97 + i)}{chr(97 + j)}" for i in range(5) for j in range(5)]
    predict = lexicon({w: 1.0 for w in vocabulary})
    text = " ".join(vocabulary)
    for bound in (30, 6):
        result = deepwordbug(predict, [text], [1], seed=1, max_distance=bound)[0]
        assert levenshtein(text, result.text) <= bound
        assert len(words(result.text)) == len(vocabulary)
        changed = [i for i, (a, b) in enumerate(zip(words(text), words(result.text), strict=True)) if a != b]
        assert changed == sorted(result.changed)
        assert all(levenshtein(a, b) <= 2 for a, b in zip(words(text), words(result.text), strict=True))
    assert result.status == "failed" and len(result.changed) <= 6  # 25 words to neutralise, distance 6


def test_pruthi_edits_one_word_of_four_characters_or_more() -> None:
    predict = lexicon({"bad": -2.0, "good": 1.0, "fine": 1.5})
    result = pruthi(predict, ["bad good fine"], [0], seed=0)[0]
    assert result.status == "skipped" and result.queries == 1
    predict = lexicon({"ok": 3.0, "good": 1.0, "fine": 1.5})
    result = pruthi(predict, ["ok good fine"], [1], seed=0)[0]
    assert words(result.text)[0] == "ok"  # shorter than 4 characters: never edited
    assert result.status == "failed" and len(result.changed) == 1  # one word at most, even though it fails
    # The best typo removes the larger weight: "fine" is the word edited.
    assert words(result.text)[1] == "good" and words(result.text)[2] != "fine"
    result = pruthi(lexicon({"ok": -0.5, "good": 1.0}), ["ok good"], [1], seed=0)[0]
    assert result.status == "succeeded" and result.changed == {1}
    # Every typo of every eligible word in one query batch: 1 query for the original, then all candidates.
    assert result.queries == 1 + len(pruthi_edits("good", random.Random(0)))


def test_the_same_seed_gives_the_same_result_and_another_seed_a_different_one() -> None:
    def predict(texts: list[str]) -> torch.Tensor:  # the random letters matter: each capital pushes negative
        p = torch.sigmoid(torch.tensor([3.0 - sum(c.isupper() for c in t) for t in texts], dtype=torch.float64))
        return torch.stack([1 - p, p], dim=-1)

    texts = ["alpha bravo charlie delta echo", "foxtrot golf hotel india juliet"]
    for attack in (deepwordbug, lambda *a, **k: typos(*a, rate=0.5, **k), pruthi):
        first = [r.text for r in attack(predict, texts, [1, 1], seed=0)]
        assert first == [r.text for r in attack(predict, texts, [1, 1], seed=0)]
        assert any(first != [r.text for r in attack(predict, texts, [1, 1], seed=s)] for s in (1, 2, 3))
    # An example's result does not depend on the others attacked with it (its generator is its seed and index).
    both = deepwordbug(predict, texts, [1, 1], seed=0)
    assert deepwordbug(predict, texts[:1], [1], seed=0)[0].text == both[0].text


def test_typos_at_a_rate() -> None:
    predict = lexicon({"good": 1.0})
    texts = [" ".join(["good"] * 40)] * 20
    results = typos(predict, texts, [1] * 20, rate=0.25, seed=0)
    edited = sum(len(r.changed) for r in results) / (40 * 20)
    assert 0.2 < edited < 0.3
    assert all(r.queries == 2 for r in results)
    with pytest.raises(ValueError, match=r"rate=1.5: a probability, in \[0, 1\]"):
        typos(predict, texts, [1] * 20, rate=1.5)


def test_scores_count_as_textattack_does() -> None:
    predict = lexicon({"good": 1.0, "nice": 0.3})
    results = deepwordbug(predict, ["good", "nice", "bad"], [1, 1, 1], seed=0)
    assert [r.status for r in results] == ["succeeded", "succeeded", "skipped"]
    found = scores(results)
    assert found.accuracy == 0.0 and found.success_rate == 1.0 and found.clean_accuracy == pytest.approx(2 / 3)
    assert found.words_perturbed == 100.0 and found.n == 3
    assert found.queries == sum(r.queries for r in results[:2]) / 2
