"""``evaluate``: segmentation Dice, finding classification and report metrics, with plots.

Classification follows the CT-RATE protocol: per-finding AUROC, and F1 / precision / recall at
per-finding thresholds chosen on the validation split (``thresholds.json`` of the head run);
evaluating another split reuses those thresholds. Report metrics: BLEU-1..4, METEOR (exact +
stem, :mod:`neuroradix_train.evaluation.meteor`), ROUGE-L, and clinical-efficacy P/R/F1 from the rule-based
labeler applied to generated and reference reports. The labeler's agreement with the label CSV
is reported alongside, so CE numbers can be read against the labeler's own error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from neuroradix.errors import ConfigError
from neuroradix.models.backbone import build_backbone
from neuroradix.models.config import ModelConfig
from neuroradix.models.head import MultitaskHead
from neuroradix.models.tokenizer import load_tokenizer
from neuroradix.schemes import load_scheme
from neuroradix_train.config import require
from neuroradix_train.data.dataset import load_records
from neuroradix_train.evaluation.labeler import ReportLabeler, agreement
from neuroradix_train.evaluation.predictions import evaluate_predictions
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.stage1 import prepare_cache, validate
from neuroradix_train.stages.stage3 import EmbeddingDataset, predict, usable_rows

log = logging.getLogger(__name__)



def evaluate_run(cfg: dict) -> dict:
    """The ``evaluate`` command: Dice (stage-1 run), findings and reports (head run) on a split."""

    e = cfg["evaluate"]
    info = D.setup(e["device"])
    out = Path(require(cfg, "evaluate.out_dir"))
    result: dict = {"split": e["split"]}
    if e.get("segmentation"):
        run = Path(e["segmentation"])
        mcfg = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
        model = build_backbone(mcfg.backbone)
        model.load_state_dict(torch.load(run / "backbone.pt", map_location="cpu", weights_only=True))
        model.to(info.device)
        scfg = {"data": dict(cfg["data"]), "train": {}}
        items = prepare_cache(scfg, e["split"], mcfg.preprocess, need_labels=True)
        dice = validate(model, items, mcfg.preprocess, info.device, e["amp"], mcfg.backbone.out_channels)
        scheme = load_scheme("chest-ct-43")
        dice["dice_per_class_named"] = {scheme.by_label(c).name: v for c, v in dice["dice_per_class"].items() if c <= len(scheme)}
        result["segmentation"] = dice
    if e.get("head"):
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
    recs = [r for r in load_records(root, split, require_labels=False) if r.labels is not None and r.report]
    lab = ReportLabeler().label_many([r.report for r in recs])
    return agreement(lab, np.stack([r.labels for r in recs]))
