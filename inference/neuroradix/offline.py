"""Analysis without a PACS: a folder or zip of DICOM files in, the node's objects + results.json out.

Shared by ``neuroradix analyze DIR_OR_ZIP --out DIR`` and ``POST /v1/analyze``. The same series
rules, volume assembly, analyzers and writers as the node run here; only the transport differs.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from neuroradix import MANUFACTURER
from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.registry import Unavailable
from neuroradix.config import PipelineSettings
from neuroradix.errors import BadInputError
from neuroradix.pacs.series import load_rules, select_series
from neuroradix.pipeline import AnalyzerOutcome, PipelineOutcome, StageTimer, analyze_volume, load_volume
from neuroradix.types import Volume
from neuroradix.writers.summary import results_document

LOG = logging.getLogger(__name__)

MAX_MEMBERS = 5000
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class StandaloneOutcome:
    document: dict
    analyzers: list[AnalyzerOutcome]
    volume: Volume
    timings: dict

    @property
    def datasets(self) -> list[pydicom.Dataset]:
        return [ds for a in self.analyzers for ds in a.datasets]


def _read(data: bytes, name: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise BadInputError(f"{name}: not a DICOM file ({exc.__class__.__name__})") from exc


def read_zip(data: Union[bytes, Path], max_bytes: int) -> list[pydicom.Dataset]:
    """Read every member of a zip as DICOM, refusing traversal, bombs and non-DICOM members."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except zipfile.BadZipFile as exc:
        raise BadInputError(f"not a zip archive: {exc}") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_MEMBERS:
            raise BadInputError(f"zip has {len(members)} files, more than {MAX_MEMBERS}")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise BadInputError(f"zip expands to {total} bytes, more than the limit of {max_bytes}")
        for m in members:
            path = PurePosixPath(m.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise BadInputError(f"zip member {m.filename!r} has an unsafe path (absolute, '..' or a link)")
        datasets, bad = [], []
        for m in members:
            try:
                datasets.append(_read(archive.read(m), m.filename))
            except BadInputError:
                bad.append(m.filename)
        if bad:
            shown = ", ".join(repr(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise BadInputError(f"{len(bad)} zip member(s) are not DICOM files: {shown}")
    return [ds for ds in datasets if str(ds.get("SOPClassUID", "")) != DICOMDIR_CLASS]


def read_folder(folder: Path) -> list[pydicom.Dataset]:
    """Read every file under ``folder`` (recursively); non-DICOM files are an error naming them."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    if not files:
        raise BadInputError(f"{folder}: no files")
    datasets, bad = [], []
    for path in files:
        try:
            datasets.append(_read(path.read_bytes(), str(path)))
        except BadInputError:
            bad.append(path.name)
    if bad:
        raise BadInputError(f"{len(bad)} file(s) are not DICOM: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return [ds for ds in datasets if str(ds.get("SOPClassUID", "")) != DICOMDIR_CLASS]


def _series_summaries(datasets: Iterable[pydicom.Dataset]) -> tuple[list[pydicom.Dataset], dict[str, list]]:
    groups: dict[str, list] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    summaries = []
    for uid, items in groups.items():
        s = pydicom.Dataset()
        s.SeriesInstanceUID = uid
        s.Modality = items[0].get("Modality", "")
        s.SeriesNumber = items[0].get("SeriesNumber", 0)
        s.Manufacturer = items[0].get("Manufacturer", "")
        summaries.append(s)
    return summaries, groups


def analyze_datasets(
    datasets: Sequence[pydicom.Dataset],
    settings: PipelineSettings,
    analyzers: Sequence[Union[Analyzer, Unavailable]],
) -> StandaloneOutcome:
    """Select, assemble, analyze and encode one study given as datasets."""
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if len(studies) != 1:
        raise BadInputError(f"the input must hold exactly one study, found {len(studies)}")
    timer = StageTimer()
    with timer.stage("select"):
        summaries, groups = _series_summaries(datasets)
        chosen = select_series(summaries, lambda uid: groups[uid], load_rules(), MANUFACTURER)
    series = groups[chosen.series_uid]
    if len(series) > settings.max_series_instances:
        raise BadInputError(f"series has {len(series)} instances, above the limit {settings.max_series_instances}")
    assembled = load_volume(series, settings, timer)
    outcomes = analyze_volume(assembled, analyzers, settings, timer)
    pipeline = PipelineOutcome(studies.pop(), chosen.series_uid, assembled, outcomes, timer.seconds, list(assembled.warnings))
    document = results_document(
        assembled.datasets[0],
        settings.pipeline_version,
        chosen.series_uid,
        pipeline.details()["results"],
        pipeline.output_records(),
        warnings=assembled.warnings,
        analyzer_status={a.name: a.status for a in outcomes},
    )
    return StandaloneOutcome(document, outcomes, assembled.volume, timer.seconds)


def volume_nifti(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A ``[slice, row, column]`` array with an index-to-LPS affine as gzipped NIfTI (RAS).

    Integer arrays (label maps) are stored as uint8/uint16, float arrays as float32.
    """


    # NIfTI voxel axes (i, j, k) = (column, row, slice); LPS -> RAS flips x and y.
    data = np.transpose(array, (2, 1, 0))
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float) @ swap
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    else:
        data = data.astype(np.uint8 if int(data.max(initial=0)) < 256 else np.uint16)
    image = nib.Nifti1Image(data, ras)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6)


@dataclass(frozen=True)
class ArchiveGroup:
    """One analyzer's part of a results archive."""

    analyzer: str
    datasets: Sequence[pydicom.Dataset]
    labels_nifti: Optional[bytes] = None


def groups_from_outcome(outcome: StandaloneOutcome) -> list[ArchiveGroup]:
    return [
        ArchiveGroup(
            a.name,
            a.datasets,
            volume_nifti(a.result.labels, outcome.volume.affine) if a.result is not None else None,
        )
        for a in outcome.analyzers
    ]


def archive_entries(groups: Sequence[ArchiveGroup], document: dict) -> Iterable[tuple[str, bytes]]:
    """``(name, bytes)`` of every file of a results archive or folder."""
    for group in groups:
        for i, ds in enumerate(group.datasets):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            yield f"{group.analyzer}/{i + 1:02d}-{str(ds.Modality).lower()}.dcm", buffer.getvalue()
        if group.labels_nifti is not None:
            yield f"{group.analyzer}/labels.nii.gz", group.labels_nifti
    yield "results.json", json.dumps(document, indent=2).encode()


def zip_bytes(entries: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def write_folder(out_dir: Path, entries: Iterable[tuple[str, bytes]]) -> list[Path]:
    written = []
    for name, data in entries:
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
