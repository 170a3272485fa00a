"""Assemble a CT series into a :class:`~neuroradix.types.Volume` with exact geometry.

Slices are sorted along the slice normal (never by InstanceNumber), the slice step comes from the
positions (never from SliceThickness), and HU from each slice's rescale. What is wrong with a
series is reported: a gap (missing slices) or duplicate positions fail with the reason; a gantry
tilt is kept exactly (the volume's slice axis follows the tilted positions, a sheared affine) and
reported as a warning.

Memory is bounded before anything is decoded: :class:`SizeLimits` checks the instance count, Rows,
Columns, BitsAllocated and NumberOfFrames (from WADO-RS metadata, before the fetch, and again from
the headers here), then one float32 volume of the known size is allocated and each slice is decoded
into it in turn; with ``release_pixels`` each slice's pixel data is dropped once decoded, so the
encoded series and the decoded volume are never held whole side by side.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pydicom

from neuroradix.errors import BadInputError, InputTooLargeError, UndecodablePixelsError
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
    # A slice may lie this fraction of the smallest voxel side off the even grid: the volume and the
    # writers (which check each source slice against it) place slice i at first + i * step.
    grid_offset_fraction: float = 0.05


BITS_ALLOCATED = (8, 16, 32)
"""The BitsAllocated a CT slice may have (CT Image Storage itself requires 16)."""


@dataclass(frozen=True)
class SizeLimits:
    """How large a series the node accepts; each limit is a setting (:class:`~neuroradix.config.PipelineSettings`).

    The defaults take chest CTs of up to 1,000 slices of 512x512, and 1024x1024 matrices up to the
    same voxel count (about 262 M voxels: a 1.05 GB float32 volume).
    """

    max_instances: int = 2000
    max_voxels: int = 1000 * 512 * 512
    max_rows_columns: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_instances", "max_voxels", "max_rows_columns"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def check(
        self,
        n_instances: int,
        rows: Optional[int],
        columns: Optional[int],
        *,
        bits_allocated: Optional[int] = None,
        frames: Optional[int] = None,
    ) -> None:
        """Check a series' size, from metadata alone.

        Parameters
        ----------
        n_instances:
            Instances in the series.
        rows, columns:
            Every instance's Rows and Columns (``None``: absent, which is bad input).
        bits_allocated:
            BitsAllocated, when known (``None``: not said; checked when the pixels are decoded).
        frames:
            The largest NumberOfFrames of the instances (``None`` or 1: single-frame images).

        Raises
        ------
        InputTooLargeError
            A count, side or voxel total above its limit; the message gives the numbers and the
            setting (``NEURORADIX_MAX_...``) that raises the limit.
        BadInputError
            Rows/Columns missing or not positive, a BitsAllocated a CT slice cannot have, or
            several frames in one instance of a single-frame CT series.
        """
        if n_instances > self.max_instances:
            raise InputTooLargeError(
                f"series has {n_instances} instances, above the limit of {self.max_instances} "
                "(setting NEURORADIX_MAX_SERIES_INSTANCES)"
            )
        if rows is None or columns is None or rows < 1 or columns < 1:
            raise BadInputError(f"image size Rows {rows} x Columns {columns} is missing or not positive")
        if max(rows, columns) > self.max_rows_columns:
            raise InputTooLargeError(
                f"image size {rows} x {columns} exceeds the limit of {self.max_rows_columns} pixels a side "
                "(setting NEURORADIX_MAX_IMAGE_SIDE)"
            )
        if bits_allocated is not None and bits_allocated not in BITS_ALLOCATED:
            raise BadInputError(f"BitsAllocated {bits_allocated} is not one of {list(BITS_ALLOCATED)}")
        if frames is not None and frames > 1:
            raise BadInputError(
                f"an instance holds {frames} frames (NumberOfFrames): a CT Image series has one frame per instance"
            )
        voxels = n_instances * rows * columns
        if voxels > self.max_voxels:
            raise InputTooLargeError(
                f"series too large: {n_instances} x {rows} x {columns} = {voxels:,} voxels exceeds the limit of "
                f"{self.max_voxels:,} (setting NEURORADIX_MAX_VOLUME_VOXELS; a float32 volume of "
                f"{voxels * 4 / 1024**3:.1f} GiB)"
            )


def _frames(ds: pydicom.Dataset) -> Optional[int]:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not a number") from exc


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """The slice's stored values.

    Only a compressed syntax this process cannot decode is :class:`UndecodablePixelsError` (the PACS
    may transcode it); pixel data that is missing, or corrupt in an uncompressed syntax, is plain
    bad input: transcoding cannot repair it.
    """
    number = ds.get("InstanceNumber", "?")
    if "PixelData" not in ds:
        raise BadInputError(f"instance {number} has no pixel data (PixelData is missing)")
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        if syntax is not None and not syntax.is_compressed:
            raise BadInputError(f"pixel data of instance {number} is corrupt ({name}): {exc}") from exc
        raise UndecodablePixelsError(f"cannot decode pixel data (transfer syntax {name}): {exc}") from exc


def return_freed_memory() -> None:
    """Give heap pages freed by :func:`release_pixels` back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Without it the freed pixel data of a large series stays in the process's resident memory (the
    pieces are too small for glibc to unmap one by one) while the analyzers allocate their arrays anew.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def release_pixels(ds: pydicom.Dataset) -> None:
    """Drop a dataset's pixel data and pydicom's decoded copy (the headers stay, for the writers)."""
    if "PixelData" in ds:
        del ds.PixelData  # pydicom drops its cached decoded array with it


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
    offset = float(np.abs(ipps[order] - (first + np.outer(np.arange(len(datasets)), step))).max())
    allowed = limits.grid_offset_fraction * float(min(np.linalg.norm(step), *spacings[0])) + 1e-3
    if offset > allowed:
        raise BadInputError(
            f"slices are not evenly spaced: the spacing varies from {steps.min():.2f} to {steps.max():.2f} mm and a "
            f"slice lies {offset:.2f} mm off the even grid (at most {allowed:.2f} mm); send a reconstruction "
            "with even slice spacing"
        )
    tilt = float(np.degrees(np.arccos(np.clip(np.dot(step, normal) / np.linalg.norm(step), -1, 1))))
    if tilt > limits.tilt_warning_deg:
        warnings.append(f"gantry tilt of {tilt:.1f} degrees: kept on the tilted (sheared) grid")
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * spacings[0][0]
    affine[:3, 2] = row_dir * spacings[0][1]
    affine[:3, 3] = first
    return order, affine, tuple(warnings)


