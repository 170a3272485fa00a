"""Choose the CT series of a study to analyze, by rules kept as data (``data/series_rules.json``).

Pure functions, no I/O: :func:`prefilter` makes the cheap checks on the series summaries (a QIDO
search, or a folder's files) and names the candidates; the caller fetches the candidates' instance
metadata (:class:`~neuroradix.pacs.summaries.InstanceSummary`, no pixels) and :func:`select_series`
checks them and picks one. A study with no usable series raises :class:`NotEligibleError` whose
message lists why each series was rejected, which becomes the job's "skipped" reason.

Given :class:`~neuroradix.imaging.volume.SizeLimits`, the size of each series is decided here from
metadata, before any pixel is fetched: a QIDO instance count above the limit drops the series
before even its metadata is fetched, and Rows, Columns, BitsAllocated and NumberOfFrames are checked
on the metadata. A series over a limit is passed over for a smaller usable one; when none is left the
study fails (:class:`~neuroradix.errors.InputTooLargeError`, naming the numbers and the setting).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pydicom

from neuroradix.errors import BadInputError, ConfigError, InputTooLargeError, NotEligibleError
from neuroradix.imaging.frames import MULTIFRAME_CT_SOP_CLASSES
from neuroradix.imaging.volume import GeometryLimits, SizeLimits, check_orientations
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary

logger = logging.getLogger(__name__)

TOO_LARGE = "too large:"
"""Marks the reason of a series :func:`prefilter` dropped for its instance count."""


@dataclass(frozen=True)
class SeriesRules:
    """The selection rules of ``data/series_rules.json``, validated on construction (:class:`ConfigError`)."""

    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]
    image_type_required: tuple[str, ...]
    image_type_excluded: tuple[str, ...]
    series_description_excluded: tuple[str, ...]
    min_slices: int
    max_slice_spacing_mm: float
    max_normal_angle_from_axial_deg: float
    ranking: tuple[str, ...]

    _RANKINGS = ("most_slices", "thinnest_slices", "series_number")

    def __post_init__(self) -> None:
        if self.min_slices < 2:
            raise ConfigError("series rules: need min_slices >= 2")
        unknown = set(self.ranking) - set(self._RANKINGS)
        if unknown:
            raise ConfigError(f"series rules: unknown ranking keys {sorted(unknown)}; known {list(self._RANKINGS)}")
        if not 0 < self.max_normal_angle_from_axial_deg <= 90:
            raise ConfigError("series rules: max_normal_angle_from_axial_deg must be in (0, 90]")


_MOVED = {
    "max_slices": "is gone: the one slice cap is the setting NEURORADIX_MAX_SERIES_INSTANCES",
    "orientation_tolerance": "is gone: one orientation rule for selection and assembly "
    "(neuroradix.imaging.volume.check_orientations)",
}


def load_rules(text: Optional[str] = None) -> SeriesRules:
    """Load and validate the rules (the packaged file unless ``text`` is given)."""
    if text is None:
        text = (resources.files("neuroradix") / "data" / "series_rules.json").read_text(encoding="utf-8")
    data = json.loads(text)
    fields = [f for f in SeriesRules.__dataclass_fields__ if not f.startswith("_")]
    missing = [f for f in fields if f not in data]
    if missing:
        raise ConfigError(f"series rules: missing keys {missing}")
    moved = sorted(set(data) & set(_MOVED))
    if moved:
        raise ConfigError("series rules: " + "; ".join(f"{key} {_MOVED[key]}" for key in moved))
    unknown = sorted(set(data) - set(fields) - {"version", "description"})
    if unknown:
        raise ConfigError(f"series rules: unknown keys {unknown}")
    values: dict[str, Any] = {f: tuple(data[f]) if isinstance(data[f], list) else data[f] for f in fields}
    return SeriesRules(**values)


@dataclass(frozen=True)
class Candidate:
    """A usable series and what ranks it."""

    series_uid: str
    n_slices: int
    slice_spacing: float
    series_number: int
    description: str


def check_series(
    instances: Sequence[InstanceSummary], rules: SeriesRules, limits: Optional[SizeLimits] = None
) -> Candidate:
    """Check one series' instance metadata against the rules (and the size limits, when given).

    A multi-frame CT (Enhanced CT) is checked frame by frame: its frames are the slices (their count,
    their FrameType, their geometry from the functional groups).

    Raises
    ------
    NotEligibleError
        With the reason the series cannot be used.
    BadInputError
        From ``limits``: the series is too large (:class:`~neuroradix.errors.InputTooLargeError`) or
        its image size, BitsAllocated or frame count make no CT volume. The slice cap is
        ``limits.max_instances`` (setting ``NEURORADIX_MAX_SERIES_INSTANCES``), the only one.
    """
    if not instances:
        raise NotEligibleError("series has no instances")
    first = instances[0]
    if first.modality not in rules.modalities:
        raise NotEligibleError(f"modality {first.modality or 'missing'} is not {'/'.join(rules.modalities)}")
    sop_classes = {i.sop_class_uid for i in instances}
    if not sop_classes <= set(rules.sop_classes):
        names = sorted(pydicom.uid.UID(uid).name for uid in sop_classes - set(rules.sop_classes))
        known = ", ".join(pydicom.uid.UID(uid).name for uid in rules.sop_classes)
        raise NotEligibleError(f"SOP class {', '.join(names)} is not one the node analyzes ({known})")
    description = first.series_description
    if any(word in description.lower() for word in rules.series_description_excluded):
        raise NotEligibleError(f"series description {description!r} marks a localizer/report")
    multiframe = any(i.sop_class_uid in MULTIFRAME_CT_SOP_CLASSES for i in instances)
    planes = [plane for item in instances for plane in item.planes]
    for item in instances:
        if item.image_type and item.image_type[0] not in rules.image_type_required:
            raise NotEligibleError(f"image type {'/'.join(item.image_type)} is not ORIGINAL")
        excluded = set(item.image_type) & set(rules.image_type_excluded)
        if excluded:
            raise NotEligibleError(f"image type contains {sorted(excluded)}")
    if multiframe:
        for plane in planes:
            if plane.frame_type and plane.frame_type[0] not in rules.image_type_required:
                raise NotEligibleError(f"frame type {'/'.join(plane.frame_type)} is not ORIGINAL")
            excluded = set(plane.frame_type) & set(rules.image_type_excluded)
            if excluded:
                raise NotEligibleError(f"frame type contains {sorted(excluded)} (frame {plane.frame})")
    if len(planes) < rules.min_slices:
        raise NotEligibleError(f"{len(planes)} slices, fewer than {rules.min_slices}")
    for plane in planes:
        if plane.orientation is None or plane.position is None or plane.spacing is None:
            raise NotEligibleError(
                "frames lack ImageOrientationPatient/ImagePositionPatient/PixelSpacing in their functional groups"
                if multiframe
                else "instances lack ImageOrientationPatient/ImagePositionPatient/PixelSpacing"
            )
    orientations = np.array([p.orientation for p in planes], dtype=float)
    check_orientations(orientations, GeometryLimits().orientation_tolerance, "frames" if multiframe else "slices")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / max(float(np.linalg.norm(normal)), 1e-9)))))
    if angle > rules.max_normal_angle_from_axial_deg:
        raise NotEligibleError(f"not axial: slice normal is {angle:.0f} degrees from the body axis")
    sizes = {(i.rows or 0, i.columns or 0) for i in instances}
    if len(sizes) != 1:
        raise NotEligibleError(f"mixed image sizes {sorted(sizes)}")
    if limits is not None:
        bits = [i.bits_allocated for i in instances if i.bits_allocated is not None]
        if multiframe:
            limits.check(
                len(instances),
                first.rows,
                first.columns,
                bits_allocated=max(bits) if bits else None,
                total_frames=sum(i.number_of_frames or 1 for i in instances),
            )
        else:
            limits.check(
                len(instances),
                first.rows,
                first.columns,
                bits_allocated=max(bits) if bits else None,
                frames=max((i.number_of_frames or 1 for i in instances), default=1),
            )
    positions = np.sort(np.array([np.dot(np.asarray(p.position, float), normal) for p in planes]))
    steps = np.diff(positions)
    spacing = float(np.median(steps)) if steps.size else 0.0
    if spacing <= 0:
        raise NotEligibleError("slices share one position (several stacks or duplicates)")
    if spacing > rules.max_slice_spacing_mm:
        raise NotEligibleError(f"slice spacing {spacing:.1f} mm is above {rules.max_slice_spacing_mm} mm")
    return Candidate(
        series_uid=first.series_uid,
        n_slices=len(planes),
        slice_spacing=spacing,
        series_number=first.series_number or 0,
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
    series: Sequence[SeriesSummary],
    rules: SeriesRules,
    own_manufacturer: str,
    limits: Optional[SizeLimits] = None,
) -> tuple[list[list[str]], list[str]]:
    """Cheap checks on the series summaries, before anything is fetched.

    A series whose instance count is above ``limits.max_instances`` is dropped here (its reason
    holds :data:`TOO_LARGE`), so not even its metadata is fetched.

    Returns
    -------
    groups:
        The remaining series UIDs in groups of equal instance count, largest first (the order in
        which :func:`select_series` considers them).
    reasons:
        Why the others were dropped (our own result series are dropped silently).
    """
    reasons: list[str] = []
    kept: dict[int, list[str]] = {}
    for s in series:
        if s.manufacturer == own_manufacturer:
            continue  # our own results
        if s.modality not in rules.modalities:
            reasons.append(f"{s.label}: modality is not {'/'.join(rules.modalities)}")
            continue
        if any(word in s.description.lower() for word in rules.series_description_excluded):
            reasons.append(f"{s.label}: series description {s.description!r} marks a localizer/report")
            continue
        count = s.n_instances or 0  # a few instances may be multi-frame images: check_series counts the frames
        if limits is not None and count > limits.max_instances:
            reasons.append(
                f"{s.label}: {TOO_LARGE} {count} instances, above the limit of {limits.max_instances} "
                "(setting NEURORADIX_MAX_SERIES_INSTANCES)"
            )
            continue
        kept.setdefault(count, []).append(s.series_uid)
    return [kept[c] for c in sorted(kept, reverse=True)], reasons


def candidate_uids(
    series: Sequence[SeriesSummary], rules: SeriesRules, own_manufacturer: str, limits: Optional[SizeLimits] = None
) -> list[str]:
    """The series whose instance metadata :func:`select_series` needs, in the order it considers them."""
    groups, _ = prefilter(series, rules, own_manufacturer, limits)
    return [uid for group in groups for uid in group]


def select_series(
    series: Sequence[SeriesSummary],
    instances: Mapping[str, Sequence[InstanceSummary]],
    rules: SeriesRules,
    own_manufacturer: str,
    limits: Optional[SizeLimits] = None,
) -> Candidate:
    """Pick the best series of a study (a pure function: the caller has fetched what it needs).

    Parameters
    ----------
    series:
        The study's series summaries (QIDO-RS, or a folder's files).
    instances:
        Instance metadata by series UID, for the series :func:`candidate_uids` names. The usable
        series with the most slices (counted from the metadata, so an Enhanced CT counts its frames)
        wins, ties broken by ``rules.ranking``. A candidate missing from the mapping counts as
        having no instances.
    rules:
        The selection rules (:func:`load_rules`).
    own_manufacturer:
        Manufacturer of the node's own result series, which are never candidates.
    limits:
        Size limits (see the module docstring); ``None`` checks none.

    Returns
    -------
    Candidate
        The chosen series.

    Raises
    ------
    NotEligibleError
        When no series is usable; the message gives each series' reason.
    BadInputError
        When no series is usable and one was refused by ``limits``
        (:class:`~neuroradix.errors.InputTooLargeError` when one was too large); the message gives
        every series' reason.
    """
    groups, reasons = prefilter(series, rules, own_manufacturer, limits)
    refused: Optional[type[BadInputError]] = InputTooLargeError if any(TOO_LARGE in r for r in reasons) else None
    labels = {s.series_uid: s.label for s in series}
    candidates = []
    for group in groups:
        for uid in group:
            try:
                candidates.append(check_series(instances.get(uid, ()), rules, limits))
            except NotEligibleError as exc:
                reasons.append(f"{labels.get(uid, 'a series')}: {exc}")
            except BadInputError as exc:  # refused by the size limits: another series may do
                reasons.append(f"{labels.get(uid, 'a series')}: {exc}")
                refused = refused or type(exc)
    if candidates:
        # Most slices first (counted from the metadata: an Enhanced CT's frames), then the rules' ranking.
        best = min(candidates, key=lambda c: (-c.n_slices, *_rank_key(c, rules.ranking)))
        logger.info("selected a series of %d slices at %.2f mm", best.n_slices, best.slice_spacing)
        return best
    if reasons:
        detail = "; ".join(reasons)
    elif series:
        detail = "the study holds only this node's own results"
    else:
        detail = "the study has no series"
    raise (refused or NotEligibleError)(f"no usable CT series: {detail}")


def source_fingerprint(series: Sequence[Union[SeriesSummary, pydicom.Dataset]], own_manufacturer: str) -> str:
    """A short hash of the study's source series and their instance counts.

    Must give the same value as ``source_fingerprint`` in ``plugin/handoff.py`` for the same
    study (a test checks both): the plugin sends it with each hand-off, the worker records what it
    processed, and a difference means the study changed since (late slices, a new series).
    """
    summaries = [s if isinstance(s, SeriesSummary) else SeriesSummary.from_dataset(s) for s in series]
    items = tuple(sorted((s.series_uid, s.n_instances or 0) for s in summaries if s.manufacturer != own_manufacturer))
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]
