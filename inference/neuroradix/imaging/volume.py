"""Assemble a CT series into a :class:`~neuroradix.types.Volume` with exact geometry.

Slices are sorted along the slice normal (never by InstanceNumber), the slice step comes from the
positions (never from SliceThickness), and HU from each slice's rescale. What is wrong with a
series is reported: a gap (missing slices) or duplicate positions fail with the reason; a gantry
tilt is kept exactly (the volume's slice axis follows the tilted positions, a sheared affine) and
reported as a warning. A series whose slices do not share one orientation is no volume: the
series is skipped (:class:`~neuroradix.errors.NotEligibleError`, :func:`check_orientations`, the one
rule that series selection applies too).

Multi-frame CT (Enhanced CT Image Storage, Legacy Converted Enhanced CT Image Storage: one instance
holding many slices as frames, or a series of several such instances) is assembled the same way:
each frame is a slice, its geometry and rescale read from the functional groups
(:mod:`neuroradix.imaging.frames`), the frames sorted by position whatever their stored order, with
the same checks (gaps, duplicates, tilt, orientation) and the same limits (the frames count as
slices).

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
from typing import Iterator, Optional, Sequence

import numpy as np
import pydicom
from pydicom.pixels import iter_pixels

from neuroradix.errors import BadInputError, InputTooLargeError, NotEligibleError, UndecodablePixelsError
from neuroradix.imaging.frames import FramePlane, acquisition_header, frame_planes, is_multiframe_ct, number_of_frames
from neuroradix.types import AcquisitionInfo, Volume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceSource:
    """Where slice ``i`` of a volume comes from: an instance of the series and, if multi-frame, its frame.

    Parameters
    ----------
    instance:
        Index into :attr:`SeriesLayout.datasets` / :attr:`AssembledSeries.datasets`.
    frame:
        1-based frame number of a multi-frame instance; ``None`` for a single-frame image.
    slope, intercept:
        The rescale to HU of that slice.
    """

    instance: int
    frame: Optional[int] = None
    slope: float = 1.0
    intercept: float = 0.0


@dataclass(frozen=True)
class AssembledSeries:
    """A volume and the source instances.

    For a classic series ``datasets[i]`` is slice ``i``. For a multi-frame series ``datasets`` holds
    the instances (ordered by their first slice) and ``slices[i]`` names the instance and frame of
    slice ``i``.
    """

    volume: Volume
    datasets: tuple[pydicom.Dataset, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)
    slices: tuple[SliceSource, ...] = field(default_factory=tuple)


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
        total_frames: Optional[int] = None,
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
            For a single-frame CT series: the largest NumberOfFrames of its instances (``None`` or
            1: single-frame images, as CT Image Storage requires).
        total_frames:
            For a multi-frame CT series (Enhanced CT): the frames of all its instances together
            (the sum of NumberOfFrames). They are the slices: the slice cap and the voxel count
            apply to them.

        Raises
        ------
        InputTooLargeError
            A count, side or voxel total above its limit; the message gives the numbers and the
            setting (``NEURORADIX_MAX_...``) that raises the limit.
        BadInputError
            Rows/Columns missing or not positive, a BitsAllocated a CT slice cannot have, or
            several frames in one instance of a single-frame CT series.
        """
        if total_frames is not None and total_frames < 1:
            raise BadInputError(f"a multi-frame series with {total_frames} frames (NumberOfFrames)")
        if total_frames is not None and total_frames > self.max_instances:
            raise InputTooLargeError(
                f"series has {total_frames} frames in {n_instances} multi-frame instance(s), above the limit of "
                f"{self.max_instances} slices (setting NEURORADIX_MAX_SERIES_INSTANCES)"
            )
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
        if total_frames is None and frames is not None and frames > 1:
            raise BadInputError(
                f"an instance holds {frames} frames (NumberOfFrames): a CT Image series has one frame per instance"
            )
        slices = total_frames if total_frames is not None else n_instances
        voxels = slices * rows * columns
        if voxels > self.max_voxels:
            raise InputTooLargeError(
                f"series too large: {slices} x {rows} x {columns} = {voxels:,} voxels exceeds the limit of "
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


def check_orientations(orientations: np.ndarray, tolerance: float, what: str = "slices") -> None:
    """The one orientation rule: every slice of a series has the same ImageOrientationPatient.

    Series selection (:mod:`neuroradix.pacs.series`, on metadata) and assembly (:func:`geometry`, on
    the headers) both apply it, with one outcome: a series whose slices (or an Enhanced CT's frames)
    do not share one orientation is no volume, and it is skipped.

    Parameters
    ----------
    orientations:
        ``(n, 6)`` ImageOrientationPatient values.
    tolerance:
        Largest difference of a direction cosine that still counts as the same orientation.
    what:
        How the message names the items ("slices", "frames").

    Raises
    ------
    NotEligibleError
        "mixed orientations within the series ..."
    """
    orientations = np.asarray(orientations, dtype=np.float64)
    if orientations.size and np.abs(orientations - orientations[0]).max() > tolerance:
        raise NotEligibleError(f"mixed orientations within the series (ImageOrientationPatient differs between {what})")


def _planes(datasets: Sequence[pydicom.Dataset]) -> tuple[list[SliceSource], list[FramePlane]]:
    """Every image plane of the series (a slice, or a frame) and where it comes from, in stored order."""
    sources: list[SliceSource] = []
    planes: list[FramePlane] = []
    for index, ds in enumerate(datasets):
        for plane in frame_planes(ds):
            sources.append(SliceSource(index, plane.frame, plane.slope, plane.intercept))
            planes.append(plane)
    return sources, planes


def plane_geometry(
    planes: Sequence[FramePlane], limits: GeometryLimits = GeometryLimits(), *, what: str = "slices"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Sort image planes along the normal and derive the affine; returns ``(order, affine, warnings)``.

    ``order[i]`` is the index (in ``planes``) of slice ``i``.

    Raises
    ------
    NotEligibleError
        Mixed orientations (:func:`check_orientations`).
    BadInputError
        Missing geometry, fewer than 2 planes, unequal pixel spacing, duplicates, gaps, uneven spacing.
    """
    if len(planes) < 2:
        raise BadInputError(f"a volume needs at least 2 slices, got {len(planes)}")
    if any(p.orientation is None or p.position is None or p.spacing is None for p in planes):
        raise BadInputError(
            "slice geometry attributes missing or invalid: ImageOrientationPatient, ImagePositionPatient and "
            f"PixelSpacing are needed for every one of the {what}"
        )
    iops = np.array([p.orientation for p in planes], dtype=np.float64)
    ipps = np.array([p.position for p in planes], dtype=np.float64)
    spacings = np.array([p.spacing for p in planes], dtype=np.float64)
    check_orientations(iops, limits.orientation_tolerance, what)
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        raise BadInputError(f"PixelSpacing differs between {what}")
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
    n = len(planes)
    first, last = ipps[order[0]], ipps[order[-1]]
    step = (last - first) / (n - 1)
    offset = float(np.abs(ipps[order] - (first + np.outer(np.arange(n), step))).max())
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


def geometry(
    datasets: Sequence[pydicom.Dataset], limits: GeometryLimits = GeometryLimits()
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Sort the image planes of ``datasets`` along the normal and derive the affine.

    Returns ``(order, affine, warnings)``; ``order`` indexes the planes in stored order (for a
    single-frame series, the datasets). See :func:`plane_geometry`.
    """
    try:
        sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    except (AttributeError, ValueError, TypeError) as exc:
        raise BadInputError(f"slice geometry attributes missing or invalid: {exc}") from exc
    if len(sizes) > 1:
        raise BadInputError(f"image sizes differ between slices: {sorted(sizes)}")
    _, planes = _planes(datasets)
    return plane_geometry(planes, limits, what="frames" if any(map(is_multiframe_ct, datasets)) else "slices")


@dataclass(frozen=True)
class SeriesLayout:
    """A series checked and sorted from its headers, before any pixel is decoded (:func:`plan`).

    For a single-frame series ``datasets`` are in the volume's slice order; for a multi-frame series
    they are the instances, ordered by their first slice. ``slices[i]`` says where slice ``i`` comes from.
    """

    datasets: tuple[pydicom.Dataset, ...]
    affine: np.ndarray
    shape: tuple[int, int, int]
    warnings: tuple[str, ...]
    slices: tuple[SliceSource, ...] = ()

    @property
    def multiframe(self) -> bool:
        """Whether the slices are frames of multi-frame instances."""
        return any(s.frame is not None for s in self.slices)


def _size_check(datasets: Sequence[pydicom.Dataset], size: SizeLimits) -> tuple[int, int]:
    """Apply ``size`` to the headers; returns (Rows, Columns)."""
    try:
        sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
        bits = {int(ds.get("BitsAllocated", 16) or 16) for ds in datasets}
    except (AttributeError, ValueError, TypeError) as exc:
        raise BadInputError(f"Rows/Columns/BitsAllocated missing or invalid: {exc}") from exc
    rows, cols = max(sizes)
    multi = [is_multiframe_ct(ds) for ds in datasets]
    if any(multi) and not all(multi):
        raise BadInputError("the series mixes single-frame CT images and multi-frame (Enhanced) CT instances")
    if all(multi):
        try:
            total = sum(number_of_frames(ds) for ds in datasets)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"NumberOfFrames is not a number: {exc}") from exc
        size.check(len(datasets), rows, cols, bits_allocated=max(bits), total_frames=total)
    else:
        size.check(len(datasets), rows, cols, bits_allocated=max(bits), frames=max(_frames(ds) or 1 for ds in datasets))
    if len(sizes) != 1:
        raise BadInputError(f"image sizes differ between slices: {sorted(sizes)}")
    return rows, cols


def plan(
    datasets: Sequence[pydicom.Dataset], limits: GeometryLimits = GeometryLimits(), size: SizeLimits = SizeLimits()
) -> SeriesLayout:
    """Check a series' size and geometry from its headers and sort it; nothing is decoded.

    Raises
    ------
    InputTooLargeError
        The series exceeds ``size`` (for a multi-frame series: its frames count as slices).
    NotEligibleError
        Mixed orientations (:func:`check_orientations`).
    BadInputError
        Headers that make no volume (sizes, geometry, gaps, duplicates).
    """
    if not datasets:
        raise BadInputError("the series has no instances")
    rows, cols = _size_check(datasets, size)
    sources, planes = _planes(datasets)
    multiframe = any(s.frame is not None for s in sources)
    order, affine, warnings = plane_geometry(planes, limits, what="frames" if multiframe else "slices")
    if any(str(ds.get("LossyImageCompression", "")) == "01" for ds in datasets):
        warnings += (
            "the images were lossy compressed (LossyImageCompression 01): densities (LAA, percentiles) may be biased",
        )
    slices = [sources[i] for i in order]
    if not multiframe:
        return SeriesLayout(
            tuple(datasets[s.instance] for s in slices),
            affine,
            (len(slices), rows, cols),
            warnings,
            tuple(SliceSource(k, None, s.slope, s.intercept) for k, s in enumerate(slices)),
        )
    first_slice: dict[int, int] = {}
    for k, s in enumerate(slices):
        first_slice.setdefault(s.instance, k)
    instances = sorted(first_slice, key=first_slice.__getitem__)
    renumber = {old: new for new, old in enumerate(instances)}
    slices = [SliceSource(renumber[s.instance], s.frame, s.slope, s.intercept) for s in slices]
    logger.info("multi-frame CT: %d frames in %d instance(s)", len(slices), len(instances))
    return SeriesLayout(
        tuple(datasets[i] for i in instances), affine, (len(slices), rows, cols), warnings, tuple(slices)
    )


def _frames_of(ds: pydicom.Dataset, number: object) -> Iterator[np.ndarray]:
    """Decode the frames of a multi-frame instance one at a time (stored order), errors mapped as :func:`_decode`."""
    if "PixelData" not in ds:
        raise BadInputError(f"instance {number} has no pixel data (PixelData is missing)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", str(syntax))
    frames = iter_pixels(ds)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
            if syntax is not None and not syntax.is_compressed:
                raise BadInputError(f"pixel data of instance {number} is corrupt ({name}): {exc}") from exc
            raise UndecodablePixelsError(f"cannot decode pixel data (transfer syntax {name}): {exc}") from exc
        yield frame


def _fill(target: np.ndarray, pixels: np.ndarray, slope: float, intercept: float) -> None:
    target[...] = pixels
    if slope != 1.0:
        target *= np.float32(slope)
    if intercept != 0.0:
        target += np.float32(intercept)


def _decode_multiframe(layout: SeriesLayout, array: np.ndarray, release: bool) -> None:
    """Decode each multi-frame instance frame by frame into its slices of ``array``."""
    shape = layout.shape
    by_frame = {(s.instance, s.frame): (k, s) for k, s in enumerate(layout.slices)}
    for index, ds in enumerate(layout.datasets):
        expected = number_of_frames(ds)
        count = 0
        for count, pixels in enumerate(_frames_of(ds, ds.get("InstanceNumber", index + 1)), start=1):
            if pixels.shape != shape[1:]:
                raise BadInputError(f"frame {count} decodes to shape {pixels.shape}, expected {shape[1:]}")
            k, source = by_frame[(index, count)]
            _fill(array[k], pixels, source.slope, source.intercept)
        if count != expected:
            raise BadInputError(f"instance {index + 1} decodes to {count} frames, NumberOfFrames says {expected}")
        if release:
            release_pixels(ds)
            return_freed_memory()


def decode(layout: SeriesLayout, *, release: bool = False) -> AssembledSeries:
    """Decode each slice (or frame) of ``layout`` in turn into one preallocated float32 HU volume.

    Parameters
    ----------
    layout:
        From :func:`plan`.
    release:
        Drop each instance's pixel data once it is decoded (:func:`release_pixels`): the returned
        datasets keep their headers only. For callers that own the datasets (the pipeline).

    Raises
    ------
    UndecodablePixelsError
        A slice's pixel data cannot be decoded here (naming the transfer syntax).
    BadInputError
        A slice that decodes to another shape, or a multi-frame instance with fewer frames than it says.
    """
    shape = layout.shape
    array = np.empty(shape, dtype=np.float32)
    if layout.multiframe:
        _decode_multiframe(layout, array, release)
    else:
        for k, ds in enumerate(layout.datasets):
            pixels = _decode(ds)
            if pixels.shape != shape[1:]:
                raise BadInputError(f"slice {k} decodes to shape {pixels.shape}, expected {shape[1:]}")
            slope = float(getattr(ds, "RescaleSlope", 1) or 1)
            intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
            _fill(array[k], pixels, slope, intercept)
            del pixels
            if release:
                release_pixels(ds)
                if k % 64 == 63:  # as the volume fills, the encoded slices' memory goes back
                    return_freed_memory()
    if release:
        return_freed_memory()
    for w in layout.warnings:
        logger.warning("volume: %s", w)
    volume = Volume(array, layout.affine, AcquisitionInfo.from_dataset(acquisition_header(layout.datasets[0])))
    return AssembledSeries(volume, layout.datasets, layout.warnings, layout.slices)


def assemble(
    datasets: Sequence[pydicom.Dataset],
    limits: GeometryLimits = GeometryLimits(),
    size: SizeLimits = SizeLimits(),
    *,
    release: bool = False,
) -> AssembledSeries:
    """Check, sort and decode a CT series into one float32 HU volume: :func:`plan`, then :func:`decode`."""
    return decode(plan(datasets, limits, size), release=release)
