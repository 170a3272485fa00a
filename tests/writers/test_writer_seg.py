"""SEG writer: round trip through a file, geometry, segment numbering, dciodvfy."""

from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuroradix.config import SegType
from neuroradix.writers.seg import (
    LABELMAP_SEG_STORAGE,
    SEG_SOP_CLASS_BY_TYPE,
    SEG_SOP_CLASS_UIDS,
    SEGMENTATION_STORAGE,
    build_seg,
    label_values,
    present_segments,
    segment_number_for_label,
    segment_number_map,
)
from tests.writers.writer_fixtures import AIRWAYS, LEFT, N_SLICES, RIGHT, dciodvfy


@pytest.mark.parametrize("seg_type", list(SegType))
def test_seg_round_trip_masks_per_source_instance(result, ctx, roundtrip, seg_type):
    seg = build_seg(result, replace(ctx, seg_type=seg_type))
    _, path = roundtrip(seg, f"seg-{seg_type.value}.dcm")
    back = hd.seg.segread(path)
    assert back.SOPClassUID == SEG_SOP_CLASS_BY_TYPE[seg_type]
    assert back.SOPClassUID == (SEGMENTATION_STORAGE if seg_type is SegType.BINARY else LABELMAP_SEG_STORAGE)
    # Body (label 1) is empty and left out: Left 1, Right 2, Airways 3.
    assert {back.get_segment_description(n).segment_label: n for n in back.segment_numbers} == {
        "Left lung": 1,
        "Right lung": 2,
        "Airways": 3,
    }
    uids = [ds.SOPInstanceUID for ds in ctx.source]
    for label in (LEFT, RIGHT, AIRWAYS):
        number = segment_number_for_label(seg, result, label)
        pixels = back.get_pixels_by_source_instance(uids, segment_numbers=[number], skip_overlap_checks=True)
        assert pixels.shape == (N_SLICES, 32, 40, 1)
        np.testing.assert_array_equal(pixels[..., 0].astype(bool), result.labels == label)


def test_binary_seg_is_compressed_and_only_non_empty_frames(result, ctx):
    seg = build_seg(result, ctx)
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    expected = sum(int((result.labels == lab).any(axis=(1, 2)).sum()) for lab in (LEFT, RIGHT, AIRWAYS))
    assert seg.NumberOfFrames == expected
    uncompressed = build_seg(result, replace(ctx, seg_compress=False))
    assert uncompressed.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_left_lung_lies_on_patient_left(result, ctx, roundtrip):
    """Frames must sit at their source instance's position: the left lung at x > 0."""
    _, path = roundtrip(build_seg(result, ctx))
    back = hd.seg.segread(path)
    for label_name, sign in (("Left lung", 1), ("Right lung", -1)):
        number = [n for n in back.segment_numbers if back.get_segment_description(n).segment_label == label_name][0]
        volume = back.get_volume(segment_numbers=[number], combine_segments=True)
        idx = np.argwhere(volume.array > 0)
        points = idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]
        assert len(points) == int((result.labels == (LEFT if sign > 0 else RIGHT)).sum())
        assert np.all(np.sign(points[:, 0]) == sign)
    # z of the frames equals the source slices' z (the SEG reorders frames; compare sets)
    src_z = {round(float(ds.ImagePositionPatient[2]), 3) for ds in ctx.source}
    seg_z = {
        round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
        for f in back.PerFrameFunctionalGroupsSequence
    }
    assert seg_z <= src_z


def test_segment_codes_colour_and_algorithm(result, ctx):
    seg = build_seg(result, ctx)
    left = seg.SegmentSequence[0]
    assert left.SegmentedPropertyTypeCodeSequence[0].CodeValue == "44029006"
    assert left.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert "SegmentedPropertyTypeModifierCodeSequence" not in left.SegmentedPropertyTypeCodeSequence[0]
    assert left.SegmentAlgorithmType == "AUTOMATIC"
    assert left.SegmentAlgorithmName == "Lung HU analyzer"
    algorithm = left.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == result.analyzer.algorithm_family.value
    assert algorithm.AlgorithmVersion == result.analyzer.version
    assert len(left.RecommendedDisplayCIELabValue) == 3
    assert seg.Manufacturer == "Neuro Radix"
    assert seg.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"


