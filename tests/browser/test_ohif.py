"""OHIF v3 in headless chromium shows the node's results: SEG, attention Parametric Map, PDF.

Each test opens the study in a fresh page (the ``processed_study`` fixture serves OHIF and the
DICOMweb proxy in front of a real Orthanc), loads one result the way a user does (double-click
its thumbnail), and checks three things:

* OHIF raised no error: no error toast, no "Something went wrong" page, no uncaught page error;
* what OHIF lists (segment labels from the SEG);
* the pixels: the viewport shows overlay colours that a plain greyscale CT cannot have
  (measured on the CT before anything is loaded, so the check can fail), or a white PDF page.

Screenshots go to a pytest temp dir and, when ``NEURORADIX_SCREENSHOT_DIR`` is set (e.g.
``docs/screenshots``), there too.
"""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
logger = logging.getLogger(__name__)

VIEWPORT = '[data-cy="viewport-pane"]'
SEGMENTATION_PANEL_BUTTON = '[data-cy="panelSegmentation-btn"]'
LOAD_TIMEOUT_MS = 180_000  # a 2-core machine shared with other jobs; SwiftShader WebGL
MAX_SCREENSHOT_BYTES = 500_000

# Runs in every frame before OHIF's scripts: skip OHIF's first-visit tour (its pop-up covers
# the image) and record every toast OHIF shows, even those that vanish before a check.
INIT_SCRIPT = """
(() => {
  try { if (window.localStorage) localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); }
  catch (e) {}
  if (window.top !== window) return;
  window.__toasts = [];
  const seen = new Map();
  new MutationObserver(() => {
    document.querySelectorAll('[data-sonner-toast]').forEach(el => {
      if (!seen.has(el)) { seen.set(el, {type: el.getAttribute('data-type') || '', text: ''}); window.__toasts.push(seen.get(el)); }
      const entry = seen.get(el);
      entry.type = el.getAttribute('data-type') || entry.type;
      entry.text = el.textContent || entry.text;
    });
  }).observe(document, {childList: true, subtree: true, attributes: true});
})();
"""


