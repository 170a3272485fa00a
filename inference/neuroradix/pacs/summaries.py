"""Typed summaries of what a PACS search or a folder of DICOM files says about studies, series and instances.

Only this module reads DICOM attributes for the searches: the reconciler, the series selection and the
pipeline get these dataclasses, never raw DICOM JSON (``{"0020000D": {"Value": [...]}}``) or datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pydicom

from neuroradix.imaging.frames import FramePlane, frame_planes, is_multiframe_ct


def _value(ds: pydicom.Dataset, keyword: str, default: Any = None) -> Any:
    """The attribute's value, ``default`` when it is absent or empty."""
    value = ds.get(keyword, default)
    return default if value is None or value == "" else value


def _int(ds: pydicom.Dataset, keyword: str) -> Optional[int]:
    value = _value(ds, keyword)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _floats(ds: pydicom.Dataset, keyword: str) -> Optional[tuple[float, ...]]:
    value = _value(ds, keyword)
    if value is None:
        return None
    try:
        return tuple(
            float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])
        )
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StudySummary:
    """One study as a QIDO-RS study search returns it."""

    study_uid: str
    modalities: tuple[str, ...] = ()

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset) -> StudySummary:
        """Build from a search result parsed into a dataset."""
        modalities = _value(ds, "ModalitiesInStudy", ())
        if isinstance(modalities, str):
            modalities = (modalities,)
        return cls(str(_value(ds, "StudyInstanceUID", "")), tuple(str(m) for m in modalities))

    @classmethod
    def from_json(cls, item: dict) -> StudySummary:
        """Build from one DICOM JSON object of a QIDO-RS response."""
        return cls.from_dataset(pydicom.Dataset.from_json(item))


@dataclass(frozen=True)
class SeriesSummary:
    """One series as a QIDO-RS series search (or a folder's files) describes it.

    ``n_instances`` is ``None`` when the source did not say (a PACS that omits
    NumberOfSeriesRelatedInstances).
    """

    series_uid: str
    modality: str = ""
    series_number: Optional[int] = None
    description: str = ""
    manufacturer: str = ""
    n_instances: Optional[int] = None

    @property
    def label(self) -> str:
        """How messages name the series (no UIDs): ``series 3 (CT)``."""
        return f"series {self.series_number if self.series_number is not None else '?'} ({self.modality or '?'})"

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset) -> SeriesSummary:
        """Build from a search result parsed into a dataset."""
        return cls(
            series_uid=str(_value(ds, "SeriesInstanceUID", "")),
            modality=str(_value(ds, "Modality", "")),
            series_number=_int(ds, "SeriesNumber"),
            description=str(_value(ds, "SeriesDescription", "")),
            manufacturer=str(_value(ds, "Manufacturer", "")),
            n_instances=_int(ds, "NumberOfSeriesRelatedInstances"),
        )

    @classmethod
    def from_json(cls, item: dict) -> SeriesSummary:
        """Build from one DICOM JSON object of a QIDO-RS response."""
        return cls.from_dataset(pydicom.Dataset.from_json(item))


@dataclass(frozen=True)
class InstanceSummary:
    """What series selection needs of one instance (WADO-RS metadata or a file's header, no pixels)."""

    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str = ""
    modality: str = ""
    series_number: Optional[int] = None
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    image_orientation: Optional[tuple[float, ...]] = None
    image_position: Optional[tuple[float, ...]] = None
    pixel_spacing: Optional[tuple[float, ...]] = None
    rows: Optional[int] = None
    columns: Optional[int] = None
    bits_allocated: Optional[int] = None
    number_of_frames: Optional[int] = None  # None when absent (a single-frame image)
    frames: tuple[FramePlane, ...] = ()  # a multi-frame CT's frames, from its functional groups; () otherwise

    @property
    def planes(self) -> tuple[FramePlane, ...]:
        """The instance's image planes: each frame of a multi-frame CT, else the one slice."""
        if self.frames:
            return self.frames
        return (
            FramePlane(
                frame=None,
                orientation=self.image_orientation,
                position=self.image_position,
                spacing=self.pixel_spacing,
                frame_type=self.image_type,
            ),
        )

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset) -> InstanceSummary:
        """Build from an instance (its pixel data, if any, is not touched)."""
        image_type = _value(ds, "ImageType", ())
        if isinstance(image_type, str):
            image_type = (image_type,)
        return cls(
            sop_instance_uid=str(_value(ds, "SOPInstanceUID", "")),
            series_uid=str(_value(ds, "SeriesInstanceUID", "")),
            sop_class_uid=str(_value(ds, "SOPClassUID", "")),
            modality=str(_value(ds, "Modality", "")),
            series_number=_int(ds, "SeriesNumber"),
            series_description=str(_value(ds, "SeriesDescription", "")),
            image_type=tuple(str(v).upper() for v in image_type),
            image_orientation=_floats(ds, "ImageOrientationPatient"),
            image_position=_floats(ds, "ImagePositionPatient"),
            pixel_spacing=_floats(ds, "PixelSpacing"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            bits_allocated=_int(ds, "BitsAllocated"),
            number_of_frames=_int(ds, "NumberOfFrames"),
            frames=frame_planes(ds) if is_multiframe_ct(ds) else (),
        )

    @classmethod
    def from_json(cls, item: dict) -> InstanceSummary:
        """Build from one DICOM JSON object of a WADO-RS metadata response (bulk data is ignored)."""
        return cls.from_dataset(pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b""))
