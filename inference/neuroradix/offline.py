"""DICOM files in and archives out, without a PACS: the transport of ``neuroradix analyze`` and uploads.

Reading: a folder or a zip of one study becomes datasets (:func:`read_folder`, :func:`read_zip`);
:func:`inspect_zip` checks an uploaded zip (safety, DICOM headers, one study) without decoding pixels.

Every way a zip can be unusable ends in :class:`BadInputError` naming the reason, never another
exception: not a zip, truncated (no central directory), empty, an encrypted member, a compression
method this Python cannot read, a corrupt member (bad CRC-32, damaged data), unsafe paths, too many
members. Zip bombs are refused from the central directory, before anything is expanded: the total
uncompressed size (``max_bytes``) and each member's compression ratio (``max_ratio``, for members of
:data:`RATIO_MIN_BYTES` or more) raise :class:`InputTooLargeError`. The sizes a member declares are
the most that reading it can give (``zipfile`` stops there and then checks the CRC).
Writing: a results archive (DICOM objects, ``labels.nii.gz`` per analyzer, ``results.json``) as
``(name, bytes)`` entries written to a folder or a zip. The processing itself is
:func:`neuroradix.pipeline.process_study`.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import shutil
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Iterable, Iterator, Optional, Sequence, Union

import pydicom
from pydicom.errors import InvalidDicomError

from neuroradix.errors import BadInputError, InputTooLargeError
from neuroradix.imaging.nifti import volume_to_nifti_bytes
from neuroradix.pipeline import PipelineOutcome

LOG = logging.getLogger(__name__)

MAX_MEMBERS = 5000
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
DEFAULT_MAX_RATIO = 200.0
"""A member's largest uncompressed/compressed size ratio (the setting ``max_zip_member_ratio``)."""
RATIO_MIN_BYTES = 1024**2
"""Members smaller than this are not held to the ratio (a blank slice compresses ~1000x, harmlessly)."""
METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
"""The compression methods read here (method number -> name)."""
_CORRUPT = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError)


