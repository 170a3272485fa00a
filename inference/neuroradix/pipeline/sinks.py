"""Where a study's results go: back into the PACS study (STOW-RS), or into a results folder.

A folder sink writes the layout of :mod:`neuroradix.pipeline.layout` (the worker's job folders,
``neuroradix analyze --out``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from neuroradix.imaging.nifti import volume_to_nifti_bytes
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pipeline.layout import ArchiveGroup, archive_entries, write_folder
from neuroradix.pipeline.outcome import PipelineOutcome


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


def groups_from_outcome(outcome: PipelineOutcome, *, include_dicom: bool = True) -> list[ArchiveGroup]:
    """One :class:`~neuroradix.pipeline.layout.ArchiveGroup` per analyzer: its objects (unless
    ``include_dicom`` is false) and label map."""
    affine = outcome.assembled.volume.affine
    return [
        ArchiveGroup(
            a.name,
            a.datasets if include_dicom else (),
            volume_to_nifti_bytes(a.result.labels, affine) if a.result is not None else None,
        )
        for a in outcome.analyzers
    ]


class FolderSink:
    """A pipeline sink that writes a results folder (:mod:`neuroradix.pipeline.layout`).

    Parameters
    ----------
    folder:
        Output folder; made if missing.
    include_dicom:
        Write the DICOM objects too (False where the PACS holds them: the node's job folders keep
        only ``labels.nii.gz`` and ``results.json``).
    replace:
        Replace the folder's whole content, atomically (a rerun leaves no stale files).
    """

    def __init__(self, folder: Path, *, include_dicom: bool = True, replace: bool = False) -> None:
        self.folder, self.include_dicom, self.replace = Path(folder), include_dicom, replace
        self.written: list[Path] = []

    def store(self, outcome: PipelineOutcome) -> None:
        """Write ``<analyzer>/NN-<modality>.dcm``, ``<analyzer>/labels.nii.gz`` and ``results.json``."""
        entries = archive_entries(groups_from_outcome(outcome, include_dicom=self.include_dicom), outcome.document())
        if not self.replace:
            self.written = write_folder(self.folder, entries)
            return
        partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        names = [p.relative_to(partial) for p in write_folder(partial, entries)]
        shutil.rmtree(self.folder, ignore_errors=True)
        partial.rename(self.folder)
        self.written = [self.folder / n for n in names]
