"""Fixtures of the OHIF browser test: a real Orthanc, the viewer proxy, Debian's chromium.

``processed_study`` yields the viewer's base URL and the study to open. Today it starts its own
Orthanc, uploads the study that :func:`ohif_study_data.build_processed_study` makes and serves
OHIF in front of it; a node fixture that has processed a study itself can take its place as long
as it yields a :class:`ViewerStudy`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from neuroradix.config import DeploySettings
from neuroradix.deploy.orthanc_dist import OrthancDistSettings, find_orthanc
from neuroradix.devtools.viewer import DEFAULT_DIST, ViewerSettings, create_app
from neuroradix.errors import ConfigError
from tests.browser.ohif_study_data import ProcessedStudy, build_processed_study, to_part10
from tests.support import unavailable

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied frame otherwise

CHROMIUM = Path(os.environ.get("NEURORADIX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # WebGL on SwiftShader (software): cornerstone3D renders volumes and overlays with WebGL.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


@dataclass(frozen=True)
class ViewerStudy:
    """A study OHIF can open: the viewer's origin and the study's UIDs."""

    base_url: str
    study: ProcessedStudy


def _missing_prerequisite() -> str | None:
    if not CHROMIUM.is_file():
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    if not (DEFAULT_DIST / "index.html").is_file():
        return "OHIF is not installed: run `npm ci --prefix viewer --ignore-scripts`"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright; no browser download needed)"
    try:
        find_orthanc(OrthancDistSettings.from_settings(DeploySettings()))
    except ConfigError as exc:  # not installed (make setup), or older than 1.12.11
        return f"no Orthanc to run: {exc}"
    return None


@pytest.fixture(scope="session")
def browser_prerequisites() -> None:
    """Chromium, OHIF, Playwright and Orthanc are here; else skip, or fail under ``CI``.

    Session-scoped so that it runs before the other session fixtures that need them. The real CT
    is not checked here: ``processed_study`` takes it from the ``thorax_path`` fixture (the shared
    folder, or the TotalSegmentator sdist from PyPI), which fails under ``CI`` itself.
    """
    reason = _missing_prerequisite()
    if reason is not None:
        unavailable(reason)


class _Server(threading.Thread):
    """uvicorn serving the viewer app on 127.0.0.1 in a thread."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        super().__init__(daemon=True)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    def run(self) -> None:
        self.server.run()

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(10)


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def processed_study(
    browser_prerequisites: None, tmp_path_factory: pytest.TempPathFactory, thorax_path: Path
) -> Iterator[ViewerStudy]:
    """A processed study of the real chest CT in a fresh Orthanc, with OHIF and the proxy in front of it."""
    from neuroradix.deploy.orthanc import OrthancProcess, OrthancSpec, free_port

    datasets, study = build_processed_study(thorax_path)
    spec = OrthancSpec(
        data_dir=tmp_path_factory.mktemp("orthanc"),
        http_port=free_port(),
        dicom_port=free_port(),
        user="viewer-test",
        password=secrets.token_urlsafe(12),
        sidecar_url="http://127.0.0.1:9",  # no sidecar: nothing processes this study again
        sidecar_token=secrets.token_urlsafe(12),
        stable_age=60,
    )
    orthanc = OrthancProcess(spec).start()
    server = None
    try:
        started = time.monotonic()
        for ds in datasets:
            reply = json.loads(orthanc.request("POST", "/instances", to_part10(ds)))
            assert reply.get("Status") in ("Success", "AlreadyStored"), reply
        logger.info("uploaded %d instances in %.1f s", len(datasets), time.monotonic() - started)
        port = free_port()
        server = _Server(create_app(ViewerSettings(spec.url, spec.user, spec.password)), port)
        server.start()
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(base_url + "/app-config.js")
        yield ViewerStudy(base_url=base_url, study=study)
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


@pytest.fixture(scope="session")
def browser(browser_prerequisites: None):
    """Debian's headless chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def screenshot_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Where screenshots go: a pytest temp dir, and ``$NEURORADIX_SCREENSHOT_DIR`` when set."""
    dirs = [tmp_path_factory.mktemp("ohif-screenshots")]
    extra = os.environ.get("NEURORADIX_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        dirs.append(Path(extra))
    return dirs
