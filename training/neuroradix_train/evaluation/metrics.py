"""Metrics of the three stages; the standard ones come from the standard libraries.

* segmentation: Dice per class;
* classification: AUROC and ROC curves from scikit-learn (``roc_auc_score``, ``roc_curve``);
  F1 / precision / recall at per-finding thresholds (:func:`classification_report`, the
  ``held-out-threshold`` protocol; the ``ct-clip`` protocol is in
  :mod:`neuroradix_train.evaluation.protocols`); :func:`~neuroradix_train.evaluation.scores.binary_scores`
  is tested equal to scikit-learn's ``precision_recall_fscore_support(zero_division=0)``;
* report generation: corpus BLEU-1..4 from nltk (``corpus_bleu``: n-gram counts pooled over the
  corpus, one brevity penalty, as ``pycocoevalcap``), ROUGE-L from ``rouge-score`` (the LCS
  precision and recall; :func:`rouge_l` combines them with beta 1.2 as ``pycocoevalcap`` does,
  ``rouge_l_f1`` is rouge-score's own F1), METEOR (exact + stem, offline:
  :mod:`neuroradix_train.evaluation.meteor`) and clinical-efficacy precision / recall / F1 from a
  report labeler (:mod:`neuroradix_train.evaluation.labeler`).

All report metrics read the same tokens (:func:`~neuroradix_train.evaluation.scores.tokenize`:
lower-case alphanumeric words, which is also rouge-score's default tokenizer).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional, Sequence

import numpy as np
from nltk.translate.bleu_score import corpus_bleu
from numpy.typing import ArrayLike
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.labeler import Labeler, ReportLabeler
from neuroradix_train.evaluation.meteor import meteor_corpus
from neuroradix_train.evaluation.scores import binary_scores, tokenize

HELD_OUT_THRESHOLD = "held-out-threshold"
"""Name of this project's classification protocol (thresholds from validation, positive-class F1)."""

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


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``); NaN when only one class is present."""
    y = np.asarray(y_true).astype(int)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(y_score, dtype=np.float64)))


def roc_curve(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and the thresholds (descending, ``inf`` first) of a ROC curve.

    scikit-learn's ``roc_curve`` with every distinct score kept (``drop_intermediate=False``).
    """
    y = np.asarray(y_true).astype(int)
    with warnings.catch_warnings():  # one class only: sklearn warns and returns NaN rates
        warnings.simplefilter("ignore")
        fpr, tpr, thr = _sk_roc_curve(y, np.asarray(y_score, dtype=np.float64), drop_intermediate=False)
    return np.nan_to_num(fpr), np.nan_to_num(tpr), thr


def choose_threshold(y_true: ArrayLike, y_score: ArrayLike, rule: str = "youden") -> float:
    """A decision threshold chosen on validation data.

    Parameters
    ----------
    y_true, y_score:
        Binary labels and scores of one finding.
    rule:
        ``"youden"`` maximises sensitivity + specificity - 1 (Youden's J); ``"f1"`` maximises the
        positive-class F1. With one class only, 0.5 is returned.

    Returns
    -------
    float
        The threshold; a case is positive when its score is ``>=`` it.
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
    """The ``held-out-threshold`` protocol: per-finding AUROC / F1 / precision / recall, macro and micro.

    F1, precision and recall are those of the positive class at each finding's threshold. Macro
    means run over the findings with both classes present; the micro row pools every
    (scan, finding) decision (and its AUROC pools every (scan, finding) score).

    Parameters
    ----------
    y_true, y_score:
        ``(n, k)`` labels and probabilities.
    names:
        The ``k`` finding names.
    thresholds:
        Thresholds chosen on the validation split; when None they are chosen on these data
        (which is what "validation" means for the run that picks them; ``thresholds_from`` says so).
    rule:
        Threshold rule when they are chosen here (:func:`choose_threshold`).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
        raise ValueError(f"y_true {y_true.shape}, y_score {y_score.shape} and {len(names)} names do not fit")
    chosen_here = thresholds is None
    if thresholds is None:
        thresholds = [choose_threshold(y_true[:, j], y_score[:, j], rule) for j in range(len(names))]
    if len(thresholds) != len(names):
        raise ValueError(f"thresholds: {len(thresholds)} values for {len(names)} findings")
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
    decisions = y_score >= np.asarray(thresholds, dtype=np.float64)[None, :]
    micro = binary_scores(y_true.ravel(), decisions.ravel())
    micro["auroc"] = auroc(y_true.ravel(), y_score.ravel())
    return {
        "protocol": HELD_OUT_THRESHOLD,
        "thresholds_from": f"these data ({rule})" if chosen_here else "the validation split",
        "per_finding": per,
        "macro": macro,
        "micro": micro,
        "thresholds": [float(t) for t in thresholds],
    }


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
    return {
        "edges": edges.tolist(),
        "mean_predicted": mean_pred,
        "fraction_positive": frac_pos,
        "counts": counts,
        "ece": float(ece),
    }


