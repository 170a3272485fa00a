"""``evaluate``: segmentation Dice, finding classification and report metrics, with plots.

Classification follows the CT-RATE protocol: per-finding AUROC, and F1 / precision / recall at
per-finding thresholds chosen on the validation split (``thresholds.json`` of the head run);
evaluating another split reuses those thresholds. Report metrics: BLEU-1..4, METEOR (exact +
stem, :mod:`neuroradix_train.meteor`), ROUGE-L, and clinical-efficacy P/R/F1 from the rule-based
labeler applied to generated and reference reports. The labeler's agreement with the label CSV
is reported alongside, so CE numbers can be read against the labeler's own error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .findings import ABNORMAL, FINDINGS
from .labeler import ReportLabeler, agreement
from .metrics import calibration_bins, classification_report, report_metrics

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
    from .plots import plot_calibration, plot_roc

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


def evaluate_run(cfg: dict) -> dict:
    """The ``evaluate`` command: Dice (stage-1 run), findings and reports (head run) on a split."""
    import torch

    from neuroradix.errors import ConfigError

    from . import distributed as D
    from .config import require

    e = cfg["evaluate"]
    info = D.setup(e["device"])
    out = Path(require(cfg, "evaluate.out_dir"))
    result: dict = {"split": e["split"]}
    if e.get("segmentation"):
        from neuroradix.models.backbone import build_backbone
        from neuroradix.models.config import ModelConfig

        from .stage1 import prepare_cache, validate

        run = Path(e["segmentation"])
        mcfg = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
        model = build_backbone(mcfg.backbone)
        model.load_state_dict(torch.load(run / "backbone.pt", map_location="cpu", weights_only=True))
        model.to(info.device)
        scfg = {"data": dict(cfg["data"]), "train": {}}
        items = prepare_cache(scfg, e["split"], mcfg.preprocess, need_labels=True)
        dice = validate(model, items, mcfg.preprocess, info.device, e["amp"], mcfg.backbone.out_channels)
        from neuroradix.schemes import load_scheme

        scheme = load_scheme("chest-ct-43")
        dice["dice_per_class_named"] = {scheme.by_label(c).name: v for c, v in dice["dice_per_class"].items() if c <= len(scheme)}
        result["segmentation"] = dice
    if e.get("head"):
        from neuroradix.models.head import MultitaskHead
        from neuroradix.models.config import ModelConfig
        from neuroradix.models.tokenizer import load_tokenizer

        from .stage3 import EmbeddingDataset, predict, usable_rows

        run = Path(e["head"])
        mcfg = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
        head = MultitaskHead(mcfg.head, load_tokenizer(run / "tokenizer"))
        head.load_state_dict(torch.load(run / "head.pt", map_location="cpu", weights_only=True))
        head.to(info.device)
        ds = EmbeddingDataset(usable_rows(Path(require(cfg, "data.embeddings")), e["split"]))
        pred = predict(head, ds, info.device, generate=e["generate"], amp=e["amp"])
        thr_path = run / "thresholds.json"
        thresholds = None
        if thr_path.is_file() and e["split"] != cfg["data"].get("threshold_split", "valid"):
            thresholds = list(json.loads(thr_path.read_text()).values())
        result["head"] = evaluate_predictions(pred, out / "head", thresholds=thresholds)
    if not (e.get("segmentation") or e.get("head")):
        raise ConfigError("evaluate needs evaluate.segmentation (a stage-1 run) and/or evaluate.head (a stage-3 run)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def labeler_agreement_on(root: Path, split: str) -> dict:
    """Agreement of the rule-based labeler with CT-RATE's label CSV on a split of a dataset."""
    from .data import load_records

    recs = [r for r in load_records(root, split, require_labels=False) if r.labels is not None and r.report]
    lab = ReportLabeler().label_many([r.report for r in recs])
    return agreement(lab, np.stack([r.labels for r in recs]))
