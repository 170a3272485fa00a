"""Encapsulated PDF report from a :class:`~neuroradix.types.StudyResult`.

:func:`render_pdf_bytes` lays out one readable report with reportlab: patient and
study identifiers, the findings with their probabilities, the measurements, the report
text, key images (axial and coronal planes through the lungs in a lung window, with
the segmentation and the attention map blended in, radiological display convention),
the model name and version, "Not for diagnostic use" on every page, and an
"UNTRAINED - TEST OUTPUT" banner on every page when the analyzer ran random weights.
:func:`build_pdf` wraps it in an Encapsulated PDF Storage instance (Modality DOC) in
the source study, built with pydicom because highdicom has no encapsulated-document
class.
"""

from __future__ import annotations

import datetime
import io
import logging
from dataclasses import dataclass
from typing import Optional
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image as PILImage
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from scipy import ndimage

from neuroradix import MANUFACTURER
from neuroradix.types import AttentionMap, Measurement, StudyResult, Volume
from neuroradix.writers.common import (
    NOT_FOR_DIAGNOSIS,
    UNTRAINED_MARK,
    ObjectKind,
    OutputContext,
    ascii_text,
    check_result,
    finish_dataset,
    output_uids,
    series_description,
    series_number,
    short_string,
)
from neuroradix.writers.pmap import resample_onto

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"

# Patient and study attributes copied from the source (Type 2 ones written empty if absent).
_COPIED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_UNIT_TEXT = {"[hnsf'U]": "HU", "1": "", "%": "%", "mL": "mL", "mm": "mm"}
_COPIED_OPTIONAL = (
    "SpecificCharacterSet",
    "IssuerOfPatientID",
    "PatientAge",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
    "OtherPatientIDsSequence",
)


# --------------------------------------------------------------------------- key images

LUNG_WINDOW = (-600.0, 1500.0)  # level, width in HU
_DEFAULT_COLORS = [(230, 60, 60), (60, 160, 230), (230, 160, 0), (120, 220, 120), (200, 120, 220)]


@dataclass(frozen=True)
class KeyImage:
    """An RGB image, the physical size of one pixel (row, column mm) and a caption."""

    rgb: np.ndarray
    pixel_mm: tuple[float, float]
    caption: str


def _canonical(volume: Volume) -> tuple[list[int], list[bool]]:
    """For canonical axes (Z from superior, Y from anterior, X from patient right):
    the volume axis each one reads and whether it runs backwards."""
    dirs = volume.directions  # columns: slice, row, column axes in LPS
    order: list[int] = []
    flips: list[bool] = []
    for patient_axis, ascending in ((2, False), (1, True), (0, True)):
        weights = np.abs(dirs[patient_axis]).copy()
        weights[order] = -1.0  # each volume axis used once
        axis = int(np.argmax(weights))
        order.append(axis)
        flips.append(bool((dirs[patient_axis, axis] > 0) != ascending))
    return order, flips


