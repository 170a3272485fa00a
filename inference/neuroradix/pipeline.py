"""One study through the pipeline: select -> fetch -> decode -> assemble -> analyze -> encode -> store.

Each stage is a plain step with its inputs and outputs named here; the timings of every stage go
into the job's record. Only :mod:`neuroradix.jobs.worker` calls :func:`process_study`; the analyzers
and writers it calls know nothing about DICOMweb or the ledger.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import pydicom

from neuroradix import MANUFACTURER, __version__
from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.registry import Unavailable
from neuroradix.config import PipelineSettings, Settings
from neuroradix.errors import BadInputError, NotConfiguredError
from neuroradix.imaging.volume import AssembledSeries, GeometryLimits, assemble
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pacs.series import load_rules, select_series, source_fingerprint
from neuroradix.types import StudyResult
from neuroradix.uids import short_hash
from neuroradix.writers.common import OutputContext
from neuroradix.writers.encode import encode_result
from neuroradix.writers.summary import result_summary

LOG = logging.getLogger(__name__)


class StageTimer:
    """Collects ``{stage: seconds}``, and the study's source fingerprint once it is known."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.fingerprint: Optional[str] = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


@dataclass
class AnalyzerOutcome:
    name: str
    status: str  # "stored", "not configured: ...", "no output: ..."
    result: Optional[StudyResult] = None
    datasets: list = field(default_factory=list)


@dataclass
class PipelineOutcome:
    study_uid: str
    input_series_uid: str
    assembled: AssembledSeries
    analyzers: list[AnalyzerOutcome]
    timings: dict
    warnings: list[str]

    @property
    def stored(self) -> list[pydicom.Dataset]:
        return [ds for a in self.analyzers for ds in a.datasets]

    def output_records(self) -> list[dict]:
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

    def details(self) -> dict:
        return {
            "warnings": self.warnings,
            "analyzers": {a.name: a.status for a in self.analyzers},
            "results": {a.name: result_summary(a.result) for a in self.analyzers if a.result is not None},
            "report_attention": {
                a.name: {
                    "tokens": a.result.extra["report_tokens"],
                    "patch_grid": a.result.extra["patch_grid"],
                    "attention_grid": a.result.extra["attention_grid"],
                }
                for a in self.analyzers
                if a.result is not None and "report_tokens" in a.result.extra
            },
        }


def decode_pixels(datasets: Sequence[pydicom.Dataset]) -> None:
    """Decode every slice once (pydicom caches the array); raises BadInputError naming the syntax."""
    for ds in datasets:
        try:
            ds.pixel_array  # noqa: B018 - decoding is the point
        except Exception as exc:  # noqa: BLE001
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", str(syntax))
            raise BadInputError(f"cannot decode pixel data (transfer syntax {name}): {exc}") from exc


def analyze_volume(
    assembled: AssembledSeries,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
    settings: PipelineSettings,
    timer: StageTimer,
) -> list[AnalyzerOutcome]:
    """Run each analyzer and encode its result (no I/O); shared by the worker and ``neuroradix analyze``."""
    outcomes = []
    for index, analyzer in enumerate(analyzers):
        if isinstance(analyzer, Unavailable):
            outcomes.append(AnalyzerOutcome(analyzer.name, analyzer.reason))
            continue
        name = analyzer.info.name
        try:
            with timer.stage(f"analyze:{name}"):
                result = analyzer.analyze(assembled.volume)
        except NotConfiguredError as exc:
            outcomes.append(AnalyzerOutcome(name, f"not configured: {exc}"))
            continue
        with timer.stage(f"encode:{name}"):
            context = OutputContext(
                source=assembled.datasets,
                volume=assembled.volume,
                pipeline_version=settings.pipeline_version,
                software_version=__version__,
                seg_type=settings.seg_type.value,
                seg_compress=settings.seg_compress,
                pmap_grid=settings.pmap_grid.value,
                series_number_base=9000 + 100 * index,
            )
            datasets = encode_result(result, context)
        outcomes.append(AnalyzerOutcome(name, "stored" if datasets else "no output", result, list(datasets)))
    if not any(o.datasets for o in outcomes):
        reasons = "; ".join(f"{o.name}: {o.status}" for o in outcomes)
        raise NotConfiguredError(f"no analyzer produced output ({reasons})")
    return outcomes


def load_volume(datasets: Sequence[pydicom.Dataset], settings: PipelineSettings, timer: StageTimer) -> AssembledSeries:
    with timer.stage("decode"):
        decode_pixels(datasets)
    with timer.stage("assemble"):
        return assemble(datasets, GeometryLimits(max_voxels=settings.max_volume_voxels))


def process_study(
    study_uid: str,
    settings: Settings,
    pacs: PacsClient,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
    timer: Optional[StageTimer] = None,
) -> PipelineOutcome:
    """Process one study end to end; raises errors of :mod:`neuroradix.errors`.

    ``timer`` collects the stage timings; pass one to keep them when the study fails.
    """
    tag = short_hash(study_uid)
    timer = timer if timer is not None else StageTimer()
    rules = load_rules()
    fetched: dict[str, list] = {}

    def fetch(series_uid: str) -> list:
        with timer.stage("fetch"):
            fetched[series_uid] = pacs.retrieve_series(study_uid, series_uid)
        if len(fetched[series_uid]) > settings.max_series_instances:
            raise BadInputError(
                f"series has {len(fetched[series_uid])} instances, above the limit {settings.max_series_instances}"
            )
        return fetched[series_uid]

    with timer.stage("select"):
        series = pacs.search_series(study_uid)
        timer.fingerprint = source_fingerprint(series, MANUFACTURER)
    chosen = select_series(series, fetch, rules, MANUFACTURER)  # fetches the candidates it checks
    datasets = fetched[chosen.series_uid]
    LOG.info("study %s: series of %d slices selected", tag, chosen.n_slices)
    try:
        assembled = load_volume(datasets, settings, timer)
    except BadInputError as exc:
        if "cannot decode" not in str(exc):
            raise
        LOG.warning("study %s: local decoding failed (%s); asking the PACS to transcode", tag, exc)
        with timer.stage("fetch"):
            datasets = pacs.retrieve_series(study_uid, chosen.series_uid, transcode=True)
        assembled = load_volume(datasets, settings, timer)
    outcomes = analyze_volume(assembled, analyzers, settings, timer)
    outcome = PipelineOutcome(study_uid, chosen.series_uid, assembled, outcomes, timer.seconds, list(assembled.warnings))
    with timer.stage("store"):
        pacs.store(outcome.stored, study_uid)
    LOG.info("study %s: stored %d object(s) in %.1f s", tag, len(outcome.stored), sum(timer.seconds.values()))
    return outcome
