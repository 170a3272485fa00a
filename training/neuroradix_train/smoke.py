"""``train-smoke``: the three stages end to end on a miniature phantom dataset, with assertions.

1. build a CT-RATE-layout dataset (phantoms with planted findings + the real test CTs);
2. stage 1 with ``stage1-tiny.yaml`` -> Dice on the phantom organs (lungs, heart, aorta, trachea);
3. stage 2 export;
4. stage 3 with ``stage3-tiny.yaml`` -> macro AUROC over the planted findings, generated reports,
   CE-F1 against the templated references; the classification numbers under both named
   protocols (``held-out-threshold`` and ``ct-clip``, :func:`protocol_summary`) are printed;
5. publish a release into ``<work>/release`` and serve a validation phantom with it through the
   node's own path (DICOM series -> series selection -> volume assembly -> deep analyzer -> SEG,
   SR, Parametric Map, PDF), checking the node's labels against the phantom's truth.

The release is marked untrained: phantom weights must never reach a PACS as real results.
Thresholds: Dice > 0.8 (validation and through the node), macro AUROC > 0.9, CE micro F1 > 0.8
(see :data:`THRESHOLDS`).

``--encoder vit`` (:func:`run_vit_smoke`) runs the contrastive 3D ViT instead of stage 1, exports its
tokens, trains the head on them and serves a ``vit`` release (:data:`VIT_THRESHOLDS`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from neuroradix.analyzers.deep import DeepAnalyzer
from neuroradix.config import PipelineSettings
from neuroradix.errors import NeuroRadixError
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.models.remap import load_remap
from neuroradix.pipeline import analyze_datasets
from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.data.dataset import load_label_map, load_records, load_volume
from neuroradix_train.data.phantoms import PHANTOM_VERSION, PLANTED, TS, build_miniature_ctrate, phantom_report
from neuroradix_train.evaluation.metrics import HELD_OUT_THRESHOLD, dice_per_class
from neuroradix_train.evaluation.protocols import CT_CLIP
from neuroradix_train.release import publish_release
from neuroradix_train.stages.contrastive import publish_vit_release, train_contrastive, vit_export_sets
from neuroradix_train.stages.stage1 import train_seg
from neuroradix_train.stages.stage2 import export_embeddings
from neuroradix_train.stages.stage3 import train_head

log = logging.getLogger(__name__)

THRESHOLDS = {"dice": 0.8, "macro_auroc": 0.9, "ce_f1": 0.8, "node_dice": 0.8}
VIT_THRESHOLDS = {"recall_at_1_x_chance": 2.0, "recall_at_5_x_chance": 2.0, "zero_shot_auroc": 0.7, "head_auroc": 0.7}
"""Thresholds of ``train-smoke --encoder vit`` (measured numbers in docs/training.md): retrieval recall@1
and @5 at least twice chance, mean zero-shot AUROC and the head's macro AUROC over the planted
findings at least 0.7."""
PHANTOM_ORGANS = ("left lung", "right lung", "heart", "aorta", "trachea")  # each phantom lung is one lobe label


class SmokeFailure(NeuroRadixError):
    """A learning threshold of the smoke run was not met."""


def protocol_summary(metrics: dict) -> dict:
    """Headline classification numbers of a head run's ``metrics.json`` under each protocol it names.

    Returns
    -------
    dict
        ``{"held-out-threshold": {...}, "ct-clip": {...}}`` (the second only when computed); each
        entry says where its thresholds came from.
    """
    cls = metrics["classification"]
    out = {
        HELD_OUT_THRESHOLD: {
            "thresholds_from": cls.get("thresholds_from"),
            "macro_auroc": cls["macro"]["auroc"],
            "macro_f1": cls["macro"]["f1"],
            "micro_f1": cls.get("micro", {}).get("f1"),
            "n_findings": cls["macro"]["n_findings"],
        }
    }
    ct = metrics.get("classification_ct_clip")
    if ct:
        mean = ct["mean"]
        out[CT_CLIP] = {
            "thresholds_from": ct["thresholds_from"],
            "mean_auroc": mean["auroc"],
            "f1_weighted": mean["f1_weighted"],
            "accuracy": mean["accuracy"],
            "precision": mean["precision"],
            "recall": mean["recall"],
            "n_findings": mean["n_findings"],
            "n_bootstrap": ct["n_bootstrap"],
            "ci": mean.get("ci", {}),
        }
    return out


def format_protocols(summary: dict) -> str:
    """One line per protocol, as ``train-smoke`` prints them."""
    lines = []
    h = summary.get(HELD_OUT_THRESHOLD)
    if h:
        lines.append(
            f"protocol {HELD_OUT_THRESHOLD} (thresholds from {h['thresholds_from']}): macro AUROC {h['macro_auroc']:.3f}, "
            f"macro F1 {h['macro_f1']:.3f}, micro F1 {h['micro_f1']:.3f} over {h['n_findings']} findings"
        )
    c = summary.get(CT_CLIP)
    if c:
        ci = c.get("ci", {})

        def iv(key: str) -> str:
            lo_hi = ci.get(key)
            return f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi and not any(math.isnan(x) for x in lo_hi) else ""

        lines.append(
            f"protocol {CT_CLIP} (thresholds from {c['thresholds_from']}; {c['n_bootstrap']} resamples, 95 % CI): "
            f"mean AUROC {c['mean_auroc']:.3f}{iv('auroc')}, weighted F1 {c['f1_weighted']:.3f}{iv('f1_weighted')}, "
            f"accuracy {c['accuracy']:.3f}{iv('accuracy')}, precision {c['precision']:.3f}, recall {c['recall']:.3f} "
            f"over {c['n_findings']} findings"
        )
    return "\n".join(lines)


def _organ_labels() -> dict[str, int]:
    """43-class labels of the phantom organs, found through the remap table."""
    remap = load_remap("totalseg117-to-chest-ct-43")
    pairs = {
        "left lung": TS["lung_upper_lobe_left"],
        "right lung": TS["lung_upper_lobe_right"],
        "heart": TS["heart"],
        "aorta": TS["aorta"],
        "trachea": TS["trachea"],
    }
    return {name: int(remap.lut[src]) for name, src in pairs.items() if remap.lut[src] > 0}


def node_check(release: Path, root: Path, split: str = "valid", index: int = 1) -> dict:
    """Serve one phantom through the node's own path with the published release.

    The phantom, read as training reads it, becomes a DICOM CT series (``volume_to_ct_series``); ``analyze_datasets``
    selects, assembles and analyzes it with :class:`~neuroradix.analyzers.deep.DeepAnalyzer` and
    encodes SEG/SR/Parametric Map/PDF as a node would store them. Returns the DICOM modalities
    written and the Dice of the node's labels (on the CT's own grid) against the phantom's truth,
    so a geometry mismatch between training and the node (an axis order, a flipped side) shows.
    """
    name = f"{split}_{index}_a_1.nii.gz"
    record = next(r for r in load_records(root, split, require_labels=False) if r.name == name)
    volume = load_volume(record)  # HU through the metadata's rescale, as training reads it
    if record.segmentation is None:
        raise NeuroRadixError(f"{name} has no segmentation to check the node's labels against")
    truth = load_label_map(record.segmentation)
    datasets = volume_to_ct_series(volume, uid_seed=f"smoke-{name}")
    analyzer = DeepAnalyzer(release, allow_untrained=True, device="cpu", sw_batch_size=2)
    outcome = analyze_datasets(datasets, PipelineSettings(), [analyzer])
    deep = outcome.analyzers[0]
    if deep.result is None:
        raise SmokeFailure(f"the node produced no result with the release: {deep.status}")
    target = load_remap("totalseg117-to-chest-ct-43").apply(truth)
    organs = _organ_labels()
    dice = dice_per_class(deep.result.labels, target, organs.values())
    return {
        "case": name,
        "status": deep.status,
        "modalities": sorted(str(ds.Modality) for ds in deep.datasets),
        "dice": {n: float(dice[label]) for n, label in organs.items()},
    }


def ensure_dataset(root: Path, *, n_train: int, n_valid: int, real_ct_dir: Optional[Path]) -> None:
    """Build the miniature dataset under ``root`` unless one of this phantom version is there.

    A dataset made by an older phantom generator is removed with its preprocessing cache first.
    """
    version = root / "dataset" / "phantoms.version"
    if version.is_file() and version.read_text(encoding="utf-8").strip() == PHANTOM_VERSION:
        return
    shutil.rmtree(root, ignore_errors=True)
    build_miniature_ctrate(root, n_train=n_train, n_valid=n_valid, real_ct_dir=real_ct_dir, seed=0)


def _sets_for(stage: str, extra_sets: Sequence[str]) -> list[str]:
    """The ``STAGE:KEY=VALUE`` overrides meant for ``stage`` (``stage1``, ``stage2`` or ``stage3``), prefix removed."""
    for s in extra_sets:
        if s.split(":", 1)[0] not in ("stage1", "stage2", "stage3") or ":" not in s:
            raise ValueError(f"smoke override {s!r} must look like stage1:train.lr=1e-3 (stage1, stage2 or stage3)")
    return [s.split(":", 1)[1] for s in extra_sets if s.split(":", 1)[0] == stage]


def run_smoke(
    work: Path,
    *,
    real_ct_dir: Optional[Path] = None,
    check: bool = True,
    n_train: int = 40,
    n_valid: int = 20,
    seg_train_scans: int = 12,
    seg_epochs: int = 50,
    seg_valid_scans: int = 8,
    head_epochs: Optional[int] = None,
    extra_sets: Sequence[str] = (),
) -> dict:
    """Run the smoke pipeline under ``work``; returns the numbers (raises :class:`SmokeFailure` when ``check``)."""
    work = Path(work)
    t0 = time.time()
    root = work / "ctrate-mini"
    ensure_dataset(root, n_train=n_train, n_valid=n_valid, real_ct_dir=real_ct_dir)
    for stage_dir in ("stage1", "embeddings", "head", "release"):  # outputs of an earlier run; the dataset stays
        shutil.rmtree(work / stage_dir, ignore_errors=True)
    timings = {}
    s1 = load_config(
        "stage1",
        [CONFIG_DIR / "stage1-tiny.yaml"],
        [
            f"data.root={root}",
            f"train.out_dir={work / 'stage1'}",
            f"data.max_train_scans={seg_train_scans}",
            f"train.epochs={seg_epochs}",
            f"train.val_every_epochs={seg_epochs}",
            f"data.max_valid_scans={seg_valid_scans}",
            *_sets_for("stage1", extra_sets),
        ],
    )
    r1 = train_seg(s1)
    timings["stage1_s"] = round(time.time() - t0, 1)
    organs = _organ_labels()
    dice = {name: r1["dice_per_class"].get(label, float("nan")) for name, label in organs.items()}
    s2 = load_config(
        "stage2",
        None,
        [
            f"data.root={root}",
            f"export.backbone={work / 'stage1'}",
            f"export.out_dir={work / 'embeddings'}",
            "export.threads=2",
            *_sets_for("stage2", extra_sets),
        ],
    )
    export_embeddings(s2)
    timings["stage2_s"] = round(time.time() - t0 - timings["stage1_s"], 1)
    sets3 = [
        f"data.embeddings={work / 'embeddings'}",
        f"train.out_dir={work / 'head'}",
        *_sets_for("stage3", extra_sets),
    ]
    if head_epochs:
        sets3.append(f"train.epochs={head_epochs}")
    r3 = train_head(load_config("stage3", [CONFIG_DIR / "stage3-tiny.yaml"], sets3))
    timings["stage3_s"] = round(time.time() - t0 - timings["stage1_s"] - timings["stage2_s"], 1)
    cls = r3["metrics"]["classification"]["per_finding"]
    planted_auroc = {n: cls[n]["auroc"] for n in PLANTED}
    macro = sum(planted_auroc.values()) / len(planted_auroc)
    rep = r3["metrics"].get("report", {})
    release = publish_release(
        work / "stage1",
        work / "head",
        work / "release",
        version="0.0.0-smoke",
        dataset="neuroradix phantoms",
        licence="Apache-2.0",
        untrained=True,
    )
    served = node_check(release, root)
    timings["node_s"] = round(time.time() - t0 - sum(timings.values()), 1)
    result = {
        "dice": dice,
        "dice_mean_phantom_organs": sum(dice.values()) / max(len(dice), 1),
        "planted_auroc": planted_auroc,
        "macro_auroc_planted": macro,
        "ce_micro_f1": rep.get("ce_micro_f1"),
        "bleu1": rep.get("bleu1"),
        "meteor": rep.get("meteor"),
        "rouge_l": rep.get("rouge_l"),
        "labeler_agreement": r3["metrics"]["labeler_agreement"],
        "protocols": protocol_summary(r3["metrics"]),
        "release": str(release),
        "node": served,
        "seconds": timings,
    }
    (work / "smoke.json").write_text(json.dumps(result, indent=1, default=float))
    log.info("classification of the smoke head run:\n%s", format_protocols(result["protocols"]))
    if check:
        failures = []
        low = {k: v for k, v in dice.items() if math.isnan(v) or v <= THRESHOLDS["dice"]}
        if low:
            failures.append(f"Dice <= {THRESHOLDS['dice']} for {low}")
        if not macro > THRESHOLDS["macro_auroc"]:
            failures.append(f"macro AUROC over planted findings {macro:.3f} <= {THRESHOLDS['macro_auroc']}")
        if not (rep.get("ce_micro_f1") or 0) > THRESHOLDS["ce_f1"]:
            failures.append(f"CE micro F1 {rep.get('ce_micro_f1')} <= {THRESHOLDS['ce_f1']}")
        low_node = {k: v for k, v in served["dice"].items() if math.isnan(v) or v <= THRESHOLDS["node_dice"]}
        if low_node or "SEG" not in served["modalities"]:
            failures.append(
                f"the node with the release: Dice <= {THRESHOLDS['node_dice']} for {low_node}, "
                f"objects {served['modalities']}"
            )
        if failures:
            raise SmokeFailure("; ".join(failures) + f" (numbers in {work / 'smoke.json'})")
    return result


# --------------------------------------------------------------------------- ENCODER=vit


def phantom_prompts() -> dict[str, list[str]]:
    """Zero-shot prompt pairs of the planted findings in the phantom reports' own sentences.

    A text encoder trained from scratch on 40 templated reports knows only their sentences, not
    CT-CLIP's "X is present." / "X is not present."; the pairs are read off
    :func:`~neuroradix_train.data.phantoms.phantom_report` (all findings, then none).
    """
    rng = np.random.default_rng(0)

    def sentences(text: str) -> list[str]:
        return re.split(r"(?<=\.) ", text)[1:]  # the first sentence (the airways) names no finding

    positive = sentences(phantom_report(list(PLANTED), rng)[0])
    negative = sentences(phantom_report([], rng)[0])
    if len(positive) != len(PLANTED) or len(negative) != len(PLANTED):
        raise NeuroRadixError("the phantom report no longer has one sentence per planted finding")
    return {name: [p, n] for name, p, n in zip(PLANTED, positive, negative)}


def serve_check(release: Path, root: Path, split: str = "valid", index: int = 1) -> dict:
    """Serve one validation phantom with a release on a non-segmenting encoder through the node's path."""
    name = f"{split}_{index}_a_1.nii.gz"
    record = next(r for r in load_records(root, split, require_labels=False) if r.name == name)
    datasets = volume_to_ct_series(load_volume(record), uid_seed=f"smoke-{name}")
    analyzer = DeepAnalyzer(release, allow_untrained=True, device="cpu")
    deep = analyze_datasets(datasets, PipelineSettings(), [analyzer]).analyzers[0]
    if deep.result is None:
        raise SmokeFailure(f"the node produced no result with the release: {deep.status}")
    return {
        "case": name,
        "status": deep.status,
        "modalities": sorted(str(ds.Modality) for ds in deep.datasets),
        "analyzer": analyzer.info.name,
        "untrained": analyzer.info.untrained,
    }


