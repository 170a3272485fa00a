"""``evaluate``: segmentation Dice, finding classification and report metrics, with plots.

Classification is reported under two named protocols (:mod:`neuroradix_train.evaluation.protocols`):
``held-out-threshold`` (per-finding thresholds chosen on the validation split, ``thresholds.json``
of the head run, reused on other splits; positive-class F1, macro and micro) and ``ct-clip``
(CT-CLIP's published computation: thresholds on the evaluated set, weighted F1, bootstrap
intervals). Report metrics: BLEU-1..4, METEOR (exact + stem, :mod:`neuroradix_train.evaluation.meteor`),
ROUGE-L, and clinical-efficacy P/R/F1 from a report labeler (``evaluate.labeler``: ``rule`` or
``radbert``) applied to generated and reference reports. The labeler's agreement with the label
CSV is reported alongside, so CE numbers can be read against the labeler's own error;
:func:`labeler_agreement_reports` (``evaluate --labeler-agreement``) measures the rule labeler
against RadBERT labels on any reports.
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
from neuroradix_train.data.dataset import load_records, read_csv_checked
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.labeler import ReportLabeler, agreement, build_labeler
from neuroradix_train.evaluation.predictions import evaluate_predictions
from neuroradix_train.evaluation.radbert import RadBERTLabeler
from neuroradix_train.settings import EvaluateConfig, require
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.head import EmbeddingDataset, predict, usable_rows
from neuroradix_train.stages.segmentation import prepare_cache, validate

logger = logging.getLogger(__name__)


def evaluate_run(cfg: EvaluateConfig) -> dict:
    """The ``evaluate`` command: Dice (segmentation run), findings (both protocols) and reports (head run) on a split.

    Parameters
    ----------
    cfg:
        The ``evaluate`` configuration (``evaluate.yaml`` and overrides).

    Returns
    -------
    dict
        ``split``, ``segmentation`` (Dice) and/or ``head`` (what
        :func:`~neuroradix_train.evaluation.predictions.evaluate_predictions` returns); also written to
        ``<out_dir>/evaluation.json``, the head's files under ``<out_dir>/head``.
    """
    e = cfg.evaluate
    info = D.setup(e.device)
    out = Path(require(e.out_dir, "evaluate.out_dir"))
    result: dict = {"split": e.split}
    if e.segmentation:
        run = Path(e.segmentation)
        mcfg = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
        model = build_backbone(mcfg.backbone)
        model.load_state_dict(torch.load(run / "backbone.pt", map_location="cpu", weights_only=True))
        model.to(info.device)
        items = prepare_cache(cfg.data, e.split, mcfg.preprocess, need_labels=True)
        dice = validate(model, items, mcfg.preprocess, info.device, e.amp, mcfg.backbone.out_channels)
        scheme = load_scheme("chest-ct-43")
        dice["dice_per_class_named"] = {
            scheme.by_label(c).name: v for c, v in dice["dice_per_class"].items() if c <= len(scheme)
        }
        result["segmentation"] = dice
    if e.head:
        # the labeler first: a RadBERT file that is missing fails before the head's predictions are computed
        labeler = build_labeler(
            e.labeler,
            Path(e.radbert_checkpoint) if e.radbert_checkpoint else None,
            Path(e.radbert_tokenizer) if e.radbert_tokenizer else None,
            device=str(info.device),
        )
        run = Path(e.head)
        mcfg = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
        head = MultitaskHead(mcfg.head, load_tokenizer(run / "tokenizer"))
        head.load_state_dict(torch.load(run / "head.pt", map_location="cpu", weights_only=True))
        head.to(info.device)
        ds = EmbeddingDataset(usable_rows(Path(require(cfg.data.embeddings, "data.embeddings")), e.split))
        pred = predict(head, ds, info.device, generate=e.generate, amp=e.amp)
        thr_path = run / "thresholds.json"
        thresholds = None
        if thr_path.is_file() and e.split != cfg.data.threshold_split:
            thresholds = list(json.loads(thr_path.read_text()).values())
        result["head"] = evaluate_predictions(
            pred,
            out / "head",
            thresholds=thresholds,
            protocols=e.protocols,
            n_bootstrap=e.n_bootstrap,
            labeler=labeler,
        )
    if not (e.segmentation or e.head):
        raise ConfigError("evaluate needs evaluate.segmentation (a segmentation run) and/or evaluate.head (a head run)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def labeler_agreement_on(root: Path, split: str) -> dict:
    """Agreement of the rule-based labeler with CT-RATE's label CSV on a split of a dataset."""
    recs = [r for r in load_records(root, split, require_labels=False) if r.labels is not None and r.report]
    lab = ReportLabeler().label_many([r.report for r in recs])
    return agreement(lab, np.stack([r.labels for r in recs if r.labels is not None]))


