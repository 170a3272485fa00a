"""The image planes of a CT instance: one for a classic slice, one per frame of an Enhanced CT.

A classic CT Image Storage instance carries its geometry at the top level (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, RescaleSlope/Intercept). A multi-frame CT (Enhanced CT Image
Storage, Legacy Converted Enhanced CT Image Storage) carries it in the functional groups: each
attribute is read from the frame's item of the Per-frame Functional Groups Sequence and, where that
item lacks the macro, from the Shared Functional Groups Sequence (PS3.3 C.7.6.16):

=============================  =========================================================
macro (functional group)       attributes
=============================  =========================================================
Plane Position (Patient)       ImagePositionPatient
Plane Orientation (Patient)    ImageOrientationPatient
Pixel Measures                 PixelSpacing, SliceThickness
Pixel Value Transformation     RescaleSlope, RescaleIntercept
CT Image Frame Type            FrameType (a LOCALIZER frame is no part of a volume)
=============================  =========================================================

pydicom reads the sequences; highdicom offers no reader for them that keeps missing values
apart from bad ones, so this small one is written here. Missing values are ``None``: the callers
decide whether that makes a series ineligible (:mod:`neuroradix.pacs.series`) or bad input
(:mod:`neuroradix.imaging.volume`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import pydicom
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
MULTIFRAME_CT_SOP_CLASSES = frozenset({ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE})
"""The multi-frame CT SOP classes whose frames the node assembles into a volume."""


@dataclass(frozen=True)
class FramePlane:
    """One image plane of an instance: its geometry, rescale and frame type.

    Parameters
    ----------
    frame:
        1-based frame number within a multi-frame instance; ``None`` for a single-frame image.
    orientation, position, spacing:
        ImageOrientationPatient (6), ImagePositionPatient (3), PixelSpacing (row, column) in mm;
        ``None`` when absent or not numbers.
    thickness:
        SliceThickness in mm, ``None`` when absent.
    slope, intercept:
        The rescale to HU (1 and 0 when absent).
    frame_type:
        FrameType of a multi-frame instance's frame, else the instance's ImageType (upper case).
    """

    frame: Optional[int]
    orientation: Optional[tuple[float, ...]]
    position: Optional[tuple[float, ...]]
    spacing: Optional[tuple[float, ...]]
    thickness: Optional[float] = None
    slope: float = 1.0
    intercept: float = 0.0
    frame_type: tuple[str, ...] = ()

    @property
    def is_localizer(self) -> bool:
        """Whether the plane is marked LOCALIZER (a scout frame, no part of a volume)."""
        return "LOCALIZER" in self.frame_type


def is_multiframe_ct(ds: Dataset) -> bool:
    """Whether ``ds`` is an (Enhanced or Legacy Converted Enhanced) multi-frame CT instance."""
    return str(ds.get("SOPClassUID", "")) in MULTIFRAME_CT_SOP_CLASSES


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or empty).

    Raises
    ------
    ValueError
        NumberOfFrames is not a whole number.
    """
    value = ds.get("NumberOfFrames", 1)
    return int(value) if value not in (None, "") else 1


def _floats(item: Optional[Dataset], keyword: str, count: Optional[int] = None) -> Optional[tuple[float, ...]]:
    if item is None or keyword not in item:
        return None
    value = item.get(keyword)
    if value is None or value == "":
        return None
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    if count is not None and len(numbers) != count:
        return None
    return numbers


def _float(item: Optional[Dataset], keyword: str, default: Optional[float]) -> Optional[float]:
    numbers = _floats(item, keyword)
    return numbers[0] if numbers else default


def _strings(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value.upper(),)
    return tuple(str(v).upper() for v in value)


def _first(group: Optional[Dataset], sequence: str) -> Optional[Dataset]:
    """The single item of ``group.<sequence>``, or None."""
    if group is None:
        return None
    items = group.get(sequence)
    return items[0] if items else None


def _macro(per_frame: Optional[Dataset], shared: Optional[Dataset], sequence: str) -> Optional[Dataset]:
    """A functional group macro of one frame: its per-frame item, else the shared one."""
    item = _first(per_frame, sequence)
    return item if item is not None else _first(shared, sequence)


