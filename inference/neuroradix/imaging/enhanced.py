"""Turn a classic CT series (one instance per slice) into one Enhanced CT Image Storage instance.

Scanners of today (Siemens XA, Philips, newer GE) send thin-slice CT as Enhanced CT: one multi-frame
instance whose per-frame and shared functional groups carry each frame's geometry and rescale. The
node reads them (:mod:`neuroradix.imaging.frames`, :mod:`neuroradix.imaging.volume`); this module
writes them, for tests and for a user who wants to try the node with an Enhanced CT of their own
series (``python -m neuroradix.samples.enhanced_ct``).

:func:`classic_to_enhanced_ct` keeps the patient, study, series, frame of reference and pixel values
of the classic series (stored values and each slice's rescale), and writes the complete Enhanced CT
Image IOD (PS3.3 A.38) that ``dciodvfy`` accepts. The acquisition functional groups that an ORIGINAL
image must carry (CT Acquisition Details, Table Dynamics, Geometry, Exposure, X-Ray Details) hold
plausible values that are not the scan's: a classic series does not hold them all. highdicom's
``LegacyConvertedEnhancedCTImage`` writes the other multi-frame CT class (Legacy Converted Enhanced
CT Image Storage, which the node reads too); it does not write Enhanced CT Image Storage, so the
IOD is built here with pydicom.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from neuroradix.errors import BadInputError
from neuroradix.imaging.frames import ENHANCED_CT_IMAGE_STORAGE
from neuroradix.uids import derive_uid

logger = logging.getLogger(__name__)

FRAME_TYPE = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
"""ImageType and FrameType of the frames written (value 3, the image flavor, LOCALIZER marks a scout)."""

_COPIED = (
    "SpecificCharacterSet",
    # Patient
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    # General Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    # General Series / CT Series
    "Modality",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "PatientPosition",
    "BodyPartExamined",
    # Frame of Reference
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    # General Equipment
    "InstitutionName",
    "StationName",
)


_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SeriesNumber",
    "PatientPosition",
    "PositionReferenceIndicator",
)


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _shared_groups(first: Dataset, thickness: float) -> Dataset:
    """The functional groups every frame shares (orientation, pixel measures, acquisition)."""
    frame_type = list(FRAME_TYPE)
    kvp = str(first.get("KVP", "") or "120")
    return _item(
        PixelMeasuresSequence=_seq(
            _item(PixelSpacing=list(first.PixelSpacing), SliceThickness=f"{thickness:.6g}"),
        ),
        PlaneOrientationSequence=_seq(_item(ImageOrientationPatient=list(first.ImageOrientationPatient))),
        FrameAnatomySequence=_seq(
            _item(AnatomicRegionSequence=_seq(_code("51185008", "SCT", "Thorax")), FrameLaterality="U")
        ),
        CTImageFrameTypeSequence=_seq(
            _item(
                FrameType=frame_type,
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
            )
        ),
        CTAcquisitionTypeSequence=_seq(_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")),
        CTAcquisitionDetailsSequence=_seq(
            _item(
                DataCollectionDiameter=500,
                GantryDetectorTilt=0,
                TableHeight=150,
                RotationDirection="CW",
                RevolutionTime=0.5,
                SingleCollimationWidth=0.625,
                TotalCollimationWidth=40,
            )
        ),
        CTTableDynamicsSequence=_seq(_item(TableSpeed=80, TableFeedPerRotation=40, SpiralPitchFactor=1)),
        CTGeometrySequence=_seq(_item(DistanceSourceToDetector=1040, DistanceSourceToDataCollectionCenter=570)),
        CTReconstructionSequence=_seq(
            _item(
                ReconstructionAlgorithm="FILTER_BACK_PROJ",
                ConvolutionKernel=str(first.get("ConvolutionKernel", "") or "STANDARD"),
                ConvolutionKernelGroup="SOFT_TISSUE",
                ReconstructionFieldOfView=[
                    float(first.PixelSpacing[0]) * int(first.Rows),
                    float(first.PixelSpacing[1]) * int(first.Columns),
                ],
                ReconstructionPixelSpacing=list(first.PixelSpacing),
                ReconstructionAngle=360,
                ImageFilter="NONE",
            )
        ),
        CTExposureSequence=_seq(
            _item(ExposureTimeInms=500, XRayTubeCurrentInmA=200, ExposureInmAs=100, ExposureModulationType="NONE")
        ),
        CTXRayDetailsSequence=_seq(_item(KVP=kvp, FocalSpots=[1.2], FilterType="BODY", FilterMaterial=["ALUMINUM"])),
        IrradiationEventIdentificationSequence=_seq(
            _item(IrradiationEventUID=derive_uid("neuroradix-enhanced-ct", str(first.SeriesInstanceUID), "event"))
        ),
    )


def _sorted_slices(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The slices in position order along the first slice's normal (no other check: gaps may be wanted)."""
    try:
        iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
        along = [
            float(np.dot([float(v) for v in ds.ImagePositionPatient], np.cross(iop[:3], iop[3:]))) for ds in datasets
        ]
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadInputError(f"slice geometry attributes missing or invalid: {exc}") from exc
    return [datasets[i] for i in np.argsort(along, kind="stable")]


