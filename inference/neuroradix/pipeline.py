"""One study through the pipeline: select -> fetch -> assemble -> decode -> analyze -> encode -> store.

The one process-study flow of the node: the worker runs it with a :class:`PacsSource` (QIDO-RS /
WADO-RS) and a :class:`PacsSink` (STOW-RS), ``neuroradix analyze`` and uploaded studies with a
:class:`LocalSource` (datasets read from a folder or zip) and a folder sink
(:class:`neuroradix.offline.FolderSink`). Stages and what they hand on:

==========  ====================================================  =================================
stage       does                                                  gives
==========  ====================================================  =================================
select      series summaries, candidates' instance metadata,      :class:`~neuroradix.pacs.series.Candidate`
            then the pure :func:`~neuroradix.pacs.series.select_series`
            with the size limits (no pixel fetched yet)
fetch       the chosen series' instances                          datasets
assemble    size limits again (headers), sort, geometry          :class:`~neuroradix.imaging.volume.SeriesLayout`
decode      one float32 volume allocated, each slice decoded      :class:`AssembledSeries`
            into it and its pixel data dropped (PACS
            transcoding on :class:`~neuroradix.errors.UndecodablePixelsError`)
analyze     each analyzer (no I/O)                                :class:`~neuroradix.types.StudyResult`
encode      SEG / Parametric Maps / SR / PDF                      datasets
store       each sink                                             --
==========  ====================================================  =================================

The timings of every stage go into the job's record. The analyzers and writers know nothing about
DICOMweb or the ledger.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol, Sequence, Union

import pydicom

from neuroradix import MANUFACTURER, __version__
from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.registry import Unavailable
from neuroradix.config import PipelineSettings
from neuroradix.errors import BadInputError, NotConfiguredError, UndecodablePixelsError
from neuroradix.imaging.volume import AssembledSeries, SizeLimits, decode, plan
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pacs.series import candidate_uids, load_rules, select_series, source_fingerprint
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary
from neuroradix.types import StudyResult
from neuroradix.uids import short_hash
from neuroradix.writers.common import OutputContext
from neuroradix.writers.encode import encode_result
from neuroradix.writers.summary import result_summary, results_document

LOG = logging.getLogger(__name__)


class StageTimer:
    """Collects ``{stage: seconds}``, and the study's source fingerprint once it is known."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.fingerprint: Optional[str] = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block under ``name`` (time adds up when a stage runs twice)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


# --- sources ------------------------------------------------------------------------------------
class Source(Protocol):
    """Where a study comes from."""

    study_uid: str
    can_transcode: bool  # whether :meth:`datasets` can return the pixels in a syntax decodable here
    owns_datasets: bool  # whether :meth:`datasets` returns objects the pipeline may strip of pixel data

    def series(self) -> list[SeriesSummary]:
        """The study's series."""
        ...

    def instances(self, series_uid: str) -> list[InstanceSummary]:
        """A series' instance metadata (no pixels), for selection."""
        ...

    def datasets(self, series_uid: str, *, transcode: bool = False) -> list[pydicom.Dataset]:
        """A series' instances with pixel data."""
        ...


class PacsSource:
    """A study in the PACS: QIDO-RS for series, WADO-RS for metadata and instances."""

    can_transcode = True
    owns_datasets = True  # each fetch is a fresh copy

    def __init__(self, pacs: PacsClient, study_uid: str) -> None:
        self.pacs, self.study_uid = pacs, study_uid

    def series(self) -> list[SeriesSummary]:
        """QIDO-RS series of the study."""
        return self.pacs.search_series(self.study_uid)

    def instances(self, series_uid: str) -> list[InstanceSummary]:
        """WADO-RS metadata of the series."""
        return self.pacs.series_metadata(self.study_uid, series_uid)

    def datasets(self, series_uid: str, *, transcode: bool = False) -> list[pydicom.Dataset]:
        """WADO-RS instances as stored, or transcoded by the PACS."""
        return self.pacs.retrieve_series(self.study_uid, series_uid, transcode=transcode)


