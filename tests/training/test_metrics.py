"""Metrics against hand-computed values and against the standard libraries (scikit-learn, nltk,
rouge-score, pycocoevalcap's formulas written out) on random and edge-case inputs, to 1e-9."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from sklearn.metrics import precision_recall_fscore_support

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


# --------------------------------------------------------------------------- equality with the standard libraries

WORDS = (
    "no pleural effusion was detected in the thorax nodule nodules emphysema consolidation right left lobe lung".split()
)


def _random_text(rng, lo=0, hi=14):
    return " ".join(rng.choice(WORDS, size=rng.integers(lo, hi)))


def _binary_cases():
    rng = np.random.default_rng(7)
    cases = [(rng.integers(0, 2, 50), rng.integers(0, 2, 50)) for _ in range(20)]
    cases += [
        (np.zeros(10, int), rng.integers(0, 2, 10)),  # all-negative finding
        (np.zeros(10, int), np.zeros(10, int)),  # nothing anywhere
        (np.ones(10, int), np.zeros(10, int)),  # all missed
        (rng.integers(0, 2, 10), np.ones(10, int)),
    ]
    return cases


def test_binary_scores_equal_sklearn():
    for y, p in _binary_cases():
        ours = metrics.binary_scores(y, p)
        pr, rc, f1, _ = precision_recall_fscore_support(y, p, average="binary", zero_division=0)
        assert [ours["precision"], ours["recall"], ours["f1"]] == pytest.approx([pr, rc, f1], abs=1e-9)
        assert ours["support"] == int(np.sum(y))


def test_auroc_with_ties_and_one_class():
    rng = np.random.default_rng(3)
    for _ in range(10):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.random(40), 1)  # many ties
        pairs = [(a, b) for a, ya in zip(s, y) if ya for b, yb in zip(s, y) if not yb]
        expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
        assert metrics.auroc(y, s) == pytest.approx(expected, abs=1e-9)
    assert math.isnan(metrics.auroc([0, 0, 0], [0.1, 0.5, 0.2]))  # all-negative finding
    assert math.isnan(metrics.auroc([], []))
    fpr, tpr, thr = metrics.roc_curve([0, 0, 1], [0.2, 0.2, 0.9])
    assert fpr.tolist() == [0, 0, 1] and tpr.tolist() == [0, 1, 1] and np.isinf(thr[0])


def _pooled_bleu(hyps, refs, max_n=4):
    """BLEU the pycocoevalcap / Papineni way (pooled clipped counts, one brevity penalty), written out."""

    def grams(t, n):
        return Counter(tuple(t[i : i + n]) for i in range(len(t) - n + 1))

    match, total, hl, rl = [0] * max_n, [0] * max_n, 0, 0
    for h, r in zip(hyps, refs):
        hl += len(h)
        rl += len(r)
        for n in range(1, max_n + 1):
            hc, rc = grams(h, n), grams(r, n)
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    bp = 1.0 if hl > rl else math.exp(1 - rl / hl)
    out = {}
    for n in range(1, max_n + 1):
        ps = [match[k] / total[k] for k in range(n)]
        out[f"bleu{n}"] = 0.0 if min(ps) == 0 else bp * math.exp(sum(math.log(p) for p in ps) / n)
    return out


def test_bleu_equals_pooled_counting():
    rng = np.random.default_rng(11)
    for _ in range(15):
        hyps = [_random_text(rng, 4, 14) for _ in range(6)]
        refs = [_random_text(rng, 1, 14) for _ in range(6)]
        ours = metrics.bleu(hyps, refs)
        ref = _pooled_bleu([metrics.tokenize(h) for h in hyps], [metrics.tokenize(r) for r in refs])
        assert [ours[k] for k in sorted(ref)] == pytest.approx([ref[k] for k in sorted(ref)], abs=1e-9)
    assert metrics.bleu([""], ["no effusion"]) == {
        "bleu1": 0.0,
        "bleu2": 0.0,
        "bleu3": 0.0,
        "bleu4": 0.0,
    }  # empty report
    assert metrics.bleu([], []) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}


def _coco_rouge_l(h, r, beta=1.2):
    """pycocoevalcap's Rouge.calc_score (one reference), written out."""
    if not h or not r:
        return 0.0
    table = [[0] * (len(r) + 1) for _ in range(len(h) + 1)]
    for i in range(1, len(h) + 1):
        for j in range(1, len(r) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if h[i - 1] == r[j - 1] else max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return ((1 + beta**2) * p * rec) / (rec + beta**2 * p)


def test_rouge_l_equals_pycocoevalcap_and_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = np.random.default_rng(5)
    hyps = [_random_text(rng) for _ in range(40)] + ["", "Pleural effusion!"]
    refs = [_random_text(rng) for _ in range(40)] + ["no effusion", ""]  # empty reports on either side
    for h, r in zip(hyps, refs):
        scores = metrics.rouge_l_scores([h], [r])
        assert scores["rouge_l"] == pytest.approx(_coco_rouge_l(metrics.tokenize(h), metrics.tokenize(r)), abs=1e-9)
        assert scores["rouge_l_f1"] == pytest.approx(scorer.score(r, h)["rougeL"].fmeasure, abs=1e-9)
    assert metrics.rouge_l(hyps, refs) == pytest.approx(
        np.mean([_coco_rouge_l(metrics.tokenize(h), metrics.tokenize(r)) for h, r in zip(hyps, refs)]), abs=1e-9
    )


class _NoSynonyms:
    """A WordNet with no synonyms: nltk's METEOR then runs the exact and stem stages only."""

    def synsets(self, *args, **kwargs):
        return []


def test_meteor_equals_nltk_without_synonyms():
    rng = np.random.default_rng(9)
    pairs = [(_random_text(rng, 1), _random_text(rng, 1)) for _ in range(60)]
    pairs += [("effusions were detected", "effusion was detected"), ("the the the", "the")]
    for h, r in pairs:
        ref = single_meteor_score(metrics.tokenize(r), metrics.tokenize(h), wordnet=_NoSynonyms())
        assert meteor_sentence(h, r) == pytest.approx(ref, abs=1e-9), (h, r)


class _EverythingLabeler:
    name = "everything"

    def label_many(self, texts):
        return np.ones((len(list(texts)), 18), dtype=np.int64)


def test_clinical_efficacy_names_its_labeler_and_takes_a_plug_in():
    gen = ["Emphysema. No pleural effusion.", "Cardiomegaly."]
    ref = ["Emphysema and pleural effusion.", "Cardiomegaly and emphysema."]
    ce = metrics.clinical_efficacy(gen, ref)
    assert ce["labeler"] == "rule"
    # rule labeler: ref positives {E, PE}, {C, E}; generated {E}, {C}: tp 2, fp 0, fn 2
    assert ce["micro"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 4}
    assert ce["macro"]["recall"] == pytest.approx((1 / 2 + 0 + 1) / 3) and ce["macro"]["n_findings"] == 3
    plug = metrics.clinical_efficacy(gen, ref, _EverythingLabeler())
    assert plug["labeler"] == "everything" and plug["micro"]["precision"] == 1.0 and plug["micro"]["support"] == 36
    rep = metrics.report_metrics(gen, ref)
    assert rep["ce_labeler"] == "rule" and rep["ce_macro_recall"] == pytest.approx(ce["macro"]["recall"])
    assert {"bleu4", "meteor", "rouge_l", "rouge_l_f1", "ce_micro_precision", "ce_macro_f1"} <= rep.keys()
