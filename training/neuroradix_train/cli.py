"""Training subcommands of the ``neuroradix`` CLI.

``register(subparsers)`` adds ``train-seg`` (the segmentation stage), ``train-contrastive``,
``export-embeddings``, ``train-head``, ``evaluate`` (or ``evaluate --labeler-agreement``),
``results-table`` and ``publish-release`` to an ``argparse`` sub-parser set; ``main()`` runs them
stand-alone (``python -m neuroradix_train.cli ...``). Every stage command takes ``--config FILE``
(merged on the shipped defaults, repeatable) and ``--set key=value``. ``train-smoke`` only says where
the smoke run went: it is test orchestration (``tests/training/smoke.py``, ``make train-smoke``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from neuroradix.errors import ConfigError
from neuroradix_train.config import load_config
from neuroradix_train.evaluation.evaluate import evaluate_run, labeler_agreement_reports
from neuroradix_train.evaluation.radbert import RadBERTLabeler
from neuroradix_train.evaluation.tables import write_results_table
from neuroradix_train.release import publish_release
from neuroradix_train.settings import (
    ContrastiveConfig,
    EmbeddingsConfig,
    EvaluateConfig,
    HeadTrainingConfig,
    SegmentationConfig,
    as_dict,
)
from neuroradix_train.stages.contrastive import train_contrastive
from neuroradix_train.stages.embeddings import export_embeddings
from neuroradix_train.stages.head import train_head
from neuroradix_train.stages.segmentation import train_seg

logger = logging.getLogger(__name__)

_STAGES = {
    "train-seg": "segmentation",
    "train-contrastive": "contrastive",
    "export-embeddings": "embeddings",
    "train-head": "head",
    "evaluate": "evaluate",
}
"""Each stage command and the stage (shipped config ``configs/<stage>.yaml``) it runs."""

SMOKE_MOVED = (
    "train-smoke is test orchestration and is not installed with the package: in a source checkout run "
    "`make train-smoke` (or `python -m tests.training.smoke --encoder swinunetr|vit`)"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", type=Path, default=[], help="YAML merged on the defaults (repeatable)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--print-config", action="store_true", help="print the merged configuration and exit")


def register(subparsers) -> None:
    """Add the training subcommands to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("train-seg", help="segmentation stage: train the SwinUNETR segmentation backbone")
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    p.set_defaults(func=_run_stage, stage="train-seg")

    p = subparsers.add_parser(
        "train-contrastive", help="contrastive stage: a 3D ViT trained against the reports (symmetric InfoNCE)"
    )
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    p.set_defaults(func=_run_stage, stage="train-contrastive")

    p = subparsers.add_parser("export-embeddings", help="embeddings stage: patch embeddings of every scan + manifest")
    _common(p)
    p.set_defaults(func=_run_stage, stage="export-embeddings")

    p = subparsers.add_parser("train-head", help="head stage: train the multitask head (findings + report)")
    _common(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None)
    p.set_defaults(func=_run_stage, stage="train-head")

    p = subparsers.add_parser(
        "evaluate", help="Dice, AUROC/F1 (both protocols), BLEU/METEOR/ROUGE-L/CE-F1 of trained runs"
    )
    _common(p)
    g = p.add_argument_group("labeler agreement (instead of a run evaluation)")
    g.add_argument(
        "--labeler-agreement",
        action="store_true",
        help="measure the rule labeler against RadBERT labels on --reports (needs --labels or --radbert-*)",
    )
    g.add_argument("--reports", type=Path, help="CSV with VolumeName and the report columns")
    g.add_argument(
        "--text-column",
        dest="text_columns",
        action="append",
        default=[],
        help="report column to label (repeatable; default Findings_EN and Impressions_EN)",
    )
    g.add_argument("--labels", type=Path, help="RadBERT's labels of these reports (CT-RATE's *_predicted_labels.csv)")
    g.add_argument(
        "--radbert-checkpoint", type=Path, help="CT-RATE's RadBERT classifier weights (.pt), run on the reports"
    )
    g.add_argument(
        "--radbert-tokenizer", type=Path, help="folder with the classifier's config.json and tokenizer files"
    )
    g.add_argument("--out", type=Path, help="write the agreement JSON here too")
    p.set_defaults(func=_run_stage, stage="evaluate")

    p = subparsers.add_parser("results-table", help="an evaluation folder as the Markdown tables used in docs/")
    p.add_argument("folder", type=Path, help="an evaluate output folder or a train-head run folder")
    p.add_argument("--out", type=Path, help="write the Markdown here too")
    p.add_argument("--title", help="heading (default: the folder's name)")
    p.set_defaults(func=_results_table)

    p = subparsers.add_parser("publish-release", help="write a weights/ release from a segmentation and a head run")
    p.add_argument("--backbone-run", type=Path, required=True)
    p.add_argument("--head-run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="release folder, e.g. weights/swinunetr-ctrate-1.0.0")
    p.add_argument("--version", required=True)
    p.add_argument("--dataset", default="CT-RATE", help="training data name recorded in the manifest")
    p.add_argument("--licence", default="CC-BY-NC-SA-4.0")
    p.add_argument("--untrained", action="store_true", help="mark the release as test output (smoke runs)")
    p.set_defaults(func=_publish)

    p = subparsers.add_parser("train-smoke", help="moved: run `make train-smoke` in a source checkout")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_smoke_moved)


