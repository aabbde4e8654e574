r"""Character-level attacks on the raw text: TextAttack's DeepWordBug and Pruthi et al. recipes, and random typos.

The embedding-space attack (:mod:`lightning_smart.attack`) moves the very tensor SMART perturbs. These move the text a
user types: a few characters of a few words, which changes the tokenization and lands far outside any ε-ball of the
embeddings. Each recipe is TextAttack's definition (Morris et al., 2020), implemented here because TextAttack cannot
share an environment with transformers 5; ``benchmarks/textattack_reference.py`` checks both against TextAttack itself.
They are black-box (the model's class probabilities only, through ``predict``), deterministic for a seed (each
example draws its random characters from a generator seeded by the seed and its index, so the result does not depend
on which other examples are attacked with it), and batched: every candidate of one search step, of every example
still being attacked, goes through ``predict`` in one call.

- :func:`deepwordbug` (Gao et al., 2018; TextAttack's ``DeepWordBugGao2018``). Words are ranked by the score of the
  text with the word replaced by ``[UNK]``; then, in that order, each word gets the best of four edits (swap two
  neighbouring characters, substitute, delete, or insert a random letter, each at a random position), kept when it
  raises the score, until the prediction changes. No stopword is edited, no word twice, and the text stays within
  Levenshtein distance 30 of the original.
- :func:`pruthi` (Pruthi et al., 2019; ``Pruthi2019``): every typo of every word of at least 4 characters (swap two
  neighbouring characters, delete one, insert a random letter, or substitute a QWERTY neighbour, the first and last
  characters kept), at most one word per text; the best is taken.
- :func:`typos`: not adversarial: each word, with probability ``rate``, gets one random typo of Pruthi's four kinds.

The score of a text is :math:`1 - p_y`, the probability mass off the true class; an attack succeeds when the
prediction leaves :math:`y`. As in TextAttack, words are maximal runs of letters, digits and ``'-_*@`` (those four not
at a word's ends), stopwords are matched as written (NLTK's English list, lower case), and a text the model gets wrong
is skipped.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import torch
from torch import Tensor, nn

from lightning_smart.ema import eval_mode

Predict = Callable[[list[str]], Tensor]
"""The model as the attacks see it: texts → class probabilities (or logits) ``[len(texts), C]``."""

STOPWORDS = frozenset(files("lightning_smart").joinpath("stopwords_english.txt").read_text().split())
"""NLTK's English stopword list (179 words), the list TextAttack's recipes keep unedited."""

LETTERS = string.ascii_letters
"""What random characters are drawn from (TextAttack's default: lower and upper case)."""

UNK = "[UNK]"
"""What a word is replaced by to measure its importance (TextAttack's ``unk`` ranking)."""

QWERTY = {
    "q": "was", "w": "qeasd", "e": "wsdfr", "r": "edfgt", "t": "rfghy", "y": "tghju", "u": "yhjki", "i": "ujklo",
    "o": "iklp", "p": "ol", "a": "qwszx", "s": "qweadzx", "d": "werfcxs", "f": "ertgvcd", "g": "rtyhbvd",
    "h": "tyugjbn", "j": "yuikmnh", "k": "uiolmj", "l": "iopk", "z": "asx", "x": "sdzc", "c": "xdfv", "v": "cfgb",
    "b": "vghn", "n": "bhjm", "m": "njk",
}
"""Each letter's neighbours on a QWERTY keyboard, in TextAttack's order (``WordSwapQWERTY``)."""

ATTACKS = ("deepwordbug", "pruthi", "typos")

_WORD = re.compile(r"[\w'\-_*@]+")
_INNER = "'-_*@"


def word_spans(text: str) -> list[tuple[int, int]]:
    """Where the words of ``text`` are: ``(start, end)`` of each, in order.

    Example:
        >>> text = "Isn't it 'great'? -- e-mail me@x"
        >>> [text[a:b] for a, b in word_spans(text)]
        ["Isn't", 'it', 'great', 'e-mail', 'me@x']
    """
    spans = []
    for match in _WORD.finditer(text):
        start, word = match.start(), match.group()
        stripped = word.strip(_INNER)
        if stripped:
            start += len(word) - len(word.lstrip(_INNER))
            spans.append((start, start + len(stripped)))
    return spans


def words(text: str) -> list[str]:
    """The words of ``text`` (:func:`word_spans`)."""
    return [text[a:b] for a, b in word_spans(text)]


def levenshtein(a: str, b: str) -> int:
    """The edit distance between ``a`` and ``b``: insertions, deletions and substitutions of one character.

    Example:
        >>> levenshtein("kitten", "sitting"), levenshtein("ab", "ba"), levenshtein("", "abc")
        (3, 2, 3)
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


# The character edits, as TextAttack's word swaps define them: with ``rng``, one candidate at a random position
# (``random_one``); without, every candidate. ``skip_ends`` keeps the first and last characters (Pruthi's recipe).


def swap_neighbours(word: str, rng: random.Random | None = None, skip_ends: bool = False) -> list[str]:
    """Two neighbouring characters swapped (``WordSwapNeighboringCharacterSwap``).

    Example:
        >>> swap_neighbours("word"), swap_neighbours("words", skip_ends=True)
        (['owrd', 'wrod', 'wodr'], ['wrods', 'wodrs'])
    """
    start, end = (1, len(word) - 2) if skip_ends else (0, len(word) - 1)
    if len(word) <= 1 or start >= end:
        return []
    positions = [rng.randrange(start, end)] if rng else range(start, end)
    return [word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in positions]


def substitute(word: str, rng: random.Random) -> list[str]:
    """One character replaced by a random letter (``WordSwapRandomCharacterSubstitution``, random position)."""
    if len(word) <= 1:
        return []
    i = rng.randrange(len(word))
    return [word[:i] + rng.choice(LETTERS) + word[i + 1:]]


def delete(word: str, rng: random.Random | None = None, skip_ends: bool = False) -> list[str]:
    """One character deleted (``WordSwapRandomCharacterDeletion``).

    Example:
        >>> delete("word"), delete("word", skip_ends=True)
        (['ord', 'wrd', 'wod', 'wor'], ['wrd', 'wod'])
    """
    start, end = (1, len(word) - 1) if skip_ends else (0, len(word))
    if len(word) <= 1 or start >= end:
        return []
    positions = [rng.randrange(start, end)] if rng else range(start, end)
    return [word[:i] + word[i + 1:] for i in positions]


def insert(word: str, rng: random.Random, skip_ends: bool = False, every: bool = False) -> list[str]:
    """A random letter inserted before a character (``WordSwapRandomCharacterInsertion``): at one random position,
    or, with ``every``, at each position (a letter drawn for each); ``skip_ends`` inserts before neither the first
    nor the last character."""
    start, end = (1, len(word) - 1) if skip_ends else (0, len(word))
    if len(word) <= 1 or start >= end:
        return []
    positions = range(start, end) if every else [rng.randrange(start, end)]
    return [word[:i] + rng.choice(LETTERS) + word[i:] for i in positions]


def keyboard_neighbours(word: str, rng: random.Random | None = None, skip_ends: bool = False) -> list[str]:
    """One letter replaced by a neighbouring key on a QWERTY keyboard, the case kept (``WordSwapQWERTY``).

    Example:
        >>> keyboard_neighbours("Top", skip_ends=False)[:4], keyboard_neighbours("cats", skip_ends=True)
        (['Rop', 'Fop', 'Gop', 'Hop'], ['cqts', 'cwts', 'csts', 'czts', 'cxts', 'cars', 'cafs', 'cags', 'cahs', 'cays'])
    """
    start, end = (1, len(word) - 2) if skip_ends else (0, len(word) - 1)
    if len(word) <= 1 or start >= end:
        return []

    def neighbours(char: str) -> str:
        found = QWERTY.get(char.lower(), "")
        return found.upper() if char.isupper() else found

    if rng:
        i = rng.randrange(start, end + 1)
        found = neighbours(word[i])
        return [word[:i] + rng.choice(found) + word[i + 1:]] if found else []
    return [word[:i] + key + word[i + 1:] for i in range(start, end + 1) for key in neighbours(word[i])]


def deepwordbug_edits(word: str, rng: random.Random) -> list[str]:
    """DeepWordBug's candidates for a word: one of each of its four edits, each at a random position, without
    repeats or the word itself."""
    found = [*swap_neighbours(word, rng), *substitute(word, rng), *delete(word, rng), *insert(word, rng)]
    return [w for w in dict.fromkeys(found) if w != word]


def pruthi_edits(word: str, rng: random.Random) -> list[str]:
    """Pruthi et al.'s candidates for a word: every typo of the four kinds, first and last characters kept, without
    repeats or the word itself."""
    found = [*swap_neighbours(word, skip_ends=True), *delete(word, skip_ends=True),
             *insert(word, rng, skip_ends=True, every=True), *keyboard_neighbours(word, skip_ends=True)]
    return [w for w in dict.fromkeys(found) if w != word]


@dataclass(eq=False)
class Attacked:
    """One example under attack: where it started, where it is, and what it cost."""

    original: str
    label: int
    rng: random.Random
    """Its random characters: seeded by the attack's seed and the example's index."""
    text: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """The current text's words; a word keeps its index whatever an edit does to its length."""
    score: float = 0.0
    prediction: int = -1
    first_prediction: int = -1
    queries: int = 0
    changed: set[int] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    original_spans: list[tuple[int, int]] = field(init=False)
    """The original text's words, found once (the Levenshtein bound compares each edited word with its original)."""

    def __post_init__(self) -> None:
        self.original_spans = word_spans(self.original)
        self.text, self.spans = self.original, list(self.original_spans)

    @property
    def status(self) -> str:
        """``skipped`` (wrong before the attack), ``succeeded`` (the prediction changed) or ``failed``."""
        if self.first_prediction != self.label:
            return "skipped"
        return "succeeded" if self.prediction != self.label else "failed"

    @property
    def words_perturbed(self) -> float:
        """The share of the original's words the attack changed, in %."""
        return 100.0 * len(self.changed) / max(len(self.spans), 1)

    def word(self, index: int) -> str:
        start, end = self.spans[index]
        return self.text[start:end]

    def replaced(self, index: int, word: str) -> tuple[str, list[tuple[int, int]]]:
        """The current text with word ``index`` replaced by ``word``, and its word spans."""
        start, end = self.spans[index]
        shift = len(word) - (end - start)
        spans = [*self.spans[:index], (start, start + len(word)),
                 *((a + shift, b + shift) for a, b in self.spans[index + 1:])]
        return self.text[:start] + word + self.text[end:], spans


@dataclass
class Candidate:
    """A text an example could move to: word ``index`` replaced, giving ``text`` and its word ``spans``."""

    example: Attacked
    index: int
    text: str
    spans: list[tuple[int, int]]


class Scorer:
    """``predict`` over the texts of many examples at once: each text's score (:math:`1 - p_y`) and prediction, and
    each example's count of queries (a text the example has had scored before is not counted again, as TextAttack's
    cache does not count it)."""

    def __init__(self, predict: Predict) -> None:
        self.predict = predict

    def __call__(self, examples: Sequence[Attacked], texts: Sequence[str]) -> list[tuple[float, int]]:
        if not texts:
            return []
        unique = list(dict.fromkeys(texts))
        with torch.no_grad():
            outputs = self.predict(unique).float()
        probabilities = outputs if _is_distribution(outputs) else outputs.softmax(-1)
        row = {text: i for i, text in enumerate(unique)}
        found = []
        for example, text in zip(examples, texts, strict=True):
            if text not in example.seen:
                example.seen.add(text)
                example.queries += 1
            p = probabilities[row[text]]
            found.append((1.0 - float(p[example.label]), int(p.argmax())))
        return found

    def start(self, texts: Sequence[str], labels: Sequence[int], seed: int) -> list[Attacked]:
        """The examples, each scored on its original text."""
        examples = [Attacked(text, int(label), random.Random(seed * 1_000_003 + i))
                    for i, (text, label) in enumerate(zip(texts, labels, strict=True))]
        for example, (value, prediction) in zip(examples, self(examples, [e.text for e in examples]), strict=True):
            example.score, example.prediction, example.first_prediction = value, prediction, prediction
        return examples

    def step(self, candidates: Sequence[Candidate], keep: Callable[[Attacked, float], bool]) -> None:
        """Score every candidate in one call; each example moves to its best (the first of equal ones) where
        ``keep(example, score)``."""
        scored = self([c.example for c in candidates], [c.text for c in candidates])
        best: dict[int, tuple[Candidate, float, int]] = {}
        for candidate, (value, prediction) in zip(candidates, scored, strict=True):
            key = id(candidate.example)
            if key not in best or value > best[key][1]:
                best[key] = (candidate, value, prediction)
        for candidate, value, prediction in best.values():
            example = candidate.example
            if keep(example, value):
                example.text, example.spans, example.score, example.prediction = (
                    candidate.text, candidate.spans, value, prediction)
                example.changed.add(candidate.index)


def _is_distribution(outputs: Tensor) -> bool:
    return bool((outputs >= 0).all() and torch.allclose(outputs.sum(-1), torch.ones(len(outputs)), atol=1e-4))


def within_distance(example: Attacked, candidate: Candidate, max_distance: int) -> bool:
    """Whether ``candidate`` is within Levenshtein distance ``max_distance`` of ``example``'s original text.

    The edited words' distances, summed, bound the text's from above (the rest of the text is unchanged), so the
    whole texts are compared only when that sum exceeds the bound.
    """
    original = example.original_spans
    edited = example.changed | {candidate.index}
    bound = sum(levenshtein(example.original[slice(*original[i])], candidate.text[slice(*candidate.spans[i])])
                for i in edited)
    return bound <= max_distance or levenshtein(example.original, candidate.text) <= max_distance


def deepwordbug(predict: Predict, texts: Sequence[str], labels: Sequence[int], *, seed: int = 0,
                max_distance: int = 30) -> list[Attacked]:
    """DeepWordBug (Gao et al., 2018) as TextAttack's ``DeepWordBugGao2018`` defines it; one result per text.

    Args:
        predict: the model (:data:`Predict`).
        texts, labels: the examples and their true classes.
        seed: seeds each example's random characters (with its index).
        max_distance: the largest Levenshtein distance from the original text.
    """
    score = Scorer(predict)
    examples = score.start(texts, labels, seed)
    attacked = [e for e in examples if e.status == "failed"]
    # 1. The words that may be edited, ranked by the score of the text with each replaced by [UNK], highest first.
    editable = [[i for i in range(len(e.spans)) if e.word(i) not in STOPWORDS] for e in attacked]
    ranking = [(e, i) for e, indices in zip(attacked, editable, strict=True) for i in indices]
    scores = iter(score([e for e, _ in ranking], [e.replaced(i, UNK)[0] for e, i in ranking]))
    order = []
    for indices in editable:
        importance = [next(scores)[0] for _ in indices]
        order.append([i for _, i in sorted(zip(importance, indices, strict=True), key=lambda pair: -pair[0])])
    # 2. Word by word in that order: the best of the word's four edits, kept where it raises the score; an example
    # stops once its prediction has changed.
    for step in range(max(map(len, order), default=0)):
        candidates = []
        for example, ranked in zip(attacked, order, strict=True):
            if example.status != "failed" or step >= len(ranked):
                continue
            index = ranked[step]
            for word in deepwordbug_edits(example.word(index), example.rng):
                candidate = Candidate(example, index, *example.replaced(index, word))
                if within_distance(example, candidate, max_distance):
                    candidates.append(candidate)
        score.step(candidates, keep=lambda example, value: value > example.score)
    return examples


def pruthi(predict: Predict, texts: Sequence[str], labels: Sequence[int], *, seed: int = 0, min_length: int = 4,
           max_words: int = 1) -> list[Attacked]:
    """Pruthi et al. (2019) as TextAttack's ``Pruthi2019`` defines it (a greedy search over every typo); one result
    per text.

    Args:
        predict: the model (:data:`Predict`).
        texts, labels: the examples and their true classes.
        seed: seeds each example's inserted letters (with its index).
        min_length: only words of at least this many characters are edited.
        max_words: at most this many words are edited; each step edits one more, as long as the best typo of
            the step has not changed the prediction.
    """
    score = Scorer(predict)
    examples = score.start(texts, labels, seed)
    for _ in range(max_words):
        candidates = []
        for example in examples:
            if example.status != "failed":
                continue
            for index in range(len(example.spans)):
                word = example.word(index)
                if index in example.changed or len(word) < min_length or word in STOPWORDS:
                    continue
                candidates += [Candidate(example, index, *example.replaced(index, typo))
                               for typo in pruthi_edits(word, example.rng)]
        if not candidates:
            break
        score.step(candidates, keep=lambda example, value: True)  # the greedy search moves to the best, better or not
    return examples


TYPOS: tuple[Callable[[str, random.Random], list[str]], ...] = (
    lambda word, rng: swap_neighbours(word, rng),
    lambda word, rng: delete(word, rng),
    lambda word, rng: insert(word, rng),
    lambda word, rng: keyboard_neighbours(word, rng),
)
"""The typos :func:`typos` draws from: Pruthi et al.'s four kinds, anywhere in the word."""


def typos(predict: Predict, texts: Sequence[str], labels: Sequence[int], *, rate: float, seed: int = 0
          ) -> list[Attacked]:
    """Random typos, not adversarial: each word, with probability ``rate``, gets one typo of a kind drawn uniformly
    from :data:`TYPOS`, at a random position; one result per text (``succeeded``: the prediction changed).

    Args:
        predict: the model (:data:`Predict`).
        texts, labels: the examples and their true classes.
        rate: the probability that a word gets a typo, in [0, 1].
        seed: seeds each example's typos (with its index).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate!r}: a probability, in [0, 1]")
    score = Scorer(predict)
    examples = score.start(texts, labels, seed)
    noisy = []
    for example in examples:
        text, spans = example.text, example.spans
        for index in range(len(spans)):
            if example.rng.random() >= rate:
                continue
            edit = TYPOS[example.rng.randrange(len(TYPOS))]
            typo = edit(text[slice(*spans[index])], example.rng)
            if typo:
                example.text, example.spans = text, spans  # replaced() edits the current text
                text, spans = example.replaced(index, typo[0])
                example.changed.add(index)
        example.text, example.spans = text, spans
        if example.status == "failed":
            noisy.append(example)
    for example, (value, prediction) in zip(noisy, score(noisy, [e.text for e in noisy]), strict=True):
        example.score, example.prediction = value, prediction
    return examples


@dataclass(frozen=True)
class TextAttackScores:
    """What an attack did to a set of examples, as TextAttack reports it.

    Args:
        accuracy: the share of examples right after the attack (skipped ones count as wrong).
        success_rate: the share of the examples first right whose prediction the attack changed.
        words_perturbed: the mean share of words changed, in %, over the successful attacks.
        queries: the mean number of texts the model scored, per example first right.
        clean_accuracy: the share of examples right before the attack.
        n: the number of examples.
    """

    accuracy: float
    success_rate: float
    words_perturbed: float
    queries: float
    clean_accuracy: float
    n: int


def scores(results: Sequence[Attacked]) -> TextAttackScores:
    """:class:`TextAttackScores` of an attack's results.

    Example:
        >>> results = typos(lambda texts: torch.tensor([[0.9, 0.1]] * len(texts)), ["a b", "c d"], [0, 1], rate=0.5)
        >>> scores(results)
        TextAttackScores(accuracy=0.5, success_rate=0.0, words_perturbed=0.0, queries=1.0, clean_accuracy=0.5, n=2)
    """
    attacked = [r for r in results if r.status != "skipped"]
    succeeded = [r for r in attacked if r.status == "succeeded"]
    n = len(results)
    return TextAttackScores(
        accuracy=(len(attacked) - len(succeeded)) / max(n, 1),
        success_rate=len(succeeded) / max(len(attacked), 1),
        words_perturbed=sum(r.words_perturbed for r in succeeded) / max(len(succeeded), 1),
        queries=sum(r.queries for r in attacked) / max(len(attacked), 1),
        clean_accuracy=len(attacked) / max(n, 1),
        n=n,
    )


def classifier(model: nn.Module, tokenizer: Any, *, max_length: int = 128, batch_size: int = 512,
               device: torch.device | str | None = None) -> Predict:
    """A Hugging Face sequence classifier as :data:`Predict`: class probabilities of texts, the model in eval mode
    (its mode restored after) and without gradient.

    The texts are sorted by length and cut into forwards of at most ``batch_size`` (each padded to its longest):
    a search step's candidates go through in one forward when there are no more of them.

    Args:
        model: returns an output with ``.logits`` (or the logits) for the tokenizer's batch.
        tokenizer: the model's tokenizer.
        max_length: longer texts are truncated to this many tokens (the data's ``max_length``).
        batch_size: the most texts of one forward.
        device: where the model runs (default: where its first parameter is).
    """
    where = torch.device(device) if device is not None else next(model.parameters()).device

    def predict(texts: list[str]) -> Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        found: list[Tensor] = []
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = [texts[i] for i in order[start:start + batch_size]]
                batch = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
                output = model(**batch.to(where))
                logits = output.logits if hasattr(output, "logits") else output
                found.append(logits.float().softmax(-1).cpu())
        probabilities = torch.cat(found)
        result = torch.empty_like(probabilities)
        result[torch.tensor(order)] = probabilities
        return result

    return predict


def run_attack(name: str, predict: Predict, texts: Sequence[str], labels: Sequence[int], *, seed: int = 0,
               typo_rate: float = 0.1) -> list[Attacked]:
    """The attack of :data:`ATTACKS` called ``name`` (``typo_rate``: :func:`typos`' rate)."""
    if name == "deepwordbug":
        return deepwordbug(predict, texts, labels, seed=seed)
    if name == "pruthi":
        return pruthi(predict, texts, labels, seed=seed)
    if name == "typos":
        return typos(predict, texts, labels, rate=typo_rate, seed=seed)
    raise ValueError(f"{name!r} is not a text attack; the attacks are {', '.join(ATTACKS)}")


def sample(count: int, size: int | None, seed: int) -> list[int]:
    """A seeded sample of ``size`` indices of ``count`` examples, in order (every index for ``None`` or a size of at
    least ``count``).

    Example:
        >>> sample(10, 4, seed=0), sample(3, None, seed=0)
        ([0, 2, 6, 9], [0, 1, 2])
    """
    if size is None or size >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), size))


__all__ = ["ATTACKS", "QWERTY", "STOPWORDS", "TYPOS", "Attacked", "Predict", "TextAttackScores", "classifier",
           "deepwordbug", "deepwordbug_edits", "delete", "insert", "keyboard_neighbours", "levenshtein", "pruthi",
           "pruthi_edits", "run_attack", "sample", "scores", "substitute", "swap_neighbours", "typos", "word_spans",
           "words"]
