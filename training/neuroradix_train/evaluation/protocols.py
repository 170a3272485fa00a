"""The two named classification protocols.

``held-out-threshold`` (this project's): each finding's threshold is chosen on the validation
split (Youden's J) and applied to the evaluated split; F1, precision and recall are those of the
positive class, with macro and micro means (:func:`~neuroradix_train.evaluation.metrics.classification_report`).

``ct-clip`` (the published one): a reproduction of CT-CLIP's ``scripts/bootstrap_values.py``
(Hamamci et al., CT-RATE / CT-CLIP; ``src/ct_clip/scripts/bootstrap_values.py`` in the CT-CLIP
repository), which most later CT-RATE papers reuse:

* for each finding, the threshold is chosen once, **on the evaluated set itself**, from the grid
  ``numpy.linspace(0, 1, 100)``: the grid value whose (FPR, TPR) is closest to (0, 1) in Euclidean
  distance, the last such value on a tie (the script keeps a candidate when its distance is ``<=``
  the best so far); a case is positive when ``score > threshold`` (strictly);
* per finding, at that threshold: ``f1_score(average="weighted")`` (positive and negative class F1
  weighted by their support), ``accuracy_score``, ``precision_score`` (the positive class), and the
  AUROC; recall (positive class) is reported here too, the script does not;
* these are averaged over the findings (the 18 of CT-RATE);
* bootstrap: :data:`N_BOOTSTRAP` iterations with the thresholds held fixed. In the released script
  the resampling lines are commented out, so its 1000 iterations recompute the same numbers; here
  each iteration resamples the scans with replacement (a seeded ``RandomState``), as the comments
  in the script intend, and the 95 % interval is the 2.5th and 97.5th percentile.

A finding with one class only has no ROC curve: it is left out of the means.
``tests/training/test_protocols.py`` holds a straight scikit-learn transcription of the published
loop and checks equality to 1e-9.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from neuroradix_train.evaluation.metrics import HELD_OUT_THRESHOLD, auroc

logger = logging.getLogger(__name__)

CT_CLIP = "ct-clip"
"""Name of the published protocol."""
PROTOCOLS = (HELD_OUT_THRESHOLD, CT_CLIP)
"""Both protocol names, as reports spell them."""
N_BOOTSTRAP = 1000
"""Resamples of the published bootstrap."""
CT_CLIP_METRICS = ("auroc", "f1_weighted", "accuracy", "precision", "recall")
"""What the ``ct-clip`` protocol reports per finding and on average."""


GRID = np.linspace(0, 1, 100)
"""The published threshold candidates."""


def ct_clip_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The published threshold: the grid value closest to (FPR 0, TPR 1), the last one on a tie.

    Parameters
    ----------
    y_true, y_score:
        ``(n,)`` binary labels (both classes present) and scores of one finding.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    pred = s[None, :] > GRID[:, None]
    tp = np.count_nonzero(pred & y, axis=1)
    fp = np.count_nonzero(pred & ~y, axis=1)
    tpr = tp / np.count_nonzero(y)
    fpr = fp / np.count_nonzero(~y)
    distance = np.sqrt((1 - tpr) ** 2 + fpr**2)
    return float(GRID[np.flatnonzero(distance == distance.min())[-1]])


def ct_clip_finding(y_true: np.ndarray, y_score: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """The published per-finding numbers on one set: AUROC, weighted F1, accuracy, precision, recall.

    Parameters
    ----------
    y_true, y_score:
        ``(n,)`` binary labels and scores of one finding.
    threshold:
        The decision threshold; None chooses it on these data (:func:`ct_clip_threshold`).

    Returns
    -------
    dict
        The metrics of :data:`CT_CLIP_METRICS` and ``threshold``; all NaN when one class only is present.
    """
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    n_pos = int(y.sum())
    n = y.size
    if n_pos == 0 or n_pos == n:
        return {k: float("nan") for k in (*CT_CLIP_METRICS, "threshold")}
    if threshold is None:
        threshold = ct_clip_threshold(y, s)
    pred = s > threshold
    pos = y.astype(bool)
    tp = float(np.count_nonzero(pred & pos))
    fp = float(np.count_nonzero(pred & ~pos))
    fn = float(n_pos - tp)
    tn = float(n - n_pos - fp)
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn else 0.0
    return {
        "auroc": auroc(y, s),
        "f1_weighted": (f1_pos * n_pos + f1_neg * (n - n_pos)) / n,
        "accuracy": (tp + tn) / n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / n_pos,
        "threshold": float(threshold),
    }


def _table(y_true: np.ndarray, y_score: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``(k, len(CT_CLIP_METRICS))`` per-finding values at fixed thresholds (NaN rows for one-class findings)."""
    rows = []
    for j in range(y_true.shape[1]):
        r = ct_clip_finding(y_true[:, j], y_score[:, j], thresholds[j])
        rows.append([r[m] for m in CT_CLIP_METRICS])
    return np.asarray(rows, dtype=np.float64)


