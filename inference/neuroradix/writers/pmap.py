"""Parametric Maps (PM) from the attention maps of a :class:`~neuroradix.types.StudyResult`.

One Parametric Map per :class:`~neuroradix.types.AttentionMap`, in the source's frame
of reference. Values are stored as uint16 and a Real World Value Mapping
(``value = slope * stored + intercept``, quantity and unit from the map) gives them
back; the quantisation error is at most ``slope / 2``.

A map with a ``display_range`` ``(floor, top)`` (the lung analyzer's local LAA-950) is stored
as 32-bit floats instead (:func:`display_scaled`): ``stored = (value - floor) / (top - floor)``
for values at or above the floor, 0 below it, with a Real World Value Mapping of slope
``top - floor`` and intercept ``floor`` over the stored range ``[DISPLAY_MIN_STORED, max]``
(stored 0 is outside it: "below the floor, not shown") and a window of stored 0 to 1. OHIF 3.13
(``extensions/cornerstone-dicom-pmap``) ignores both the mapping and the window: it reads the
raw stored values (FloatPixelData, or PixelData as integers), multiplies them by 100 and shows
them with its own fixed window (center 50, width 100, i.e. raw 0 to 1) in the ``rainbow_2``
colour map with opacity rising from 0 at raw 0 to 0.99 at raw 0.9. With this encoding its fixed
window is the floor-to-top window; integer stored values would be shown as 0 or saturated.

Two grids (``ctx.pmap_grid``):

``ATTENTION`` (default)
    The map's own grid: plane positions, orientation and pixel spacing come from its
    affine (which may be coarser than the CT). Maps wider than ``ctx.pmap_max_in_plane``
    in-plane are resampled down. Compact, but OHIF's parametric-map loader (cornerstone
    adapters) only overlays maps with the same rows, columns and slices as the CT.
``SOURCE``
    Resampled (trilinear) onto the CT grid, frame ``i`` derived from ``ctx.source[i]``:
    what OHIF needs to overlay it, at two bytes per CT voxel. A map whose axes are
    parallel to the CT's (an analyzer's coarser grid) is resampled separably, one axis
    at a time, which takes well under a second for a 300 x 512 x 512 CT.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from neuroradix.types import AttentionMap, StudyResult
from neuroradix.writers.common import (
    ObjectKind,
    OutputContext,
    PmapGrid,
    check_result,
    coded,
    equipment_kwargs,
    finish_dataset,
    output_uids,
    series_description,
    series_number,
    short_string,
)

logger = logging.getLogger(__name__)

STORED_MAX = 65535  # uint16
DISPLAY_MIN_STORED = 1e-6
"""Smallest stored value of a display-scaled map at or above its floor (0 means below it)."""
_BLOCK_VALUES = 1 << 20  # quantize this many values at a time
AXIS_TOLERANCE = 1e-3
"""Map voxels the separable resampling may drift by, over the grid, from ignored off-axis terms."""


def quantize(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map float values to uint16; return ``(stored, slope, intercept)``.

    ``stored = rint((value - intercept) / slope)`` computed in float64, with NaN and
    infinities taken as 0. The arithmetic runs on blocks of about a million values, so
    a CT-sized map needs no float64 copy of itself.
    """
    array = np.asarray(array)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())  # NaN or inf in the array shows up here
    if not (np.isfinite(low) and np.isfinite(high)):
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(array.min()), float(array.max())
    low = min(low, 0.0)
    slope = (high - low) / STORED_MAX if high > low else 1.0
    stored = np.empty(array.shape, dtype=np.uint16)
    values, out = array.reshape(-1), stored.reshape(-1)
    for start in range(0, values.size, _BLOCK_VALUES):
        block = values[start : start + _BLOCK_VALUES].astype(np.float64)
        block -= low
        block /= slope
        np.rint(block, out=block)
        np.clip(block, 0, STORED_MAX, out=block)
        out[start : start + _BLOCK_VALUES] = block
    return stored, slope, low


def display_scaled(values: np.ndarray, display_range: tuple[float, float]) -> np.ndarray:
    """Float32 ``(value - floor) / (top - floor)`` at or above ``floor``, 0 below it.

    Values at the floor are stored as :data:`DISPLAY_MIN_STORED` so that 0 keeps meaning
    "below the floor"; values above ``top`` go above 1 (a viewer's window clips them, the
    stored value keeps them).
    """
    floor, top = (float(v) for v in display_range)
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scaled = (values - np.float32(floor)) / np.float32(top - floor)
    np.maximum(scaled, np.float32(DISPLAY_MIN_STORED), out=scaled)
    scaled[values < floor] = 0.0
    return scaled.astype(np.float32, copy=False)


