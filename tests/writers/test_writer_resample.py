"""Attention-map resampling and quantisation: the fast paths against their references.

The reference for resampling is what the writer did before it had a separable path:
``scipy.ndimage.map_coordinates(order=1, mode="constant")`` at every target voxel centre
mapped into the map's index space.
"""

import numpy as np
import pytest
from scipy import ndimage

from neuroradix.types import AttentionMap, Code
from neuroradix.writers.pmap import AXIS_TOLERANCE, STORED_MAX, parallel_axes, quantize, resample_onto
from tests.writers.writer_fixtures import ct_affine

GRID = (9, 13, 11)  # target grid (slices, rows, columns) on the writer fixtures' CT geometry


def _map(affine: np.ndarray, shape=(4, 6, 5), seed: int = 0) -> AttentionMap:
    array = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return AttentionMap(
        "test", array, affine, Code("AttentionWeight", "99NRX", "Attention weight"), Code("1", "UCUM", "no units")
    )


def _coarse(steps: np.ndarray, first: tuple[float, float, float]) -> np.ndarray:
    """Map affine whose index steps are ``steps`` (3x3, in CT index units, one column per
    map axis) and whose voxel 0 lies at CT index ``first``."""
    aff = ct_affine()
    out = np.eye(4)
    out[:3, :3] = aff[:3, :3] @ np.asarray(steps, dtype=np.float64)
    out[:3, 3] = aff[:3, :3] @ np.asarray(first, dtype=np.float64) + aff[:3, 3]
    return out


def _reference(amap: AttentionMap, affine: np.ndarray, shape) -> np.ndarray:
    to_map = np.linalg.inv(amap.affine) @ affine
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    coords = to_map[:3, :3] @ index + to_map[:3, 3:]
    values = ndimage.map_coordinates(amap.array, coords, order=1, mode="constant", cval=0.0)
    return values.reshape(shape)


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _check(amap: AttentionMap, expected_axes):
    affine = ct_affine()
    to_map = np.linalg.inv(amap.affine) @ affine
    assert parallel_axes(to_map, GRID) == expected_axes
    got = resample_onto(amap, affine, GRID)
    want = _reference(amap, affine, GRID)
    assert got.dtype == np.float32 and got.shape == GRID
    # The example must exercise both the inside and the outside of the map.
    assert (want == 0).any() and (want > 0).mean() > 0.3
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got == 0, want == 0)


def test_separable_equals_map_coordinates_for_a_subsampled_grid():
    """The usual case: a coarser grid with the CT's axes, shifted by fractions of a voxel."""
    amap = _map(_coarse(np.diag([2.0, 3.0, 2.5]), (0.5, 1.25, -0.75)))
    _check(amap, [0, 1, 2])


def test_separable_equals_map_coordinates_on_coinciding_samples():
    """Map samples on CT voxel centres, the last one exactly on a CT voxel (the edge case
    of ``mode="constant"``: ``size - 1`` is inside, anything beyond is zero)."""
    amap = _map(_coarse(np.diag([2.0, 2.0, 2.0]), (0.0, 0.0, 0.0)))
    _check(amap, [0, 1, 2])
    same = _map(ct_affine(), shape=GRID, seed=4)
    np.testing.assert_array_equal(resample_onto(same, ct_affine(), GRID), same.array)


def test_separable_equals_map_coordinates_for_reversed_axes():
    """Map slices and columns run against the CT's (negative direction)."""
    amap = _map(_coarse(np.diag([-2.0, 3.0, -2.5]), (7.5, 1.25, 10.5)), seed=1)
    _check(amap, [0, 1, 2])


def test_separable_equals_map_coordinates_for_permuted_axes():
    """Map axes are CT axes in another order (a transposed series), one of them reversed."""
    steps = np.zeros((3, 3))
    steps[2, 0], steps[0, 1], steps[1, 2] = 2.5, -2.0, 3.0  # map axis 0 along CT columns, ...
    amap = _map(_coarse(steps, (7.5, 1.25, -0.75)), seed=2)
    _check(amap, [1, 2, 0])  # CT slices run along map axis 1, rows along 2, columns along 0


def test_oblique_grid_falls_back_to_the_general_path():
    amap = _map(_coarse(_rotation_z(np.deg2rad(20)) @ np.diag([2.0, 2.0, 2.0]), (0.5, 1.5, 0.5)), seed=3)
    _check(amap, None)


def test_axis_tolerance():
    """A rotation small enough to move the map by less than AXIS_TOLERANCE voxels over the
    grid keeps the separable path (and its result); a larger one does not."""
    tiny = np.deg2rad(1e-5)
    amap = _map(_coarse(_rotation_z(tiny) @ np.diag([2.0, 3.0, 2.5]), (0.5, 1.25, -0.75)))
    to_map = np.linalg.inv(amap.affine) @ ct_affine()
    assert parallel_axes(to_map, GRID) == [0, 1, 2]
    np.testing.assert_allclose(
        resample_onto(amap, ct_affine(), GRID), _reference(amap, ct_affine(), GRID), atol=10 * AXIS_TOLERANCE
    )
    tilted = _map(_coarse(_rotation_z(np.deg2rad(0.1)) @ np.diag([2.0, 3.0, 2.5]), (0.5, 1.25, -0.75)))
    assert parallel_axes(np.linalg.inv(tilted.affine) @ ct_affine(), GRID) is None


def test_quantize_matches_the_float64_formula():
    """Block-wise quantisation gives exactly what one float64 pass gives, NaN and inf as 0."""
    rng = np.random.default_rng(5)
    values = (rng.random((3, 700, 600)) * 7 - 2).astype(np.float32)  # 1.26 M values: several blocks
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]
    stored, slope, intercept = quantize(values)
    clean = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = min(float(clean.min()), 0.0)
    expected_slope = (float(clean.max()) - low) / STORED_MAX
    expected = np.clip(np.rint((clean - low) / expected_slope), 0, STORED_MAX).astype(np.uint16)
    assert (slope, intercept) == (expected_slope, low)
    assert stored.dtype == np.uint16 and stored[0, 0, 0] == expected[0, 0, 0]
    np.testing.assert_array_equal(stored, expected)
    assert np.isnan(values[0, 0, 0])  # the input is not modified in place


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_quantize_keeps_the_error_within_half_a_step(dtype):
    values = (np.random.default_rng(6).random((4, 5, 6)) * 200).astype(dtype)
    stored, slope, intercept = quantize(values)
    np.testing.assert_allclose(stored * slope + intercept, values.astype(np.float64), rtol=0, atol=slope / 2 + 1e-9)
