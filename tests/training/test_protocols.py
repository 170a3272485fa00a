"""The ``ct-clip`` protocol against a straight transcription of the published computation, and the
``held-out-threshold`` protocol's naming and micro row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from neuroradix_train.evaluation.metrics import classification_report
from neuroradix_train.evaluation.protocols import CT_CLIP, bootstrap_indices, ct_clip_finding, ct_clip_protocol

# --------------------------------------------------------------------------- the reference
# A straight transcription of CT-CLIP's src/ct_clip/scripts/bootstrap_values.py: the grid search
# for the threshold, thresholds fixed on the whole evaluated set, scikit-learn calls in a loop; the
# bootstrap resamples with replacement (the released script has those lines commented out).


def _find_threshold(probabilities, true_labels):
    best_threshold = 0
    best_roc = 10000
    for threshold in np.linspace(0, 1, 100):
        predictions = (probabilities > threshold).astype(int)
        confusion = confusion_matrix(true_labels, predictions)
        tp, tn, fp, fn = confusion[1, 1], confusion[0, 0], confusion[0, 1], confusion[1, 0]
        tp_r = tp / (tp + fn)
        fp_r = fp / (fp + tn)
        current_roc = math.sqrt(((1 - tp_r) ** 2) + (fp_r**2))
        if current_roc <= best_roc:
            best_roc = current_roc
            best_threshold = threshold
    return best_threshold


def _published_metrics(labels, predictions, thresholds):
    """Per finding: AUROC, weighted F1, accuracy, precision, recall (None when one class only)."""
    rows = []
    for i in range(labels.shape[1]):
        y, p = labels[:, i], predictions[:, i]
        if len(np.unique(y)) < 2:
            rows.append(None)
            continue
        y_pred = (p > thresholds[i]).astype(int)
        rows.append(
            [
                roc_auc_score(y, p),
                f1_score(y, y_pred, average="weighted"),
                accuracy_score(y, y_pred),
                precision_score(y, y_pred, zero_division=0),
                recall_score(y, y_pred, zero_division=0),
            ]
        )
    return rows


def _published_bootstrap(labels, predictions, n_bootstrap, seed):
    thresholds = [
        _find_threshold(predictions[:, i], labels[:, i]) if len(np.unique(labels[:, i])) == 2 else None
        for i in range(labels.shape[1])
    ]
    point = _published_metrics(labels, predictions, thresholds)
    rng = np.random.RandomState(seed)
    means = []
    for _ in range(n_bootstrap):
        idx = rng.choice(len(labels), len(labels), replace=True)
        rows = [r for r in _published_metrics(labels[idx], predictions[idx], thresholds) if r is not None]
        means.append(np.mean(rows, axis=0))
    means = np.array(means)
    ci = np.percentile(means, [2.5, 97.5], axis=0)
    return point, np.mean([r for r in point if r is not None], axis=0), ci


@pytest.fixture(scope="module")
def synthetic_set():
    """200 scans, 6 findings: informative, uninformative, rounded scores (ties), a rare and an all-negative finding."""
    rng = np.random.default_rng(16)
    n = 200
    y = np.stack([rng.random(n) < q for q in (0.3, 0.5, 0.2, 0.04, 0.0, 0.6)], axis=1).astype(int)
    s = np.clip(y * rng.uniform(0.1, 0.5, (n, 6)) + rng.uniform(0, 0.6, (n, 6)), 0, 1)
    s[:, 1] = rng.random(n)
    s[:, 2] = np.round(s[:, 2], 1)  # many ties
    return y, s


def test_ct_clip_protocol_equals_the_published_computation(synthetic_set):
    y, s = synthetic_set
    names = [f"f{j}" for j in range(y.shape[1])]
    ours = ct_clip_protocol(y, s, names, n_bootstrap=60, seed=3)
    point, mean, ci = _published_bootstrap(y, s, 60, 3)
    metrics = ("auroc", "f1_weighted", "accuracy", "precision", "recall")
    for j, name in enumerate(names):
        if point[j] is None:
            assert all(math.isnan(ours["per_finding"][name][m]) for m in metrics)
            continue
        assert [ours["per_finding"][name][m] for m in metrics] == pytest.approx(point[j], abs=1e-9)
        assert ours["per_finding"][name]["threshold"] == _find_threshold(s[:, j], y[:, j])
    assert [ours["mean"][m] for m in metrics] == pytest.approx(list(mean), abs=1e-9)
    assert [ours["mean"]["ci"][m][0] for m in metrics] == pytest.approx(list(ci[0]), abs=1e-9)
    assert [ours["mean"]["ci"][m][1] for m in metrics] == pytest.approx(list(ci[1]), abs=1e-9)
    assert ours["protocol"] == CT_CLIP and ours["mean"]["n_findings"] == 5 and ours["n_bootstrap"] == 60
    assert ours["mean"]["ci"]["auroc"][0] < ours["mean"]["auroc"] < ours["mean"]["ci"]["auroc"][1]


def test_weighted_f1_is_not_positive_class_f1(synthetic_set):
    """The two protocols report different quantities: weighted F1 runs above positive-class F1 on rare findings."""
    y, s = synthetic_set
    j = 3  # 4 % prevalence
    published = ct_clip_finding(y[:, j], s[:, j])
    y_pred = s[:, j] > published["threshold"]
    assert published["f1_weighted"] == pytest.approx(f1_score(y[:, j], y_pred, average="weighted"), abs=1e-12)
    assert published["f1_weighted"] > f1_score(y[:, j], y_pred) + 0.2


def test_bootstrap_indices_are_seeded():
    a, b = bootstrap_indices(50, 5, seed=1), bootstrap_indices(50, 5, seed=1)
    assert a.shape == (5, 50) and (a == b).all() and not (a == bootstrap_indices(50, 5, seed=2)).all()
    with pytest.raises(ValueError):
        bootstrap_indices(0)


def test_held_out_threshold_report_names_protocol_and_source(synthetic_set):
    y, s = synthetic_set
    names = [f"f{j}" for j in range(y.shape[1])]
    chosen = classification_report(y, s, names)
    assert chosen["protocol"] == "held-out-threshold" and chosen["thresholds_from"].startswith("these data")
    reused = classification_report(y, s, names, thresholds=[0.5] * 6)
    assert reused["thresholds_from"] == "the validation split"
    pred = s >= 0.5
    assert reused["micro"]["f1"] == pytest.approx(f1_score(y.ravel(), pred.ravel()), abs=1e-12)
    assert reused["micro"]["auroc"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()), abs=1e-12)
    positive_f1 = [f1_score(y[:, j], pred[:, j]) for j in range(6) if j != 4]
    assert reused["macro"]["f1"] == pytest.approx(np.mean(positive_f1), abs=1e-12)
    with pytest.raises(ValueError, match="thresholds"):
        classification_report(y, s, names, thresholds=[0.5] * 5)
