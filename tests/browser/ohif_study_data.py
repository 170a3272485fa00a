"""The study the OHIF test opens: a real chest CT and the node's result objects for it.

:func:`build_processed_study` is the one place that makes the data. It takes the real
contrast chest CT (``thorax_ct_1.5mm.nii.gz``, 191 slices of 167 x 233 at 1.5 mm), writes it as
a DICOM CT series and adds, in the same study:

* a BINARY SEG with "Left lung" and "Right lung",
* a Parametric Map of an attention map, on the CT grid (OHIF 3.13 overlays a parametric map
  only when it has the CT's rows, columns and slices),
* an Encapsulated PDF report.

It uses the node's own code wherever it exists (``LungAnalyzer``, ``encode_result``, the
``seg``/``pmap``/``pdf`` writers) and otherwise a stand-in written here, so the browser test
exercises the real writers as they land. Once the node can process a study end to end, the
``processed_study`` fixture in ``conftest.py`` can take a study the node processed itself instead.
"""
from __future__ import annotations

import datetime
import importlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from scipy import ndimage

from neuroradix.dicom.ctseries import nifti_to_volume, volume_to_ct_series
from neuroradix.dicom.common import OutputContext
from neuroradix.schemes import load_scheme
from neuroradix.types import AnalyzerInfo, AttentionMap, Code, Finding, StudyResult, Volume
from neuroradix.uids import derive_uid

logger = logging.getLogger(__name__)

REAL_CT = Path("/work/shared/data/real-ct/thorax_ct_1.5mm.nii.gz")
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LUNG_LABELS = {"Left lung": 2, "Right lung": 3}  # labels of the lung-hu-4 scheme


@dataclass(frozen=True)
class ProcessedStudy:
    """What the browser test needs to know about the study it opens."""

    study_uid: str
    ct_series_uid: str
    seg_series_uid: str
    pmap_series_uid: str
    pdf_series_uid: str
    segment_labels: tuple[str, ...]  # SegmentLabel values the SEG holds
    made_by: str  # which code made the results, for the test log


def _optional(module: str, name: str):
    """``module.name`` when that part of the node exists yet, else ``None``."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


# --------------------------------------------------------------------------- stand-ins
def stand_in_result(volume: Volume) -> StudyResult:
    """Lungs by HU threshold and an attention blob in the right lower lung (for when the node's
    ``LungAnalyzer`` is not there yet). Same scheme and segment names as the node's analyzer."""
    hu = volume.array
    body = ndimage.binary_opening(hu > -400, iterations=2)
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air = (hu < -400) & body
    air = ndimage.binary_opening(air, iterations=1)
    components, count = ndimage.label(air)
    sizes = ndimage.sum(air, components, index=np.arange(1, count + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    lungs = np.isin(components, keep)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    x = volume.index_to_patient(np.argwhere(lungs))[:, 0]
    midline = float(np.median(x))
    idx = np.argwhere(lungs)
    left = x > midline  # LPS: +x is the patient's left
    labels[tuple(idx[left].T)] = LUNG_LABELS["Left lung"]
    labels[tuple(idx[~left].T)] = LUNG_LABELS["Right lung"]

    scheme = load_scheme("lung-hu-4")
    segments = tuple(s for s in scheme.segments if s.label in LUNG_LABELS.values())
    # Attention on a grid twice as coarse, a Gaussian around the right lung's lower third.
    right = np.argwhere(labels == LUNG_LABELS["Right lung"])
    centre = np.array([np.percentile(right[:, 0], 25), right[:, 1].mean(), right[:, 2].mean()])
    coarse = tuple(int(np.ceil(n / 2)) for n in volume.shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) * 2.0 for n in coarse], indexing="ij"), axis=-1)
    sigma = np.array([18.0, 20.0, 20.0])
    heat = np.exp(-0.5 * np.sum(((grid - centre) / sigma) ** 2, axis=-1)).astype(np.float32)
    affine = volume.affine.copy()
    affine[:3, :3] *= 2.0
    attention = AttentionMap(
        name="Consolidation",
        array=heat,
        affine=affine,
        quantity=Code("NRX0001", "99NRX", "Attention weight"),
        unit=Code("1", "UCUM", "no units"),
    )
    finding = Finding(name="Consolidation", probability=0.81, code=Code("95436008", "SCT", "Lung consolidation"),
                      site=Code("3341006", "SCT", "Right lung"), attention_index=0)
    return StudyResult(
        analyzer=AnalyzerInfo(name="browser-fixture", version="0", title="OHIF test fixture"),
        labels=labels,
        segments=segments,
        findings=(finding,),
        report_text="Test fixture for the OHIF browser check. Not a diagnosis.",
        attention=(attention,),
    )


