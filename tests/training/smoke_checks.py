"""What ``make train-smoke`` checks and prints besides the training numbers: a trained release
served through the node's own path (:func:`node_check`, :func:`serve_check`) and the head's
classification under both named protocols (:func:`protocol_summary`, :func:`format_protocols`).
"""

from __future__ import annotations

import math
from pathlib import Path

from neuroradix.analyzers.deep import DeepAnalyzer
from neuroradix.config import PipelineSettings
from neuroradix.errors import NeuroRadixError
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.models.remap import load_remap
from neuroradix.pipeline.run import analyze_datasets
from neuroradix_train.data.dataset import load_label_map, load_records, load_volume
from neuroradix_train.data.phantoms import TS
from neuroradix_train.evaluation.metrics import HELD_OUT_THRESHOLD, dice_per_class
from neuroradix_train.evaluation.protocols import CT_CLIP

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


def organ_labels() -> dict[str, int]:
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
    organs = organ_labels()
    dice = dice_per_class(deep.result.labels, target, organs.values())
    return {
        "case": name,
        "status": deep.status,
        "modalities": sorted(str(ds.Modality) for ds in deep.datasets),
        "dice": {n: float(dice[label]) for n, label in organs.items()},
    }


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
