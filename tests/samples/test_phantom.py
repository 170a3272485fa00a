"""The synthetic thorax: anatomy on the right side, exact planted emphysema, any orientation."""
from __future__ import annotations

import numpy as np
import pytest

from neuroradix.samples.phantom import ORIENTATIONS, ground_truth_volumes_ml, thorax_phantom
from tests.support import patient_centroid


def test_anatomy_is_on_the_patients_side():
    volume, masks = thorax_phantom()
    left = patient_centroid(volume, masks["left_lung"])
    right = patient_centroid(volume, masks["right_lung"])
    assert left[0] > 20.0 and right[0] < -20.0  # LPS: +x is the patient's left
    assert masks["left_lung"].sum() < 0.85 * masks["right_lung"].sum()
    assert patient_centroid(volume, masks["spine"])[1] > patient_centroid(volume, masks["heart"])[1]  # posterior
    trachea = patient_centroid(volume, masks["trachea"])
    assert trachea[2] > left[2] and abs(trachea[0]) < 5.0


def test_hu_values_and_masks_are_consistent():
    volume, masks = thorax_phantom(seed=1)
    hu = volume.array
    lungs = masks["left_lung"] | masks["right_lung"]
    assert -880 < hu[lungs].mean() < -820
    assert hu[lungs].min() > -950.0  # no planted emphysema, no LAA
    assert hu[masks["airways"]].mean() < -950
    assert hu[masks["spine"]].mean() > 500
    assert hu[~masks["body"] & ~masks["table"]].mean() < -950
    assert not (lungs & masks["airways"]).any()
    assert not (masks["left_lung"] & masks["right_lung"]).any()
    assert (lungs <= masks["body"]).all()


@pytest.mark.parametrize("fraction", [0.03, 0.25])
def test_planted_emphysema_is_the_asked_fraction(fraction):
    volume, masks = thorax_phantom(emphysema=fraction, seed=2)
    lungs = masks["left_lung"] | masks["right_lung"]
    laa = (volume.array[lungs] < -950).mean()
    assert laa == pytest.approx(fraction, abs=1e-3)
    assert (masks["emphysema"] <= lungs).all()


@pytest.mark.parametrize("orientation", sorted(set(ORIENTATIONS) - {"axial"}))
def test_orientations_keep_every_voxel_in_place(orientation):
    reference, ref_masks = thorax_phantom(seed=4)
    volume, masks = thorax_phantom(seed=4, orientation=orientation)
    assert not np.allclose(volume.affine, reference.affine)
    for name in ("left_lung", "right_lung", "airways", "spine"):
        assert masks[name].sum() == ref_masks[name].sum()
        np.testing.assert_allclose(patient_centroid(volume, masks[name]),
                                   patient_centroid(reference, ref_masks[name]), atol=1e-6)
    # Same HU (noise included) at the same patient point.
    for index in ([3, 10, 20], [40, 50, 70], [63, 95, 0]):
        point = reference.index_to_patient(np.array(index))
        other = volume.patient_to_index(point)
        np.testing.assert_allclose(other, np.rint(other), atol=1e-6)
        assert reference.array[tuple(index)] == volume.array[tuple(np.rint(other).astype(int))]


def test_ground_truth_volumes_in_ml():
    volume, masks = thorax_phantom()
    volumes = ground_truth_volumes_ml(volume, masks)
    assert volumes["left_lung"] == pytest.approx(masks["left_lung"].sum() * 2.5 * 2 * 2 / 1000)
    assert 100 < volumes["left_lung"] < volumes["right_lung"]


@pytest.mark.parametrize("kwargs", [dict(shape=(8, 96, 96)), dict(spacing=(0, 1, 1)), dict(emphysema=0.9),
                                    dict(orientation="sideways")])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        thorax_phantom(**kwargs)
