"""A miniature dataset in CT-RATE's layout: synthetic thorax phantoms plus the real test CTs.

The anatomy comes from the one phantom generator, :func:`neuroradix.samples.phantom.findings_phantom`
(organs with known masks in TotalSegmentator's 117-class ids, so they reach the 43-class scheme
through the same remap tables as real data, and planted findings with an imaging signature). What
is training-specific lives here: the dataset's folders and CSVs, a templated report in CT-RATE's
phrasing and the matching row of the label CSV. The real CTs of ``../shared/data/real-ct`` are
added with their 117-class reference segmentations where one exists; they have no report labels
(they are not in the label CSV) and serve the layout, remap and stage-1 paths.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence, cast

import nibabel as nib
import numpy as np

from neuroradix.imaging.nifti import volume_to_nifti
from neuroradix.samples.phantom import PHANTOM_VERSION, PLANTED, TOTALSEG_IDS, PhantomSpec, findings_phantom
from neuroradix_train.data.findings import FINDINGS

logger = logging.getLogger(__name__)

TS = TOTALSEG_IDS
"""TotalSegmentator-117 ids of the phantom's organs (the generator's :data:`~neuroradix.samples.phantom.TOTALSEG_IDS`)."""

_POSITIVE = {
    "Emphysema": "Emphysematous changes are observed in both lungs.",
    "Pleural effusion": "Pleural effusion is observed in the right hemithorax.",
    "Cardiomegaly": "Cardiomegaly is present; the heart size is increased.",
    "Lung nodule": "Multiple nodules are observed in the right lung.",
    "Consolidation": "Consolidation is observed in the left lung.",
    "Arterial wall calcification": "Atherosclerotic calcifications are observed in the wall of the aorta.",
}
_NEGATIVE = {
    "Emphysema": "No emphysema is seen.",
    "Pleural effusion": "No pleural effusion was detected.",
    "Cardiomegaly": "Heart contour and size are normal.",
    "Lung nodule": "No nodule was detected in either lung.",
    "Consolidation": "No consolidation is observed.",
    "Arterial wall calcification": "The aorta is of normal calibre.",
}


def phantom_report(findings: Sequence[str], rng: np.random.Generator) -> tuple[str, str]:
    """Findings_EN and Impressions_EN text for the planted findings, in CT-RATE's phrasing."""
    sentences = ["Trachea and both main bronchi are open."]
    for name in PLANTED:
        sentences.append(_POSITIVE[name] if name in findings else _NEGATIVE[name])
    body = sentences  # a fixed order: the report is a function of the findings (rng kept for variants)
    impression = (
        "Findings consistent with " + ", ".join(f.lower() for f in findings) + "."
        if findings
        else "No significant pathological finding in the thorax."
    )
    return " ".join(body), impression


