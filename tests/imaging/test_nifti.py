"""NIfTI <-> volume: the one conversion (RAS <-> LPS, axis order) that the node and training share."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import axial_axes
from neuroradix.imaging.nifti import array_to_volume, nifti_to_volume, volume_to_nifti, volume_to_nifti_bytes
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import Volume
from tests.support import real_ct


def _write_nifti(path, data: np.ndarray, ras_affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data, ras_affine)
    image.set_sform(ras_affine, code=1)
    image.set_qform(ras_affine, code=1)
    nib.save(image, str(path))


def _check_same_points(path, volume: Volume, samples: int = 25) -> None:
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    rng = np.random.default_rng(0)
    for _ in range(samples):
        ijk = np.array([rng.integers(0, n) for n in data.shape[:3]])
        lps = (image.affine @ np.r_[ijk, 1.0])[:3] * np.array([-1.0, -1.0, 1.0])
        index = volume.patient_to_index(lps)
        np.testing.assert_allclose(index, np.rint(index), atol=1e-4)
        assert volume.array[tuple(np.rint(index).astype(int))] == data[tuple(ijk)]


@pytest.mark.parametrize("permutation", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, -1), (1, -1, 1)])
def test_nifti_axes_are_reordered_to_axial_without_moving_voxels(tmp_path, permutation, signs):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16)
    spacing = np.array([0.8, 1.1, 2.5])
    ras = np.eye(4)
    ras[:3, :3] = 0.0
    for axis, (target, sign) in enumerate(zip(permutation, signs)):
        ras[target, axis] = sign * spacing[axis]  # voxel axis -> RAS axis
    ras[:3, 3] = [-20.0, 35.0, 100.0]
    path = tmp_path / "x.nii.gz"
    _write_nifti(path, data, ras)
    volume = nifti_to_volume(path)
    _check_same_points(path, volume)
    directions = volume.directions
    np.testing.assert_allclose(directions[:, 0], [0, 0, 1], atol=1e-9)  # slices inferior -> superior
    np.testing.assert_allclose(directions[:, 1], [0, 1, 0], atol=1e-9)  # rows anterior -> posterior
    np.testing.assert_allclose(directions[:, 2], [1, 0, 0], atol=1e-9)  # columns right -> left
    assert volume.array.dtype == np.int16


def test_nifti_scaling_and_missing_geometry(tmp_path):
    data = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    path = tmp_path / "scaled.nii"
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    image.set_sform(np.eye(4), code=1)
    nib.save(image, str(path))
    volume = nifti_to_volume(path)
    assert volume.array.dtype == np.float32
    assert float(volume.array.min()) == -1024.0 and float(volume.array.max()) == 2.0 * 511 - 1024.0
    bare = tmp_path / "bare.nii"
    image = nib.Nifti1Image(data, np.eye(4))
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)
    nib.save(image, str(bare))
    with pytest.raises(BadInputError, match="geometry"):
        nifti_to_volume(bare)
    (tmp_path / "junk.nii").write_bytes(b"not a nifti")
    with pytest.raises(BadInputError):
        nifti_to_volume(tmp_path / "junk.nii")


@pytest.mark.parametrize("name", ["thorax_ct_1.5mm.nii.gz", "abdomen_ct_3mm.nii.gz"], ids=["thorax-LPS", "abdomen-RAS"])
def test_real_nifti_files_keep_their_geometry(name):
    path = real_ct(name)
    volume = nifti_to_volume(path)
    _check_same_points(path, volume, samples=200)
    order, flips = axial_axes(volume.affine)
    assert order == (0, 1, 2) and flips == (False, False, False)  # already a conventional axial stack


@pytest.mark.parametrize("orientation", ["axial", "flipped-columns", "transposed"])
def test_written_nifti_reads_back_voxel_for_voxel(tmp_path, orientation):
    volume, _ = thorax_phantom(shape=(16, 24, 20), spacing=(3.0, 1.5, 1.25), orientation=orientation, seed=2)
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(volume_to_nifti_bytes(volume.array, volume.affine))
    back = nifti_to_volume(path)
    _check_same_points(path, back, samples=60)
    order, flips = axial_axes(volume.affine)
    if orientation == "axial":  # already axial: the exact grid and values come back
        np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
        np.testing.assert_array_equal(back.array, volume.array.astype(np.float32))
    else:  # another axis order comes back as the axial stack, voxels at the same patient points
        assert (order, flips) != ((0, 1, 2), (False, False, False))
        assert axial_axes(back.affine) == ((0, 1, 2), (False, False, False))
        assert sorted(back.array.ravel().tolist()) == sorted(volume.array.astype(np.float32).ravel().tolist())


def test_label_maps_get_the_smallest_unsigned_type_and_floats_float32():
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    small = np.zeros((3, 4, 5), dtype=np.int64)
    small[1, 2, 3] = 200
    assert volume_to_nifti(small, affine).get_data_dtype() == np.uint8
    assert volume_to_nifti(small * 300, affine).get_data_dtype() == np.uint16
    assert volume_to_nifti(small - 1, affine).get_data_dtype() == np.int16  # negative values are kept
    assert volume_to_nifti(small.astype(np.float64), affine).get_data_dtype() == np.float32
    assert volume_to_nifti(small, affine, np.dtype(np.int16)).get_data_dtype() == np.int16
    image = nib.Nifti1Image.from_bytes(gzip.decompress(volume_to_nifti_bytes(small, affine)))
    assert image.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.transpose(small, (2, 1, 0)))


def test_lps_to_ras_of_an_axial_grid_flips_x_and_y_and_swaps_axes():
    affine = np.eye(4)  # slice -> z, row -> y, column -> x (LPS), voxel (0, 0, 0) at (10, 20, 30)
    affine[:3, :3] = [[0, 0, 0.7], [0, 0.8, 0], [2.5, 0, 0]]
    affine[:3, 3] = [10.0, 20.0, 30.0]
    ras = volume_to_nifti(np.zeros((4, 5, 6), np.uint8), affine).affine
    expected = np.diag([-0.7, -0.8, 2.5, 1.0])
    expected[:3, 3] = [-10.0, -20.0, 30.0]
    np.testing.assert_allclose(ras, expected)


def test_metadata_spacing_replaces_the_header_spacing_keeping_directions():
    ras = np.diag([-0.5, -0.5, 5.0, 1.0])
    volume = array_to_volume(np.zeros((6, 7, 8), np.int16), ras, spacing_zyx=(1.25, 0.75, 0.7))
    assert volume.shape == (8, 7, 6)
    np.testing.assert_allclose(volume.spacing, [1.25, 0.75, 0.7])
    np.testing.assert_allclose(volume.directions, np.eye(3)[:, ::-1], atol=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        dict(data_ijk=np.zeros((3, 4))),
        dict(affine_ras=np.eye(3)),
        dict(spacing_zyx=(1.0, 0.0, 1.0)),
        dict(spacing_zyx=(1.0, 1.0)),
    ],
)
def test_bad_arguments_are_refused(bad):
    arguments = dict(data_ijk=np.zeros((3, 4, 5)), affine_ras=np.eye(4)) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        array_to_volume(**arguments)
