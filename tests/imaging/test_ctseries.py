"""Volume -> DICOM CT series -> volume: geometry and HU must survive exactly (NIfTI: test_nifti.py)."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import (
    to_axial,
    volume_to_ct_series,
    write_series,
)
from neuroradix.imaging.volume import assemble
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import Volume
from tests.support import require_tool


def _small(orientation: str = "axial") -> Volume:
    volume, _ = thorax_phantom(shape=(18, 32, 40), spacing=(3.0, 1.5, 1.25), orientation=orientation, seed=5)
    return Volume(np.rint(volume.array).astype(np.int16), volume.affine)


@pytest.mark.parametrize("orientation", ["axial", "flipped-columns", "flipped-rows", "flipped-slices", "transposed"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_round_trip_through_files_is_exact(tmp_path, orientation, syntax):
    volume = _small(orientation)
    datasets = volume_to_ct_series(volume, uid_seed="rt", transfer_syntax=syntax)
    paths = write_series(datasets, tmp_path)
    assert len(paths) == volume.shape[0]
    read = [pydicom.dcmread(p) for p in reversed(paths)]  # order must come from the positions
    assert read[0].file_meta.TransferSyntaxUID == syntax
    back = assemble(read).volume
    slice_normal = np.cross(volume.directions[:, 2], volume.directions[:, 1])
    flipped = float(np.dot(slice_normal, volume.affine[:3, 0])) < 0  # assemble sorts along the normal
    expected = volume.array[::-1] if flipped else volume.array
    np.testing.assert_array_equal(back.array, expected)
    for index in ([0, 0, 0], [5, 7, 9], [17, 31, 39]):
        source = list(index)
        if flipped:
            source[0] = volume.shape[0] - 1 - index[0]
        np.testing.assert_allclose(
            back.index_to_patient(np.array(index)), volume.index_to_patient(np.array(source)), atol=1e-4
        )


def test_attributes_of_the_ct_image_iod():
    volume = _small("flipped-columns")
    datasets = volume_to_ct_series(volume, uid_seed="attrs", series_number=7)
    first, second = datasets[0], datasets[1]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.Modality == "CT" and first.SeriesNumber == 7
    assert [float(v) for v in first.PixelSpacing] == [1.5, 1.25]  # [row spacing, column spacing]
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient], [-1, 0, 0, 0, 1, 0])
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], volume.affine[:3, 3])
    assert float(second.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]) == pytest.approx(3.0)
    assert float(first.SliceThickness) == 3.0
    assert [d.InstanceNumber for d in datasets] == list(range(1, volume.shape[0] + 1))
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    for keyword in (
        "KVP",
        "PatientBirthDate",
        "ReferringPhysicianName",
        "AccessionNumber",
        "PositionReferenceIndicator",
    ):
        assert keyword in first  # Type 2: present, may be empty


def test_uids_are_deterministic_with_a_seed_and_random_without():
    volume = _small()
    a = volume_to_ct_series(volume, uid_seed="same")
    b = volume_to_ct_series(volume, uid_seed="same")
    c = volume_to_ct_series(volume, uid_seed="other")
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].StudyInstanceUID == b[0].StudyInstanceUID != c[0].StudyInstanceUID
    assert a[0].FrameOfReferenceUID == b[0].FrameOfReferenceUID
    d = volume_to_ct_series(volume)
    e = volume_to_ct_series(volume)
    assert d[0].SOPInstanceUID != e[0].SOPInstanceUID
    f = volume_to_ct_series(volume, study_uid="1.2.3.4", series_uid="1.2.3.4.5", uid_seed="same")
    assert f[0].StudyInstanceUID == "1.2.3.4" and f[0].SeriesInstanceUID == "1.2.3.4.5"


def test_float_hu_are_rounded_and_wide_ranges_rescaled():
    base = _small()
    rounded = volume_to_ct_series(Volume(base.array.astype(np.float32) + 0.3, base.affine), uid_seed="f")
    np.testing.assert_array_equal(assemble(rounded).volume.array, base.array)
    wide = base.array.astype(np.float64)
    wide[0, 0, 0] = 40000.0  # beyond int16 at slope 1: needs a rescale slope
    back = assemble(volume_to_ct_series(Volume(wide, base.affine), uid_seed="w")).volume.array
    slope = (wide.max() - wide.min()) / 65000.0
    assert np.abs(back - wide).max() <= slope


@pytest.mark.parametrize(
    "bad", [dict(transfer_syntax="1.2.840.10008.1.2.4.90"), dict(patient_name="Müller^A"), dict(series_number=-1)]
)
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        volume_to_ct_series(_small(), **bad)


def test_nan_volumes_are_refused():
    array = _small().array.astype(np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(BadInputError):
        volume_to_ct_series(Volume(array, _small().affine))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_dciodvfy_reports_no_error_or_warning(tmp_path, syntax):
    dciodvfy = require_tool("dciodvfy")  # dicom3tools
    paths = write_series(volume_to_ct_series(_small("transposed"), uid_seed="v", transfer_syntax=syntax), tmp_path)
    for path in (paths[0], paths[-1]):
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        output = run.stdout + run.stderr
        assert "CTImage" in output
        assert "Error" not in output and "Warning" not in output, output


def test_to_axial_is_idempotent_and_exact():
    volume = _small("transposed")
    axial = to_axial(volume)
    reference = _small("axial")
    np.testing.assert_allclose(axial.affine, reference.affine, atol=1e-9)
    np.testing.assert_array_equal(axial.array, reference.array)
    np.testing.assert_allclose(to_axial(axial).affine, axial.affine)
