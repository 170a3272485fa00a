"""The no-weights lung analyzer on the phantom: Dice, sides from patient coordinates, LAA, volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.lung import LungAnalyzer, LungAnalyzerConfig
from neuroradix.errors import BadInputError
from neuroradix.samples.phantom import ground_truth_volumes_ml, thorax_phantom
from neuroradix.types import Volume
from tests.support import dice, patient_centroid


def _measure(result, name: str) -> float:
    return next(m.value for m in result.measurements if m.name == name)


def test_it_is_an_analyzer_with_the_lung_scheme(analyzer, emphysema_result):
    assert isinstance(analyzer, Analyzer)
    assert analyzer.info.name == "lung-hu" and analyzer.info.version == "1.0"
    assert [s.name for s in emphysema_result.segments] == ["Body", "Left lung", "Right lung", "Airways"]
    assert emphysema_result.findings == ()  # a measurement tool: no invented probabilities


def test_segmentation_matches_the_ground_truth(emphysema_phantom, emphysema_result):
    volume, masks = emphysema_phantom
    labels = emphysema_result.labels
    assert labels.shape == volume.shape
    assert dice(labels > 0, masks["body"]) > 0.95
    assert dice(labels == 2, masks["left_lung"]) > 0.9
    assert dice(labels == 3, masks["right_lung"]) > 0.9
    assert dice(labels == 4, masks["airways"]) > 0.7
    assert not (labels[masks["bowel_gas"]] >= 2).any()  # bowel gas is not lung
    assert patient_centroid(volume, labels == 2)[0] > 0 > patient_centroid(volume, labels == 3)[0]


def test_measurements_match_the_planted_truth(emphysema_phantom, emphysema_result):
    volume, masks = emphysema_phantom
    truth = ground_truth_volumes_ml(volume, masks)
    assert _measure(emphysema_result, "Left lung volume") == pytest.approx(truth["left_lung"], rel=0.05)
    assert _measure(emphysema_result, "Right lung volume") == pytest.approx(truth["right_lung"], rel=0.05)
    assert _measure(emphysema_result, "Total LAA-950") == pytest.approx(10.0, abs=1.0)
    lungs = masks["left_lung"] | masks["right_lung"]
    assert _measure(emphysema_result, "Mean lung density") == pytest.approx(float(volume.array[lungs].mean()), abs=10)
    units = {m.name: m.unit.value for m in emphysema_result.measurements}
    assert units["Left lung volume"] == "mL" and units["Total LAA-950"] == "%"
    assert units["Mean lung density"] == "[hnsf'U]"
    sites = {m.name: m.site.value for m in emphysema_result.measurements}
    assert sites["Left lung volume"] == "44029006" and sites["Right lung LAA-950"] == "3341006"


def test_report_text_names_the_numbers_and_the_emphysema_cutoff(emphysema_result):
    text = emphysema_result.report_text
    assert f"left lung {_measure(emphysema_result, 'Left lung volume'):.0f} mL" in text
    assert "-950 HU" in text and "emphysema" in text.lower()
    assert "above 6 %" in text
    assert text.isascii()


def test_no_emphysema_line_below_the_cutoff(analyzer):
    volume, _ = thorax_phantom(emphysema=0.02, seed=8)
    result = analyzer.analyze(volume)
    assert _measure(result, "Total LAA-950") == pytest.approx(2.0, abs=0.5)
    assert "above 6 %" not in result.report_text


def test_attention_map_is_the_local_laa_fraction_on_a_coarser_grid(emphysema_phantom, emphysema_result):
    volume, masks = emphysema_phantom
    (attention,) = emphysema_result.attention
    assert attention.name == "Local LAA-950" and attention.unit.value == "1"
    assert attention.array.shape == (volume.shape[0], volume.shape[1] // 2, volume.shape[2] // 2)
    assert 0.0 <= attention.array.min() and attention.array.max() <= 1.0
    # Voxel (0, 0, 0) of the map is the centre of the 1x2x2 block of source voxels it summarises.
    block = volume.index_to_patient(np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]])).mean(axis=0)
    np.testing.assert_allclose(attention.affine[:3, 3], block)
    # High where emphysema was planted, zero outside the lungs.
    index = np.argwhere(masks["emphysema"]) // [1, 2, 2]
    others = np.argwhere((masks["left_lung"] | masks["right_lung"]) & ~masks["emphysema"]) // [1, 2, 2]
    assert attention.array[tuple(index.T)].mean() > 2 * attention.array[tuple(others.T)].mean()
    assert attention.array[:, 0, :].max() == 0.0


@pytest.mark.parametrize("orientation", ["flipped-columns", "flipped-rows", "flipped-slices", "transposed"])
def test_sides_come_from_patient_coordinates_not_array_indices(analyzer, orientation):
    volume, masks = thorax_phantom(emphysema=0.05, seed=6, orientation=orientation)
    result = analyzer.analyze(volume)
    labels = result.labels
    assert dice(labels == 2, masks["left_lung"]) > 0.9
    assert dice(labels == 3, masks["right_lung"]) > 0.9
    assert patient_centroid(volume, labels == 2)[0] > 0 > patient_centroid(volume, labels == 3)[0]
    assert _measure(result, "Left lung volume") < _measure(result, "Right lung volume")


def test_touching_lungs_are_split(analyzer):
    volume, masks = thorax_phantom(seed=7)
    array = volume.array.copy()
    lungs = masks["left_lung"] | masks["right_lung"]
    # A bridge of lung tissue behind the heart joins the two lungs over 8 slices.
    rows = np.nonzero(lungs[20].any(axis=1))[0]
    bridge = np.zeros(lungs.shape, dtype=bool)
    bridge[16:24, rows.max() - 8 : rows.max() - 5, 20:76] = True
    bridge &= ~masks["spine"] & masks["body"]
    array[bridge & ~lungs] = -850.0
    _labels_joined, count = ndimage.label(lungs | bridge)
    assert count == 1  # the bridge really joins them
    result = analyzer.analyze(Volume(array, volume.affine))
    assert dice(result.labels == 2, masks["left_lung"]) > 0.9
    assert dice(result.labels == 3, masks["right_lung"]) > 0.9


def test_a_ct_without_lungs_gives_a_reason(analyzer):
    volume, masks = thorax_phantom(seed=9)
    array = volume.array.copy()
    array[masks["left_lung"] | masks["right_lung"]] = 40.0
    with pytest.raises(BadInputError, match="no lungs found"):
        analyzer.analyze(Volume(array, volume.affine))


def test_min_lung_volume_is_configurable(emphysema_phantom):
    strict = LungAnalyzer(LungAnalyzerConfig(min_lung_ml=10_000.0))
    with pytest.raises(BadInputError, match="10000 mL expected"):
        strict.analyze(emphysema_phantom[0])


@pytest.mark.parametrize("array", [np.full((20, 30, 30), -1000.0), np.full((20, 30, 30), 40.0), np.zeros((4, 30, 30))])
def test_empty_constant_or_tiny_volumes_are_bad_input(analyzer, array):
    with pytest.raises(BadInputError):
        analyzer.analyze(Volume(array, np.eye(4)))


def test_nan_volume_is_bad_input(analyzer, emphysema_phantom):
    array = emphysema_phantom[0].array.copy()
    array[10, 10, 10] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        analyzer.analyze(Volume(array, emphysema_phantom[0].affine))


def test_downsampled_working_grid_maps_back_to_the_full_grid():
    volume, masks = thorax_phantom(shape=(80, 160, 160), spacing=(1.5, 1.2, 1.2), emphysema=0.05, seed=10)
    result = LungAnalyzer().analyze(volume)
    assert result.extra["working_factors"] == [2, 2, 2]
    assert dice(result.labels == 2, masks["left_lung"]) > 0.95
    assert dice(result.labels == 3, masks["right_lung"]) > 0.95
    assert dice(result.labels > 0, masks["body"]) > 0.98
    assert _measure(result, "Total LAA-950") == pytest.approx(5.0, abs=0.75)


def test_config_is_validated():
    with pytest.raises(ValueError):
        LungAnalyzerConfig(target_spacing_mm=0)
    with pytest.raises(TypeError):
        LungAnalyzer(config={"min_lung_ml": 1})
