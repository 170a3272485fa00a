"""The worklist page in Debian's headless chromium: the real sidecar API behind the viewer proxy.

A real ledger holds studies decided by the real triage sweep; the sidecar app (uvicorn) serves
``/v1/worklist``; the viewer proxy (uvicorn) serves ``/worklist`` with a login and reads the
sidecar with the reader token. The browser sees the studies by priority, coloured by level, with
links into OHIF, and the page refreshes by itself.
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from neuroradix.api.app import create_app as create_api
from neuroradix.config import Settings
from neuroradix.deploy.orthanc import free_port
from neuroradix.devtools.viewer import ViewerSettings
from neuroradix.devtools.viewer import create_app as create_viewer
from neuroradix.jobs.ledger import Ledger
from tests.browser.conftest import _Server, _wait_http
from tests.jobs.test_triage_dispatch import RecordingFlags, _dispatcher, _finish

TOKEN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
LOGIN = ("reader", "worklist-login-pw")


class _LivePacs:
    def ping(self) -> None:
        return None


@pytest.fixture
def worklist_site(browser_prerequisites, tmp_path):
    settings = Settings(
        orthanc_url="http://127.0.0.1:9",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token=TOKEN,
        sidecar_reader_token=READER,
        var_dir=tmp_path,
    )
    ledger = Ledger(settings.resolved_ledger_url)
    dispatcher = _dispatcher(tmp_path, ledger, RecordingFlags())
    _finish(ledger, "1.2.826.0.1.3680043.8.498.101", 2.0)  # routine, arrived first
    _finish(ledger, "1.2.826.0.1.3680043.8.498.102", 45.0)  # urgent
    _finish(ledger, "1.2.826.0.1.3680043.8.498.103", 20.0)  # priority
    _finish(ledger, "1.2.826.0.1.3680043.8.498.104", None)  # failed: not-analyzed
    dispatcher.run_once()
    api_port, viewer_port = free_port(), free_port()
    api = _Server(create_api(settings, ledger, _LivePacs(), run_reconciler=False), api_port)
    api.start()
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>OHIF stand-in</title>")
    config = tmp_path / "app-config.js"
    config.write_text("window.config = {};")
    viewer = _Server(
        create_viewer(
            ViewerSettings(
                "http://127.0.0.1:9",
                "viewer",
                "pw",
                dist_dir=dist,
                config_file=config,
                login=LOGIN,
                sidecar_url=f"http://127.0.0.1:{api_port}",
                sidecar_reader_token=READER,
            )
        ),
        viewer_port,
    )
    viewer.start()
    base = f"http://127.0.0.1:{viewer_port}"
    _wait_http(f"http://127.0.0.1:{api_port}/healthz")
    try:
        yield base, ledger, dispatcher
    finally:
        viewer.stop()
        api.stop()


def _get(url: str, login: tuple[str, str] | None) -> int:
    headers = {}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_worklist_page_lists_by_priority_and_refreshes(worklist_site, browser, screenshot_dirs):
    base, ledger, dispatcher = worklist_site
    assert _get(base + "/worklist.json", None) == 401  # the viewer's login guards the page and its data
    assert _get(base + "/worklist.json", LOGIN) == 200
    assert _get(base + "/worklist.json?level=nonsense", LOGIN) == 400

    context = browser.new_context(http_credentials={"username": LOGIN[0], "password": LOGIN[1]})
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 420})
    page.goto(base + "/worklist")
    page.wait_for_selector("tr[data-level]")
    levels = page.eval_on_selector_all("tr[data-level]", "rows => rows.map(r => r.dataset.level)")
    assert levels == ["urgent", "priority", "routine", "not-analyzed"]
    colour = page.eval_on_selector(".level-urgent", "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(198, 40, 40)"
    link = page.eval_on_selector("tr[data-level=urgent] a", "a => a.getAttribute('href')")
    assert link == "/viewer?StudyInstanceUIDs=1.2.826.0.1.3680043.8.498.102"
    assert "very severe emphysema" in page.inner_text("tr[data-level=urgent]")
    assert "not a CT series" in page.inner_text("tr[data-level=not-analyzed]")
    for folder in screenshot_dirs:
        page.screenshot(path=str(Path(folder) / "worklist.png"))

    _finish(ledger, "1.2.826.0.1.3680043.8.498.105", 41.0)  # a new urgent study arrives
    dispatcher.run_once()
    deadline = time.monotonic() + 30  # the page refreshes every 10 s by itself
    while time.monotonic() < deadline:
        if page.locator("tr[data-level=urgent]").count() == 2:
            break
        page.wait_for_timeout(500)
    assert page.locator("tr[data-level=urgent]").count() == 2
    context.close()
