"""What every DICOM writer needs: the output context, UIDs, descriptions and equipment.

The writers (:mod:`.seg`, :mod:`.pmap`, :mod:`.sr`, :mod:`.pdf`) turn a
:class:`~neuroradix.types.StudyResult` into DICOM datasets. They share an
:class:`OutputContext` (the source series, the HU volume and the settings) and the
helpers here, so that every object of one run carries the same identifiers,
equipment and "UNTRAINED - TEST OUTPUT" marking.

Output UIDs are derived from what produced the object (see :func:`output_uids`), so
a rerun of the same pipeline version on the same series stores the same instances.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from neuroradix import MANUFACTURER
from neuroradix.config import DEFAULT_PMAP_GRID, DEFAULT_SEG_TYPE, PmapGrid, SegType
from neuroradix.errors import BadInputError
from neuroradix.imaging.frames import frame_planes, is_multiframe_ct
from neuroradix.types import Code, StudyResult, Volume
from neuroradix.uids import derive_uid

logger = logging.getLogger(__name__)

UNTRAINED_MARK = "UNTRAINED - TEST OUTPUT"
"""Put into every series description and content when the analyzer ran random weights."""

NOT_FOR_DIAGNOSIS = "Not for diagnostic use"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

# IHE Radiology AI Results (AIR) profile: purpose of reference of the Contributing
# Equipment item that describes the AI algorithm. The profile defines it with a
# temporary IHE code until DICOM assigns one; MONAI Deploy writes the same item.
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

# Local coding scheme (PS3.16 8.2: private designators start with "99") for concepts
# that have no standard code, e.g. a finding name the analyzer gave no SNOMED code.
LOCAL_SCHEME = "99NRX"

_LO_MAX = 64  # Long String (LO) maximum length


class ObjectKind(Enum):
    """Output object kinds, with the offset of their series number from the base."""

    SEG = ("SEG", 1)
    SR = ("SR", 2)
    PDF = ("PDF", 3)
    PMAP = ("PMAP", 10)  # + the attention map index: one series per map

    @property
    def tag(self) -> str:
        """Short name of the kind (part of the output UIDs)."""
        return self.value[0]

    @property
    def series_offset(self) -> int:
        """Offset of this kind's series number from ``series_number_base``."""
        return self.value[1]


