"""Choose the CT series of a study to analyze, by rules kept as data (``data/series_rules.json``).

Cheap checks on the QIDO results come first; the remaining series are then checked on their
instances, largest first, so the worker normally fetches only the series it analyzes. A study with no usable series raises :class:`NotEligibleError` whose
message lists why each series was rejected, which becomes the job's "skipped" reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Optional, Sequence

import numpy as np
import pydicom

from neuroradix.errors import ConfigError, NotEligibleError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesRules:
    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]
    image_type_required: tuple[str, ...]
    image_type_excluded: tuple[str, ...]
    series_description_excluded: tuple[str, ...]
    min_slices: int
    max_slices: int
    max_slice_spacing_mm: float
    max_normal_angle_from_axial_deg: float
    orientation_tolerance: float
    ranking: tuple[str, ...]

    _RANKINGS = ("most_slices", "thinnest_slices", "series_number")

    def __post_init__(self) -> None:
        if self.min_slices < 2 or self.max_slices < self.min_slices:
            raise ConfigError("series rules: need 2 <= min_slices <= max_slices")
        unknown = set(self.ranking) - set(self._RANKINGS)
        if unknown:
            raise ConfigError(f"series rules: unknown ranking keys {sorted(unknown)}; known {list(self._RANKINGS)}")
        if not 0 < self.max_normal_angle_from_axial_deg <= 90:
            raise ConfigError("series rules: max_normal_angle_from_axial_deg must be in (0, 90]")


def load_rules(text: Optional[str] = None) -> SeriesRules:
    """Load and validate the rules (the packaged file unless ``text`` is given)."""
    if text is None:
        text = (resources.files("neuroradix") / "data" / "series_rules.json").read_text(encoding="utf-8")
    data = json.loads(text)
    fields = [f for f in SeriesRules.__dataclass_fields__ if not f.startswith("_")]
    missing = [f for f in fields if f not in data]
    if missing:
        raise ConfigError(f"series rules: missing keys {missing}")
    values = {f: tuple(data[f]) if isinstance(data[f], list) else data[f] for f in fields}
    return SeriesRules(**values)


@dataclass(frozen=True)
class Candidate:
    series_uid: str
    n_slices: int
    slice_spacing: float
    series_number: int
    description: str


def _tags(ds: pydicom.Dataset, name: str, default=None):
    value = ds.get(name, default)
    return default if value is None or value == "" else value


def check_series(instances: Sequence[pydicom.Dataset], rules: SeriesRules) -> Candidate:
    """Check one series' instance metadata against the rules; raise NotEligibleError with the reason."""
    if not instances:
        raise NotEligibleError("series has no instances")
    first = instances[0]
    modality = str(_tags(first, "Modality", ""))
    if modality not in rules.modalities:
        raise NotEligibleError(f"modality {modality or 'missing'} is not {'/'.join(rules.modalities)}")
    sop_classes = {str(_tags(ds, "SOPClassUID", "")) for ds in instances}
    if not sop_classes <= set(rules.sop_classes):
        raise NotEligibleError(f"SOP class {sorted(sop_classes)} is not CT Image Storage")
    description = str(_tags(first, "SeriesDescription", ""))
    if any(word in description.lower() for word in rules.series_description_excluded):
        raise NotEligibleError(f"series description {description!r} marks a localizer/report")
    for ds in instances:
        image_type = [str(v).upper() for v in (_tags(ds, "ImageType", []) or [])]
        if image_type and image_type[0] not in rules.image_type_required:
            raise NotEligibleError(f"image type {'/'.join(image_type)} is not ORIGINAL")
        excluded = set(image_type) & set(rules.image_type_excluded)
        if excluded:
            raise NotEligibleError(f"image type contains {sorted(excluded)}")
    if len(instances) < rules.min_slices:
        raise NotEligibleError(f"{len(instances)} slices, fewer than {rules.min_slices}")
    if len(instances) > rules.max_slices:
        raise NotEligibleError(f"{len(instances)} slices, more than {rules.max_slices}")
    orientations = []
    for ds in instances:
        iop = _tags(ds, "ImageOrientationPatient")
        ipp = _tags(ds, "ImagePositionPatient")
        if iop is None or ipp is None or _tags(ds, "PixelSpacing") is None:
            raise NotEligibleError("instances lack ImageOrientationPatient/ImagePositionPatient/PixelSpacing")
        orientations.append(np.asarray(iop, dtype=float))
    orientations = np.stack(orientations)
    if np.abs(orientations - orientations[0]).max() > rules.orientation_tolerance:
        raise NotEligibleError("mixed orientations within the series")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / max(np.linalg.norm(normal), 1e-9)))))
    if angle > rules.max_normal_angle_from_axial_deg:
        raise NotEligibleError(f"not axial: slice normal is {angle:.0f} degrees from the body axis")
    sizes = {(int(_tags(ds, "Rows", 0)), int(_tags(ds, "Columns", 0))) for ds in instances}
    if len(sizes) != 1:
        raise NotEligibleError(f"mixed image sizes {sorted(sizes)}")
    positions = np.sort(np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for ds in instances]))
    steps = np.diff(positions)
    spacing = float(np.median(steps)) if steps.size else 0.0
    if spacing <= 0:
        raise NotEligibleError("slices share one position (several stacks or duplicates)")
    if spacing > rules.max_slice_spacing_mm:
        raise NotEligibleError(f"slice spacing {spacing:.1f} mm is above {rules.max_slice_spacing_mm} mm")
    return Candidate(
        series_uid=str(first.SeriesInstanceUID),
        n_slices=len(instances),
        slice_spacing=spacing,
        series_number=int(_tags(first, "SeriesNumber", 0) or 0),
        description=description,
    )


