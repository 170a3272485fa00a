"""Turn a CT volume (NIfTI file, phantom) into a real DICOM CT Image series, and back.

* :func:`axial_axes` and :func:`reorient` give any grid the project's ``[slice, row, column]``
  axial order (NIfTI files are read with :func:`neuroradix.imaging.nifti.nifti_to_volume`).
* :func:`to_axial` reorders and flips the axes of any volume so that it reads as a conventional
  axial image stack, without moving a single voxel in patient space.
* :func:`volume_to_ct_series` builds one CT Image Storage instance per slice (the complete CT Image
  IOD, uncompressed) and :func:`write_series` stores them as Part 10 files.

Geometry is exact: a voxel's patient coordinate is the same in the source, the volume and the
DICOM series (ImagePositionPatient from the affine per slice, ImageOrientationPatient from affine
columns 2 and 1, PixelSpacing from their lengths).
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from neuroradix import __version__
from neuroradix.errors import BadInputError
from neuroradix.types import Volume
from neuroradix.uids import derive_uid

logger = logging.getLogger(__name__)

_SUPPORTED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_INT16 = np.iinfo(np.int16)


def axial_axes(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Find the axis order and flips that make a grid a conventional axial stack.

    Parameters
    ----------
    affine:
        4x4 index-to-LPS matrix of a grid with three voxel axes.

    Returns
    -------
    order, flips:
        ``order[k]`` is the source axis that becomes axis ``k`` (slice, row, column) and
        ``flips[k]`` whether it must be reversed so that slices run inferior to superior,
        rows anterior to posterior and columns patient right to left (+z, +y, +x in LPS).
        The slice axis is the axis most aligned with z, the column axis the remaining axis most
        aligned with x.
    """
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    slice_axis = int(np.argmax(np.abs(directions[2])))
    others = [a for a in range(3) if a != slice_axis]
    if abs(directions[0, others[0]]) >= abs(directions[0, others[1]]):
        col_axis, row_axis = others
    else:
        row_axis, col_axis = others
    order = (slice_axis, row_axis, col_axis)
    flips = tuple(bool(directions[lps, axis] < 0) for lps, axis in zip((2, 1, 0), order))
    return order, flips  # type: ignore[return-value]


