"""Volume assembly: slice order, geometry and HU from real positions, and what is wrong with a series."""

from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pydicom
import pytest

from neuroradix.config import PipelineSettings
from neuroradix.errors import BadInputError, InputTooLargeError, NotEligibleError, UndecodablePixelsError
from neuroradix.imaging import volume as volume_module
from neuroradix.imaging.volume import SizeLimits, assemble
from neuroradix.models.remap import load_remap
from neuroradix.pacs.series import check_series, load_rules
from neuroradix.pacs.summaries import InstanceSummary
from neuroradix.pipeline.run import size_limits
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


def test_mixed_orientation_is_not_eligible_as_in_series_selection():
    """One orientation rule, one outcome: assembly skips the series just as selection does."""
    datasets = ct_series(_marked())
    datasets[2].ImageOrientationPatient = [0, 1, 0, -1, 0, 0]
    with pytest.raises(NotEligibleError, match="mixed orientations within the series") as err:
        assemble(datasets)
    with pytest.raises(NotEligibleError) as selected:
        check_series([InstanceSummary.from_dataset(ds) for ds in datasets], load_rules())
    assert str(selected.value) == str(err.value)


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
    with pytest.raises(UndecodablePixelsError, match="cannot decode"):  # the pipeline asks the PACS to transcode
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


def _no_decoding(monkeypatch):
    """Make any pixel decoding fail loudly: the checks must come before it."""

    def refuse(ds):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(volume_module, "_decode", refuse)


def test_huge_series_fails_before_decoding(monkeypatch):
    _no_decoding(monkeypatch)
    with pytest.raises(
        InputTooLargeError,
        match=r"12 x 16 x 20 = 3,840 voxels exceeds the limit of 1,000.*NEURORADIX_MAX_VOLUME_VOXELS",
    ):
        assemble(ct_series(_marked()), size=SizeLimits(max_voxels=1000))


@pytest.mark.parametrize(
    "limits,kwargs,error,match",
    [
        (
            SizeLimits(),
            {"n_instances": 5000, "rows": 512, "columns": 512},
            InputTooLargeError,
            "5000 instances.*2000.*NEURORADIX_MAX_SERIES_INSTANCES",
        ),
        (
            SizeLimits(),
            {"n_instances": 100, "rows": 65535, "columns": 512},
            InputTooLargeError,
            "65535 x 512.*2048.*NEURORADIX_MAX_IMAGE_SIDE",
        ),
        (
            SizeLimits(),
            {"n_instances": 1001, "rows": 512, "columns": 512},
            InputTooLargeError,
            "1001 x 512 x 512.*NEURORADIX_MAX_VOLUME_VOXELS",
        ),
        (SizeLimits(), {"n_instances": 251, "rows": 1024, "columns": 1024}, InputTooLargeError, "251 x 1024 x 1024"),
        (
            SizeLimits(),
            {"n_instances": 100, "rows": 512, "columns": 512, "frames": 100000},
            BadInputError,
            "100000 frames",
        ),
        (
            SizeLimits(),
            {"n_instances": 100, "rows": 512, "columns": 512, "bits_allocated": 64},
            BadInputError,
            "BitsAllocated 64",
        ),
        (SizeLimits(), {"n_instances": 100, "rows": None, "columns": 512}, BadInputError, "missing or not positive"),
        (SizeLimits(), {"n_instances": 100, "rows": 0, "columns": 512}, BadInputError, "missing or not positive"),
    ],
)
def test_size_limits_refuse_absurd_series_naming_numbers_and_setting(limits, kwargs, error, match):
    n = kwargs.pop("n_instances")
    with pytest.raises(error, match=match):
        limits.check(n, kwargs.pop("rows"), kwargs.pop("columns"), **kwargs)


@pytest.mark.parametrize("n,side", [(1000, 512), (800, 512), (250, 1024), (2000, 256)])
def test_default_limits_take_thin_slice_chest_ct(n, side):
    SizeLimits().check(n, side, side, bits_allocated=16, frames=1)  # no error: analyzed, not refused


def test_settings_drive_the_limits():
    settings = PipelineSettings(max_series_instances=3, max_volume_voxels=10**6, max_image_side=64)
    assert size_limits(settings) == SizeLimits(max_instances=3, max_voxels=10**6, max_rows_columns=64)
    assert size_limits(PipelineSettings()).max_voxels == 1000 * 512 * 512
    with pytest.raises(ValueError):
        PipelineSettings(max_volume_voxels=0)


def test_absurd_header_values_fail_before_decoding(monkeypatch):
    _no_decoding(monkeypatch)
    datasets = ct_series(_marked())
    datasets[3].NumberOfFrames = 40000
    with pytest.raises(BadInputError, match="40000 frames"):
        assemble(datasets)
    datasets = ct_series(_marked())
    for ds in datasets:
        ds.Rows = 65535
    with pytest.raises(InputTooLargeError, match="65535"):
        assemble(datasets)


def test_release_drops_pixel_data_after_decoding_and_keeps_headers():
    datasets = ct_series(_marked())
    kept = assemble(ct_series(_marked())).volume.array
    result = assemble(datasets, release=True)
    np.testing.assert_array_equal(result.volume.array, kept)
    assert result.volume.array.dtype == np.float32
    assert all("PixelData" not in ds for ds in datasets)
    assert all(ds.Rows == 16 and ds.ImagePositionPatient for ds in result.datasets)
    untouched = ct_series(_marked())
    assemble(untouched)
    assert all("PixelData" in ds for ds in untouched)
