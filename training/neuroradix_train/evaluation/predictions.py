"""Metrics and plots of a set of head predictions (probabilities, thresholds, generated reports).

Shared by stage 3 (validation during training) and ``evaluate`` (a finished run); it imports
neither, so the stages and the evaluation do not import each other.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from neuroradix_train.data.findings import ABNORMAL, FINDINGS
from neuroradix_train.evaluation.labeler import ReportLabeler, agreement
from neuroradix_train.evaluation.metrics import calibration_bins, classification_report, report_metrics
from neuroradix_train.evaluation.plots import plot_calibration, plot_roc

log = logging.getLogger(__name__)

PUBLISHED_ANCHORS = {
    "CT-CLIP zero-shot macro AUROC": 0.731,
    "CT-CLIP fine-tuned macro AUROC": 0.756,
    "best reported macro AUROC": 0.83,
    "CT2Rep BLEU-1": 0.444,
    "CT2Rep METEOR": 0.402,
    "CT2Rep ROUGE-L": 0.310,
    "CT-CHAT BLEU-1": 0.395,
}
"""Published CT-RATE internal-validation numbers (see docs/training.md for the sources)."""


def head_metrics(labels: np.ndarray, probs: np.ndarray, thresholds: Optional[Sequence[float]] = None) -> dict:
    """Classification metrics of the 18 findings (first 18 columns) plus Abnormal (column 19)."""
    names = list(FINDINGS) + [ABNORMAL]
    k = min(labels.shape[1], len(names))
    rep = classification_report(labels[:, :18], probs[:, :18], FINDINGS, thresholds=thresholds[:18] if thresholds else None)
    if k > 18:
        ab = classification_report(labels[:, 18:19], probs[:, 18:19], [ABNORMAL],
                                   thresholds=thresholds[18:19] if thresholds and len(thresholds) > 18 else None)
        rep["abnormal"] = ab["per_finding"][ABNORMAL]
        rep["thresholds"] += ab["thresholds"]
    return rep


def evaluate_predictions(pred: dict, out_dir: Path, names: Sequence[str] = FINDINGS,
                         thresholds: Optional[Sequence[float]] = None) -> dict:
    """Metrics, ``metrics.json``, ``thresholds.json`` (when chosen here), predictions and plots.

    Parameters
    ----------
    pred:
        ``{"labels": [n, 19], "probabilities": [n, 19], "generated": [...], "references": [...]}``.
    thresholds:
        From validation; ``None`` chooses them on these data (this *is* the validation run).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, probs = np.asarray(pred["labels"]), np.asarray(pred["probabilities"])
    cls = head_metrics(labels, probs, thresholds)
    result: dict = {"classification": cls, "calibration_ece": calibration_bins(labels[:, :18], probs[:, :18])["ece"],
                    "anchors": PUBLISHED_ANCHORS}
    if thresholds is None:
        (out_dir / "thresholds.json").write_text(json.dumps(dict(zip(list(FINDINGS) + [ABNORMAL], cls["thresholds"])), indent=1))
    if pred.get("generated"):
        result["report"] = report_metrics(pred["generated"], pred["references"])
    labeler = ReportLabeler()
    result["labeler_agreement"] = agreement(labeler.label_many(pred["references"]), labels[:, :18])["micro"]
    aurocs = {n: v["auroc"] for n, v in cls["per_finding"].items()}
    plot_roc(labels[:, :18], probs[:, :18], FINDINGS, aurocs, out_dir / "roc.png")
    plot_calibration(labels[:, :18], probs[:, :18], out_dir / "calibration.png")
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(len(labels)):
            row = {"labels": labels[i].tolist(), "probabilities": [round(float(p), 5) for p in probs[i]],
                   "reference": pred["references"][i] if pred.get("references") else None}
            if pred.get("generated"):
                row["generated"] = pred["generated"][i]
            fh.write(json.dumps(row) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    log.info("macro AUROC %.3f (%d findings)%s", cls["macro"]["auroc"], cls["macro"]["n_findings"],
             f", CE micro F1 {result['report']['ce_micro_f1']:.3f}" if "report" in result else "")
    return result
