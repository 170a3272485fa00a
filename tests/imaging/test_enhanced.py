"""Enhanced CT: one multi-frame instance (or several) assembled like the classic series it came from."""

from __future__ import annotations

import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuroradix.errors import BadInputError, InputTooLargeError, NotEligibleError
from neuroradix.imaging.enhanced import classic_to_enhanced_ct
from neuroradix.imaging.frames import ENHANCED_CT_IMAGE_STORAGE, frame_planes
from neuroradix.imaging.volume import SizeLimits, assemble, plan
from tests.factory import ct_series
from tests.support import require_tool


def _marked(shape=(12, 16, 20)):
    """A volume whose value encodes its index, so any axis swap, flip or frame mix-up shows."""
    k, r, c = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (k * 100 + r * 3 + c * 7 - 1000).astype(np.float32)


def _round_trip(ds: pydicom.Dataset, tmp_path) -> pydicom.Dataset:
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_converted_instance_is_a_valid_enhanced_ct(tmp_path):
    classic = ct_series(_marked())
    ds = classic_to_enhanced_ct(classic, frame_order=np.random.default_rng(1).permutation(12), uid_seed="t")
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert [ln for ln in lines if ln.startswith(("Error", "Warning"))] == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == ENHANCED_CT_IMAGE_STORAGE and back.NumberOfFrames == 12
    assert back.StudyInstanceUID == classic[0].StudyInstanceUID
    assert back.FrameOfReferenceUID == classic[0].FrameOfReferenceUID


@pytest.mark.parametrize(
    "row_dir,col_dir", [((1, 0, 0), (0, 1, 0)), ((0, 1, 0), (-1, 0, 0)), ((1, 0, 0), (0, 0.6, -0.8))]
)
def test_shuffled_frames_give_the_classic_volume(row_dir, col_dir, tmp_path):
    classic = ct_series(_marked(), row_dir=row_dir, col_dir=col_dir)
    order = np.random.default_rng(2).permutation(12)
    enhanced = _round_trip(classic_to_enhanced_ct(classic, frame_order=order), tmp_path)
    expected = assemble(classic).volume
    got = assemble([enhanced])
    np.testing.assert_array_equal(got.volume.array, expected.array)
    np.testing.assert_allclose(got.volume.affine, expected.affine, atol=1e-6)
    assert got.datasets == (enhanced,)
    assert [s.frame for s in got.slices] == [int(np.flatnonzero(order == k)[0]) + 1 for k in range(12)]


def test_per_frame_rescale_and_legacy_converted_class(tmp_path):
    classic = ct_series(_marked())
    for k, ds in enumerate(classic):  # each slice its own rescale: stored values change, HU do not
        hu = ds.pixel_array.astype(np.int32) - 1024
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1000 - k
        ds.PixelData = ((hu + 1000 + k) // 2).astype(np.int16).tobytes()
    expected = assemble(classic).volume.array
    got = assemble([_round_trip(classic_to_enhanced_ct(classic[::-1]), tmp_path)]).volume.array
    np.testing.assert_allclose(got, expected, atol=1.0)
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        ct_series(_marked()),
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    np.testing.assert_allclose(assemble([legacy]).volume.array, _marked(), atol=0.5)


def test_a_series_of_several_multiframe_instances(tmp_path):
    classic = ct_series(_marked())
    first = classic_to_enhanced_ct(classic[6:], frame_order=[5, 4, 3, 2, 1, 0], uid_seed="a")  # the upper half
    second = classic_to_enhanced_ct(classic[:6], uid_seed="b")
    got = assemble([first, second], release=True)
    np.testing.assert_array_equal(got.volume.array, assemble(classic).volume.array)
    assert got.datasets == (second, first)  # ordered by their first slice
    assert [(s.instance, s.frame) for s in got.slices[5:8]] == [(0, 6), (1, 6), (1, 5)]
    assert "PixelData" not in first and "PixelData" not in second  # released once decoded


def test_missing_frame_and_duplicate_frame_fail_like_a_classic_series():
    classic = ct_series(_marked())
    with pytest.raises(BadInputError, match="missing slices: a gap of 5.00 mm"):
        plan([classic_to_enhanced_ct(classic[:5] + classic[6:])])
    duplicate = classic_to_enhanced_ct(classic)
    frames = duplicate.PerFrameFunctionalGroupsSequence
    frames[3].PlanePositionSequence = frames[4].PlanePositionSequence
    with pytest.raises(BadInputError, match="share one position"):
        plan([duplicate])


def test_mixed_frame_orientations_are_not_eligible():
    ds = classic_to_enhanced_ct(ct_series(_marked()))
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence
    del shared.PlaneOrientationSequence
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.PlaneOrientationSequence = pydicom.sequence.Sequence([pydicom.Dataset()])
        item.PlaneOrientationSequence[0].ImageOrientationPatient = (
            [1, 0, 0, 0, 0.9986, 0.0523] if k == 7 else list(orientation[0].ImageOrientationPatient)
        )
    assert len({p.orientation for p in frame_planes(ds)}) == 2  # per-frame values win over shared ones
    with pytest.raises(NotEligibleError, match=r"mixed orientations within the series \(.*between frames\)"):
        plan([ds])


def test_frames_count_against_the_limits_before_decoding():
    ds = classic_to_enhanced_ct(ct_series(_marked()))
    del ds.PixelData  # headers only: the limits must not need the pixels
    with pytest.raises(InputTooLargeError, match="12 frames in 1 multi-frame instance.*limit of 10 slices.*"):
        plan([ds], size=SizeLimits(max_instances=10))
    with pytest.raises(InputTooLargeError, match=r"12 x 16 x 20 = 3,840 voxels.*NEURORADIX_MAX_VOLUME_VOXELS"):
        plan([ds], size=SizeLimits(max_voxels=12 * 16 * 20 - 1))
    assert plan([ds], size=SizeLimits(max_instances=12, max_voxels=12 * 16 * 20)).shape == (12, 16, 20)


def test_short_pixel_data_fails_with_the_reason():
    ds = classic_to_enhanced_ct(ct_series(_marked()))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(BadInputError, match="pixel data of instance 1 is corrupt"):
        assemble([ds])


def test_single_and_multiframe_instances_do_not_mix():
    classic = ct_series(_marked())
    with pytest.raises(BadInputError, match="mixes single-frame CT images and multi-frame"):
        plan([classic_to_enhanced_ct(classic[:6]), *classic[6:]])
