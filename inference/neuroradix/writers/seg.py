"""DICOM Segmentation (SEG) from a :class:`~neuroradix.types.StudyResult` label map.

The label map lies on the source grid, so frame ``i`` of the segmentation is derived
from ``ctx.source[i]`` and highdicom copies each source instance's position into the
frame's functional groups (and references it in the Derivation Image Sequence). For a
multi-frame (Enhanced CT) source the label map is put in the source's frame order, so that
each segmentation frame references its source frame (ReferencedFrameNumber).

Segments that are empty in the label map are left out; the remaining segments are
numbered 1..n in label order (DICOM requires segment numbers without gaps), and
:func:`segment_numbers` recovers the mapping from analyzer label to segment number.
When every segment is empty there is nothing to store and :func:`build_seg` returns
``None``.
"""

from __future__ import annotations

import logging
from typing import Optional

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, SegmentationStorage

from neuroradix.config import SegType
from neuroradix.types import SegmentDescription, StudyResult
from neuroradix.uids import derive_uid
from neuroradix.writers.common import (
    ObjectKind,
    OutputContext,
    check_result,
    coded,
    content_note,
    equipment_kwargs,
    finish_dataset,
    output_uids,
    series_description,
    series_number,
    short_string,
)

logger = logging.getLogger(__name__)

_BLOCK_VALUES = 1 << 20  # label values counted at a time

SEGMENTATION_STORAGE = SegmentationStorage
"""SOP Class UID of a BINARY segmentation (Segmentation Storage)."""
LABELMAP_SEG_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.7")
"""SOP Class UID of a LABELMAP segmentation (Label Map Segmentation Storage; pydicom 3.0 has no name for it)."""
SEG_SOP_CLASS_BY_TYPE: dict[SegType, UID] = {
    SegType.BINARY: SEGMENTATION_STORAGE,
    SegType.LABELMAP: LABELMAP_SEG_STORAGE,
}
"""The SOP class :func:`build_seg` writes for each :class:`~neuroradix.config.SegType`."""
SEG_SOP_CLASS_UIDS: frozenset[str] = frozenset(SEG_SOP_CLASS_BY_TYPE.values())
"""Every SOP class a SEG written here may have (what a reader filters a study's instances by)."""


def segment_label_text(desc: SegmentDescription) -> str:
    """The SegmentLabel written for ``desc`` (ASCII, at most 64 characters)."""
    return short_string(desc.name)


def label_values(labels: np.ndarray) -> list[int]:
    """The distinct values of a label map, ascending.

    uint8 and uint16 maps are counted a block at a time (:func:`numpy.bincount`),
    which is about twice as fast as :func:`numpy.unique` on a CT-sized map.
    """
    labels = np.asarray(labels)
    if labels.dtype not in (np.uint8, np.uint16) or labels.size == 0:
        return [int(v) for v in np.unique(labels)]
    flat = labels.reshape(-1)
    counts = np.zeros(int(flat.max()) + 1, dtype=np.int64)
    for start in range(0, flat.size, _BLOCK_VALUES):
        counts += np.bincount(flat[start : start + _BLOCK_VALUES], minlength=counts.size)
    return [int(v) for v in np.flatnonzero(counts)]


def present_segments(result: StudyResult) -> list[SegmentDescription]:
    """The described segments that have at least one voxel, in label order."""
    found = set(label_values(result.labels)) - {0}
    undescribed = found - {s.label for s in result.segments}
    if undescribed:
        raise ValueError(f"label map holds labels without a segment description: {sorted(undescribed)}")
    return sorted((s for s in result.segments if s.label in found), key=lambda s: s.label)


def segment_number_map(labels: np.ndarray, segments: list[SegmentDescription]) -> np.ndarray:
    """``labels`` with each present segment's label replaced by its segment number.

    Segment ``i`` (1-based, in the order of ``segments``) gets number ``i``; the result
    is uint8 (uint16 from 256 segments on). When the labels already are 1..n in that
    dtype, ``labels`` itself is returned, not a copy.
    """
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    if [s.label for s in segments] == list(range(1, len(segments) + 1)) and labels.dtype == dtype:
        return labels
    lut = np.zeros(int(max(labels.max(), max(s.label for s in segments))) + 1, dtype=dtype)
    for number, desc in enumerate(segments, start=1):
        lut[desc.label] = number
    return lut[labels]


