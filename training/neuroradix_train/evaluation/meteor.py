"""METEOR with exact and stem matching, computed offline.

``nltk.translate.meteor_score`` adds a WordNet-synonym stage whose data is a separate download
that this project never makes; this module is the same algorithm (Banerjee and Lavie 2005, with
nltk's default parameters alpha 0.9, beta 3, gamma 0.5 and nltk's greedy alignment) restricted
to two matching stages:

1. exact: identical lower-cased tokens;
2. stem: identical Porter stems (``nltk.stem.porter.PorterStemmer``, which needs no data files).

Scores are therefore equal to or slightly below nltk's (synonym matches only ever add); the
difference is documented in ``docs/training.md``. The corpus score is the mean sentence score.
``tests/training/test_metrics.py`` checks equality (1e-9) with ``nltk.translate.meteor_score`` given
a WordNet without synonyms, on the same tokens.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from neuroradix_train.evaluation.scores import tokenize

try:  # nltk's Porter stemmer is pure Python and data-free
    from nltk.stem.porter import PorterStemmer

    _STEMMER = PorterStemmer()
except ImportError:  # pragma: no cover - nltk is a training dependency
    _STEMMER = None


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    if _STEMMER is None:
        raise ImportError("METEOR needs nltk (pip install nltk) for the Porter stemmer")
    return _STEMMER.stem(word)


def _align(hyp: list[str], ref: list[str]) -> list[tuple[int, int]]:
    """nltk's greedy alignment: exact matches, then stems; each stage takes the hypothesis words
    from the last one back and matches each to the last unused reference word with the same key."""
    matches: list[tuple[int, int]] = []
    used_h: set[int] = set()
    used_r: set[int] = set()
    for key in (lambda w: w, _stem):
        positions: dict[str, list[int]] = {}
        for j, r in enumerate(ref):
            if j not in used_r:
                positions.setdefault(key(r), []).append(j)
        for i in range(len(hyp) - 1, -1, -1):
            if i in used_h:
                continue
            free = positions.get(key(hyp[i]))
            if free:
                j = free.pop()
                matches.append((i, j))
                used_h.add(i)
                used_r.add(j)
    return sorted(matches)


def _chunks(matches: list[tuple[int, int]]) -> int:
    if not matches:
        return 0
    chunks = 1
    for (h0, r0), (h1, r1) in zip(matches, matches[1:]):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return chunks


def meteor_sentence(
    hypothesis: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    """METEOR of one hypothesis against one reference (exact + stem stages)."""
    hyp, ref = tokenize(hypothesis), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    matches = _align(hyp, ref)
    m = len(matches)
    if m == 0:
        return 0.0
    precision, recall = m / len(hyp), m / len(ref)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * (_chunks(matches) / m) ** beta
    return fmean * (1 - penalty)


def meteor_corpus(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean sentence METEOR over a corpus with one reference per hypothesis."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    if not hypotheses:
        return float("nan")
    return sum(meteor_sentence(h, r) for h, r in zip(hypotheses, references)) / len(hypotheses)