def test_laterality_modifier_when_type_is_not_lateral(result, ctx):
    from neuroradix.types import Code, SegmentDescription

    lung = Code("39607008", "SCT", "Lung")
    segments = tuple(replace(s, type=lung) if s.label == LEFT else s for s in result.segments)
    seg = build_seg(replace(result, segments=segments), ctx)
    item = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert item.CodeValue == "39607008"
    assert item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    assert isinstance(segments[0], SegmentDescription)


def test_all_empty_returns_none(result, ctx):
    empty = replace(result, labels=np.zeros_like(result.labels))
    assert build_seg(empty, ctx) is None


def test_undescribed_label_is_an_error(result, ctx):
    labels = result.labels.copy()
    labels[0, 0, 0] = 9
    with pytest.raises(ValueError, match="without a segment description"):
        build_seg(replace(result, labels=labels), ctx)


def test_wrong_grid_is_an_error(result, ctx):
    with pytest.raises(ValueError, match="shape"):
        build_seg(replace(result, labels=result.labels[:-1]), ctx)


def test_seg_type_is_an_enum_not_a_string(ctx):
    assert replace(ctx, seg_type=SegType.LABELMAP).seg_type is SegType.LABELMAP
    for wrong in ("LABELMAP", "FRACTIONAL", None):
        with pytest.raises(TypeError, match="seg_type"):
            replace(ctx, seg_type=wrong)


def test_seg_sop_classes_are_the_dicom_ones():
    """One set of SEG SOP classes, the same as highdicom's and pydicom's UIDs."""
    assert SEG_SOP_CLASS_UIDS == set(hd.seg.SOP_CLASS_UIDS)
    assert SEGMENTATION_STORAGE == "1.2.840.10008.5.1.4.1.1.66.4"
    assert LABELMAP_SEG_STORAGE == "1.2.840.10008.5.1.4.1.1.66.7"
    assert set(SEG_SOP_CLASS_BY_TYPE) == set(SegType)


def test_binary_seg_passes_dciodvfy(result, ctx, roundtrip):
    _, path = roundtrip(build_seg(result, ctx))
    errors, _ = dciodvfy(path)
    assert errors == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_label_values_equal_numpy_unique(dtype):
    labels = np.zeros((5, 600, 400), dtype=dtype)  # 1.2 M values: more than one counting block
    labels[4, 599, 399] = 300 if dtype != np.uint8 else 200  # only in the last block
    labels[0, 0, 0], labels[2, 10:20, 5] = 7, 3
    assert label_values(labels) == [int(v) for v in np.unique(labels)] == [0, 3, 7, int(labels[4, 599, 399])]


def test_segment_numbers_without_renumbering_use_the_label_map_itself(result, ctx, roundtrip):
    """All four labels present (1..4 in order): the label map is handed to highdicom as is,
    left untouched, and the SEG still holds every segment's voxels."""
    labels = result.labels.copy()
    labels[0, :2, :2] = 1  # Body
    full = replace(result, labels=labels)
    segments = present_segments(full)
    assert segment_number_map(labels, segments) is labels
    renumbered = segment_number_map(result.labels, present_segments(result))
    np.testing.assert_array_equal(renumbered, np.array([0, 0, 1, 2, 3], np.uint8)[result.labels])
    before = labels.copy()
    seg = build_seg(full, ctx)
    np.testing.assert_array_equal(labels, before)
    _, path = roundtrip(seg)
    back = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in ctx.source]
    for label in (1, LEFT, RIGHT, AIRWAYS):
        number = segment_number_for_label(seg, full, label)
        assert number == label
        pixels = back.get_pixels_by_source_instance(uids, segment_numbers=[number], skip_overlap_checks=True)
        np.testing.assert_array_equal(pixels[..., 0].astype(bool), labels == label)


def test_encode_workers_give_the_same_bytes(result, ctx):
    one = build_seg(result, ctx)
    two = build_seg(result, replace(ctx, encode_workers=2))
    assert two.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert two.PixelData == one.PixelData and two.NumberOfFrames == one.NumberOfFrames
    with pytest.raises(ValueError, match="encode_workers"):
        replace(ctx, encode_workers=-1)
    with pytest.raises(ValueError, match="encode_workers"):
        replace(ctx, encode_workers=True)
