"""Parametric Map writer: geometry from the attention affine, values after RWVM, dciodvfy."""

from dataclasses import replace

import numpy as np
import pytest

from neuroradix.config import PmapGrid
from neuroradix.types import AttentionMap
from neuroradix.writers.pmap import (
    DISPLAY_MIN_STORED,
    STORED_MAX,
    build_pmaps,
    display_scaled,
    downsample_in_plane,
    resample_to_source,
)
from tests.writers.writer_fixtures import N_COLS, N_ROWS, N_SLICES, dciodvfy


def _frames(ds):
    """(stored pixel frames, IPP per frame, IOP, PixelSpacing) of a read-back map."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)
    frames = ds.PerFrameFunctionalGroupsSequence
    ipp = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in frames], float)
    return ds.pixel_array, ipp, iop, spacing


def _real_world(ds, stored):
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    return stored * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept), mapping


def test_pmap_on_attention_grid(result, ctx, roundtrip):
    amap = result.attention[0]
    back, _ = roundtrip(build_pmaps(result, ctx)[0])
    stored, ipp, iop, spacing = _frames(back)
    assert stored.shape == amap.array.shape and stored.dtype == np.uint16
    # Plane geometry equals the attention affine (not the CT's).
    aff = amap.affine
    np.testing.assert_allclose(iop[:3], aff[:3, 2] / np.linalg.norm(aff[:3, 2]), atol=1e-6)
    np.testing.assert_allclose(iop[3:], aff[:3, 1] / np.linalg.norm(aff[:3, 1]), atol=1e-6)
    np.testing.assert_allclose(spacing, [np.linalg.norm(aff[:3, 1]), np.linalg.norm(aff[:3, 2])], atol=1e-6)
    expected_ipp = np.array([aff[:3, 3] + k * aff[:3, 0] for k in range(amap.array.shape[0])])
    # highdicom may store the slices in the opposite order: match each frame to its slice.
    order = [int(np.argmin(np.linalg.norm(expected_ipp - p, axis=1))) for p in ipp]
    np.testing.assert_allclose(ipp, expected_ipp[order], atol=1e-4)
    assert sorted(order) == list(range(amap.array.shape[0]))
    values, mapping = _real_world(back, stored)
    slope = float(mapping.RealWorldValueSlope)
    np.testing.assert_allclose(values, amap.array[order], atol=slope / 2 + 1e-9)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == amap.unit.value
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == amap.quantity.value
    assert back.FrameOfReferenceUID == ctx.frame_of_reference_uid
    assert back.Laterality == ""
    assert "ReferencedSeriesSequence" in back


def test_pmap_on_source_grid_matches_resampling(result, ctx, roundtrip):
    amap = result.attention[0]
    back, _ = roundtrip(build_pmaps(result, replace(ctx, pmap_grid=PmapGrid.SOURCE))[0])
    stored, ipp, _, spacing = _frames(back)
    assert stored.shape == (N_SLICES, N_ROWS, N_COLS)
    src_ipp = {tuple(np.round(np.array(ds.ImagePositionPatient, float), 3)) for ds in ctx.source}
    assert {tuple(np.round(p, 3)) for p in ipp} == src_ipp
    np.testing.assert_allclose(spacing, ctx.source[0].PixelSpacing)
    # Each frame is derived from its source instance (what OHIF matches on).
    by_uid = {ds.SOPInstanceUID: i for i, ds in enumerate(ctx.source)}
    order = [
        by_uid[f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        for f in back.PerFrameFunctionalGroupsSequence
    ]
    values, mapping = _real_world(back, stored)
    np.testing.assert_allclose(values, resample_to_source(amap, ctx)[order], atol=float(mapping.RealWorldValueSlope))


def test_resampling_is_exact_for_a_linear_map(result, ctx):
    """Trilinear resampling reproduces a linear function of the map's own indices, so
    any error in the index-to-patient mapping shows up."""
    amap = result.attention[0]
    s, r, c = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in amap.array.shape], indexing="ij")
    linear = replace(amap, array=1.0 + 0.5 * s + 0.25 * r + 0.125 * c)
    resampled = resample_to_source(linear, ctx)
    k, i, j = np.meshgrid(*[np.arange(n) for n in ctx.volume.shape], indexing="ij")
    ct_index = np.stack([k, i, j, np.ones_like(k)], axis=-1).reshape(-1, 4).T.astype(float)
    map_index = (np.linalg.inv(amap.affine) @ ctx.volume.affine @ ct_index)[:3]
    inside = np.all((map_index >= 0) & (map_index <= np.array(amap.array.shape)[:, None] - 1), axis=0)
    expected = 1.0 + 0.5 * map_index[0] + 0.25 * map_index[1] + 0.125 * map_index[2]
    assert inside.sum() > 0.5 * inside.size
    np.testing.assert_allclose(resampled.reshape(-1)[inside], expected[inside], atol=1e-4)


def test_downsampling_keeps_extent(result):
    amap = result.attention[0]
    big = AttentionMap(
        amap.name,
        np.random.default_rng(0).random((3, 300, 520), dtype=np.float32),
        amap.affine,
        amap.quantity,
        amap.unit,
    )
    array, affine = downsample_in_plane(big, 256)
    assert array.shape == (3, 256, 256)
    last_old = big.affine @ np.array([0, 299, 519, 1.0])
    last_new = affine @ np.array([0, 255, 255, 1.0])
    np.testing.assert_allclose(last_new, last_old, atol=1e-6)


def test_constant_map_is_valid(result, ctx):
    amap = result.attention[0]
    flat = replace(amap, array=np.zeros_like(amap.array))
    (pm,) = build_pmaps(replace(result, attention=(flat,)), ctx)
    assert int(pm.pixel_array.max()) == 0
    assert STORED_MAX == 65535


@pytest.mark.parametrize("grid", list(PmapGrid))
def test_pmap_passes_dciodvfy(result, ctx, roundtrip, grid):
    _, path = roundtrip(build_pmaps(result, replace(ctx, pmap_grid=grid))[0])
    errors, _ = dciodvfy(path)
    assert errors == []


def _display_result(result):
    """The fixture's map (values 0 to 1) as a local LAA-950 map: floor 0.06, top 0.30, below the floor 0."""
    amap = result.attention[0]
    array = np.where(amap.array >= 0.06, amap.array, 0.0).astype(np.float32)
    shown = replace(amap, array=array, display_range=(0.06, 0.30), note="smoothed: sharp kernel")
    return replace(result, attention=(shown,)), shown


