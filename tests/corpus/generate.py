"""Generate the bad-input corpus: one folder of DICOM files per kind of input, each with its expected outcome.

Every case starts from a small but real-looking chest CT (the thorax phantom of
:mod:`neuroradix.samples.phantom`: body, lungs, airways, heart, spine, table, air around it; 20 slices
of 64x64) and changes one thing: the modality, the geometry, the transfer syntax, the pixel module,
the character set ... :data:`CASES` says for each what the node must do with it:

* ``succeeded``: valid but unusual input is analyzed (``reason`` is then a substring expected in the
  job's warnings, or empty);
* ``failed`` / ``skipped``: the job ends so, and ``reason`` is a substring of its reason;
* ``not-handed-off``: Orthanc's plugin does not hand the study to the sidecar at all; a job
  requested by hand is then ``skipped`` with ``reason``.

Nothing of the corpus is kept in git: ``python -m tests.corpus.generate OUT`` writes it (a few MB).
Compressed syntaxes come from pydicom's own encoders (RLE, JPEG-LS, JPEG 2000, deflate) and from
dcmtk's ``dcmcjpeg`` (the JPEG processes pydicom cannot encode).
"""

from __future__ import annotations

import argparse
import copy
import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from neuroradix import MANUFACTURER
from neuroradix.imaging.ctseries import reorient, volume_to_ct_series
from neuroradix.imaging.enhanced import classic_to_enhanced_ct
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import Volume
from neuroradix.uids import derive_uid

SUCCEEDED, FAILED, SKIPPED, NOT_HANDED_OFF = "succeeded", "failed", "skipped", "not-handed-off"
STATES = (SUCCEEDED, FAILED, SKIPPED, NOT_HANDED_OFF)

#: the base CT: (slices, rows, columns) and voxel size in mm (a 352 mm field of view, 160 mm of chest)
SHAPE = (20, 64, 64)
SPACING = (8.0, 5.5, 5.5)

MR, CR, US, PT = (
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.128",
)
COMPREHENSIVE_SR, SEG, XRAY_DOSE_SR = (
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.67",
)


@dataclass(frozen=True)
class Case:
    """One kind of input and the outcome the node must reach with it.

    Parameters
    ----------
    name:
        Short identifier (a folder name, a test id).
    build:
        ``build(seed)`` returns the study's datasets (with ``file_meta``); UIDs derive from ``seed``.
    state:
        One of :data:`STATES`.
    reason:
        Substring of the job's reason (``failed``/``skipped``/``not-handed-off``) or of its warnings
        (``succeeded``; empty when no warning is expected).
    kind:
        What the input is, for people (the table in ``docs/reliability.md``).
    tool:
        dcmtk command that re-encodes the written files (``["dcmcjpeg", "+eb"]``), if any. It keeps
        the SOP Instance UIDs (``+un``); dcmtk marks lossy images ``DERIVED``, which is undone
        unless ``lossy_derived`` (many archives compress lossily and keep ``ORIGINAL``).
    lossy_derived:
        Keep the ``DERIVED`` image type dcmtk sets on lossy compression.
    """

    name: str
    build: Callable[[str], list[Dataset]]
    state: str
    reason: str
    kind: str
    tool: tuple[str, ...] = ()
    lossy_derived: bool = False

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")
        if self.state != SUCCEEDED and not self.reason:
            raise ValueError(f"case {self.name}: a {self.state} case needs the expected reason")


# --- the base study --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _phantom() -> Volume:
    volume, _ = thorax_phantom(SHAPE, SPACING, seed=7)
    return volume


def base_ct(seed: str, volume: Volume | None = None, description: str = "Thorax 8mm") -> list[Dataset]:
    """The good study: a chest CT series (CT Image Storage, signed 16 bit, Explicit VR Little Endian)."""
    datasets = volume_to_ct_series(
        volume if volume is not None else _phantom(),
        uid_seed=seed,
        patient_name="Corpus^Case",
        patient_id="NRX-CORPUS",
        series_description=description,
        study_description="CT chest (corpus)",
    )
    for ds in datasets:
        ds.Manufacturer = "Corpus Scanner"  # a source series, never the node's own
        ds.KVP = "120"
    return datasets


def _uid(seed: str, *parts: str) -> str:
    return derive_uid("neuroradix-corpus", seed, *parts)