@dataclass(frozen=True)
class SeriesLayout:
    """A series checked and sorted from its headers, before any pixel is decoded (:func:`plan`)."""

    datasets: tuple[pydicom.Dataset, ...]  # in the volume's slice order
    affine: np.ndarray
    shape: tuple[int, int, int]
    warnings: tuple[str, ...]


def plan(
    datasets: Sequence[pydicom.Dataset], limits: GeometryLimits = GeometryLimits(), size: SizeLimits = SizeLimits()
) -> SeriesLayout:
    """Check a series' size and geometry from its headers and sort it; nothing is decoded.

    Raises
    ------
    InputTooLargeError
        The series exceeds ``size``.
    BadInputError
        Headers that make no volume (sizes, geometry, gaps, duplicates).
    """
    if not datasets:
        raise BadInputError("the series has no instances")
    try:
        sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
        bits = {int(ds.get("BitsAllocated", 16) or 16) for ds in datasets}
    except (AttributeError, ValueError, TypeError) as exc:
        raise BadInputError(f"Rows/Columns/BitsAllocated missing or invalid: {exc}") from exc
    rows, cols = max(sizes)
    size.check(len(datasets), rows, cols, bits_allocated=max(bits), frames=max(_frames(ds) or 1 for ds in datasets))
    order, affine, warnings = geometry(datasets, limits)
    if any(str(ds.get("LossyImageCompression", "")) == "01" for ds in datasets):
        warnings += (
            "the images were lossy compressed (LossyImageCompression 01): densities (LAA, percentiles) may be biased",
        )
    return SeriesLayout(tuple(datasets[i] for i in order), affine, (len(datasets), rows, cols), warnings)


def decode(layout: SeriesLayout, *, release: bool = False) -> AssembledSeries:
    """Decode each slice of ``layout`` in turn into one preallocated float32 HU volume.

    Parameters
    ----------
    layout:
        From :func:`plan`.
    release:
        Drop each slice's pixel data once it is decoded (:func:`release_pixels`): the returned
        datasets keep their headers only. For callers that own the datasets (the pipeline).

    Raises
    ------
    UndecodablePixelsError
        A slice's pixel data cannot be decoded here (naming the transfer syntax).
    BadInputError
        A slice that decodes to another shape.
    """
    shape = layout.shape
    array = np.empty(shape, dtype=np.float32)
    for k, ds in enumerate(layout.datasets):
        pixels = _decode(ds)
        if pixels.shape != shape[1:]:
            raise BadInputError(f"slice {k} decodes to shape {pixels.shape}, expected {shape[1:]}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        target = array[k]
        target[...] = pixels
        if slope != 1.0:
            target *= np.float32(slope)
        if intercept != 0.0:
            target += np.float32(intercept)
        del pixels
        if release:
            release_pixels(ds)
            if k % 64 == 63:  # as the volume fills, the encoded slices' memory goes back
                return_freed_memory()
    if release:
        return_freed_memory()
    for w in layout.warnings:
        LOG.warning("volume: %s", w)
    volume = Volume(array, layout.affine, AcquisitionInfo.from_dataset(layout.datasets[0]))
    return AssembledSeries(volume, layout.datasets, layout.warnings)


def assemble(
    datasets: Sequence[pydicom.Dataset],
    limits: GeometryLimits = GeometryLimits(),
    size: SizeLimits = SizeLimits(),
    *,
    release: bool = False,
) -> AssembledSeries:
    """Check, sort and decode a CT series into one float32 HU volume: :func:`plan`, then :func:`decode`."""
    return decode(plan(datasets, limits, size), release=release)