def _plane_grid(volume: Volume, view: str, position: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An axial or coronal plane as a one-slice grid: the 4x4 matrix from its indices
    ``(0, row, column, 1)`` to volume indices, and its ``(rows, columns)``."""
    order, flips = _canonical(volume)
    n = [volume.shape[a] for a in order]  # canonical sizes Z, Y, X
    fixed, down, across = (0, 1, 2) if view == "axial" else (1, 0, 2)  # canonical axis of each plane axis
    grid = np.zeros((4, 4))
    grid[3, 3] = 1.0
    for plane_axis, c in enumerate((fixed, down, across)):
        start = position if plane_axis == 0 else 0  # canonical coordinate at plane index 0
        grid[order[c], plane_axis] = -1.0 if flips[c] else 1.0
        grid[order[c], 3] = (n[c] - 1 - start) if flips[c] else start
    return grid, (n[down], n[across])


def _plane_indices(volume: Volume, view: str, position: int) -> np.ndarray:
    """Volume indices ``(H, W, 3)`` of the pixels of an axial or coronal plane."""
    grid, (height, width) = _plane_grid(volume, view, position)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    index = rows[..., None] * grid[:3, 1] + cols[..., None] * grid[:3, 2] + grid[:3, 3]
    return np.rint(index).astype(np.int64)


def _pixel_mm(volume: Volume, view: str) -> tuple[float, float]:
    order, _ = _canonical(volume)
    spacing = volume.spacing
    return (
        (float(spacing[order[1]]), float(spacing[order[2]]))
        if view == "axial"
        else (float(spacing[order[0]]), float(spacing[order[2]]))
    )


def _grey(hu: np.ndarray) -> np.ndarray:
    level, width = LUNG_WINDOW
    grey = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=2)


def _sample_attention(amap: AttentionMap, volume: Volume, view: str, position: int) -> np.ndarray:
    """The attention map on a plane (trilinear, zero outside the map)."""
    grid, plane_shape = _plane_grid(volume, view, position)
    return resample_onto(amap, volume.affine @ grid, (1, *plane_shape))[0]


def _blend_labels(rgb: np.ndarray, labels: np.ndarray, result: StudyResult) -> np.ndarray:
    out = rgb.copy()
    for i, desc in enumerate(result.segments):
        mask = labels == desc.label
        if not mask.any():
            continue
        color = np.array(desc.color or _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)], dtype=np.float64) / 255.0
        edge = mask & ~ndimage.binary_erosion(mask)
        if mask.mean() < 0.3:  # large segments (the body) only get an outline
            out[mask] = 0.6 * out[mask] + 0.4 * color
        out[edge] = color
    return out


def _blend_heat(rgb: np.ndarray, values: np.ndarray, display_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Red (low) to yellow (high): relative to the maximum, or from floor to top of ``display_range``
    (nothing below the floor)."""
    if display_range is not None:
        floor, top = display_range
        v = np.clip((values - floor) / (top - floor), 0.0, 1.0)
        alpha = np.where(values >= floor, 0.25 + 0.45 * v, 0.0)[..., None]
    else:
        high = float(values.max()) if values.size else 0.0
        if high <= 0:
            return rgb
        v = np.clip(values / high, 0.0, 1.0)
        alpha = (np.clip((v - 0.15) / 0.85, 0.0, 1.0) * 0.6)[..., None]
    heat = np.stack([np.ones_like(v), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)  # red to yellow
    return rgb * (1 - alpha) + heat * alpha


def _heat_legend(result: StudyResult) -> str:
    """How the attention overlay is coloured, and why the map differs from the default (its note)."""
    amap = result.attention[0] if result.attention else None
    if amap is None or amap.display_range is None:
        return "attention from dark red (low) to yellow (high)."
    floor, top = amap.display_range
    text = f"{amap.name} from red ({floor:.0%}) to yellow ({top:.0%} and above); " f"below {floor:.0%} not coloured."
    if amap.note:
        text += f" Map {amap.note} (wider neighbourhood because of the scan-quality warnings)."
    return text.replace("%", " %")


def _label_mask(labels: np.ndarray, values: list[int]) -> np.ndarray:
    """``numpy.isin(labels, values)``; for a few values, comparisons are three times faster."""
    if len(values) > 8:
        return np.isin(labels, values)
    mask = np.zeros(labels.shape, dtype=bool)
    for value in values:
        mask |= labels == value
    return mask


def _lung_labels(result: StudyResult) -> list[int]:
    lungs = [s.label for s in result.segments if "lung" in s.name.lower()]
    return lungs or [s.label for s in result.segments]


def key_images(result: StudyResult, volume: Volume, max_images: int = 4) -> list[KeyImage]:
    """Axial and coronal planes through the lungs with the segmentation, then the same
    planes with the first attention map (when there is one)."""
    order, flips = _canonical(volume)
    mask = _label_mask(result.labels, _lung_labels(result))
    if not mask.any():
        mask = np.ones(volume.shape, dtype=bool)
    canon_mask = np.transpose(mask, order)
    for c, flip in enumerate(flips):
        if flip:
            canon_mask = np.flip(canon_mask, axis=c)
    z = int(np.argmax(canon_mask.sum(axis=(1, 2))))
    y = int(np.argmax(canon_mask.sum(axis=(0, 2))))
    planes = [("axial", z), ("coronal", y)]
    images: list[KeyImage] = []
    amap = result.attention[0] if result.attention else None
    for overlay in ("seg", "attention"):
        if overlay == "attention" and amap is None:
            continue
        for view, position in planes:
            index = _plane_indices(volume, view, position)
            flat = tuple(index[..., a] for a in range(3))
            rgb = _grey(volume.array[flat].astype(np.float64))
            if overlay == "seg":
                rgb = _blend_labels(rgb, result.labels[flat], result)
                caption = f"{view.capitalize()}, segmentation"
            elif amap is not None:
                rgb = _blend_heat(rgb, _sample_attention(amap, volume, view, position), amap.display_range)
                caption = f"{view.capitalize()}, attention: {amap.name}" + (f" ({amap.note})" if amap.note else "")
            images.append(KeyImage((np.clip(rgb, 0, 1) * 255).astype(np.uint8), _pixel_mm(volume, view), caption))
    return images[:max_images]


# --------------------------------------------------------------------------- layout


def _text(value: object) -> str:
    """ASCII, XML-escaped text for a reportlab Paragraph."""
    return escape(ascii_text(str(value)))


def _person(value: object) -> str:
    parts = [p for p in str(value or "").split("^") if p]
    return ", ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "")


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _image_flowable(key: KeyImage, width: float) -> Image:
    rgb = key.rgb
    height_mm = rgb.shape[0] * key.pixel_mm[0]
    width_mm = rgb.shape[1] * key.pixel_mm[1]
    scale = max(1, int(np.ceil(256 / max(rgb.shape[:2]))))  # crisp pixels for tiny images
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="PPM")  # uncompressed: reportlab decodes and deflates it anyway
    buffer.seek(0)
    height = width * height_mm / width_mm
    if height > width * 1.2:  # keep tall coronal planes on the page
        width, height = width * 1.2 * width / height, width * 1.2
    return Image(buffer, width=width, height=height)


_DENSITY_HEADER = ("Region", "Volume (mL)", "LAA-950 (%)", "LAA-910 (%)", "Perc15 (HU)", "MLD (HU)")
_DENSITY_COLUMNS = {"118565006": 0, "LAA950": 1, "LAA910": 2, "PERC15": 3, "112031": 4}


def _density_rows(measurements) -> tuple[list[list[str]], list]:
    """Densitometry as a region x measure grid (sites with at least three of the five measures);
    the other measurements are returned for the plain table."""
    by_site: dict[str, dict[int, Measurement]] = {}
    for m in measurements:
        column = _DENSITY_COLUMNS.get(m.concept.value)
        if m.site is not None and column is not None:
            by_site.setdefault(m.site.meaning, {})[column] = m
    sites = [site for site, cells in by_site.items() if len(cells) >= 3]
    used = {id(m) for site in sites for m in by_site[site].values()}
    rows = []
    for site in sites:
        cells = by_site[site]
        rows.append([ascii_text(site)] + [f"{float(cells[c].value):.1f}" if c in cells else "" for c in range(5)])
    return rows, [m for m in measurements if id(m) not in used]


def render_pdf_bytes(result: StudyResult, ctx: OutputContext) -> bytes:
    """Render the report as PDF bytes (A4, one or two pages)."""
    check_result(result, ctx)
    src = ctx.source[0]
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["BodyText"], fontSize=9.5, leading=12)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=colors.HexColor("#444444"))
    h1 = ParagraphStyle("h1", parent=styles["Heading1"], fontSize=15, spaceAfter=4)
    h2 = ParagraphStyle("h2", parent=styles["Heading2"], fontSize=11.5, spaceBefore=8, spaceAfter=4)
    analyzer = result.analyzer
    footer = f"{NOT_FOR_DIAGNOSIS}. {MANUFACTURER} - {analyzer.title} {analyzer.version} ({analyzer.name})"

    def decorate(canvas, doc) -> None:
        canvas.saveState()
        width, height = A4
        if analyzer.untrained:
            canvas.setFillColor(colors.HexColor("#c0392b"))
            canvas.rect(0, height - 14 * mm, width, 14 * mm, stroke=0, fill=1)
            canvas.setFillColor(colors.white)
            canvas.setFont("Helvetica-Bold", 16)
            canvas.drawCentredString(width / 2, height - 9.5 * mm, UNTRAINED_MARK)
        canvas.setFillColor(colors.HexColor("#444444"))
        canvas.setFont("Helvetica", 8)
        canvas.drawString(15 * mm, 9 * mm, ascii_text(footer))
        canvas.drawRightString(width - 15 * mm, 9 * mm, f"page {doc.page}")
        canvas.restoreState()

    story = [
        Paragraph("AI chest CT report", h1),
        Paragraph(
            f"<b>{_text(NOT_FOR_DIAGNOSIS)}.</b> Machine output of {_text(analyzer.title)} "
            f"{_text(analyzer.version)}; it has not been reviewed by a physician.",
            body,
        ),
    ]
    if analyzer.untrained:
        story.append(
            Paragraph(
                f"<font color='#c0392b'><b>{UNTRAINED_MARK}</b>: the model ran without trained "
                "weights. The numbers below are meaningless.</font>",
                body,
            )
        )
    ident = [
        ["Patient", _text(_person(src.get("PatientName", ""))), "Patient ID", _text(src.get("PatientID", ""))],
        ["Birth date", _text(_date(src.get("PatientBirthDate", ""))), "Sex", _text(src.get("PatientSex", ""))],
        ["Study date", _text(_date(src.get("StudyDate", ""))), "Accession", _text(src.get("AccessionNumber", ""))],
        [
            "Study",
            _text(src.get("StudyDescription", "")),
            "Series",
            _text(f"{src.get('SeriesNumber', '')} {src.get('SeriesDescription', '')}".strip()),
        ],
    ]
    table = Table(ident, colWidths=[24 * mm, 62 * mm, 24 * mm, 62 * mm])
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), "Helvetica", 9),
                ("FONT", (0, 0), (0, -1), "Helvetica-Bold", 9),
                ("FONT", (2, 0), (2, -1), "Helvetica-Bold", 9),
                ("BOX", (0, 0), (-1, -1), 0.5, colors.grey),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f4f6f8")),
            ]
        )
    )
    story += [Spacer(1, 4 * mm), table]

    if result.warnings:
        story.append(Paragraph("Scan-quality warnings", h2))
        for warning in result.warnings:
            story.append(Paragraph(f"<font color='#c0392b'>- {_text(warning)}</font>", body))

    if result.findings:
        story.append(Paragraph("Findings", h2))
        rows = [["Finding", "Probability", "Threshold", "Result"]]
        style = [
            ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
            ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
            ("ALIGN", (1, 0), (2, -1), "RIGHT"),
            ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
            ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f4f6f8")]),
        ]
        for i, f in enumerate(sorted(result.findings, key=lambda f: -float(f.probability)), start=1):
            rows.append(
                [
                    ascii_text(f.name),
                    f"{100 * float(f.probability):.1f} %",
                    f"{100 * float(f.threshold):.0f} %",
                    "present" if f.present else "absent",
                ]
            )
            if f.present:
                style += [
                    ("FONT", (0, i), (-1, i), "Helvetica-Bold", 9),
                    ("TEXTCOLOR", (3, i), (3, i), colors.HexColor("#c0392b")),
                ]
        table = Table(rows, colWidths=[80 * mm, 30 * mm, 30 * mm, 32 * mm])
        table.setStyle(TableStyle(style))
        story.append(table)

    density_rows, others = _density_rows(result.measurements)
    if density_rows:
        story.append(Paragraph("Lung densitometry (parenchyma, airways removed)", h2))
        table = Table(
            [list(_DENSITY_HEADER)] + density_rows, colWidths=[52 * mm, 24 * mm, 24 * mm, 24 * mm, 24 * mm, 24 * mm]
        )
        table.setStyle(
            TableStyle(
                [
                    ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8.5),
                    ("FONT", (0, 1), (-1, -1), "Helvetica", 8.5),
                    ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                    ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                    ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f4f6f8")]),
                ]
            )
        )
        story.append(table)

    if others:
        story.append(Paragraph("Measurements", h2))
        rows = [["Measurement", "Value", "Unit", "Site"]]
        for m in others:
            unit = _UNIT_TEXT.get(m.unit.value, ascii_text(m.unit.value))
            rows.append(
                [ascii_text(m.name), f"{float(m.value):.1f}", unit, ascii_text(m.site.meaning) if m.site else ""]
            )
        table = Table(rows, colWidths=[70 * mm, 30 * mm, 25 * mm, 47 * mm])
        table.setStyle(
            TableStyle(
                [
                    ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
                    ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
                    ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                    ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ]
            )
        )
        story.append(table)

    if result.report_text.strip():
        story.append(Paragraph("Report", h2))
        for paragraph in result.report_text.strip().split("\n"):
            if paragraph.strip():
                story.append(Paragraph(_text(paragraph.strip()), body))

    images = key_images(result, ctx.volume)
    if images:
        section = [Paragraph("Key images", h2)]
        cell = 84 * mm
        cells = [[_image_flowable(k, cell), Paragraph(_text(k.caption), small)] for k in images]
        grid = []
        for i in range(0, len(cells), 2):
            pair = cells[i : i + 2] + ([["", ""]] if len(cells[i : i + 2]) == 1 else [])
            grid += [[pair[0][0], pair[1][0]], [pair[0][1], pair[1][1]]]
        table = Table(grid, colWidths=[cell + 4 * mm] * 2)
        table.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
        section += [
            table,
            Paragraph(
                "Lung window (L -600, W 1500 HU); patient's right on the image left. "
                "Segments in their recommended colours; " + _heat_legend(result),
                small,
            ),
        ]
        story.append(KeepTogether(section))  # all images on one page

    story += [
        Spacer(1, 4 * mm),
        Paragraph(
            _text(
                f"Model: {analyzer.title} ({analyzer.name}) version {analyzer.version}; "
                f"node software {ctx.software_version}; pipeline {ctx.pipeline_version}."
            ),
            small,
        ),
    ]
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=(20 if analyzer.untrained else 14) * mm,
        bottomMargin=16 * mm,
        title=ascii_text(f"AI chest CT report - {analyzer.title}"),
        author=MANUFACTURER,
        creator=MANUFACTURER,
        invariant=1,
    )  # no timestamps or random IDs: same input, same bytes
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buffer.getvalue()


