"""Ground truth: the airway phantom (tree to generation 5, emphysema per zone, HU offset).

The phantom (:mod:`neuroradix.samples.airway_phantom`) knows every branch's voxels and the
LAA-950 of each equal-volume zone of each lung; the analyzer must recover the zones within one
percentage point, find at least 90 % of the branches, keep the airway lumen out of the
parenchyma and the low-attenuation map, and flag a calibration offset.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.samples.airway_phantom import AirwayPhantom, airway_phantom
from neuroradix.types import StudyResult
from tests.support import dice


def _measure(result: StudyResult, name: str) -> float:
    return next(float(m.value) for m in result.measurements if m.name == name)


@pytest.fixture(scope="module")
def phantom() -> AirwayPhantom:
    return airway_phantom(seed=5)


@pytest.fixture(scope="module")
def result(analyzer: LungAnalyzer, phantom: AirwayPhantom) -> StudyResult:
    return analyzer.analyze(phantom.volume)


def test_the_phantom_is_what_it_says(phantom):
    assert len(phantom.branches) == 63
    assert [sum(b.generation == g for b in phantom.branches) for g in range(6)] == [1, 2, 4, 8, 16, 32]
    assert all(b.mask.sum() >= 10 for b in phantom.branches)
    assert phantom.zone_laa_percent[("right", "upper")] == pytest.approx(18.0, abs=0.05)
    assert phantom.zone_laa_percent[("left", "lower")] == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("zone", ["upper", "middle", "lower"])
def test_laa950_per_zone_within_one_point(phantom, result, side, zone):
    measured = _measure(result, f"{side.capitalize()} lung {zone} zone LAA-950")
    assert measured == pytest.approx(phantom.zone_laa_percent[(side, zone)], abs=1.0)


def test_at_least_90_percent_of_the_branches_are_found(phantom, result):
    tree = result.labels == 4
    found = [float((b.mask & tree).sum()) / b.mask.sum() > 0.5 for b in phantom.branches]
    assert sum(found) >= 0.9 * len(phantom.branches)
    branches = _measure(result, "Airway branch count")
    assert 0.9 * 63 <= branches <= 1.1 * 63
    assert _measure(result, "Airway generations reached") == 5
    assert result.extra["airway_branches_per_generation"][:4] == [1, 2, 4, 8]


def test_parenchyma_is_lung_minus_the_airway_tree(phantom, result):
    lungs = (result.labels == 2) | (result.labels == 3)
    lumen_in_lung = phantom.masks["airway_tree"] & (phantom.masks["left_lung"] | phantom.masks["right_lung"])
    assert lumen_in_lung.sum() > 1000  # the tree really runs inside the lungs
    assert (lungs & lumen_in_lung).sum() < 0.03 * lumen_in_lung.sum()
    assert dice(result.labels == 2, phantom.masks["parenchyma_left"]) > 0.97
    assert dice(result.labels == 3, phantom.masks["parenchyma_right"]) > 0.97


def test_no_calibration_warning_without_offset(result):
    assert not [w for w in result.warnings if "HU calibration" in w]
    assert _measure(result, "Tracheal air attenuation") == pytest.approx(-1000.0, abs=10.0)


def test_an_hu_offset_is_flagged_not_corrected(analyzer):
    shifted = airway_phantom(seed=5, hu_offset=50.0)
    result = analyzer.analyze(shifted.volume)
    calibration = [w for w in result.warnings if w.startswith("HU calibration: tracheal air reads")]
    assert calibration and "-950 HU" in calibration[0] and "+50 HU" in calibration[0]
    assert any(w.startswith("HU calibration: external air reads") for w in result.warnings)
    # the numbers stay what the image says: the shifted lung reads 50 HU denser
    assert _measure(result, "Mean lung density") > -810.0
    assert "scan-quality warning" in result.report_text


def test_laa_map_does_not_light_up_the_airways(analyzer):
    clean = airway_phantom(seed=6, zone_fractions={"upper": 0.0, "middle": 0.0, "lower": 0.0})
    result = analyzer.analyze(clean.volume)
    (attention,) = result.attention
    lungs = clean.masks["left_lung"] | clean.masks["right_lung"]
    lumen_percent = 100.0 * (clean.masks["airway_tree"] & lungs).sum() / lungs.sum()
    assert lumen_percent > 0.5  # what LAA-950 would read if the bronchial lumen counted as lung
    assert _measure(result, "Total LAA-950") < 0.05  # only a few voxels at the tips of the finest branches
    # the -1000 HU bronchial lumen is not "emphysema": the map stays near zero along the tree
    tree_map = attention.array[tuple((np.argwhere(clean.masks["airway_tree"] & lungs) // [1, 2, 2]).T)]
    assert float(attention.array.max()) < 0.05 and float(tree_map.mean()) < 0.005
    assert np.count_nonzero(result.labels == 4) > 0.9 * clean.masks["airway_tree"].sum()
