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
from neuroradix_train.evaluation.labeler import Labeler, ReportLabeler, agreement
from neuroradix_train.evaluation.metrics import (
    HELD_OUT_THRESHOLD,
    calibration_bins,
    classification_report,
    report_metrics,
)
from neuroradix_train.evaluation.plots import plot_calibration, plot_roc
from neuroradix_train.evaluation.protocols import CT_CLIP, N_BOOTSTRAP, PROTOCOLS, ct_clip_protocol

logger = logging.getLogger(__name__)

PUBLISHED_ANCHORS = {
    "CT-CLIP zero-shot mean AUROC (ct-clip protocol)": 0.731,
    "CT-CLIP fine-tuned mean AUROC (ct-clip protocol)": 0.756,
    "best reported mean AUROC (protocol not recorded)": 0.83,
    "CT2Rep BLEU-1 (pycocoevalcap)": 0.444,
    "CT2Rep METEOR (pycocoevalcap, with synonyms)": 0.402,
    "CT2Rep ROUGE-L (pycocoevalcap)": 0.310,
    "CT-CHAT BLEU-1": 0.395,
}
"""Published CT-RATE internal-validation numbers, each with its protocol (sources in docs/training.md)."""


def head_metrics(labels: np.ndarray, probs: np.ndarray, thresholds: Optional[Sequence[float]] = None) -> dict:
    """``held-out-threshold`` metrics of the 18 findings (first 18 columns) plus Abnormal (column 19)."""
    names = list(FINDINGS) + [ABNORMAL]
    k = min(labels.shape[1], len(names))
    rep = classification_report(
        labels[:, :18], probs[:, :18], FINDINGS, thresholds=thresholds[:18] if thresholds else None
    )
    if k > 18:
        ab = classification_report(
            labels[:, 18:19],
            probs[:, 18:19],
            [ABNORMAL],
            thresholds=thresholds[18:19] if thresholds and len(thresholds) > 18 else None,
        )
        rep["abnormal"] = ab["per_finding"][ABNORMAL]
        rep["thresholds"] += ab["thresholds"]
    return rep


def evaluate_predictions(
    pred: dict,
    out_dir: Path,
    names: Sequence[str] = FINDINGS,
    thresholds: Optional[Sequence[float]] = None,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    n_bootstrap: int = N_BOOTSTRAP,
    labeler: Optional[Labeler] = None,
) -> dict:
    """Metrics under each named protocol, ``metrics.json``, ``thresholds.json`` (when chosen here), predictions, plots.

    Parameters
    ----------
    pred:
        ``{"labels": [n, 19], "probabilities": [n, 19], "generated": [...], "references": [...]}``.
    out_dir:
        Folder for the files (an "evaluation folder" that :mod:`~neuroradix_train.evaluation.tables` reads).
    names:
        The finding names of the first 18 columns.
    thresholds:
        From validation; ``None`` chooses them on these data (this *is* the validation run).
    protocols:
        Any of ``"held-out-threshold"`` (always computed: ``classification``) and ``"ct-clip"``
        (``classification_ct_clip``).
    n_bootstrap:
        Resamples of the ``ct-clip`` intervals (published: 1000).
    labeler:
        Report labeler of clinical efficacy (the rule labeler by default).
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"protocols: unknown {sorted(unknown)}; known {PROTOCOLS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, probs = np.asarray(pred["labels"]), np.asarray(pred["probabilities"])
    cls = head_metrics(labels, probs, thresholds)
    result: dict = {
        "protocols": [HELD_OUT_THRESHOLD] + ([CT_CLIP] if CT_CLIP in protocols else []),
        "n_cases": int(len(labels)),
        "classification": cls,
        "calibration_ece": calibration_bins(labels[:, :18], probs[:, :18])["ece"],
        "anchors": PUBLISHED_ANCHORS,
    }
    if CT_CLIP in protocols:
        result["classification_ct_clip"] = ct_clip_protocol(
            labels[:, :18], probs[:, :18], list(names)[:18], n_bootstrap=n_bootstrap
        )
    if thresholds is None:
        (out_dir / "thresholds.json").write_text(
            json.dumps(dict(zip(list(FINDINGS) + [ABNORMAL], cls["thresholds"])), indent=1)
        )
    labeler = labeler or ReportLabeler()
    if pred.get("generated"):
        result["report"] = report_metrics(pred["generated"], pred["references"], labeler)
    if pred.get("references"):
        result["labeler_agreement"] = agreement(labeler.label_many(pred["references"]), labels[:, :18])["micro"]
        result["labeler_agreement"]["labeler"] = labeler.name
    aurocs = {n: v["auroc"] for n, v in cls["per_finding"].items()}
    plot_roc(labels[:, :18], probs[:, :18], FINDINGS, aurocs, out_dir / "roc.png")
    plot_calibration(labels[:, :18], probs[:, :18], out_dir / "calibration.png")
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(len(labels)):
            row = {
                "labels": labels[i].tolist(),
                "probabilities": [round(float(p), 5) for p in probs[i]],
                "reference": pred["references"][i] if pred.get("references") else None,
            }
            if pred.get("generated"):
                row["generated"] = pred["generated"][i]
            fh.write(json.dumps(row) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    logger.info(
        "held-out-threshold: macro AUROC %.3f, macro F1 %.3f (%d findings)%s%s",
        cls["macro"]["auroc"],
        cls["macro"]["f1"],
        cls["macro"]["n_findings"],
        f"; ct-clip: weighted F1 {result['classification_ct_clip']['mean']['f1_weighted']:.3f}"
        if CT_CLIP in protocols
        else "",
        f"; CE micro F1 {result['report']['ce_micro_f1']:.3f} ({labeler.name} labeler)" if "report" in result else "",
    )
    return result
