"""The results folder: where a job's files live, what they are called, and how they become a zip.

The one contract between whoever writes a results folder (the worker and ``neuroradix analyze``,
through :class:`~neuroradix.pipeline.sinks.FolderSink`) and whoever reads it back (the API's
results zip, :mod:`neuroradix.api.results`)::

    <var_dir>/uploads/<id>.zip                       an uploaded study waiting for its job
    <var_dir>/results/job-<id>/                      one job's results folder
        results.json                                 the study's results document
        <analyzer>/labels.nii.gz                     each analyzer's label map (NIfTI)
        <analyzer>/NN-<modality>.dcm                 its DICOM objects, where no PACS keeps them

A results zip has the same names as a results folder.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pydicom

RESULTS_JSON = "results.json"
"""The results document's name in a results folder or zip."""
LABELS_NIFTI = "labels.nii.gz"
"""An analyzer's label map's name inside its sub-folder."""


def job_results_dir(var_dir: Path, job_id: int) -> Path:
    """The folder where the worker keeps what job ``job_id`` produced (read by the results zip)."""
    return Path(var_dir) / "results" / f"job-{job_id}"


def uploads_dir(var_dir: Path) -> Path:
    """The folder where uploaded studies wait for their job."""
    return Path(var_dir) / "uploads"


def object_name(analyzer: str, index: int, modality: str) -> str:
    """The name of an analyzer's ``index``-th (from 0) DICOM object: ``<analyzer>/NN-<modality>.dcm``."""
    return f"{analyzer}/{index + 1:02d}-{modality.lower()}.dcm"


def labels_name(analyzer: str) -> str:
    """The name of an analyzer's label map: ``<analyzer>/labels.nii.gz``."""
    return f"{analyzer}/{LABELS_NIFTI}"


@dataclass(frozen=True)
class ArchiveGroup:
    """One analyzer's part of a results folder or zip."""

    analyzer: str
    datasets: Sequence[pydicom.Dataset]
    labels_nifti: Optional[bytes] = None


def archive_entries(groups: Sequence[ArchiveGroup], document: dict) -> Iterable[tuple[str, bytes]]:
    """``(name, bytes)`` of every file of a results folder or zip.

    Parameters
    ----------
    groups:
        Per analyzer, its objects and label map.
    document:
        The results document (``results.json``).

    Yields
    ------
    tuple of (str, bytes)
        Per analyzer its objects (:func:`object_name`) and label map (:func:`labels_name`), then
        ``results.json``.
    """
    for group in groups:
        for i, ds in enumerate(group.datasets):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            yield object_name(group.analyzer, i, str(ds.Modality)), buffer.getvalue()
        if group.labels_nifti is not None:
            yield labels_name(group.analyzer), group.labels_nifti
    yield RESULTS_JSON, json.dumps(document, indent=2).encode()


def zip_bytes(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """The entries as a deflated zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def write_folder(out_dir: Path, entries: Iterable[tuple[str, bytes]]) -> list[Path]:
    """Write the entries under ``out_dir`` (sub-folders made as needed); returns the paths written."""
    written = []
    for name, data in entries:
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def folder_entries(folder: Path) -> Iterable[tuple[str, bytes]]:
    """``(relative name, bytes)`` of every file under ``folder``, sorted by name."""
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield path.relative_to(root).as_posix(), path.read_bytes()


def read_document(folder: Path) -> Optional[dict[str, Any]]:
    """The results document of a results folder; ``None`` when the folder has none (no complete results)."""
    path = Path(folder) / RESULTS_JSON
    if not path.is_file():
        return None
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def read_labels(folder: Path, analyzer: str) -> Optional[bytes]:
    """An analyzer's label map (NIfTI bytes) from a results folder; ``None`` when it wrote none."""
    path = Path(folder) / labels_name(analyzer)
    return path.read_bytes() if path.is_file() else None