def build_miniature_ctrate(
    out_dir: Path,
    *,
    n_train: int = 48,
    n_valid: int = 24,
    seed: int = 0,
    spec: PhantomSpec = PhantomSpec(),
    real_ct_dir: Optional[Path] = None,
    finding_rate: float = 0.4,
) -> Path:
    """Write a CT-RATE-layout dataset under ``out_dir/dataset``; returns ``out_dir``.

    Volumes are stored as raw values ``HU + 1024`` (int16) with RescaleIntercept -1024 in the
    metadata CSV, as CT-RATE's first release does, so the readers' rescale path is exercised.
    """

    out_dir = Path(out_dir)
    ds = out_dir / "dataset"
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, list]] = {s: {"reports": [], "labels": [], "metadata": []} for s in ("train", "valid")}
    counter = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        for i in range(n):
            counter += 1
            planted = [f for f in PLANTED if rng.random() < finding_rate]
            hu, lab = findings_phantom(planted, seed=seed * 100003 + counter, spec=spec)
            name = f"{split}_{i + 1}_a_1.nii.gz"
            vol_dir = ds / split / f"{split}_{i + 1}" / f"{split}_{i + 1}_a"
            vol_dir.mkdir(parents=True, exist_ok=True)
            nib.save(volume_to_nifti(np.rint(hu + 1024.0), spec.affine, np.dtype(np.int16)), str(vol_dir / name))
            seg_dir = ds / "segmentations" / split
            seg_dir.mkdir(parents=True, exist_ok=True)
            nib.save(volume_to_nifti(lab, spec.affine, np.dtype(np.uint8)), str(seg_dir / name))
            findings_text, impression = phantom_report(planted, rng)
            rows[split]["reports"].append([name, "Not given.", "Non-contrast phantom CT.", findings_text, impression])
            rows[split]["labels"].append([name] + [1 if f in planted else 0 for f in FINDINGS])
            rows[split]["metadata"].append(
                [name, "1", "-1024", f"[{spec.spacing[1]}, {spec.spacing[2]}]", str(spec.spacing[0]), "PHANTOM"]
            )
    if real_ct_dir is not None:
        _add_real_cts(Path(real_ct_dir), ds, rows)
    names = {
        "reports": (
            "radiology_text_reports",
            {"train": "train_reports.csv", "valid": "validation_reports.csv"},
            ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
        ),
        "labels": (
            "multi_abnormality_labels",
            {"train": "train_predicted_labels.csv", "valid": "valid_predicted_labels.csv"},
            ["VolumeName", *FINDINGS],
        ),
        "metadata": (
            "metadata",
            {"train": "train_metadata.csv", "valid": "validation_metadata.csv"},
            ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing", "Manufacturer"],
        ),
    }
    for kind, (folder, files, header) in names.items():
        (ds / folder).mkdir(parents=True, exist_ok=True)
        for split in ("train", "valid"):
            with (ds / folder / files[split]).open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows(rows[split][kind])
    (ds / "phantoms.version").write_text(PHANTOM_VERSION + "\n", encoding="utf-8")
    (ds / "README.md").write_text(
        "Miniature CT-RATE-layout dataset built by neuroradix_train.data.phantoms (synthetic phantoms"
        " plus TotalSegmentator test CTs, Apache-2.0). Not CT-RATE data.\n",
        encoding="utf-8",
    )
    logger.info("miniature dataset written to %s (%d train, %d valid phantoms)", ds, n_train, n_valid)
    return out_dir


def _add_real_cts(real: Path, ds: Path, rows: dict) -> None:
    """Add the real CTs: the 3 mm abdomen (with its 117-class segmentation) to train, the thorax to valid."""

    items = [
        ("train", 1001, "abdomen_ct_3mm.nii.gz", "abdomen_ct_3mm_totalseg117.nii.gz"),
        ("valid", 1001, "thorax_ct_1.5mm.nii.gz", None),
    ]
    for split, pid, vol, seg in items:
        src = real / vol
        if not src.is_file():
            logger.warning("real CT %s not found; skipped", src)
            continue
        name = f"{split}_{pid}_a_1.nii.gz"
        vol_dir = ds / split / f"{split}_{pid}" / f"{split}_{pid}_a"
        vol_dir.mkdir(parents=True, exist_ok=True)
        img = cast(nib.Nifti1Image, nib.load(str(src)))
        raw = np.asarray(img.dataobj).astype(np.float32) + 1024.0
        if seg is not None and (real / seg).is_file():
            seg_img = cast(nib.Nifti1Image, nib.load(str(real / seg)))
            # abdomen_ct_3mm_totalseg117 covers only the first 30 of the CT's 112 slices (same origin
            # and spacing): crop the CT to the segmented slab so both share one grid
            if not np.allclose(seg_img.affine, img.affine) or any(a > b for a, b in zip(seg_img.shape, raw.shape)):
                raise ValueError(f"{seg}: not on the grid of {vol}")
            raw = raw[: seg_img.shape[0], : seg_img.shape[1], : seg_img.shape[2]]
            (ds / "segmentations" / split).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real / seg, ds / "segmentations" / split / name)
        nib.save(nib.Nifti1Image(np.rint(raw).astype(np.int16), img.affine), str(vol_dir / name))
        zooms = img.header.get_zooms()[:3]
        rows[split]["reports"].append([name, "Not given.", "Real CT from the TotalSegmentator test files.", "", ""])
        rows[split]["metadata"].append(
            [name, "1", "-1024", f"[{zooms[1]}, {zooms[0]}]", str(zooms[2]), "TotalSegmentator test file"]
        )
        # no label row: the real CTs have no report labels


def write_labels_json(path: Path) -> None:
    """The TotalSegmentator ids the phantom uses (for documentation and tests)."""
    Path(path).write_text(json.dumps(TS, indent=1), encoding="utf-8")


__all__ = [
    "PHANTOM_VERSION",
    "PLANTED",
    "TS",
    "PhantomSpec",
    "build_miniature_ctrate",
    "phantom_report",
    "write_labels_json",
]
