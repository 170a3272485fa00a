"""A miniature dataset in CT-RATE's layout: synthetic thorax phantoms plus the real test CTs.

Each phantom has organs with known masks (written in TotalSegmentator's 117-class ids, so
they reach the 43-class scheme through the same remap tables as real data), planted findings
with an imaging signature, a templated report in CT-RATE's phrasing and the matching row of
the label CSV. The real CTs of ``../shared/data/real-ct`` are added with their 117-class
reference segmentations where one exists; they have no report labels (they are not in the
label CSV) and serve the layout, remap and stage-1 paths.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from neuroradix_train.data.findings import FINDINGS

log = logging.getLogger(__name__)

# TotalSegmentator-117 ids used by the phantom (see totalseg117_labels.json)
TS = {
    "lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11, "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13, "lung_lower_lobe_right": 14, "esophagus": 15, "trachea": 16,
    "vertebrae_T6": 38, "heart": 51, "aorta": 52, "sternum": 116,
}

PHANTOM_VERSION = "2"
"""Changes whenever the phantoms' anatomy or findings change; a dataset of another version is rebuilt."""

PLANTED = ("Emphysema", "Pleural effusion", "Cardiomegaly", "Lung nodule", "Consolidation", "Arterial wall calcification")
"""Findings the phantom can carry, each with an imaging signature."""

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


@dataclass(frozen=True)
class PhantomSpec:
    """Geometry of the phantoms: voxels ``[slice, row, col]`` and spacing in mm."""

    shape: tuple[int, int, int] = (40, 48, 56)
    spacing: tuple[float, float, float] = (7.5, 6.0, 6.0)


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    z, y, x = grid
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1.0


def make_phantom(findings: Sequence[str], seed: int, spec: PhantomSpec = PhantomSpec()) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: an HU array and a TotalSegmentator-117 label map, both ``[slice, row, col]``.

    Rows run anterior to posterior, columns right to left of the patient (LPS), slices
    inferior to superior. Organ sizes jitter with ``seed``.
    """
    unknown = set(findings) - set(PLANTED)
    if unknown:
        raise ValueError(f"findings cannot be planted: {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    S, R, C = spec.shape
    grid = tuple(a.astype(np.float32) for a in np.meshgrid(np.arange(S), np.arange(R), np.arange(C), indexing="ij"))
    z, y, x = grid
    j = lambda s: 1.0 + rng.uniform(-s, s)  # noqa: E731 - tiny jitter helper
    hu = np.full(spec.shape, -1000.0, dtype=np.float32)
    lab = np.zeros(spec.shape, dtype=np.uint8)
    cz, cy, cx = S / 2, R / 2, C / 2
    body = _ellipsoid(grid, (cz, cy, cx), (S * 0.8, R * 0.42 * j(0.05), C * 0.45 * j(0.05)))
    hu[body] = -80.0  # fat / soft tissue mix
    hu[body & ~_ellipsoid(grid, (cz, cy, cx), (S * 0.8, R * 0.36, C * 0.40))] = 40.0  # muscle wall
    lung_r = _ellipsoid(grid, (cz, cy, cx - C * 0.19), (S * 0.42 * j(0.08), R * 0.3 * j(0.08), C * 0.15 * j(0.08)))
    lung_l = _ellipsoid(grid, (cz, cy, cx + C * 0.19), (S * 0.42 * j(0.08), R * 0.3 * j(0.08), C * 0.14 * j(0.08)))
    # each phantom lung is one lobe (upper-lobe id): fissures are not modelled
    for mask, lobe in ((lung_r, "lung_upper_lobe_right"), (lung_l, "lung_upper_lobe_left")):
        hu[mask] = -850.0
        lab[mask] = TS[lobe]
    heart_scale = 1.45 if "Cardiomegaly" in findings else 1.0
    heart = _ellipsoid(grid, (cz - S * 0.12, cy - R * 0.08, cx + C * 0.04), np.array((S * 0.14, R * 0.14, C * 0.1)) * heart_scale * j(0.05))
    hu[heart] = 45.0
    lab[heart] = TS["heart"]
    # tubes with adult calibres, in voxels of the in-plane spacing: aorta ~26 mm, trachea ~20 mm across
    aorta_r, trachea_r = 13.0 / spec.spacing[1] * j(0.1), 10.0 / spec.spacing[1]
    aorta = ((y - (cy + R * 0.08)) ** 2 + (x - (cx + C * 0.02)) ** 2 <= aorta_r**2) & (z > cz - S * 0.35) & (z < cz + S * 0.3)
    hu[aorta] = 40.0
    lab[aorta] = TS["aorta"]
    trachea = ((y - (cy - R * 0.05)) ** 2 + (x - cx) ** 2 <= trachea_r**2) & (z > cz + S * 0.05)
    hu[trachea] = -1000.0
    lab[trachea] = TS["trachea"]
    spine = ((y - (cy + R * 0.3)) ** 2 + (x - cx) ** 2 <= 2.6**2) & body
    hu[spine] = 500.0
    lab[spine] = TS["vertebrae_T6"]
    lungs = lung_r | lung_l
    if "Emphysema" in findings:  # ~40 bullae of 3 cm inside the lungs: ~15 % of the lung volume below -950 HU
        inside = np.argwhere(lungs)
        for c in inside[rng.choice(len(inside), size=40, replace=False)]:
            hu[lungs & _ellipsoid(grid, c, (2.0, 2.5, 2.5))] = -990.0
    if "Pleural effusion" in findings:
        eff = lung_r & (y > cy + R * 0.1)
        hu[eff] = 10.0
        lab[eff] = 0  # fluid in the pleural space is not lung (lung masks exclude an effusion)
    if "Consolidation" in findings:
        c = (cz + rng.uniform(-4, 4), cy, cx + C * 0.19)
        hu[lung_l & _ellipsoid(grid, c, (6.0, 6.0, 4.0))] = 30.0
    if "Lung nodule" in findings:  # 5 solid nodules of ~2.5 cm in the right lung
        for _ in range(5):
            c = (cz + rng.uniform(-10, 10), cy + rng.uniform(-8, 8), cx - C * 0.19 + rng.uniform(-3, 3))
            hu[lung_r & _ellipsoid(grid, c, (1.7, 2.1, 2.1))] = 40.0
    if "Arterial wall calcification" in findings:
        wall = ((y - (cy + R * 0.08)) ** 2 + (x - (cx + C * 0.02)) ** 2 <= (aorta_r + 1.0) ** 2) & ~aorta & (z > cz - S * 0.35) & (z < cz + S * 0.3)
        hu[wall & (rng.random(spec.shape) < 0.5)] = 900.0
    hu += rng.normal(0.0, 15.0, spec.shape).astype(np.float32)
    return hu, lab


def phantom_report(findings: Sequence[str], rng: np.random.Generator) -> tuple[str, str]:
    """Findings_EN and Impressions_EN text for the planted findings, in CT-RATE's phrasing."""
    sentences = ["Trachea and both main bronchi are open."]
    for name in PLANTED:
        sentences.append(_POSITIVE[name] if name in findings else _NEGATIVE[name])
    body = sentences  # a fixed order: the report is a function of the findings (rng kept for variants)
    impression = (
        "Findings consistent with " + ", ".join(f.lower() for f in findings) + "."
        if findings else "No significant pathological finding in the thorax."
    )
    return " ".join(body), impression