def _encoding(
    amap: AttentionMap, values: np.ndarray
) -> tuple[np.ndarray, hd.pm.RealWorldValueMapping, hd.VOILUTTransformation, str]:
    """Stored values, their Real World Value Mapping, the window and the content description."""
    if amap.display_range is not None:
        floor, top = amap.display_range
        stored = display_scaled(values, amap.display_range)
        slope, intercept = top - floor, floor
        value_range: tuple[float, float] | tuple[int, int] = (
            DISPLAY_MIN_STORED,
            max(float(stored.max()), DISPLAY_MIN_STORED),
        )
        window = hd.VOILUTTransformation(
            window_center=0.5, window_width=1.0, window_explanation=f"{floor:g} to {top:g} {amap.unit.value}"
        )
        explanation = f"{amap.name}; 0 = below {floor:g} (not shown)"
        unit = "" if amap.unit.value == "1" else f" {amap.unit.value}"
        content = f"{amap.quantity.meaning}, shown from {floor:g} to {top:g}{unit}"
    else:
        stored, slope, intercept = quantize(values)
        value_range = (0, STORED_MAX)
        window = hd.VOILUTTransformation(
            window_center=STORED_MAX / 2, window_width=STORED_MAX, window_explanation="full range"
        )
        explanation = f"{amap.quantity.meaning} ({amap.name})"
        high = intercept + slope * STORED_MAX
        content = f"{amap.quantity.meaning}, {intercept:.3g} to {high:.3g} {amap.unit.value}"
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=short_string(amap.name, 16),
        lut_explanation=short_string(explanation),
        unit=coded(amap.unit),
        value_range=value_range,
        slope=slope,
        intercept=intercept,
        quantity_definition=coded(amap.quantity),
    )
    return stored, mapping, window, short_string(content)


