"""Synthetic data for the DICOM writer tests: a tiny CT series with known, non-identity geometry.

Geometry of the synthetic series (12 slices of 32 rows x 40 columns):

* rows run along -x (ImageOrientationPatient row cosine ``(-1, 0, 0)``), columns along
  +y (column cosine ``(0, 1, 0)``); the slice normal is therefore ``-z`` and slice ``i``
  lies at ``z = 200 - 2.5 i``;
* PixelSpacing ``(0.8, 0.7)``: 0.8 mm between rows, 0.7 mm between columns;
* voxel ``(0, 0, 0)`` is at ``(14, -50, 200)``, so ``x = 14 - 0.7 * column``: columns 0-19
  lie on the patient's left (x > 0), columns 20-39 on the right.

The label map puts "Left lung" (label 2) in columns 3-16 and "Right lung" (label 3)
in columns 23-36, "Airways" (label 4) in a small block, and leaves "Body" (label 1)
empty, so the written SEG has to drop and renumber segments.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from neuroradix.config import PmapGrid
from neuroradix.schemes import load_scheme
from neuroradix.types import (
    AnalyzerInfo,
    AttentionMap,
    Code,
    Finding,
    Measurement,
    StudyResult,
    Volume,
)
from neuroradix.uids import derive_uid
from neuroradix.writers.common import OutputContext
from tests.support import require_tool

N_SLICES, N_ROWS, N_COLS = 12, 32, 40
ROW_COSINE = np.array([-1.0, 0.0, 0.0])  # direction of increasing column index
COL_COSINE = np.array([0.0, 1.0, 0.0])  # direction of increasing row index
PIXEL_SPACING = (0.8, 0.7)  # (between rows, between columns)
SLICE_STEP = 2.5
ORIGIN = np.array([14.0, -50.0, 200.0])

LEFT, RIGHT, AIRWAYS = 2, 3, 4
LEFT_COLS, RIGHT_COLS = slice(3, 17), slice(23, 37)

LUNG = Code("39607008", "SCT", "Lung")
ML = Code("mL", "UCUM", "milliliter")
PERCENT = Code("%", "UCUM", "Percent")
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
VOLUME = Code("118565006", "SCT", "Volume")


def ct_affine() -> np.ndarray:
    normal = np.cross(ROW_COSINE, COL_COSINE)
    aff = np.eye(4)
    aff[:3, 0] = normal * SLICE_STEP
    aff[:3, 1] = COL_COSINE * PIXEL_SPACING[0]
    aff[:3, 2] = ROW_COSINE * PIXEL_SPACING[1]
    aff[:3, 3] = ORIGIN
    return aff


def make_ct_series(
    study_uid: str = "1.2.826.0.1.3680043.8.498.1", series_uid: str = "1.2.826.0.1.3680043.8.498.2"
) -> list[Dataset]:
    """Single-frame CT Image Storage datasets, sorted by slice index."""
    aff = ct_affine()
    frame_of_reference = derive_uid("test-for", study_uid)
    hu = np.full((N_ROWS, N_COLS), -850, dtype=np.int16)
    hu[:, :3] = 40
    datasets = []
    for i in range(N_SLICES):
        ds = Dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = derive_uid("test-sop", series_uid, str(i))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientName = "Test^Writer"
        ds.PatientID = "NRX-0001"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC42"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "S1"
        ds.StudyDescription = "CT CHEST"
        ds.Modality = "CT"
        ds.SeriesNumber = 3
        ds.SeriesDescription = "Chest 2.5mm"
        ds.Manufacturer = "Synthetic"
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.ContentDate = "20240102"
        ds.ContentTime = "101600"
        ds.KVP = 120
        ds.ImagePositionPatient = [float(v) for v in aff[:3, 3] + i * aff[:3, 0]]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([ROW_COSINE, COL_COSINE])]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_STEP
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = N_ROWS, N_COLS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        datasets.append(ds)
    return datasets


def make_labels() -> np.ndarray:
    labels = np.zeros((N_SLICES, N_ROWS, N_COLS), dtype=np.uint8)
    labels[2:10, 4:28, LEFT_COLS] = LEFT
    labels[3:11, 5:27, RIGHT_COLS] = RIGHT
    labels[1:5, 8:12, 18:22] = AIRWAYS
    return labels


def make_attention() -> AttentionMap:
    """Half-resolution map, its voxel centres in the middle of 2x2x2 CT voxel blocks."""
    aff = ct_affine()
    att = np.eye(4)
    att[:3, :3] = aff[:3, :3] * 2
    att[:3, 3] = aff[:3, 3] + 0.5 * aff[:3, :3].sum(axis=1)
    s, r, c = np.meshgrid(np.arange(6), np.arange(16), np.arange(20), indexing="ij")
    array = np.exp(-(((s - 3) / 2.0) ** 2 + ((r - 8) / 4.0) ** 2 + ((c - 5) / 3.0) ** 2)).astype(np.float32)
    return AttentionMap(
        name="abnormal",
        array=array,
        affine=att,
        quantity=Code("AttentionWeight", "99NRX", "Attention weight"),
        unit=Code("1", "UCUM", "no units"),
    )


def make_result(untrained: bool = False) -> StudyResult:
    scheme = load_scheme("lung-hu-4")
    info = AnalyzerInfo(
        name="lung-hu",
        version="1.0.0",
        title="Lung HU analyzer",
        algorithm_family=Code("123109", "DCM", "Manual Processing"),
        untrained=untrained,
    )
    findings = (
        Finding(
            "Emphysema",
            0.83,
            code=Code("87433001", "SCT", "Pulmonary emphysema"),
            site=LUNG,
            segment_labels=(LEFT, RIGHT),
            attention_index=0,
        ),
        Finding("Lung nodule", 0.12, site=LUNG, segment_labels=(RIGHT,)),
        Finding("Abnormal", 0.9, attention_index=0),
    )
    measurements = (
        Measurement(
            "Left lung volume", 2450.5, ML, VOLUME, site=Code("44029006", "SCT", "Left lung"), segment_label=LEFT
        ),
        Measurement(
            "Right lung volume", 2710.25, ML, VOLUME, site=Code("3341006", "SCT", "Right lung"), segment_label=RIGHT
        ),
        Measurement("LAA-950", 12.5, PERCENT, Code("LAA950", "99NRX", "Low attenuation area below -950 HU"), site=LUNG),
        Measurement(
            "Mean lung density",
            -842.0,
            HU,
            Code("112031", "DCM", "Attenuation Coefficient"),
            site=LUNG,
            derivation=Code("373098007", "SCT", "Mean"),
        ),
    )
    return StudyResult(
        analyzer=info,
        labels=make_labels(),
        segments=scheme.segments,
        findings=findings,
        measurements=measurements,
        report_text="FINDINGS: Centrilobular emphysema in both upper lobes.\nIMPRESSION: Emphysema.",
        attention=(make_attention(),),
    )


@pytest.fixture
def ct_series() -> list[Dataset]:
    return make_ct_series()


@pytest.fixture
def result() -> StudyResult:
    return make_result()


@pytest.fixture
def ctx(ct_series) -> OutputContext:
    hu = np.stack([np.frombuffer(ds.PixelData, dtype=np.int16).reshape(N_ROWS, N_COLS) - 1024 for ds in ct_series])
    return OutputContext(
        source=ct_series,
        volume=Volume(hu.astype(np.float32), ct_affine()),
        pipeline_version="p1",
        software_version="0.1.0",
        pmap_grid=PmapGrid.ATTENTION,  # the compact grid; tests that need the CT grid replace it
    )


@pytest.fixture
def untrained_result() -> StudyResult:
    return make_result(untrained=True)


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy; return its (error lines, warning lines)."""
    exe = require_tool("dciodvfy")  # dicom3tools; make setup installs it
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


@pytest.fixture
def roundtrip(tmp_path):
    """Write a dataset to a file and read it back."""

    def _roundtrip(ds: Dataset, name: str = "out.dcm") -> tuple[Dataset, Path]:
        path = write(ds, tmp_path / name)
        return pydicom.dcmread(path), path

    return _roundtrip