@dataclass(frozen=True)
class OutputContext:
    """Everything the writers need besides the :class:`~neuroradix.types.StudyResult`.

    Parameters
    ----------
    source:
        The selected source CT series, one dataset per slice, sorted so that
        ``source[i]`` is slice ``i`` of ``volume`` and of ``StudyResult.labels``; or the
        multi-frame (Enhanced) CT instance(s) whose frames are the slices, in any frame order
        (each frame is matched to its slice by position: :attr:`slice_frames`). Only their
        metadata are read.
    volume:
        The HU volume built from ``source`` (same grid).
    pipeline_version:
        Version of the whole pipeline; part of every output UID.
    software_version:
        Version of the node software (``SoftwareVersions``).
    series_number_base:
        Output series numbers are this plus a per-kind offset (see :class:`ObjectKind`).
    seg_type:
        A :class:`~neuroradix.config.SegType` (default ``DEFAULT_SEG_TYPE``, BINARY): BINARY
        writes one bit-packed frame per segment and slice, LABELMAP one frame per slice holding
        segment numbers.
    seg_compress:
        Encode a BINARY segmentation with JPEG 2000 Lossless (the only compressed
        transfer syntax highdicom allows for BINARY); LABELMAP always uses RLE Lossless.
        ``False`` writes Explicit VR Little Endian.
    pmap_grid:
        A :class:`~neuroradix.config.PmapGrid` (default ``DEFAULT_PMAP_GRID``, SOURCE, the
        settings' default): SOURCE resamples the map onto the CT grid, one frame per CT slice
        (OHIF overlays it); ATTENTION keeps its own compact grid.
    pmap_max_in_plane:
        On the attention grid, maps with more rows or columns than this are downsampled.
    institution_name:
        Optional institution name for the equipment module.
    encode_workers:
        Processes that compress SEG frames (highdicom's ``workers``); 0 (default)
        compresses in this process. The bytes written are the same either way.
    uid_key:
        The node's secret UID key (``UID_KEY`` in ``var/secrets.env``); output UIDs are an
        HMAC of their inputs under it (see :func:`neuroradix.uids.derive_uid`); the pipeline passes
        ``Settings.uid_key`` (``NEURORADIX_UID_KEY``, which the launcher gives the workers). ""
        (``neuroradix analyze`` without a node): the public, unkeyed UIDs.
    """

    source: Sequence[Dataset]
    volume: Volume
    pipeline_version: str
    software_version: str
    series_number_base: int = 9000
    seg_type: SegType = DEFAULT_SEG_TYPE
    seg_compress: bool = True
    pmap_grid: PmapGrid = DEFAULT_PMAP_GRID
    pmap_max_in_plane: int = 256
    institution_name: Optional[str] = None
    encode_workers: int = 0
    uid_key: str = ""  # the node's secret (Settings.uid_key); "" derives public UIDs
    slice_frames: tuple[tuple[int, int], ...] = field(init=False, default=(), repr=False, compare=False)
    """For a multi-frame source: ``(source index, 1-based frame number)`` of each slice; else ``()``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", tuple(self.source))
        if len(self.source) == 0:
            raise ValueError("OutputContext.source must hold at least one dataset")
        if not isinstance(self.volume, Volume):
            raise TypeError("OutputContext.volume must be a neuroradix.types.Volume")
        if any(is_multiframe_ct(ds) for ds in self.source):
            pass  # frames, not instances, are the slices: _check_order maps them
        elif len(self.source) != self.volume.shape[0]:
            raise ValueError(
                f"OutputContext.source has {len(self.source)} datasets but the volume has "
                f"{self.volume.shape[0]} slices"
            )
        for name in ("pipeline_version", "software_version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"OutputContext.{name} must be a non-empty string")
        if not isinstance(self.series_number_base, int) or not 1 <= self.series_number_base <= 2**31 - 100:
            raise ValueError("OutputContext.series_number_base must be a positive int")
        if not isinstance(self.encode_workers, int) or isinstance(self.encode_workers, bool) or self.encode_workers < 0:
            raise ValueError("OutputContext.encode_workers must be an int >= 0")
        if not isinstance(self.pmap_max_in_plane, int) or self.pmap_max_in_plane < 8:
            raise ValueError("OutputContext.pmap_max_in_plane must be an int >= 8")
        for name, kind in (("seg_type", SegType), ("pmap_grid", PmapGrid)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"OutputContext.{name} must be a neuroradix.config.{kind.__name__} "
                    f"({', '.join(m.name for m in kind)}), got {getattr(self, name)!r}"
                )
        first = self.source[0]
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if key not in first:
                raise BadInputError(f"source dataset lacks {key}")
        for ds in self.source:
            if ds.StudyInstanceUID != first.StudyInstanceUID or ds.SeriesInstanceUID != first.SeriesInstanceUID:
                raise BadInputError("OutputContext.source mixes studies or series")
        self._check_order()

    def _check_order(self) -> None:
        """``source[i]`` must lie where the volume puts slice ``i`` (frames map to instances)."""
        tolerance = 0.05 * float(min(self.volume.spacing)) + 1e-3
        if any(is_multiframe_ct(ds) for ds in self.source):
            self._map_frames(tolerance)
            return
        for i, ds in enumerate(self.source):
            if "ImagePositionPatient" not in ds:
                continue
            expected = self.volume.affine[:3, 3] + i * self.volume.affine[:3, 0]
            actual = np.asarray([float(v) for v in ds.ImagePositionPatient])
            if np.max(np.abs(actual - expected)) > tolerance:
                raise ValueError(
                    f"OutputContext.source[{i}] (InstanceNumber {ds.get('InstanceNumber', '?')}) is not at slice {i} "
                    "of the volume: sort the source datasets like the volume"
                )

    def _map_frames(self, tolerance: float) -> None:
        """Match every frame of a multi-frame source to the slice of the volume at its position."""
        step = self.volume.affine[:3, 0]
        origin = self.volume.affine[:3, 3]
        n = self.volume.shape[0]
        found: dict[int, tuple[int, int]] = {}
        for index, ds in enumerate(self.source):
            for plane in frame_planes(ds):
                if plane.position is None or plane.frame is None:
                    raise ValueError(f"OutputContext.source[{index}] has a frame without a position")
                actual = np.asarray(plane.position)
                k = int(round(float(np.dot(actual - origin, step) / np.dot(step, step))))
                if not 0 <= k < n or np.max(np.abs(actual - (origin + k * step))) > tolerance or k in found:
                    raise ValueError(
                        f"OutputContext.source[{index}] frame {plane.frame} is at no free slice of the volume"
                    )
                found[k] = (index, plane.frame)
        if len(found) != n:
            raise ValueError(f"OutputContext.source has {len(found)} frames but the volume has {n} slices")
        object.__setattr__(self, "slice_frames", tuple(found[k] for k in range(n)))

    @property
    def several_multiframe(self) -> bool:
        """Whether the source is several multi-frame instances (highdicom derives from one only)."""
        return bool(self.slice_frames) and len(self.source) > 1

    @property
    def source_images(self) -> list[Dataset]:
        """The ``source_images`` a highdicom constructor takes: the slices, or the multi-frame instance.

        For several multi-frame instances only the first (highdicom takes one); pass the pixels
        through :meth:`pixels_for` and the object through :meth:`reference_frames`, which point
        every frame at its own source frame.
        """
        return list(self.source[:1]) if self.several_multiframe else list(self.source)

    def pixels_for(self, array: np.ndarray) -> np.ndarray | hd.Volume:
        """The ``pixel_array`` a highdicom constructor takes for ``array`` (slices first, on the source grid).

        The array itself (single-frame slices), in the source's frame order (one multi-frame
        instance), or a :class:`highdicom.Volume` on the source grid (several multi-frame instances).
        """
        if self.several_multiframe:
            return hd.Volume(
                array=array,
                affine=self.volume.affine,
                coordinate_system="PATIENT",
                frame_of_reference_uid=self.frame_of_reference_uid,
            )
        return self.in_frame_order(array)

    def reference_frames(self, ds: Dataset) -> Dataset:
        """Point each frame of a derived object at the source frame at its position (several multi-frame instances).

        highdicom references the frames of one multi-frame source only; for a series of several
        multi-frame instances this rewrites each frame's Derivation Image Sequence (the instance and
        ReferencedFrameNumber of the slice at the frame's ImagePositionPatient) and lists every
        instance in the Referenced Series Sequence. Otherwise ``ds`` is returned unchanged.
        """
        if not self.several_multiframe:
            return ds
        step, origin = self.volume.affine[:3, 0], self.volume.affine[:3, 3]
        tolerance = 0.05 * float(min(self.volume.spacing)) + 1e-3
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113076", "DCM", "Segmentation"
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
        purpose.CodeMeaning = "Source image for image processing operation"
        for item in ds.PerFrameFunctionalGroupsSequence:
            position = np.asarray([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            k = int(round(float(np.dot(position - origin, step) / np.dot(step, step))))
            if not 0 <= k < len(self.slice_frames) or np.max(np.abs(position - (origin + k * step))) > tolerance:
                continue  # not a plane of the source grid (an attention map on its own grid)
            index, frame = self.slice_frames[k]
            source = self.source[index]
            reference = Dataset()
            reference.ReferencedSOPClassUID = source.SOPClassUID
            reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
            reference.ReferencedFrameNumber = frame
            reference.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
            reference.SpatialLocationsPreserved = "YES"
            derivation = Dataset()
            old = item.get("DerivationImageSequence")
            derivation.DerivationCodeSequence = (
                old[0].DerivationCodeSequence if old and "DerivationCodeSequence" in old[0] else DicomSequence([code])
            )
            derivation.SourceImageSequence = DicomSequence([reference])
            item.DerivationImageSequence = DicomSequence([derivation])
        instances = []
        for source in self.source:
            item = Dataset()
            item.ReferencedSOPClassUID = source.SOPClassUID
            item.ReferencedSOPInstanceUID = source.SOPInstanceUID
            instances.append(item)
        series = Dataset()
        series.SeriesInstanceUID = self.source_series_uid
        series.ReferencedInstanceSequence = DicomSequence(instances)
        ds.ReferencedSeriesSequence = DicomSequence([series])
        return ds

    def in_frame_order(self, array: np.ndarray) -> np.ndarray:
        """``array`` (slices first) reordered to the source's frames: item ``f`` is for frame ``f + 1``.

        For a single-frame series (or frames stored in slice order) this is ``array`` itself.
        """
        if not self.slice_frames:
            return array
        slice_of_frame = np.empty(len(self.slice_frames), dtype=np.intp)
        for k, (_, frame) in enumerate(self.slice_frames):
            slice_of_frame[frame - 1] = k
        if np.array_equal(slice_of_frame, np.arange(len(slice_of_frame))):
            return array
        return array[slice_of_frame]

    @property
    def study_uid(self) -> str:
        """StudyInstanceUID of the source series."""
        return str(self.source[0].StudyInstanceUID)

    @property
    def source_series_uid(self) -> str:
        """SeriesInstanceUID of the source series."""
        return str(self.source[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        """FrameOfReferenceUID of the source series (shared by every output object)."""
        return str(self.source[0].FrameOfReferenceUID)


def check_result(result: StudyResult, ctx: OutputContext) -> None:
    """Raise :class:`ValueError` when ``result`` does not fit the context's grid."""
    if tuple(result.labels.shape) != ctx.volume.shape:
        raise ValueError(
            f"StudyResult.labels has shape {tuple(result.labels.shape)}, the source volume {ctx.volume.shape}"
        )


