"""``results.json``: the machine-readable summary of what the node stored for a study.

Findings are named by their CT-RATE names and carry the same numbers as the SR (both are made
from the same :class:`~neuroradix.types.StudyResult`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pydicom

from neuroradix.types import StudyResult

SCHEMA_VERSION = "1"


def result_summary(result: StudyResult) -> dict[str, Any]:
    """JSON-able summary of one analyzer's result."""
    counts = np.bincount(
        result.labels.ravel().astype(np.int64), minlength=max([0] + [s.label for s in result.segments]) + 1
    )
    summary: dict[str, Any] = {
        "analyzer": {
            "name": result.analyzer.name,
            "version": result.analyzer.version,
            "title": result.analyzer.title,
            "untrained": result.analyzer.untrained,
        },
        "findings": [
            {
                "name": f.name,
                "probability": round(float(f.probability), 4),
                "threshold": round(float(f.threshold), 4),
                "present": f.present,
                "code": f.code.to_dict() if f.code else None,
            }
            for f in result.findings
        ],
        "measurements": [
            {
                "name": m.name,
                "value": round(float(m.value), 4),
                "unit": m.unit.value,
                "concept": m.concept.to_dict(),
                "site": m.site.to_dict() if m.site else None,
                "segment_label": m.segment_label,
            }
            for m in result.measurements
        ],
        "segments": [
            {
                "label": s.label,
                "name": s.name,
                "type": s.type.to_dict(),
                "voxels": int(counts[s.label]) if s.label < counts.size else 0,
            }
            for s in result.segments
        ],
        "report_text": result.report_text,
        "warnings": list(result.warnings),
    }
    if result.embedding is not None:  # beside the findings: the model's global image embedding, as returned
        summary["embedding"] = [float(v) for v in result.embedding]
    return summary


def results_document(
    source: pydicom.Dataset,
    pipeline_version: str,
    input_series_uid: str,
    summaries: dict[str, dict],
    outputs: Sequence[dict],
    warnings: Optional[Sequence[str]] = None,
    analyzer_status: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """The whole ``results.json`` for a study."""
    return {
        "schema_version": SCHEMA_VERSION,
        "study": {
            "StudyInstanceUID": str(source.get("StudyInstanceUID", "")),
            "PatientID": str(source.get("PatientID", "")),
            "PatientName": str(source.get("PatientName", "")),
            "AccessionNumber": str(source.get("AccessionNumber", "")),
            "StudyDate": str(source.get("StudyDate", "")),
        },
        "input_series_uid": input_series_uid,
        "pipeline_version": pipeline_version,
        "warnings": list(warnings or []),
        "analyzers": dict(analyzer_status or {}),
        "results": summaries,
        "outputs": list(outputs),
    }
