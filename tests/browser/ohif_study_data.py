"""The study the OHIF test opens: a real chest CT and the node's own results for it.

:func:`build_processed_study` is the one place that makes the data. It reads the real contrast
chest CT (``thorax_ct_1.5mm.nii.gz``, 191 slices of 167 x 233 at 1.5 mm, cut to 166 x 232, see
:func:`even_in_plane`), writes it as a DICOM CT
series, runs the node's no-weights :class:`~neuroradix.analyzers.lung.LungAnalyzer` on it and
encodes the result with :func:`~neuroradix.writers.encode.encode_result`: SEG, Parametric Map of
the attention map, SR and Encapsulated PDF, all in the CT's study, plus the same segmentation as a
LABELMAP SEG (the node's other SEG setting) in a series of its own. That is the pipeline's
analyze-and-encode path without the PACS round trip; the ``processed_study`` fixture in
``conftest.py`` can instead take a study that a running node processed itself.

One setting differs from the node's defaults: ``pmap_grid="SOURCE"``, because OHIF 3.13 overlays
a Parametric Map only when it has the CT's rows, columns and slices (cornerstone's adapter
throws otherwise). The SEG is the default BINARY with JPEG 2000 Lossless.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.dataset import Dataset

from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.config import PmapGrid, SegType
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.samples.real_ct import even_in_plane
from neuroradix.writers.common import OutputContext
from neuroradix.writers.encode import encode_result
from neuroradix.writers.seg import build_seg

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass(frozen=True)
class ProcessedStudy:
    """What the browser test needs to know about the study it opens."""

    study_uid: str
    ct_series_uid: str
    seg_series_uid: str  # BINARY, JPEG 2000 Lossless (the node's default)
    labelmap_seg_series_uid: str  # LABELMAP, RLE Lossless
    pmap_series_uid: str
    pdf_series_uid: str
    segment_labels: tuple[str, ...]  # SegmentLabel values of the SEG, in segment order
    series_descriptions: dict  # SeriesInstanceUID -> SeriesDescription


def build_processed_study(ct_path: Path) -> tuple[list[Dataset], ProcessedStudy]:
    """Build the CT series of the NIfTI ``ct_path`` and the node's result objects for it, ready to upload.

    ``ct_path`` is the real chest CT, ``thorax_ct_1.5mm.nii.gz`` (the ``thorax_path`` fixture).

    Returns
    -------
    datasets, study
        Every instance (CT slices first, then SEG, Parametric Map(s), SR, PDF) and the UIDs
        the test looks for.
    """
    volume = even_in_plane(nifti_to_volume(ct_path))
    source = volume_to_ct_series(
        volume,
        uid_seed="neuroradix-ohif-browser-test",
        series_description="Chest CT 1.5 mm",
        study_description="CT chest (OHIF test)",
    )
    result = LungAnalyzer().analyze(volume)
    ctx = OutputContext(
        source=source,
        volume=volume,
        pipeline_version="ohif-browser-test",
        software_version="0",
        pmap_grid=PmapGrid.SOURCE,
    )
    outputs = encode_result(result, ctx)
    # The same segmentation as a LABELMAP SEG (the node's other setting), in a series of its own.
    labelmap_ctx = replace(ctx, seg_type=SegType.LABELMAP, pipeline_version=ctx.pipeline_version + "-labelmap")
    labelmap_seg = build_seg(result, labelmap_ctx)
    labelmap_seg.SeriesDescription = labelmap_seg.SeriesDescription + " (LABELMAP)"

    def first(sop_class: str) -> Dataset:
        found = [d for d in outputs if d.SOPClassUID == sop_class]
        if not found:
            raise AssertionError(f"encode_result wrote no {sop_class}: {[d.SOPClassUID for d in outputs]}")
        return found[0]

    seg, pmap, pdf = (first(c) for c in (SEGMENTATION_STORAGE, PARAMETRIC_MAP_STORAGE, ENCAPSULATED_PDF_STORAGE))
    study = ProcessedStudy(
        study_uid=str(source[0].StudyInstanceUID),
        ct_series_uid=str(source[0].SeriesInstanceUID),
        seg_series_uid=str(seg.SeriesInstanceUID),
        labelmap_seg_series_uid=str(labelmap_seg.SeriesInstanceUID),
        pmap_series_uid=str(pmap.SeriesInstanceUID),
        pdf_series_uid=str(pdf.SeriesInstanceUID),
        segment_labels=tuple(str(s.SegmentLabel) for s in seg.SegmentSequence),
        series_descriptions={
            str(d.SeriesInstanceUID): str(d.SeriesDescription) for d in [source[0], *outputs, labelmap_seg]
        },
    )
    logger.info("OHIF test study: %d CT slices, %s", len(source), ", ".join(d.Modality for d in outputs))
    return [*source, *outputs, labelmap_seg], study


def to_part10(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory (for Orthanc's ``POST /instances``)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