# --------------------------------------------------------------------------- helpers
class OhifPage:
    """One browser page on the viewer, with what it logged."""

    def __init__(self, browser, base_url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.context.add_init_script(INIT_SCRIPT)
        self.page = self.context.new_page()
        self.base_url = base_url
        self.page_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text[:500]))
        self.page.on("response", lambda r: r.status >= 400 and self.failed_requests.append(f"{r.status} {r.url}"))

    def open_study(self, study_uid: str) -> None:
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}", wait_until="domcontentloaded")
        self.page.locator(VIEWPORT).first.wait_for(timeout=LOAD_TIMEOUT_MS)
        # The CT is drawn once the viewport shows its instance counter, e.g. "I:191 (1/191)".
        self.page.locator(VIEWPORT).get_by_text("(1/").first.wait_for(timeout=LOAD_TIMEOUT_MS)

    def open_series(self, series_description: str) -> None:
        """Double-click a thumbnail of the study browser, found by its series description."""
        self.page.get_by_text(series_description, exact=True).first.dblclick(timeout=LOAD_TIMEOUT_MS)

    def viewport_pixels(self) -> np.ndarray:
        """RGB pixels of the inner 80 % of the viewport (leaves out borders and corner texts)."""
        png = self.page.locator(VIEWPORT).first.screenshot()
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
        h, w = rgb.shape[:2]
        return rgb[h // 10 : h - h // 10, w // 10 : w - w // 10]

    def screenshot(self, name: str, dirs: list[Path]) -> None:
        png = self.page.screenshot()
        if len(png) > MAX_SCREENSHOT_BYTES:  # keep README images small: 256-colour palette
            buffer = io.BytesIO()
            Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
            png = buffer.getvalue()
        for folder in dirs:
            (folder / f"{name}.png").write_bytes(png)

    def assert_no_error(self) -> None:
        toasts = self.page.evaluate("window.__toasts || []")
        errors = [t for t in toasts if t["type"] == "error"]
        assert not errors, f"OHIF showed error notifications: {errors}; console errors: {self.console_errors}"
        assert self.page.get_by_text("Something went wrong").count() == 0, "OHIF shows its error page"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        dicomweb_failures = [r for r in self.failed_requests if "/dicom-web/" in r]
        assert not dicomweb_failures, f"DICOMweb requests failed: {dicomweb_failures}"

    def close(self) -> None:
        self.context.close()


def colour_fractions(rgb: np.ndarray) -> dict[str, float]:
    """Share of pixels by colour class: greyscale CT has none of the first four."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "coloured": float((rgb.max(-1) - rgb.min(-1) > 40).mean()),
        "blue": float(((b > r + 50) & (b > 100)).mean()),  # "Left lung" (0, 160, 230)
        "orange": float(((r > b + 60) & (g > b + 20)).mean()),  # "Right lung" (230, 160, 0)
        "red": float(((r > g + 60) & (r > b + 60)).mean()),  # top of the Parametric Map colour map
        "white": float((rgb.min(-1) > 230).mean()),  # a PDF page
    }


@pytest.fixture()
def ohif(browser, processed_study):
    page = OhifPage(browser, processed_study.base_url)
    yield page
    page.close()


def _description(processed_study, series_uid: str) -> str:
    return processed_study.study.series_descriptions[series_uid]


# --------------------------------------------------------------------------- tests
def test_study_list_shows_the_study(ohif, processed_study, screenshot_dirs):
    ohif.page.goto(processed_study.base_url + "/", wait_until="domcontentloaded")
    row = ohif.page.get_by_text("Anonymous, Demo").first
    row.wait_for(timeout=LOAD_TIMEOUT_MS)
    for modality in ("CT", "SEG", "DOC"):  # the modalities cell reads e.g. "SEG\\CT\\DOC\\OT\\SR"
        cell = ohif.page.get_by_text(re.compile(rf"(^|\\){modality}(\\|$)"))
        assert cell.count() > 0, f"modality {modality} is not listed for the study"
    # Needs the proxy's comma decoding: Orthanc 1.10.1 ignores includefield=00081030%2C...
    assert ohif.page.get_by_text("CT chest (OHIF test)").first.is_visible(), "no study description"
    ohif.screenshot("ohif-study-list", screenshot_dirs)
    ohif.assert_no_error()


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_segmentation_overlay(ohif, processed_study, screenshot_dirs, seg_type):
    study = processed_study.study
    series_uid = study.seg_series_uid if seg_type == "BINARY" else study.labelmap_seg_series_uid
    started = time.monotonic()
    ohif.open_study(study.study_uid)
    plain_ct = colour_fractions(ohif.viewport_pixels())
    assert plain_ct["coloured"] < 0.005, f"the plain CT is not greyscale: {plain_ct}"

    ohif.open_series(_description(processed_study, series_uid))
    # OHIF 3.x asks before it hydrates a SEG into the viewport.
    ohif.page.get_by_role("button", name="Yes").click(timeout=LOAD_TIMEOUT_MS)
    ohif.page.locator(SEGMENTATION_PANEL_BUTTON).click(timeout=LOAD_TIMEOUT_MS)
    panel_labels = []
    for label in study.segment_labels:
        item = ohif.page.get_by_text(label, exact=True).first
        item.wait_for(timeout=LOAD_TIMEOUT_MS)
        panel_labels.append(label)
    assert panel_labels == list(study.segment_labels)
    # Clicking a segment jumps to the slice through its centre.
    ohif.page.get_by_text("Left lung", exact=True).first.click()
    ohif.page.wait_for_timeout(3000)
    with_seg = colour_fractions(ohif.viewport_pixels())
    ohif.screenshot("ohif-segmentation" if seg_type == "BINARY" else "ohif-segmentation-labelmap", screenshot_dirs)
    logger.info("%s SEG shown after %.0f s; colours %s", seg_type, time.monotonic() - started, with_seg)
    if seg_type == "BINARY":
        assert with_seg["blue"] > 0.02, f"no 'Left lung' overlay drawn: {with_seg}"
        assert with_seg["orange"] > 0.02, f"no 'Right lung' overlay drawn: {with_seg}"
    else:
        # OHIF 3.13 lists a LABELMAP SEG's "Background" segment 0 and then colours segment n
        # with segment n-1's recommended colour (Left lung in Body's brown, Right lung in Left
        # lung's blue): the overlay is drawn, its colours are shifted by one.
        assert with_seg["coloured"] > 0.1, f"no LABELMAP overlay drawn: {with_seg}"
    ohif.assert_no_error()


def test_attention_map_overlay(ohif, processed_study, screenshot_dirs):
    study = processed_study.study
    started = time.monotonic()
    ohif.open_study(study.study_uid)
    plain_ct = colour_fractions(ohif.viewport_pixels())
    ohif.open_series(_description(processed_study, study.pmap_series_uid))
    loading = ohif.page.get_by_text("Loading Parametric Map...")
    loading.first.wait_for(state="visible", timeout=LOAD_TIMEOUT_MS)
    loading.first.wait_for(state="hidden", timeout=LOAD_TIMEOUT_MS)
    ohif.page.wait_for_timeout(3000)
    with_map = colour_fractions(ohif.viewport_pixels())
    ohif.screenshot("ohif-attention-map", screenshot_dirs)
    logger.info("Parametric Map shown after %.0f s; colours %s", time.monotonic() - started, with_map)
    # OHIF's PMAP viewport announces itself ("values are multiplied by 100") once it has built the overlay.
    toasts = ohif.page.evaluate("window.__toasts || []")
    assert any("Parametric Map" in t["text"] for t in toasts), f"OHIF built no Parametric Map viewport: {toasts}"
    # This CT has no emphysema (LAA-950 0.05 %); the local LAA-950 map colours only
    # neighbourhoods above 6 % (0.06 % of the lung, none of it large): no squares, no red lungs.
    assert with_map["coloured"] <= plain_ct["coloured"] + 0.005, f"the map colours a normal lung: {with_map}"
    ohif.assert_no_error()


def test_pdf_report(ohif, processed_study, screenshot_dirs):
    study = processed_study.study
    ohif.open_study(study.study_uid)
    ohif.open_series(_description(processed_study, study.pdf_series_uid))
    pdf = ohif.page.locator('object[type="application/pdf"]')
    pdf.first.wait_for(timeout=LOAD_TIMEOUT_MS)
    assert (pdf.first.get_attribute("data") or "").startswith("blob:"), "the PDF was not fetched"
    ohif.page.wait_for_timeout(3000)  # let chromium's PDF viewer paint the page
    shown = colour_fractions(ohif.viewport_pixels())
    ohif.screenshot("ohif-pdf-report", screenshot_dirs)
    assert shown["white"] > 0.3, f"no PDF page drawn: {shown}"
    ohif.assert_no_error()