def _run_stage(args) -> int:
    if getattr(args, "labeler_agreement", False):
        return _labeler_agreement(args)
    cfg = load_config(_STAGES[args.stage], args.config, args.sets)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(as_dict(cfg), sort_keys=False))
        return 0
    if isinstance(cfg, SegmentationConfig):
        result = train_seg(cfg, resume=args.resume, max_steps=args.max_steps)
    elif isinstance(cfg, ContrastiveConfig):
        result = train_contrastive(cfg, resume=args.resume, max_steps=args.max_steps)
    elif isinstance(cfg, EmbeddingsConfig):
        result = {"manifest": str(export_embeddings(cfg))}
    elif isinstance(cfg, HeadTrainingConfig):
        result = train_head(cfg, resume=args.resume, max_steps=args.max_steps)
    else:
        assert isinstance(cfg, EvaluateConfig)
        result = evaluate_run(cfg)
    sys.stdout.write(json.dumps(_summary(result), indent=1, default=float) + "\n")
    return 0


def _labeler_agreement(args) -> int:
    if args.reports is None:
        raise ConfigError("--labeler-agreement needs --reports (a CSV with VolumeName and the report text)")
    radbert = None
    if args.labels is None and (args.radbert_checkpoint or args.radbert_tokenizer):
        if not (args.radbert_checkpoint and args.radbert_tokenizer):
            raise ConfigError("the RadBERT classifier needs both --radbert-checkpoint and --radbert-tokenizer")
        radbert = RadBERTLabeler(args.radbert_checkpoint, args.radbert_tokenizer)
    result = labeler_agreement_reports(
        args.reports,
        labels_csv=args.labels,
        radbert=radbert,
        text_columns=tuple(args.text_columns) or ("Findings_EN", "Impressions_EN"),
    )
    text = json.dumps(result, indent=1, default=float)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


def _results_table(args) -> int:
    sys.stdout.write(write_results_table(args.folder, args.out, args.title) + "\n")
    return 0


def _summary(result: dict) -> dict:
    """Drop bulky per-class tables from what is printed (they are in the run's JSON files)."""
    out = {}
    for k, v in result.items():
        if isinstance(v, dict) and k in ("metrics", "head"):
            ct = v.get("classification_ct_clip", {}).get("mean")
            out[k] = {
                "held-out-threshold": {
                    "macro": v.get("classification", {}).get("macro"),
                    "micro": v.get("classification", {}).get("micro"),
                },
                "ct-clip": ct,
                "report": v.get("report"),
            }
        elif k != "dice_per_class":
            out[k] = v
    return out


def _publish(args) -> int:
    path = publish_release(
        args.backbone_run,
        args.head_run,
        args.out,
        version=args.version,
        dataset=args.dataset,
        licence=args.licence,
        untrained=args.untrained,
    )
    sys.stdout.write(f"{path}\n")
    return 0


def _smoke_moved(args) -> int:
    sys.stderr.write(f"error: {SMOKE_MOVED}\n")
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point: ``python -m neuroradix_train.cli <command> ...``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="neuroradix-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
