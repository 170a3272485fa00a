"""All DICOM objects of one result, in the order their references need."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from pydicom import Dataset

from neuroradix.types import StudyResult
from neuroradix.uids import short_hash
from neuroradix.writers.common import OutputContext, check_result
from neuroradix.writers.pdf import build_pdf
from neuroradix.writers.pmap import build_pmaps
from neuroradix.writers.seg import build_seg
from neuroradix.writers.sr import build_sr

logger = logging.getLogger(__name__)


def encode_result(result: StudyResult, ctx: OutputContext, triage: Optional[Mapping[str, Any]] = None) -> list[Dataset]:
    """Build SEG (when a segment has voxels), Parametric Maps, SR and PDF.

    The SR references the SEG segments and the Parametric Maps, so they are built
    first; the PDF lists the SR and SEG as its source instances. ``triage`` (a
    ``Decision.to_json()``) adds the study-level triage item to the SR.

    Returns
    -------
    list[pydicom.Dataset]
        ``[SEG?, *PMAPs, SR, PDF]``: the SEG is absent when every segment is empty;
        the SR is absent when the result has neither findings nor measurements.
    """
    check_result(result, ctx)
    seg = build_seg(result, ctx)
    pmaps = build_pmaps(result, ctx)
    sr = build_sr(result, ctx, seg, pmaps, triage=triage) if (result.findings or result.measurements) else None
    pdf = build_pdf(result, ctx, seg=seg, sr=sr)
    objects = [d for d in [seg, *pmaps, sr, pdf] if d is not None]
    logger.info(
        "study %s: %d objects (%s)", short_hash(ctx.study_uid), len(objects), ", ".join(d.Modality for d in objects)
    )
    return objects