def _rank_key(candidate: Candidate, ranking: Sequence[str]) -> tuple:
    keys = {
        "most_slices": -candidate.n_slices,
        "thinnest_slices": candidate.slice_spacing,
        "series_number": candidate.series_number,
    }
    return tuple(keys[r] for r in ranking)


def prefilter(
    series: Sequence[pydicom.Dataset], rules: SeriesRules, own_manufacturer: str
) -> tuple[list[list[str]], list[str]]:
    """Cheap checks on QIDO series results, before anything is fetched.

    Returns the remaining series UIDs in groups of equal instance count, largest first (the
    fetch order), and the reasons the others were dropped.
    """
    reasons: list[str] = []
    kept: dict[int, list[str]] = {}
    for s in series:
        label = f"series {s.get('SeriesNumber', '?')} ({s.get('Modality', '?')})"
        if str(s.get("Manufacturer", "")) == own_manufacturer:
            continue  # our own results
        if str(s.get("Modality", "")) not in rules.modalities:
            reasons.append(f"{label}: modality is not {'/'.join(rules.modalities)}")
            continue
        description = str(s.get("SeriesDescription", "") or "")
        if any(word in description.lower() for word in rules.series_description_excluded):
            reasons.append(f"{label}: series description {description!r} marks a localizer/report")
            continue
        count = int(s.get("NumberOfSeriesRelatedInstances", 0) or 0)
        if 0 < count < rules.min_slices:
            reasons.append(f"{label}: {count} slices, fewer than {rules.min_slices}")
            continue
        kept.setdefault(count, []).append(str(s.get("SeriesInstanceUID", "")))
    return [kept[c] for c in sorted(kept, reverse=True)], reasons


def select_series(
    series: Sequence[pydicom.Dataset],
    instances: Callable[[str], Sequence[pydicom.Dataset]],
    rules: SeriesRules,
    own_manufacturer: str,
) -> Candidate:
    """Pick the best series of a study.

    Parameters
    ----------
    series:
        QIDO series results of the study (Modality, SeriesInstanceUID, Manufacturer,
        NumberOfSeriesRelatedInstances ...).
    instances:
        ``instances(series_uid)`` returns that series' instances (or their metadata). It is
        called for the largest series first and only until a group of equal size yields a
        usable series, so the worker fetches the series it will analyze and rarely more.
    """
    groups, reasons = prefilter(series, rules, own_manufacturer)
    for group in groups:
        candidates = []
        for uid in group:
            label = next((f"series {s.get('SeriesNumber', '?')} ({s.get('Modality', '?')})"
                          for s in series if str(s.get("SeriesInstanceUID", "")) == uid), uid)
            try:
                candidates.append(check_series(instances(uid), rules))
            except NotEligibleError as exc:
                reasons.append(f"{label}: {exc}")
        if candidates:
            best = min(candidates, key=lambda c: _rank_key(c, rules.ranking))
            LOG.info("selected a series of %d slices at %.2f mm", best.n_slices, best.slice_spacing)
            return best
    detail = "; ".join(reasons) if reasons else "the study has no series"
    raise NotEligibleError(f"no usable CT series: {detail}")


def source_fingerprint(series: Sequence[pydicom.Dataset], own_manufacturer: str) -> str:
    """A short hash of the study's source series and their instance counts (QIDO results).

    Must give the same value as ``source_fingerprint`` in ``plugin/handoff.py`` for the same
    study (a test checks both): the plugin sends it with each hand-off, the worker records what it
    processed, and a difference means the study changed since (late slices, a new series).
    """
    items = tuple(
        sorted(
            (str(s.get("SeriesInstanceUID", "")), int(s.get("NumberOfSeriesRelatedInstances", 0) or 0))
            for s in series
            if str(s.get("Manufacturer", "")) != own_manufacturer
        )
    )
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]