def frame_planes(ds: Dataset) -> tuple[FramePlane, ...]:
    """The image planes of ``ds``, in stored frame order (one for a single-frame image).

    Parameters
    ----------
    ds:
        A full dataset or its metadata (WADO-RS metadata, a header read without pixels).

    Returns
    -------
    tuple of FramePlane
        For a multi-frame CT (:data:`MULTIFRAME_CT_SOP_CLASSES`) one per frame, from the
        functional groups; otherwise one, from the top-level attributes. A multi-frame instance
        whose Per-frame Functional Groups Sequence does not hold NumberOfFrames items gives planes
        without positions (callers report that as missing geometry).
    """
    if not is_multiframe_ct(ds):
        return (
            FramePlane(
                frame=None,
                orientation=_floats(ds, "ImageOrientationPatient", 6),
                position=_floats(ds, "ImagePositionPatient", 3),
                spacing=_floats(ds, "PixelSpacing", 2),
                thickness=_float(ds, "SliceThickness", None),
                slope=_float(ds, "RescaleSlope", 1.0) or 1.0,
                intercept=_float(ds, "RescaleIntercept", 0.0) or 0.0,
                frame_type=_strings(ds.get("ImageType")),
            ),
        )
    try:
        frames = number_of_frames(ds)
    except (TypeError, ValueError):
        frames = 0
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame_items = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if len(per_frame_items) != frames:
        logger.info("multi-frame instance: %d per-frame items for %d frames", len(per_frame_items), frames)
        per_frame_items = [Dataset() for _ in range(max(frames, len(per_frame_items)))]
        complete = False
    else:
        complete = True
    image_type = _strings(ds.get("ImageType"))
    planes = []
    for number, item in enumerate(per_frame_items, start=1):
        measures = _macro(item, shared, "PixelMeasuresSequence")
        transform = _macro(item, shared, "PixelValueTransformationSequence")
        frame_type = _macro(item, shared, "CTImageFrameTypeSequence")
        planes.append(
            FramePlane(
                frame=number,
                orientation=_floats(_macro(item, shared, "PlaneOrientationSequence"), "ImageOrientationPatient", 6),
                position=_floats(_macro(item, shared, "PlanePositionSequence"), "ImagePositionPatient", 3)
                if complete
                else None,
                spacing=_floats(measures, "PixelSpacing", 2),
                thickness=_float(measures, "SliceThickness", None),
                slope=_float(transform, "RescaleSlope", 1.0) or 1.0,
                intercept=_float(transform, "RescaleIntercept", 0.0) or 0.0,
                frame_type=_strings(frame_type.get("FrameType")) if frame_type is not None else image_type,
            )
        )
    return tuple(planes)


def acquisition_header(ds: Dataset) -> Dataset:
    """A flat header with what :class:`~neuroradix.types.AcquisitionInfo` reads, for any CT instance.

    For a multi-frame CT the convolution kernel and slice thickness come from the first frame's
    functional groups (CT Reconstruction, Pixel Measures); a classic slice is returned as it is.
    """
    if not is_multiframe_ct(ds):
        return ds
    flat = Dataset()
    for keyword in ("Manufacturer", "ContrastBolusAgent"):
        if keyword in ds:
            setattr(flat, keyword, ds.get(keyword))
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    first = _first(ds, "PerFrameFunctionalGroupsSequence")
    reconstruction = _macro(first, shared, "CTReconstructionSequence")
    if reconstruction is not None and "ConvolutionKernel" in reconstruction:
        flat.ConvolutionKernel = reconstruction.ConvolutionKernel
    measures = _macro(first, shared, "PixelMeasuresSequence")
    thickness = _float(measures, "SliceThickness", None)
    if thickness is not None:
        flat.SliceThickness = thickness
    return flat


__all__ = [
    "CT_IMAGE_STORAGE",
    "ENHANCED_CT_IMAGE_STORAGE",
    "LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE",
    "MULTIFRAME_CT_SOP_CLASSES",
    "FramePlane",
    "is_multiframe_ct",
    "number_of_frames",
    "frame_planes",
    "acquisition_header",
]
