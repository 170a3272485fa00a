"""One study through the pipeline: select -> fetch -> assemble -> decode -> analyze -> encode -> store.

The one process-study flow of the node: the worker runs it with a
:class:`~neuroradix.pipeline.sources.PacsSource` (QIDO-RS / WADO-RS) and a
:class:`~neuroradix.pipeline.sinks.PacsSink` (STOW-RS), ``neuroradix analyze`` and uploaded studies
with a :class:`~neuroradix.pipeline.sources.LocalSource` (datasets read from a folder or zip) and a
:class:`~neuroradix.pipeline.sinks.FolderSink`. Stages and what they hand on:

==========  ====================================================  =================================
stage       does                                                  gives
==========  ====================================================  =================================
select      the source's listing (series, source fingerprint),    :class:`~neuroradix.pacs.series.Candidate`
            candidates' instance metadata,
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
from typing import Callable, Iterator, Optional, Sequence, Union

import pydicom

from neuroradix import MANUFACTURER, __version__
from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.registry import Unavailable
from neuroradix.config import PipelineSettings
from neuroradix.errors import NotConfiguredError, UndecodablePixelsError
from neuroradix.imaging.volume import AssembledSeries, SizeLimits, decode, plan
from neuroradix.pacs.series import candidate_uids, load_rules, select_series
from neuroradix.pipeline.outcome import AnalyzerOutcome, PipelineOutcome
from neuroradix.pipeline.sinks import Sink
from neuroradix.pipeline.sources import LocalSource, Source
from neuroradix.types import StudyResult
from neuroradix.uids import short_hash
from neuroradix.writers.common import OutputContext
from neuroradix.writers.encode import encode_result
from neuroradix.writers.summary import result_summary

logger = logging.getLogger(__name__)


class StageTimer:
    """Collects ``{stage: seconds}``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block under ``name`` (time adds up when a stage runs twice)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


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


TriageHook = Callable[[dict[str, dict]], Optional[dict]]
"""``f(summaries by analyzer) -> Decision.to_json()`` or None: the study-level triage item of the SR."""


def analyze_volume(
    assembled: AssembledSeries,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
    settings: PipelineSettings,
    timer: StageTimer,
    triage: Optional[TriageHook] = None,
) -> list[AnalyzerOutcome]:
    """The analyze and encode stages: run every analyzer, then encode each result (no I/O).

    Every analyzer runs before any result is encoded, so that ``triage`` (given by the worker)
    sees all of the study's results and its decision goes into each SR.

    Raises
    ------
    NotConfiguredError
        When no analyzer produced any object.
    """
    analyzed: list[tuple[int, str, Optional[StudyResult], str]] = []
    for index, analyzer in enumerate(analyzers):
        if isinstance(analyzer, Unavailable):
            analyzed.append((index, analyzer.name, None, analyzer.reason))
            continue
        name = analyzer.info.name
        try:
            with timer.stage(f"analyze:{name}"):
                analyzed.append((index, name, analyzer.analyze(assembled.volume), ""))
        except NotConfiguredError as exc:
            analyzed.append((index, name, None, f"not configured: {exc}"))
    summaries = {name: result_summary(result) for _, name, result, _ in analyzed if result is not None}
    decision = triage(summaries) if triage is not None and summaries else None
    outcomes = []
    for index, name, result, status in analyzed:
        if result is None:
            outcomes.append(AnalyzerOutcome(name, status))
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
            datasets = encode_result(result, context, triage=decision)
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
    triage: Optional[TriageHook] = None,
) -> PipelineOutcome:
    """Process one study end to end.

    Parameters
    ----------
    source:
        Where the study comes from (:class:`~neuroradix.pipeline.sources.PacsSource`,
        :class:`~neuroradix.pipeline.sources.LocalSource`).
    sinks:
        Where the results go, in order (:class:`~neuroradix.pipeline.sinks.PacsSink`,
        :class:`~neuroradix.pipeline.sinks.FolderSink`); none to keep them in memory only.
    settings:
        Pipeline settings (limits, encoding options, version).
    analyzers:
        Built once by :func:`neuroradix.analyzers.registry.build_analyzers`.
    timer:
        Collects the stage timings; pass one to keep them when the study fails.
    triage:
        The worker's triage decision for the SR's study-level triage item (see
        :func:`analyze_volume`); None leaves the item out.

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
        series = source.listing().series
        metadata = {uid: source.instances(uid) for uid in candidate_uids(series, rules, MANUFACTURER, limits)}
        chosen = select_series(series, metadata, rules, MANUFACTURER, limits)
        del metadata
    logger.info("study %s: series of %d slices selected", tag, chosen.n_slices)
    with timer.stage("fetch"):
        datasets = source.datasets(chosen.series_uid)
    try:
        assembled = load_volume(datasets, settings, timer, release=source.owns_datasets)
    except UndecodablePixelsError as exc:
        if not source.can_transcode:
            raise
        logger.warning("study %s: local decoding failed (%s); asking the PACS to transcode", tag, exc)
        del datasets
        with timer.stage("fetch"):
            datasets = source.datasets(chosen.series_uid, transcode=True)
        assembled = load_volume(datasets, settings, timer, release=source.owns_datasets)
    del datasets  # the assembled series keeps the headers the writers need
    outcomes = analyze_volume(assembled, analyzers, settings, timer, triage)
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
    logger.info(
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
    """:func:`process_study` on a study given as datasets (a :class:`~neuroradix.pipeline.sources.LocalSource`)."""
    return process_study(LocalSource(datasets), sinks, settings, analyzers)
