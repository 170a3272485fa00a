"""Metrics of the three stages, in plain numpy (no scikit-learn, no downloads).

* segmentation: Dice per class;
* classification (CT-RATE protocol): per-finding AUROC, and F1 / precision / recall at a
  threshold chosen per finding on the validation set, macro-averaged;
* report generation: corpus BLEU-1..4 (Papineni et al. 2002, the ``pycocoevalcap`` way:
  n-gram counts pooled over the corpus, one brevity penalty), METEOR (see :func:`meteor`),
  ROUGE-L (Lin 2004, LCS F-measure with beta 1.2 as in ``pycocoevalcap``) and clinical-efficacy
  precision / recall / F1 from :mod:`neuroradix_train.evaluation.labeler`.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Optional, Sequence

import numpy as np

from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.labeler import ReportLabeler
from neuroradix_train.evaluation.meteor import meteor_corpus
from neuroradix_train.evaluation.scores import binary_scores, tokenize

# --------------------------------------------------------------------------- segmentation


def dice_per_class(pred: np.ndarray, target: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice of each label between two integer label maps of the same shape.

    A label absent from both maps gets NaN (it is left out of means), not 1.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {target.shape}")
    out: dict[int, float] = {}
    for label in labels:
        p = pred == label
        t = target == label
        denom = int(p.sum()) + int(t.sum())
        out[int(label)] = float("nan") if denom == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denom
    return out


# --------------------------------------------------------------------------- classification


def auroc(y_true: Sequence[int], y_score: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN for one class."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i: j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: Sequence[int], y_score: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and the thresholds (descending) of a ROC curve."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.array([(s[y] >= t).sum() / n_pos for t in thresholds])
    fpr = np.array([(s[~y] >= t).sum() / n_neg for t in thresholds])
    return fpr, tpr, thresholds


def choose_threshold(y_true: Sequence[int], y_score: Sequence[float], rule: str = "youden") -> float:
    """A decision threshold chosen on validation data.

    ``rule="youden"`` maximises sensitivity + specificity - 1 (Youden's J, the rule of the CT-CLIP
    evaluation); ``rule="f1"`` maximises F1. With one class only, 0.5 is returned.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    if y.all() or (~y).all():
        return 0.5
    if rule == "youden":
        fpr, tpr, thr = roc_curve(y, s)
        best = int(np.argmax(tpr - fpr))
        return float(thr[best]) if np.isfinite(thr[best]) else float(s.max())
    if rule == "f1":
        cands = np.unique(s)
        f1s = [binary_scores(y, s >= t)["f1"] for t in cands]
        return float(cands[int(np.argmax(f1s))])
    raise ValueError(f"rule must be 'youden' or 'f1', got {rule!r}")


def classification_report(
    y_true: np.ndarray,
    y_score: np.ndarray,
    names: Sequence[str],
    thresholds: Optional[Sequence[float]] = None,
    rule: str = "youden",
) -> dict:
    """Per-finding AUROC / F1 / precision / recall and their macro means.

    Parameters
    ----------
    y_true, y_score:
        ``(n, k)`` labels and probabilities.
    names:
        The ``k`` finding names.
    thresholds:
        Thresholds chosen on validation data; when None they are chosen on these data
        (which is what "validation" means for the run that picks them).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
        raise ValueError(f"y_true {y_true.shape}, y_score {y_score.shape} and {len(names)} names do not fit")
    if thresholds is None:
        thresholds = [choose_threshold(y_true[:, j], y_score[:, j], rule) for j in range(len(names))]
    per = {}
    for j, name in enumerate(names):
        s = binary_scores(y_true[:, j], y_score[:, j] >= thresholds[j])
        s["auroc"] = auroc(y_true[:, j], y_score[:, j])
        s["threshold"] = float(thresholds[j])
        per[name] = s
    macro = {}
    for key in ("auroc", "f1", "precision", "recall"):
        vals = [per[n][key] for n in names if not math.isnan(per[n]["auroc"])]
        macro[key] = float(np.mean(vals)) if vals else float("nan")
    macro["n_findings"] = sum(1 for n in names if not math.isnan(per[n]["auroc"]))
    return {"per_finding": per, "macro": macro, "thresholds": [float(t) for t in thresholds]}


def calibration_bins(y_true: np.ndarray, y_score: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability diagram data and expected calibration error over all (scan, finding) pairs."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, n_bins - 1)
    mean_pred, frac_pos, counts = [], [], []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        counts.append(int(m.sum()))
        if m.any():
            mean_pred.append(float(s[m].mean()))
            frac_pos.append(float(y[m].mean()))
            ece += m.sum() / max(len(s), 1) * abs(s[m].mean() - y[m].mean())
        else:
            mean_pred.append(float("nan"))
            frac_pos.append(float("nan"))
    return {"edges": edges.tolist(), "mean_predicted": mean_pred, "fraction_positive": frac_pos, "counts": counts, "ece": float(ece)}


# --------------------------------------------------------------------------- report text


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..``max_n`` with one reference per hypothesis."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references):
        ht, rt = tokenize(h), tokenize(r)
        hyp_len += len(ht)
        ref_len += len(rt)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(ht, n), _ngrams(rt, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(ht) - n + 1, 0)
    bp = 1.0 if hyp_len > ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    out = {}
    for n in range(1, max_n + 1):
        precisions = [matches[k] / totals[k] if totals[k] else 0.0 for k in range(n)]
        if min(precisions) <= 0:
            out[f"bleu{n}"] = 0.0
        else:
            out[f"bleu{n}"] = bp * math.exp(sum(math.log(p) for p in precisions) / n)
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[str], beta: float = 1.2) -> float:
    """Mean sentence-level ROUGE-L F-measure (LCS based)."""
    scores = []
    for h, r in zip(hypotheses, references):
        ht, rt = tokenize(h), tokenize(r)
        lcs = _lcs(ht, rt)
        if lcs == 0:
            scores.append(0.0)
            continue
        p, rec = lcs / len(ht), lcs / len(rt)
        scores.append(((1 + beta**2) * p * rec) / (rec + beta**2 * p))
    return float(np.mean(scores)) if scores else float("nan")


def clinical_efficacy(generated: Sequence[str], reference: Sequence[str], labeler=None) -> dict:
    """CE precision / recall / F1: the labeler applied to both texts, micro- and macro-averaged.

    Macro means run over the findings positive in at least one reference report.
    """
    labeler = labeler or ReportLabeler()
    g = labeler.label_many(generated)
    r = labeler.label_many(reference)
    micro = binary_scores(r.ravel(), g.ravel())
    per = {name: binary_scores(r[:, j], g[:, j]) for j, name in enumerate(FINDINGS)}
    present = [n for n in FINDINGS if per[n]["support"] > 0]
    macro = {k: float(np.mean([per[n][k] for n in present])) if present else float("nan") for k in ("precision", "recall", "f1")}
    return {"micro": micro, "macro": macro, "per_finding": per}


def report_metrics(generated: Sequence[str], reference: Sequence[str]) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CE metrics of generated against reference reports."""
    out = bleu(generated, reference)
    out["meteor"] = meteor_corpus(generated, reference)
    out["rouge_l"] = rouge_l(generated, reference)
    ce = clinical_efficacy(generated, reference)
    out["ce_micro_f1"] = ce["micro"]["f1"]
    out["ce_macro_f1"] = ce["macro"]["f1"]
    out["ce_micro_precision"] = ce["micro"]["precision"]
    out["ce_micro_recall"] = ce["micro"]["recall"]
    return out