# --------------------------------------------------------------------------- report text


def bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..``max_n`` with one reference per hypothesis (nltk's ``corpus_bleu``, no smoothing).

    A corpus with no matching n-gram of some order scores 0 for that BLEU-n (nltk returns a
    value below 1e-70 there and warns; it is reported as 0).
    """
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r)] for r in references]
    out = {}
    for n in range(1, max_n + 1):
        with warnings.catch_warnings():  # nltk warns about zero n-gram overlaps
            warnings.simplefilter("ignore")
            value = float(corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n))) if hyps else 0.0
        out[f"bleu{n}"] = value if value > 1e-12 else 0.0
    return out


_ROUGE = RougeScorer(["rougeL"], use_stemmer=False, tokenizer=None)


def rouge_l_scores(hypotheses: Sequence[str], references: Sequence[str], beta: float = 1.2) -> dict[str, float]:
    """Mean sentence ROUGE-L from ``rouge-score``: F-beta (``pycocoevalcap``'s beta 1.2) and rouge-score's F1.

    Returns
    -------
    dict
        ``rouge_l`` (LCS F-measure with ``beta``, the number report-generation papers quote
        from pycocoevalcap), ``rouge_l_f1`` (rouge-score's ``fmeasure``), ``rouge_l_precision``
        and ``rouge_l_recall``. An empty hypothesis or reference scores 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    if not hypotheses:
        nan = float("nan")
        return {"rouge_l": nan, "rouge_l_f1": nan, "rouge_l_precision": nan, "rouge_l_recall": nan}
    fb, f1, ps, rs = [], [], [], []
    for h, r in zip(hypotheses, references):
        s = _ROUGE.score(" ".join(tokenize(r)), " ".join(tokenize(h)))["rougeL"]  # score(target, prediction)
        p, rec = s.precision, s.recall
        fb.append(((1 + beta**2) * p * rec) / (rec + beta**2 * p) if p and rec else 0.0)
        f1.append(s.fmeasure)
        ps.append(p)
        rs.append(rec)
    return {
        "rouge_l": float(np.mean(fb)),
        "rouge_l_f1": float(np.mean(f1)),
        "rouge_l_precision": float(np.mean(ps)),
        "rouge_l_recall": float(np.mean(rs)),
    }


def rouge_l(hypotheses: Sequence[str], references: Sequence[str], beta: float = 1.2) -> float:
    """Mean sentence-level ROUGE-L F-measure with ``beta`` (see :func:`rouge_l_scores`)."""
    return rouge_l_scores(hypotheses, references, beta)["rouge_l"]


def clinical_efficacy(generated: Sequence[str], reference: Sequence[str], labeler: Optional[Labeler] = None) -> dict:
    """CE precision / recall / F1: one labeler applied to both texts, micro- and macro-averaged.

    Parameters
    ----------
    generated, reference:
        Generated reports and their reference reports, one each per scan.
    labeler:
        Any :class:`~neuroradix_train.evaluation.labeler.Labeler`; the rule labeler by default.

    Returns
    -------
    dict
        ``labeler`` (its name), ``micro`` and ``macro`` precision / recall / F1 and
        ``per_finding``. Macro means run over the findings positive in at least one reference report.
    """
    if len(generated) != len(reference):
        raise ValueError("generated and reference reports differ in length")
    labeler = labeler or ReportLabeler()
    g = labeler.label_many(generated)
    r = labeler.label_many(reference)
    micro = binary_scores(r.ravel(), g.ravel())
    per = {name: binary_scores(r[:, j], g[:, j]) for j, name in enumerate(FINDINGS)}
    present = [n for n in FINDINGS if per[n]["support"] > 0]
    macro = {
        k: float(np.mean([per[n][k] for n in present])) if present else float("nan")
        for k in ("precision", "recall", "f1")
    }
    macro["n_findings"] = len(present)
    return {"labeler": labeler.name, "micro": micro, "macro": macro, "per_finding": per}


def report_metrics(generated: Sequence[str], reference: Sequence[str], labeler: Optional[Labeler] = None) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CE metrics (micro and macro, with the labeler's name)."""
    out: dict = dict(bleu(generated, reference))
    out["meteor"] = meteor_corpus(generated, reference)
    out.update(rouge_l_scores(generated, reference))
    ce = clinical_efficacy(generated, reference, labeler)
    out["ce_labeler"] = ce["labeler"]
    for avg in ("micro", "macro"):
        for key in ("f1", "precision", "recall"):
            out[f"ce_{avg}_{key}"] = ce[avg][key]
    return out