class LocalSource:
    """A study given as datasets (read from a folder or zip).

    Parameters
    ----------
    datasets:
        The study's instances.
    release_pixels:
        Let the pipeline drop each slice's pixel data once decoded (the datasets keep their headers),
        so a large series is not held twice; for callers that read the files only for this study.

    Raises
    ------
    BadInputError
        When the datasets are not exactly one study.
    """

    can_transcode = False

    def __init__(self, datasets: Sequence[pydicom.Dataset], *, release_pixels: bool = False) -> None:
        self.owns_datasets = release_pixels
        studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
        if len(studies) != 1 or not next(iter(studies)):
            raise BadInputError(f"the input must hold exactly one study, found {len(studies)}")
        self.study_uid = studies.pop()
        self._by_series: dict[str, list[pydicom.Dataset]] = {}
        for ds in datasets:
            self._by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)

    def series(self) -> list[SeriesSummary]:
        """One summary per series, counted from the files."""
        out = []
        for uid, items in self._by_series.items():
            first = InstanceSummary.from_dataset(items[0])
            out.append(
                SeriesSummary(
                    uid,
                    first.modality,
                    first.series_number,
                    first.series_description,
                    str(items[0].get("Manufacturer", "") or ""),
                    len(items),
                )
            )
        return out

    def instances(self, series_uid: str) -> list[InstanceSummary]:
        """The series' files, summarised."""
        return [InstanceSummary.from_dataset(ds) for ds in self._by_series.get(series_uid, [])]

    def datasets(self, series_uid: str, *, transcode: bool = False) -> list[pydicom.Dataset]:
        """The series' datasets as read (``transcode`` is not possible here)."""
        if transcode:
            raise UndecodablePixelsError("a local study cannot be transcoded; convert it first (e.g. dcmdjpeg)")
        return list(self._by_series.get(series_uid, []))


# --- outcome ------------------------------------------------------------------------------------
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


class Sink(Protocol):
    """Where a study's results go."""

    def store(self, outcome: PipelineOutcome) -> None:
        """Store the outcome's objects (and whatever else the sink keeps)."""
        ...


class PacsSink:
    """STOW-RS the objects into the source study."""

    def __init__(self, pacs: PacsClient) -> None:
        self.pacs = pacs

    def store(self, outcome: PipelineOutcome) -> None:
        """Store every object of the outcome in its study, replacing the node's own earlier copies.

        Output UIDs are derived from the inputs, so a rerun produces the same series UIDs; the PACS
        keeps the first copy of an instance, so those series are deleted first (see
        :meth:`PacsClient.delete_series`).
        """
        ours = {str(ds.SeriesInstanceUID) for ds in outcome.stored}
        present = {s.series_uid for s in self.pacs.search_series(outcome.study_uid)}
        for series_uid in sorted(ours & present):
            self.pacs.delete_series(series_uid)
        self.pacs.store(outcome.stored, outcome.study_uid)


# --- stages -------------------------------------------------------------------------------------
def size_limits(settings: PipelineSettings) -> SizeLimits:
    """The input size limits of ``settings``."""
    return SizeLimits(
        max_instances=settings.max_series_instances,
        max_voxels=settings.max_volume_voxels,
        max_rows_columns=settings.max_image_side,
    )


def load_volume(
    datasets: Sequence[pydicom.Dataset], settings: PipelineSettings, timer: StageTimer, *, release: bool = False
) -> AssembledSeries:
    """The assemble and decode stages: limits and geometry from the headers, then each slice decoded into one volume.

    With ``release`` each slice's pixel data is dropped once decoded (see :func:`~neuroradix.imaging.volume.decode`).

    Raises
    ------
    UndecodablePixelsError
        Naming the transfer syntax that could not be decoded.
    """
    with timer.stage("assemble"):
        layout = plan(datasets, size=size_limits(settings))
    with timer.stage("decode"):
        return decode(layout, release=release)