# --------------------------------------------------------------------------- DICOM


def build_pdf(
    result: StudyResult, ctx: OutputContext, seg: Optional[Dataset] = None, sr: Optional[Dataset] = None
) -> Dataset:
    """Build an Encapsulated PDF Storage instance holding :func:`render_pdf_bytes`.

    Parameters
    ----------
    result, ctx:
        What to report and the source series.
    seg, sr:
        When given, they are listed in the Source Instance Sequence (with the source
        CT images, which the key images show).
    """
    pdf = render_pdf_bytes(result, ctx)
    series_uid, sop_uid = output_uids(result, ctx, ObjectKind.PDF)
    src = ctx.source[0]
    now = datetime.datetime.now()

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    for key in _COPIED_OPTIONAL:
        if key in src:
            ds[key] = src[key]
    for key in _COPIED_TYPE2:
        if key in src:
            ds[key] = src[key]
        else:
            setattr(ds, key, "")
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number(ctx, ObjectKind.PDF)
    ds.Modality = "DOC"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = short_string(result.analyzer.title or result.analyzer.name)
    ds.SoftwareVersions = short_string(ctx.software_version)
    ds.ConversionType = "WSD"  # workstation
    ds.InstanceNumber = 1
    ds.ContentDate = ds.SeriesDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the PDF names the patient
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = series_description(result, "report (PDF)")
    ds.ConceptNameCodeSequence = DicomSequence([])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    references = []
    for obj in [d for d in (sr, seg) if d is not None] + list(ctx.source):
        item = Dataset()
        item.ReferencedSOPClassUID = obj.SOPClassUID
        item.ReferencedSOPInstanceUID = obj.SOPInstanceUID
        references.append(item)
    ds.SourceInstanceSequence = DicomSequence(references)
    return finish_dataset(ds, result, ctx, series_description(result, "report (PDF)"))
