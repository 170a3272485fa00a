"""Volume assembly: slice order, geometry and HU from real positions, and what is wrong with a series."""

from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pydicom
import pytest

from neuroradix.errors import BadInputError
from neuroradix.imaging.volume import assemble
from neuroradix.models.remap import load_remap
from tests.factory import ct_series
from tests.support import real_ct


def _marked(shape=(12, 16, 20)):
    """A volume whose value encodes its index, so any axis swap or flip shows."""
    k, r, c = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (k * 100 + r * 3 + c * 7 - 1000).astype(np.float32)


@pytest.mark.parametrize(
    "row_dir,col_dir",
    [((1, 0, 0), (0, 1, 0)), ((-1, 0, 0), (0, 1, 0)), ((0, 1, 0), (-1, 0, 0)), ((1, 0, 0), (0, 0.6, -0.8))],
)
def test_voxel_positions_match_the_source_slices(row_dir, col_dir):
    hu = _marked()
    datasets = ct_series(hu, row_dir=row_dir, col_dir=col_dir)
    shuffled = datasets[:]
    random.Random(3).shuffle(shuffled)
    result = assemble(shuffled)
    vol = result.volume
    np.testing.assert_allclose(vol.array, hu, atol=0.5)  # HU and order recovered
    for k in (0, 5, 11):
        ds = result.datasets[k]
        assert ds.SOPInstanceUID == datasets[k].SOPInstanceUID
        ipp = np.array(ds.ImagePositionPatient, float)
        np.testing.assert_allclose(vol.index_to_patient([k, 0, 0]), ipp, atol=1e-3)
        # row 3, column 5 of that slice: IPP + 3*col_dir*ps[0] + 5*row_dir*ps[1]
        expected = ipp + 3 * np.array(col_dir) * 0.8 + 5 * np.array(row_dir) * 0.7
        np.testing.assert_allclose(vol.index_to_patient([k, 3, 5]), expected, atol=1e-3)
    np.testing.assert_allclose(vol.spacing, [2.5, 0.8, 0.7], atol=1e-6)


def test_slices_sorted_by_position_not_instance_number():
    hu = _marked()
    datasets = ct_series(hu)
    for ds, n in zip(datasets, reversed(range(len(datasets)))):
        ds.InstanceNumber = n + 1  # numbering runs against the positions
    result = assemble(datasets)
    np.testing.assert_allclose(result.volume.array, hu, atol=0.5)


def test_hu_uses_each_slices_rescale():
    hu = _marked()
    datasets = ct_series(hu, slope=1.0, intercept=-1024)
    other = ct_series(hu, slope=2.0, intercept=-2048)
    datasets[4] = other[4]
    datasets[4].ImagePositionPatient = ct_series(hu)[4].ImagePositionPatient
    datasets[4].ImageOrientationPatient = datasets[0].ImageOrientationPatient
    result = assemble(datasets)
    np.testing.assert_allclose(result.volume.array[4], hu[4], atol=1.0)


def test_missing_slices_fail_with_reason():
    datasets = ct_series(_marked())
    del datasets[6]
    with pytest.raises(BadInputError, match="missing slices"):
        assemble(datasets)


def test_duplicate_positions_fail():
    datasets = ct_series(_marked())
    datasets[3].ImagePositionPatient = datasets[4].ImagePositionPatient
    with pytest.raises(BadInputError, match="share one position"):
        assemble(datasets)


def test_mixed_orientation_fails():
    datasets = ct_series(_marked())
    datasets[2].ImageOrientationPatient = [0, 1, 0, -1, 0, 0]
    with pytest.raises(BadInputError, match="mixed orientations"):
        assemble(datasets)


def test_gantry_tilt_is_kept_exactly_and_reported():
    tilt = np.radians(15)
    step = np.array([0, np.sin(tilt), np.cos(tilt)]) * 2.5 / np.cos(tilt)  # positions shift in y per slice
    datasets = ct_series(_marked(), step=step)
    result = assemble(datasets)
    assert any("gantry tilt of 15.0" in w for w in result.warnings)
    for k in (0, 7):
        np.testing.assert_allclose(
            result.volume.index_to_patient([k, 2, 2]),
            np.array(datasets[k].ImagePositionPatient, float) + 2 * np.array([0, 0.8, 0]) + 2 * np.array([0.7, 0, 0]),
            atol=1e-3,
        )


def test_undecodable_pixels_fail_with_transfer_syntax():
    datasets = ct_series(_marked())
    datasets[0].file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG baseline, but raw bytes inside
    with pytest.raises(BadInputError, match="cannot decode"):
        assemble(datasets)


def test_real_jpeg2000_series_matches_its_reference_segmentation_grid(abdomen_dicom_dir):
    files = sorted(abdomen_dicom_dir.iterdir())
    result = assemble([pydicom.dcmread(f) for f in files])
    vol = result.volume
    assert vol.shape[0] == len(files) == 20
    assert -1100 < vol.array.min() < -900 and vol.array.max() > 500  # HU, not stored values
    seg = nib.load(real_ct("abdomen_ct_dicom_totalseg117.nii.gz"))
    labels = np.asarray(seg.dataobj)
    # Map every labelled voxel of the reference (RAS NIfTI) into our volume through patient space.
    ijk = np.argwhere(labels > 0)
    lps = (np.diag([-1, -1, 1, 1]) @ seg.affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    index = vol.patient_to_index(lps)
    np.testing.assert_allclose(index, np.round(index), atol=0.01)  # same grid
    k, r, c = np.round(index).astype(int).T
    assert k.min() >= 0 and k.max() < vol.shape[0] and r.max() < vol.shape[1] and c.max() < vol.shape[2]
    hu = vol.array[k, r, c]
    names = load_remap("totalseg117-to-chest-ct-43").source_labels
    by_name = {names[int(v)]: hu[labels[tuple(ijk.T)] == v] for v in np.unique(labels[labels > 0])}
    assert 30 < np.median(by_name["liver"]) < 250  # soft tissue where the reference says liver
    vertebrae = np.concatenate([v for n, v in by_name.items() if n.startswith("vertebrae")])
    assert np.median(vertebrae) > 150  # bone where the reference says vertebra
    # a left/right swap would put the spleen (patient's left) at x < 0 in LPS
    label_of = labels[tuple(ijk.T)]
    spleen_x = vol.index_to_patient(index[label_of == 1])[:, 0].mean()
    liver_x = vol.index_to_patient(index[label_of == 5])[:, 0].mean()
    assert spleen_x > 0 > liver_x


def test_huge_series_fails_before_decoding():
    from neuroradix.imaging.volume import GeometryLimits

    with pytest.raises(BadInputError, match="too large"):
        assemble(ct_series(_marked()), GeometryLimits(max_voxels=1000))