def _lps_to_nifti(array_zyx: np.ndarray, spacing: Sequence[float], dtype) -> object:
    """A NIfTI image (RAS affine) for a ``[slice, row, col]`` array on an axis-aligned LPS grid."""

    data = np.transpose(array_zyx, [2, 1, 0]).astype(dtype)  # [col(x), row(y), slice(z)]
    aff = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])  # LPS x,y flipped to RAS
    return nib.Nifti1Image(data, aff)


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
            hu, lab = make_phantom(planted, seed=seed * 100003 + counter, spec=spec)
            name = f"{split}_{i + 1}_a_1.nii.gz"
            vol_dir = ds / split / f"{split}_{i + 1}" / f"{split}_{i + 1}_a"
            vol_dir.mkdir(parents=True, exist_ok=True)
            nib.save(_lps_to_nifti(np.rint(hu + 1024.0), spec.spacing, np.int16), str(vol_dir / name))
            seg_dir = ds / "segmentations" / split
            seg_dir.mkdir(parents=True, exist_ok=True)
            nib.save(_lps_to_nifti(lab, spec.spacing, np.uint8), str(seg_dir / name))
            findings_text, impression = phantom_report(planted, rng)
            rows[split]["reports"].append([name, "Not given.", "Non-contrast phantom CT.", findings_text, impression])
            rows[split]["labels"].append([name] + [1 if f in planted else 0 for f in FINDINGS])
            rows[split]["metadata"].append([name, "1", "-1024", f"[{spec.spacing[1]}, {spec.spacing[2]}]", str(spec.spacing[0]), "PHANTOM"])
    if real_ct_dir is not None:
        _add_real_cts(Path(real_ct_dir), ds, rows)
    names = {
        "reports": ("radiology_text_reports", {"train": "train_reports.csv", "valid": "validation_reports.csv"},
                    ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]),
        "labels": ("multi_abnormality_labels", {"train": "train_predicted_labels.csv", "valid": "valid_predicted_labels.csv"},
                   ["VolumeName", *FINDINGS]),
        "metadata": ("metadata", {"train": "train_metadata.csv", "valid": "validation_metadata.csv"},
                     ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing", "Manufacturer"]),
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
        " plus TotalSegmentator test CTs, Apache-2.0). Not CT-RATE data.\n", encoding="utf-8")
    log.info("miniature dataset written to %s (%d train, %d valid phantoms)", ds, n_train, n_valid)
    return out_dir


def _add_real_cts(real: Path, ds: Path, rows: dict) -> None:
    """Add the real CTs: the 3 mm abdomen (with its 117-class segmentation) to train, the thorax to valid."""

    items = [("train", 1001, "abdomen_ct_3mm.nii.gz", "abdomen_ct_3mm_totalseg117.nii.gz"),
             ("valid", 1001, "thorax_ct_1.5mm.nii.gz", None)]
    for split, pid, vol, seg in items:
        src = real / vol
        if not src.is_file():
            log.warning("real CT %s not found; skipped", src)
            continue
        name = f"{split}_{pid}_a_1.nii.gz"
        vol_dir = ds / split / f"{split}_{pid}" / f"{split}_{pid}_a"
        vol_dir.mkdir(parents=True, exist_ok=True)
        img = nib.load(str(src))
        raw = np.asarray(img.dataobj).astype(np.float32) + 1024.0
        if seg is not None and (real / seg).is_file():
            seg_img = nib.load(str(real / seg))
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
        rows[split]["metadata"].append([name, "1", "-1024", f"[{zooms[1]}, {zooms[0]}]", str(zooms[2]), "TotalSegmentator test file"])
        # no label row: the real CTs have no report labels


def write_labels_json(path: Path) -> None:
    """The TotalSegmentator ids the phantom uses (for documentation and tests)."""
    Path(path).write_text(json.dumps(TS, indent=1), encoding="utf-8")