def stand_in_pdf(source: Dataset, text: str) -> Dataset:
    """An Encapsulated PDF in ``source``'s study (for when the node's PDF writer is not there)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=A4)
    page.setFont("Helvetica-Bold", 20)
    page.drawString(72, 770, "Neuro Radix - OHIF test report")
    page.setFont("Helvetica", 12)
    page.drawString(72, 740, text)
    page.drawString(72, 720, "Not for diagnostic use.")
    page.showPage()
    page.save()
    data = buffer.getvalue()
    if len(data) % 2:
        data += b"\0"

    series_uid = derive_uid("browser-fixture-pdf", source.StudyInstanceUID)
    sop_uid = derive_uid("browser-fixture-pdf", series_uid, "1")
    now = datetime.datetime(2000, 1, 1, 12, 0, 0)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription"):
        setattr(ds, key, source.get(key, ""))
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 9003
    ds.SeriesDescription = "Neuro Radix report (test fixture)"
    ds.Manufacturer = "Neuro Radix"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Neuro Radix report"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = data
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


# --------------------------------------------------------------------------- the study
def _encode(result: StudyResult, ctx: OutputContext) -> tuple[list[Dataset], list[str]]:
    """Result objects by the node's writers where they exist; returns ``(datasets, notes)``."""
    encode_result = _optional("neuroradix.dicom.encode", "encode_result")
    if encode_result is not None:
        encoded = encode_result(result, ctx)
        datasets = list(encoded.values()) if isinstance(encoded, dict) else list(encoded)
        flat: list[Dataset] = []
        for item in datasets:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        return [d for d in flat if d is not None], ["encode_result"]
    notes, datasets = [], []
    build_seg = _optional("neuroradix.dicom.seg", "build_seg")
    build_pmaps = _optional("neuroradix.dicom.pmap", "build_pmaps")
    build_pdf = _optional("neuroradix.dicom.pdf", "build_pdf")
    if build_seg is None or build_pmaps is None:
        raise RuntimeError("the node's SEG and Parametric Map writers are missing")
    datasets.append(build_seg(result, ctx))
    datasets.extend(build_pmaps(result, ctx))
    notes.append("seg.build_seg + pmap.build_pmaps")
    if build_pdf is not None:
        datasets.append(build_pdf(result, ctx))
        notes.append("pdf.build_pdf")
    else:
        datasets.append(stand_in_pdf(ctx.source[0], result.report_text[:80]))
        notes.append("stand-in PDF")
    return datasets, notes


def build_processed_study(ct_path: Path = REAL_CT) -> tuple[list[Dataset], ProcessedStudy]:
    """Build the CT series and its result objects (all in one study), ready to upload.

    Returns
    -------
    datasets, study
        Every instance (CT slices first), and the UIDs the test looks for.
    """
    volume = nifti_to_volume(ct_path)
    source = volume_to_ct_series(volume, uid_seed="neuroradix-ohif-browser-test",
                                 series_description="Chest CT 1.5 mm", study_description="CT chest (OHIF test)")
    analyzer_class = _optional("neuroradix.analyzers.lung", "LungAnalyzer")
    if analyzer_class is not None:
        result, made_by = analyzer_class().analyze(volume), ["LungAnalyzer"]
    else:
        result, made_by = stand_in_result(volume), ["stand-in lung threshold result"]
    ctx = OutputContext(source=source, volume=volume, pipeline_version="ohif-browser-test",
                        software_version="0", pmap_grid="SOURCE")
    outputs, notes = _encode(result, ctx)

    def series_of(sop_class: str) -> Optional[Dataset]:
        return next((d for d in outputs if d.SOPClassUID == sop_class), None)

    seg, pmap, pdf = (series_of(c) for c in (SEGMENTATION_STORAGE, PARAMETRIC_MAP_STORAGE, ENCAPSULATED_PDF_STORAGE))
    if seg is None or pmap is None or pdf is None:
        raise RuntimeError(f"expected a SEG, a Parametric Map and a PDF, got {[d.SOPClassUID for d in outputs]}")
    study = ProcessedStudy(
        study_uid=str(source[0].StudyInstanceUID),
        ct_series_uid=str(source[0].SeriesInstanceUID),
        seg_series_uid=str(seg.SeriesInstanceUID),
        pmap_series_uid=str(pmap.SeriesInstanceUID),
        pdf_series_uid=str(pdf.SeriesInstanceUID),
        segment_labels=tuple(str(s.SegmentLabel) for s in seg.SegmentSequence),
        made_by=", ".join(made_by + notes),
    )
    logger.info("OHIF test study built by %s", study.made_by)
    return [*source, *outputs], study


def to_part10(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory (for ``POST /instances``)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
