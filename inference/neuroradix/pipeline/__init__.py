"""One study through the node: where it comes from, the run itself, where its results go.

==============  ==================================================================================
module          offers
==============  ==================================================================================
``sources``     :class:`Source` and the study's :class:`SeriesListing` (with its source
                fingerprint); :class:`PacsSource` (QIDO-RS / WADO-RS), :class:`LocalSource`
                (datasets from :func:`read_folder` or :func:`read_zip`); :func:`inspect_zip`
``run``         :func:`process_study` (select -> fetch -> assemble -> decode -> analyze -> encode ->
                store), its stages, :class:`StageTimer`
``outcome``     :class:`PipelineOutcome`: what one run produced
``sinks``       :class:`Sink`; :class:`PacsSink` (STOW-RS), :class:`FolderSink` (a results folder)
``layout``      the results folder: where a job's files live (:func:`job_results_dir`), their
                names, a results zip (:func:`archive_entries`, :func:`zip_bytes`)
==============  ==================================================================================
"""

from neuroradix.pipeline.layout import (
    ArchiveGroup,
    archive_entries,
    folder_entries,
    job_results_dir,
    read_document,
    read_labels,
    uploads_dir,
    write_folder,
    zip_bytes,
)
from neuroradix.pipeline.outcome import AnalyzerOutcome, PipelineOutcome
from neuroradix.pipeline.run import (
    StageTimer,
    analyze_datasets,
    analyze_volume,
    load_volume,
    process_study,
    size_limits,
)
from neuroradix.pipeline.sinks import FolderSink, PacsSink, Sink, groups_from_outcome
from neuroradix.pipeline.sources import (
    LocalSource,
    PacsSource,
    SeriesListing,
    Source,
    ZipInventory,
    inspect_zip,
    read_folder,
    read_zip,
)

__all__ = [
    "AnalyzerOutcome",
    "ArchiveGroup",
    "FolderSink",
    "LocalSource",
    "PacsSink",
    "PacsSource",
    "PipelineOutcome",
    "SeriesListing",
    "Sink",
    "Source",
    "StageTimer",
    "ZipInventory",
    "analyze_datasets",
    "analyze_volume",
    "archive_entries",
    "folder_entries",
    "groups_from_outcome",
    "inspect_zip",
    "job_results_dir",
    "load_volume",
    "process_study",
    "read_document",
    "read_folder",
    "read_labels",
    "read_zip",
    "size_limits",
    "uploads_dir",
    "write_folder",
    "zip_bytes",
]