@pytest.mark.parametrize("grid", list(PmapGrid))
def test_display_range_map_is_stored_as_floats_from_floor_to_top(result, ctx, roundtrip, grid):
    result, amap = _display_result(result)
    back, path = roundtrip(build_pmaps(result, replace(ctx, pmap_grid=grid))[0])
    assert "FloatPixelData" in back and back.BitsAllocated == 32
    stored = back.pixel_array
    assert stored.dtype == np.float32
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert float(mapping.RealWorldValueIntercept) == pytest.approx(0.06)
    assert float(mapping.RealWorldValueSlope) == pytest.approx(0.24)
    assert float(mapping.DoubleFloatRealWorldValueFirstValueMapped) == DISPLAY_MIN_STORED  # 0 is "below the floor"
    # Every stored value is 0 (below the floor) or maps back to a value at or above the floor.
    shown = stored[stored > 0] * 0.24 + 0.06
    assert shown.min() >= 0.06 - 1e-6 and shown.max() <= amap.array.max() + 1e-4
    if grid is PmapGrid.ATTENTION:
        expected = np.sort(amap.array.ravel())
        np.testing.assert_allclose(
            np.sort(np.where(stored > 0, stored * 0.24 + 0.06, 0.0).ravel()), expected, atol=1e-5
        )
    # The recommended window is stored 0..1 = floor..top, the same range OHIF's fixed PMAP window shows.
    voi = back.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (0.5, 1.0)
    assert back.SeriesDescription.endswith("(smoothed: sharp kernel)") and len(back.SeriesDescription) <= 64
    errors, _ = dciodvfy(path)
    assert errors == []


def test_ohif_default_rendering_spans_floor_to_top():
    """OHIF 3.13's PMAP viewport multiplies stored values by 100 and windows them 0..100 (center 50,
    width 100): with display scaling, 6 % lands at the bottom of its colour map and 30 % at the top."""
    values = np.array([0.0, 0.05, 0.06, 0.18, 0.30, 0.60], dtype=np.float32)
    ohif = display_scaled(values, (0.06, 0.30)) * 100.0  # what OHIF puts in its volume
    position = np.clip((ohif - (50 - 100 / 2)) / 100, 0.0, 1.0)  # in its window
    np.testing.assert_allclose(position, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-4)
    assert display_scaled(values, (0.06, 0.30))[2] > 0  # the floor itself is shown, below it is not
