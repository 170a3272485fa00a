"""Assemble a CT series into a :class:`~neuroradix.types.Volume` with exact geometry.

Slices are sorted along the slice normal (never by InstanceNumber), the slice step comes from the
positions (never from SliceThickness), and HU from each slice's rescale. What is wrong with a
series is reported: a gap (missing slices) or duplicate positions fail with the reason; a gantry
tilt is kept exactly (the volume's slice axis follows the tilted positions, a sheared affine) and
reported as a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pydicom

from neuroradix.errors import BadInputError
from neuroradix.types import AcquisitionInfo, Volume

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssembledSeries:
    """A volume and the source instances in the volume's slice order (``datasets[i]`` is slice ``i``)."""

    volume: Volume
    datasets: tuple[pydicom.Dataset, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GeometryLimits:
    """Tolerances of series assembly: direction mismatch and how large a slice step counts as a gap."""

    orientation_tolerance: float = 1e-3
    gap_factor: float = 1.5  # a step this much larger than the median is a gap
    uniformity_tolerance_mm: float = 0.05
    tilt_warning_deg: float = 0.5
    max_voxels: int = 600 * 512 * 512


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise BadInputError(f"cannot decode pixel data (transfer syntax {name}): {exc}") from exc


def geometry(datasets: Sequence[pydicom.Dataset], limits: GeometryLimits = GeometryLimits()):
    """Sort instances along the normal and derive the affine; returns ``(order, affine, warnings)``."""
    if len(datasets) < 2:
        raise BadInputError(f"a volume needs at least 2 slices, got {len(datasets)}")
    try:
        iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
        ipps = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
        sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    except (AttributeError, ValueError, TypeError) as exc:
        raise BadInputError(f"slice geometry attributes missing or invalid: {exc}") from exc
    if np.abs(iops - iops[0]).max() > limits.orientation_tolerance:
        raise BadInputError("mixed orientations within the series (ImageOrientationPatient differs between slices)")
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        raise BadInputError("PixelSpacing differs between slices")
    if len(sizes) != 1:
        raise BadInputError(f"image sizes differ between slices: {sorted(sizes)}")
    row_dir, col_dir = iops[0][:3], iops[0][3:]  # along a row (column index), along a column (row index)
    if (
        abs(np.dot(row_dir, col_dir)) > 1e-3
        or abs(np.linalg.norm(row_dir) - 1) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1) > 1e-3
    ):
        raise BadInputError("ImageOrientationPatient is not two orthonormal vectors")
    normal = np.cross(row_dir, col_dir)
    along = ipps @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise BadInputError("two or more slices share one position (duplicates, or several stacks in one series)")
    median = float(np.median(steps))
    gaps = np.nonzero(steps > limits.gap_factor * median)[0]
    if gaps.size:
        i = int(gaps[0])
        raise BadInputError(
            f"missing slices: a gap of {steps[i]:.2f} mm between slice positions {along[i]:.2f} and "
            f"{along[i + 1]:.2f} mm where the spacing is {median:.2f} mm ({gaps.size} gap(s))"
        )
    warnings = []
    if float(steps.max() - steps.min()) > limits.uniformity_tolerance_mm:
        warnings.append(
            f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm; slices placed on a uniform grid with the mean step"
        )
    first, last = ipps[order[0]], ipps[order[-1]]
    step = (last - first) / (len(datasets) - 1)
    tilt = float(np.degrees(np.arccos(np.clip(np.dot(step, normal) / np.linalg.norm(step), -1, 1))))
    if tilt > limits.tilt_warning_deg:
        warnings.append(f"gantry tilt of {tilt:.1f} degrees: kept on the tilted (sheared) grid")
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * spacings[0][0]
    affine[:3, 2] = row_dir * spacings[0][1]
    affine[:3, 3] = first
    return order, affine, tuple(warnings)


def assemble(datasets: Sequence[pydicom.Dataset], limits: GeometryLimits = GeometryLimits()) -> AssembledSeries:
    """Decode, sort and stack a CT series into HU."""
    if not datasets:
        raise BadInputError("the series has no instances")
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if len(datasets) * rows * cols > limits.max_voxels:
        raise BadInputError(
            f"series too large: {len(datasets)} x {rows} x {cols} voxels exceeds the limit of {limits.max_voxels}"
        )
    order, affine, warnings = geometry(datasets, limits)
    ordered = tuple(datasets[i] for i in order)
    array = np.empty((len(ordered), rows, cols), dtype=np.float32)
    for k, ds in enumerate(ordered):
        pixels = _decode(ds)
        if pixels.shape != (rows, cols):
            raise BadInputError(f"slice {k} decodes to shape {pixels.shape}, expected {(rows, cols)}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        array[k] = pixels.astype(np.float32) * slope + intercept
    for w in warnings:
        LOG.warning("volume: %s", w)
    return AssembledSeries(Volume(array, affine, AcquisitionInfo.from_dataset(ordered[0])), ordered, warnings)
