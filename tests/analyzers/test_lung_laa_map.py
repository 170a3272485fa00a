"""The low-attenuation map: local LAA-950 in a round neighbourhood, with a display floor.

On the synthetic thorax with planted emphysema zones (balls in which 35 % of the lung voxels read
below -950 HU, and 1 % isolated low voxels scattered over the rest of the lungs, like noise): the
coloured region (map > 0, laid on the CT grid the way the Parametric Map writer lays it) matches
the zones (Dice >= 0.7), nothing outside the lungs is coloured, and a single low voxel colours
nothing. The map follows the scan-quality checks: wider on sharp-kernel or thick scans, none above
5 mm, and the note / warning says why.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from neuroradix.analyzers.densitometry import LaaMapConfig, plan_laa_map
from neuroradix.analyzers.lung import LungAnalyzer, LungAnalyzerConfig
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import AcquisitionInfo, Volume
from neuroradix.writers.pmap import resample_onto
from tests.support import dice

ZONE_FRACTION = 0.35  # of the lung voxels in a zone below -950 HU
SCATTER_FRACTION = 0.01  # isolated low voxels elsewhere


def _coloured(result, volume: Volume) -> np.ndarray:
    """Where the map is non-zero on the CT grid (trilinear, as the Parametric Map writer resamples)."""
    (amap,) = result.attention
    return resample_onto(amap, volume.affine, volume.shape) > 0


def _planted_zones(
    volume: Volume, masks: dict[str, np.ndarray], seed: int = 4
) -> tuple[Volume, np.ndarray, np.ndarray]:
    """Two balls of emphysema (right upper, left lower) and scattered single low voxels elsewhere.

    Returns the CT, the zone mask (lung voxels inside the balls) and the lung mask.
    """
    rng = np.random.default_rng(seed)
    lungs = masks["left_lung"] | masks["right_lung"]
    index = np.indices(volume.shape).reshape(3, -1).T
    lps = volume.index_to_patient(index).reshape(*volume.shape, 3)
    zone = np.zeros(volume.shape, dtype=bool)
    for side, height in (("right_lung", 0.70), ("left_lung", 0.30)):
        mask = masks[side]
        z = lps[..., 2][mask]
        centre = lps[mask].mean(axis=0)
        centre[2] = np.quantile(z, height)
        zone |= mask & (np.linalg.norm(lps - centre, axis=-1) <= 28.0)
    array = volume.array.copy()
    in_zone = zone & (rng.random(volume.shape) < ZONE_FRACTION)
    scatter = lungs & ~zone & (rng.random(volume.shape) < SCATTER_FRACTION)
    array[in_zone] = -975.0 + rng.normal(0.0, 10.0, int(in_zone.sum())).clip(-40, 15)
    array[scatter] = -990.0
    return Volume(array, volume.affine), zone, lungs


@pytest.fixture(scope="module")
def zones_case():
    volume, masks = thorax_phantom((176, 160, 160), (1.25, 2.0, 2.0), seed=11)
    ct, zone, lungs = _planted_zones(volume, masks)
    result = LungAnalyzer().analyze(ct)
    return ct, zone, lungs, result


def test_coloured_region_matches_the_planted_zones(zones_case):
    ct, zone, lungs, result = zones_case
    parenchyma = (result.labels == 2) | (result.labels == 3)
    coloured = _coloured(result, ct) & parenchyma
    assert zone.sum() > 20_000  # two real zones, not slivers
    assert dice(coloured, zone & parenchyma) >= 0.7
    # The scatter (1 % of the rest of the lung, isolated voxels) is not coloured.
    far = lungs & ~ndimage.binary_dilation(zone, iterations=6)
    assert float(coloured[far].mean()) < 0.01
    # Inside the zones the map reads about the planted fraction.
    (amap,) = result.attention
    inside = resample_onto(amap, ct.affine, ct.shape)[ndimage.binary_erosion(zone, iterations=6)]
    assert float(np.median(inside)) == pytest.approx(ZONE_FRACTION, abs=0.06)


def test_nothing_outside_the_lungs_is_coloured(zones_case):
    ct, _zone, lungs, result = zones_case
    coloured = _coloured(result, ct)
    # The map's voxels are 2 x 2 CT voxels in plane: trilinear resampling may bleed by one map
    # voxel (2 * sqrt(2) CT voxels diagonally) beyond the analyzer's lungs, not further; those
    # lie within one voxel of the true lungs.
    parenchyma = (result.labels == 2) | (result.labels == 3)
    assert float(ndimage.distance_transform_edt(~(lungs | parenchyma))[coloured].max()) <= 2 * np.sqrt(2) + 1e-6
    assert coloured.any() and float(ndimage.distance_transform_edt(~lungs)[coloured].max()) <= 2 * np.sqrt(2) + 1.0
    (amap,) = result.attention
    assert amap.display_range == (0.06, 0.30)
    values = amap.array[amap.array > 0]
    assert values.min() >= 0.06 and values.max() <= 1.0  # nothing between 0 and the floor


def test_an_isolated_low_voxel_colours_nothing(analyzer):
    volume, masks = thorax_phantom((176, 160, 160), (1.25, 2.0, 2.0), seed=12)
    array = volume.array.copy()
    right = np.argwhere(masks["right_lung"] & ~ndimage.binary_dilation(~masks["right_lung"], iterations=5))
    array[tuple(right[len(right) // 2])] = -1000.0
    result = analyzer.analyze(Volume(array, volume.affine))
    assert next(m.value for m in result.measurements if m.name == "LAA-950 cluster count") == 1  # it is counted
    (amap,) = result.attention
    assert float(amap.array.max()) == 0.0  # and not coloured
    assert result.extra["laa_map"]["coloured_percent_of_parenchyma"] == 0.0


def test_a_dense_cluster_is_coloured_where_one_voxel_is_not(analyzer):
    volume, masks = thorax_phantom((176, 160, 160), (1.25, 2.0, 2.0), seed=12)
    array = volume.array.copy()
    right = np.argwhere(masks["right_lung"] & ~ndimage.binary_dilation(~masks["right_lung"], iterations=8))
    centre = right[len(right) // 2]
    ball = np.linalg.norm(
        (np.indices(volume.shape).T - centre).T * np.array([1.25, 2.0, 2.0])[:, None, None, None], axis=0
    )
    array[(ball <= 6.0) & masks["right_lung"]] = -990.0  # a 12 mm bulla
    (amap,) = analyzer.analyze(Volume(array, volume.affine)).attention
    assert float(amap.array.max()) > 0.3


def test_sharp_kernel_smooths_more_and_says_so(analyzer):
    volume, _ = thorax_phantom((176, 160, 160), (1.25, 2.0, 2.0), seed=13)
    sharp = Volume(volume.array, volume.affine, acquisition=AcquisitionInfo(convolution_kernel="B70f"))
    result = analyzer.analyze(sharp)
    (amap,) = result.attention
    assert amap.note == "smoothed: sharp kernel"
    plain = analyzer.analyze(volume).extra["laa_map"]
    assert result.extra["laa_map"]["sigma_mm"] == pytest.approx(1.5 * plain["sigma_mm"], rel=0.01)
    assert result.extra["laa_map"]["presmooth_sigma_mm"] > 0 == plain["presmooth_sigma_mm"]
    assert plain["note"] == ""


def test_very_thick_slices_get_no_map_and_a_stated_reason():
    volume, _ = thorax_phantom((40, 128, 128), (6.0, 2.0, 2.0), seed=14)
    result = LungAnalyzer().analyze(volume)
    assert result.attention == ()
    assert "No low-attenuation map: slices 6.0 mm thick (above 5 mm)" in result.warnings
    assert "laa_map" in result.extra and result.extra["laa_map"]["skip_reason"]


def test_the_plan_follows_the_quality_limits():
    config = LaaMapConfig()
    default_sigma = 10.0 / (2 * np.sqrt(2 * np.log(2)))
    thin = plan_laa_map(config, 1.0, False, 1.25)
    assert thin.note == "" and thin.sigma_mm == pytest.approx(default_sigma, rel=1e-6)
    # Flagged as thick (above 1.25 mm), but the default neighbourhood already spans three slices.
    assert plan_laa_map(config, 3.0, False, 1.25) == thin
    thick = plan_laa_map(config, 5.0, False, 1.25)
    assert thick.note == "smoothed: thick slices" and thick.sigma_mm == 5.0
    sharp = plan_laa_map(config, 1.0, True, 1.25)
    assert sharp.note == "smoothed: sharp kernel" and sharp.presmooth_sigma_mm == 1.0
    assert sharp.sigma_mm == pytest.approx(1.5 * default_sigma)
    both = plan_laa_map(replace(config, degraded_fwhm_factor=1.0), 5.0, True, 1.25)
    assert both.note == "smoothed: sharp, thick" and both.sigma_mm == 5.0
    assert plan_laa_map(config, 5.5, False, 1.25).skip_reason
    with pytest.raises(ValueError, match="floor"):
        LaaMapConfig(floor=0.4)
    with pytest.raises(ValueError, match="fwhm_mm"):
        replace(LungAnalyzerConfig().laa_map, fwhm_mm=0.0)
