"""Readers for CT-RATE's published layout, with checks that name what is missing.

The layout (``ibrahimhamamci/CT-RATE`` on Hugging Face, see ``docs/training.md``)::

    <root>/dataset/train/train_1/train_1_a/train_1_a_1.nii.gz        (or train_fixed/...)
    <root>/dataset/valid/valid_1/valid_1_a/valid_1_a_1.nii.gz        (or valid_fixed/...)
    <root>/dataset/radiology_text_reports/train_reports.csv           VolumeName, ClinicalInformation_EN,
    <root>/dataset/radiology_text_reports/validation_reports.csv      Technique_EN, Findings_EN, Impressions_EN
    <root>/dataset/multi_abnormality_labels/train_predicted_labels.csv   VolumeName + 18 finding columns
    <root>/dataset/multi_abnormality_labels/valid_predicted_labels.csv
    <root>/dataset/metadata/train_metadata.csv                         VolumeName, RescaleSlope, RescaleIntercept,
    <root>/dataset/metadata/validation_metadata.csv                    XYSpacing ("[0.75, 0.75]"), ZSpacing, ...

``root`` may also be the ``dataset`` folder itself. Segmentation masks (stage 1) are not part of
CT-RATE; they come from any source scheme (e.g. TotalSegmentator's 117 classes) under
``<root>/dataset/segmentations/<split>/<VolumeName>`` and go through the remap tables.
"""

from __future__ import annotations

import ast
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, cast

import nibabel as nib
import numpy as np

from neuroradix.errors import BadInputError, ConfigError
from neuroradix.imaging.nifti import array_to_volume
from neuroradix.types import Volume
from neuroradix_train.data.findings import FINDINGS

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid")
REPORT_COLUMNS = ("VolumeName", "Findings_EN", "Impressions_EN")
REPORT_OPTIONAL_COLUMNS = ("ClinicalInformation_EN", "Technique_EN")
LABEL_COLUMNS = ("VolumeName",) + FINDINGS
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")

_CSV_NAMES = {
    "reports": {
        "train": "radiology_text_reports/train_reports.csv",
        "valid": "radiology_text_reports/validation_reports.csv",
    },
    "labels": {
        "train": "multi_abnormality_labels/train_predicted_labels.csv",
        "valid": "multi_abnormality_labels/valid_predicted_labels.csv",
    },
    "metadata": {"train": "metadata/train_metadata.csv", "valid": "metadata/validation_metadata.csv"},
}


@dataclass(frozen=True)
class ScanRecord:
    """One CT-RATE volume with everything the three stages need."""

    name: str  # VolumeName, e.g. "train_1_a_1.nii.gz"
    split: str
    path: Path
    findings_text: str
    impressions_text: str
    labels: Optional[np.ndarray]  # (18,) int, or None when the label CSV has no row
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    spacing_zyx: Optional[tuple[float, float, float]] = None  # from the metadata CSV
    segmentation: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @property
    def report(self) -> str:
        """Findings and impressions joined, the target text of report generation."""
        parts = [p.strip() for p in (self.findings_text, self.impressions_text) if p and p.strip()]
        return " ".join(parts)

    @property
    def stem(self) -> str:
        return self.name[: -len(".nii.gz")] if self.name.endswith(".nii.gz") else self.name


def dataset_dir(root: Path | str) -> Path:
    """The ``dataset`` folder of a CT-RATE download (``root`` or ``root/dataset``)."""
    root = Path(root)
    if (root / "dataset").is_dir():
        return root / "dataset"
    if root.is_dir():
        return root
    raise ConfigError(f"CT-RATE root {root} does not exist")