def _read(data: bytes, name: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise BadInputError(f"{name}: not a DICOM file ({exc.__class__.__name__})") from exc


def _head(data: Union[bytes, Path, BinaryIO]) -> bytes:
    """The first 4 bytes of the archive (to tell a truncated zip from something else)."""
    if isinstance(data, bytes):
        return data[:4]
    if isinstance(data, Path):
        with data.open("rb") as handle:
            return handle.read(4)
    position = data.tell()
    head = data.read(4)
    data.seek(position)
    return head


def _open_zip(data: Union[bytes, Path, BinaryIO]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        head = _head(data)
        if not head:
            raise BadInputError("not a zip archive: the file is empty") from exc
        if head in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
            raise BadInputError(
                f"the zip archive is truncated or damaged: its central directory is missing or unreadable ({exc})"
            ) from exc
        raise BadInputError(f"not a zip archive (it starts with the bytes {head!r}): {exc}") from exc


def _safe_members(
    archive: zipfile.ZipFile, max_bytes: int, max_ratio: float = DEFAULT_MAX_RATIO
) -> list[zipfile.ZipInfo]:
    """The archive's files, after refusing traversal, links, bombs, unreadable members and too many members."""
    members = [m for m in archive.infolist() if not m.is_dir()]
    if not members:
        raise BadInputError("the zip archive is empty: it holds no files")
    if len(members) > MAX_MEMBERS:
        raise BadInputError(f"zip has {len(members)} files, more than {MAX_MEMBERS}")
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise InputTooLargeError(
            f"zip expands to {total:,} bytes, more than the limit of {max_bytes:,} "
            "(setting NEURORADIX_MAX_UPLOAD_EXPANDED_BYTES)"
        )
    for m in members:
        path = PurePosixPath(m.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise BadInputError(f"zip member {m.filename!r} has an unsafe path (absolute, '..' or a link)")
        if m.flag_bits & 0x1:
            raise BadInputError(f"zip member {m.filename!r} is encrypted: send the study in a zip without a password")
        if m.compress_type not in METHODS:
            raise BadInputError(
                f"zip member {m.filename!r} uses compression method {m.compress_type}, which cannot be read here: "
                f"use one of {', '.join(METHODS.values())}"
            )
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size >= RATIO_MIN_BYTES and ratio > max_ratio:
            raise InputTooLargeError(
                f"zip member {m.filename!r} expands {ratio:.0f}x ({m.compress_size:,} to {m.file_size:,} bytes), "
                f"more than the limit of {max_ratio:g}x (setting NEURORADIX_MAX_ZIP_MEMBER_RATIO): a zip bomb?"
            )
    return members


@contextmanager
def _member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> Iterator[IO[bytes]]:
    """Open a member; damage found while reading it becomes :class:`BadInputError` naming it."""
    try:
        with archive.open(member) as stream:
            yield stream
    except _CORRUPT as exc:
        raise BadInputError(f"zip member {member.filename!r} is corrupt or truncated: {exc}") from exc


def _drain(stream: IO[bytes]) -> None:
    """Read a member to its end, so that ``zipfile`` checks its CRC-32."""
    while stream.read(1024**2):
        pass


def _not_dicom(bad: Sequence[str]) -> BadInputError:
    shown = ", ".join(repr(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
    return BadInputError(f"{len(bad)} zip member(s) are not DICOM files: {shown}")


def read_zip(
    data: Union[bytes, Path], max_bytes: int, *, max_ratio: float = DEFAULT_MAX_RATIO
) -> list[pydicom.Dataset]:
    """Read every member of a zip as DICOM, refusing traversal, bombs, unreadable and non-DICOM members.

    Parameters
    ----------
    data:
        The archive's bytes, or the path of a zip file.
    max_bytes:
        Limit on the members' total uncompressed size (``max_upload_expanded_bytes``).
    max_ratio:
        Limit on a member's compression ratio (``max_zip_member_ratio``).

    Raises
    ------
    InputTooLargeError
        The archive expands beyond ``max_bytes``, or a member beyond ``max_ratio``.
    BadInputError
        Naming what is wrong (not a zip, truncated, empty, encrypted, unknown method, corrupt
        member, unsafe path, members that are not DICOM).
    """
    with _open_zip(data) as archive:
        members = _safe_members(archive, max_bytes, max_ratio)
        datasets, bad = [], []
        for m in members:
            with _member(archive, m) as stream:
                raw = stream.read()
            try:
                datasets.append(_read(raw, m.filename))
            except BadInputError:
                bad.append(m.filename)
            del raw
        if bad:
            raise _not_dicom(bad)
    return [ds for ds in datasets if str(ds.get("SOPClassUID", "")) != DICOMDIR_CLASS]


@dataclass(frozen=True)
class ZipInventory:
    """What :func:`inspect_zip` found in an uploaded archive."""

    n_files: int
    study_uid: str


def inspect_zip(path: Union[Path, BinaryIO], max_bytes: int, *, max_ratio: float = DEFAULT_MAX_RATIO) -> ZipInventory:
    """Check an uploaded zip of one study: safe and readable members, DICOM headers, exactly one study.

    Parses each member's header only (pixel data is neither kept nor decoded) but reads every member
    to its end in 1 MiB pieces, so that a bad CRC-32 or damaged data is found here, with its reason,
    and not later in a worker. Memory stays small: cheap enough for the API process.

    Raises
    ------
    InputTooLargeError
        The archive expands beyond ``max_bytes``, or a member beyond ``max_ratio``.
    BadInputError
        With the reason the archive cannot be analyzed (see :func:`read_zip`).
    """
    with _open_zip(path) as archive:
        members = _safe_members(archive, max_bytes, max_ratio)
        studies: set[str] = set()
        bad, n_files = [], 0
        for m in members:
            with _member(archive, m) as stream:
                try:
                    ds = pydicom.dcmread(stream, stop_before_pixels=True)
                except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError):
                    ds = None
                except _CORRUPT as exc:
                    if isinstance(exc, (zipfile.BadZipFile, zlib.error, lzma.LZMAError)):
                        raise
                    ds = None  # EOFError/OSError: a short or odd file, not DICOM (the CRC is checked below)
                _drain(stream)
            if ds is None:
                bad.append(m.filename)
                continue
            if str(ds.get("SOPClassUID", "")) == DICOMDIR_CLASS:
                continue
            n_files += 1
            studies.add(str(ds.get("StudyInstanceUID", "")))
        if bad:
            raise _not_dicom(bad)
    if len(studies) != 1 or not next(iter(studies)):
        raise BadInputError(f"the input must hold exactly one study, found {len(studies)}")
    return ZipInventory(n_files, studies.pop())


def read_folder(folder: Path) -> list[pydicom.Dataset]:
    """Read every file under ``folder`` (recursively).

    Raises
    ------
    BadInputError
        When there are no files, or naming the files that are not DICOM.
    """
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


@dataclass(frozen=True)
class ArchiveGroup:
    """One analyzer's part of a results archive."""

    analyzer: str
    datasets: Sequence[pydicom.Dataset]
    labels_nifti: Optional[bytes] = None


def groups_from_outcome(outcome: PipelineOutcome, *, include_dicom: bool = True) -> list[ArchiveGroup]:
    """One :class:`ArchiveGroup` per analyzer: its objects (unless ``include_dicom`` is false) and label map."""
    affine = outcome.assembled.volume.affine
    return [
        ArchiveGroup(
            a.name,
            a.datasets if include_dicom else (),
            volume_to_nifti_bytes(a.result.labels, affine) if a.result is not None else None,
        )
        for a in outcome.analyzers
    ]


def archive_entries(groups: Sequence[ArchiveGroup], document: dict) -> Iterable[tuple[str, bytes]]:
    """``(name, bytes)`` of every file of a results archive or folder.

    Per analyzer ``<analyzer>/NN-<modality>.dcm`` and ``<analyzer>/labels.nii.gz``, then ``results.json``.
    """
    for group in groups:
        for i, ds in enumerate(group.datasets):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            yield f"{group.analyzer}/{i + 1:02d}-{str(ds.Modality).lower()}.dcm", buffer.getvalue()
        if group.labels_nifti is not None:
            yield f"{group.analyzer}/labels.nii.gz", group.labels_nifti
    yield "results.json", json.dumps(document, indent=2).encode()


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


class FolderSink:
    """A pipeline sink that writes the results archive into a folder.

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