def _segment_description(
    number: int, desc: SegmentDescription, result: StudyResult, ctx: OutputContext
) -> hd.seg.SegmentDescription:
    analyzer = result.analyzer
    algorithm = hd.AlgorithmIdentificationSequence(
        name=short_string(analyzer.title or analyzer.name),
        family=coded(analyzer.algorithm_family),
        version=short_string(analyzer.version),
    )
    color = hd.color.CIELabColor.from_rgb(*desc.color) if desc.color is not None else None
    item = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment_label_text(desc),
        segmented_property_category=coded(desc.category),
        segmented_property_type=coded(desc.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=short_string(f"{analyzer.name} label {desc.label}"),
        tracking_uid=derive_uid(
            ctx.study_uid, ctx.source_series_uid, ctx.pipeline_version, analyzer.name, "segment", str(desc.label)
        ),
        display_color=color,
    )
    if desc.laterality is not None and desc.laterality.meaning.lower() not in desc.type.meaning.lower():
        # The type code does not say the side ("Lung", not "Left lung"): qualify it.
        item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
            [coded(desc.laterality)]
        )
    if result.analyzer.untrained:
        item.SegmentDescription = content_note(result)[:64]
    return item


def build_seg(result: StudyResult, ctx: OutputContext) -> Optional[Dataset]:
    """Build the SEG for ``result``'s label map, or ``None`` when no segment has a voxel.

    Parameters
    ----------
    result:
        The analyzer's output; ``result.labels`` must be on the source grid.
    ctx:
        Source series and settings (``ctx.seg_type``, ``ctx.seg_compress``).

    Returns
    -------
    pydicom.Dataset or None
        A ``highdicom.seg.Segmentation`` (BINARY: Segmentation Storage; LABELMAP:
        Label Map Segmentation Storage), not yet stored.
    """
    check_result(result, ctx)
    segments = present_segments(result)
    if not segments:
        logger.info("no non-empty segment: no SEG written")
        return None
    numbered = segment_number_map(result.labels, segments)

    if ctx.seg_type is SegType.LABELMAP:
        transfer_syntax = RLELossless
    else:
        transfer_syntax = JPEG2000Lossless if ctx.seg_compress else ExplicitVRLittleEndian
    series_uid, sop_uid = output_uids(result, ctx, ObjectKind.SEG)
    description = series_description(result, "organ segmentation")
    seg = hd.seg.Segmentation(
        source_images=ctx.source_images,
        pixel_array=ctx.pixels_for(numbered),  # a multi-frame source: in its frame order
        segmentation_type=ctx.seg_type.value,
        segment_descriptions=[_segment_description(i, d, result, ctx) for i, d in enumerate(segments, start=1)],
        series_instance_uid=series_uid,
        series_number=series_number(ctx, ObjectKind.SEG),
        sop_instance_uid=sop_uid,
        instance_number=1,
        transfer_syntax_uid=transfer_syntax,
        omit_empty_frames=True,
        workers=ctx.encode_workers if transfer_syntax != ExplicitVRLittleEndian else 0,
        content_label="AI_SEG",
        content_description=short_string(description),
        series_description=description,
        **equipment_kwargs(result, ctx),
    )
    return finish_dataset(ctx.reference_frames(seg), result, ctx, description)


def segment_numbers(seg: Dataset) -> dict[str, int]:
    """Map SegmentLabel to SegmentNumber for a SEG written by :func:`build_seg`."""
    return {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}


def segment_number_for_label(seg: Dataset, result: StudyResult, label: int) -> Optional[int]:
    """The SegmentNumber of analyzer label ``label`` in ``seg`` (``None`` if left out)."""
    by_label = {s.label: s for s in result.segments}
    if label not in by_label:
        return None
    return segment_numbers(seg).get(segment_label_text(by_label[label]))