def _hu(ds: Dataset) -> np.ndarray:
    """HU of one slice of the base series (whose rescale is slope 1, intercept 0)."""
    if float(ds.RescaleSlope) != 1 or float(ds.RescaleIntercept) != 0:
        raise ValueError("the base series must store HU (slope 1, intercept 0)")
    return np.frombuffer(ds.PixelData, "<i2").reshape(int(ds.Rows), int(ds.Columns)).astype(np.int32)


def _set_pixels(ds: Dataset, stored: np.ndarray, bits_stored: int, signed: bool, bits_allocated: int = 16) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    dtype = {(8, False): "u1", (16, False): "<u2", (16, True): "<i2"}[(bits_allocated, signed)]
    ds.PixelData = np.ascontiguousarray(stored).astype(dtype).tobytes()


def _other_modality(modality: str, sop_class: str, n: int, description: str) -> Callable[[str], list[Dataset]]:
    """A study of ``n`` images of another modality (the CT's pixels, relabelled)."""

    def build(seed: str) -> list[Dataset]:
        datasets = base_ct(seed, description=description)[:n]
        for ds in datasets:
            ds.Modality = modality
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
            for keyword in ("RescaleType", "KVP") if modality != "PT" else ("KVP",):
                del ds[keyword]
            if modality in ("CR", "US"):  # projection / 2-D images: no patient geometry
                for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "SliceThickness"):
                    del ds[keyword]
        return datasets

    return build


def _document(seed: str, modality: str, sop_class: str, description: str, manufacturer: str) -> Dataset:
    """A non-image object (SR, SEG header) in the study of ``base_ct(seed)``."""
    first = base_ct(seed)[0]
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        setattr(ds, keyword, first.get(keyword))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(seed, modality, "instance")
    ds.SeriesInstanceUID = _uid(seed, modality, "series")
    ds.Modality = modality
    ds.SeriesNumber = 90
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    ds.Manufacturer = manufacturer
    ds.ContentDate, ds.ContentTime = first.StudyDate, first.StudyTime
    if modality == "SR":
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
            "18748-4",
            "LN",
            "Diagnostic Imaging Report",
        )
        ds.ConceptNameCodeSequence = DicomSequence([concept])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


# --- builders: not a CT to analyze -----------------------------------------------------------------
def sr_only(seed: str) -> list[Dataset]:
    return [_document(seed, "SR", COMPREHENSIVE_SR, "Radiology report", "Report Writer")]


def seg_only(seed: str) -> list[Dataset]:
    seg = base_ct(seed)[:4]
    for ds in seg:  # a SEG-like multi-segment object: the node must not analyze it
        ds.Modality, ds.SOPClassUID = "SEG", SEG
        ds.file_meta.MediaStorageSOPClassUID = UID(SEG)
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.SeriesDescription = "Segmentation from another tool"
        ds.Manufacturer = "Other Vendor"
    return seg


def own_outputs_only(seed: str) -> list[Dataset]:
    return [_document(seed, "SR", COMPREHENSIVE_SR, "Lung analysis (Neuro Radix)", MANUFACTURER)]


def localizer_only(seed: str) -> list[Dataset]:
    datasets = base_ct(seed, description="Topogram 0.6 T20f")[:2]
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return datasets


def derived_only(seed: str) -> list[Dataset]:
    datasets = base_ct(seed, description="Thorax 8mm reformat")
    for ds in datasets:
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    return datasets


def one_slice(seed: str) -> list[Dataset]:
    return base_ct(seed)[10:11]


def two_slices(seed: str) -> list[Dataset]:
    return base_ct(seed)[9:11]


