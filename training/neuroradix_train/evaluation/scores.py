"""Counting scores shared by the metrics and the report labeler: binary precision / recall / F1
and the report tokenizer. Kept apart from :mod:`metrics` so the labeler and METEOR can use them
without importing the metrics that use the labeler."""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import ArrayLike


def binary_scores(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Precision, recall and F1 of binary predictions (0/0 counts as 0, as in CE metrics)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp = int((y & p).sum())
    fp = int((~y & p).sum())
    fn = int((y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": int(y.sum())}


_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case ASCII alphanumeric words; punctuation is dropped.

    The same tokens as ``rouge-score``'s default tokenizer (``pycocoevalcap``'s PTB tokenizer
    drops punctuation too), so BLEU, METEOR and ROUGE-L read one token stream.
    """
    return _TOKEN.findall((text or "").lower())