def output_uids(result: StudyResult, ctx: OutputContext, kind: ObjectKind, index: int | None = None) -> tuple[str, str]:
    """Return ``(SeriesInstanceUID, SOPInstanceUID)`` for one output object.

    Both depend only on the source study and series, the pipeline version, the
    analyzer name, the object kind, (for parametric maps) the map index and the node's
    secret ``ctx.uid_key``.
    """
    parts = [ctx.study_uid, ctx.source_series_uid, ctx.pipeline_version, result.analyzer.name, kind.tag]
    if index is not None:
        parts.append(str(index))
    key = ctx.uid_key or None  # keyed: nobody without the node's key can compute them
    return derive_uid(*parts, "series", key=key), derive_uid(*parts, "instance", key=key)


def series_number(ctx: OutputContext, kind: ObjectKind, index: int = 0) -> int:
    """SeriesNumber of an output object: the base plus the kind's offset plus ``index``."""
    return ctx.series_number_base + kind.series_offset + index


def device_uid(result: StudyResult) -> str:
    """A stable Device UID for the analyzer release (same analyzer + version, same UID)."""
    return derive_uid(MANUFACTURER, result.analyzer.name, result.analyzer.version, "device")


def ascii_text(text: str) -> str:
    """Fold ``text`` to printable ASCII (default character set): dashes, quotes and accents
    become their plain forms, anything else becomes ``?``. Line breaks are kept."""
    table = {
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00b5": "u",
        "\u00b3": "3",
        "\u00b2": "2",
        "\u2026": "...",
    }
    text = "".join(table.get(c, c) for c in str(text))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii") if not text.isascii() else text
    return "".join(c if (32 <= ord(c) < 127 or c in "\r\n") else "?" for c in text)