def classic_to_enhanced_ct(
    datasets: Sequence[Dataset],
    *,
    frame_order: Optional[Sequence[int]] = None,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
    series_description: Optional[str] = None,
    uid_seed: Optional[str] = None,
) -> Dataset:
    """One Enhanced CT Image Storage instance holding every slice of a classic CT series as a frame.

    Parameters
    ----------
    datasets:
        The classic series (CT Image Storage, one slice per instance, with pixel data), in any order.
    frame_order:
        Which slice (in position order, inferior to superior along the normal) each stored frame is:
        ``frame_order[f]`` is the slice of frame ``f + 1``. Default: position order. A permutation
        stores the frames shuffled (the node must sort them by position).
    series_uid, sop_uid:
        UIDs of the new instance and its series; by default derived from ``uid_seed`` and the
        source series UID (or random without a seed). The study and frame of reference are kept.
    series_description:
        Default: the source's, with " (Enhanced CT)" appended.
    uid_seed:
        Makes the generated UIDs repeatable.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` (Explicit VR Little Endian) set; ``save_as(path, enforce_file_format=True)``
        writes it.

    Raises
    ------
    ValueError
        ``frame_order`` is not a permutation of the slices.
    BadInputError
        Slices without ImageOrientationPatient/ImagePositionPatient, or differing in BitsAllocated /
        PixelRepresentation. Nothing else is checked: a series with a gap makes an Enhanced CT with
        a gap (test input).
    """
    if not datasets:
        raise ValueError("datasets must hold at least one CT slice")
    slices = _sorted_slices(datasets)
    n = len(slices)
    if frame_order is None:
        frame_order = list(range(n))
    frame_order = [int(i) for i in frame_order]
    if sorted(frame_order) != list(range(n)):
        raise ValueError(f"frame_order must be a permutation of range({n})")
    first = slices[0]
    if len({(int(ds.BitsAllocated), int(ds.PixelRepresentation)) for ds in slices}) != 1:
        raise BadInputError("slices differ in BitsAllocated/PixelRepresentation")

    source_series = str(first.SeriesInstanceUID)

    def uid(kind: str) -> str:
        return derive_uid("neuroradix-enhanced-ct", uid_seed, source_series, kind) if uid_seed else generate_uid()

    series_uid = series_uid or uid("series")
    sop_uid = sop_uid or uid("instance")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    thickness = float(np.linalg.norm(positions[-1] - positions[0]) / max(n - 1, 1)) if n > 1 else 1.0
    thickness = float(first.get("SliceThickness", thickness) or thickness)

    ds = Dataset()
    for keyword in _COPIED:
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    for keyword in _TYPE_2:  # present, empty when the source does not say
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.SOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.SeriesDescription = series_description or f"{first.get('SeriesDescription', 'CT')} (Enhanced CT)"[:64]
    date = str(first.get("ContentDate", "") or first.get("StudyDate", "") or "20000101")
    time = str(first.get("ContentTime", "") or first.get("StudyTime", "") or "120000")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Enhanced General Equipment
    ds.Manufacturer = str(first.get("Manufacturer", "") or "Neuro Radix sample converter")
    ds.ManufacturerModelName = "classic_to_enhanced_ct"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = str(first.get("SoftwareVersions", "") or "1")
    # Enhanced CT Image
    ds.ImageType = list(FRAME_TYPE)
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = f"{date}{time}"
    ds.AcquisitionDuration = 5.0
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = DicomSequence([])
    # Multi-frame Functional Groups
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.NumberOfFrames = n
    # Multi-frame Dimension: stack and position in it
    organization = uid("dimension-organization")
    ds.DimensionOrganizationSequence = _seq(_item(DimensionOrganizationUID=organization))
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = _seq(
        _item(
            DimensionOrganizationUID=organization,
            DimensionIndexPointer=0x00209056,  # Stack ID
            FunctionalGroupPointer=0x00209111,  # Frame Content Sequence
            DimensionDescriptionLabel="Stack ID",
        ),
        _item(
            DimensionOrganizationUID=organization,
            DimensionIndexPointer=0x00209057,  # In-Stack Position Number
            FunctionalGroupPointer=0x00209111,
            DimensionDescriptionLabel="In-Stack Position Number",
        ),
    )
    ds.SharedFunctionalGroupsSequence = _seq(_shared_groups(first, thickness))
    per_frame = []
    for slice_index in frame_order:
        source = slices[slice_index]
        position = [float(v) for v in source.ImagePositionPatient]
        per_frame.append(
            _item(
                FrameContentSequence=_seq(
                    _item(
                        FrameAcquisitionNumber=1,
                        FrameReferenceDateTime=f"{date}{time}",
                        FrameAcquisitionDateTime=f"{date}{time}",
                        FrameAcquisitionDuration=500.0,
                        StackID="1",
                        InStackPositionNumber=slice_index + 1,
                        DimensionIndexValues=[1, slice_index + 1],
                    )
                ),
                PlanePositionSequence=_seq(_item(ImagePositionPatient=[f"{v:.10g}" for v in position])),
                CTPositionSequence=_seq(
                    _item(
                        TablePosition=position[2],
                        ReconstructionTargetCenterPatient=position,
                        DataCollectionCenterPatient=position,
                    )
                ),
                PixelValueTransformationSequence=_seq(
                    _item(
                        RescaleIntercept=f"{float(source.get('RescaleIntercept', 0) or 0):.10g}",
                        RescaleSlope=f"{float(source.get('RescaleSlope', 1) or 1):.10g}",
                        RescaleType="HU",
                    )
                ),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(first.Rows), int(first.Columns)
    ds.BitsAllocated = int(first.BitsAllocated)
    ds.BitsStored = int(first.get("BitsStored", first.BitsAllocated))
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(first.PixelRepresentation)
    frames = [np.ascontiguousarray(slices[i].pixel_array) for i in frame_order]
    dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
    ds.PixelData = b"".join(frame.astype(dtype, copy=False).tobytes() for frame in frames)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENHANCED_CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    logger.info("built an Enhanced CT instance of %d frames (%dx%d)", n, ds.Rows, ds.Columns)
    return ds


__all__ = ["FRAME_TYPE", "classic_to_enhanced_ct"]