def csv_path(root: Path | str, kind: str, split: str) -> Path:
    """Path of one of CT-RATE's CSVs (``kind`` in reports/labels/metadata)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        return dataset_dir(root) / _CSV_NAMES[kind][split]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(_CSV_NAMES)}, got {kind!r}") from None


def read_csv_checked(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Read a CSV and check that every ``required`` column is there.

    Raises
    ------
    ConfigError
        The file is missing, or columns are missing (all of them are named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CT-RATE file missing: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ConfigError(f"{path}: column(s) missing: {', '.join(missing)} (header has: {', '.join(header)})")
        rows = list(reader)
    seen: set[str] = set()
    for i, row in enumerate(rows):
        name = row.get("VolumeName", "")
        if not name:
            raise ConfigError(f"{path}: row {i + 2} has an empty VolumeName")
        if name in seen:
            logger.warning("%s: VolumeName %s appears more than once; the first row is used", path.name, name)
        seen.add(name)
    return rows


def _by_name(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        out.setdefault(_normalise_name(row["VolumeName"]), row)
    return out


def _normalise_name(name: str) -> str:
    name = name.strip()
    return name if name.endswith(".nii.gz") else name + ".nii.gz"


def parse_xy_spacing(value: str) -> tuple[float, float]:
    """CT-RATE writes XYSpacing as a Python list literal, e.g. ``"[0.75, 0.75]"``."""
    try:
        parsed = ast.literal_eval(str(value).strip())
        if isinstance(parsed, int | float):
            return float(parsed), float(parsed)
        row, col = (float(v) for v in parsed)
        return row, col
    except (ValueError, SyntaxError, TypeError) as exc:
        raise BadInputError(f"XYSpacing {value!r} is not a pair of numbers") from exc


def volume_path(root: Path | str, name: str) -> Path:
    """Where CT-RATE stores a volume: ``<split>[_fixed]/<split>_<p>/<split>_<p>_<s>/<name>``."""
    base = dataset_dir(root)
    parts = _normalise_name(name)[: -len(".nii.gz")].split("_")
    if len(parts) != 4 or parts[0] not in SPLITS:
        raise BadInputError(f"VolumeName {name!r} does not follow <split>_<patient>_<scan>_<reconstruction>.nii.gz")
    split, patient, scan = parts[0], parts[1], parts[2]
    rel = Path(f"{split}_{patient}") / f"{split}_{patient}_{scan}" / _normalise_name(name)
    for folder in (f"{split}_fixed", split):
        candidate = base / folder / rel
        if candidate.is_file():
            return candidate
    return base / split / rel


def load_records(
    root: Path | str, split: str, *, require_volumes: bool = True, require_labels: bool = True
) -> list[ScanRecord]:
    """All scans of a split with their report, labels, metadata and (optional) segmentation.

    Reports define the scans; labels and metadata are joined by VolumeName.

    Raises
    ------
    ConfigError
        A CSV or column is missing, or (with ``require_volumes``) a volume file is missing;
        the message names the file.
    """
    reports = read_csv_checked(csv_path(root, "reports", split), REPORT_COLUMNS)
    metadata = _by_name(read_csv_checked(csv_path(root, "metadata", split), METADATA_COLUMNS))
    labels_path = csv_path(root, "labels", split)
    labels = _by_name(read_csv_checked(labels_path, LABEL_COLUMNS)) if (require_labels or labels_path.exists()) else {}
    seg_dir = dataset_dir(root) / "segmentations" / split
    records: list[ScanRecord] = []
    missing_volumes: list[str] = []
    for row in reports:
        name = _normalise_name(row["VolumeName"])
        meta = metadata.get(name)
        if meta is None:
            raise ConfigError(f"{csv_path(root, 'metadata', split)}: no row for VolumeName {name}")
        label_row = labels.get(name)
        if label_row is None and require_labels:
            raise ConfigError(f"{labels_path}: no row for VolumeName {name}")
        label_vec = None
        if label_row is not None:
            try:
                label_vec = np.array([int(float(label_row[c])) for c in FINDINGS], dtype=np.int64)
            except ValueError as exc:
                raise ConfigError(f"{labels_path}: VolumeName {name}: labels must be 0/1: {exc}") from exc
        path = volume_path(root, name)
        if not path.is_file():
            missing_volumes.append(str(path))
            continue
        xy = parse_xy_spacing(meta["XYSpacing"])
        seg = seg_dir / name
        records.append(
            ScanRecord(
                name=name,
                split=split,
                path=path,
                findings_text=row.get("Findings_EN") or "",
                impressions_text=row.get("Impressions_EN") or "",
                labels=label_vec,
                rescale_slope=float(meta["RescaleSlope"]),
                rescale_intercept=float(meta["RescaleIntercept"]),
                spacing_zyx=(float(meta["ZSpacing"]), xy[0], xy[1]),
                segmentation=seg if seg.is_file() else None,
            )
        )
    if missing_volumes and require_volumes:
        raise ConfigError(f"{len(missing_volumes)} volume file(s) missing, first: {missing_volumes[0]}")
    if missing_volumes:
        logger.warning("%d volumes listed in the reports are not on disk; skipped", len(missing_volumes))
    return records


def load_volume(record: ScanRecord, *, intensity: str = "auto") -> Volume:
    """Read a record's NIfTI into a :class:`~neuroradix.types.Volume` in HU, LPS and axial order.

    The geometry goes through the node's conversion (:func:`neuroradix.imaging.nifti.array_to_volume`),
    so training sees scans oriented as the node's analyzers see them; the metadata CSV's spacing
    replaces the header's.

    Parameters
    ----------
    intensity:
        ``"raw"``: apply RescaleSlope/RescaleIntercept from the metadata CSV (CT-RATE's first
        release stored raw values); ``"hu"``: the file is already in HU (the ``*_fixed``
        folders); ``"auto"``: ``hu`` for files under a ``*_fixed`` folder, else ``raw``.
    """

    img = cast(nib.Nifti1Image, nib.load(str(record.path)))
    data = np.asarray(img.dataobj).astype(np.float32)  # raw stored values, no NIfTI scaling
    if data.ndim != 3:
        raise BadInputError(f"{record.path}: expected a 3-D volume, got shape {data.shape}")
    mode = intensity
    if mode == "auto":
        mode = "hu" if any(p.endswith("_fixed") for p in record.path.parts) else "raw"
    if mode == "raw":
        data = data * record.rescale_slope + record.rescale_intercept
    elif mode != "hu":
        raise ValueError(f"intensity must be raw, hu or auto, got {intensity!r}")
    return array_to_volume(data, img.affine, record.spacing_zyx)


def load_label_map(path: Path) -> np.ndarray:
    """A segmentation NIfTI as an int16 array ``[slice, row, col]`` on the grid of its volume.

    It goes through the same conversion as :func:`load_volume`
    (:func:`neuroradix.imaging.nifti.array_to_volume`), so a scan and its segmentation, stored
    with one affine, come out voxel for voxel on one grid.
    """
    img = cast(nib.Nifti1Image, nib.load(str(path)))
    data = np.rint(np.asarray(img.dataobj)).astype(np.int16)
    if data.ndim != 3:
        raise BadInputError(f"{path}: expected a 3-D segmentation, got shape {data.shape}")
    return array_to_volume(data, img.affine).array