def short_string(text: str, limit: int = _LO_MAX) -> str:
    """ASCII, no backslash (the VR delimiter), at most ``limit`` characters."""
    text = ascii_text(text).replace("\\", "/").replace("\r", " ").replace("\n", " ")
    return text[:limit].rstrip()


def series_description(result: StudyResult, what: str) -> str:
    """``"AI <analyzer>: <what>"``, prefixed with the untrained mark when it applies.

    The mark comes first so that it survives the 64-character limit of LO.
    """
    text = f"AI {result.analyzer.name}: {what}"
    if result.analyzer.untrained:
        text = f"{UNTRAINED_MARK} {text}"
    return short_string(text)


def content_note(result: StudyResult) -> str:
    """One line for the content of every object: the mark (if any) and the disclaimer."""
    parts = [UNTRAINED_MARK] if result.analyzer.untrained else []
    parts.append(f"{NOT_FOR_DIAGNOSIS}. Generated by {MANUFACTURER} {result.analyzer.title} {result.analyzer.version}")
    return ascii_text(". ".join(parts))


def coded(code: Code) -> hd.sr.CodedConcept:
    """A :class:`highdicom.sr.CodedConcept` from a :class:`~neuroradix.types.Code`."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=short_string(code.meaning))


def local_code(name: str) -> hd.sr.CodedConcept:
    """A code in the local scheme for a concept without a standard code."""
    value = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text(name)).strip("-").lower()[:16] or "unnamed"
    return hd.sr.CodedConcept(value=value, scheme_designator=LOCAL_SCHEME, meaning=short_string(name))


def equipment_kwargs(result: StudyResult, ctx: OutputContext) -> dict:
    """Keyword arguments every highdicom SOP class constructor takes for the equipment."""
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": short_string(result.analyzer.title or result.analyzer.name),
        "software_versions": short_string(ctx.software_version),
        "device_serial_number": short_string(f"{result.analyzer.name}-{result.analyzer.version}"),
        "coding_schemes": coding_schemes(),
    }


def coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """Identify the private coding schemes the writers may use (Coding Scheme Identification)."""
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME, name="Neuro Radix local codes", responsible_organization=MANUFACTURER
        ),
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=PROCESSING_ALGORITHM.scheme, name="IHE temporary codes", responsible_organization="IHE"
        ),
    ]


def contributing_equipment(result: StudyResult, ctx: OutputContext) -> Dataset:
    """The IHE AIR Contributing Equipment item that identifies the AI algorithm.

    Built with pydicom because highdicom's ``ContributingEquipment`` accepts only the
    CID 7005 purposes, and IHE AIR asks for ``(Newcode1, 99IHE, "Processing Algorithm")``.
    """
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = short_string(result.analyzer.title or result.analyzer.name)
    item.SoftwareVersions = short_string(f"{result.analyzer.name} {result.analyzer.version}")
    item.DeviceUID = device_uid(result)
    if ctx.institution_name:
        item.InstitutionName = short_string(ctx.institution_name)
    item.ContributionDescription = short_string(
        f"{result.analyzer.title} ({result.analyzer.algorithm_family.meaning})", 64
    )
    return item


def finish_dataset(ds: Dataset, result: StudyResult, ctx: OutputContext, description: str) -> Dataset:
    """Set what every output object carries beyond what highdicom writes.

    Series description, the AIR contributing-equipment item, institution, and series
    date and time (kept equal to the content date and time).
    """
    ds.SeriesDescription = description
    ds.ContributingEquipmentSequence = DicomSequence([contributing_equipment(result, ctx)])
    if ctx.institution_name:
        ds.InstitutionName = short_string(ctx.institution_name)
    if "ContentDate" in ds and "SeriesDate" not in ds:
        ds.SeriesDate = ds.ContentDate
        ds.SeriesTime = ds.ContentTime
    return ds