def read_reports(path: Path, text_columns: tuple[str, ...] = ("Findings_EN", "Impressions_EN")) -> dict[str, str]:
    """Reports of a CSV by ``VolumeName``: the ``text_columns`` joined with a space (CT-RATE's reports CSV layout)."""
    rows = read_csv_checked(Path(path), ("VolumeName", *text_columns))
    out: dict[str, str] = {}
    for row in rows:
        out.setdefault(
            row["VolumeName"].strip(), " ".join(row[c].strip() for c in text_columns if (row[c] or "").strip())
        )
    return out


def read_label_csv(path: Path) -> dict[str, np.ndarray]:
    """A label CSV (``VolumeName`` + the 18 findings, CT-RATE's ``*_predicted_labels.csv``) by ``VolumeName``."""
    rows = read_csv_checked(Path(path), ("VolumeName", *FINDINGS))
    out: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows):
        try:
            out.setdefault(row["VolumeName"].strip(), np.array([int(float(row[c])) for c in FINDINGS], dtype=np.int64))
        except ValueError as exc:
            raise ConfigError(f"{path}: row {i + 2}: labels must be 0/1: {exc}") from exc
    return out


def labeler_agreement_reports(
    reports_csv: Path,
    *,
    labels_csv: Path | None = None,
    radbert: RadBERTLabeler | None = None,
    text_columns: tuple[str, ...] = ("Findings_EN", "Impressions_EN"),
) -> dict:
    """The rule labeler against RadBERT labels on any set of reports (``evaluate --labeler-agreement``).

    Parameters
    ----------
    reports_csv:
        A CSV with ``VolumeName`` and the ``text_columns``.
    labels_csv:
        RadBERT's labels of these reports as a label CSV (CT-RATE's ``*_predicted_labels.csv`` were
        made by that classifier); reports without a row are left out and counted.
    radbert:
        Or the classifier itself, run on the reports (when ``labels_csv`` is None).
    text_columns:
        Report columns joined into the labeled text.

    Returns
    -------
    dict
        :func:`~neuroradix_train.evaluation.labeler.agreement` (per finding, micro, macro) with
        ``labeler``, ``reference``, ``n_reports`` and ``n_without_labels``.
    """
    reports = read_reports(reports_csv, text_columns)
    if labels_csv is not None:
        table = read_label_csv(labels_csv)
        names = [n for n in reports if n in table]
        reference = np.stack([table[n] for n in names]) if names else np.zeros((0, len(FINDINGS)), np.int64)
        source = f"label CSV {Path(labels_csv).name}"
    elif radbert is not None:
        names = list(reports)
        reference = radbert.label_many([reports[n] for n in names])
        source = "radbert classifier"
    else:
        raise ConfigError(
            "labeler agreement needs the RadBERT labels: a label CSV (--labels) or the classifier "
            "(--radbert-checkpoint and --radbert-tokenizer)"
        )
    if not names:
        raise ConfigError(f"no report of {reports_csv} has a row in {labels_csv}")
    rule = ReportLabeler()
    out = agreement(rule.label_many([reports[n] for n in names]), reference)
    out.update(
        {
            "labeler": rule.name,
            "reference": source,
            "n_reports": len(names),
            "n_without_labels": len(reports) - len(names),
        }
    )
    logger.info(
        "rule labeler vs %s on %d reports: micro F1 %.3f, macro F1 %.3f",
        source,
        len(names),
        out["micro"]["f1"],
        out["macro"]["f1"],
    )
    return out