def bootstrap_indices(n: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``(n_bootstrap, n)`` resample indices: one seeded ``RandomState``, ``choice(n, n, replace=True)`` per resample."""
    if n < 1 or n_bootstrap < 0:
        raise ValueError(f"n ({n}) must be positive and n_bootstrap ({n_bootstrap}) non-negative")
    rng = np.random.RandomState(seed)
    return (
        np.stack([rng.choice(n, n, replace=True) for _ in range(n_bootstrap)]) if n_bootstrap else np.zeros((0, n), int)
    )


def _interval(values: np.ndarray) -> list[float]:
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return [float(lo), float(hi)]


def ct_clip_protocol(
    y_true: np.ndarray, y_score: np.ndarray, names: Sequence[str], *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
) -> dict:
    """The ``ct-clip`` protocol on one evaluated set (see the module docstring).

    Parameters
    ----------
    y_true, y_score:
        ``(n, k)`` labels and probabilities.
    names:
        The ``k`` finding names.
    n_bootstrap:
        Resamples for the 95 % intervals (published: 1000; 0 skips the intervals).
    seed:
        Seed of the resampling.

    Returns
    -------
    dict
        ``protocol`` (``"ct-clip"``), ``per_finding`` (metrics, threshold and ``ci`` per metric),
        ``mean`` (averaged over the findings with both classes, with ``ci`` and ``n_findings``),
        ``n_bootstrap``, ``seed``, ``n_cases``.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
        raise ValueError(f"y_true {y_true.shape}, y_score {y_score.shape} and {len(names)} names do not fit")
    per_rows = [ct_clip_finding(y_true[:, j], y_score[:, j]) for j in range(len(names))]
    point = np.asarray([[r[m] for m in CT_CLIP_METRICS] for r in per_rows], dtype=np.float64)
    thresholds = [r["threshold"] for r in per_rows]
    boots = (
        np.stack(
            [_table(y_true[idx], y_score[idx], thresholds) for idx in bootstrap_indices(len(y_true), n_bootstrap, seed)]
        )
        if n_bootstrap
        else np.zeros((0, len(names), len(CT_CLIP_METRICS)))
    )
    per = {}
    for j, name in enumerate(names):
        entry: dict[str, Any] = {m: float(point[j, i]) for i, m in enumerate(CT_CLIP_METRICS)}
        entry["threshold"] = per_rows[j]["threshold"]
        entry["ci"] = {m: _interval(boots[:, j, i]) for i, m in enumerate(CT_CLIP_METRICS)} if n_bootstrap else {}
        per[name] = entry
    valid = ~np.isnan(point[:, 0])
    mean: dict = {
        m: float(point[valid, i].mean()) if valid.any() else float("nan") for i, m in enumerate(CT_CLIP_METRICS)
    }
    mean["n_findings"] = int(valid.sum())
    if n_bootstrap:
        with np.errstate(invalid="ignore"):
            boot_means = np.array(
                [
                    [
                        np.nanmean(b[:, i]) if not np.isnan(b[:, i]).all() else np.nan
                        for i in range(len(CT_CLIP_METRICS))
                    ]
                    for b in boots
                ]
            )
        mean["ci"] = {m: _interval(boot_means[:, i]) for i, m in enumerate(CT_CLIP_METRICS)}
    logger.info(
        "ct-clip protocol: mean AUROC %.3f, weighted F1 %.3f over %d findings, %d resamples",
        mean["auroc"],
        mean["f1_weighted"],
        mean["n_findings"],
        n_bootstrap,
    )
    return {
        "protocol": CT_CLIP,
        "thresholds_from": "the evaluated set (grid point closest to (0, 1), held fixed in the bootstrap)",
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "n_cases": int(len(y_true)),
        "per_finding": per,
        "mean": mean,
    }