def analyze_volume(
    assembled: AssembledSeries,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
    settings: PipelineSettings,
    timer: StageTimer,
) -> list[AnalyzerOutcome]:
    """The analyze and encode stages: run each analyzer and encode its result (no I/O).

    Raises
    ------
    NotConfiguredError
        When no analyzer produced any object.
    """
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
                seg_type=settings.seg_type,
                seg_compress=settings.seg_compress,
                pmap_grid=settings.pmap_grid,
                series_number_base=9000 + 100 * index,
                uid_key=settings.uid_key.get_secret_value(),
            )
            datasets = encode_result(result, context)
        outcomes.append(AnalyzerOutcome(name, "stored" if datasets else "no output", result, list(datasets)))
    if not any(o.datasets for o in outcomes):
        reasons = "; ".join(f"{o.name}: {o.status}" for o in outcomes)
        raise NotConfiguredError(f"no analyzer produced output ({reasons})")
    return outcomes


def process_study(
    source: Source,
    sinks: Sequence[Sink],
    settings: PipelineSettings,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
    timer: Optional[StageTimer] = None,
) -> PipelineOutcome:
    """Process one study end to end.

    Parameters
    ----------
    source:
        Where the study comes from (:class:`PacsSource`, :class:`LocalSource`).
    sinks:
        Where the results go, in order (:class:`PacsSink`, :class:`neuroradix.offline.FolderSink`);
        none to keep them in memory only.
    settings:
        Pipeline settings (limits, encoding options, version).
    analyzers:
        Built once by :func:`neuroradix.analyzers.registry.build_analyzers`.
    timer:
        Collects the stage timings; pass one to keep them when the study fails.

    Returns
    -------
    PipelineOutcome

    Raises
    ------
    NeuroRadixError
        Any error of :mod:`neuroradix.errors`; the worker maps each class to the job's fate.
    """
    tag = short_hash(source.study_uid)
    timer = timer if timer is not None else StageTimer()
    rules = load_rules()
    limits = size_limits(settings)
    with timer.stage("select"):
        series = source.series()
        timer.fingerprint = source_fingerprint(series, MANUFACTURER)
        metadata = {uid: source.instances(uid) for uid in candidate_uids(series, rules, MANUFACTURER, limits)}
        chosen = select_series(series, metadata, rules, MANUFACTURER, limits)
        del metadata
    LOG.info("study %s: series of %d slices selected", tag, chosen.n_slices)
    with timer.stage("fetch"):
        datasets = source.datasets(chosen.series_uid)
    try:
        assembled = load_volume(datasets, settings, timer, release=source.owns_datasets)
    except UndecodablePixelsError as exc:
        if not source.can_transcode:
            raise
        LOG.warning("study %s: local decoding failed (%s); asking the PACS to transcode", tag, exc)
        del datasets
        with timer.stage("fetch"):
            datasets = source.datasets(chosen.series_uid, transcode=True)
        assembled = load_volume(datasets, settings, timer, release=source.owns_datasets)
    del datasets  # the assembled series keeps the headers the writers need
    outcomes = analyze_volume(assembled, analyzers, settings, timer)
    outcome = PipelineOutcome(
        source.study_uid,
        chosen.series_uid,
        assembled,
        outcomes,
        timer.seconds,
        list(assembled.warnings),
        settings.pipeline_version,
    )
    with timer.stage("store"):
        for sink in sinks:
            sink.store(outcome)
    LOG.info(
        "study %s: %d object(s) to %d sink(s) in %.1f s",
        tag,
        len(outcome.stored),
        len(sinks),
        sum(timer.seconds.values()),
    )
    return outcome


def analyze_datasets(
    datasets: Sequence[pydicom.Dataset],
    settings: PipelineSettings,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
    sinks: Sequence[Sink] = (),
) -> PipelineOutcome:
    """:func:`process_study` on a study given as datasets (a :class:`LocalSource`)."""
    return process_study(LocalSource(datasets), sinks, settings, analyzers)
