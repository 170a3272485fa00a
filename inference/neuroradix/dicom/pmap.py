"""Parametric Maps (PM) from the attention maps of a :class:`~neuroradix.types.StudyResult`.

One Parametric Map per :class:`~neuroradix.types.AttentionMap`, in the source's frame
of reference. Values are stored as uint16 and a Real World Value Mapping
(``value = slope * stored + intercept``, quantity and unit from the map) gives them
back; the quantisation error is at most ``slope / 2``.

Two grids (``ctx.pmap_grid``):

``ATTENTION`` (default)
    The map's own grid: plane positions, orientation and pixel spacing come from its
    affine (which may be coarser than the CT). Maps wider than ``ctx.pmap_max_in_plane``
    in-plane are resampled down. Compact, but OHIF's parametric-map loader (cornerstone
    adapters) only overlays maps with the same rows, columns and slices as the CT.
``SOURCE``
    Resampled (trilinear) onto the CT grid, frame ``i`` derived from ``ctx.source[i]``:
    what OHIF needs to overlay it, at two bytes per CT voxel.
"""
from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from ..types import AttentionMap, StudyResult
from .common import (
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


def quantize(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map float values to uint16; return ``(stored, slope, intercept)``."""
    array = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = min(float(array.min()), 0.0)
    high = float(array.max())
    slope = (high - low) / STORED_MAX if high > low else 1.0
    stored = np.clip(np.rint((array - low) / slope), 0, STORED_MAX).astype(np.uint16)
    return stored, slope, low


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
    """Trilinear resampling of ``amap`` onto the CT grid (zero outside the map)."""
    to_map = np.linalg.inv(np.asarray(amap.affine, dtype=np.float64)) @ ctx.volume.affine
    n_slices, rows, cols = ctx.volume.shape
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    out = np.zeros(ctx.volume.shape, dtype=np.float32)
    source = np.asarray(amap.array, dtype=np.float32)
    for k in range(n_slices):  # one slice at a time keeps the coordinate arrays small
        idx = np.stack([np.full_like(rr, k), rr, cc, np.ones_like(rr)], axis=0).reshape(4, -1)
        coords = (to_map @ idx)[:3]
        out[k] = ndimage.map_coordinates(source, coords, order=1, mode="constant", cval=0.0).reshape(rows, cols)
    return out


def build_pmap(result: StudyResult, ctx: OutputContext, index: int) -> Dataset:
    """Build the Parametric Map of ``result.attention[index]``."""
    amap = result.attention[index]
    if ctx.pmap_grid is PmapGrid.SOURCE:
        values = resample_to_source(amap, ctx)
        stored, slope, intercept = quantize(values)
        pixel_array: np.ndarray | hd.Volume = stored
    else:
        values, affine = downsample_in_plane(amap, ctx.pmap_max_in_plane)
        stored, slope, intercept = quantize(values)
        pixel_array = hd.Volume(
            array=stored,
            affine=affine,
            coordinate_system="PATIENT",
            frame_of_reference_uid=ctx.frame_of_reference_uid,
        )
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=short_string(amap.name, 16),
        lut_explanation=short_string(f"{amap.quantity.meaning} ({amap.name})"),
        unit=coded(amap.unit),
        value_range=(0, STORED_MAX),
        slope=slope,
        intercept=intercept,
        quantity_definition=coded(amap.quantity),
    )
    series_uid, sop_uid = output_uids(result, ctx, ObjectKind.PMAP, index)
    description = series_description(result, f"attention map {amap.name}")
    high = intercept + slope * STORED_MAX
    pmap = hd.pm.ParametricMap(
        source_images=list(ctx.source),
        pixel_array=pixel_array,
        series_instance_uid=series_uid,
        series_number=series_number(ctx, ObjectKind.PMAP, index),
        sop_instance_uid=sop_uid,
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=STORED_MAX / 2, window_width=STORED_MAX, window_explanation="full range"
            )
        ],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_label="ATTENTION",
        content_description=short_string(f"{amap.quantity.meaning}, {intercept:.3g} to {high:.3g} {amap.unit.value}"),
        series_description=description,
        **equipment_kwargs(result, ctx),
    )
    pmap.Laterality = ""  # Type 2C in the General Series module; highdicom leaves it out
    return finish_dataset(pmap, result, ctx, description)


def build_pmaps(result: StudyResult, ctx: OutputContext) -> list[Dataset]:
    """One Parametric Map per attention map of ``result``, in ``result.attention`` order."""
    check_result(result, ctx)
    return [build_pmap(result, ctx, i) for i in range(len(result.attention))]
