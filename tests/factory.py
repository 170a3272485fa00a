"""Tiny CT series with known geometry, built directly with pydicom (independent of the node's writers)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_series(
    array_hu: np.ndarray,
    *,
    row_dir: Sequence[float] = (1, 0, 0),
    col_dir: Sequence[float] = (0, 1, 0),
    origin: Sequence[float] = (-20.0, -30.0, 100.0),
    step: Optional[Sequence[float]] = None,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_number: int = 2,
    description: str = "Chest 2.5mm",
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> list[pydicom.Dataset]:
    """One dataset per slice of ``array_hu`` ([slice, row, column]).

    Slice ``k``, row ``r``, column ``c`` lies at ``origin + k*step + r*col_dir*ps[0] + c*row_dir*ps[1]``
    (``step`` defaults to the normal ``row_dir x col_dir`` times ``slice_spacing``).
    """
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    step = np.asarray(step, float) if step is not None else normal * slice_spacing
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    out = []
    for k in range(array_hu.shape[0]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "TEST-001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
        ds.Manufacturer = "TestScanner"
        ds.InstanceNumber = k + 1
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(origin, float) + k * step]
        ds.PixelSpacing = [f"{pixel_spacing[0]}", f"{pixel_spacing[1]}"]
        ds.SliceThickness = f"{slice_spacing}"
        ds.Rows, ds.Columns = array_hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope}", f"{intercept}", "HU"
        ds.KVP = "120"
        stored = np.round((array_hu[k] - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        out.append(ds)
    return out
