"""Where a study comes from: the PACS (QIDO-RS / WADO-RS), or DICOM files in a folder or a zip.

A source lists the study's series and returns, with them, the study's *source fingerprint*
(:class:`SeriesListing`): what the job records as processed, compared with the plugin's
hand-offs to rerun a study that changed. The source keeps the listing it returned
(``listed``), so a caller that records the fingerprint whatever the outcome (the worker, when a
study is skipped) has it without listing the study again. It then gives a chosen series' instance metadata and
datasets (:class:`Source`). :class:`PacsSource` is the worker's; :class:`LocalSource` holds
datasets read from a folder (:func:`read_folder`) or a zip (:func:`read_zip`), for
``neuroradix analyze`` and uploaded studies. :func:`inspect_zip` checks an uploaded zip (safety,
DICOM headers, one study) without decoding pixels, in the API process.

Every way a zip can be unusable ends in :class:`BadInputError` naming the reason, never another
exception: not a zip, truncated (no central directory), empty, an encrypted member, a compression
method this Python cannot read, a corrupt member (bad CRC-32, damaged data), unsafe paths, too many
members. Zip bombs are refused from the central directory, before anything is expanded: the total
uncompressed size (``max_bytes``) and each member's compression ratio (``max_ratio``, for members of
:data:`RATIO_MIN_BYTES` or more) raise :class:`InputTooLargeError`. The sizes a member declares are
the most that reading it can give (``zipfile`` stops there and then checks the CRC).
"""

from __future__ import annotations

import io
import logging
import lzma
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Iterator, Optional, Protocol, Sequence, Union

import pydicom
from pydicom.errors import InvalidDicomError

from neuroradix import MANUFACTURER
from neuroradix.errors import BadInputError, InputTooLargeError, UndecodablePixelsError
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pacs.series import source_fingerprint
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary

logger = logging.getLogger(__name__)

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


# --- sources ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesListing:
    """A study's series as its source lists them, and the study's source fingerprint.

    Attributes
    ----------
    series:
        One summary per series (the node's own output series included).
    fingerprint:
        :func:`~neuroradix.pacs.series.source_fingerprint` of those series (the node's own left out).
    """

    series: list[SeriesSummary]
    fingerprint: str

    @classmethod
    def of(cls, series: Sequence[SeriesSummary]) -> SeriesListing:
        """The listing of ``series``, with its fingerprint."""
        return cls(list(series), source_fingerprint(series, MANUFACTURER))


class Source(Protocol):
    """Where a study comes from."""

    study_uid: str
    can_transcode: bool  # whether :meth:`datasets` can return the pixels in a syntax decodable here
    owns_datasets: bool  # whether :meth:`datasets` returns objects the pipeline may strip of pixel data
    listed: Optional[SeriesListing]  # what :meth:`listing` returned last; None before

    def listing(self) -> SeriesListing:
        """The study's series and its source fingerprint (kept as ``listed``)."""
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
        self.listed: Optional[SeriesListing] = None

    def listing(self) -> SeriesListing:
        """QIDO-RS series of the study, and their fingerprint."""
        self.listed = SeriesListing.of(self.pacs.search_series(self.study_uid))
        return self.listed

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
        self.listed: Optional[SeriesListing] = None
        studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
        if len(studies) != 1 or not next(iter(studies)):
            raise BadInputError(f"the input must hold exactly one study, found {len(studies)}")
        self.study_uid = studies.pop()
        self._by_series: dict[str, list[pydicom.Dataset]] = {}
        for ds in datasets:
            self._by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)

    def series(self) -> list[SeriesSummary]:
        """One summary per series, counted from the files (what :meth:`listing` lists)."""
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

    def listing(self) -> SeriesListing:
        """The files' series (:meth:`series`) and their fingerprint."""
        self.listed = SeriesListing.of(self.series())
        return self.listed

    def instances(self, series_uid: str) -> list[InstanceSummary]:
        """The series' files, summarised."""
        return [InstanceSummary.from_dataset(ds) for ds in self._by_series.get(series_uid, [])]

    def datasets(self, series_uid: str, *, transcode: bool = False) -> list[pydicom.Dataset]:
        """The series' datasets as read (``transcode`` is not possible here)."""
        if transcode:
            raise UndecodablePixelsError("a local study cannot be transcoded; convert it first (e.g. dcmdjpeg)")
        return list(self._by_series.get(series_uid, []))


# --- reading files ------------------------------------------------------------------------------
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
