"""PDF writer: a valid PDF in a valid Encapsulated PDF instance, with the findings in it."""

import io
from dataclasses import replace

import numpy as np
import pypdf
import pytest
from scipy import ndimage

from neuroradix.writers.pdf import (
    ENCAPSULATED_PDF_STORAGE,
    _plane_indices,
    _sample_attention,
    build_pdf,
    key_images,
    render_pdf_bytes,
)
from tests.writers.test_writer_sr import _densitometry_result
from tests.writers.writer_fixtures import LEFT, RIGHT, dciodvfy


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


def test_pdf_content(result, ctx):
    pdf = render_pdf_bytes(result, ctx)
    assert pdf.startswith(b"%PDF")
    text = _text(pdf)
    for finding in result.findings:
        assert finding.name in text
    assert "83.0 %" in text and "12.0 %" in text
    assert "Not for diagnostic use" in text
    assert "Lung HU analyzer" in text and "1.0.0" in text
    assert "NRX-0001" in text and "Test, Writer" in text
    assert "Centrilobular emphysema" in text
    assert "2450.5" in text
    assert "UNTRAINED" not in text


def test_pdf_is_deterministic(result, ctx):
    assert render_pdf_bytes(result, ctx) == render_pdf_bytes(result, ctx)


def test_key_images_show_left_lung_on_image_right(result, ctx):
    """Radiological convention: the patient's left appears on the right of the image."""
    images = key_images(result, ctx.volume)
    assert [k.caption.split(",")[0] for k in images] == ["Axial", "Coronal", "Axial", "Coronal"]
    axial = images[0].rgb.astype(int)
    left_colour = np.array(next(s.color for s in result.segments if s.label == LEFT))
    right_colour = np.array(next(s.color for s in result.segments if s.label == RIGHT))
    width = axial.shape[1]
    near = lambda colour: np.all(np.abs(axial - colour) < 3, axis=-1)  # noqa: E731 (segment outlines)
    left_cols = np.nonzero(near(left_colour).any(axis=0))[0]
    right_cols = np.nonzero(near(right_colour).any(axis=0))[0]
    assert left_cols.min() > width / 2 > right_cols.max()
    assert images[0].pixel_mm == pytest.approx((0.8, 0.7))


def test_pdf_dataset(result, ctx, roundtrip):
    back, path = roundtrip(build_pdf(result, ctx))
    assert back.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    assert back.Modality == "DOC" and back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    pdf = bytes(back.EncapsulatedDocument)[: int(back.EncapsulatedDocumentLength)]
    assert pdf.startswith(b"%PDF") and "Emphysema" in _text(pdf)
    src = ctx.source[0]
    for key in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert back[key].value == src[key].value
    assert back.SeriesInstanceUID != src.SeriesInstanceUID
    errors, _ = dciodvfy(path)
    assert errors == []


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("view", ["axial", "coronal"])
def test_key_image_attention_is_sampled_at_the_plane_pixels(result, ctx, view, oblique):
    """The heat map on a key image equals trilinear sampling of the map at the patient
    position of each plane pixel (map_coordinates), for an aligned and an oblique map."""
    amap = result.attention[0]
    if oblique:
        c, s = np.cos(0.3), np.sin(0.3)
        turn = np.eye(4)
        turn[:2, :2] = [[c, -s], [s, c]]
        centre = ctx.volume.affine @ np.array([6.0, 16.0, 20.0, 1.0])
        shift = np.eye(4)
        shift[:3, 3] = centre[:3] - turn[:3, :3] @ centre[:3]
        amap = replace(amap, affine=shift @ turn @ amap.affine)
    position = 5 if view == "axial" else 12
    index = _plane_indices(ctx.volume, view, position)
    points = ctx.volume.index_to_patient(index.reshape(-1, 3))
    inv = np.linalg.inv(amap.affine)
    coords = (points @ inv[:3, :3].T + inv[:3, 3]).T
    expected = ndimage.map_coordinates(amap.array, coords, order=1, mode="constant", cval=0.0).reshape(index.shape[:2])
    got = _sample_attention(amap, ctx.volume, view, position)
    assert expected.max() > 0.1 and (expected == 0).any()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pdf_states_warnings_and_a_densitometry_table(result, ctx):
    dense = _densitometry_result(result)
    text = _text(render_pdf_bytes(dense, ctx))
    assert "Scan-quality warnings" in text
    assert "LAA-950 not comparable: sharp kernel B70f" in text
    assert "Lung densitometry" in text and "Perc15 (HU)" in text
    assert "Upper zone of right lung" in text and "-929.0" in text  # the right upper zone's Perc15
    plain = _text(render_pdf_bytes(replace(dense, warnings=()), ctx))
    assert "Scan-quality warnings" not in plain


def test_pdf_says_how_a_display_range_map_is_coloured_and_why_it_is_smoothed(result, ctx):
    """A local LAA-950 map is coloured from its floor to its top, and its note is stated."""
    amap = result.attention[0]
    shown = replace(amap, name="Local LAA-950", display_range=(0.06, 0.30), note="smoothed: sharp kernel")
    text = " ".join(_text(render_pdf_bytes(replace(result, attention=(shown,)), ctx)).split())
    assert "Local LAA-950 from red (6 %) to yellow (30 % and above); below 6 % not coloured" in text
    assert "Map smoothed: sharp kernel" in text
    assert "attention from dark red (low)" not in text