def mixed_orientations(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    tilt = np.radians(3.0)
    for ds in datasets[10:]:
        ds.ImageOrientationPatient = ["1", "0", "0", "0", f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"]
    return datasets


def mixed_matrix_sizes(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets[::2]:
        small = _hu(ds)[::2, ::2]
        ds.Rows, ds.Columns = small.shape
        ds.PixelSpacing = ["11", "11"]
        ds.PixelData = small.astype("<i2").tobytes()
    return datasets


def non_axial(seed: str) -> list[Dataset]:
    volume = _phantom()
    array, affine = reorient(volume.array, volume.affine, (2, 0, 1), (False, False, False))  # sagittal slices
    return base_ct(seed, Volume(np.ascontiguousarray(array), affine), description="Thorax sagittal")[::4]


def thick_slices(seed: str) -> list[Dataset]:
    volume = _phantom()
    affine = volume.affine.copy()
    affine[:3, 0] *= 12.0 / SPACING[0]
    return base_ct(seed, Volume(volume.array, affine), description="Thorax 12mm")


def missing_geometry(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets:
        del ds.ImagePositionPatient
    return datasets


def enhanced_multiframe(seed: str) -> list[Dataset]:
    """One Enhanced CT Image Storage instance holding every slice as a frame (stored in position order)."""
    return [_enhanced(base_ct(seed), seed)]


def _enhanced(slices: list[Dataset], seed: str, frame_order=None) -> Dataset:
    ds = classic_to_enhanced_ct(slices, frame_order=frame_order, uid_seed=seed, series_description="Thorax enhanced")
    ds.Manufacturer = "Corpus Scanner"
    return ds


def enhanced_shuffled_frames(seed: str) -> list[Dataset]:
    """Enhanced CT whose frames are stored in no particular order: the node sorts them by position."""
    slices = base_ct(seed)
    order = np.random.default_rng(11).permutation(len(slices))
    return [_enhanced(slices, seed, frame_order=order)]


def enhanced_two_instances(seed: str) -> list[Dataset]:
    """A multi-frame series of two Enhanced CT instances (frames 1-10 and 11-20 of one stack)."""
    slices = base_ct(seed)
    first, second = _enhanced(slices[:10], seed), _enhanced(slices[10:], seed + "-2")
    second.SeriesInstanceUID = first.SeriesInstanceUID
    second.InstanceNumber = 2
    meta = second.file_meta
    second.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = UID(_uid(seed, "enhanced-second"))
    return [first, second]


# --- builders: broken enhanced CT ------------------------------------------------------------------
def enhanced_missing_frame(seed: str) -> list[Dataset]:
    """Enhanced CT with the frame of one slice left out (a gap in the frame positions)."""
    slices = base_ct(seed)
    del slices[10]
    return [_enhanced(slices, seed)]


def enhanced_mixed_orientations(seed: str) -> list[Dataset]:
    """Enhanced CT whose frames do not share one orientation (Plane Orientation per frame, half tilted)."""
    ds = _enhanced(base_ct(seed), seed)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0]
    del shared.PlaneOrientationSequence
    tilt = np.radians(3.0)
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item = copy.deepcopy(orientation)
        if index >= 10:
            item.ImageOrientationPatient = ["1", "0", "0", "0", f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"]
        frame.PlaneOrientationSequence = DicomSequence([item])
    return [ds]


def enhanced_localizer(seed: str) -> list[Dataset]:
    """An Enhanced CT whose frames are localizer (scout) frames, by Frame Type only (no telling description)."""
    ds = _enhanced(base_ct(seed), seed)
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.CTImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    return [ds]


# --- builders: broken series ------------------------------------------------------------------------
def missing_slice(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    del datasets[10]
    return datasets


def duplicate_positions(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    datasets[11].ImagePositionPatient = list(datasets[10].ImagePositionPatient)
    return datasets


def absurd_matrix(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets:
        ds.Rows = ds.Columns = 60000  # the header claims 7.2 GB per slice; the pixel data is 8 kB
    return datasets


def missing_pixel_data(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets:
        del ds.PixelData
    return datasets


def truncated_pixel_data(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets[5:8]:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return datasets


# --- builders: valid but unusual --------------------------------------------------------------------
def _with_syntax(syntax: str) -> Callable[[str], list[Dataset]]:
    def build(seed: str) -> list[Dataset]:
        datasets = base_ct(seed)
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = UID(syntax)
            if syntax == ExplicitVRBigEndian:
                ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
        return datasets

    return build


def _compressed(syntax: str, **kwargs) -> Callable[[str], list[Dataset]]:
    def build(seed: str) -> list[Dataset]:
        datasets = base_ct(seed)
        for ds in datasets:
            ds.compress(syntax, generate_instance_uid=False, **kwargs)
        return datasets

    return build


def unsigned_12bit(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets:
        _set_pixels(ds, np.clip(_hu(ds) + 1024, 0, 4095), 12, signed=False)
        ds.RescaleIntercept = "-1024"
    return datasets


def signed_12bit(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets:
        _set_pixels(ds, np.clip(_hu(ds), -2048, 2047), 12, signed=True)
    return datasets


def eight_bit(seed: str) -> list[Dataset]:
    """Stored values of 8 bits (slope 8): what a JPEG baseline (process 1) CT can hold."""
    datasets = base_ct(seed)
    for ds in datasets:
        _set_pixels(ds, np.clip((_hu(ds) + 1024) // 8, 0, 255), 8, signed=False, bits_allocated=8)
        ds.RescaleSlope, ds.RescaleIntercept = "8", "-1024"
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
    return datasets


def missing_rescale(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)  # stored values are HU already
    for ds in datasets:
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            del ds[keyword]
    return datasets


def slope_not_one(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    for ds in datasets:
        _set_pixels(ds, np.clip((_hu(ds) + 1024) // 2, 0, 32767), 16, signed=False)
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
    return datasets


def pixel_padding(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    rows, cols = SHAPE[1:]
    y, x = np.ogrid[:rows, :cols]
    outside = (y - (rows - 1) / 2) ** 2 + (x - (cols - 1) / 2) ** 2 > (rows / 2) ** 2
    for ds in datasets:
        stored = _hu(ds) + 1024
        stored[outside] = 0  # padding below air: -1024 HU once rescaled
        _set_pixels(ds, stored, 12, signed=False)
        ds.RescaleIntercept = "-1024"
        ds.PixelPaddingValue = 0
    return datasets


def _names(charset: str, patient: str, description: str) -> Callable[[str], list[Dataset]]:
    def build(seed: str) -> list[Dataset]:
        datasets = base_ct(seed)
        for ds in datasets:
            ds.SpecificCharacterSet = charset
            ds.PatientName = patient
            ds.SeriesDescription = description
            ds.StudyDescription = description
            ds.ReferringPhysicianName = patient
        return datasets

    return build


def gantry_tilt(seed: str) -> list[Dataset]:
    datasets = base_ct(seed)
    tilt = np.radians(15.0)
    for ds in datasets:  # the image plane tilts about x; the table still moves along z
        ds.ImageOrientationPatient = ["1", "0", "0", "0", f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"]
    return datasets


def head_first_reversed(seed: str) -> list[Dataset]:
    volume, _ = thorax_phantom(SHAPE, SPACING, seed=7, orientation="flipped-slices")
    datasets = base_ct(seed, volume)
    return datasets[::-1]


def _jittered(mm: float) -> Callable[[str], list[Dataset]]:
    """The base CT with each slice moved up to ``mm`` along z (first and last stay)."""

    def build(seed: str) -> list[Dataset]:
        datasets = base_ct(seed)
        jitter = np.random.default_rng(3).uniform(-mm, mm, len(datasets))
        jitter[[0, -1]] = 0.0
        for ds, dz in zip(datasets, jitter):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{z + dz:.4f}"]
        return datasets

    return build


def ct_with_localizer_and_dose_report(seed: str) -> list[Dataset]:
    ct = base_ct(seed)
    scout = base_ct(seed + "-scout", description="Topogram 0.6 T20f")[:2]
    for ds in scout:
        ds.StudyInstanceUID = ct[0].StudyInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesNumber = 1
    dose = _document(seed, "SR", XRAY_DOSE_SR, "Dose Report", "Corpus Scanner")
    return ct + scout + [dose]


def two_ct_series(seed: str) -> list[Dataset]:
    thick = base_ct(seed)
    volume, _ = thorax_phantom((40, *SHAPE[1:]), (4.0, *SPACING[1:]), seed=8)
    thin = base_ct(seed + "-thin", volume, description="Thorax 4mm")
    for ds in thin:
        ds.StudyInstanceUID = thick[0].StudyInstanceUID
        ds.SeriesNumber = 3
    return thick + thin


CASES: tuple[Case, ...] = (
    # not a CT to analyze: skipped with the reason
    Case("mr-only", _other_modality("MR", MR, 12, "T1 axial"), SKIPPED, "modality is not CT", "MR-only study"),
    Case("cr-only", _other_modality("CR", CR, 2, "Chest PA"), SKIPPED, "modality is not CT", "CR-only study"),
    Case("us-only", _other_modality("US", US, 3, "Abdomen"), SKIPPED, "modality is not CT", "US-only study"),
    Case("pet-only", _other_modality("PT", PT, 12, "PET WB"), SKIPPED, "modality is not CT", "PET-only study"),
    Case("sr-only", sr_only, SKIPPED, "modality is not CT", "SR-only study"),
    Case("seg-only", seg_only, SKIPPED, "modality is not CT", "SEG-only study"),
    Case(
        "own-outputs-only",
        own_outputs_only,
        NOT_HANDED_OFF,
        "only this node's own results",
        "a study holding only the node's own outputs",
    ),
    Case("localizer-only", localizer_only, SKIPPED, "marks a localizer", "localizer (topogram) only"),
    Case("derived-only", derived_only, SKIPPED, "is not ORIGINAL", "DERIVED/SECONDARY reformat only"),
    Case("one-slice", one_slice, SKIPPED, "1 slices, fewer than 10", "1 slice"),
    Case("two-slices", two_slices, SKIPPED, "2 slices, fewer than 10", "2 slices"),
    Case("mixed-orientations", mixed_orientations, SKIPPED, "mixed orientations", "mixed orientations in a series"),
    Case("mixed-matrix-sizes", mixed_matrix_sizes, SKIPPED, "mixed image sizes", "mixed matrix sizes in a series"),
    Case("non-axial", non_axial, SKIPPED, "not axial", "sagittal acquisition"),
    Case("thick-slices", thick_slices, SKIPPED, "slice spacing 12.0 mm is above", "12 mm slice spacing"),
    Case("missing-geometry", missing_geometry, SKIPPED, "lack ImageOrientationPatient", "no ImagePositionPatient"),
    Case(
        "enhanced-localizer",
        enhanced_localizer,
        SKIPPED,
        "frame type contains ['LOCALIZER']",
        "Enhanced CT whose frames are LOCALIZER (Frame Type)",
    ),
    Case(
        "enhanced-mixed-orientations",
        enhanced_mixed_orientations,
        SKIPPED,
        "mixed orientations within the series (ImageOrientationPatient differs between frames)",
        "Enhanced CT, frames of two orientations",
    ),
    # broken series: failed with the reason
    Case(
        "enhanced-missing-frame",
        enhanced_missing_frame,
        FAILED,
        "missing slices: a gap of 16.00 mm",
        "Enhanced CT with one frame missing",
    ),
    Case("missing-slice", missing_slice, FAILED, "missing slices", "a missing slice"),
    Case("duplicate-positions", duplicate_positions, FAILED, "share one position", "two slices at one position"),
    Case("absurd-rows-columns", absurd_matrix, FAILED, "60000", "Rows/Columns 60000 with 64x64 pixel data"),
    Case("uneven-spacing", _jittered(2.0), FAILED, "not evenly spaced", "slice positions off by up to 2 mm"),
    Case("missing-pixel-data", missing_pixel_data, FAILED, "has no pixel data", "no PixelData"),
    Case(
        "truncated-pixel-data",
        truncated_pixel_data,
        FAILED,
        "pixel data of instance 6 is corrupt",
        "PixelData half as long as Rows x Columns",
    ),
    # valid but unusual: analyzed
    Case("gantry-tilt", gantry_tilt, SUCCEEDED, "gantry tilt", "15 degree gantry tilt"),
    Case("head-first-reversed", head_first_reversed, SUCCEEDED, "", "slices stored superior to inferior"),
    Case("enhanced-multiframe-ct", enhanced_multiframe, SUCCEEDED, "", "Enhanced CT (one instance, 20 frames)"),
    Case(
        "enhanced-shuffled-frames",
        enhanced_shuffled_frames,
        SUCCEEDED,
        "",
        "Enhanced CT, frames stored in shuffled order",
    ),
    Case(
        "enhanced-two-instances",
        enhanced_two_instances,
        SUCCEEDED,
        "",
        "multi-frame series of two Enhanced CT instances (10 + 10 frames)",
    ),
    Case(
        "variable-spacing", _jittered(0.15), SUCCEEDED, "slice spacing varies", "slice positions off by up to 0.15 mm"
    ),
    Case(
        "ct-with-localizer-and-dose",
        ct_with_localizer_and_dose_report,
        SUCCEEDED,
        "",
        "CT + topogram + dose report",
    ),
    Case("two-ct-series", two_ct_series, SUCCEEDED, "", "two CT series (8 mm and 4 mm)"),
    Case("jpeg-baseline", eight_bit, SUCCEEDED, "lossy compressed", "JPEG baseline (8 bit)", ("dcmcjpeg", "+eb")),
    Case(
        "jpeg-extended",
        unsigned_12bit,
        SUCCEEDED,
        "lossy compressed",
        "JPEG extended (12 bit, lossy)",
        ("dcmcjpeg", "+ee"),
    ),
    Case(
        "jpeg-lossy-derived",
        eight_bit,
        SKIPPED,
        "image type DERIVED/PRIMARY/AXIAL is not ORIGINAL",
        "JPEG baseline marked DERIVED by the compressor",
        ("dcmcjpeg", "+eb"),
        lossy_derived=True,
    ),
    Case("jpeg-lossless", unsigned_12bit, SUCCEEDED, "", "JPEG lossless SV1", ("dcmcjpeg", "+e1")),
    Case("jpeg-ls", _compressed(JPEGLSLossless), SUCCEEDED, "", "JPEG-LS lossless"),
    Case("jpeg-2000", _compressed(JPEG2000Lossless), SUCCEEDED, "", "JPEG 2000 lossless"),
    Case("rle", _compressed(RLELossless), SUCCEEDED, "", "RLE lossless"),
    Case("deflated", _with_syntax(DeflatedExplicitVRLittleEndian), SUCCEEDED, "", "deflated explicit VR"),
    Case("big-endian", _with_syntax(ExplicitVRBigEndian), SUCCEEDED, "", "explicit VR big endian"),
    Case("implicit-vr", _with_syntax(ImplicitVRLittleEndian), SUCCEEDED, "", "implicit VR little endian"),
    Case("missing-rescale", missing_rescale, SUCCEEDED, "", "no RescaleSlope/Intercept (values are HU)"),
    Case("slope-not-1", slope_not_one, SUCCEEDED, "", "RescaleSlope 2"),
    Case("pixel-padding", pixel_padding, SUCCEEDED, "", "PixelPaddingValue outside the field of view"),
    Case("unsigned-12bit", unsigned_12bit, SUCCEEDED, "", "unsigned 12 bit, intercept -1024"),
    Case("signed-12bit", signed_12bit, SUCCEEDED, "", "signed 12 bit, intercept 0"),
    Case(
        "latin1-names",
        _names("ISO_IR 100", "Müller^Jörg", "Thorax nativ Übersicht"),
        SUCCEEDED,
        "",
        "non-ASCII names, ISO_IR 100",
    ),
    Case(
        "utf8-names",
        _names("ISO_IR 192", "山田^太郎", "Грудная клетка Ωμέγα"),
        SUCCEEDED,
        "",
        "non-ASCII names, ISO_IR 192",
    ),
)

#: the good study sent after the corpus
GOOD = Case("good", base_ct, SUCCEEDED, "", "the base chest CT")


def write_case(case: Case, out_dir: Path, seed: str = "corpus") -> list[Path]:
    """Write ``case`` as Part 10 files in ``out_dir`` (created), re-encoded by ``case.tool`` if any."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(case.build(f"{seed}-{case.name}")):
        path = out_dir / f"{index:04d}.dcm"
        syntax = ds.file_meta.TransferSyntaxUID
        little = syntax != ExplicitVRBigEndian
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=little)
        if case.tool:
            tool = shutil.which(case.tool[0])
            if tool is None:
                raise RuntimeError(f"{case.tool[0]} (dcmtk) is needed for case {case.name}")
            subprocess.run([tool, *case.tool[1:], "+un", str(path), str(path)], check=True, capture_output=True)
            if not case.lossy_derived:
                encoded = pydicom.dcmread(path)
                encoded.ImageType = ds.ImageType
                encoded.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_corpus(out_dir: Path, seed: str = "corpus") -> dict[str, list[Path]]:
    """Write every case (and the good study) under ``out_dir/<case name>/``."""
    return {case.name: write_case(case, out_dir / case.name, seed) for case in (*CASES, GOOD)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", default="corpus", help="UIDs derive from it (a new seed, new studies)")
    args = parser.parse_args(argv)
    written = write_corpus(args.out_dir, args.seed)
    for case in (*CASES, GOOD):
        print(f"{case.name:28s} {len(written[case.name]):3d} file(s)  expect {case.state}: {case.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
