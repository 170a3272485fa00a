"""What one run of the pipeline produced: the input, each analyzer's result and objects, timings, warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pydicom

from neuroradix.imaging.volume import AssembledSeries
from neuroradix.types import StudyResult
from neuroradix.writers.summary import result_summary, results_document


@dataclass
class AnalyzerOutcome:
    """One analyzer's part of a study's outcome."""

    name: str
    status: str  # "stored", "not configured: ...", "no output"
    result: Optional[StudyResult] = None
    datasets: list = field(default_factory=list)


@dataclass
class PipelineOutcome:
    """Everything one run produced: the input, each analyzer's result and objects, timings, warnings."""

    study_uid: str
    input_series_uid: str
    assembled: AssembledSeries
    analyzers: list[AnalyzerOutcome]
    timings: dict
    warnings: list[str]
    pipeline_version: str = ""

    @property
    def stored(self) -> list[pydicom.Dataset]:
        """Every encoded object, in analyzer order."""
        return [ds for a in self.analyzers for ds in a.datasets]

    def output_records(self) -> list[dict]:
        """One record per object (what a job lists as ``output_uids``)."""
        return [
            {
                "analyzer": a.name,
                "modality": str(ds.Modality),
                "sop_class_uid": str(ds.SOPClassUID),
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "series_description": str(ds.get("SeriesDescription", "")),
            }
            for a in self.analyzers
            for ds in a.datasets
        ]

    def details(self) -> dict[str, Any]:
        """JSON-able details a job records: warnings, analyzer states, summaries, report attention."""
        return {
            "warnings": self.warnings,
            "analyzers": {a.name: a.status for a in self.analyzers},
            "results": {a.name: result_summary(a.result) for a in self.analyzers if a.result is not None},
            "report_attention": {
                a.name: a.result.report_attention.to_dict()
                for a in self.analyzers
                if a.result is not None and a.result.report_attention is not None
            },
        }

    def document(self) -> dict[str, Any]:
        """The study's ``results.json``."""
        return results_document(
            self.assembled.datasets[0],
            self.pipeline_version,
            self.input_series_uid,
            self.details()["results"],
            self.output_records(),
            warnings=self.warnings,
            analyzer_status={a.name: a.status for a in self.analyzers},
        )