def run_vit_smoke(
    work: Path,
    *,
    real_ct_dir: Optional[Path] = None,
    check: bool = True,
    n_train: int = 40,
    n_valid: int = 20,
    contrastive_epochs: Optional[int] = None,
    head_epochs: Optional[int] = None,
    extra_sets: Sequence[str] = (),
) -> dict:
    """``train-smoke --encoder vit``: contrastive ViT -> its tokens (stage 2) -> head (stage 3) -> release.

    Checks (:data:`VIT_THRESHOLDS`): image->report recall@1 and @5 on the validation phantoms at
    least twice chance, mean zero-shot AUROC over the planted findings, and the head's macro AUROC
    over them; then serves a validation phantom with the release through the node's path.
    """
    for s in extra_sets:
        if ":" not in s or s.split(":", 1)[0] not in ("contrastive", "stage2", "stage3"):
            raise ValueError(
                f"smoke override {s!r} must look like contrastive:train.lr=1e-3 (contrastive, stage2 or stage3)"
            )
    sets_for = {
        st: [s.split(":", 1)[1] for s in extra_sets if s.split(":", 1)[0] == st]
        for st in ("contrastive", "stage2", "stage3")
    }
    work = Path(work)
    t0 = time.time()
    root = work / "ctrate-mini"
    ensure_dataset(root, n_train=n_train, n_valid=n_valid, real_ct_dir=real_ct_dir)
    for stage_dir in ("contrastive", "embeddings-vit", "head-vit", "release-vit"):
        shutil.rmtree(work / stage_dir, ignore_errors=True)
    timings: dict[str, float] = {}
    prompts = work / "phantom-prompts.json"  # JSON is YAML: merged as a --config file
    prompts.write_text(json.dumps({"zero_shot": {"prompts": phantom_prompts()}}), encoding="utf-8")
    sets0 = [f"data.root={root}", f"train.out_dir={work / 'contrastive'}", *sets_for["contrastive"]]
    if contrastive_epochs:
        sets0.append(f"train.epochs={contrastive_epochs}")
    r0 = train_contrastive(load_config("contrastive", [CONFIG_DIR / "contrastive-tiny.yaml", prompts], sets0))
    timings["contrastive_s"] = round(time.time() - t0, 1)
    zs = {n: r0["zero_shot_auroc"][n] for n in PLANTED}
    zs_mean = sum(zs.values()) / len(zs)
    s2 = load_config(
        "stage2",
        None,
        [
            f"data.root={root}",
            f"export.out_dir={work / 'embeddings-vit'}",
            "export.threads=1",
            *vit_export_sets(work / "contrastive"),
            *sets_for["stage2"],
        ],
    )
    export_embeddings(s2)
    timings["stage2_s"] = round(time.time() - t0 - sum(timings.values()), 1)
    sets3 = [
        f"data.embeddings={work / 'embeddings-vit'}",
        f"train.out_dir={work / 'head-vit'}",
        "train.threads=1",  # on a shared 2-core machine 2 threads ran the head 30x slower (15 s per step against 0.45 s)
        *sets_for["stage3"],
    ]
    if head_epochs:
        sets3.append(f"train.epochs={head_epochs}")
    r3 = train_head(load_config("stage3", [CONFIG_DIR / "stage3-tiny.yaml"], sets3))
    timings["stage3_s"] = round(time.time() - t0 - sum(timings.values()), 1)
    cls = r3["metrics"]["classification"]["per_finding"]
    head_auroc = {n: cls[n]["auroc"] for n in PLANTED}
    head_macro = sum(head_auroc.values()) / len(head_auroc)
    release = publish_vit_release(
        work / "contrastive",
        work / "head-vit",
        work / "release-vit",
        version="0.0.0-smoke",
        dataset="neuroradix phantoms",
        licence="Apache-2.0",
        untrained=True,
    )
    served = serve_check(release, root)
    timings["node_s"] = round(time.time() - t0 - sum(timings.values()), 1)
    result = {
        "encoder": "vit",
        "retrieval": {k: r0[k] for k in ("recall@1", "chance@1", "recall@5", "chance@5", "n_scans")},
        "zero_shot_auroc_planted": zs,
        "zero_shot_mean_auroc_planted": zs_mean,
        "zero_shot_ct_clip_prompts": r0.get("zero_shot_templates_only"),
        "temperature": r0["temperature"],
        "head_auroc_planted": head_auroc,
        "head_macro_auroc_planted": head_macro,
        "ce_micro_f1": r3["metrics"].get("report", {}).get("ce_micro_f1"),
        "protocols": protocol_summary(r3["metrics"]),
        "release": str(release),
        "node": served,
        "seconds": timings,
    }
    (work / "smoke-vit.json").write_text(json.dumps(result, indent=1, default=float))
    if check:
        th = VIT_THRESHOLDS
        failures = []
        for k, key in ((1, "recall_at_1_x_chance"), (5, "recall_at_5_x_chance")):
            rec, chance = r0[f"recall@{k}"], r0[f"chance@{k}"]
            if not rec >= th[key] * chance:
                failures.append(f"recall@{k} {rec:.3f} < {th[key]} x chance {chance:.3f}")
        if not zs_mean >= th["zero_shot_auroc"]:
            failures.append(f"mean zero-shot AUROC over planted findings {zs_mean:.3f} < {th['zero_shot_auroc']}")
        if not head_macro >= th["head_auroc"]:
            failures.append(f"head macro AUROC on ViT tokens {head_macro:.3f} < {th['head_auroc']}")
        if "SR" not in served["modalities"]:
            failures.append(f"the node with the release wrote {served['modalities']}, no SR")
        if failures:
            raise SmokeFailure("; ".join(failures) + f" (numbers in {work / 'smoke-vit.json'})")
    return result