def downsample_in_plane(amap: AttentionMap, max_in_plane: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, affine)`` with rows and columns at most ``max_in_plane``.

    Linear interpolation on a grid whose first and last samples coincide with the
    original's, so the affine only rescales the row and column steps.
    """
    array = np.asarray(amap.array, dtype=np.float32)
    affine = np.array(amap.affine, dtype=np.float64)
    _, rows, cols = array.shape
    new_rows, new_cols = min(rows, max_in_plane), min(cols, max_in_plane)
    if (new_rows, new_cols) == (rows, cols):
        return array, affine
    zoomed = ndimage.zoom(array, (1.0, new_rows / rows, new_cols / cols), order=1, grid_mode=False)
    new_rows, new_cols = zoomed.shape[1:]
    if new_rows > 1:
        affine[:3, 1] *= (rows - 1) / (new_rows - 1)
    if new_cols > 1:
        affine[:3, 2] *= (cols - 1) / (new_cols - 1)
    logger.debug("attention map %s downsampled from %dx%d to %dx%d", amap.name, rows, cols, new_rows, new_cols)
    return zoomed.astype(np.float32), affine


def resample_to_source(amap: AttentionMap, ctx: OutputContext) -> np.ndarray:
    """Trilinear resampling of ``amap`` onto the CT grid (zero outside the map), float32."""
    return resample_onto(amap, ctx.volume.affine, ctx.volume.shape)


def resample_onto(amap: AttentionMap, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of ``amap`` onto the grid of ``affine`` and ``shape``.

    The usual attention grid is a subsampling of the CT grid: its axes are parallel to
    the CT's (possibly permuted or reversed), so the interpolation separates into three
    1-D linear interpolations (:func:`resample_separable`). Any other grid goes through
    :func:`scipy.ndimage.affine_transform`. Both give what
    ``scipy.ndimage.map_coordinates(order=1, mode="constant")`` gives at the grid's
    voxel centres mapped into the map's index space: a value only where all three
    coordinates lie within ``[0, size - 1]``, zero elsewhere.

    Parameters
    ----------
    amap:
        The attention map.
    affine:
        4x4 matrix from the target grid's indices ``(slice, row, column, 1)`` to LPS.
    shape:
        The target grid's shape.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``.
    """
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    to_map = np.linalg.inv(np.asarray(amap.affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    source = np.asarray(amap.array, dtype=np.float32)
    axes = parallel_axes(to_map, shape)
    if axes is None:
        logger.debug("attention map %s is oblique to the target grid: general resampling", amap.name)
        return ndimage.affine_transform(
            source,
            to_map[:3, :3],
            to_map[:3, 3],
            output_shape=shape,
            output=np.float32,
            order=1,
            mode="constant",
            cval=0.0,
        )
    return resample_separable(source, to_map, axes, shape)


def parallel_axes(to_map: np.ndarray, shape: tuple[int, ...], tolerance: float = AXIS_TOLERANCE) -> list[int] | None:
    """Which map axis each grid axis runs along, or ``None`` for an oblique map.

    Parameters
    ----------
    to_map:
        4x4 matrix from grid indices ``(slice, row, column, 1)`` to map indices.
    shape:
        Grid shape (its extent turns the ignored terms into a drift in voxels).
    tolerance:
        Largest drift, in map voxels over the whole grid, that the terms ignored by
        the separable interpolation may add up to.

    Returns
    -------
    list[int] or None
        ``axes[b]`` is the map axis that grid axis ``b`` runs along (a permutation).
    """
    linear = np.asarray(to_map, dtype=np.float64)[:3, :3]
    axes = [int(np.argmax(np.abs(linear[:, b]))) for b in range(3)]
    if sorted(axes) != [0, 1, 2]:
        return None
    on_axis = np.zeros_like(linear)
    for b, a in enumerate(axes):
        on_axis[a, b] = linear[a, b]
    extent = np.maximum(np.asarray(shape, dtype=np.float64) - 1, 0)
    drift = np.abs(linear - on_axis) @ extent  # per map axis, at the far corner of the grid
    return axes if float(drift.max()) <= tolerance else None


def _linear_weights(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(low, high, w_low, w_high)``: 1-D linear interpolation of ``size`` samples at
    ``coords``, weights zero outside ``[0, size - 1]`` (scipy's ``mode="constant"``)."""
    inside = (coords >= 0) & (coords <= size - 1)
    low = np.clip(np.floor(coords), 0, max(size - 2, 0)).astype(np.intp)
    frac = coords - low
    high = np.minimum(low + 1, size - 1)
    w_low = np.where(inside, 1.0 - frac, 0.0).astype(np.float32)
    w_high = np.where(inside, frac, 0.0).astype(np.float32)
    return low, high, w_low, w_high


def _span(w_low: np.ndarray, w_high: np.ndarray) -> slice:
    """The grid indices with a non-zero weight (contiguous: the coordinates are monotonic)."""
    hit = np.flatnonzero((w_low != 0) | (w_high != 0))
    return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)


def resample_separable(
    source: np.ndarray, to_map: np.ndarray, axes: list[int], shape: tuple[int, int, int]
) -> np.ndarray:
    """Trilinear resampling onto ``shape`` when every grid axis runs along one map axis.

    Parameters
    ----------
    source:
        The map, ``(slices, rows, columns)``.
    to_map:
        4x4 matrix from grid indices to map indices.
    axes:
        From :func:`parallel_axes`.
    shape:
        Output grid shape.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``, zero where the grid lies outside the map.
    """
    to_map = np.asarray(to_map, dtype=np.float64)
    src = np.transpose(np.asarray(source, dtype=np.float32), axes)  # src axis b = map axis axes[b]
    tables = []
    for b in range(3):
        coords = to_map[axes[b], b] * np.arange(shape[b], dtype=np.float64) + to_map[axes[b], 3]
        tables.append(_linear_weights(coords, src.shape[b]))
    (lo0, hi0, wl0, wh0), (lo1, hi1, wl1, wh1), (lo2, hi2, wl2, wh2) = tables
    spans = [_span(w[2], w[3]) for w in tables]
    out = np.zeros(shape, dtype=np.float32)
    rows, cols = spans[1], spans[2]
    lo1, hi1, wl1, wh1 = lo1[rows], hi1[rows], wl1[rows, None], wh1[rows, None]
    lo2, hi2, wl2, wh2 = lo2[cols], hi2[cols], wl2[cols], wh2[cols]
    for k in range(shape[0])[spans[0]]:  # one slice at a time: the temporaries stay in cache
        plane = src[lo0[k]] * wl0[k]
        if wh0[k]:
            plane += src[hi0[k]] * wh0[k]
        along_cols = np.take(plane, lo2, axis=1)
        along_cols *= wl2
        along_cols += np.take(plane, hi2, axis=1) * wh2
        target = out[k, rows, cols]
        np.multiply(along_cols[lo1], wl1, out=target)
        target += along_cols[hi1] * wh1
    return out


def build_pmap(result: StudyResult, ctx: OutputContext, index: int) -> Dataset:
    """Build the Parametric Map of ``result.attention[index]``."""
    amap = result.attention[index]
    if ctx.pmap_grid is PmapGrid.SOURCE:
        values = resample_to_source(amap, ctx)
        stored, mapping, window, content = _encoding(amap, values)
        pixel_array: np.ndarray | hd.Volume = ctx.pixels_for(stored)  # a multi-frame source: its frame order
    else:
        values, affine = downsample_in_plane(amap, ctx.pmap_max_in_plane)
        stored, mapping, window, content = _encoding(amap, values)
        pixel_array = hd.Volume(
            array=stored,
            affine=affine,
            coordinate_system="PATIENT",
            frame_of_reference_uid=ctx.frame_of_reference_uid,
        )
    del values
    series_uid, sop_uid = output_uids(result, ctx, ObjectKind.PMAP, index)
    description = series_description(result, f"attention map {amap.name}" + (f" ({amap.note})" if amap.note else ""))
    pmap = hd.pm.ParametricMap(
        source_images=ctx.source_images,
        pixel_array=pixel_array,
        series_instance_uid=series_uid,
        series_number=series_number(ctx, ObjectKind.PMAP, index),
        sop_instance_uid=sop_uid,
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_label="ATTENTION",
        content_description=content,
        series_description=description,
        **equipment_kwargs(result, ctx),
    )
    pmap.Laterality = ""  # Type 2C in the General Series module; highdicom leaves it out
    return finish_dataset(ctx.reference_frames(pmap), result, ctx, description)


def build_pmaps(result: StudyResult, ctx: OutputContext) -> list[Dataset]:
    """One Parametric Map per attention map of ``result``, in ``result.attention`` order."""
    check_result(result, ctx)
    return [build_pmap(result, ctx, i) for i in range(len(result.attention))]