def reorient(
    array: np.ndarray, affine: np.ndarray, order: Sequence[int], flips: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """Transpose ``array`` to ``order``, then reverse the axes marked in ``flips``.

    Returns the new array (a view where possible) and the affine that keeps every voxel at the
    same patient coordinate.
    """
    affine = np.asarray(affine, dtype=np.float64)
    out = np.transpose(array, order)
    new = np.eye(4)
    new[:3, :3] = affine[:3, list(order)]
    new[:3, 3] = affine[:3, 3]
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
            new[:3, 3] = new[:3, 3] + (out.shape[axis] - 1) * new[:3, axis]
            new[:3, axis] = -new[:3, axis]
    return out, new


def undo_reorient(array: np.ndarray, order: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """Inverse of :func:`reorient` for an array on the reoriented grid."""
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis=axis)
    return np.transpose(array, np.argsort(order))


def to_axial(volume: Volume) -> Volume:
    """Return ``volume`` with axes ordered and flipped as a conventional axial stack.

    Slices run inferior to superior, rows anterior to posterior, columns from the patient's right
    to left. Oblique grids keep their obliquity (the closest axis is chosen). The voxel array is
    made contiguous.
    """
    order, flips = axial_axes(volume.affine)
    array, affine = reorient(volume.array, volume.affine, order, flips)
    return Volume(np.ascontiguousarray(array), affine)


def _stored_values(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Return int16 stored values, slope and intercept for HU ``array``."""
    finite = np.isfinite(array)
    if not finite.all():
        raise BadInputError("the volume holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
    if integral and lo >= _INT16.min and hi <= _INT16.max:
        return array.astype(np.int16, copy=False), 1.0, 0.0
    if hi - lo <= 65000 and lo >= -32000 and hi <= 32000:
        logger.info("non-integral HU are rounded to the nearest integer")
        return np.rint(array).astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65000.0
    intercept = (hi + lo) / 2.0
    logger.info("HU range %.0f..%.0f needs a rescale slope of %g", lo, hi, slope)
    return np.rint((array - intercept) / slope).astype(np.int16), slope, intercept


def _ds_number(value: float) -> str:
    """Format a number for a DS attribute (at most 16 characters)."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8g}"
    return "0" if text in ("-0", "-0.0") else text


def volume_to_ct_series(
    volume: Volume,
    *,
    patient_name: str = "Anonymous^Demo",
    patient_id: str = "NRX-DEMO-0001",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    series_description: str = "CT from volume",
    series_number: int = 1,
    study_description: str = "CT chest (demo)",
    transfer_syntax: str = ExplicitVRLittleEndian,
    uid_seed: Optional[str] = None,
) -> list[Dataset]:
    """Build a CT Image Storage series, one instance per slice of ``volume``.

    Parameters
    ----------
    volume:
        HU values on an LPS grid; axis 0 is the slice axis.
    patient_name, patient_id:
        Patient module values (keep them synthetic for demo data).
    study_uid, series_uid:
        Use these UIDs; by default they are derived from ``uid_seed`` or random.
    series_description, series_number, study_description:
        Descriptive attributes (ASCII).
    transfer_syntax:
        Explicit or Implicit VR Little Endian (uncompressed).
    uid_seed:
        When given, every UID not passed explicitly (study, series, frame of reference, SOP
        instances) is derived from it with :func:`neuroradix.uids.derive_uid`, and the dates are
        fixed, so the same call returns the same datasets.

    Returns
    -------
    list of pydicom.Dataset
        With ``file_meta`` set, ordered by InstanceNumber (the volume's slice order).

    Raises
    ------
    ValueError
        An unsupported transfer syntax or a non-ASCII text argument.
    BadInputError
        The volume holds NaN/inf values.
    """
    if transfer_syntax not in _SUPPORTED_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {_SUPPORTED_SYNTAXES}, got {transfer_syntax!r}")
    for name, text in (
        ("patient_name", patient_name),
        ("patient_id", patient_id),
        ("series_description", series_description),
        ("study_description", study_description),
    ):
        if not isinstance(text, str) or not text.isascii():
            raise ValueError(f"{name} must be an ASCII string")
    if not isinstance(series_number, int) or series_number < 0:
        raise ValueError("series_number must be a non-negative int")

    def uid(kind: str) -> str:
        return derive_uid("neuroradix-ct-series", uid_seed, kind) if uid_seed is not None else generate_uid()

    study_uid = study_uid or uid("study")
    series_uid = series_uid or (
        derive_uid("neuroradix-ct-series", uid_seed, study_uid, "series") if uid_seed is not None else generate_uid()
    )
    frame_uid = uid("frame-of-reference") if uid_seed is not None else generate_uid()
    when = _dt.datetime(2000, 1, 1, 12, 0, 0) if uid_seed is not None else _dt.datetime.now()
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    stored, slope, intercept = _stored_values(volume.array)
    affine = volume.affine
    spacing = volume.spacing
    row_dir = affine[:3, 2] / spacing[2]  # direction along a row: the column index axis
    col_dir = affine[:3, 1] / spacing[1]  # direction down a column: the row index axis
    orientation = [_ds_number(v) for v in (*row_dir, *col_dir)]
    pixel_spacing = [_ds_number(spacing[1]), _ds_number(spacing[2])]
    normal = np.cross(row_dir, col_dir)

    datasets = []
    for index in range(volume.shape[0]):
        position = affine[:3, :3] @ np.array([index, 0.0, 0.0]) + affine[:3, 3]
        sop_uid = (
            derive_uid("neuroradix-ct-series", uid_seed, series_uid, "instance", str(index))
            if uid_seed is not None
            else generate_uid()
        )
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        # Patient
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = date, time
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.StudyDescription = study_description
        # General Series
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.SeriesDescription = series_description
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST"
        # Frame of Reference
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = "Neuro Radix sample converter"  # not MANUFACTURER: this is source data, not a result
        ds.ManufacturerModelName = "volume_to_ct_series"
        ds.SoftwareVersions = __version__
        # General Image / General Acquisition
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        ds.ContentDate, ds.ContentTime = date, time
        ds.AcquisitionDate, ds.AcquisitionTime = date, time
        ds.BurnedInAnnotation = "NO"
        # Image Plane
        ds.PixelSpacing = pixel_spacing
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.SliceThickness = _ds_number(spacing[0])
        ds.SliceLocation = _ds_number(float(np.dot(position, normal)))
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(stored[index]).astype("<i2", copy=False).tobytes()
        # CT Image
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleType = "HU"
        ds.KVP = ""
        # VOI LUT
        ds.WindowCenter = ["40", "-600"]
        ds.WindowWidth = ["400", "1500"]
        ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        datasets.append(ds)
    logger.info("built a CT series of %d instances (%dx%d)", len(datasets), volume.shape[1], volume.shape[2])
    return datasets


def write_series(datasets: Sequence[Dataset], out_dir: Union[str, Path]) -> list[Path]:
    """Store ``datasets`` as DICOM Part 10 files ``CT0001.dcm`` ... in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, ds in enumerate(datasets, start=1):
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            raise ValueError(f"dataset {position} has no file_meta.TransferSyntaxUID")
        number = int(ds.get("InstanceNumber", position))
        path = out / f"CT{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


__all__ = [
    "axial_axes",
    "reorient",
    "undo_reorient",
    "to_axial",
    "volume_to_ct_series",
    "write_series",
]
