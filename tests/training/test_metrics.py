"""Metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from neuroradix_train.evaluation import metrics
from neuroradix_train.evaluation.meteor import meteor_sentence


def test_auroc_matches_pair_counting():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    pairs = [(a, b) for a, ya in zip(s, y) if ya for b, yb in zip(s, y) if not yb]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert metrics.auroc(y, s) == pytest.approx(expected)
    assert math.isnan(metrics.auroc([1, 1], [0.2, 0.3]))


def test_threshold_rules_and_report():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    assert 0.3 < metrics.choose_threshold(y, s, "youden") <= 0.6
    rep = metrics.classification_report(np.stack([y, 1 - y], 1), np.stack([s, 1 - s], 1), ["a", "b"])
    assert rep["macro"]["auroc"] == 1.0 and rep["macro"]["f1"] == 1.0


def test_dice_per_class():
    a = np.zeros((4, 4, 4), int)
    b = np.zeros((4, 4, 4), int)
    a[:2] = 1
    b[:1] = 1
    d = metrics.dice_per_class(a, b, [1, 2])
    assert d[1] == pytest.approx(2 * 16 / (32 + 16)) and math.isnan(d[2])


def test_bleu_rouge_meteor():
    ref = "no pleural effusion was detected in the thorax"
    assert metrics.bleu([ref], [ref])["bleu4"] == pytest.approx(1.0)
    assert metrics.bleu(["effusion"], [ref])["bleu2"] == 0.0
    b1 = metrics.bleu(["no effusion was detected"], [ref])["bleu1"]
    assert b1 == pytest.approx(math.exp(1 - 8 / 4))  # all 4 unigrams match; brevity penalty exp(1 - r/c)
    assert metrics.rouge_l([ref], [ref]) == pytest.approx(1.0)
    assert 0 < metrics.rouge_l(["pleural effusion detected"], [ref]) < 1
    m = meteor_sentence(ref, ref)
    assert m == pytest.approx(1 - 0.5 * (1 / 8) ** 3)  # one chunk of 8 matches
    assert meteor_sentence("effusions detected", "effusion detection") > 0  # stem matches
    assert meteor_sentence("heart", "lung") == 0.0


def test_clinical_efficacy():
    ce = metrics.clinical_efficacy(["Emphysema. No pleural effusion."], ["Emphysema and pleural effusion."])
    assert ce["micro"]["precision"] == 1.0 and ce["micro"]["recall"] == 0.5
